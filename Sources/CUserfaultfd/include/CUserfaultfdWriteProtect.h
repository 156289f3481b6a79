// Write protection beyond the userfaultfd ioctls: the PAGEMAP_SCAN ioctl on /proc/PID/pagemap
// (Linux 6.7+; Debian 12's headers lack it, so its ABI is copied here from
// include/uapi/linux/fs.h), populating pages without changing them, and the copy-before-write
// step of a live snapshot, which runs in a handler thread or in a SIGBUS handler and so is
// written in C, async-signal-safe.
#ifndef CUSERFAULTFD_WRITE_PROTECT_H
#define CUSERFAULTFD_WRITE_PROTECT_H

#include <stddef.h>
#include <stdint.h>

// MARK: - PAGEMAP_SCAN (include/uapi/linux/fs.h, Linux 6.7+)

/// Page categories (`PAGE_IS_*`): bits of `page_region.categories` and of the scan masks.
#define CUFFD_PAGE_IS_WPALLOWED  (1ULL << 0)
#define CUFFD_PAGE_IS_WRITTEN    (1ULL << 1)
#define CUFFD_PAGE_IS_FILE       (1ULL << 2)
#define CUFFD_PAGE_IS_PRESENT    (1ULL << 3)
#define CUFFD_PAGE_IS_SWAPPED    (1ULL << 4)
#define CUFFD_PAGE_IS_PFNZERO    (1ULL << 5)
#define CUFFD_PAGE_IS_HUGE       (1ULL << 6)
#define CUFFD_PAGE_IS_SOFT_DIRTY (1ULL << 7)

/// `PM_SCAN_WP_MATCHING`: write-protect the matching pages in the same walk (under the page-table
/// lock, page by page: no write between "reported" and "protected" is lost).
#define CUFFD_PM_SCAN_WP_MATCHING   (1ULL << 0)
/// `PM_SCAN_CHECK_WPASYNC`: fail with EPERM on a range not registered for async WP, instead of
/// silently skipping it (with WP_MATCHING) or reporting it all written (without).
#define CUFFD_PM_SCAN_CHECK_WPASYNC (1ULL << 1)

/// One run of pages with the same categories (`struct page_region`).
struct cuffd_page_region {
  uint64_t start;
  uint64_t end;
  uint64_t categories;
};

/// The argument of PAGEMAP_SCAN (`struct pm_scan_arg`). `walk_end` is written back: where the
/// walk stopped, which can be before `end` even when every range found fitted; scan again from it.
struct cuffd_pm_scan_arg {
  uint64_t size;
  uint64_t flags;
  uint64_t start;
  uint64_t end;
  uint64_t walk_end;
  uint64_t vec;
  uint64_t vec_len;
  uint64_t max_pages;
  uint64_t category_inverted;
  uint64_t category_mask;
  uint64_t category_anyof_mask;
  uint64_t return_mask;
};

#define CUFFD_PAGEMAP_IOCTL_MAGIC 'f'
#define CUFFD_PAGEMAP_SCAN _IOWR(CUFFD_PAGEMAP_IOCTL_MAGIC, 16, struct cuffd_pm_scan_arg)

_Static_assert(sizeof(struct cuffd_page_region) == 24, "page_region layout");
_Static_assert(sizeof(struct cuffd_pm_scan_arg) == 96, "pm_scan_arg layout");
_Static_assert(offsetof(struct cuffd_pm_scan_arg, walk_end) == 32, "pm_scan_arg.walk_end offset");
_Static_assert(offsetof(struct cuffd_pm_scan_arg, return_mask) == 88, "pm_scan_arg.return_mask offset");

/// `ioctl(pagemap_fd, PAGEMAP_SCAN, arg)`: the number of regions written to `arg->vec`, or -1
/// with errno set (ENOTTY / EINVAL before Linux 6.7).
int cuffd_ioctl_pagemap_scan(int pagemap_fd, struct cuffd_pm_scan_arg *arg);

// MARK: - Populating without changing

/// Makes every page of `start ..< start + length` present and writable-mapped without changing a
/// byte, even while other threads write it: one atomic add of zero per page (a write fault
/// allocates the page; the value stays whatever it is). For kernels without
/// MADV_POPULATE_WRITE (< 5.14) or memory it refuses. `page_size` is the mapping's page size.
void cuffd_populate_by_atomic_add(uintptr_t start, size_t length, size_t page_size);

// MARK: - Live snapshot: copy before the first write

/// Per-page states of a live snapshot's copy (one byte each in `states`).
#define CUFFD_SNAPSHOT_PAGE_PENDING 0 /* not copied; still write-protected */
#define CUFFD_SNAPSHOT_PAGE_COPYING 1 /* one thread is copying it */
#define CUFFD_SNAPSHOT_PAGE_COPIED  2 /* in the file or staged; may be unprotected */

/// The most staging pages a snapshot context takes.
#define CUFFD_SNAPSHOT_MAX_STAGING_PAGES 65536

/// What the copy step needs: the range, where its pages go, one state byte per page and the
/// counters it keeps. Opaque (its fields are C atomics); made once at setup, before anything is
/// armed, so the fault path never allocates.
struct cuffd_snapshot_context;

/// A plain copy of a snapshot's counters.
struct cuffd_snapshot_stats {
  uint64_t copied_by_faults;
  uint64_t copied_in_background;
  uint64_t write_errors;     /* pwrite failures (the snapshot is then incomplete) */
  int first_write_errno;
  uint64_t unprotect_errors; /* UFFDIO_WRITEPROTECT failures when releasing a page */
  int first_unprotect_errno;
  uint64_t staged_by_faults;   /* of copied_by_faults: copied into staging (no file I/O in the fault) */
  uint64_t written_by_faults;  /* of copied_by_faults: written to the file by the fault (staging full) */
  uint64_t staging_peak_pages; /* the most staging slots in use at once */
};

/// A context for `region_length` bytes at `region_base` (page size `page_size`), their pages
/// going to `out_fd` at `out_offset + (page - region_base)`, released through `uffd`, with
/// `staging_pages` staging slots (at most CUFFD_SNAPSHOT_MAX_STAGING_PAGES; 0: faults write the
/// file themselves). The pages are read at `read_base` in this process: `region_base` itself, or
/// this process's mapping of the same pages when the region is another process's (the ioctls
/// take the region's addresses). NULL with errno EINVAL (bad sizes) or ENOMEM.
struct cuffd_snapshot_context *cuffd_snapshot_context_create(int uffd, int out_fd, int64_t out_offset,
                                                             uintptr_t region_base, size_t region_length,
                                                             size_t page_size, size_t staging_pages,
                                                             uintptr_t read_base);
void cuffd_snapshot_context_destroy(struct cuffd_snapshot_context *context);
void cuffd_snapshot_context_stats(const struct cuffd_snapshot_context *context, struct cuffd_snapshot_stats *out);
/// Whether the page at `page` has been copied (its state is COPIED).
int cuffd_snapshot_page_is_copied(const struct cuffd_snapshot_context *context, uintptr_t page);

/// Copies the page at `page` (page-aligned, inside the region) out unless it already is, waiting
/// (at most one page copy) when another thread is copying it. A fault (`by_fault`) copies it into
/// a free staging slot (a memcpy: no file I/O in the writer's way), or writes the file itself when
/// every slot is taken; otherwise it goes to the file. Returns 0 once the page is saved (or its
/// write failed and was counted): the caller may then unprotect it. Async-signal-safe.
int cuffd_snapshot_copy_page(struct cuffd_snapshot_context *context, uintptr_t page, int by_fault);

/// Writes every staged page to the file and frees its slot (the background thread's job, between
/// chunks and at the end). Returns how many pages it wrote; write errors are counted in the stats.
size_t cuffd_snapshot_drain_staging(struct cuffd_snapshot_context *context);

/// Staging slots in use now (pages copied by faults, not yet in the file).
size_t cuffd_snapshot_staged_pages(struct cuffd_snapshot_context *context);

/// SIGBUS resolver (a `cuffd_sigbus_resolver`) for a write-protect fault in a live snapshot's
/// range: copies the page out, then unprotects it so the write completes when the handler
/// returns. Returns 0, or -1 with errno when the page could not be unprotected.
int cuffd_snapshot_resolve_write_fault(void *context, uintptr_t address);

/// The same for a handler thread: copy, then unprotect and wake the waiting writer.
int cuffd_snapshot_release_page(struct cuffd_snapshot_context *context, uintptr_t page, int by_fault);

/// The background copy of `pages` pages from `start`: claims runs of pages nobody copied yet and
/// writes each run with one pwrite, waits for pages a writer's fault is copying, then un-protects
/// the whole chunk with one ioctl. Returns 0, or -1 with errno when the un-protect failed (write
/// errors are counted in the stats instead).
int cuffd_snapshot_copy_chunk(struct cuffd_snapshot_context *context, uintptr_t start, size_t pages);

// MARK: - Incremental snapshots

/// Tracking mode (for a series of layers): faults mark their page written, the background copy
/// leaves pages protected, and each layer's pages go to consecutive places in its output. 0, or
/// -1 with errno ENOMEM. Call once, before anything is armed.
int cuffd_snapshot_enable_tracking(struct cuffd_snapshot_context *context);

/// Copies the written marks into `out` (one byte per page) and clears them; returns how many
/// were set. Call with the range's writers paused.
size_t cuffd_snapshot_take_written(struct cuffd_snapshot_context *context, uint8_t *out);

/// Starts a layer: the pages with `include[i]` set (every page when NULL) are to be copied, in
/// page order, to `out_fd` from `out_offset`; the others count as copied. Resets the counters.
/// Call with the writers paused and no copy running.
void cuffd_snapshot_begin_layer(struct cuffd_snapshot_context *context, int out_fd, int64_t out_offset,
                                const uint8_t *include);

#endif
