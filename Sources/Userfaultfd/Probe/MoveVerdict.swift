import Glibc

/// Whether to use UFFDIO_MOVE on this machine, decided the way Android ART decides it: the feature
/// bit is necessary, not sufficient.
///
/// MOVE arrived in Linux 6.8, but fixes that matter went to the stable trees later (the huge zero
/// page, a `split_folio` deadlock, `ALLOW_SRC_HOLES` on non-present PMDs): ART enables MOVE on
/// upstream kernels only from 6.12.20, 6.13.8 and 6.14 on. A distribution kernel may carry the
/// backports under an older number: set `UFFD_TRUST_MOVE=1` in the environment to trust it.
public enum MoveVerdict: Sendable, Hashable, CustomStringConvertible {
  /// The feature bit is set, the kernel is not a known-bad version, and a one-page self-test
  /// moved a page intact.
  case usable
  /// The kernel does not offer MOVE (no feature bit: Linux < 6.8).
  case absent
  /// The kernel offers MOVE but its version lacks fixes that went to stable later (the text
  /// names the range); `UFFD_TRUST_MOVE=1` overrides.
  case knownBadKernel(String)
  /// Advertised, but the self-test failed: a seccomp filter (ENOSYS, EPERM) or anything else
  /// (the text says what).
  case blocked(String)

  /// The verdict as one word, for JSON: `usable`, `absent`, `known-bad-kernel`, `blocked`.
  public var name: String {
    switch self {
    case .usable: return "usable"
    case .absent: return "absent"
    case .knownBadKernel: return "known-bad-kernel"
    case .blocked: return "blocked"
    }
  }

  /// Whether MOVE should be used.
  public var isUsable: Bool { self == .usable }

  public var description: String {
    switch self {
    case .usable: return "usable"
    case .absent: return "absent: this kernel has no UFFDIO_MOVE (Linux 6.8 or later)"
    case .knownBadKernel(let why): return "known-bad kernel: \(why); set UFFD_TRUST_MOVE=1 to trust a patched kernel"
    case .blocked(let why): return "blocked: \(why)"
    }
  }

  /// Decides from the kernel release (`uname -r`), the feature bit and the self-test's error.
  static func decide(
    release: String, advertised: Bool, selfTest: UserfaultfdError?,
    trustOverride: Bool = Environment.trustMove
  ) -> MoveVerdict {
    guard advertised else { return .absent }
    if let error = selfTest { return .blocked(error.description) }
    if !trustOverride, let why = knownBadReason(release: release) { return .knownBadKernel(why) }
    return .usable
  }

  /// Why `release` is a kernel ART would not trust with MOVE, or nil.
  static func knownBadReason(release: String) -> String? {
    let numbers = release.split(whereSeparator: { !$0.isNumber }).prefix(3).compactMap { Int($0) }
    guard numbers.count >= 2 else { return nil }
    let (major, minor, patch) = (numbers[0], numbers[1], numbers.count > 2 ? numbers[2] : 0)
    guard major == 6 else { return nil }
    switch minor {
    case 8...11: return "Linux \(major).\(minor) predates MOVE fixes that went to 6.12.20, 6.13.8 and 6.14"
    case 12 where patch < 20: return "Linux 6.12.\(patch) lacks MOVE fixes that went to 6.12.20"
    case 13 where patch < 8: return "Linux 6.13.\(patch) lacks MOVE fixes that went to 6.13.8"
    default: return nil
    }
  }
}

/// Environment switches read once.
enum Environment {
  /// `UFFD_TRUST_MOVE=1`: trust MOVE on a kernel whose version is known-bad upstream.
  static let trustMove: Bool = {
    guard let value = getenv("UFFD_TRUST_MOVE") else { return false }
    return String(cString: value) == "1"
  }()
}
