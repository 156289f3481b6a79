import Foundation
import Glibc
import SystemPackage
import Testing
@testable import SnapshotPager
@testable import Userfaultfd

/// Sending and receiving a descriptor with a message, and adopting a received userfaultfd.
extension KernelTests {
@Suite("Unix sockets and adopted descriptors")
struct UnixSocketTests {
  static func socketPath(_ name: String) -> String { "/tmp/uffd-test-\(getpid())-\(name).sock" }

  /// A connected pair through a real listening socket at a fresh path (removed afterwards).
  func pair(_ name: String) throws -> (server: UnixSocket, client: UnixSocket) {
    let path = Self.socketPath(name)
    unlink(path)
    defer { unlink(path) }
    let listener = try UnixSocket.listen(at: path)
    let client = try UnixSocket.connect(to: path)
    let server = try #require(try listener.accept(timeout: .seconds(5)))
    return (server, client)
  }

  @Test func aMessageCarriesItsDescriptor() throws {
    let (server, client) = try pair("carry")
    var fds: [Int32] = [-1, -1]
    try #require(pipe(&fds) == 0)
    defer { close(fds[0]); close(fds[1]) }
    try client.send(Array("hello".utf8), descriptor: FileDescriptor(rawValue: fds[1]))
    guard let message = try server.receive(timeout: .seconds(5)) else {
      Issue.record("no message")
      return
    }
    let (bytes, hasDescriptor) = (message.bytes, message.hasDescriptor)
    #expect(bytes == Array("hello".utf8))
    #expect(hasDescriptor)
    let received = try message.takeDescriptor()
    defer { try? received.close() }
    // The received descriptor is the same pipe: what is written through it comes out of ours.
    var byte: UInt8 = 7
    #expect(write(received.rawValue, &byte, 1) == 1)
    var back: UInt8 = 0
    #expect(read(fds[0], &back, 1) == 1 && back == 7)
    #expect(server.peerProcessID == getpid())
  }

  @Test func aMessageWithoutADescriptorSaysSo() throws {
    let (server, client) = try pair("plain")
    try client.send([1, 2, 3])
    guard let message = try server.receive(timeout: .seconds(5)) else {
      Issue.record("no message")
      return
    }
    let hasDescriptor = message.hasDescriptor
    #expect(!hasDescriptor)
    var refusal: UserfaultfdError?
    do { _ = try message.takeDescriptor() } catch { refusal = error }
    #expect(refusal == .invalidArgument(.socket, .noDescriptorAttached))
  }

  @Test func aHungUpPeerIsNilNotAHang() throws {
    let (server, client) = try pair("hangup")
    client.close()
    var gotNothing = true
    if let message = try server.receive(timeout: .seconds(5)) {
      gotNothing = false
      _ = message.hasDescriptor
    }
    #expect(gotNothing, "end-of-file: the peer hung up")
    #expect(try server.peerHasHungUp(timeout: .seconds(1)))
  }

  @Test func badArgumentsAreRefusedBeforeAnySystemCall() throws {
    let (server, client) = try pair("bad")
    #expect(throws: UserfaultfdError.invalidArgument(.socket, .outOfRange(parameter: "capacity", value: 0, valid: 1...UnixSocket.maxMessageSize))) {
      _ = try server.receive(capacity: 0)
    }
    #expect(throws: UserfaultfdError.invalidArgument(.socket, .outOfRange(parameter: "message size", value: 0, valid: 1...UnixSocket.maxMessageSize))) {
      try client.send([])
    }
    let longPath = "/tmp/" + String(repeating: "x", count: 200)
    #expect(throws: UserfaultfdError.self) { _ = try UnixSocket.listen(at: longPath) }
    // Nothing to accept: a timeout, not a hang.
    let path = Self.socketPath("idle")
    unlink(path)
    defer { unlink(path) }
    let idle = try UnixSocket.listen(at: path)
    #expect(try idle.accept(timeout: .milliseconds(50)) == nil)
    server.close()
    #expect(throws: UserfaultfdError.closed(.socket)) { _ = try server.receive(timeout: .zero) }
  }

  @Test func anAdoptedUserfaultfdKnowsWhatItWasOpenedWith() throws {
    let original = try Userfaultfd(features: [.eventRemove], options: .nonBlocking)
    let copy = dup(original.fileDescriptor.rawValue)
    try #require(copy >= 0)
    let adopted = try Userfaultfd(adopting: FileDescriptor(rawValue: copy), origin: .thisProcess)
    #expect(adopted.openMethod == .adopted)
    #expect(adopted.features == [.eventRemove])
    #expect(adopted.isNonBlocking)
    #expect(adopted.ioctls.contains(.register))
    #expect(!adopted.servesAnotherProcess)
    // It works: the same kernel object.
    let memory = try AnonymousMemory(length: PageSize.base)
    try adopted.register(memory.baseAddress, length: memory.length, mode: .missing)
    try adopted.zeroPage(memory.baseAddress, length: memory.length)
    #expect(isPopulated(memory.baseAddress))
  }

  @Test func adoptingSomethingElseIsRefusedAndLeavesItOpen() throws {
    var fds: [Int32] = [-1, -1]
    try #require(pipe(&fds) == 0)
    defer { close(fds[0]); close(fds[1]) }
    let error = #expect(throws: UserfaultfdError.self) { _ = try Userfaultfd(adopting: FileDescriptor(rawValue: fds[0])) }
    guard case .invalidArgument(.adopt, .notAUserfaultfd(let descriptor, let actually))? = error else {
      Issue.record("expected notAUserfaultfd, got \(String(describing: error))")
      return
    }
    #expect(descriptor == fds[0])
    #expect(actually.hasPrefix("pipe:"))
    #expect(fcntl(fds[0], F_GETFD) >= 0, "still open: still the caller's")
    #expect(throws: UserfaultfdError.self) { _ = try Userfaultfd(adopting: FileDescriptor(rawValue: -1)) }
  }

  @Test(.enabled(if: Kernel.hasMove, "needs UFFDIO_MOVE (Linux 6.8+)"))
  func aHandleServingAnotherProcessRefusesMoveAtOnce() throws {
    let original = try Userfaultfd()
    let adopted = try Userfaultfd(adopting: FileDescriptor(rawValue: dup(original.fileDescriptor.rawValue)))
    #expect(adopted.servesAnotherProcess)
    #expect(!PageMover(adopted).usesMove)
    let a = try AnonymousMemory(length: PageSize.base)
    let b = try AnonymousMemory(length: PageSize.base)
    fill(a.baseAddress, seed: 3)
    let error = #expect(throws: UserfaultfdError.self) {
      try adopted.move(from: a.baseAddress, to: b.baseAddress, length: PageSize.base)
    }
    #expect({ if case .notSupported(.move, _)? = error { true } else { false } }())
    #expect(holds(a.baseAddress, seed: 3))
  }
}
}
