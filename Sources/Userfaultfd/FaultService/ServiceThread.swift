#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// A dedicated OS thread (never a Swift concurrency pool thread: a pool thread that faults while
/// the pool is busy could wait on the very server that should resolve it).
final class ServiceThread: @unchecked Sendable {
  private var thread = pthread_t()
  private let body: () -> Void

  /// Starts `body` on a new thread.
  init(_ body: @escaping () -> Void) throws(UserfaultfdError) {
    self.body = body
    let context = Unmanaged.passRetained(self).toOpaque()
    let result = pthread_create(&thread, nil, { context in
      guard let context else { return nil }
      let me = Unmanaged<ServiceThread>.fromOpaque(context).takeRetainedValue()
      me.body()
      return nil
    }, context)
    if result != 0 {
      Unmanaged<ServiceThread>.fromOpaque(context).release()
      throw .systemCallFailed("pthread_create", .init(rawValue: result))
    }
  }

  /// Waits for the body to return.
  func join() {
    _ = pthread_join(thread, nil)
  }
}
