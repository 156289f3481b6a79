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
    ["bench", "--reps", "0"], ["bench", "--reps", "100000"], ["frobnicate"],
    ["serve"], ["serve", "--socket", "/tmp/x"], ["serve", "--socket", "/tmp/x", "--snapshot", "s", "--fault-around", "0"],
    ["serve", "--socket", "/tmp/x", "--snapshot", "s", "--prefetch-pages", "5000"],
    ["serve", "--socket", "/tmp/x", "--snapshot", "s", "--accept-timeout", "-1"],
    ["serve", "--socket", "/tmp/x", "--snapshot", "s", "--accept-timeout", "nan"],
  ])
  func badCommandLinesAreUsageErrors(arguments: [String]) {
    do {
      let command = try UffdCommand.parseAsRoot(arguments)
      Issue.record("\(arguments) parsed as \(type(of: command))")
    } catch {
      #expect(!UffdCommand.message(for: error).isEmpty, "\(arguments)")
      #expect(UffdCommand.exitCode(for: error) != .success, "\(arguments)")
    }
  }

  @Test func thereIsNoDefaultSubcommand() throws {
    #expect(UffdCommand.configuration.defaultSubcommand == nil, "an unknown word must not run a subcommand")
    #expect(UffdCommand.configuration.subcommands.map { $0.configuration.commandName } == ["probe", "compact", "bench", "stress", "serve"])
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
