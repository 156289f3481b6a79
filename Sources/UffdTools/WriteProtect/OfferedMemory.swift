import Glibc
import SystemPackage
import Userfaultfd

/// The tool's side of a ``MemoryOffer``: connects to the offering process's socket, checks it is
/// the process named, and takes the handshake: its userfaultfd (adopted), its range, and a
/// read-only mapping of the memfd behind it here.
package final class OfferedMemory {
  /// The offering process's userfaultfd.
  package let uffd: Userfaultfd
  /// The offered range, in the offering process's addresses.
  package let region: Range<Address>
  /// The same pages mapped read-only here.
  package let view: UnsafeMutableRawPointer
  /// The offering process.
  package let processID: Int32
  /// The connection (the tool answers `cut` and `done` on it).
  package let socket: UnixSocket
  private let viewLength: Int

  /// Connects to `socketPath` and takes the handshake within `timeout`; the peer must be process
  /// `expectedProcessID`.
  package init(socketPath: String, expectedProcessID: Int32, timeout: Duration) throws {
    let socket = try UnixSocket.connect(to: socketPath)
    let owner = socket.peerProcessID
    guard let peer = owner, peer == expectedProcessID else {
      socket.close()
      throw ToolError("\(socketPath) belongs to process \(owner.map(String.init) ?? "unknown"), not \(expectedProcessID)")
    }
    guard let first = try socket.receive(timeout: timeout) else {
      socket.close()
      throw ToolError("process \(peer) hung up before offering its memory")
    }
    let regions = try RegionsJSON.decode(first.bytes)
    let uffd = try Userfaultfd(adopting: try first.takeDescriptor())
    guard regions.count == 1, let region = regions.first, region.size > 0, region.size <= UInt64(Int.max),
          region.offset <= UInt64(Int.max)
    else { throw ToolError("the offer must describe one region, got \(regions)") }
    guard let second = try socket.receive(timeout: timeout) else { throw ToolError("process \(peer) hung up before sending its memfd") }
    let memfd = try second.takeDescriptor()
    defer { try? memfd.close() }
    let length = Int(region.size)
    guard let mapped = mmap(nil, length, PROT_READ, MAP_SHARED, memfd.rawValue, off_t(region.offset)), mapped != MAP_FAILED else {
      throw ToolError("mmap of the offered memfd (\(length) bytes): \(Errno(rawValue: errno))")
    }
    self.uffd = uffd
    self.region = region.base..<(region.base + length)
    self.view = mapped
    self.viewLength = length
    self.processID = peer
    self.socket = socket
  }

  deinit {
    _ = munmap(view, viewLength)
    socket.close()
  }

  /// `range` (the offering process's addresses), checked to lie in the offered region; the
  /// whole region when nil.
  package func subrange(_ range: Range<Address>?) throws -> Range<Address> {
    guard let range else { return region }
    guard range.lowerBound >= region.lowerBound, range.upperBound <= region.upperBound, range.lowerBound < range.upperBound else {
      throw ToolError("--range \(range) is not inside the offered region \(region)")
    }
    return range
  }

  /// Tells the offering process `word` (`cut`, `watching`, `done`), one word a line.
  package func tell(_ word: String) throws { try socket.send(Array((word + "\n").utf8)) }
}

/// Which offer a tool connects to: the process, its socket, the part of its range, how long to wait.
package struct OfferTarget: Sendable {
  package let socketPath: String
  package let processID: Int32
  /// Part of the offered range (the process's addresses); nil for all of it.
  package let range: Range<Address>?
  package let timeoutSeconds: Double

  package init(socketPath: String, processID: Int32, range: Range<Address>?, timeoutSeconds: Double) {
    self.socketPath = socketPath
    self.processID = processID
    self.range = range
    self.timeoutSeconds = timeoutSeconds
  }

  /// Connects and takes the handshake; returns the offer and the range to work on.
  package func connect() throws -> (offered: OfferedMemory, region: Range<Address>) {
    let offered = try OfferedMemory(socketPath: socketPath, expectedProcessID: processID, timeout: .seconds(timeoutSeconds))
    return (offered, try offered.subrange(range))
  }
}

/// Parses `START-END` (hexadecimal with 0x, or decimal) into an address range.
package func parseAddressRange(_ text: String) -> Range<Address>? {
  let parts = text.split(separator: "-", omittingEmptySubsequences: false)
  guard parts.count == 2, let low = parseAddress(parts[0]), let high = parseAddress(parts[1]), low < high else { return nil }
  return Address(rawValue: low)..<Address(rawValue: high)
}

private func parseAddress(_ text: Substring) -> UInt? {
  if text.hasPrefix("0x") || text.hasPrefix("0X") { return UInt(text.dropFirst(2), radix: 16) }
  return UInt(text)
}
