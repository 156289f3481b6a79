import Synchronization

/// A handle's ``RegisteredRanges``, read by a fault server's serving thread on every fault while
/// other threads register and unregister.
///
/// Why two locks: with `UFFD_FEATURE_EVENT_FORK`, a thread that forks holds malloc's locks until
/// the serving thread has read its fork event. A registering thread that allocated while holding
/// the one lock the serving thread also takes would block in malloc, the serving thread would
/// block on that lock before it could read the event, and the fork would wait for good (a
/// deadlock seen under old kernels' slow forks). So the lock the serving thread takes (`current`)
/// is never held across an allocation or a release: writers build the new table outside it,
/// under their own lock (`writers`, which only writers take), and swap it in; the old table is
/// freed after `current` is released. Readers copy the table out (a retain, never a malloc).
struct RegistrationTable: ~Copyable, Sendable {
  private let current = Mutex(RegisteredRanges())
  private let writers = Mutex(())

  /// Reads the table; `body` runs under the lock the serving thread takes, so it must not allocate
  /// or free (allocation-free lookups only).
  func read<Result>(_ body: (borrowing RegisteredRanges) -> Result) -> Result {
    current.withLock { body($0) }
  }

  /// The whole table, for work that allocates (copied out under the lock: a retain).
  var snapshot: RegisteredRanges { current.withLock { $0 } }

  /// Changes the table: `change` runs on a private copy, outside the readers' lock.
  func update(_ change: (inout RegisteredRanges) -> Void) {
    writers.withLock { _ in
      var table = snapshot
      change(&table)
      current.withLock { swap(&$0, &table) }
      // `table` now holds the old ranges; they are released here, outside `current`.
    }
  }
}
