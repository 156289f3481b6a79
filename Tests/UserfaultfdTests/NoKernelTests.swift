import CUserfaultfd
import SystemPackage
import Testing
@testable import SnapshotPager
@testable import Userfaultfd

/// What can be checked without a userfaultfd: argument validation, the reading of kernel answers,
/// event decoding from hand-made records, error descriptions. These run on any machine, with or
/// without userfaultfd, so such a machine still tests something real.
@Suite("Without a kernel")
struct NoKernelTests {
  static let page = PageSize.base

  // MARK: Range validation

  @Test(arguments: [
    (0x1000 as UInt, 0, InvalidArgument.nonPositiveLength(role: .destination, length: 0)),
    (0x1000, -4096, .nonPositiveLength(role: .destination, length: -4096)),
    (0x1000, 4097, .lengthNotPageMultiple(role: .destination, length: 4097, pageSize: 4096)),
    (0x1008, 4096, .misaligned(role: .destination, address: 0x1008, pageSize: 4096)),
    (UInt.max & ~0xFFF, 8192, .wraps(role: .destination, address: Address(rawValue: UInt.max & ~0xFFF), length: 8192)),
  ])
  func rangeValidationNamesTheFault(address: UInt, length: Int, expected: InvalidArgument) throws {
    try #require(Self.page == 4096, "the cases are written for 4 KiB pages")
    let pointer = try #require(UnsafeRawPointer(bitPattern: address))
    #expect(throws: UserfaultfdError.invalidArgument(.copy, expected)) {
      _ = try PageRange(pointer, length: length, role: .destination, operation: .copy)
    }
  }

  @Test func overlappingPairIsRefusedWithBothRanges() throws {
    let base = try #require(UnsafeRawPointer(bitPattern: UInt(0x10_0000)))
    let start: Address = 0x10_0000
    let page = Self.page
    let overlap = InvalidArgument.overlap(source: start..<(start + 2 * page), destination: (start + page)..<(start + 3 * page))
    #expect(throws: UserfaultfdError.invalidArgument(.move, overlap)) {
      _ = try PageRange.pair(source: base, destination: base + Self.page, length: 2 * Self.page, operation: .move)
    }
    let pair = try PageRange.pair(source: base, destination: base + 2 * Self.page, length: 2 * Self.page, operation: .move)
    #expect(pair.source.start == 0x10_0000 && pair.destination.start == 0x10_0000 + UInt(2 * page))
  }

  // MARK: The reading of kernel answers (the rule in cuffd_answer_classify)

  @Test func successIsEveryByteDone() {
    let answer = KernelAnswer(cuffd_answer_classify(CUFFD_OP_COPY, 0, 0, 0, 8192))
    #expect(answer == .done(length: 8192))
    #expect(answer.outcome == .done && answer.errno == nil && answer.bytesDone == 8192)
  }

  @Test func negativeProgressIsAnErrnoNeverACount() {
    // The kernel writes -EEXIST into the progress field when nothing was done.
    let answer = KernelAnswer(cuffd_answer_classify(CUFFD_OP_COPY, -1, EEXIST, -Int64(EEXIST), 8192))
    #expect(answer.bytesDone == 0)
    #expect(answer.outcome == .alreadyPresent)
    #expect(answer.errno == .fileExists)
  }

  @Test func progressBeyondTheRequestIsClamped() {
    let answer = KernelAnswer(cuffd_answer_classify(CUFFD_OP_MOVE, -1, EAGAIN, 1 << 40, 8192))
    #expect(answer.bytesDone == 8192)
  }

  @Test(arguments: [
    (Operation.copy, EAGAIN, Int64(4096), KernelOutcome.partial),
    (.copy, EAGAIN, 0, .retryAfterEvents),
    (.move, EAGAIN, -Int64(EAGAIN), .retryAfterEvents),
    (.move, ENOENT, 0, .sourceMissing),
    (.copy, ENOENT, 0, .failed),
    (.move, EBUSY, 0, .busy),
    (.copy, EBUSY, 0, .failed),
    (.zeroPage, EEXIST, 0, .alreadyPresent),
    (.poison, ESRCH, 0, .processGone),
    (.continue, EINVAL, 0, .failed),
    (.wake, ESRCH, 0, .processGone),
  ])
  func everyAnswerHasOneMeaning(operation: Operation, errno: Int32, progress: Int64, expected: KernelOutcome) {
    let answer = KernelAnswer(cuffd_answer_classify(operation.ioctlCode, -1, errno, progress, 8192))
    #expect(answer.outcome == expected)
    #expect(answer.errno == Errno(rawValue: errno))
    // The same rule reaches users as the failure's kind.
    let failure = OperationFailure(
      operation: operation, errno: Errno(rawValue: errno), destination: 0, length: 8192, bytesDone: answer.bytesDone)
    let kinds: [KernelOutcome: FailureKind] = [
      .partial: .partial, .retryAfterEvents: .retryAfterEvents, .sourceMissing: .sourceMissing,
      .busy: .busy, .alreadyPresent: .alreadyPresent, .processGone: .processGone, .failed: .refused,
    ]
    #expect(failure.kind == kinds[expected])
  }

  @Test func aClosedDescriptorIsAnAnswerNotACrash() {
    let answer = RangeIoctl.copy(-1, 0x1000, from: 0x2000, length: 4096)
    #expect(answer.errno == .badFileDescriptor)
    #expect(answer.outcome == .failed)
    #expect(answer.bytesDone == 0)
  }

  // MARK: Event decoding from hand-made records

  private func record(code: UInt8, words: [UInt64]) -> [UInt8] {
    var bytes = [UInt8](repeating: 0, count: Userfaultfd.eventSize)
    bytes[0] = code
    for (index, word) in words.enumerated() {
      withUnsafeBytes(of: word.littleEndian) { bytes.replaceSubrange((8 + 8 * index)..<(16 + 8 * index), with: $0) }
    }
    return bytes
  }

  private func decode(_ bytes: [UInt8], threadIDs: Bool = false) -> Userfaultfd.DecodedRecord {
    bytes.withUnsafeBytes { Userfaultfd.decodeRecord($0, threadIDs: threadIDs) }
  }

  @Test func pageFaultRecordDecodes() {
    let bytes = record(code: UInt8(CUFFD_EVENT_PAGEFAULT), words: [1 | 4, 0x7F00_1234_5000, 4242])
    guard case .event(.pageFault(let fault)) = decode(bytes, threadIDs: true) else {
      Issue.record("not a page fault")
      return
    }
    #expect(fault.address == 0x7F00_1234_5000)
    #expect(fault.flags == [.write, .minor])
    #expect(fault.threadID == 4242)
    guard case .event(.pageFault(let anonymous)) = decode(bytes) else { return }
    #expect(anonymous.threadID == nil, "no thread id unless negotiated")
  }

  @Test func nonCooperativeRecordsDecode() {
    if case .event(.remap(let from, let to, let length)) = decode(record(code: UInt8(CUFFD_EVENT_REMAP), words: [0x1000, 0x9000, 0x3000])) {
      #expect(from == 0x1000 && to == 0x9000 && length == 0x3000)
    } else { Issue.record("remap") }
    if case .event(.remove(let start, let end)) = decode(record(code: UInt8(CUFFD_EVENT_REMOVE), words: [0x1000, 0x5000])) {
      #expect(start == 0x1000 && end == 0x5000)
    } else { Issue.record("remove") }
    if case .event(.unmap(let start, let end)) = decode(record(code: UInt8(CUFFD_EVENT_UNMAP), words: [0x2000, 0x4000])) {
      #expect(start == 0x2000 && end == 0x4000)
    } else { Issue.record("unmap") }
    if case .fork(let descriptor) = decode(record(code: UInt8(CUFFD_EVENT_FORK), words: [77])) {
      #expect(descriptor == 77)
    } else { Issue.record("fork") }
    if case .event(.unrecognized(let code)) = decode(record(code: 0x7E, words: [])) {
      #expect(code == 0x7E)
    } else { Issue.record("unknown code") }
  }

  @Test func hostileRecordsDecodeWithoutTrapping() {
    // A remap length that does not fit in Int, all-ones addresses: decoded, not a crash.
    let bytes = record(code: UInt8(CUFFD_EVENT_REMAP), words: [.max, .max, .max])
    if case .event(.remap(_, _, let length)) = decode(bytes) { #expect(length == -1) } else { Issue.record("remap") }
  }

  // MARK: Error descriptions

  @Test func invalidArgumentsSayWhatAndWhere() {
    #expect(UserfaultfdError.invalidArgument(.copy, .misaligned(role: .source, address: 0x1008, pageSize: 4096)).description
      == "UFFDIO_COPY: invalid argument: source address 0x1008 is not aligned to the page size (4096 bytes)")
    #expect(UserfaultfdError.invalidArgument(.readEvents, .outOfRange(parameter: "batchSize", value: 0, valid: 1...64)).description
      == "read: invalid argument: batchSize must be 1 to 64, got 0")
    #expect(UserfaultfdError.invalidArgument(.register, .handleLacksFeatures(.sigbus)).description
      == "UFFDIO_REGISTER: invalid argument: the userfaultfd must be opened with features: [.sigbus]")
  }

  @Test func kernelRefusalsExplainThemselves() {
    let busy = OperationFailure(operation: .move, errno: .resourceBusy, destination: 0x2000, source: 0x1000, length: 4096)
    #expect(busy.description == "UFFDIO_MOVE of 4096 bytes from 0x1000 to 0x2000 failed after 0 bytes: EBUSY: "
      + Explanation.of(.move, .resourceBusy, partial: false, bytesDone: 0))
    #expect(Explanation.of(.move, .resourceBusy, partial: false, bytesDone: 0)
      != Explanation.of(.register, .resourceBusy, partial: false, bytesDone: 0))
    let partial = OperationFailure(operation: .copy, errno: .resourceTemporarilyUnavailable, destination: 0, length: 8192, bytesDone: 4096)
    #expect(partial.isPartial && partial.kind == .partial)
    #expect(partial.explanation == "stopped after 4096 bytes; resume at that offset to finish or learn why")
  }

  @Test func openFailureExplainsTheFix() {
    let denied = UserfaultfdError.openFailed([
      OpenAttempt(method: .syscall, errno: .notPermitted),
      OpenAttempt(method: .devUserfaultfd, errno: .permissionDenied),
    ])
    #expect(denied.description == "could not open a userfaultfd (tried syscall: EPERM; /dev/userfaultfd: EACCES). To fix: "
      + "unprivileged use is off: run as root or with CAP_SYS_PTRACE, set `sysctl vm.unprivileged_userfaultfd=1`,"
      + " or, if your faults come only from user mode (no read(2), io_uring or KVM access to registered memory),"
      + " pass .allowUserModeOnly; grant this user read/write access to /dev/userfaultfd (e.g. a udev rule or group)")
    #expect(denied.errno == .permissionDenied)
    let seccomp = UserfaultfdError.openFailed([OpenAttempt(method: .syscall, errno: .noFunction)])
    #expect(seccomp.description == "could not open a userfaultfd (tried syscall: ENOSYS). To fix: the kernel lacks"
      + " userfaultfd (CONFIG_USERFAULTFD) or a seccomp filter blocks the syscall (containers: allow `userfaultfd` in"
      + " the seccomp profile)")
  }

  @Test func errnoNamesAreOneTable() {
    #expect(ErrnoName.of(Errno.resourceBusy) == "EBUSY")
    #expect(ErrnoName.of(Int32(EEXIST)) == "EEXIST")
    #expect(ErrnoName.of(Int32(-3)) == "errno -3")
    #expect(ErrnoName.of(Int32(100_000)) == "errno 100000")
  }
}

/// The snapshot server's input, checked without a kernel: the handshake's JSON and its regions.
@Suite("Snapshot regions, without a kernel")
struct SnapshotRegionTests {
  static let page = UInt64(PageSize.base)

  @Test func firecrackersJSONDecodes() throws {
    let json = #"[{"base_host_virt_addr":140000000000,"size":8192,"offset":4096,"page_size":4096,"page_size_kib":4},"#
      + #"{"base_host_virt_addr":140000100000,"size":2097152,"offset":0,"page_size_kib":2048}]"#
    let regions = try SnapshotServer.decodeRegions(Array(json.utf8))
    #expect(regions.count == 2)
    #expect(regions[0].baseHostVirtAddr == 140_000_000_000 && regions[0].size == 8192 && regions[0].offset == 4096)
    #expect(regions[0].effectivePageSize == 4096)
    #expect(regions[1].effectivePageSize == 2 << 20, "page_size_kib alone still says 2 MiB")
  }

  @Test(arguments: ["", "{}", "[{\"size\":1}]", "[1,2]", "not json"])
  func malformedHandshakesAreTypedErrors(text: String) {
    #expect(throws: UserfaultfdError.self) { _ = try SnapshotServer.decodeRegions(Array(text.utf8)) }
  }

  func region(_ base: UInt64, _ size: UInt64, _ offset: UInt64, page: UInt64? = page) -> GuestRegion {
    var region = GuestRegion(base: 0, size: 0, offset: 0)
    (region.baseHostVirtAddr, region.size, region.offset) = (base, size, offset)
    region.pageSize = page
    region.pageSizeKib = nil
    return region
  }

  @Test func badRegionsAreRefusedBeforeServing() {
    let p = Self.page
    let cases: [[GuestRegion]] = [
      [],  // none
      [region(0x10000, 0, 0)],  // empty
      [region(0x10001, p, 0)],  // misaligned base
      [region(0x10000, p + 1, 0)],  // ragged size
      [region(0x10000, p, 1)],  // misaligned offset
      [region(0x10000, 16 * p, 0)],  // beyond an 8-page snapshot
      [region(0x10000, p, UInt64.max - p + 1)],  // offset + size overflows
      [region(UInt64.max - p + 1, 2 * p, 0)],  // wraps the address space
      [region(0x10000, 4 * p, 0), region(0x10000 + 2 * p, 2 * p, 0)],  // overlap
      [region(0x10000, p, 0, page: 3000)],  // not a power of two
      [region(0x10000, p, 0, page: 512)],  // below the base page
    ]
    for regions in cases {
      #expect(throws: UserfaultfdError.self, "\(regions)") { _ = try RestorePageMap(regions, snapshotLength: Int(8 * p)) }
    }
  }

  @Test func releasesAreTrackedPerPage() throws {
    let p = UInt(Self.page)
    var map = try RestorePageMap([region(0x100000, 8 * Self.page, 0), region(0x10000, 2 * Self.page, 0)], snapshotLength: Int(8 * p))
    #expect(map.regions.map(\.base) == [0x10000, 0x100000], "sorted, indices follow")
    #expect(map.untouched == 10)
    #expect(map.region(containing: 0x10000 + p) == 0 && map.region(containing: 0x100000 + 7 * p) == 1)
    #expect(map.region(containing: 0x10000 + 2 * p) == nil && map.region(containing: 0) == nil)
    #expect(map.release(start: 0x100000 + p, end: 0x100000 + 3 * p) == 2)
    #expect(map.states[3] == .released && map.states[4] == .released && map.states[5] == .untouched)
    #expect(map.untouched == 8)
    #expect(map.untouchedRun(from: 5, in: 1, limit: 100) == 5, "stops at the region's end")
    #expect(map.release(start: 0x100000 + 5 * p, end: 0x100000 + 3 * p) == 0, "an inverted range releases nothing")
  }

  @Test func anyRegionsFromAClientAreRefusedOrServedNeverATrap() {
    var state: UInt64 = 0x5EED
    func next() -> UInt64 {
      state &+= 0x9E37_79B9_7F4A_7C15
      var z = state
      z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
      z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
      return z ^ (z >> 31)
    }
    // Mostly hostile values, some plausible ones, so both paths run.
    func value() -> UInt64 { next() % 3 == 0 ? next() : (next() % 64) * Self.page }
    var accepted = 0
    for _ in 0..<3000 {
      let count = Int(next() % 4) + 1
      let regions = (0..<count).map { _ in region(value(), value(), value(), page: next() % 5 == 0 ? next() : Self.page) }
      guard var map = try? RestorePageMap(regions, snapshotLength: Int(64 * Self.page)) else { continue }
      accepted += 1
      _ = map.release(start: UInt(truncatingIfNeeded: next()), end: UInt(truncatingIfNeeded: next()))
      _ = map.region(containing: UInt(truncatingIfNeeded: next()))
    }
    #expect(accepted > 0, "some random region sets are valid, and were exercised")
  }

  @Test func fdinfoTellsFeaturesAndIoctls() {
    let info = AdoptedDescriptorInfo(fdinfo: "pos:\t0\nflags:\t02004002\nmnt_id:\t15\nino:\t1057\npending:\t0\ntotal:\t0\nAPI:\taa:80000008:c000000000000003\n")
    #expect(info.features == [.eventRemove], "the kernel's own INITIALIZED bit is not a feature")
    #expect(info.ioctls.rawValue == 0xc000000000000003)
    #expect(AdoptedDescriptorInfo(fdinfo: "garbage").features == [])
  }
}
