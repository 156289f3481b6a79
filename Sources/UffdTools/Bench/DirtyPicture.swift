import Foundation

/// `uffd bench dirty --svg FILE`: one panel per measure, a horizontal bar per method, for one
/// writer kind (saturating when measured): the faulting write beside the C reference's, the
/// writer's stall p99, the extra memory, the writer's throughput from the cut, and the dirty
/// collection time. Plain SVG, no script.
package enum DirtyPicture {
  private static let swiftColor = "#3b6fb6", referenceColor = "#9aa5b1", forkColor = "#e08a2c"
  private static let labelWidth = 150.0, barWidth = 560.0, rowHeight = 20.0, panelGap = 44.0

  /// The picture of `rows` (a `uffd bench dirty` run of `runs` runs).
  package static func svg(_ rows: [DirtyBenchmark.Row], runs: Int) -> String {
    let writer = rows.contains { $0.writer == "saturating" } ? "saturating" : (rows.first?.writer ?? "saturating")
    let live = rows.filter { $0.mode == "live-snapshot" && $0.writer == writer && $0.method != "none" }
    let dirty = rows.filter { $0.mode == "dirty" && $0.writer == writer && $0.method != "none" }
    typealias Bar = (label: String, value: Double, color: String, text: String)
    var panels: [(title: String, bars: [Bar])] = []
    func color(_ method: String) -> String { method == "fork-cow" ? forkColor : swiftColor }
    panels.append(("Faulting write, mean µs (median in brackets; grey: the same fault path in C, same run)", live.flatMap { row -> [Bar] in
      var bars: [Bar] = [(row.method, row.faultCostUs, color(row.method),
                          String(format: "%.2f (%.2f)", row.faultCostUs, row.faultCostP50Us))]
      if row.cFaultCostUs > 0 {
        bars.append(("  C reference", row.cFaultCostUs, referenceColor,
                     String(format: "%.2f (%.2f)", row.cFaultCostUs, row.cFaultCostP50Us)))
      }
      return bars
    }))
    panels.append(("Writer stall p99, µs (\(writer) writer, 3 s from the cut)", live.map {
      ($0.method, $0.stallP99Us, color($0.method), String(format: "%.1f", $0.stallP99Us))
    }))
    panels.append(("Extra memory during the snapshot, MiB", live.map {
      ($0.method, Double($0.extraMemoryBytes) / 1_048_576, color($0.method), String(format: "%.1f", Double($0.extraMemoryBytes) / 1_048_576))
    }))
    panels.append(("Writer throughput over the 3 s from the cut, vs untracked", live.map {
      ($0.method, $0.writerThroughputRatio, color($0.method), String(format: "%.2f", $0.writerThroughputRatio))
    }))
    panels.append(("Live snapshot: cut pause, ms", live.map {
      ($0.method, $0.cutPauseMs, color($0.method), String(format: "%.1f", $0.cutPauseMs))
    }))
    if !dirty.isEmpty {
      panels.append(("Dirty tracking: one collection of the working set, ms", dirty.map {
        ($0.method, $0.collectMs, swiftColor, String(format: "%.2f", $0.collectMs))
      }))
    }
    let gib = rows.first?.gib ?? 0, fraction = rows.first?.dirtyFraction ?? 0
    let height = 50 + panels.reduce(0.0) { $0 + panelGap + rowHeight * Double(max(1, $1.bars.count)) } + 10
    let width = labelWidth + barWidth + 190
    var svg = """
      <svg xmlns="http://www.w3.org/2000/svg" width="\(Int(width))" height="\(Int(height))" viewBox="0 0 \(Int(width)) \(Int(height))" font-family="sans-serif" font-size="12">
      <rect width="100%" height="100%" fill="white"/>
      <text x="10" y="22" font-size="15" font-weight="bold">Live snapshots and dirty tracking of \(String(format: "%.2f", gib)) GiB under a \(writer) writer (\(Int(fraction * 100))% working set, medians of \(runs))</text>

      """
    var y = 50.0
    for panel in panels {
      svg += "<text x=\"10\" y=\"\(y + 16)\" font-weight=\"bold\">\(escape(panel.title))</text>\n"
      y += 26
      let largest = max(panel.bars.map(\.value).max() ?? 1, 1e-9)
      for bar in panel.bars {
        let length = max(bar.value > 0 ? 1 : 0, barWidth * bar.value / largest)
        svg += "<text x=\"\(labelWidth - 6)\" y=\"\(y + 14)\" text-anchor=\"end\">\(escape(bar.label))</text>"
          + "<rect x=\"\(labelWidth)\" y=\"\(y + 3)\" width=\"\(String(format: "%.2f", length))\" height=\"\(rowHeight - 6)\" fill=\"\(bar.color)\"/>"
          + "<text x=\"\(labelWidth + length + 6)\" y=\"\(y + 14)\">\(bar.text)</text>\n"
        y += rowHeight
      }
      y += panelGap - 26
    }
    return svg + "</svg>\n"
  }

  /// Writes the picture to `path`, replacing it; a clear error if that fails.
  package static func write(_ rows: [DirtyBenchmark.Row], runs: Int, to path: String) throws {
    do {
      try svg(rows, runs: runs).write(toFile: path, atomically: true, encoding: .utf8)
    } catch {
      throw ToolError("--svg: could not write \(path): \(error.localizedDescription)")
    }
  }

  private static func escape(_ text: String) -> String {
    text.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;")
  }
}
