/// A tool command that could not run, with the reason (printed by ArgumentParser as the error).
struct ToolError: Error, CustomStringConvertible {
  let description: String
  init(_ description: String) { self.description = description }
}
