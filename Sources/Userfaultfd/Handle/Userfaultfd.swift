import Glibc
import CUserfaultfd
import Synchronization
import SystemPackage

/// An open userfaultfd: the handle every operation goes through.
///
/// Safe to share between threads: a compaction thread can move pages while a handler thread reads
/// events from the same handle. The descriptor is closed exactly once, by `close()` or when the last
/// reference goes away.
///
/// ```swift
/// let uffd = try Userfaultfd()
/// let memory = try AnonymousMemory(length: 4 * PageSize.base)
/// try uffd.register(memory.baseAddress, length: memory.length, mode: .missing)
/// ```
public final class Userfaultfd: Sendable {
  /// The descriptor, or -1 once closed. Atomic so `close()` races with nothing but itself.
  private let descriptor: Atomic<Int32>

  /// How the descriptor was obtained.
  public let openMethod: OpenMethod
  /// The features enabled on this handle (those requested, as the kernel confirmed them).
  public let features: Features
  /// Every feature the running kernel offers, probed at run time.
  public let supportedFeatures: Features
  /// The ioctls the kernel allows on this handle (`uffdio_api.ioctls`).
  public let ioctls: Ioctls
  /// Whether `read` returns at once when no event is pending (`O_NONBLOCK`).
  public let isNonBlocking: Bool
  /// Whether the memory this handle serves belongs to another process (an adopted descriptor):
  /// COPY, ZEROPAGE, WAKE, CONTINUE, POISON and WRITEPROTECT work across processes, their
  /// sources read from this one; MOVE moves pages only within the process that created the
  /// descriptor, so it is refused here.
  public let servesAnotherProcess: Bool
  /// What this handle registered and has not unregistered.
  let registrations = RegistrationTable()

  /// Opening options.
  public struct Options: OptionSet, Sendable, Hashable {
    /// The raw value, as the kernel interface spells it.
    public let rawValue: Int32
    /// Creates options from raw bits.
    public init(rawValue: Int32) { self.rawValue = rawValue }
    /// `O_NONBLOCK`: reading events never blocks; an empty read returns no events.
    public static let nonBlocking = Options(rawValue: 1 << 0)
    /// `UFFD_USER_MODE_ONLY`: ask for a descriptor that handles only faults from user mode.
    public static let userModeOnly = Options(rawValue: 1 << 1)
    /// Accept a user-mode-only descriptor when nothing else may be opened (an unprivileged process
    /// with `vm.unprivileged_userfaultfd = 0` and no access to `/dev/userfaultfd`). Without it
    /// opening fails instead of silently downgrading: faults the kernel takes on registered
    /// memory (read(2) into it, io_uring, KVM) would fail with EFAULT on such a descriptor.
    public static let allowUserModeOnly = Options(rawValue: 1 << 2)
  }

  /// Whether this handle serves faults the kernel itself takes on registered memory (false for a
  /// user-mode-only descriptor; see ``OpenMethod/handlesKernelFaults``).
  public var handlesKernelFaults: Bool { openMethod.handlesKernelFaults }

  /// Opens a userfaultfd with `features` enabled.
  ///
  /// Tries the `userfaultfd` system call, then `/dev/userfaultfd` (Linux 6.1+; governed by the
  /// device's permissions), both of which handle kernel-mode faults; then, only with
  /// ``Options/allowUserModeOnly``, the system call with `UFFD_USER_MODE_ONLY` (Linux 5.11+).
  /// ``openMethod`` says which worked. Supported features are probed on a throwaway descriptor
  /// first, so asking for one the kernel lacks throws
  /// ``UserfaultfdError/featuresUnsupported(requested:missing:)`` naming it, and nothing is
  /// silently dropped.
  public init(features: Features = [], options: Options = []) throws(UserfaultfdError) {
    let probe = try Self.handshake(features: [], options: options)
    _ = Glibc.close(probe.fd)
    let missing = features.subtracting(probe.features)
    guard missing.isEmpty else {
      throw .featuresUnsupported(requested: features, missing: missing)
    }
    let opened = try Self.handshake(features: features, options: options)
    self.descriptor = Atomic(opened.fd)
    self.openMethod = opened.method
    self.features = features
    self.supportedFeatures = probe.features
    self.ioctls = opened.ioctls
    self.isNonBlocking = options.contains(.nonBlocking)
    self.servesAnotherProcess = false
  }

  /// Where an adopted descriptor comes from.
  public enum Origin: Sendable, Hashable {
    /// Another process opened it (a VMM, a restoring process) and sent it over a socket: its
    /// registered memory is that process's.
    case anotherProcess
    /// This process opened it (handed between components, or inherited).
    case thisProcess
  }

  /// Adopts `descriptor`, a userfaultfd opened elsewhere and handed over (usually received with
  /// ``UnixSocket/receive(capacity:timeout:)``). The handle owns it from now on and closes it.
  ///
  /// Checks that it really is a userfaultfd (its `/proc/self/fd` link is
  /// `anon_inode:[userfaultfd]`) and reads what it was opened with from `/proc/self/fdinfo`, so the
  /// features and ioctls are known without a second `UFFDIO_API` (which the kernel would refuse).
  ///
  /// - Throws: ``UserfaultfdError/invalidArgument(_:_:)`` with
  ///   ``InvalidArgument/notAUserfaultfd(descriptor:actually:)`` when it is not one (the
  ///   descriptor is left open: it is still yours then).
  public init(adopting descriptor: FileDescriptor, origin: Origin = .anotherProcess) throws(UserfaultfdError) {
    let fd = descriptor.rawValue
    let kind = fd >= 0 ? (readLink("/proc/self/fd/\(fd)") ?? "") : ""
    guard kind == "anon_inode:[userfaultfd]" else {
      throw .invalidArgument(.adopt, .notAUserfaultfd(descriptor: fd, actually: kind))
    }
    let info = AdoptedDescriptorInfo(fdinfo: readSmallFile("/proc/self/fdinfo/\(fd)") ?? "")
    self.descriptor = Atomic(fd)
    self.openMethod = .adopted
    self.features = info.features
    self.supportedFeatures = Self.supportedFeaturesOnce ?? info.features
    self.ioctls = info.ioctls
    self.isNonBlocking = fcntl(fd, F_GETFL) & O_NONBLOCK != 0
    self.servesAnotherProcess = origin == .anotherProcess
  }

  /// Adopts a descriptor the kernel handed over in a fork event; it inherits `parent`'s features.
  init(forkedDescriptor fd: Int32, parent: Userfaultfd) {
    self.descriptor = Atomic(fd)
    self.openMethod = .forkEvent
    self.features = parent.features
    self.supportedFeatures = parent.supportedFeatures
    self.ioctls = parent.ioctls
    // The kernel creates fork descriptors with the parent's O_NONBLOCK / O_CLOEXEC flags.
    self.isNonBlocking = parent.isNonBlocking
    self.servesAnotherProcess = parent.servesAnotherProcess
    // The child's copy of every range the parent registered is registered with this descriptor.
    let inherited = parent.registrations.snapshot
    registrations.update { $0 = inherited }
  }

  deinit {
    let fd = descriptor.exchange(-1, ordering: .acquiringAndReleasing)
    if fd >= 0 { _ = Glibc.close(fd) }
  }

  /// The kernel's features, probed once per process (they do not change while it runs): what an
  /// adopted descriptor, which cannot be asked again, is measured against.
  private static let supportedFeaturesOnce: Features? = try? probeSupportedFeatures().features

  /// The features this kernel offers, probed on a throwaway descriptor (which is closed again).
  public static func probeSupportedFeatures() throws(UserfaultfdError) -> (features: Features, method: OpenMethod) {
    let probe = try handshake(features: [], options: [])
    _ = Glibc.close(probe.fd)
    return (probe.features, probe.method)
  }

  /// Closes the descriptor now. Later operations throw ``UserfaultfdError/closed(_:)``; closing
  /// twice is harmless. Close only when no other thread is still inside an operation on this
  /// handle: the number could otherwise be reused by a new file before that operation runs.
  public func close() {
    let fd = descriptor.exchange(-1, ordering: .acquiringAndReleasing)
    if fd >= 0 { _ = Glibc.close(fd) }
  }

  /// Unregisters every range this handle registered (through ``register(_:length:mode:)``) and
  /// has not unregistered: the kernel wakes every thread waiting there, and their accesses become
  /// ordinary faults. What a fault server does when it stops, so no thread is left waiting.
  public func unregisterAll() {
    let ranges = registrations.snapshot.ranges
    for range in ranges {
      guard let start = UnsafeMutableRawPointer(bitPattern: range.start) else { continue }
      try? unregister(start, length: Int(range.end - range.start))
    }
  }

  /// Whether `address` lies in a range this handle registered in MISSING or MINOR mode, where
  /// reading a page that is not mapped raises a userfault on this handle. Allocation-free.
  func faultsWhenMissing(at address: UInt) -> Bool {
    registrations.read { $0.faultsWhenMissing(at: address) }
  }

  /// Throws when a page of `source` (memory the kernel is about to read for `operation`) is
  /// missing in a range this handle registered in MISSING or MINOR mode: the kernel's read would
  /// raise a userfault on this very handle, and the call would wait until someone resolves it,
  /// forever if the caller is the only one who could. Checked page by page in /proc/self/pagemap,
  /// only where the source overlaps such a range. A page another thread drops after this check
  /// can still make the call wait for the handle's fault handler.
  func requireNoMissingRegisteredPage(in source: PageRange, for operation: Operation) throws(UserfaultfdError) {
    let parts = registrations.snapshot.missingFaultingParts(of: source.start, source.end)
    guard !parts.isEmpty, let map = PageMap() else { return }
    let page = UInt(PageSize.base)
    for part in parts {
      let first = part.start & ~(page - 1)
      let count = Int((part.end - first + page - 1) / page)
      guard let entries = map.entries(at: first, count: count) else { continue }
      if let index = entries.firstIndex(where: { $0.isHole }) {
        throw .invalidArgument(operation, .sourceIsMissingRegisteredPage(Address(rawValue: first + UInt(index) * page)))
      }
    }
  }

  /// The page size of the registered memory at `address` (allocation-free); nil when this handle
  /// did not register it.
  func registeredPageSize(at address: UInt) -> Int? {
    let size = registrations.read { $0.pageSize(at: address) }
    return size > 0 ? size : nil
  }

  /// Whether `close()` has run.
  public var isClosed: Bool { descriptor.load(ordering: .acquiring) < 0 }

  /// The descriptor, for poll/epoll; -1 once closed. Do not close it yourself.
  public var fileDescriptor: FileDescriptor {
    FileDescriptor(rawValue: descriptor.load(ordering: .acquiring))
  }

  /// The descriptor, or a negative number once closed.
  @inline(__always)
  var descriptorOrNegative: Int32 { descriptor.load(ordering: .acquiring) }

  /// The open descriptor for `operation`, or `closed`.
  @inline(__always)
  func fd(for operation: Operation) throws(UserfaultfdError) -> Int32 {
    let fd = descriptor.load(ordering: .acquiring)
    guard fd >= 0 else { throw .closed(operation) }
    return fd
  }

  // MARK: Opening

  private struct Opened {
    var fd: Int32
    var method: OpenMethod
    var features: Features
    var ioctls: Ioctls
  }

  /// Opens a descriptor and performs UFFDIO_API with `features`. Closes it again on failure.
  private static func handshake(features: Features, options: Options) throws(UserfaultfdError) -> Opened {
    let (fd, method) = try openDescriptor(options: options)
    var api = cuffd_api(api: CUFFD_API, features: features.rawValue, ioctls: 0)
    let result = valueOrErrno(retryOnInterrupt: true) { cuffd_ioctl_api(fd, &api) }
    if case .failure(let error) = result {
      _ = Glibc.close(fd)
      if error == .invalidArgument && !features.isEmpty {
        throw .featuresUnsupported(requested: features, missing: features)
      }
      throw .operationFailed(OperationFailure(operation: .api, errno: error, destination: Address(rawValue: 0), length: 0))
    }
    return Opened(fd: fd, method: method, features: Features(rawValue: api.features),
                  ioctls: Ioctls(rawValue: api.ioctls))
  }

  /// Tries each way of getting a descriptor in turn, recording why each failed: the syscall and
  /// `/dev/userfaultfd` (both serve kernel-mode faults), then user-mode-only when allowed.
  private static func openDescriptor(options: Options) throws(UserfaultfdError) -> (Int32, OpenMethod) {
    var flags = O_CLOEXEC
    if options.contains(.nonBlocking) { flags |= O_NONBLOCK }
    var attempts: [OpenAttempt] = []
    if options.contains(.userModeOnly) {
      // Asked for explicitly: the system call with UFFD_USER_MODE_ONLY, nothing else.
      switch valueOrErrno(retryOnInterrupt: true, { cuffd_userfaultfd(flags | CUFFD_USER_MODE_ONLY) }) {
      case .success(let fd): return (fd, .syscallUserModeOnly)
      case .failure(let error): attempts.append(OpenAttempt(method: .syscallUserModeOnly, errno: error))
      }
      throw .openFailed(attempts)
    }

    switch valueOrErrno(retryOnInterrupt: true, { cuffd_userfaultfd(flags) }) {
    case .success(let fd): return (fd, .syscall)
    case .failure(let error): attempts.append(OpenAttempt(method: .syscall, errno: error))
    }

    switch valueOrErrno(retryOnInterrupt: true, { Glibc.open("/dev/userfaultfd", O_RDWR | O_CLOEXEC) }) {
    case .failure(let error):
      attempts.append(OpenAttempt(method: .devUserfaultfd, errno: error))
    case .success(let device):
      defer { _ = Glibc.close(device) }
      switch valueOrErrno(retryOnInterrupt: true, { cuffd_dev_new(device, flags) }) {
      case .success(let fd): return (fd, .devUserfaultfd)
      case .failure(let error): attempts.append(OpenAttempt(method: .devUserfaultfd, errno: error))
      }
    }

    if options.contains(.allowUserModeOnly) {
      switch valueOrErrno(retryOnInterrupt: true, { cuffd_userfaultfd(flags | CUFFD_USER_MODE_ONLY) }) {
      case .success(let fd): return (fd, .syscallUserModeOnly)
      case .failure(let error): attempts.append(OpenAttempt(method: .syscallUserModeOnly, errno: error))
      }
    }
    throw .openFailed(attempts)
  }
}
