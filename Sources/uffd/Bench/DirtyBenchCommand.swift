import ArgumentParser
import UffdTools

extension DirtyBenchmark.WriterKind: ExpressibleByArgument {}

/// `uffd bench dirty`.
struct DirtyBenchCommand: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "dirty",
    abstract: "Dirty tracking and live snapshots under a writer: wp-async, uffd-wp, soft-dirty, uffd-wp-sigbus, fork-cow, none.")

  @Option(parsing: .unconditional, help: "Range size in MiB (16-65536).")
  var mib = 1024
  @Option(parsing: .unconditional, help: "Runs per row (1-50; rows interleaved); the table shows medians.")
  var runs = 3
  @Option(parsing: .unconditional, help: "Working set written, in percent of the range (1-100).")
  var dirtyPercent = 10
  @Option(parsing: .unconditional, help: "Seconds each writer is measured for from the cut (1-30).")
  var seconds = 3
  @Option(parsing: .unconditional, help: "Paced writer: one write every this many µs (1-10000).")
  var pacedIntervalUs = 10
  @Option(help: "Writers to run: saturating, paced (default: both).")
  var writer: [DirtyBenchmark.WriterKind] = []
  // Not `--rows`: `uffd bench` itself takes that option, and would take it from this command.
  @Option(help: "Run only the rows whose mode/method/writer contains this text (e.g. live-snapshot/).")
  var only: String?
  @Option(help: "Folder for the snapshot files.")
  var directory = "/tmp"
  @Option(help: "Also draw the results as an SVG picture to this file.")
  var svg: String?
  @Option(help: "Diagnostic: hold the live snapshots' background copy back this many ms after the cut (0-10000).")
  var holdCopyMs = 0
  @OptionGroup var output: OutputOptions

  func validate() throws {
    try check(mib, in: 16...65536, "--mib")
    try check(runs, in: 1...50, "--runs")
    try check(dirtyPercent, in: 1...100, "--dirty-percent")
    try check(seconds, in: 1...30, "--seconds")
    try check(pacedIntervalUs, in: 1...10000, "--paced-interval-us")
    if let svg, svg.isEmpty { throw ValidationError("--svg needs a file name") }
    try check(holdCopyMs, in: 0...10000, "--hold-copy-ms")
  }

  func run() throws {
    var benchmark = DirtyBenchmark(
      mib: mib, runs: runs, dirtyFraction: Double(dirtyPercent) / 100, seconds: Double(seconds),
      pacedIntervalMicroseconds: pacedIntervalUs,
      writers: writer.isEmpty ? DirtyBenchmark.WriterKind.allCases : writer, directory: directory)
    benchmark.holdCopyMilliseconds = holdCopyMs
    let measured = try benchmark.run(filter: only, progress: Progress("bench dirty").callAsFunction)
    if let svg { try DirtyPicture.write(measured, runs: runs, to: svg) }
    print(output.json ? try JSONOutput.string(["rows": measured]) : DirtyBenchmark.table(measured, runs: runs))
  }
}
