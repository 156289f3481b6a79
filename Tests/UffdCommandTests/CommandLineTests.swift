import ArgumentParser
import Testing
@testable import uffd

/// The command line: every value out of range is a clear usage error before anything runs, never
/// a trap; options that name a choice accept exactly their enum's cases.
@Suite("uffd command line")
struct CommandLineTests {
  @Test(arguments: [
    ["compact", "--heap-mib", "-5"], ["compact", "--heap-mib", "0"], ["compact", "--heap-mib", "1"],
    ["compact", "--heap-mib", "99999999"], ["compact", "--heap-mib", "abc"], ["compact", "--mutators", "-1"],
    ["compact", "--mutators", "0"], ["compact", "--mutators", "65"], ["compact", "--mode", "sideways"],
    ["compact", "--fault-mode", "poll"], ["compact", "--runs", "0"], ["compact", "--runs", "-3"],
    ["compact", "--runs", "101"], ["compact", "--mutator-block-pages", "0"], ["compact", "--mutator-block-pages", "513"],
    ["compact", "--seed", "-1"], ["compact", "--gc-run-pages", "0"], ["compact", "--gc-run-pages", "2049"],
    ["compact", "--mutator-mapping", "teleport"], ["compact", "--minimum-move-run", "0"],
    ["compact", "--minimum-move-run", "2049"], ["compact", "--variants", "--svg", "/tmp/x.svg"], ["stress", "--pages", "2251799813685248"], ["stress", "--pages", "0"],
    ["stress", "--pages", "-8"], ["stress", "--seconds", "inf"], ["stress", "--seconds", "nan"],
    ["stress", "--seconds", "-1"], ["stress", "--seconds", "0"], ["stress", "--threads", "0"],
    ["stress", "--threads", "65"], ["stress", "--mover", "teleport"], ["stress", "--movers", "9"],
    ["bench", "--reps", "0"], ["bench", "--reps", "100000"], ["bench", "restore", "--only", "prefetch,teleport"],
    ["bench", "restore", "--only", ""], ["frobnicate"],
    ["serve"], ["serve", "--socket", "/tmp/x"], ["serve", "--socket", "/tmp/x", "--snapshot", "s", "--fault-around", "0"],
    ["serve", "--socket", "/tmp/x", "--snapshot", "s", "--prefetch-pages", "5000"],
    ["serve", "--socket", "/tmp/x", "--snapshot", "s", "--accept-timeout", "-1"],
    ["serve", "--socket", "/tmp/x", "--snapshot", "s", "--accept-timeout", "nan"],
    ["serve", "--listen", "nopair"], ["serve", "--listen", "=snap"], ["serve", "--listen", "sock="],
    ["serve", "--listen", "a=b", "--max-sessions", "0"], ["serve", "--listen", "a=b", "--max-sessions", "70000"],
    ["serve", "--listen", "a=b", "--socket-mode", "999"], ["serve", "--listen", "a=b", "--socket-mode", "rw"],
    ["serve", "--listen", "a=b", "--socket-owner", "root"], ["serve", "--listen", "a=b", "--socket-owner", "1:2:3"],
    ["serve", "--listen", "a=b", "--metrics", "9090"], ["serve", "--listen", "a=b", "--metrics", "127.0.0.1:70000"],
    ["serve", "--listen", "a=b", "--on-unservable", "maybe"], ["serve", "--listen", "a=b", "--drain-timeout", "0"],
    ["serve", "--listen", "a=b", "--drain-timeout", "inf"], ["serve", "--listen", "a=b", "--loops", "0"],
    ["serve", "--listen", "a=b", "--handshake-timeout", "-2"], ["serve", "--listen", "a=b", "--loop-nice", "-21"],
    ["serve", "--listen", "a=b", "--loop-nice", "20"], ["serve", "--listen", "a=b", "--accept-timeout", "5"],
    ["serve", "--once", "--listen", "a=b", "--listen", "c=d"], ["serve", "--once", "--control", "/tmp/c"],
    ["serve", "--once", "--listen", "a=b", "--metrics", "127.0.0.1:9090"],
  ])
  func badCommandLinesAreUsageErrors(arguments: [String]) {
    expectUsageError(arguments)
  }

  @Test func serveTakesSeveralSnapshotsAControlSocketAndTheDaemonOptions() throws {
    let command = try UffdCommand.parseAsRoot([
      "serve", "--listen", "/run/a.sock=/srv/a.mem", "--listen", "/run/b.sock=/srv/b.mem", "--control", "/run/ctl.sock",
      "--max-sessions", "64", "--metrics", "127.0.0.1:9464", "--socket-mode", "660", "--socket-owner", "123:456",
      "--on-unservable", "zeros", "--drain-timeout", "5", "--fault-around", "1",
    ])
    #expect(command is ServeCommand)
    #expect(try UffdCommand.parseAsRoot(["serve", "--once", "--socket", "/tmp/s", "--snapshot", "/tmp/m"]) is ServeCommand)
    #expect(try UffdCommand.parseAsRoot(["serve", "--control", "/tmp/ctl"]) is ServeCommand)
  }

  @Test func thereIsNoDefaultSubcommand() throws {
    #expect(UffdCommand.configuration.defaultSubcommand == nil, "an unknown word must not run a subcommand")
    #expect(UffdCommand.configuration.subcommands.map { $0.configuration.commandName } == ["probe", "compact", "bench", "stress", "serve", "snapshot", "dirty", "working-set"])
    #expect(try UffdCommand.parseAsRoot(["probe"]) is ProbeCommand)
  }

  @Test func choicesAreEnums() throws {
    let compact = try CompactCommand.parse(["--mode", "copy", "--fault-mode", "thread"])
    #expect(compact.mode == .copy)
    #expect(compact.faultMode == .thread)
    let variant = try CompactCommand.parse(["--mutator-mapping", "copy-early", "--gc-run-pages", "2048", "--register-before-remap"])
    #expect(variant.mutatorMapping == .copyEarly)
    #expect(variant.gcRunPages == 2048 && variant.registerBeforeRemap)
    #expect(try CompactCommand.parse([]).mode == .auto, "the automatic choice is the default")
    #expect(try CompactCommand.parse(["--mode", "auto"]).mode == .auto)
    let stress = try StressCommand.parse(["--mover", "logical-copy"])
    #expect(stress.mover == .logicalCopy)
  }
}
