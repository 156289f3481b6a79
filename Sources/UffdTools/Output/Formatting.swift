/// The median of a non-empty sample (mean of the middle two for even counts); 0 for none.
package func median(_ values: [Double]) -> Double {
  guard !values.isEmpty else { return 0 }
  let sorted = values.sorted()
  let middle = sorted.count / 2
  return sorted.count % 2 == 1 ? sorted[middle] : (sorted[middle - 1] + sorted[middle]) / 2
}

/// Formats a table with a header row, columns padded to their widest cell.
package func formatTable(_ header: [String], _ rows: [[String]]) -> String {
  let all = [header] + rows
  let widths = header.indices.map { column in all.map { $0[column].count }.max() ?? 0 }
  return all.map { row in
    row.enumerated().map { index, cell in
      index == 0 ? cell.padding(toLength: widths[index], withPad: " ", startingAt: 0)
        : String(repeating: " ", count: widths[index] - cell.count) + cell
    }.joined(separator: "  ")
  }.joined(separator: "\n")
}
