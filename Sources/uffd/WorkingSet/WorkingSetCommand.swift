import ArgumentParser
import Foundation
import SnapshotPager
import UffdTools

/// `uffd working-set show|merge`: the working-set files a pager records (`uffd serve --record`).
struct WorkingSetCommand: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "working-set",
    abstract: "Print and merge recorded working sets (the pages a restore touched, in order).",
    subcommands: [Show.self, Merge.self])

  /// What `show` and `merge` print.
  struct Summary: Encodable {
    var path: String
    var formatVersion: UInt32
    var snapshot: SnapshotIdentity
    var granule: Int
    var pages: Int
    var bytes: Int
    var traces: Int
    var settled: Bool
    var recordingMs: UInt64
    /// Snapshot byte offsets in replay order (the first 16, or all with --all).
    var offsets: [UInt64]

    init(path: String, _ set: WorkingSet, all: Bool) {
      self.path = path
      formatVersion = WorkingSet.formatVersion
      snapshot = set.snapshot
      granule = set.granule
      pages = set.pages.count
      bytes = set.bytes
      traces = set.traces
      settled = set.settled
      recordingMs = set.recordingMilliseconds
      offsets = (all ? set.pages[...] : set.pages.prefix(16)).map { $0 * UInt64(set.granule) }
    }

    var text: String {
      """
      \(path): working set, format \(formatVersion)
        snapshot   \(snapshot)
        pages      \(pages) of \(granule) bytes (\(String(format: "%.1f", Double(bytes) / 1_048_576)) MiB)
        traces     \(traces) (\(settled ? "every recording settled" : "a recording ended with its session"), \(recordingMs) ms)
        order      \(offsets.map(String.init).joined(separator: " "))\(offsets.count < pages ? " …" : "")
      """
    }
  }

  struct Show: ParsableCommand {
    static let configuration = CommandConfiguration(
      abstract: "Check and print a working-set file (refused with the reason when stale or corrupt).")

    @Argument(help: "The working-set file (.wset).")
    var file: String
    @Option(help: "The snapshot it must be bound to (refused when its size, inode or mtime differ).")
    var snapshot: String?
    @Flag(help: "List every page's offset, not only the first 16.")
    var all = false
    @OptionGroup var output: OutputOptions

    func run() throws {
      do {
        let identity = try snapshot.map { path throws(WorkingSetError) in try SnapshotIdentity(path: path) }
        let summary = Summary(path: file, try WorkingSet.read(from: file, expecting: identity), all: all)
        print(output.json ? try JSONOutput.string(summary) : summary.text)
      } catch let error as WorkingSetError {
        throw ToolError("uffd working-set show: \(file): \(error)")
      }
    }
  }

  struct Merge: ParsableCommand {
    static let configuration = CommandConfiguration(
      abstract: "Merge working sets of one snapshot: the union of their pages, ordered by median rank.")

    @Option(name: .shortAndLong, help: "Where the merged working set is written.")
    var output: String
    @Argument(help: "Working-set files of the same snapshot (traces or merged sets).")
    var inputs: [String]
    @Flag(help: "List every page's offset, not only the first 16.")
    var all = false
    @OptionGroup var format: OutputOptions

    func validate() throws {
      guard !inputs.isEmpty else { throw ValidationError("give at least one working-set file to merge") }
    }

    func run() throws {
      do {
        var sets: [WorkingSet] = []
        for input in inputs { sets.append(try WorkingSet.read(from: input)) }
        let merged = try WorkingSet.merge(sets)
        try merged.write(to: output)
        let summary = Summary(path: output, merged, all: all)
        print(format.json ? try JSONOutput.string(summary) : summary.text)
      } catch let error as WorkingSetError {
        throw ToolError("uffd working-set merge: \(error)")
      }
    }
  }
}
