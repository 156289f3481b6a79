/// A tool command that could not run, with the reason (printed by ArgumentParser as the error).
package struct ToolError: Error, CustomStringConvertible {
  package let description: String
  package init(_ description: String) { self.description = description }
}
