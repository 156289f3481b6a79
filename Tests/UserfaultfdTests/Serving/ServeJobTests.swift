import CUserfaultfdTestSupport
import Foundation
import Glibc
import Synchronization
import Testing
import UffdTools
@testable import SnapshotPager
@testable import Userfaultfd

/// `uffd serve`'s job end to end (what the command runs): a socket path, a snapshot file, one
/// VMM-like client in another process, byte-exact in 4 KiB and hugetlbfs 2 MiB pages.
extension KernelTests {
@Suite("uffd serve")
struct ServeJobTests {
  func serve(pages: Int, huge: Bool, name: String) throws {
    let pageSize = huge ? PageSize.huge : PageSize.base
    let snapshot = try SnapshotServerTests.Snapshot(pages: pages, pageSize: pageSize, name: "job-\(name)")
    let socket = "/tmp/uffd-test-\(getpid())-job-\(name).sock"
    unlink(socket)
    var job = ServeJob(socketPath: socket, snapshotPath: snapshot.path)
    job.acceptTimeout = .seconds(30)
    job.configuration = .init(faultAroundPages: 16, prefetch: true)
    let result = Mutex<Result<ServeReport, any Error>?>(nil)
    let server = try DedicatedThread { [job] in
      let outcome = Result { try job.run(progress: Progress("test serve")) }
      result.withLock { $0 = outcome }
    }
    let child = cuffd_test_vmm_client(socket, snapshot.path, pages * pageSize, huge ? 1 : 0, Int32(CUFFD_TEST_VMM_FULL.rawValue))
    try #require(child > 0)
    let status = cuffd_test_wait(child, 120_000)
    #expect(status == 0, "the client's byte-by-byte checks passed")
    #expect(eventually(seconds: 30) { result.withLock { $0 != nil } }, "the job ended after the client")
    server.join()
    let report = try #require(try result.withLock { $0 }?.get())
    #expect(report.endReason == "client-hung-up")
    #expect(report.pagesByFault + report.pagesByPrefetch == pages)
    #expect(report.failedFaults == 0)
    #expect(report.zeroPages == (huge ? 0 : 4))
    #expect(access(socket, F_OK) != 0, "the socket file is removed")
  }

  @Test func servesFourKiBPages() throws {
    try serve(pages: 256, huge: false, name: "4k")
  }

  @Test(.enabled(if: HugePages.canReserve, "needs 2 MiB hugetlb pages: none could be reserved (vm.nr_hugepages)"))
  func servesTwoMiBPages() throws {
    try HugePages.withReserved(8) { try serve(pages: 4, huge: true, name: "2m") }
  }
}
}
