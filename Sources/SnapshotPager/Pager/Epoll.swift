import CUserfaultfd
import Glibc
import SystemPackage
import Userfaultfd

/// An epoll instance and an eventfd that wakes its waiter: what each of the pager's threads waits
/// on. Level-triggered throughout, so work left for the next turn (a flooding session's further
/// events) is reported again.
final class Epoll: Sendable {
  let descriptor: Int32
  let wakeDescriptor: Int32
  /// The token the wake eventfd reports with.
  static let wakeToken = UInt64.max
  /// The most events one wait returns.
  static let capacity = 64

  init() throws(UserfaultfdError) {
    descriptor = cuffd_epoll_create()
    guard descriptor >= 0 else { throw .systemCallFailed("epoll_create1", Errno(rawValue: errno)) }
    wakeDescriptor = cuffd_eventfd()
    guard wakeDescriptor >= 0 else {
      let error = Errno(rawValue: errno)
      _ = close(descriptor)
      throw .systemCallFailed("eventfd", error)
    }
    guard cuffd_epoll_add(descriptor, wakeDescriptor, UInt32(CUFFD_EPOLL_IN), Self.wakeToken) == 0 else {
      let error = Errno(rawValue: errno)
      _ = close(descriptor)
      _ = close(wakeDescriptor)
      throw .systemCallFailed("epoll_ctl", error)
    }
  }

  deinit {
    _ = close(descriptor)
    _ = close(wakeDescriptor)
  }

  /// Watches `fd` for input (and the peer's hang-up with `hangUps`), reporting `token`.
  func add(_ fd: Int32, token: UInt64, hangUps: Bool = false) -> Bool {
    cuffd_epoll_add(descriptor, fd, UInt32(CUFFD_EPOLL_IN | (hangUps ? CUFFD_EPOLL_RDHUP : 0)), token) == 0
  }

  /// Stops watching `fd` (before it is closed).
  func remove(_ fd: Int32) { _ = cuffd_epoll_remove(descriptor, fd) }

  /// Wakes the waiter (any thread).
  func wake() {
    var one: UInt64 = 1
    _ = write(wakeDescriptor, &one, 8)
  }

  /// Clears a wake-up.
  func drainWake() {
    var value: UInt64 = 0
    _ = read(wakeDescriptor, &value, 8)
  }

  /// Ready tokens and their event bits, reused between waits (one per waiting thread).
  struct Ready: ~Copyable {
    var tokens = [UInt64](repeating: 0, count: Epoll.capacity)
    var events = [UInt32](repeating: 0, count: Epoll.capacity)
    var count = 0
  }

  /// Waits up to `milliseconds` (-1: no bound) for events.
  func wait(into ready: inout Ready, milliseconds: Int32) {
    let count = ready.tokens.withUnsafeMutableBufferPointer { tokens in
      ready.events.withUnsafeMutableBufferPointer { events in
        cuffd_epoll_wait(descriptor, tokens.baseAddress, events.baseAddress, Int32(Epoll.capacity), milliseconds)
      }
    }
    ready.count = max(0, Int(count))
  }
}
