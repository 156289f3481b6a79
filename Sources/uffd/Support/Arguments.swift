import ArgumentParser
import CompactingHeap
import UffdTools

// The tool's choices are enums; these make them command-line values (their raw values, listed
// in --help).
extension CompactMode: ExpressibleByArgument {}
extension FaultMode: ExpressibleByArgument {}
extension MutatorMapping: ExpressibleByArgument {}
extension MoveStress.Mover: ExpressibleByArgument {}

/// Options every subcommand that prints results shares.
struct OutputOptions: ParsableArguments {
  @Flag(name: .long, help: "Print one JSON object instead of a table.")
  var json = false
}

/// A usage error unless `value` is in `range`.
func check(_ value: Int, in range: ClosedRange<Int>, _ option: String, why: String? = nil) throws {
  guard range.contains(value) else {
    let reason = why.map { " (\($0))" } ?? ""
    throw ValidationError("\(option) must be \(range.lowerBound) to \(range.upperBound)\(reason), got \(value)")
  }
}
