import Glibc
import ServiceLifecycle
import SnapshotPager

/// The pager as a service of the daemon's service group: it runs until the pager has finished
/// (drained through the control socket, or stopped); the group's graceful shutdown (SIGTERM,
/// SIGINT) starts a drain.
struct PagerService: Service {
  let pager: SnapshotPagerHost

  func run() async throws {
    await withGracefulShutdownHandler {
      while !pager.isFinished {
        try? await Task.sleep(for: .milliseconds(20))
        if Task.isCancelled { pager.stop() }
      }
      _ = pager.waitUntilFinished(timeout: .seconds(5))
    } onGracefulShutdown: {
      pager.drain()
    }
  }
}
