import ArgumentParser
import Glibc
import SnapshotPager
import Testing
@testable import uffd

/// `uffd working-set` and the daemon's working-set and restart options: bad values are usage
/// errors before anything runs; show and merge read, check and write real files.
@Suite("uffd working-set command line")
struct WorkingSetCommandLineTests {
  @Test(arguments: [
    ["working-set", "show"], ["working-set", "merge", "-o", "/tmp/x.wset"], ["working-set", "merge", "a.wset"],
    ["serve", "--listen", "a=b", "--record-traces", "0"], ["serve", "--listen", "a=b", "--record-traces", "65"],
    ["serve", "--listen", "a=b", "--settle-seconds", "0"], ["serve", "--listen", "a=b", "--settle-seconds", "nan"],
    ["serve", "--listen", "a=b", "--settle-seconds", "601"],
    ["serve", "--once", "--listen", "a=b", "--record", "/tmp/ws"], ["serve", "--once", "--listen", "a=b", "--replay", "/tmp/ws"],
    ["serve", "--once", "--listen", "a=b", "--state-dir", "/tmp/state"],
    ["serve", "--once", "--listen", "a=b", "--takeover", "/tmp/control.sock"],
  ])
  func badCommandLinesAreUsageErrors(arguments: [String]) {
    expectUsageError(arguments)
  }

  @Test func theDaemonTakesWorkingSetAndStateFolders() throws {
    let command = try UffdCommand.parseAsRoot([
      "serve", "--listen", "/run/a.sock=/srv/a.mem", "--record", "/var/lib/uffd/ws", "--replay", "/var/lib/uffd/ws",
      "--record-traces", "5", "--settle-seconds", "0.5", "--state-dir", "/var/lib/uffd/state",
      "--control", "/run/uffd/control.sock", "--takeover", "/run/uffd/control.sock",
    ])
    #expect(command is ServeCommand)
  }

  @Test func showAndMergeCheckRealFiles() throws {
    let identity = SnapshotIdentity(size: 1 << 20, device: 1, inode: 2, modifiedNanoseconds: 3)
    let a = "/tmp/uffd-cli-\(getpid())-a.wset", b = "/tmp/uffd-cli-\(getpid())-b.wset", out = "/tmp/uffd-cli-\(getpid())-m.wset"
    defer { for path in [a, b, out] { unlink(path) } }
    try WorkingSet(snapshot: identity, pages: [1, 2, 3]).write(to: a)
    try WorkingSet(snapshot: identity, pages: [3, 4]).write(to: b)
    var show = try #require(try UffdCommand.parseAsRoot(["working-set", "show", a, "--json"]) as? WorkingSetCommand.Show)
    try show.run()
    var merge = try #require(try UffdCommand.parseAsRoot(["working-set", "merge", "-o", out, a, b]) as? WorkingSetCommand.Merge)
    try merge.run()
    let merged = try WorkingSet.read(from: out, expecting: identity)
    #expect(Set(merged.pages) == [1, 2, 3, 4] && merged.traces == 2)
    // Bound to a snapshot it was not recorded from: refused with the reason.
    var stale = try #require(try UffdCommand.parseAsRoot(["working-set", "show", a, "--snapshot", "/proc/self/exe"]) as? WorkingSetCommand.Show)
    #expect(throws: (any Error).self) { try stale.run() }
  }
}
