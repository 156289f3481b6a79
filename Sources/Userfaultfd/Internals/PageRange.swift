/// A validated, page-aligned range of addresses: what every range ioctl takes.
struct PageRange: Sendable, Equatable {
  let start: UInt
  let length: Int

  var end: UInt { start &+ UInt(length) }

  /// Checks `start`/`length` before any system call: page alignment, a positive length, and no
  /// wrap-around past the top of the address space.
  init(
    _ start: UnsafeRawPointer, length: Int, role: String, operation: Operation
  ) throws(UserfaultfdError) {
    let address = UInt(bitPattern: start)
    let page = PageSize.base
    guard length > 0 else {
      throw .invalidArgument(operation, "\(role) length must be positive, got \(length)")
    }
    guard length % page == 0 else {
      throw .invalidArgument(
        operation, "\(role) length \(length) is not a multiple of the page size (\(page) bytes)")
    }
    guard address % UInt(page) == 0 else {
      throw .invalidArgument(
        operation,
        "\(role) address 0x\(String(address, radix: 16)) is not aligned to the page size (\(page) bytes)")
    }
    guard !address.addingReportingOverflow(UInt(length)).overflow else {
      throw .invalidArgument(
        operation,
        "\(role) range 0x\(String(address, radix: 16)) + \(length) bytes wraps past the end of the address space")
    }
    self.start = address
    self.length = length
  }

  func overlaps(_ other: PageRange) -> Bool {
    start < other.end && other.start < end
  }
}

/// Formats an address the way /proc/self/maps and the kernel do.
func hex(_ address: UInt) -> String { "0x" + String(address, radix: 16) }
