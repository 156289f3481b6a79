import Logging
import NIOCore
import NIOHTTP1
import NIOPosix
import Prometheus
import ServiceLifecycle

/// Prometheus's text exposition of the pager's metrics at `GET /metrics`, over HTTP/1.1 on one
/// NIO thread: small on purpose (one handler, no routing framework). Bind it to loopback: the
/// numbers are for the host's own scraper. Runs until graceful shutdown.
struct MetricsEndpoint: Service {
  let host: String
  let port: Int
  let registry: PrometheusCollectorRegistry
  let logger: Logger
  /// Hears the bound port (0 in the configuration picks a free one).
  let bound: @Sendable (Int) -> Void

  func run() async throws {
    let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
    let registry = self.registry
    let channel: any Channel
    do {
      channel = try await ServerBootstrap(group: group)
        .serverChannelOption(ChannelOptions.socketOption(.so_reuseaddr), value: 1)
        .childChannelInitializer { channel in
          channel.eventLoop.makeCompletedFuture {
            try channel.pipeline.syncOperations.configureHTTPServerPipeline()
            try channel.pipeline.syncOperations.addHandler(MetricsHandler(registry: registry))
          }
        }
        .bind(host: host, port: port).get()
    } catch {
      try? await group.shutdownGracefully()
      throw error
    }
    let port = channel.localAddress?.port ?? port
    bound(port)
    logger.info("metrics at http://\(host):\(port)/metrics")
    // Until the group shuts down (a signal, a drain that finished); cancellation ends it too.
    try? await gracefulShutdown()
    try? await channel.close()
    try? await group.shutdownGracefully()
  }
}

/// Answers `GET /metrics` with the registry's exposition; anything else 404, other methods 405.
final class MetricsHandler: ChannelInboundHandler {
  typealias InboundIn = HTTPServerRequestPart
  typealias OutboundOut = HTTPServerResponsePart

  private let registry: PrometheusCollectorRegistry
  private var head: HTTPRequestHead?

  init(registry: PrometheusCollectorRegistry) { self.registry = registry }

  func channelRead(context: ChannelHandlerContext, data: NIOAny) {
    switch unwrapInboundIn(data) {
    case .head(let request): head = request
    case .body: break
    case .end:
      guard let request = head else { return }
      head = nil
      respond(to: request, context: context)
    }
  }

  private func respond(to request: HTTPRequestHead, context: ChannelHandlerContext) {
    let status: HTTPResponseStatus
    var body: [UInt8] = []
    var contentType = "text/plain; charset=utf-8"
    if request.method != .GET && request.method != .HEAD {
      status = .methodNotAllowed
      body = Array("GET /metrics\n".utf8)
    } else if request.uri == "/metrics" || request.uri.hasPrefix("/metrics?") {
      status = .ok
      registry.emit(into: &body)
      contentType = "text/plain; version=0.0.4; charset=utf-8"
    } else {
      status = .notFound
      body = Array("not found: the metrics are at /metrics\n".utf8)
    }
    var headers = HTTPHeaders()
    headers.add(name: "Content-Type", value: contentType)
    headers.add(name: "Content-Length", value: "\(body.count)")
    let keepAlive = request.isKeepAlive
    if !keepAlive { headers.add(name: "Connection", value: "close") }
    context.write(wrapOutboundOut(.head(HTTPResponseHead(version: request.version, status: status, headers: headers))), promise: nil)
    if request.method != .HEAD {
      context.write(wrapOutboundOut(.body(.byteBuffer(context.channel.allocator.buffer(bytes: body)))), promise: nil)
    }
    let done = context.writeAndFlush(wrapOutboundOut(.end(nil)))
    if !keepAlive {
      let loopBound = NIOLoopBound(context, eventLoop: context.eventLoop)
      done.whenComplete { _ in loopBound.value.close(promise: nil) }
    }
  }
}
