import Glibc
import CUserfaultfd
import SystemPackage

/// What this machine's kernel offers userfaultfd users, found by trying, not by version numbers.
public struct KernelProbe: Sendable {
  /// `uname -r`.
  public let kernelRelease: String
  /// How a userfaultfd could be opened, or nil when none could.
  public let openMethod: OpenMethod?
  /// Why opening failed, when it did.
  public let openError: String?
  /// `vm.unprivileged_userfaultfd` (0 or 1), nil when unreadable.
  public let unprivilegedUserfaultfd: Int?
  /// Features the kernel offers.
  public let supportedFeatures: Features
  /// Ioctls `UFFDIO_REGISTER` allows on a private anonymous range registered in MISSING mode.
  public let rangeIoctls: Ioctls
  /// The transparent huge page mode (`always`, `madvise` or `never`), nil when unknown.
  public let transparentHugePages: String?
  /// The base page size in bytes.
  public let pageSize: Int
  /// Whether a real one-page UFFDIO_MOVE succeeded here, with the data arriving intact.
  public let moveUsable: Bool
  /// Whether the descriptor this process gets serves faults the kernel takes on registered memory
  /// (false for a user-mode-only descriptor); nil when none could be opened.
  public let handlesKernelFaults: Bool?
  /// Whether to use UFFDIO_MOVE here, and why (see ``MoveVerdict``).
  public let moveVerdict: MoveVerdict
  /// One line: is UFFDIO_MOVE usable here, and if not, why.
  public let verdict: String

  /// Probes the running kernel. Never throws: what fails is reported in the fields.
  public static func run() -> KernelProbe {
    let release = unameRelease()
    let unprivileged = readSmallFile("/proc/sys/vm/unprivileged_userfaultfd")
      .flatMap { Int(String($0.filter { !$0.isWhitespace })) }
    let thp = readSmallFile("/sys/kernel/mm/transparent_hugepage/enabled").flatMap(bracketed)
    let uffd: Userfaultfd
    do {
      uffd = try Userfaultfd(options: .allowUserModeOnly)
    } catch {
      return KernelProbe(
        kernelRelease: release, openMethod: nil, openError: error.description,
        unprivilegedUserfaultfd: unprivileged, supportedFeatures: [], rangeIoctls: [],
        transparentHugePages: thp, pageSize: PageSize.base, moveUsable: false,
        handlesKernelFaults: nil, moveVerdict: .blocked(error.description),
        verdict: "UFFDIO_MOVE is not usable: \(error.description)")
    }
    var ioctls: Ioctls = []
    let moveResult: Result<Void, UserfaultfdError> = Result { () throws(UserfaultfdError) in
      let page = PageSize.base
      let memory = try AnonymousMemory(length: 2 * page)
      let source = memory.baseAddress, destination = memory.baseAddress + page
      ioctls = try uffd.register(destination, length: page, mode: .missing)
      source.storeBytes(of: 0x5EED_F00D, as: UInt64.self)
      // The raw ioctl with SIGSYS noted: a seccomp filter may trap it instead of failing it.
      var arg = cuffd_move(
        dst: UInt64(UInt(bitPattern: destination)), src: UInt64(UInt(bitPattern: source)), len: UInt64(page),
        mode: 0, move: 0)
      var sigsys: Int32 = 0
      let result = cuffd_ioctl_move_noting_sigsys(uffd.fileDescriptor.rawValue, &arg, &sigsys)
      if sigsys != 0 {
        throw .notSupported(.move, "a seccomp filter traps UFFDIO_MOVE (SIGSYS)")
      }
      if result != 0 {
        throw .operationFailed(OperationFailure(
          operation: .move, errno: .current, destination: Address(destination),
          source: Address(source), length: page))
      }
      guard destination.load(as: UInt64.self) == 0x5EED_F00D,
            source.load(as: UInt64.self) == 0 else {
        throw .notSupported(.move, "UFFDIO_MOVE reported success but the moved page did not arrive intact")
      }
    }
    let moveVerdict = MoveVerdict.decide(
      release: release, advertised: uffd.supportedFeatures.contains(.move), selfTest: moveResult.error)
    let verdict: String
    switch moveResult {
    case .success:
      verdict = "UFFDIO_MOVE is usable: a test page moved zero-copy (\(uffd.openMethod.rawValue))"
    case .failure(let error):
      if !uffd.supportedFeatures.contains(.move) {
        verdict = "UFFDIO_MOVE is not supported by this kernel (Linux 6.8 or later): \(error)"
      } else {
        verdict = "UFFDIO_MOVE is advertised but a test move failed: \(error)"
      }
    }
    return KernelProbe(
      kernelRelease: release, openMethod: uffd.openMethod, openError: nil,
      unprivilegedUserfaultfd: unprivileged, supportedFeatures: uffd.supportedFeatures,
      rangeIoctls: ioctls, transparentHugePages: thp, pageSize: PageSize.base,
      moveUsable: moveResult.isSuccess, handlesKernelFaults: uffd.handlesKernelFaults,
      moveVerdict: moveVerdict, verdict: verdict)
  }

  private static func unameRelease() -> String {
    var info = utsname()
    guard uname(&info) == 0 else { return "unknown" }
    return withUnsafeBytes(of: &info.release) { raw in
      String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
    }
  }

  /// `always [madvise] never` → `madvise`.
  private static func bracketed(_ text: String) -> String? {
    guard let open = text.firstIndex(of: "["), let close = text.firstIndex(of: "]"), open < close
    else { return nil }
    return String(text[text.index(after: open)..<close])
  }
}

extension Result {
  fileprivate var isSuccess: Bool {
    if case .success = self { return true }
    return false
  }

  fileprivate var error: Failure? {
    if case .failure(let error) = self { return error }
    return nil
  }
}
