import CUserfaultfd

extension Userfaultfd {
  /// Registers `length` bytes at `start` with this userfaultfd (`UFFDIO_REGISTER`), and returns
  /// the ioctls the kernel allows on that range.
  ///
  /// - Throws: ``UserfaultfdError/invalidArgument(_:_:)`` for an empty mode or a misaligned
  ///   range; `operationFailed` with EINVAL when the memory does not support `mode`, EBUSY when
  ///   another userfaultfd already registered it.
  @discardableResult
  public func register(
    _ start: UnsafeMutableRawPointer, length: Int, mode: RegisterMode
  ) throws(UserfaultfdError) -> Ioctls {
    let range = try PageRange(start, length: length, role: .range, operation: .register)
    guard !mode.isEmpty else {
      throw .invalidArgument(.register, .emptyMode)
    }
    guard mode.isSubset(of: [.missing, .writeProtect, .minor]) else {
      throw .invalidArgument(.register, .unknownModeBits(mode.subtracting([.missing, .writeProtect, .minor]).rawValue))
    }
    let fd = try fd(for: .register)
    var arg = cuffd_register(
      range: cuffd_range(start: UInt64(range.start), len: UInt64(range.length)),
      mode: mode.rawValue, ioctls: 0)
    try check(valueOrErrno(retryOnInterrupt: true) { cuffd_ioctl_register(fd, &arg) },
              operation: .register, range: range)
    // The memory's own page size, so faults there are resolved whole. Only hugetlbfs ranges are
    // registered without ZEROPAGE (it has no zero page); for those alone smaps, which is slow to
    // read in a large process, says whether the pages are 2 MiB or 1 GiB.
    let ioctls = Ioctls(rawValue: arg.ioctls)
    let kernelPageSize = ioctls.contains(.zeroPage) ? 0 : cuffd_vma_kernel_page_size(range.start)
    let pageSize = kernelPageSize > 0 ? Int(kernelPageSize) : PageSize.base
    let faultsWhenMissing = !mode.isDisjoint(with: [.missing, .minor])
    registrations.update {
      $0.insert(range.start, range.end, pageSize: pageSize, faultsWhenMissing: faultsWhenMissing)
    }
    return Ioctls(rawValue: arg.ioctls)
  }

  /// Unregisters `length` bytes at `start` (`UFFDIO_UNREGISTER`). Threads blocked on faults in the
  /// range are woken and retry the access as ordinary faults.
  public func unregister(_ start: UnsafeMutableRawPointer, length: Int) throws(UserfaultfdError) {
    let range = try PageRange(start, length: length, role: .range, operation: .unregister)
    let fd = try fd(for: .unregister)
    var arg = cuffd_range(start: UInt64(range.start), len: UInt64(range.length))
    try check(valueOrErrno(retryOnInterrupt: true) { cuffd_ioctl_unregister(fd, &arg) },
              operation: .unregister, range: range)
    registrations.update { $0.remove(range.start, range.end) }
  }

  /// Wakes threads waiting on faults in `length` bytes at `start` (`UFFDIO_WAKE`): needed after
  /// operations issued with a don't-wake option.
  public func wake(_ start: UnsafeMutableRawPointer, length: Int) throws(UserfaultfdError) {
    let range = try PageRange(start, length: length, role: .range, operation: .wake)
    let fd = try fd(for: .wake)
    var arg = cuffd_range(start: UInt64(range.start), len: UInt64(range.length))
    try check(valueOrErrno(retryOnInterrupt: true) { cuffd_ioctl_wake(fd, &arg) },
              operation: .wake, range: range)
  }
}
