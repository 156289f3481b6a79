import ArgumentParser
import Testing
@testable import uffd

/// `uffd snapshot pack|push|verify`, `uffd serve`'s remote options and `uffd bench remote`:
/// parsing, and every bad value refused before anything runs.
@Suite("uffd snapshot and remote serving options") struct SnapshotCommandLineTests {
  @Test func sizesParseInPowersOfTwo() {
    #expect(ByteCount(argument: "2MiB")?.bytes == 2 << 20)
    #expect(ByteCount(argument: "64KiB")?.bytes == 64 << 10)
    #expect(ByteCount(argument: "1G")?.bytes == 1 << 30)
    #expect(ByteCount(argument: "4096")?.bytes == 4096)
    for bad in ["", "MiB", "-1MiB", "2XB", "99999999999999999999", "9223372036854775807GiB"] {
      #expect(ByteCount(argument: bad) == nil, "\(bad)")
    }
  }

  @Test func packParsesAndRefusesBadChunks() throws {
    let pack = try #require(try UffdCommand.parseAsRoot(["snapshot", "pack", "vm.mem", "--out", "dir", "--chunk", "4MiB",
                                                         "--base", "base/manifest.json", "--json"]) as? SnapshotPackCommand)
    #expect(pack.chunk.bytes == 4 << 20 && pack.base == "base/manifest.json" && pack.output.json)
    #expect(try (UffdCommand.parseAsRoot(["snapshot", "pack", "vm.mem", "--out", "d"]) as? SnapshotPackCommand)?.chunk.bytes == 2 << 20)
    for chunk in ["1000", "512MiB", "0", "6KiB"] {
      #expect(throws: (any Error).self, "--chunk \(chunk)") { try UffdCommand.parseAsRoot(["snapshot", "pack", "f", "--out", "d", "--chunk", chunk]) }
    }
    #expect(throws: (any Error).self) { try UffdCommand.parseAsRoot(["snapshot", "pack", "f"]) }  // --out is required
  }

  @Test func pushAndVerifyParse() throws {
    let push = try #require(try UffdCommand.parseAsRoot(["snapshot", "push", "m.json", "s3://b/p", "--endpoint", "http://127.0.0.1:9000"])
      as? SnapshotPushCommand)
    #expect(push.url == "s3://b/p" && push.endpoint == "http://127.0.0.1:9000")
    #expect(throws: (any Error).self) { try UffdCommand.parseAsRoot(["snapshot", "push", "m.json", "s3://b/p", "--timeout", "0"]) }
    #expect(try UffdCommand.parseAsRoot(["snapshot", "verify", "https://h/m.json"]) is SnapshotVerifyCommand)
  }

  @Test func serveTakesURLsAndRemoteOptions() throws {
    let serve = try #require(try UffdCommand.parseAsRoot([
      "serve", "--listen", "/run/a.sock=s3://bucket/base/manifest.json", "--listen", "/run/b.sock=http://127.0.0.1:8080/m.json",
      "--cache-size", "4GiB", "--cache-dir", "/var/cache/uffd", "--cache-dir-size", "64GiB", "--endpoint", "http://127.0.0.1:9000",
      "--fetch-timeout", "0.5", "--fetch-attempts", "5", "--fault-deadline", "2", "--read-ahead", "0", "--on-fetch-failure", "end-session",
    ]) as? ServeCommand)
    let remote = serve.remote.configuration
    #expect(remote.cacheBytes == 4 << 30 && remote.cacheDirectory == "/var/cache/uffd" && remote.attempts == 5)
    #expect(remote.diskCacheBytes == 64 << 30)
    #expect(try #require(try UffdCommand.parseAsRoot(["serve", "--listen", "/a=s3://b/m.json"]) as? ServeCommand)
      .remote.configuration.diskCacheBytes == 8 << 30)
    #expect(remote.attemptTimeout == .milliseconds(500) && remote.faultDeadline == .seconds(2) && remote.readAheadChunks == 0)
    #expect(remote.onFailure == .endSession && remote.endpoint == "http://127.0.0.1:9000")
    for bad in [["--cache-size", "1MiB"], ["--cache-dir-size", "1MiB"], ["--fetch-attempts", "0"], ["--fetch-timeout", "0"], ["--fault-deadline", "nan"],
                ["--read-ahead", "65"], ["--on-fetch-failure", "zeros"]] {
      #expect(throws: (any Error).self, "\(bad)") { try UffdCommand.parseAsRoot(["serve", "--listen", "/a=s3://b/m.json"] + bad) }
    }
    // --once serves a memory file, not a manifest.
    #expect(throws: (any Error).self) { try UffdCommand.parseAsRoot(["serve", "--once", "--socket", "/a", "--snapshot", "s3://b/m.json"]) }
  }

  @Test func benchRemoteNeedsItsServers() throws {
    let bench = try #require(try UffdCommand.parseAsRoot([
      "bench", "remote", "--mib", "64", "--runs", "1", "--clones", "16", "--http", "http://127.0.0.1:1", "--s3-endpoint", "http://127.0.0.1:2",
      "--s3-bucket", "b",
    ]) as? RemoteBenchCommand)
    #expect(bench.mib == 64 && bench.clones == 16)
    for bad in [["--mib", "8"], ["--clones", "1"], ["--latency-ms", "-1"], ["--runs", "0"]] {
      #expect(throws: (any Error).self, "\(bad)") {
        try UffdCommand.parseAsRoot(["bench", "remote", "--http", "h", "--s3-endpoint", "e", "--s3-bucket", "b"] + bad)
      }
    }
  }
}
