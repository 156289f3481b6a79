import ArgumentParser
import Foundation
import Userfaultfd

/// `uffd probe`: what this kernel offers, and whether UFFDIO_MOVE works here.
struct ProbeCommand: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "probe",
    abstract: "Probe the kernel: how userfaultfd opens, its features, and whether UFFDIO_MOVE works.")

  @OptionGroup var output: OutputOptions

  /// The JSON shape of `uffd probe --json`.
  struct Report: Encodable {
    var kernel: String
    var open_method: String?
    var open_error: String?
    var unprivileged_userfaultfd: Int?
    var features: [String]
    var range_ioctls: [String]
    var transparent_hugepage: String?
    var page_size: Int
    var move_usable: Bool
    var move_verdict: String
    var move_verdict_reason: String
    var handles_kernel_faults: Bool?
    var verdict: String
  }

  func run() throws {
    let probe = KernelProbe.run()
    let report = Report(
      kernel: probe.kernelRelease, open_method: probe.openMethod?.rawValue,
      open_error: probe.openError, unprivileged_userfaultfd: probe.unprivilegedUserfaultfd,
      features: probe.supportedFeatures.names, range_ioctls: probe.rangeIoctls.names,
      transparent_hugepage: probe.transparentHugePages, page_size: probe.pageSize,
      move_usable: probe.moveUsable, move_verdict: probe.moveVerdict.name,
      move_verdict_reason: probe.moveVerdict.description, handles_kernel_faults: probe.handlesKernelFaults,
      verdict: probe.verdict)
    if output.json {
      let encoder = JSONEncoder()
      encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
      print(String(decoding: try encoder.encode(report), as: UTF8.self))
    } else {
      let rows: [(String, String)] = [
        ("kernel", report.kernel),
        ("opened via", report.open_method ?? "failed: \(report.open_error ?? "?")"),
        ("vm.unprivileged_userfaultfd", report.unprivileged_userfaultfd.map(String.init) ?? "unknown"),
        ("features", report.features.joined(separator: " ")),
        ("anonymous range ioctls", report.range_ioctls.joined(separator: " ")),
        ("transparent huge pages", report.transparent_hugepage ?? "unknown"),
        ("page size", "\(report.page_size)"),
        ("handles kernel-mode faults", report.handles_kernel_faults.map { $0 ? "yes" : "no" } ?? "unknown"),
        ("move usable", report.move_usable ? "yes" : "no"),
        ("move verdict", report.move_verdict_reason),
      ]
      let width = rows.map(\.0.count).max() ?? 0
      for (key, value) in rows {
        print(key.padding(toLength: width, withPad: " ", startingAt: 0) + "  " + value)
      }
      print(report.verdict)
    }
    if !probe.moveUsable { throw ExitCode(2) }
  }
}
