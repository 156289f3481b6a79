import ArgumentParser
import Foundation
import UffdTools

/// `uffd bench remote`: parses and calls ``RemoteBenchmark``.
struct RemoteBenchCommand: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "remote",
    abstract: "Restore one snapshot's working set from the local file, the warm chunk cache, nginx and S3 (1 ms injected), with a recorded working set, and 64 clones at once.",
    discussion: """
      Needs nginx and an S3-compatible server on loopback: `source .ci/remote-servers` starts both \
      and exports UFFD_TEST_HTTP_URL, UFFD_TEST_HTTP_ACCESS_LOG, UFFD_TEST_S3_ENDPOINT and \
      UFFD_TEST_S3_BUCKET, which the options default to. Latency is injected by a proxy on \
      127.0.0.1 in front of each server. JSON: mib, runs, chunk_bytes, latency_ms, machine, rows[]: \
      source (local, cache-warm, http-cold, s3-cold, local-recorded, http-recorded, \
      http-recorded-64k, fleet-64-local, fleet-64, pack), clones, complete_ms, gbps, chunks_fetched, \
      chunks_needed, bytes_fetched, fault_p99_us, faults, replayed_pages, max_server_gets_per_chunk \
      (fleet rows, from nginx's access log); the pack row: base_bytes, diff_bytes, changed_fraction. \
      The -recorded rows record the clone's working set with one pager, then restore the same clone \
      from a second pager (an empty cache) that replays it; http-recorded-64k from a pack in 64 KiB \
      chunks.
      """)

  static let environment = ProcessInfo.processInfo.environment

  @Option(parsing: .unconditional, help: "Snapshot size in MiB (16-4096).")
  var mib = 256
  @Option(parsing: .unconditional, help: "Runs (1-20); medians are reported.")
  var runs = 3
  @Option(parsing: .unconditional, help: "Clones in the fleet rows (2-256).")
  var clones = 64
  @Option(parsing: .unconditional, help: "Milliseconds injected before each request (0-1000).")
  var latencyMs: Double = 1
  @Option(help: "nginx's URL (default: $UFFD_TEST_HTTP_URL).")
  var http = environment["UFFD_TEST_HTTP_URL"]
  @Option(help: "nginx's access log (default: $UFFD_TEST_HTTP_ACCESS_LOG).")
  var httpAccessLog = environment["UFFD_TEST_HTTP_ACCESS_LOG"]
  @Option(help: "The S3 server's endpoint (default: $UFFD_TEST_S3_ENDPOINT).")
  var s3Endpoint = environment["UFFD_TEST_S3_ENDPOINT"]
  @Option(help: "The bucket (default: $UFFD_TEST_S3_BUCKET).")
  var s3Bucket = environment["UFFD_TEST_S3_BUCKET"]
  @OptionGroup var output: OutputOptions

  func validate() throws {
    try check(mib, in: 16...4096, "--mib")
    try check(runs, in: 1...20, "--runs")
    try check(clones, in: 2...256, "--clones")
    guard latencyMs.isFinite, (0...1000).contains(latencyMs) else { throw ValidationError("--latency-ms must be 0 to 1000, got \(latencyMs)") }
    guard http != nil, s3Endpoint != nil, s3Bucket != nil else {
      throw ValidationError("needs nginx and an S3 server: `source .ci/remote-servers`, or give --http, --s3-endpoint and --s3-bucket")
    }
  }

  func run() async throws {
    guard let http, let s3Endpoint, let s3Bucket else { throw ValidationError("--http, --s3-endpoint and --s3-bucket") }
    let benchmark = RemoteBenchmark(
      mib: mib, runs: runs, clones: clones, latency: .microseconds(Int64(latencyMs * 1000)),
      servers: .init(http: http, httpAccessLog: httpAccessLog, s3Endpoint: s3Endpoint, s3Bucket: s3Bucket))
    let report = try await benchmark.run(progress: Progress("bench remote"))
    print(output.json ? try JSONOutput.string(report) : RemoteBenchmark.table(report))
  }
}
