import AsyncHTTPClient
import NIOCore
import NIOHTTP1
import Synchronization

/// Receives one chunk's `GET` straight into the page-aligned buffer the cache will serve from,
/// on the connection's event loop: each body part is copied once, where it arrives, and the
/// fetching task resumes once, when the response ends (the async body sequence would hop to the
/// task's executor for every few parts of a 2 MiB body).
final class ChunkReceiver: HTTPClientResponseDelegate {
  typealias Response = Received

  /// What came back: the status, the headers, and the body (the chunk on a 2xx, the start of the
  /// error text otherwise).
  struct Received: Sendable {
    var status: Int
    var headers: HTTPHeaders
    var chunk: ChunkBuffer?
    var received: Int
    var errorText: [UInt8]
  }

  private let expected: Int
  private let what: String
  /// Touched only on the request's event loop, in order; the lock makes that checkable.
  private let state: Mutex<Received>

  /// A receiver of a `expected`-byte chunk (a longer body is refused).
  init(expected: Int, what: String) {
    self.expected = expected
    self.what = what
    state = Mutex(Received(status: 0, headers: [:], chunk: nil, received: 0, errorText: []))
  }

  func didReceiveHead(task: HTTPClient.Task<Received>, _ head: HTTPResponseHead) -> EventLoopFuture<Void> {
    let ok = state.withLock { state -> Bool in
      state.status = Int(head.status.code)
      state.headers = head.headers
      guard (200..<300).contains(state.status) else { return true }
      state.chunk = ChunkBuffer(capacity: expected)
      return state.chunk != nil
    }
    return ok ? task.eventLoop.makeSucceededVoidFuture()
      : task.eventLoop.makeFailedFuture(SnapshotSourceError.transport("\(what): out of memory for a chunk"))
  }

  func didReceiveBodyPart(task: HTTPClient.Task<Received>, _ buffer: ByteBuffer) -> EventLoopFuture<Void> {
    let fits = state.withLock { state -> Bool in
      guard let chunk = state.chunk else {
        state.errorText.append(contentsOf: buffer.readableBytesView.prefix(max(0, 300 - state.errorText.count)))
        return true
      }
      guard state.received + buffer.readableBytes <= expected else { return false }
      buffer.withUnsafeReadableBytes { bytes in
        if let base = bytes.baseAddress { chunk.fill(at: state.received, from: UInt(bitPattern: base), count: bytes.count) }
      }
      state.received += buffer.readableBytes
      return true
    }
    return fits ? task.eventLoop.makeSucceededVoidFuture()
      : task.eventLoop.makeFailedFuture(SnapshotSourceError.badResponse("\(what): more than \(expected) bytes"))
  }

  func didFinishRequest(task: HTTPClient.Task<Received>) throws -> Received { state.withLock { $0 } }
}

extension HTTPExchange {
  /// One `GET` of `bytes` bytes (`range` set by the caller) into a chunk buffer, bounded by
  /// `timeout`, its status mapped as ``perform(_:_:what:timeout:maxBody:)`` maps it, a pooled
  /// connection the server closed meanwhile tried once more on a new one.
  static func receiveChunk(_ client: HTTPClient, url: String, headers: HTTPHeaders, bytes: Int, what: String,
                           timeout: Duration) async throws(SnapshotSourceError) -> (Head, ChunkBuffer) {
    do {
      return try await receiveChunkOnce(client, url: url, headers: headers, bytes: bytes, what: what, timeout: timeout)
    } catch .transport {
      return try await receiveChunkOnce(client, url: url, headers: headers, bytes: bytes, what: what, timeout: timeout)
    }
  }

  private static func receiveChunkOnce(_ client: HTTPClient, url: String, headers: HTTPHeaders, bytes: Int, what: String,
                                       timeout: Duration) async throws(SnapshotSourceError) -> (Head, ChunkBuffer) {
    let request: HTTPClient.Request
    do {
      request = try HTTPClient.Request(url: url, method: .GET, headers: headers)
    } catch {
      throw .badConfiguration("\(what): \(error)")
    }
    // The request's own deadline bounds it, head and body (async-http-client fails it with
    // `deadlineExceeded` on its event loop): no racing timer task, whose set-up and cancellation
    // would cost each chunk several more hand-offs between threads.
    let task = client.execute(request: request, delegate: ChunkReceiver(expected: bytes, what: what),
                              deadline: .now() + .nanoseconds(timeout.nanosecondsClamped))
    let received: Received
    do {
      received = try await withTaskCancellationHandler {
        try await task.futureResult.get()
      } onCancel: {
        task.cancel()
      }
    } catch let error as SnapshotSourceError {
      throw error
    } catch let error as HTTPClientError where error == .deadlineExceeded || error == .readTimeout || error == .connectTimeout {
      throw .timedOut("\(what): \(error)")
    } catch {
      throw .transport("\(what): \(error)")
    }
    let head = Head(status: received.status, headers: received.headers)
    switch received.status {
    case 200..<300:
      guard let chunk = received.chunk, received.received == bytes else {
        throw .badResponse("\(what): \(received.received) bytes for a chunk of \(bytes)")
      }
      return (head, chunk)
    case 304, 412:
      throw .objectChanged(what)
    case 404:
      throw .notFound(what)
    case 401, 403:
      throw .denied("\(what): \(String(decoding: received.errorText, as: UTF8.self))")
    case 416:
      throw .badResponse("\(what): range not satisfiable")
    default:
      throw .status(received.status, what)
    }
  }

  typealias Received = ChunkReceiver.Received
}
