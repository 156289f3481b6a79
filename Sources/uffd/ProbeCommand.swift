import ArgumentParser
import UffdTools

/// `uffd probe`: what this kernel offers, and whether UFFDIO_MOVE works here (exit status 2 when
/// it does not); this only parses and calls.
struct ProbeCommand: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "probe",
    abstract: "Probe the kernel: how userfaultfd opens, its features, and whether UFFDIO_MOVE works.")

  @OptionGroup var output: OutputOptions

  func run() throws {
    let report = ProbeReport()
    print(output.json ? try JSONOutput.string(report) : report.table)
    if !report.moveUsable { throw ExitCode(2) }
  }
}
