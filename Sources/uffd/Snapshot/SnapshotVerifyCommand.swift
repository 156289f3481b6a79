import ArgumentParser
import SnapshotPager
import UffdTools

/// `uffd snapshot verify MANIFEST`: parses and calls ``SnapshotTransfer/verify(_:endpoint:timeout:environment:)``.
struct SnapshotVerifyCommand: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "verify",
    abstract: "Check a chunked snapshot end to end: manifest checksum, every chunk's digest, the whole snapshot's identity.",
    discussion: "Exit status 0 when everything matches, 1 when anything does not (each problem printed).")

  @Argument(help: "The manifest: a local path, s3://BUCKET/KEY or http(s)://HOST/PATH.")
  var manifest: String
  @Option(help: "An S3 endpoint (overrides AWS_ENDPOINT_URL_S3 and AWS_ENDPOINT_URL).")
  var endpoint: String?
  @OptionGroup var output: OutputOptions

  func run() async throws {
    let report: SnapshotTransfer.VerifyReport
    do {
      report = try await SnapshotTransfer.verify(manifest, endpoint: endpoint)
    } catch {
      throw ToolError("uffd snapshot verify: \(error)")
    }
    if output.json {
      print(try JSONOutput.string(report))
    } else {
      print("\(report.ok ? "ok" : "FAILED"): \(report.manifest): \(report.length) bytes, \(report.layers) layer(s), \(report.chunksChecked) chunks checked")
      for problem in report.problems { print("  \(problem)") }
    }
    if !report.ok { throw ExitCode(1) }
  }
}
