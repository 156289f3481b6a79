import Testing
import Userfaultfd

/// The README's usage example, verbatim between the markers, so it keeps compiling and working.
extension KernelTests {
@Suite("README example", .enabled(if: Kernel.hasMove, "needs UFFDIO_MOVE (Linux 6.8)"))
struct ReadmeExampleTests {
  @Test func readmeExample() throws {
    // README-EXAMPLE-BEGIN
    let uffd = try Userfaultfd()
    let page = PageSize.base
    let source = try AnonymousMemory(length: 16 * page)
    let destination = try AnonymousMemory(length: 16 * page)
    try uffd.register(destination.baseAddress, length: destination.length, mode: .missing)

    source.bytes.initializeMemory(as: UInt8.self, repeating: 0xAB)
    do {
      // Zero-copy: the pages themselves change address; the source becomes a hole.
      try uffd.move(from: source.baseAddress, to: destination.baseAddress, length: 16 * page)
    } catch {
      // `error` is a UserfaultfdError: decide by its case and `failureKind` (.busy: shared with a
      // forked child, merged by KSM or pinned; .alreadyPresent; .partial: resume at bytesDone; ...),
      // print its description for a person. Never match on the text.
      print("moved \(error.bytesDone) bytes, then: \(error)")
      throw error
    }
    assert(destination.bytes.allSatisfy { $0 == 0xAB })
    assert(source.bytes.allSatisfy { $0 == 0 })
    // README-EXAMPLE-END
    #expect(destination.bytes.allSatisfy { $0 == 0xAB })
    #expect(source.bytes.allSatisfy { $0 == 0 })
  }
}
}
