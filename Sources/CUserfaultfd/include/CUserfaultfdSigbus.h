// In-thread fault resolution for UFFD_FEATURE_SIGBUS: the faulting thread gets SIGBUS and a
// handler installed here resolves the fault in that thread (no round trip to another thread).
//
// Everything the handler does is async-signal-safe: a fixed table of regions published with
// atomics, resolver functions called through plain C function pointers, ioctl(2) only. Table
// changes (add, retire) are serialised by a mutex the handler never takes.
//
// A fault the resolver cannot fill is *failed*, never retried forever and never passed on as if
// it were a genuine SIGBUS: the page is poisoned (UFFDIO_POISON, Linux 6.6+: the retried access
// raises a real SIGBUS, BUS_MCEERR_AR, which goes to the previous handler) or mapped as a zero
// page, per region, and counted. A closed region is *retired*: a thread whose SIGBUS was already
// on its way returns and retries its access, which is an ordinary fault once the range is
// unregistered.
#ifndef CUSERFAULTFD_SIGBUS_H
#define CUSERFAULTFD_SIGBUS_H

#include <stddef.h>
#include <stdint.h>

/// Resolves a fault at `address` (page-aligned) inside a region. Returns 0 when the page is now
/// mapped (the access is retried), non-zero when it could not (the fault is then failed with the
/// region's failure action). Must be async-signal-safe: no allocation, no locks, no Swift
/// retain/release.
typedef int (*cuffd_sigbus_resolver)(void *context, uintptr_t address);

#define CUFFD_SIGBUS_MAX_REGIONS 64

/// What the handler does with a fault the resolver could not fill.
#define CUFFD_SIGBUS_FAIL_POISON 0   /* UFFDIO_POISON; a zero page where the kernel lacks it */
#define CUFFD_SIGBUS_FAIL_ZEROPAGE 1 /* UFFDIO_ZEROPAGE */
/// Leave the page alone and let the access retry (a write-protect fault, whose page holds data
/// that must not be replaced); after many retries at one address the signal is passed on.
#define CUFFD_SIGBUS_FAIL_RETRY 2

/// Installs the SIGBUS handler (once; later calls are no-ops), remembering the previous one.
/// Returns 0, or -1 with errno set.
int cuffd_sigbus_install(void);

/// Restores the handler that was installed before `cuffd_sigbus_install`. Fails with EBUSY while
/// regions are active. Returns 0, or -1 with errno set.
int cuffd_sigbus_uninstall(void);

/// Claims a slot for `start ..< start + length` served through userfaultfd `uffd`. The region is
/// not served until `cuffd_sigbus_activate`. Returns the slot (>= 0), or -1 with errno ENOSPC
/// (table full) or EEXIST (overlaps a claimed or active region).
int cuffd_sigbus_claim(uintptr_t start, size_t length, int uffd, size_t page_size,
                       int failure_action, cuffd_sigbus_resolver resolver, void *context);

/// Starts serving a claimed slot.
void cuffd_sigbus_activate(int slot);

/// Frees a claimed slot that was never activated.
void cuffd_sigbus_release(int slot);

/// Stops calling the slot's resolver and waits for any call under way. The slot stays *retired*,
/// remembering its range, so a SIGBUS already on its way for that range retries the access
/// instead of killing the thread; unregister the range after this call.
void cuffd_sigbus_retire(int slot);

/// Counters of one slot: faults resolved, faults failed, and the last failure's address and errno.
struct cuffd_sigbus_slot_stats {
  uint64_t resolved;
  uint64_t failed;
  uintptr_t last_failed_address;
  int last_failed_errno;
};
void cuffd_sigbus_slot_stats(int slot, struct cuffd_sigbus_slot_stats *out);

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
/// `source_base` is 0. EEXIST (another thread won) counts as resolved; anything else (a source
/// hole for MOVE, an unreadable source for COPY) is a failure, with errno set.
int cuffd_sigbus_resolve_from_source(void *context, uintptr_t address);

/// Counters for diagnostics: faults resolved and failed in every region, and signals passed on.
uint64_t cuffd_sigbus_resolved_count(void);
uint64_t cuffd_sigbus_failed_count(void);
uint64_t cuffd_sigbus_forwarded_count(void);

#endif
