import Foundation
import Userfaultfd

/// What `uffd probe` prints: how userfaultfd opens here, its features, and whether UFFDIO_MOVE
/// works (the JSON keys the README documents).
package struct ProbeReport: Encodable, Sendable {
  package var kernel: String
  package var openMethod: String?
  package var openError: String?
  package var unprivilegedUserfaultfd: Int?
  package var features: [String]
  package var rangeIoctls: [String]
  package var transparentHugepage: String?
  package var pageSize: Int
  package var moveUsable: Bool
  package var moveVerdict: String
  package var moveVerdictReason: String
  package var handlesKernelFaults: Bool?
  package var verdict: String

  /// Probes this kernel.
  package init(_ probe: KernelProbe = .run()) {
    kernel = probe.kernelRelease
    openMethod = probe.openMethod?.rawValue
    openError = probe.openError
    unprivilegedUserfaultfd = probe.unprivilegedUserfaultfd
    features = probe.supportedFeatures.names
    rangeIoctls = probe.rangeIoctls.names
    transparentHugepage = probe.transparentHugePages
    pageSize = probe.pageSize
    moveUsable = probe.moveUsable
    moveVerdict = probe.moveVerdict.name
    moveVerdictReason = probe.moveVerdict.description
    handlesKernelFaults = probe.handlesKernelFaults
    verdict = probe.verdict
  }

  /// The report as the tool prints it.
  package var table: String {
    let rows: [(String, String)] = [
      ("kernel", kernel),
      ("opened via", openMethod ?? "failed: \(openError ?? "?")"),
      ("vm.unprivileged_userfaultfd", unprivilegedUserfaultfd.map(String.init) ?? "unknown"),
      ("features", features.joined(separator: " ")),
      ("anonymous range ioctls", rangeIoctls.joined(separator: " ")),
      ("transparent huge pages", transparentHugepage ?? "unknown"),
      ("page size", "\(pageSize)"),
      ("handles kernel-mode faults", handlesKernelFaults.map { $0 ? "yes" : "no" } ?? "unknown"),
      ("move usable", moveUsable ? "yes" : "no"),
      ("move verdict", moveVerdictReason),
    ]
    let width = rows.map(\.0.count).max() ?? 0
    let lines = rows.map { key, value in key.padding(toLength: width, withPad: " ", startingAt: 0) + "  " + value }
    return (lines + [verdict]).joined(separator: "\n")
  }
}
