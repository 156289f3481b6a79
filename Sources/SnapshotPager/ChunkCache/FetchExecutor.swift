import Dispatch
import Synchronization
import Userfaultfd

/// The threads chunk fetches run on (their tasks prefer this executor): two threads of their own,
/// so a fetch never waits for Swift concurrency's shared pool, which the application embedding
/// the pager may keep busy or block (a test, a synchronous wait in an async context). The HTTP
/// I/O itself runs on async-http-client's event loops; this runs the rest (the deadline races,
/// the digest checks, the copies into the cache).
final class FetchExecutor: TaskExecutor, Sendable {
  /// The one every cache of the process shares (its threads live as long as the process).
  static let shared = FetchExecutor(threads: 2)

  private let jobs = Mutex<[UnownedJob]>([])
  private let available = DispatchSemaphore(value: 0)

  private init(threads: Int) {
    for _ in 0..<threads {
      // Should a thread not start, the others (or the first enqueue's fallback) still run jobs.
      _ = try? DedicatedThread { [self] in work() }
    }
  }

  func enqueue(_ job: consuming ExecutorJob) {
    let job = UnownedJob(job)
    jobs.withLock { $0.append(job) }
    available.signal()
  }

  private func work() {
    while true {
      available.wait()
      guard let job = jobs.withLock({ $0.isEmpty ? nil : $0.removeFirst() }) else { continue }
      job.runSynchronously(on: asUnownedTaskExecutor())
    }
  }
}
