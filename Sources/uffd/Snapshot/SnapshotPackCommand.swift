import ArgumentParser
import SnapshotPager
import UffdTools

/// `uffd snapshot pack FILE --out DIR`: parses and calls ``SnapshotPacker``.
struct SnapshotPackCommand: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "pack",
    abstract: "Pack a memory file into content-addressed chunks and a manifest (a diff over --base).",
    discussion: """
      Writes DIR/chunks/<sha256> (all-zero chunks are not stored; a chunk already there is not \
      written again) and DIR/manifest.json, every path relative to DIR so it can be copied to any \
      store as it is. With --base, only the 4 KiB pages that differ from the base are stored; the \
      manifest names the base's chunks through a path relative to DIR (keep the two folders side \
      by side in the store). --json prints the report, with `manifest` relative to DIR.
      """)

  @Argument(help: "The memory (snapshot) file.")
  var file: String
  @Option(help: "The output folder (created if missing).")
  var out: String
  @Option(help: ArgumentHelp("Chunk size: a multiple of 4 KiB up to 256 MiB (default 2MiB).", valueName: "size"))
  var chunk = ByteCount(bytes: SnapshotPacker.defaultChunkSize)
  @Option(help: ArgumentHelp("A base snapshot's manifest (local): store only what differs from it.", valueName: "manifest"))
  var base: String?
  @OptionGroup var output: OutputOptions

  func validate() throws {
    guard SnapshotPacker.chunkSizeRange.contains(chunk.bytes), chunk.bytes % 4096 == 0 else {
      throw ValidationError("--chunk must be a multiple of 4 KiB from 4KiB to 256MiB, got \(chunk.bytes) bytes")
    }
  }

  func run() async throws {
    let report: SnapshotPacker.Report
    do {
      report = try await SnapshotPacker.pack(file: file, into: out, chunkSize: chunk.bytes, basePath: base)
    } catch {
      throw ToolError("uffd snapshot pack: \(error)")
    }
    if output.json {
      print(try JSONOutput.string(report))
    } else {
      print("""
        manifest        \(out)/\(report.manifest)
        snapshot        \(report.length) bytes, \(report.identity)
        chunks          \(report.chunks) in this layer (\(report.chunksWritten) written now), \(report.zeroChunks) all-zero not stored
        layer bytes     \(report.layerBytes)\(base == nil ? "" : " (base: \(report.baseBytes), \(report.changedPages) of \(report.pages) pages changed)")
        """)
    }
  }
}
