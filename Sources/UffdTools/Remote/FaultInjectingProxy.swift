import Glibc
import Synchronization
import Userfaultfd

/// An HTTP/1.1 proxy on loopback that injects what networks and stores do to a pager: latency
/// (a delay before each request is forwarded), a slow server (a long delay), a dead server
/// (connections closed at once), 500s, and wrong bytes (one byte of each response body flipped).
/// Tests and `uffd bench remote` put it between the pager and a real server (nginx, the S3
/// server) on 127.0.0.1; it never connects anywhere else.
///
/// One thread per client connection (a test tool: a handful of connections), every socket read
/// bounded by a timeout, so it cannot hang a run.
package final class FaultInjectingProxy: Sendable {
  /// What the proxy does to each request.
  package enum Mode: Sendable, Equatable {
    /// Forward as is.
    case pass
    /// Wait this long, then forward (latency; a long one is a slow server).
    case delay(Duration)
    /// Answer every request with this status, no body, without forwarding.
    case status(Int)
    /// Close each connection at once, unanswered (a killed server).
    case kill
    /// Forward, flipping one byte of each response body.
    case wrongBytes
  }

  /// The port it listens at on 127.0.0.1.
  package let port: Int
  private let upstreamPort: Int
  private let listener: Int32
  private let mode = Mutex(Mode.pass)
  private let stopping = Atomic<Bool>(false)
  private let requestCount = Atomic<Int>(0)
  private let acceptor = Mutex<DedicatedThread?>(nil)
  private let connections = Mutex<[DedicatedThread]>([])
  /// The client sockets open now (shut down by `stop` so their threads end at once).
  private let open = Mutex<Set<Int32>>([])

  /// A proxy to `127.0.0.1:upstreamPort`, listening at an ephemeral port.
  package init(upstreamPort: Int) throws {
    guard (1...65_535).contains(upstreamPort) else { throw ToolError("upstream port \(upstreamPort) out of range") }
    self.upstreamPort = upstreamPort
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
    guard fd >= 0 else { throw ToolError("socket: errno \(errno)") }
    var one: Int32 = 1
    _ = setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
    var address = Self.loopback(port: 0)
    let bound = withUnsafePointer(to: &address) {
      $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
    }
    guard bound == 0, listen(fd, 128) == 0 else {
      _ = close(fd)
      throw ToolError("bind/listen on 127.0.0.1: errno \(errno)")
    }
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    _ = withUnsafeMutablePointer(to: &address) {
      $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
    }
    port = Int(UInt16(bigEndian: address.sin_port))
    listener = fd
    let thread = try DedicatedThread { [self] in acceptLoop() }
    acceptor.withLock { $0 = thread }
  }

  deinit { _ = close(listener) }

  /// `http://127.0.0.1:PORT`.
  package var url: String { "http://127.0.0.1:\(port)" }

  /// Changes what it does from the next request on.
  package func set(_ newMode: Mode) { mode.withLock { $0 = newMode } }

  /// Requests seen.
  package var requests: Int { requestCount.load(ordering: .relaxed) }

  /// Stops accepting and waits for every connection thread (each ends within its read timeout).
  package func stop() {
    stopping.store(true, ordering: .releasing)
    acceptor.withLock { thread in
      thread?.join()
      thread = nil
    }
    open.withLock { for fd in $0 { _ = shutdown(fd, Int32(SHUT_RDWR)) } }
    for thread in connections.withLock({ threads in defer { threads.removeAll() }; return threads }) { thread.join() }
  }

  private static func loopback(port: Int) -> sockaddr_in {
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_port = UInt16(port).bigEndian
    address.sin_addr.s_addr = UInt32(0x7F00_0001).bigEndian
    return address
  }

  private func acceptLoop() {
    while !stopping.load(ordering: .acquiring) {
      var entry = pollfd(fd: listener, events: Int16(POLLIN), revents: 0)
      guard poll(&entry, 1, 100) > 0 else { continue }
      let client = accept(listener, nil, nil)
      guard client >= 0 else { continue }
      _ = fcntl(client, F_SETFD, FD_CLOEXEC)
      Self.setTimeout(client, seconds: 10)
      open.withLock { _ = $0.insert(client) }
      if let thread = try? DedicatedThread({ [self] in serve(client) }) {
        connections.withLock { $0.append(thread) }
      } else {
        _ = close(client)
      }
    }
  }

  private static func setTimeout(_ fd: Int32, seconds: Int) {
    var timeout = timeval(tv_sec: seconds, tv_usec: 0)
    _ = setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
    _ = setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
    var one: Int32 = 1
    _ = setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
  }

  /// One client connection: request by request, as the mode says.
  private func serve(_ client: Int32) {
    var upstream: Int32 = -1
    defer {
      open.withLock { _ = $0.remove(client) }
      _ = close(client)
      if upstream >= 0 { _ = close(upstream) }
    }
    var fromClient = Reader(fd: client)
    while !stopping.load(ordering: .acquiring) {
      guard let request = fromClient.message(isResponse: false, requestMethod: nil) else { return }
      requestCount.add(1, ordering: .relaxed)
      let current = mode.withLock { $0 }
      switch current {
      case .kill:
        return
      case .status(let code):
        guard Self.send(client, Array("HTTP/1.1 \(code) Injected\r\ncontent-length: 0\r\n\r\n".utf8)) else { return }
        continue
      case .delay(let duration):
        var remaining = duration
        // Sleep in slices so a stop is noticed.
        while remaining > .zero, !stopping.load(ordering: .acquiring) {
          let slice = min(remaining, .milliseconds(50))
          let (seconds, attoseconds) = slice.components
          var time = timespec(tv_sec: Int(seconds), tv_nsec: Int(attoseconds / 1_000_000_000))
          _ = nanosleep(&time, nil)
          remaining -= slice
        }
      case .pass, .wrongBytes:
        break
      }
      if upstream < 0 {
        upstream = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard upstream >= 0 else { return }
        Self.setTimeout(upstream, seconds: 10)
        var address = Self.loopback(port: upstreamPort)
        let connected = withUnsafePointer(to: &address) {
          $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(upstream, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard connected == 0 else { return }
      }
      guard Self.send(upstream, request.head + request.body) else { return }
      // The response is streamed through as it arrives (no store-and-forward of a 2 MiB body).
      var fromUpstream = Reader(fd: upstream)
      guard let response = fromUpstream.head(isResponse: true, requestMethod: request.method),
            Self.send(client, response.head),
            fromUpstream.forwardBody(of: response, to: client, flippingMiddleByte: current == .wrongBytes)
      else { return }
      if response.closes {
        _ = close(upstream)
        upstream = -1
      }
    }
  }

  fileprivate static func send(_ fd: Int32, _ bytes: [UInt8]) -> Bool {
    bytes.withUnsafeBytes { send(fd, $0) }
  }

  fileprivate static func send(_ fd: Int32, _ bytes: UnsafeRawBufferPointer) -> Bool {
    var done = 0
    while done < bytes.count {
      let wrote = Glibc.send(fd, bytes.baseAddress.map { $0 + done }, bytes.count - done, Int32(MSG_NOSIGNAL))
      if wrote > 0 { done += wrote } else if wrote < 0 && errno == EINTR { continue } else { return false }
    }
    return true
  }

  /// An HTTP/1.1 message: its head as read, its body, and whether the connection ends after it.
  struct Message {
    var head: [UInt8]
    var body: [UInt8]
    var method: String
    var closes: Bool
  }

  /// Reads HTTP/1.1 messages (Content-Length framed, or to the end of the connection).
  struct Reader {
    let fd: Int32
    var buffer: [UInt8] = []

    init(fd: Int32) { self.fd = fd }

    mutating func fill() -> Bool {
      var chunk = [UInt8](repeating: 0, count: 64 << 10)
      while true {
        let got = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
        if got > 0 {
          buffer += chunk[0..<got]
          return true
        }
        if got < 0 && errno == EINTR { continue }
        return false
      }
    }

    /// A message's head and framing, its body left to read.
    struct Head {
      var head: [UInt8]
      var method: String
      var length: Int
      var toEnd: Bool
      var closes: Bool
    }

    /// Sends the body of `message` to `fd` as it arrives (one byte in the middle flipped when
    /// asked); false when either side fails. Past the bytes read with the head, the body goes
    /// from `recv` to `send` through one reused buffer (no copy per piece: the proxy must not be
    /// what a benchmark through it measures).
    mutating func forwardBody(of message: Head, to fd: Int32, flippingMiddleByte: Bool) -> Bool {
      var sent = 0
      let middle = message.length / 2
      if !buffer.isEmpty {
        let take = message.toEnd ? buffer.count : min(buffer.count, message.length)
        var piece = Array(buffer[0..<take])
        buffer.removeFirst(take)
        if flippingMiddleByte, !message.toEnd, middle < take { piece[middle] ^= 0xFF }
        guard FaultInjectingProxy.send(fd, piece) else { return false }
        sent = take
      }
      guard message.toEnd || sent < message.length else { return true }
      let capacity = 256 << 10
      let scratch = UnsafeMutableRawBufferPointer.allocate(byteCount: capacity, alignment: 4096)
      defer { scratch.deallocate() }
      guard let base = scratch.baseAddress else { return false }
      while message.toEnd || sent < message.length {
        let want = message.toEnd ? capacity : min(capacity, message.length - sent)
        let got = recv(self.fd, base, want, 0)
        if got < 0 && errno == EINTR { continue }
        guard got > 0 else { return message.toEnd && got == 0 }
        if flippingMiddleByte, !message.toEnd, middle >= sent, middle < sent + got {
          base.storeBytes(of: base.load(fromByteOffset: middle - sent, as: UInt8.self) ^ 0xFF, toByteOffset: middle - sent, as: UInt8.self)
        }
        guard FaultInjectingProxy.send(fd, UnsafeRawBufferPointer(start: base, count: got)) else { return false }
        sent += got
      }
      return true
    }

    /// Reads a message's head and works out its framing.
    mutating func head(isResponse: Bool, requestMethod: String?) -> Head? {
      var end: Int?
      while end == nil {
        if let found = Self.headEnd(buffer) { end = found } else if buffer.count > 1 << 20 || !fill() { return nil }
      }
      guard let end else { return nil }
      let head = Array(buffer[0..<end])
      buffer.removeFirst(end)
      let text = String(decoding: head, as: UTF8.self).lowercased()
      let firstLine = text.split(separator: "\r\n").first.map(String.init) ?? ""
      let method = isResponse ? (requestMethod ?? "") : String(firstLine.split(separator: " ").first ?? "").uppercased()
      var length = 0
      var toEnd = false
      var closes = text.contains("\r\nconnection: close")
      if let line = text.split(separator: "\r\n").first(where: { $0.hasPrefix("content-length:") }) {
        length = Int(line.dropFirst("content-length:".count).trimmingCharacters(in: " ")) ?? 0
      } else if isResponse && text.contains("\r\ntransfer-encoding: chunked") {
        toEnd = true  // Not parsed: relayed to the end of the connection, which then closes.
        closes = true
      }
      if isResponse {
        let status = Int(firstLine.split(separator: " ").dropFirst().first ?? "") ?? 0
        if method == "HEAD" || status == 204 || status == 304 || (100..<200).contains(status) { length = 0; toEnd = false }
      }
      return Head(head: head, method: method, length: length, toEnd: toEnd, closes: closes)
    }

    /// Reads a whole message (a request: bodies are small).
    mutating func message(isResponse: Bool, requestMethod: String?) -> Message? {
      guard let head = head(isResponse: isResponse, requestMethod: requestMethod) else { return nil }
      if head.toEnd {
        while fill() {}
        let body = buffer
        buffer.removeAll()
        return Message(head: head.head, body: body, method: head.method, closes: true)
      }
      while buffer.count < head.length { if !fill() { return nil } }
      let body = Array(buffer[0..<head.length])
      buffer.removeFirst(head.length)
      return Message(head: head.head, body: body, method: head.method, closes: head.closes)
    }

    static func headEnd(_ bytes: [UInt8]) -> Int? {
      guard bytes.count >= 4 else { return nil }
      for index in 0...(bytes.count - 4) where bytes[index] == 13 && bytes[index + 1] == 10 && bytes[index + 2] == 13 && bytes[index + 3] == 10 {
        return index + 4
      }
      return nil
    }
  }
}

extension Substring {
  fileprivate func trimmingCharacters(in set: String) -> String {
    var slice = self
    while let first = slice.first, set.contains(first) { slice = slice.dropFirst() }
    while let last = slice.last, set.contains(last) { slice = slice.dropLast() }
    return String(slice)
  }
}
