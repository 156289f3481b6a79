/// What `/proc/self/fdinfo/N` says about a userfaultfd: the kernel prints
/// `API:\t<api>:<features>:<ioctls>` (hexadecimal) for every userfaultfd, with the features the
/// `UFFDIO_API` handshake enabled.
struct AdoptedDescriptorInfo: Equatable {
  var features: Features = []
  var ioctls: Ioctls = []

  /// Bits the kernel keeps in the same word for itself (`UFFD_FEATURE_INITIALIZED`, 1 << 31, on
  /// newer kernels): not features a caller asked for.
  static var internalBits: UInt64 { 1 << 31 }

  init(fdinfo: String) {
    for line in fdinfo.split(separator: "\n") where line.hasPrefix("API:") {
      let fields = line.dropFirst(4).trimmingPrefix(while: { $0 == "\t" || $0 == " " }).split(separator: ":")
      guard fields.count == 3,
            let features = UInt64(fields[1], radix: 16), let ioctls = UInt64(fields[2], radix: 16)
      else { continue }
      self.features = Features(rawValue: features & ~Self.internalBits)
      self.ioctls = Ioctls(rawValue: ioctls)
    }
  }
}

extension Substring {
  fileprivate func trimmingPrefix(while predicate: (Character) -> Bool) -> Substring {
    var rest = self[...]
    while let first = rest.first, predicate(first) { rest = rest.dropFirst() }
    return rest
  }
}
