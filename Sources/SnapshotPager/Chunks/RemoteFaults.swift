import Userfaultfd

extension SnapshotServer {
  /// A fault whose chunk cannot be had (every fetch attempt failed, or its deadline passed): the
  /// snapshot's policy applies. Poison makes the guest's access fail with SIGBUS and the session
  /// goes on; without POISON in the kernel (before Linux 6.6), or with the end-session policy, the
  /// session ends. Never zeros: they would be wrong bytes.
  func failRemoteFault(_ serving: inout ServingState, target: UInt, page: Int, pageSize: Int) -> Served {
    serving.statistics.failedFaults += 1
    guard let chunked = snapshot.chunked, chunked.cache.configuration.onFailure == .poison,
          uffd.supportedFeatures.contains(.poison)
    else { return .endSession }
    let answer = RangeIoctl.poison(uffd.coreDescriptor, target, length: pageSize)
    switch answer.outcome {
    case .done, .alreadyPresent:
      serving.map.mark(page..<(page + 1), .zeroFilled)
      _ = RangeIoctl.wake(uffd.coreDescriptor, target, length: pageSize)
      return .done
    case .retryAfterEvents:
      return .retry
    case .processGone:
      return .gone
    default:
      return .endSession
    }
  }
}
