import Glibc
import Userfaultfd

/// The physical limit of compaction: one memcpy of the live bytes. Measured in the same run as the
/// compaction so both see the same machine state.
package enum MemcpyBaseline {
  /// Median bandwidth (GB/s) of `repetitions` memcpys of `bytes` between two populated buffers.
  package static func gigabytesPerSecond(bytes: Int = 64 << 20, repetitions: Int = 7) throws -> Double {
    let source = try AnonymousMemory(length: bytes, populate: true)
    let destination = try AnonymousMemory(length: bytes, populate: true)
    source.bytes.initializeMemory(as: UInt8.self, repeating: 0x5A)
    var samples: [Double] = []
    for _ in 0..<repetitions {
      var start = timespec(), end = timespec()
      clock_gettime(CLOCK_MONOTONIC, &start)
      memcpy(destination.baseAddress, source.baseAddress, bytes)
      clock_gettime(CLOCK_MONOTONIC, &end)
      let nanoseconds = Double(end.tv_sec - start.tv_sec) * 1e9 + Double(end.tv_nsec - start.tv_nsec)
      samples.append(Double(bytes) / max(1, nanoseconds))
    }
    return median(samples)
  }
}
