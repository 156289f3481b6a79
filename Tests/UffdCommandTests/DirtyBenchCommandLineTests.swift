import ArgumentParser
import Testing
@testable import uffd

/// `uffd bench dirty`: every value out of range is a usage error before anything runs.
@Suite("uffd bench dirty command line")
struct DirtyBenchCommandLineTests {
  @Test(arguments: [
    ["--mib", "0"], ["--mib", "15"], ["--mib", "65537"], ["--mib", "-1"], ["--mib", "x"],
    ["--runs", "0"], ["--runs", "51"], ["--dirty-percent", "0"], ["--dirty-percent", "101"],
    ["--seconds", "0"], ["--seconds", "31"], ["--paced-interval-us", "0"], ["--paced-interval-us", "10001"],
    ["--writer", "lazy"], ["--hold-copy-ms", "-1"], ["--hold-copy-ms", "10001"], ["--svg", ""],
  ])
  func badValuesAreUsageErrors(arguments: [String]) {
    do {
      let command = try UffdCommand.parseAsRoot(["bench", "dirty"] + arguments)
      Issue.record("\(arguments) parsed as \(type(of: command))")
    } catch {
      #expect(!UffdCommand.message(for: error).isEmpty, "\(arguments)")
      #expect(UffdCommand.exitCode(for: error) != .success, "\(arguments)")
    }
  }

  @Test func theDefaultsParse() throws {
    let command = try #require(try UffdCommand.parseAsRoot(["bench", "dirty"]) as? DirtyBenchCommand)
    #expect(command.mib == 1024 && command.runs == 3 && command.dirtyPercent == 10 && command.seconds == 3)
    let paced = try #require(try UffdCommand.parseAsRoot(["bench", "dirty", "--writer", "paced", "--json"]) as? DirtyBenchCommand)
    #expect(paced.writer == [.paced] && paced.output.json)
  }
}
