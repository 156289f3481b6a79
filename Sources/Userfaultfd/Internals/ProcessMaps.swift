/// One mapping (VMA) of this process, as `/proc/self/smaps` describes it.
struct MappingInfo: Sendable, Equatable {
  let start: UInt
  let end: UInt
  /// `rwxp` / `rw-s` as in /proc/self/maps.
  let permissions: String
  /// The backing file or `[heap]`-style name; empty for anonymous memory.
  let path: String
  /// The two-letter VmFlags (`mg` = KSM mergeable, `um` = userfaultfd missing, `dc` = dontcopy, ...).
  let vmFlags: Set<String>
  /// Bytes of this mapping backed by transparent huge pages.
  let anonHugePages: Int

  var isShared: Bool { permissions.hasSuffix("s") }
  var isPrivateAnonymous: Bool { !isShared && (path.isEmpty || path.hasPrefix("[anon")) }
  var protection: Substring { permissions.prefix(3) }

  /// The mapping containing `address`, read from /proc/self/smaps; nil if none.
  static func containing(_ address: UInt) -> MappingInfo? {
    guard let text = readSmallFile("/proc/self/smaps", limit: 64 << 20) else { return nil }
    var current: (start: UInt, end: UInt, permissions: String, path: String)?
    var hugeKiB = 0
    for line in text.split(separator: "\n", omittingEmptySubsequences: true) {
      let fields = line.split(separator: " ", omittingEmptySubsequences: true)
      guard let first = fields.first else { continue }
      if first.contains("-"), !first.hasSuffix(":") {
        let bounds = first.split(separator: "-")
        guard bounds.count == 2, let start = UInt(bounds[0], radix: 16), let end = UInt(bounds[1], radix: 16)
        else { continue }
        current = nil
        hugeKiB = 0
        if start <= address && address < end {
          let path = fields.count > 5 ? fields[5...].joined(separator: " ") : ""
          current = (start, end, fields.count > 1 ? String(fields[1]) : "", path)
        }
      } else if let mapping = current {
        if first == "AnonHugePages:", fields.count > 1 { hugeKiB = Int(fields[1]) ?? 0 }
        if first == "VmFlags:" {
          return MappingInfo(
            start: mapping.start, end: mapping.end, permissions: mapping.permissions,
            path: mapping.path, vmFlags: Set(fields.dropFirst().map(String.init)),
            anonHugePages: hugeKiB * 1024)
        }
      }
    }
    return nil
  }
}
