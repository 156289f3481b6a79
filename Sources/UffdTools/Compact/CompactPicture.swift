import Foundation

/// `uffd compact --svg FILE`: one row per strategy: to-space pages mapped over the concurrent
/// phase by the GC thread and by faulting mutators (stacked, same scales in every row), and the
/// mutators' fault stalls by powers of two of microseconds. Plain SVG, no script, no fonts
/// beyond the reader's sans-serif.
package enum CompactPicture {
  private static let gcColor = "#3b6fb6", mutatorColor = "#e08a2c"
  private static let rowHeight = 190.0, top = 64.0
  private static let timeX = 70.0, timeWidth = 520.0, stallX = 660.0, stallWidth = 330.0, plotHeight = 130.0

  /// The picture of `report`'s median runs.
  package static func svg(_ report: CompactReport) -> String {
    let names = ["move", "copy", "copy-1", "auto"].filter { report.modes[$0] != nil }
    let width = 1040.0, height = top + rowHeight * Double(names.count) + 16
    // Shared scales: the longest phase, the fullest bin, the most stalls in a bucket.
    let longest = names.compactMap { report.modes[$0] }.map {
      $0.mappingTimeline.binMs * Double($0.mappingTimeline.pagesByGc.count)
    }.max() ?? 1
    let fullestBin = names.compactMap { report.modes[$0] }.flatMap {
      zip($0.mappingTimeline.pagesByGc, $0.mappingTimeline.pagesByMutators).map { $0 + $1 }
    }.max() ?? 1
    let mostStalls = names.compactMap { report.modes[$0] }.flatMap(\.mutatorStallCountsPow2Us).max() ?? 1
    var svg = """
      <svg xmlns="http://www.w3.org/2000/svg" width="\(Int(width))" height="\(Int(height))" viewBox="0 0 \(Int(width)) \(Int(height))" font-family="sans-serif" font-size="12">
      <rect width="100%" height="100%" fill="white"/>
      <text x="\(timeX)" y="22" font-size="15" font-weight="bold">Concurrent compaction, \(report.heapMib) MiB heap (\(format(report.liveMib, 1)) MiB live), \(report.mutators) mutators \(report.idleMutators ? "idle" : "writing"), \(report.faultMode) faults</text>
      <rect x="\(timeX)" y="34" width="12" height="12" fill="\(gcColor)"/><text x="\(timeX + 18)" y="45">pages mapped by the GC thread</text>
      <rect x="\(timeX + 220)" y="34" width="12" height="12" fill="\(mutatorColor)"/><text x="\(timeX + 238)" y="45">pages mapped by faulting mutators</text>
      <text x="\(stallX)" y="45">mutator fault stalls (faults per range, log scale)</text>

      """
    for (row, name) in names.enumerated() {
      guard let mode = report.modes[name] else { continue }
      let y0 = top + rowHeight * Double(row)
      let base = y0 + plotHeight
      let timeline = mode.mappingTimeline
      let gcPages = timeline.pagesByGc.reduce(0, +), mutatorPages = timeline.pagesByMutators.reduce(0, +)
      svg += "<text x=\"\(timeX)\" y=\"\(y0 - 4)\" font-weight=\"bold\">\(name): GC thread \(format(mode.compactionThreadMs, 1)) ms;"
        + " pages mapped: \(gcPages) by the GC, \(mutatorPages) by mutators</text>\n"
      svg += axes(x: timeX, y: y0, width: timeWidth, height: plotHeight)
      let barWidth = timeWidth / Double(max(1, timeline.pagesByGc.count)) * (timeline.binMs * Double(timeline.pagesByGc.count) / longest)
      for (bin, (gc, mutators)) in zip(timeline.pagesByGc, timeline.pagesByMutators).enumerated() {
        let x = timeX + Double(bin) * barWidth
        let gcHeight = plotHeight * Double(gc) / Double(fullestBin)
        let mutatorHeight = plotHeight * Double(mutators) / Double(fullestBin)
        if gc > 0 { svg += rect(x, base - gcHeight, barWidth, gcHeight, gcColor) }
        if mutators > 0 { svg += rect(x, base - gcHeight - mutatorHeight, barWidth, mutatorHeight, mutatorColor) }
      }
      svg += "<text x=\"\(timeX)\" y=\"\(base + 16)\">0</text><text x=\"\(timeX + timeWidth)\" y=\"\(base + 16)\" text-anchor=\"end\">\(format(longest, 1)) ms</text>\n"
      svg += "<text x=\"\(timeX - 6)\" y=\"\(y0 + 10)\" text-anchor=\"end\">\(fullestBin)</text><text x=\"\(timeX - 6)\" y=\"\(base)\" text-anchor=\"end\">0</text>\n"
      svg += "<text x=\"\(timeX - 40)\" y=\"\(y0 + plotHeight / 2)\" text-anchor=\"middle\" transform=\"rotate(-90 \(timeX - 40) \(y0 + plotHeight / 2))\">pages per bin</text>\n"
      // Stalls.
      svg += axes(x: stallX, y: y0, width: stallWidth, height: plotHeight)
      let counts = mode.mutatorStallCountsPow2Us
      let stallBar = stallWidth / Double(max(1, counts.count))
      for (bucket, count) in counts.enumerated() where count > 0 {
        // Log scale: the one fault at 4 ms must show beside a thousand at 32 µs.
        let barHeight = max(1, plotHeight * log10(Double(count) + 1) / log10(Double(mostStalls) + 1))
        svg += rect(stallX + Double(bucket) * stallBar + 1, base - barHeight, stallBar - 2, barHeight, mutatorColor)
      }
      for bucket in stride(from: 0, to: counts.count, by: 3) {
        svg += "<text x=\"\(stallX + (Double(bucket) + 0.5) * stallBar)\" y=\"\(base + 16)\" text-anchor=\"middle\">\(microseconds(1 << bucket))</text>\n"
      }
      let stall = mode.mutatorStallUs
      svg += "<text x=\"\(stallX - 6)\" y=\"\(y0 + 10)\" text-anchor=\"end\">\(mostStalls)</text><text x=\"\(stallX - 6)\" y=\"\(base)\" text-anchor=\"end\">1</text>\n"
      svg += "<text x=\"\(stallX)\" y=\"\(y0 - 4)\">\(Int(mode.mutatorWritesPerMs)) writes/ms · p50 \(format(stall.p50, 0)) µs · p99 \(format(stall.p99, 0)) µs · p99.9 \(format(stall.p999, 0)) µs</text>\n"
    }
    svg += "</svg>\n"
    return svg
  }

  /// Writes the picture of `report` to `path`, replacing it; a clear error if that fails.
  package static func write(_ report: CompactReport, to path: String) throws {
    do {
      try svg(report).write(toFile: path, atomically: true, encoding: .utf8)
    } catch {
      throw ToolError("--svg: could not write \(path): \(error.localizedDescription)")
    }
  }

  private static func axes(x: Double, y: Double, width: Double, height: Double) -> String {
    "<path d=\"M\(x) \(y) V\(y + height) H\(x + width)\" fill=\"none\" stroke=\"#444\"/>\n"
  }

  private static func rect(_ x: Double, _ y: Double, _ width: Double, _ height: Double, _ color: String) -> String {
    "<rect x=\"\(format(x, 2))\" y=\"\(format(y, 2))\" width=\"\(format(width, 2))\" height=\"\(format(height, 2))\" fill=\"\(color)\"/>\n"
  }

  private static func microseconds(_ value: Int) -> String { value >= 1000 ? "\(value / 1000) ms" : "\(value) µs" }

  private static func format(_ value: Double, _ digits: Int) -> String { String(format: "%.\(digits)f", value) }
}
