import Glibc
import SystemPackage
import Userfaultfd

/// `uffd snapshot live`: a live snapshot of a range another process offers (``MemoryOffer``),
/// written to a file while that process's writers run; faults resolved by a handler thread here.
package struct LiveSnapshotJob {
  package let target: OfferTarget
  package let outputPath: String

  package init(target: OfferTarget, outputPath: String) {
    self.target = target
    self.outputPath = outputPath
  }

  /// What the tool prints.
  package struct Result: Encodable, Sendable {
    package var processID: Int32
    package var start: String
    package var bytes: Int
    package var output: String
    package var cutMs: Double
    package var copyMs: Double
    package var copiedBeforeWrites: Int
    package var copiedInBackground: Int
    package var faultsThatWroteTheFile: Int
    package var stagingPeakPages: Int
  }

  /// Connects, protects the range (the cut), tells the process `cut`, copies, tells it `done`.
  package func run() throws -> Result {
    let (offered, region) = try target.connect()
    let file = try FileDescriptor.open(FilePath(outputPath), .readWrite, options: [.create, .truncate],
                                       permissions: [.ownerReadWrite])
    defer { try? file.close() }
    let view = offered.view + (region.lowerBound - offered.region.lowerBound)
    let snapshot = try LiveSnapshot(adopting: offered.uffd, region: region, view: view, file: file)
    do {
      try snapshot.cut()
      try offered.tell("cut")
    } catch {
      snapshot.cancel()
      throw error
    }
    let report = try snapshot.finish(timeoutSeconds: target.timeoutSeconds)
    try? offered.tell("done")
    return Result(
      processID: offered.processID, start: "0x" + String(region.lowerBound.rawValue, radix: 16),
      bytes: region.upperBound - region.lowerBound, output: outputPath, cutMs: report.cutSeconds * 1000,
      copyMs: report.copySeconds * 1000, copiedBeforeWrites: report.copiedBeforeWrites,
      copiedInBackground: report.copiedInBackground, faultsThatWroteTheFile: report.faultsThatWroteTheFile,
      stagingPeakPages: report.stagingPeakPages)
  }
}
