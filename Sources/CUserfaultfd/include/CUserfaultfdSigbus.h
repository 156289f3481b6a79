// In-thread fault resolution for UFFD_FEATURE_SIGBUS: the faulting thread gets SIGBUS and a
// handler installed here resolves the fault in that thread (no round trip to another thread).
//
// Everything here is async-signal-safe: a fixed table of regions published with atomics, resolver
// functions called through plain C function pointers, ioctl(2) only. Faults outside every region
// (a genuine SIGBUS) are passed on to the handler that was installed before, or to the default
// action.
#ifndef CUSERFAULTFD_SIGBUS_H
#define CUSERFAULTFD_SIGBUS_H

#include <stddef.h>
#include <stdint.h>

/// Resolves a fault at `address` (page-aligned) inside a region. Returns 0 when the page is now
/// mapped (the access is retried), non-zero to pass the signal on. Must be async-signal-safe: no
/// allocation, no locks, no Swift retain/release.
typedef int (*cuffd_sigbus_resolver)(void *context, uintptr_t address);

#define CUFFD_SIGBUS_MAX_REGIONS 64

/// Installs the SIGBUS handler (once; later calls are no-ops), remembering the previous one.
/// Returns 0, or -1 with errno set.
int cuffd_sigbus_install(void);

/// Restores the handler that was installed before `cuffd_sigbus_install`. Fails with EBUSY while
/// regions are active. Returns 0, or -1 with errno set.
int cuffd_sigbus_uninstall(void);

/// Publishes a region; returns its slot (>= 0), or -1 with errno ENOSPC when the table is full.
int cuffd_sigbus_add_region(uintptr_t start, size_t length, cuffd_sigbus_resolver resolver,
                            void *context);

/// Withdraws a region. A handler already running for it finishes first.
void cuffd_sigbus_remove_region(int slot);

/// Context of the built-in resolvers: fill the page at `address` from `source_base + (address -
/// region_base)` with UFFDIO_COPY or UFFDIO_MOVE, or with zeros (`source_base` 0).
struct cuffd_sigbus_source {
  int uffd;
  int use_move;
  uintptr_t region_base;
  uintptr_t source_base;
  size_t page_size;
};

/// Built-in resolver: COPY (or MOVE when `use_move`) from the matching source page; zero page when
/// `source_base` is 0. EEXIST (another thread won) and ENOENT for MOVE count as resolved.
int cuffd_sigbus_resolve_from_source(void *context, uintptr_t address);

/// Counters for diagnostics: faults resolved, and signals passed on.
uint64_t cuffd_sigbus_resolved_count(void);
uint64_t cuffd_sigbus_forwarded_count(void);

#endif
