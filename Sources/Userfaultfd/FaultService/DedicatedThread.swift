import Glibc
import Synchronization

/// A dedicated OS thread, for work that may block in a page fault: never a Swift concurrency pool
/// thread, since a pool thread that faults while the pool is busy can wait on the very thread that
/// should resolve its fault.
public final class DedicatedThread: @unchecked Sendable {
  // @unchecked: `thread` is written once in init, before the object is shared, then only read;
  // `body` is immutable and Sendable (it runs on the new thread, never on the creator's actor);
  // `joined` makes join() join the thread once, whoever calls it.
  private var thread = pthread_t()
  private let body: @Sendable () -> Void
  private let joined = Atomic<Bool>(false)

  /// Starts `body` on a new thread.
  public init(_ body: @escaping @Sendable () -> Void) throws(UserfaultfdError) {
    self.body = body
    let context = Unmanaged.passRetained(self).toOpaque()
    let result = pthread_create(&thread, nil, { context in
      guard let context else { return nil }
      let me = Unmanaged<DedicatedThread>.fromOpaque(context).takeRetainedValue()
      me.body()
      return nil
    }, context)
    if result != 0 {
      Unmanaged<DedicatedThread>.fromOpaque(context).release()
      throw .systemCallFailed("pthread_create", .init(rawValue: result))
    }
  }

  /// Waits for the body to return. Later calls (from any thread) return at once.
  public func join() {
    guard joined.compareExchange(expected: false, desired: true, ordering: .acquiringAndReleasing).exchanged else {
      return
    }
    _ = pthread_join(thread, nil)
  }
}
