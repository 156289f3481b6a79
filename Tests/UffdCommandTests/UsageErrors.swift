import Testing
@testable import uffd

/// Expects `arguments` to be refused at parsing, as a usage error: a message for the user and a
/// failing exit code, before anything runs.
func expectUsageError(_ arguments: [String], sourceLocation: SourceLocation = #_sourceLocation) {
  do {
    let command = try UffdCommand.parseAsRoot(arguments)
    Issue.record("\(arguments) parsed as \(type(of: command))", sourceLocation: sourceLocation)
  } catch {
    #expect(!UffdCommand.message(for: error).isEmpty, "\(arguments)", sourceLocation: sourceLocation)
    #expect(UffdCommand.exitCode(for: error) != .success, "\(arguments)", sourceLocation: sourceLocation)
  }
}
