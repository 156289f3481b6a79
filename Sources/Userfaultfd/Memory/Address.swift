/// A virtual address in a process's address space, as the kernel names it in events, errors and
/// resolutions: a plain value (`Sendable`, hashable, comparable), in the spirit of swift-system's
/// `FileDescriptor`. It owns nothing and says nothing about whether memory is mapped there; turn
/// it into a pointer with ``pointer`` only for memory you know is mapped.
@frozen
public struct Address: RawRepresentable, Hashable, Comparable, Sendable, CustomStringConvertible,
  ExpressibleByIntegerLiteral
{
  /// The address as an integer.
  public let rawValue: UInt

  /// The address `rawValue`.
  @inlinable
  public init(rawValue: UInt) { self.rawValue = rawValue }

  /// The address written as a number, `0x7f00_0000_1000`.
  @inlinable
  public init(integerLiteral value: UInt) { rawValue = value }

  /// The address `pointer` points at.
  @inlinable
  public init(_ pointer: UnsafeRawPointer) { rawValue = UInt(bitPattern: pointer) }

  /// The address `pointer` points at.
  @inlinable
  public init(_ pointer: UnsafeMutableRawPointer) { rawValue = UInt(bitPattern: pointer) }

  /// A pointer to this address; nil for address 0.
  @inlinable
  public var pointer: UnsafeMutableRawPointer? { UnsafeMutableRawPointer(bitPattern: rawValue) }

  /// The start of the page of `pageSize` bytes (a power of two) holding this address.
  @inlinable
  public func roundedDown(toPage pageSize: Int = PageSize.base) -> Address {
    Address(rawValue: rawValue & ~UInt(pageSize &- 1))
  }

  /// The address `offset` bytes on, wrapping at the end of the address space (operations check
  /// their ranges for wrap-around before using them).
  @inlinable
  public static func + (address: Address, offset: Int) -> Address {
    Address(rawValue: address.rawValue &+ UInt(bitPattern: offset))
  }

  /// The byte distance from `other` to `address` (negative when `address` is lower).
  @inlinable
  public static func - (address: Address, other: Address) -> Int {
    Int(bitPattern: address.rawValue &- other.rawValue)
  }

  @inlinable
  public static func < (lhs: Address, rhs: Address) -> Bool { lhs.rawValue < rhs.rawValue }

  /// The address in hexadecimal, as /proc/self/maps and the kernel print it.
  public var description: String { "0x" + String(rawValue, radix: 16) }
}
