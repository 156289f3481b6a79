/// A validated, page-aligned range of addresses: what every range ioctl takes.
struct PageRange: Sendable, Equatable {
  let start: UInt
  let length: Int

  var end: UInt { start &+ UInt(length) }

  /// The range as addresses, for errors.
  var addresses: Range<Address> { Address(rawValue: start)..<Address(rawValue: end) }

  /// Checks `start`/`length` before any system call: page alignment, a positive length, and no
  /// wrap-around past the top of the address space.
  @inline(__always)
  init(
    _ start: UnsafeRawPointer, length: Int, role: RangeRole, operation: Operation
  ) throws(UserfaultfdError) {
    let address = UInt(bitPattern: start)
    // One combined test on the hot path (the page size is a power of two); the slow path only
    // works out what to say.
    guard length > 0, (address | UInt(length)) & PageSize.mask == 0,
          !address.addingReportingOverflow(UInt(length)).overflow
    else { throw Self.explain(address, length, role, operation) }
    self.start = address
    self.length = length
  }

  /// Checks a range of `pageSize` pages (the base page, or a hugetlbfs page size) before any
  /// system call: `pageSize` a power of two from the base page to the largest supported alignment,
  /// the checks above, and the range aligned to `pageSize` and a whole number of its pages.
  init(
    _ start: UnsafeRawPointer, length: Int, pageSize: Int, role: RangeRole, operation: Operation
  ) throws(UserfaultfdError) {
    guard pageSize >= PageSize.base, pageSize & (pageSize - 1) == 0, pageSize <= AnonymousMemory.maxAlignment else {
      throw .invalidArgument(operation, .badAlignment(pageSize, pageSize: PageSize.base, max: AnonymousMemory.maxAlignment))
    }
    try self.init(start, length: length, role: role, operation: operation)
    guard self.start % UInt(pageSize) == 0 else {
      throw .invalidArgument(operation, .misaligned(role: role, address: Address(rawValue: self.start), pageSize: pageSize))
    }
    guard length % pageSize == 0 else {
      throw .invalidArgument(operation, .lengthNotPageMultiple(role: role, length: length, pageSize: pageSize))
    }
  }

  @inline(never)
  private static func explain(
    _ address: UInt, _ length: Int, _ role: RangeRole, _ operation: Operation
  ) -> UserfaultfdError {
    let page = PageSize.base
    if length <= 0 { return .invalidArgument(operation, .nonPositiveLength(role: role, length: length)) }
    if length % page != 0 {
      return .invalidArgument(operation, .lengthNotPageMultiple(role: role, length: length, pageSize: page))
    }
    if address % UInt(page) != 0 { return .invalidArgument(operation, .misaligned(role: role, address: Address(rawValue: address), pageSize: page)) }
    return .invalidArgument(operation, .wraps(role: role, address: Address(rawValue: address), length: length))
  }

  func overlaps(_ other: PageRange) -> Bool {
    start < other.end && other.start < end
  }

  /// Validates a source/destination pair of `length` bytes: each range as above, and no overlap.
  @inline(__always)
  static func pair(
    source: UnsafeRawPointer, destination: UnsafeRawPointer, length: Int, operation: Operation
  ) throws(UserfaultfdError) -> (source: PageRange, destination: PageRange) {
    let target = try PageRange(destination, length: length, role: .destination, operation: operation)
    let origin = try PageRange(source, length: length, role: .source, operation: operation)
    guard !target.overlaps(origin) else {
      throw .invalidArgument(operation, .overlap(source: origin.addresses, destination: target.addresses))
    }
    return (origin, target)
  }
}

/// Formats an address the way /proc/self/maps and the kernel do.
func hex(_ address: UInt) -> String { "0x" + String(address, radix: 16) }
