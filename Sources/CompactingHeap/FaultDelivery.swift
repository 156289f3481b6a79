import Userfaultfd

/// How a mutator's fault on a page not yet compacted reaches
/// ``CompactionContext/resolveFault(at:)``: in the mutator's own SIGBUS handler, or on a
/// fault-server thread that then wakes it.
final class FaultDelivery {
  private let mode: FaultMode
  private let uffd: Userfaultfd
  private let server: FaultServer?
  private var region: SigbusRegion?
  /// The context the SIGBUS resolver reads: stable memory, freed after the region is closed.
  private let contextPointer: UnsafeMutablePointer<CompactionContext>

  init(mode: FaultMode, uffd: Userfaultfd, resources: CompactionResources) throws(HeapError) {
    self.mode = mode
    self.uffd = uffd
    let context = resources.context
    contextPointer = .allocate(capacity: 1)
    contextPointer.initialize(to: context)
    switch mode {
    case .sigbus:
      server = nil
    case .thread:
      do {
        server = try FaultServer(uffd: uffd) { fault in
          context.resolveFault(at: fault.pageAddress.rawValue)
          return .wake  // Mapped already (which woke the mutator); the wake is a no-op then.
        }
      } catch {
        contextPointer.deallocate()
        throw .system(error)
      }
    }
  }

  deinit {
    close()
    contextPointer.deinitialize(count: 1)
    contextPointer.deallocate()
  }

  /// Registers the heap (MISSING mode) and starts delivering its faults. Part of the pause.
  func register(_ start: UnsafeMutableRawPointer, length: Int) throws(UserfaultfdError) {
    switch mode {
    case .thread:
      try server?.register(start, length: length)
    case .sigbus:
      region = try SigbusRegion(
        uffd: uffd, start: start, length: length, resolver: sigbusResolver,
        context: UnsafeMutableRawPointer(contextPointer))
    }
  }

  /// Unregisters the heap and stops delivery. Safe to call more than once.
  func close() {
    server?.stop()
    region?.close()
  }
}

/// The SIGBUS resolver: a C-callable function over raw memory only (no captures, no reference
/// counting, no allocation), as a signal handler requires.
private let sigbusResolver: SigbusRegion.Resolver = { context, address in
  guard let context else { return 1 }
  context.assumingMemoryBound(to: CompactionContext.self).pointee.resolveFault(at: address)
  return 0
}
