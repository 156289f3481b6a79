/// Which range of an operation an argument error is about.
public enum RangeRole: String, Sendable, Hashable {
  /// The only range of a one-range operation (register, zero page, wake, ...).
  case range
  /// The range pages come from (copy, move).
  case source
  /// The range pages go to (copy, move).
  case destination
}

/// Why an argument was rejected before any system call (nothing was changed): match on the case,
/// never on ``description``, which says the same in words with what to do.
public enum InvalidArgument: Sendable, Equatable, CustomStringConvertible {
  /// A numeric parameter outside its valid range.
  case outOfRange(parameter: String, value: Int, valid: ClosedRange<Int>)
  /// A range's length is zero or negative.
  case nonPositiveLength(role: RangeRole, length: Int)
  /// A range's length is not a whole number of pages.
  case lengthNotPageMultiple(role: RangeRole, length: Int, pageSize: Int)
  /// A range's start is not page-aligned.
  case misaligned(role: RangeRole, address: Address, pageSize: Int)
  /// A range runs past the end of the address space.
  case wraps(role: RangeRole, address: Address, length: Int)
  /// An address is null.
  case nullAddress(role: RangeRole)
  /// The source and destination ranges overlap.
  case overlap(source: Range<Address>, destination: Range<Address>)
  /// The destination of a logical move already holds a page (page `page` of the range).
  case destinationPopulated(page: Int, address: Address)
  /// A mapping's alignment is not a power of two between the page size and the largest supported.
  case badAlignment(Int, pageSize: Int, max: Int)
  /// A mapping is longer than a process can map.
  case lengthTooLarge(Int, max: Int)
  /// A byte offset into a mapping is not page-aligned.
  case offsetMisaligned(offset: Int, pageSize: Int)
  /// A range of a mapping lies (partly) outside it.
  case outsideMapping(offset: Int, length: Int, mappingLength: Int)
  /// Two mappings that must have the same length do not.
  case lengthMismatch(expected: Int, actual: Int)
  /// A mapping's pages were to be moved onto themselves.
  case sameMapping
  /// A registration mode with no mode in it.
  case emptyMode
  /// A registration mode with bits this package does not know.
  case unknownModeBits(UInt64)
  /// The handle was opened without a feature the call needs.
  case handleLacksFeatures(Features)
  /// The handle must be non-blocking (``Userfaultfd/Options/nonBlocking``) for this use.
  case handleIsBlocking
  /// The handle uses ``Features/sigbus``: faults arrive as signals, not as events to serve.
  case handleUsesSigbus
  /// The range overlaps a live ``SigbusRegion``.
  case overlapsLiveRegion(Range<Address>)
  /// Every ``SigbusRegion`` slot is in use.
  case tooManyRegions(max: Int)
  /// The ``FaultServer`` was stopped.
  case serverStopped
  /// A received message carried no descriptor.
  case noDescriptorAttached
  /// The descriptor is not a userfaultfd (its `/proc/self/fd` link says what it is).
  case notAUserfaultfd(descriptor: Int32, actually: String)
  /// A snapshot-restore message could not be understood.
  case badRegions(String)
  /// The memory has no file behind it to map again (only ``AnonymousMemory/memfd(length:)`` has).
  case notFileBacked
  /// Protection bits other than read, write and execute (the unknown bits).
  case unknownProtectionBits(Int32)
  /// madvise advice the kernel takes on private memory only, given for shared memory (its name).
  case adviceNeedsPrivateMemory(String)
  /// A source page the kernel would have to read is missing in memory registered with this same
  /// handle (MISSING or MINOR mode): reading it raises a userfault on this handle, and the call
  /// would wait until someone resolves it.
  case sourceIsMissingRegisteredPage(Address)
  /// The source at this address cannot be read: its protection (given) has no `PROT_READ`.
  case sourceNotReadable(Address, AnonymousMemory.Protection)
  /// UFFDIO_MOVE moves pages only between mappings of equal protection that are both writable;
  /// these are the source's and the destination's.
  case moveProtections(source: AnonymousMemory.Protection, destination: AnonymousMemory.Protection)
  /// A setting contradicts another or the system (the reason says which).
  case badConfiguration(String)

  public var description: String {
    switch self {
    case .outOfRange(let parameter, let value, let valid):
      return "\(parameter) must be \(valid.lowerBound) to \(valid.upperBound), got \(value)"
    case .nonPositiveLength(let role, let length):
      return "\(role.rawValue) length must be positive, got \(length)"
    case .lengthNotPageMultiple(let role, let length, let page):
      return "\(role.rawValue) length \(length) is not a multiple of the page size (\(page) bytes)"
    case .misaligned(let role, let address, let page):
      return "\(role.rawValue) address \(address) is not aligned to the page size (\(page) bytes)"
    case .wraps(let role, let address, let length):
      return "\(role.rawValue) range \(address) + \(length) bytes wraps past the end of the address space"
    case .nullAddress(let role):
      return "\(role.rawValue) address is null"
    case .overlap(let source, let destination):
      return "source \(source.lowerBound)..<\(source.upperBound) overlaps destination"
        + " \(destination.lowerBound)..<\(destination.upperBound); nothing was changed"
    case .destinationPopulated(let page, let address):
      return "destination partly populated: page \(page) at \(address) is already present; nothing was moved"
    case .badAlignment(let alignment, let page, let max):
      return "alignment \(alignment) must be a power of two from the page size (\(page)) to \(max >> 30) GiB"
    case .lengthTooLarge(let length, let max):
      return "length \(length) is more than a process can map (at most \(max >> 40) TiB)"
    case .offsetMisaligned(let offset, let page):
      return "offset \(offset) is not a multiple of the page size (\(page) bytes)"
    case .outsideMapping(let offset, let length, let mappingLength):
      return "range \(offset)+\(length) is outside the \(mappingLength)-byte mapping"
    case .lengthMismatch(let expected, let actual):
      return "the destination must have the same length (\(expected) bytes, got \(actual))"
    case .sameMapping:
      return "the source and destination are the same mapping"
    case .emptyMode:
      return "mode is empty: pass .missing, .writeProtect and/or .minor"
    case .unknownModeBits(let bits):
      return "unknown mode bits 0x\(String(bits, radix: 16))"
    case .handleLacksFeatures(let features):
      return "the userfaultfd must be opened with features: [\(features.names.map { "." + $0 }.joined(separator: ", "))]"
    case .handleIsBlocking:
      return "the userfaultfd must be opened with .nonBlocking"
    case .handleUsesSigbus:
      return "this userfaultfd uses UFFD_FEATURE_SIGBUS: faults arrive as signals, use SigbusRegion"
    case .overlapsLiveRegion(let range):
      return "range \(range.lowerBound)..<\(range.upperBound) overlaps a live SigbusRegion; close that region first"
    case .tooManyRegions(let max):
      return "at most \(max) SIGBUS regions can be active; close one first"
    case .serverStopped:
      return "the fault server is stopped: start a new one to serve this range"
    case .noDescriptorAttached:
      return "the message carried no descriptor: the sender must attach its userfaultfd (SCM_RIGHTS)"
    case .notAUserfaultfd(let descriptor, let actually):
      return "descriptor \(descriptor) is not a userfaultfd (it is \(actually.isEmpty ? "closed" : actually))"
    case .badConfiguration(let reason):
      return reason
    case .badRegions(let reason):
      return "guest memory regions: \(reason)"
    case .unknownProtectionBits(let bits):
      return "unknown protection bits 0x\(String(UInt32(bitPattern: bits), radix: 16)): pass a combination of"
        + " PROT_READ, PROT_WRITE and PROT_EXEC (.read, .write, .execute) or PROT_NONE"
    case .adviceNeedsPrivateMemory(let advice):
      return "\(advice) applies to private memory only and this mapping is shared; nothing was changed"
    case .sourceIsMissingRegisteredPage(let address):
      return "source page at \(address) is missing in a range registered with this same userfaultfd:"
        + " the kernel would fault on it and wait for this handle's fault handler; resolve (fill) that"
        + " page first, copy from unregistered memory, or use .move; nothing was changed"
    case .sourceNotReadable(let address, let protection):
      return "the source at \(address) is not readable (\(protection)): make it readable with mprotect"
        + " first; nothing was changed"
    case .moveProtections(let source, let destination):
      return "UFFDIO_MOVE moves pages only between writable mappings of equal protection; the source is"
        + " \(source) and the destination \(destination): mprotect one of them, or copy; nothing was"
        + " changed"
    case .notFileBacked:
      return "this memory has no file behind it: create it with AnonymousMemory.memfd(length:) to map it again"
    }
  }
}
