import ArgumentParser

/// `uffd snapshot`: chunked, layered snapshots for object storage (pack, push, verify), and live
/// snapshots of a running process (live). Each subcommand only parses and calls into the library.
struct SnapshotCommand: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "snapshot",
    abstract: "Pack a memory snapshot into content-addressed chunks, push it to S3 or HTTP, verify it; or take one live.",
    discussion: """
      A packed snapshot is a folder: manifest.json and chunks/<sha256>. Serve it with \
      `uffd serve --listen SOCKET=URL`, URL being the manifest's s3://, http(s):// or local address.
      """,
    subcommands: [SnapshotPackCommand.self, SnapshotPushCommand.self, SnapshotVerifyCommand.self, SnapshotLiveCommand.self]
  )
}

/// A byte count as written on the command line: `4096`, `64KiB`, `2MiB`, `1GiB` (also `K`, `M`,
/// `G`, `KB`… in the same powers of two).
struct ByteCount: ExpressibleByArgument {
  let bytes: Int

  init(bytes: Int) { self.bytes = bytes }

  init?(argument: String) {
    let units: [(String, Int)] = [("KiB", 1 << 10), ("MiB", 1 << 20), ("GiB", 1 << 30), ("TiB", 1 << 40),
                                  ("KB", 1 << 10), ("MB", 1 << 20), ("GB", 1 << 30), ("K", 1 << 10), ("M", 1 << 20),
                                  ("G", 1 << 30), ("T", 1 << 40), ("B", 1)]
    var number = argument
    var scale = 1
    for (suffix, value) in units where argument.hasSuffix(suffix) {
      number = String(argument.dropLast(suffix.count))
      scale = value
      break
    }
    guard let count = Int(number), count >= 0 else { return nil }
    let (product, overflow) = count.multipliedReportingOverflow(by: scale)
    guard !overflow else { return nil }
    bytes = product
  }
}
