// PAGEMAP_SCAN, populate-by-atomic-add, and the copy-before-write step of a live snapshot (see
// the header). The copy step runs in a SIGBUS handler too: pwrite(2), ioctl(2) and atomics only.
#include "CUserfaultfd.h"
#include "CUserfaultfdWriteProtect.h"

#include <errno.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <unistd.h>

#if __has_include(<linux/fs.h>)
#include <linux/fs.h>
#ifdef PAGEMAP_SCAN
// The system header knows PAGEMAP_SCAN (Linux 6.7+ headers): check the private copy against it.
_Static_assert(CUFFD_PAGEMAP_SCAN == PAGEMAP_SCAN, "PAGEMAP_SCAN number");
_Static_assert(sizeof(struct pm_scan_arg) == sizeof(struct cuffd_pm_scan_arg), "pm_scan_arg size");
_Static_assert(sizeof(struct page_region) == sizeof(struct cuffd_page_region), "page_region size");
_Static_assert(CUFFD_PM_SCAN_WP_MATCHING == PM_SCAN_WP_MATCHING, "PM_SCAN_WP_MATCHING");
_Static_assert(CUFFD_PM_SCAN_CHECK_WPASYNC == PM_SCAN_CHECK_WPASYNC, "PM_SCAN_CHECK_WPASYNC");
_Static_assert(CUFFD_PAGE_IS_WRITTEN == PAGE_IS_WRITTEN, "PAGE_IS_WRITTEN");
_Static_assert(CUFFD_PAGE_IS_SOFT_DIRTY == PAGE_IS_SOFT_DIRTY, "PAGE_IS_SOFT_DIRTY");
#endif
#endif

#if defined(__x86_64__) || defined(__aarch64__)
// _IOWR('f', 16, 96 bytes) on the common 64-bit encodings.
_Static_assert(CUFFD_PAGEMAP_SCAN == 0xC0606610UL, "PAGEMAP_SCAN number");
#endif

int cuffd_ioctl_pagemap_scan(int pagemap_fd, struct cuffd_pm_scan_arg *arg) {
  return ioctl(pagemap_fd, CUFFD_PAGEMAP_SCAN, arg);
}

void cuffd_populate_by_atomic_add(uintptr_t start, size_t length, size_t page_size) {
  for (uintptr_t page = start; page - start < length; page += page_size) {
    // A locked add of zero is a write (it faults the page in writable) that cannot lose a
    // concurrent writer's store to the same word.
    __atomic_fetch_add((uint64_t *)page, 0, __ATOMIC_RELAXED);
  }
}

struct cuffd_snapshot_context {
  int uffd;
  int out_fd;
  uintptr_t region_base;
  size_t region_length;
  size_t page_size;
  int64_t out_offset;
  _Atomic uint8_t *states; /* region_length / page_size bytes */
  _Atomic uint64_t copied_by_faults;
  _Atomic uint64_t copied_in_background;
  _Atomic uint64_t write_errors;
  _Atomic int first_write_errno;
  _Atomic uint64_t unprotect_errors;
  _Atomic int first_unprotect_errno;
};

struct cuffd_snapshot_context *cuffd_snapshot_context_create(int uffd, int out_fd, int64_t out_offset,
                                                             uintptr_t region_base, size_t region_length,
                                                             size_t page_size) {
  if (page_size == 0 || region_length % page_size != 0) {
    errno = EINVAL;
    return NULL;
  }
  struct cuffd_snapshot_context *c = calloc(1, sizeof *c);
  if (c == NULL) return NULL;
  c->states = calloc(region_length / page_size + 1, 1);
  if (c->states == NULL) {
    free(c);
    errno = ENOMEM;
    return NULL;
  }
  c->uffd = uffd;
  c->out_fd = out_fd;
  c->out_offset = out_offset;
  c->region_base = region_base;
  c->region_length = region_length;
  c->page_size = page_size;
  return c;
}

void cuffd_snapshot_context_destroy(struct cuffd_snapshot_context *c) {
  if (c == NULL) return;
  free((void *)c->states);
  free(c);
}

void cuffd_snapshot_context_stats(const struct cuffd_snapshot_context *c, struct cuffd_snapshot_stats *out) {
  out->copied_by_faults = atomic_load(&c->copied_by_faults);
  out->copied_in_background = atomic_load(&c->copied_in_background);
  out->write_errors = atomic_load(&c->write_errors);
  out->first_write_errno = atomic_load(&c->first_write_errno);
  out->unprotect_errors = atomic_load(&c->unprotect_errors);
  out->first_unprotect_errno = atomic_load(&c->first_unprotect_errno);
}

int cuffd_snapshot_page_is_copied(const struct cuffd_snapshot_context *c, uintptr_t page) {
  if (page < c->region_base || page - c->region_base >= c->region_length) return 0;
  size_t index = (page - c->region_base) / c->page_size;
  return atomic_load_explicit(&c->states[index], memory_order_acquire) == CUFFD_SNAPSHOT_PAGE_COPIED;
}

// Writes `length` bytes at `source` to `fd` at `offset`, finishing short writes. 0 or an errno.
static int write_fully(int fd, const uint8_t *source, size_t length, int64_t offset) {
  size_t done = 0;
  while (done < length) {
    ssize_t n = pwrite(fd, source + done, length - done, (off_t)(offset + (int64_t)done));
    if (n < 0) {
      if (errno == EINTR) continue;
      return errno;
    }
    if (n == 0) return EIO;
    done += (size_t)n;
  }
  return 0;
}

int cuffd_snapshot_copy_page(struct cuffd_snapshot_context *c, uintptr_t page, int by_fault) {
  if (page < c->region_base || page - c->region_base >= c->region_length) return 0;
  size_t index = (page - c->region_base) / c->page_size;
  _Atomic uint8_t *state = &c->states[index];
  uint8_t expected = CUFFD_SNAPSHOT_PAGE_PENDING;
  if (atomic_compare_exchange_strong_explicit(state, &expected, CUFFD_SNAPSHOT_PAGE_COPYING,
                                              memory_order_acq_rel, memory_order_acquire)) {
    // The page is still write-protected: nobody can change it while it is copied.
    int saved = errno;
    int error = write_fully(c->out_fd, (const uint8_t *)page, c->page_size,
                            c->out_offset + (int64_t)(page - c->region_base));
    if (error != 0) {
      int zero = 0;
      atomic_compare_exchange_strong(&c->first_write_errno, &zero, error);
      atomic_fetch_add_explicit(&c->write_errors, 1, memory_order_relaxed);
    }
    atomic_fetch_add_explicit(by_fault ? &c->copied_by_faults : &c->copied_in_background, 1,
                              memory_order_relaxed);
    atomic_store_explicit(state, CUFFD_SNAPSHOT_PAGE_COPIED, memory_order_release);
    errno = saved;
    return 0;
  }
  // Another thread is copying it: wait for that one page copy.
  while (atomic_load_explicit(state, memory_order_acquire) != CUFFD_SNAPSHOT_PAGE_COPIED) sched_yield();
  return 0;
}

// UFFDIO_WRITEPROTECT without MODE_WP on `length` bytes at `start`, retried a bounded number of
// times while the mappings are changing (EAGAIN) or a signal interrupts it.
static int unprotect(int uffd, uintptr_t start, size_t length, int wake) {
  struct cuffd_writeprotect arg;
  for (int attempt = 0; attempt < 10000; attempt++) {
    arg.range.start = start;
    arg.range.len = length;
    arg.mode = wake ? 0 : CUFFD_WRITEPROTECT_MODE_DONTWAKE;
    if (ioctl(uffd, CUFFD_IOC_WRITEPROTECT, &arg) == 0) return 0;
    if (errno != EAGAIN && errno != EINTR) return -1;
    sched_yield();
  }
  return -1;
}

int cuffd_snapshot_release_page(struct cuffd_snapshot_context *c, uintptr_t page, int by_fault) {
  cuffd_snapshot_copy_page(c, page, by_fault);
  int saved = errno;
  if (unprotect(c->uffd, page, c->page_size, 1) != 0) {
    int error = errno;
    int zero = 0;
    atomic_compare_exchange_strong(&c->first_unprotect_errno, &zero, error);
    atomic_fetch_add_explicit(&c->unprotect_errors, 1, memory_order_relaxed);
    errno = error;
    return -1;
  }
  errno = saved;
  return 0;
}

int cuffd_snapshot_resolve_write_fault(void *context, uintptr_t address) {
  struct cuffd_snapshot_context *c = context;
  uintptr_t page = address & ~(uintptr_t)(c->page_size - 1);
  return cuffd_snapshot_release_page(c, page, 1);
}

// Claims the run of PENDING pages starting at `first` (at most `count`), marking them COPYING.
static size_t claim_run(struct cuffd_snapshot_context *c, size_t first, size_t count) {
  size_t claimed = 0;
  while (claimed < count) {
    uint8_t expected = CUFFD_SNAPSHOT_PAGE_PENDING;
    if (!atomic_compare_exchange_strong_explicit(&c->states[first + claimed], &expected, CUFFD_SNAPSHOT_PAGE_COPYING,
                                                 memory_order_acq_rel, memory_order_acquire))
      break;
    claimed++;
  }
  return claimed;
}

int cuffd_snapshot_copy_chunk(struct cuffd_snapshot_context *c, uintptr_t start, size_t pages) {
  if (start < c->region_base || start - c->region_base >= c->region_length) return 0;
  size_t first = (start - c->region_base) / c->page_size;
  size_t total = c->region_length / c->page_size;
  if (pages > total - first) pages = total - first;
  size_t index = 0;
  while (index < pages) {
    size_t run = claim_run(c, first + index, pages - index);
    if (run > 0) {
      uintptr_t address = c->region_base + (first + index) * c->page_size;
      int error = write_fully(c->out_fd, (const uint8_t *)address, run * c->page_size,
                              c->out_offset + (int64_t)(address - c->region_base));
      if (error != 0) {
        int zero = 0;
        atomic_compare_exchange_strong(&c->first_write_errno, &zero, error);
        atomic_fetch_add_explicit(&c->write_errors, 1, memory_order_relaxed);
      }
      atomic_fetch_add_explicit(&c->copied_in_background, run, memory_order_relaxed);
      for (size_t k = 0; k < run; k++)
        atomic_store_explicit(&c->states[first + index + k], CUFFD_SNAPSHOT_PAGE_COPIED, memory_order_release);
      index += run;
    } else {
      // A writer's fault is copying this page (or has): wait for that one page copy.
      while (atomic_load_explicit(&c->states[first + index], memory_order_acquire) != CUFFD_SNAPSHOT_PAGE_COPIED)
        sched_yield();
      index++;
    }
  }
  // Every page of the chunk is in the file: let writers at them without a fault.
  if (unprotect(c->uffd, start, pages * c->page_size, 1) != 0) {
    int error = errno;
    int zero = 0;
    atomic_compare_exchange_strong(&c->first_unprotect_errno, &zero, error);
    atomic_fetch_add_explicit(&c->unprotect_errors, 1, memory_order_relaxed);
    return -1;
  }
  return 0;
}
