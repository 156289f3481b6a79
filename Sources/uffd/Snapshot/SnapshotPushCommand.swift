import ArgumentParser
import SnapshotPager
import UffdTools

/// `uffd snapshot push MANIFEST URL`: parses and calls ``SnapshotTransfer/push(manifestPath:to:endpoint:timeout:environment:)``.
struct SnapshotPushCommand: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "push",
    abstract: "Upload a packed snapshot (its manifest and every chunk it names) under an S3 or HTTP prefix.",
    discussion: """
      URL is a prefix: s3://BUCKET/PREFIX (credentials from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY \
      or the AWS profile file; the endpoint from --endpoint, AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL, \
      path-style) or http(s)://HOST/PREFIX (HTTP PUT). Chunks keep their paths relative to the \
      manifest; those the store already has are skipped; the manifest goes last. Prints the \
      manifest's URL to serve (--json: manifest_url).
      """)

  @Argument(help: "The manifest `uffd snapshot pack` wrote.")
  var manifest: String
  @Argument(help: "The store prefix: s3://BUCKET/PREFIX or http(s)://HOST/PREFIX.")
  var url: String
  @Option(help: "An S3 endpoint (overrides AWS_ENDPOINT_URL_S3 and AWS_ENDPOINT_URL).")
  var endpoint: String?
  @Option(parsing: .unconditional, help: "Seconds each request may take (1-3600).")
  var timeout: Double = 60
  @OptionGroup var output: OutputOptions

  func validate() throws {
    guard timeout.isFinite, timeout >= 1, timeout <= 3600 else { throw ValidationError("--timeout must be 1 to 3600 seconds, got \(timeout)") }
  }

  func run() async throws {
    let report: SnapshotTransfer.PushReport
    do {
      report = try await SnapshotTransfer.push(manifestPath: manifest, to: url, endpoint: endpoint,
                                               timeout: .milliseconds(Int64(timeout * 1000)))
    } catch {
      throw ToolError("uffd snapshot push: \(error)")
    }
    if output.json {
      print(try JSONOutput.string(report))
    } else {
      print("\(report.manifestURL)\n(\(report.uploaded) chunks uploaded, \(report.skipped) already there, \(report.bytesUploaded) bytes)")
    }
  }
}
