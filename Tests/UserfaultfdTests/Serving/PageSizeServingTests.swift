import Foundation
import Synchronization
import Testing
@testable import SnapshotPager
@testable import Userfaultfd

/// Fault service in the memory's own page size: hugetlbfs 2 MiB pages resolved whole, and shmem
/// (memfd) minor faults resolved with CONTINUE from a second view of the same pages.
extension KernelTests {
@Suite("Fault service by page size")
struct PageSizeServingTests {
  @Test(.enabled(if: HugePages.canReserve, "needs 2 MiB hugetlb pages: none could be reserved (vm.nr_hugepages)"))
  func hugetlbFaultsAreResolvedInTwoMiBPages() throws {
    try HugePages.withReserved(4) {
      let huge = PageSize.huge
      let region = try AnonymousMemory.hugePages(length: 2 * huge)
      #expect(region.pageSize == huge && region.length == 2 * huge)
      let source = try AnonymousMemory(length: huge, alignment: huge)
      for offset in stride(from: 0, to: huge, by: PageSize.base) { fill(source.baseAddress + offset, seed: UInt64(offset)) }
      let uffd = try Userfaultfd(features: [.missingHugetlbfs], options: .nonBlocking)
      let from = Address(source.baseAddress)
      let server = try FaultServer(uffd: uffd) { fault in
        // The first huge page from the source, the second as zeros.
        fault.address < Address(region.baseAddress) + huge ? .copy(from: from) : .zeroPage
      }
      defer { server.stop() }
      try server.register(region.baseAddress, length: region.length)
      #expect(uffd.registeredPageSize(at: Address(region.baseAddress).rawValue) == huge)
      let base = Address(region.baseAddress)
      let checked = Atomic<Bool>(false)
      let reader = TestThread {
        // Touch the middle of each huge page: the whole 2 MiB page must arrive.
        var right = true
        for offset in stride(from: 0, to: huge, by: PageSize.base) {
          right = right && holds((base + offset).mapped, seed: UInt64(offset))
        }
        right = right && isZero((base + huge + huge / 2).mapped, length: PageSize.base)
        checked.store(right, ordering: .relaxed)
      }
      #expect(reader.join())
      let allRight = checked.load(ordering: .relaxed)
      #expect(allRight, "every byte of the copied huge page, zeros in the other")
      #expect(eventually { server.statistics.resolved == 2 }, "two faults, one per 2 MiB page")
    }
  }

  @Test(.enabled(if: Kernel.hasMinorShmem, "needs UFFD_FEATURE_MINOR_SHMEM (Linux 5.13)"))
  func memfdMinorFaultsAreResolvedWithContinue() throws {
    let page = PageSize.base
    let view = try AnonymousMemory.memfd(length: 4 * page)
    let filler = try view.mapAgain()
    #expect(view.file != nil && filler.sharing == .shared)
    // The page cache gets its content through the second view; the first view has no PTEs yet.
    for index in 0..<4 { fill(filler.baseAddress + index * page, seed: UInt64(60 + index)) }
    let uffd = try Userfaultfd(features: [.minorShmem], options: .nonBlocking)
    let server = try FaultServer(uffd: uffd) { _ in .continueMapping }
    defer { server.stop() }
    try server.register(view.baseAddress, length: view.length, mode: .minor)
    let base = Address(view.baseAddress)
    let right = Atomic<Bool>(false)
    let reader = TestThread {
      right.store((0..<4).allSatisfy { holds((base + $0 * page).mapped, seed: UInt64(60 + $0)) }, ordering: .relaxed)
    }
    #expect(reader.join())
    let allRight = right.load(ordering: .relaxed)
    #expect(allRight)
    #expect(server.statistics.resolved >= 1)
    #expect(throws: UserfaultfdError.invalidArgument(.memory, .notFileBacked)) {
      _ = try AnonymousMemory(length: page).mapAgain()
    }
  }
}
}
