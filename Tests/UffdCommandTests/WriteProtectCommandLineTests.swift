import ArgumentParser
import Foundation
import Synchronization
import Testing
import UffdTools
import Userfaultfd
@testable import uffd

/// `uffd snapshot live` and `uffd dirty watch`: bad values are usage errors; and each command runs
/// for real against a range offered with `MemoryOffer` (by a thread of this process standing in
/// for the cooperating process: the handshake, the adopted userfaultfd and the memfd view are the
/// same as across processes).
@Suite("uffd snapshot live and dirty watch")
struct WriteProtectCommandLineTests {
  @Test(arguments: [
    ["snapshot", "live"], ["snapshot", "live", "--pid", "1", "--socket", "/tmp/s"],
    ["snapshot", "live", "--pid", "0", "--socket", "/tmp/s", "--out", "/tmp/o"],
    ["snapshot", "live", "--pid", "-4", "--socket", "/tmp/s", "--out", "/tmp/o"],
    ["snapshot", "live", "--pid", "1", "--socket", "/tmp/s", "--out", "/tmp/o", "--range", "10"],
    ["snapshot", "live", "--pid", "1", "--socket", "/tmp/s", "--out", "/tmp/o", "--range", "0x2000-0x1000"],
    ["snapshot", "live", "--pid", "1", "--socket", "/tmp/s", "--out", "/tmp/o", "--range", "0xzz-0x1000"],
    ["snapshot", "live", "--pid", "1", "--socket", "/tmp/s", "--out", "/tmp/o", "--timeout-seconds", "0"],
    ["dirty", "watch", "--pid", "1"], ["dirty", "watch", "--pid", "1", "--socket", "/tmp/s", "--interval-ms", "5"],
    ["dirty", "watch", "--pid", "1", "--socket", "/tmp/s", "--count", "0"],
    ["dirty", "watch", "--pid", "1", "--socket", "/tmp/s", "--range", "-"],
    ["dirty", "watch", "--pid", "0", "--socket", "/tmp/s"],
    ["dirty", "watch", "--pid", "1", "--socket", "/tmp/s", "--timeout-seconds", "3601"],
  ])
  func badValuesAreUsageErrors(arguments: [String]) {
    expectUsageError(arguments)
  }

  static let hasShmemWP = DirtyTrackingBackend.writeProtectFaults.isAvailable(
    for: .shmem, supported: (try? Userfaultfd.probeSupportedFeatures().features) ?? [])

  /// The offering side: offers `memory`, and once the tool says `cut`, writes every page (each
  /// write to a page not yet copied faults and waits for the tool's handler thread), then waits
  /// for `done`.
  final class Offerer: @unchecked Sendable {
    // @unchecked: `failure` is written by the thread and read after it finished (`finished`).
    let finished = Atomic<Bool>(false)
    var failure: String?

    init(memory: AnonymousMemory, path: String, purpose: MemoryOffer.Purpose, writeRounds: Int) {
      let box = Box()
      let this = self
      let worker = Thread {
        defer { this.finished.store(true, ordering: .releasing) }
        do {
          let offer = try MemoryOffer(memory: memory, socketPath: path, purpose: purpose)
          defer { offer.close() }
          box.ready.store(true, ordering: .releasing)
          guard try offer.handOver(timeout: .seconds(20)) else { this.failure = "no tool connected"; return }
          // Writes start once they are seen: after the cut, or once the tool is watching.
          let word = purpose == .liveSnapshot ? "cut" : "watching"
          guard try offer.waitForTool(timeout: .seconds(20)) == word else { this.failure = "no \(word)"; return }
          for round in 0..<writeRounds {
            for page in 0..<(memory.length / PageSize.base) {
              (memory.baseAddress + page * PageSize.base).storeBytes(of: UInt64(1000 + round), as: UInt64.self)
            }
            if purpose == .dirtyTracking { usleep(30_000) }
          }
          guard try offer.waitForTool(timeout: .seconds(30)) == "done" else { this.failure = "no done"; return }
        } catch {
          this.failure = "\(error)"
        }
      }
      worker.start()
      let deadline = Date().addingTimeInterval(10)
      while !box.ready.load(ordering: .acquiring) && !finished.load(ordering: .acquiring) && Date() < deadline { usleep(1000) }
    }

    final class Box: Sendable { let ready = Atomic<Bool>(false) }

    func join(seconds: Double = 30) -> Bool {
      let deadline = Date().addingTimeInterval(seconds)
      while !finished.load(ordering: .acquiring) {
        if Date() > deadline { return false }
        usleep(1000)
      }
      return true
    }
  }

  @Test(.enabled(if: hasShmemWP, "needs uffd-wp on shmem (UFFD_FEATURE_WP_HUGETLBFS_SHMEM, Linux 5.19)"))
  func snapshotLiveCopiesTheOfferedRangeAsAtTheCut() throws {
    let pages = 256
    let memory = try AnonymousMemory.memfd(length: pages * PageSize.base)
    for page in 0..<pages { (memory.baseAddress + page * PageSize.base).storeBytes(of: UInt64(page), as: UInt64.self) }
    let path = "/tmp/uffd-offer-\(getpid())-live.sock"
    let out = "/tmp/uffd-offer-\(getpid())-live.snapshot"
    defer { _ = unlink(out) }
    let offerer = Offerer(memory: memory, path: path, purpose: .liveSnapshot, writeRounds: 1)
    let command = try #require(try UffdCommand.parseAsRoot(
      ["snapshot", "live", "--pid", "\(getpid())", "--socket", path, "--out", out, "--timeout-seconds", "30"]) as? SnapshotLiveCommand)
    try command.run()
    #expect(offerer.join(), "the offering thread did not finish")
    #expect(offerer.failure == nil, "\(offerer.failure ?? "")")
    let data = try #require(FileManager.default.contents(atPath: out))
    #expect(data.count == pages * PageSize.base)
    var wrong: [Int] = []
    for page in 0..<pages where data.count >= (page + 1) * PageSize.base {
      let value = data.withUnsafeBytes { $0.load(fromByteOffset: page * PageSize.base, as: UInt64.self) }
      if value != UInt64(page) { wrong.append(page) }
    }
    #expect(wrong.isEmpty, "pages not as at the cut: \(wrong.prefix(8))")
    // The memory moved on after the cut.
    #expect(memory.baseAddress.load(as: UInt64.self) == 1000)
  }

  @Test(.enabled(if: hasShmemWP, "needs uffd-wp on shmem (UFFD_FEATURE_WP_HUGETLBFS_SHMEM, Linux 5.19)"))
  func dirtyWatchReportsTheOfferedRangesWrites() throws {
    let pages = 128
    let memory = try AnonymousMemory.memfd(length: pages * PageSize.base)
    let path = "/tmp/uffd-offer-\(getpid())-watch.sock"
    let offerer = Offerer(memory: memory, path: path, purpose: .dirtyTracking, writeRounds: 4)
    let job = DirtyWatchJob(target: OfferTarget(socketPath: path, processID: getpid(), range: nil, timeoutSeconds: 30),
                            intervalMilliseconds: 50, count: 8)
    var samples: [DirtyWatchJob.Sample] = []
    try job.run { samples.append($0) }
    #expect(offerer.join(), "the offering thread did not finish")
    #expect(offerer.failure == nil, "\(offerer.failure ?? "")")
    #expect(samples.count == 8)
    let total = samples.reduce(0) { $0 + $1.pagesWritten }
    print("dirty watch: backend \(samples.first?.backend ?? "?"), pages per sample \(samples.map(\.pagesWritten))")
    #expect(total >= pages, "every page was written at least once after tracking started")
    #expect(samples.allSatisfy { $0.pagesWritten <= pages && $0.buckets.reduce(0, +) == $0.pagesWritten })
    #expect(!DirtyWatchJob.line(samples[0]).isEmpty)
  }
}
