import SystemPackage

/// How a userfaultfd was obtained.
public enum OpenMethod: String, Sendable, Hashable, CaseIterable {
  /// The `userfaultfd(2)` system call, handling kernel- and user-mode faults.
  case syscall = "syscall"
  /// The system call with `UFFD_USER_MODE_ONLY`: what an unprivileged process gets when
  /// `vm.unprivileged_userfaultfd = 0`.
  case syscallUserModeOnly = "syscall-user-mode-only"
  /// `ioctl(USERFAULTFD_IOC_NEW)` on `/dev/userfaultfd` (Linux 6.1+), governed by the device's
  /// file permissions.
  case devUserfaultfd = "/dev/userfaultfd"
  /// Received from the kernel in a fork event.
  case forkEvent = "fork-event"
  /// Adopted: opened elsewhere (another process, usually) and handed over, e.g. over a Unix
  /// socket (``Userfaultfd/init(adopting:origin:)``).
  case adopted = "adopted"

  /// Whether a descriptor opened this way serves faults the kernel itself takes on registered
  /// memory (a `read(2)` into it, io_uring, KVM). A user-mode-only descriptor does not: those
  /// accesses fail with EFAULT ("Bad address").
  public var handlesKernelFaults: Bool { self != .syscallUserModeOnly }
}

/// One way of opening a userfaultfd that was tried, and why it failed.
public struct OpenAttempt: Sendable, Equatable {
  /// The method tried.
  public let method: OpenMethod
  /// The errno it failed with.
  public let errno: Errno

  /// Creates an attempt record.
  public init(method: OpenMethod, errno: Errno) {
    self.method = method
    self.errno = errno
  }

  /// Explains a list of failed attempts with what to change.
  static func explain(_ attempts: [OpenAttempt]) -> String {
    let tried = attempts.map { "\($0.method.rawValue): \(ErrnoName.of($0.errno))" }
      .joined(separator: "; ")
    var fixes: [String] = []
    let errnos = Set(attempts.map(\.errno.rawValue))
    if errnos.contains(Errno.noFunction.rawValue) {
      fixes.append(
        "the kernel lacks userfaultfd (CONFIG_USERFAULTFD) or a seccomp filter blocks the syscall"
          + " (containers: allow `userfaultfd` in the seccomp profile)")
    }
    if errnos.contains(Errno.notPermitted.rawValue) {
      fixes.append(
        "unprivileged use is off: run as root or with CAP_SYS_PTRACE, set"
          + " `sysctl vm.unprivileged_userfaultfd=1`, or, if your faults come only from user mode"
          + " (no read(2), io_uring or KVM access to registered memory), pass .allowUserModeOnly")
    }
    if errnos.contains(Errno.permissionDenied.rawValue) {
      fixes.append("grant this user read/write access to /dev/userfaultfd (e.g. a udev rule or group)")
    }
    if errnos.contains(Errno.noSuchFileOrDirectory.rawValue) {
      fixes.append("/dev/userfaultfd does not exist (Linux 6.1+ creates it)")
    }
    if errnos.contains(Errno.tooManyOpenFiles.rawValue) || errnos.contains(Errno.tooManyOpenFilesInSystem.rawValue) {
      fixes.append("too many open files: close some or raise `ulimit -n`")
    }
    if fixes.isEmpty { fixes.append("see userfaultfd(2)") }
    return "could not open a userfaultfd (tried \(tried)). To fix: " + fixes.joined(separator: "; ")
  }
}
