import Glibc
import SystemPackage

/// Reads a small text file such as `/proc/sys/vm/unprivileged_userfaultfd`; nil if unreadable.
func readSmallFile(_ path: String, limit: Int = 1 << 16) -> String? {
  guard let fd = try? FileDescriptor.open(FilePath(path), .readOnly, options: .closeOnExec) else {
    return nil
  }
  defer { try? fd.close() }
  var bytes: [UInt8] = []
  var chunk = [UInt8](repeating: 0, count: 4096)
  while bytes.count < limit {
    guard let count = try? chunk.withUnsafeMutableBytes({ try fd.read(into: $0) }), count > 0 else {
      break
    }
    bytes.append(contentsOf: chunk[0..<count])
  }
  return String(decoding: bytes, as: UTF8.self)
}

/// The target of symbolic link `path` (e.g. `/proc/self/fd/N`); nil if unreadable.
func readLink(_ path: String) -> String? {
  var buffer = [CChar](repeating: 0, count: 256)
  let count = buffer.withUnsafeMutableBufferPointer { bytes -> Int in
    guard let base = bytes.baseAddress else { return -1 }
    return readlink(path, base, bytes.count - 1)
  }
  guard count > 0 else { return nil }
  return String(decoding: buffer[0..<count].map { UInt8(bitPattern: $0) }, as: UTF8.self)
}
