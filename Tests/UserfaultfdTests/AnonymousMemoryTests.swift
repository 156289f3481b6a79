import Testing
import Userfaultfd

@Suite("Anonymous memory")
struct AnonymousMemoryTests {
  let page = PageSize.base

  @Test func roundsUpToWholePagesAndStartsZeroed() throws {
    let memory = try AnonymousMemory(length: page + 1)
    #expect(memory.length == 2 * page)
    #expect(UInt(bitPattern: memory.baseAddress) % UInt(page) == 0)
    #expect(isZero(memory.baseAddress, length: memory.length))
    #expect(memory.page(1) == memory.baseAddress + page)
    #expect(memory.page(2) == nil)
    #expect(memory.page(-1) == nil)
  }

  @Test func hugePageAlignment() throws {
    let memory = try AnonymousMemory(length: 2 * PageSize.huge, alignment: PageSize.huge)
    #expect(UInt(bitPattern: memory.baseAddress) % UInt(PageSize.huge) == 0)
    try memory.advise(.hugePage)
    if Kernel.hasPopulateWrite { try memory.advise(.populateWrite) }  // MADV_POPULATE_WRITE: Linux 5.14
    memory.bytes[memory.length - 1] = 1
    #expect(memory.bytes[memory.length - 1] == 1)
  }

  /// `populate: true` allocates every page on every kernel (MADV_POPULATE_WRITE, or touching each
  /// page before Linux 5.14).
  @Test func populateAllocatesEveryPage() throws {
    let memory = try AnonymousMemory(length: 8 * page, populate: true)
    for index in 0..<8 { #expect(isPopulated(memory.baseAddress + index * page)) }
    #expect(isZero(memory.baseAddress, length: memory.length))
  }

  @Test func adviceDropsPages() throws {
    let memory = try AnonymousMemory(length: 2 * page, populate: true)
    fill(memory.baseAddress, seed: 1)
    fill(memory.baseAddress + page, seed: 2)
    try memory.advise(.dontNeed, offset: page, length: page)
    #expect(holds(memory.baseAddress, seed: 1))
    #expect(isZero(memory.baseAddress + page))
    for advice in [AnonymousMemory.Advice.dontFork, .doFork, .wipeOnFork, .keepOnFork, .noHugePage] {
      try memory.advise(advice)
    }
  }

  @Test func protectionChanges() throws {
    let memory = try AnonymousMemory(length: page)
    try memory.protect(.read)
    try memory.protect(.readWrite)
    memory.bytes[0] = 3
    #expect(memory.bytes[0] == 3)
  }

  @Test func badArgumentsAreClearErrors() throws {
    for (length, alignment) in [(0, page), (-5, page), (page, 3 * page), (page, page / 2), (Int.max, page)] {
      let error = #expect(throws: UserfaultfdError.self) {
        _ = try AnonymousMemory(length: length, alignment: alignment)
      }
      #expect({ if case .invalidArgument(.memory, _)? = error { true } else { false } }(),
              "length \(length), alignment \(alignment)")
    }
    let memory = try AnonymousMemory(length: 2 * page)
    for (offset, length) in [(1, page), (-page, page), (page, 2 * page), (3 * page, page), (0, 0)] {
      let error = #expect(throws: UserfaultfdError.self) {
        try memory.advise(.dontNeed, offset: offset, length: length)
      }
      #expect({ if case .invalidArgument(.memory, _)? = error { true } else { false } }(),
              "offset \(offset), length \(length)")
    }
  }

  @Test func unsupportedAdviceIsASystemCallError() throws {
    // Advice the kernel does not know gets EINVAL from it, named in the error.
    let memory = try AnonymousMemory(length: page)
    let error = #expect(throws: UserfaultfdError.self) { try memory.advise(AnonymousMemory.Advice(rawValue: 9_999)) }
    #expect(error?.errno == .invalidArgument)
    #expect({ if case .systemCallFailed(let call, _)? = error { call.hasPrefix("madvise(MADV_9999)") } else { false } }())
  }

  @Test func privateOnlyAdviceOnSharedMemoryIsRefusedBeforeTheCall() throws {
    // MADV_WIPEONFORK is for private memory only: refused before the kernel sees it.
    let shared = try AnonymousMemory(length: page, sharing: .shared)
    #expect(throws: UserfaultfdError.invalidArgument(.memory, .adviceNeedsPrivateMemory("MADV_WIPEONFORK"))) {
      try shared.advise(.wipeOnFork)
    }
  }
}

extension KernelTests {
@Suite("Validation before the system call")
struct ValidationTests {
  let page = PageSize.base

  /// Validation runs before the handle is even consulted: a closed handle still reports the
  /// argument problem, proving no system call was made.
  @Test func everyRangeOperationChecksItsArguments() throws {
    let uffd = try Userfaultfd()
    uffd.close()
    let memory = try AnonymousMemory(length: 2 * page)
    let base = memory.baseAddress
    let top = UnsafeMutableRawPointer(bitPattern: UInt.max & ~UInt(page - 1))!
    let cases: [(String, () throws(UserfaultfdError) -> Void)] = [
      ("register unaligned", { () throws(UserfaultfdError) in try uffd.register(base + 1, length: page, mode: .missing) }),
      ("unregister empty", { () throws(UserfaultfdError) in try uffd.unregister(base, length: 0) }),
      ("wake negative", { () throws(UserfaultfdError) in try uffd.wake(base, length: -page) }),
      ("copy ragged", { () throws(UserfaultfdError) in try uffd.copy(from: base, to: base + page, length: 100) }),
      ("copy overlapping", { () throws(UserfaultfdError) in try uffd.copy(from: base, to: base + page, length: 2 * page) }),
      ("zeropage wraps", { () throws(UserfaultfdError) in try uffd.zeroPage(top, length: 2 * page) }),
      ("writeprotect unaligned", { () throws(UserfaultfdError) in try uffd.writeProtect(base + 8, length: page) }),
      ("unprotect empty", { () throws(UserfaultfdError) in try uffd.removeWriteProtection(base, length: 0) }),
      ("continue ragged", { () throws(UserfaultfdError) in try uffd.continue(base, length: page + 8) }),
      ("poison unaligned", { () throws(UserfaultfdError) in try uffd.poison(base + 16, length: page) }),
      ("move wraps", { () throws(UserfaultfdError) in try uffd.move(from: base, to: top, length: 2 * page) }),
      ("read events none", { () throws(UserfaultfdError) in _ = try uffd.readEvents(maxCount: 0) }),
    ]
    for (name, body) in cases {
      let error = #expect(throws: UserfaultfdError.self, "\(name)") { try body() }
      #expect({ if case .invalidArgument? = error { true } else { false } }(), "\(name): \(String(describing: error))")
    }
    // And a valid call on the closed handle says so.
    let closed = #expect(throws: UserfaultfdError.self) { try uffd.wake(base, length: page) }
    #expect(closed == .closed(.wake))
  }
}
}
