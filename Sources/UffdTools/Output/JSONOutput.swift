import Foundation

/// The tool's one JSON encoding: report structs use Swift's lowerCamelCase, the JSON uses
/// snake_case keys (`memcpy_gbps`), pretty-printed with sorted keys so output diffs cleanly.
package enum JSONOutput {
  /// `value` as the tool prints it; one line when not `pretty` (JSON lines, one per sample).
  package static func string<T: Encodable>(_ value: T, pretty: Bool = true) throws -> String {
    let encoder = JSONEncoder()
    encoder.keyEncodingStrategy = .convertToSnakeCase
    encoder.outputFormatting = pretty ? [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes] : [.sortedKeys, .withoutEscapingSlashes]
    return String(decoding: try encoder.encode(value), as: UTF8.self)
  }
}

/// Progress lines for long work, on standard error (standard output carries the table or JSON).
package struct Progress: Sendable {
  /// The prefix every line starts with (the subcommand's name).
  package let label: String

  package init(_ label: String) { self.label = label }

  /// Writes one line.
  package func callAsFunction(_ message: String) {
    FileHandle.standardError.write(Data("\(label): \(message)\n".utf8))
  }
}
