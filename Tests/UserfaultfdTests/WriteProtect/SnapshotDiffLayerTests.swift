import Foundation
import SystemPackage
import Testing
import Userfaultfd

extension KernelTests {
@Suite("Incremental live snapshots")
struct SnapshotDiffLayerTests {
  /// A base snapshot and three diff layers cut while two writers run: each layer holds exactly the
  /// pages written since the previous cut, and the base with the layers applied in order equals
  /// the writers' record at each cut, page by page.
  @Test(.enabled(if: Tracking.has(.writeProtectFaults), Tracking.needs(.writeProtectFaults)),
        arguments: LiveSnapshot.Resolver.allCases)
  func baseAndDiffLayersRestoreEveryCut(resolver: LiveSnapshot.Resolver) throws {
    let pages = 1024, writers = 2, page = PageSize.base
    let memory = try AnonymousMemory(length: pages * page)
    var initial = [UInt64](repeating: 0, count: pages)
    for index in 0..<(pages / 2) {
      let value = UInt64(index) | 1 << 63
      (memory.baseAddress + index * page).storeBytes(of: value, as: UInt64.self)
      (memory.baseAddress + index * page + page - 8).storeBytes(of: value, as: UInt64.self)
      initial[index] = value
    }
    let prefix = "/tmp/uffd-diff-\(getpid())-\(resolver.rawValue)"
    var files: [FileDescriptor] = []
    defer {
      for (number, file) in files.enumerated() {
        try? file.close()
        _ = unlink("\(prefix)-\(number)")
      }
    }
    for number in 0..<5 {
      files.append(try FileDescriptor.open(FilePath("\(prefix)-\(number)"), .readWrite, options: [.create, .truncate],
                                           permissions: [.ownerReadWrite]))
    }
    let snapshot = try LiveSnapshot(memory: memory, file: files[0], resolver: resolver, incremental: true)
    #expect(snapshot.isIncremental)
    let team = (0..<writers).map {
      // The writers keep to the first half: the second half must never appear in a layer.
      SequenceWriter(base: Address(memory.baseAddress), pages: pages / 2, pageSize: page, first: $0, every: writers, initial: initial)
    }
    var states: [[UInt64]] = []
    var layers: [SnapshotDiffLayer] = []
    do {
      for cut in 0..<4 {
        usleep(UInt32(500 << cut))
        for writer in team where !writer.pause() { Issue.record("a writer did not pause within 10 s") }
        var expected = initial
        for (number, writer) in team.enumerated() {
          for index in stride(from: number, to: pages / 2, by: writers) { expected[index] = writer.lastWritten[index] }
        }
        if cut == 0 {
          try snapshot.cut()
        } else {
          let layer = try snapshot.cutDiff(into: files[cut])
          let previous = states[cut - 1]
          let changed = (0..<pages).filter { expected[$0] != previous[$0] }
          #expect(layer.pageIndices == changed, "layer \(cut): exactly the pages written since the previous cut")
          #expect(layer.pageIndices.allSatisfy { $0 < pages / 2 })
          layers.append(layer)
        }
        for writer in team { writer.resume() }
        usleep(2000)
        let report = try snapshot.finish(timeoutSeconds: 60)
        #expect(report.copiedBeforeWrites + report.copiedInBackground == report.pages)
        #expect(report.pages == (cut == 0 ? pages : layers[cut - 1].pageIndices.count))
        states.append(expected)
      }
      #expect(snapshot.layerCount == 4)
    } catch {
      snapshot.cancel()
      for writer in team { _ = writer.finish() }
      throw error
    }
    for writer in team where !writer.finish() { Issue.record("a writer did not finish within 20 s") }
    snapshot.cancel()
    #expect(throws: UserfaultfdError.self) { try snapshot.cutDiff(into: files[4]) }  // the series ended
    // Restore: the base, then each layer in order, checked against the record at each cut.
    let image = files[4]
    var buffer = [UInt8](repeating: 0, count: pages * page)
    func imageMatches(_ expected: [UInt64], _ what: String) throws {
      let read = try buffer.withUnsafeMutableBytes { try image.read(fromAbsoluteOffset: 0, into: $0) }
      #expect(read == pages * page, "\(what): image length")
      let wrong = (0..<pages).filter { index in
        buffer.withUnsafeBytes {
          $0.load(fromByteOffset: index * page, as: UInt64.self) != expected[index]
            || $0.load(fromByteOffset: index * page + page - 8, as: UInt64.self) != expected[index]
        }
      }
      #expect(wrong.isEmpty, "\(resolver.rawValue) \(what): \(wrong.count) pages differ, first \(wrong.prefix(8))")
    }
    let base = try buffer.withUnsafeMutableBytes { try files[0].read(fromAbsoluteOffset: 0, into: $0) }
    _ = try buffer.withUnsafeBytes { try image.writeAll(toAbsoluteOffset: 0, UnsafeRawBufferPointer(rebasing: $0[0..<base])) }
    try imageMatches(states[0], "the base")
    for cut in 1..<4 {
      let applied = try SnapshotDiffLayer.apply(files[cut], to: image)
      #expect(applied == layers[cut - 1])
      try imageMatches(states[cut], "base + \(cut) layers")
    }
    print("incremental (\(resolver.rawValue)): layers of \(layers.map { $0.pageIndices.count }) pages over \(pages)")
  }

  @Test func aFileThatIsNotALayerIsRefused() throws {
    let path = "/tmp/uffd-not-a-layer-\(getpid())"
    let file = try FileDescriptor.open(FilePath(path), .readWrite, options: [.create, .truncate], permissions: [.ownerReadWrite])
    defer {
      try? file.close()
      _ = unlink(path)
    }
    #expect(throws: UserfaultfdError.self) { try SnapshotDiffLayer.read(from: file) }  // empty
    _ = try file.writeAll(toAbsoluteOffset: 0, Array("UFFDDIFX".utf8) + [UInt8](repeating: 0, count: 64))
    #expect(throws: UserfaultfdError.self) { try SnapshotDiffLayer.read(from: file) }  // bad magic
    var header = Array("UFFDDIFF".utf8)
    for value: UInt64 in [UInt64(1) | UInt64(4096) << 32, 8192, 3, 1] {  // 3 pages claimed in a 2-page range
      withUnsafeBytes(of: value.littleEndian) { header.append(contentsOf: $0) }
    }
    _ = try file.writeAll(toAbsoluteOffset: 0, header)
    #expect(throws: UserfaultfdError.self) { try SnapshotDiffLayer.read(from: file) }
  }
}
}
