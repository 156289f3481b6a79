extension SnapshotPagerHost {
  /// The host-wide chunk cache every chunked snapshot of this pager is served through.
  public var chunkCache: ChunkCache? { catalog.remote?.cache }
}
