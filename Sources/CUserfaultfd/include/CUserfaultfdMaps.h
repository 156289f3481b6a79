// The mapping (VMA) that contains an address, read from /proc/self/maps and /proc/self/smaps
// without allocating: a stack buffer and read(2) only. The logical move asks it before it takes
// pages (is the source private anonymous? where does the mapping end?), and the EBUSY diagnosis
// asks it under memory pressure, where a Swift allocation failure would abort the process.
#ifndef CUSERFAULTFD_MAPS_H
#define CUSERFAULTFD_MAPS_H

#include <stdint.h>

/// One mapping as /proc/self/maps describes it.
struct cuffd_vma {
  uintptr_t start;
  uintptr_t end;
  int readable;
  int writable;
  int executable;
  /// `s` in the permissions: MAP_SHARED (shmem, a shared file).
  int shared;
  /// No backing file: plain anonymous memory, `[heap]`, `[stack]` or `[anon:name]`.
  int anonymous;
};

/// Finds the mapping containing `address`. Returns 1 and fills `out` when found, 0 when no mapping
/// contains it, -1 with errno set when /proc/self/maps cannot be read.
int cuffd_vma_lookup(uintptr_t address, struct cuffd_vma *out);

/// Whether the mapping containing `address` carries VmFlags `flag` (two letters, e.g. "mg" for
/// KSM-mergeable) in /proc/self/smaps. Returns 1 or 0, -1 when unknown.
int cuffd_vma_has_flag(uintptr_t address, const char *flag);

/// The page size the kernel uses for the mapping containing `address` (smaps `KernelPageSize`):
/// 4096 for ordinary memory, 2 MiB or 1 GiB for hugetlbfs. 0 when no mapping contains it, -1 when
/// /proc/self/smaps cannot be read.
long cuffd_vma_kernel_page_size(uintptr_t address);

#endif
