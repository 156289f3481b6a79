// PAGEMAP_SCAN, populate-by-atomic-add, and the copy-before-write step of a live snapshot (see
// the header). The copy step runs in a SIGBUS handler too: pwrite(2), ioctl(2) and atomics only.
#include "CUserfaultfd.h"
#include "CUserfaultfdWriteProtect.h"

#include <errno.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
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

// A staging slot's states. A fault takes a FREE slot (FILLING), copies its page in, and marks it
// FULL; the background thread writes FULL slots to the file and frees them.
enum { SLOT_FREE = 0, SLOT_FILLING = 1, SLOT_FULL = 2 };

struct staging_slot {
  _Atomic uint32_t state;
  uint64_t page_index; /* written before FULL is published */
};

struct cuffd_snapshot_context {
  int uffd;
  int out_fd;
  uintptr_t region_base;
  size_t region_length;
  uintptr_t read_offset; /* where this process reads the pages: region address + read_offset */
  // Incremental snapshots: `slots[i]` is page i's place in the output (its rank among the pages of
  // the layer), or the page index itself when NULL; `written[i]` is set by a fault on page i
  // (tracking mode), so the next layer knows which pages changed; in tracking mode the copier
  // leaves pages protected, so every first write after the cut is seen.
  uint64_t *file_slots;
  _Atomic uint8_t *written;
  int tracking;
  size_t page_size;
  int64_t out_offset;
  _Atomic uint8_t *states; /* region_length / page_size bytes */
  _Atomic uint64_t copied_by_faults;
  _Atomic uint64_t copied_in_background;
  _Atomic uint64_t write_errors;
  _Atomic int first_write_errno;
  _Atomic uint64_t unprotect_errors;
  _Atomic int first_unprotect_errno;
  // Staging: a fault copies its page here (a memcpy) instead of writing the file itself, so a
  // writer never waits on file I/O (a buffered write can sleep for milliseconds when the kernel
  // throttles dirty page cache). `staging` is an anonymous mapping of slot_count pages, touched
  // only as slots are used; when every slot is taken a fault writes the file itself.
  struct staging_slot *slots;
  uint8_t *staging;
  size_t slot_count;
  _Atomic size_t slot_hint;
  _Atomic uint64_t staged_by_faults;
  _Atomic uint64_t written_by_faults; /* staging was full: the fault wrote the file */
  _Atomic uint64_t staging_peak;
  _Atomic uint64_t staging_used;
};

struct cuffd_snapshot_context *cuffd_snapshot_context_create(int uffd, int out_fd, int64_t out_offset,
                                                             uintptr_t region_base, size_t region_length,
                                                             size_t page_size, size_t staging_pages,
                                                             uintptr_t read_base) {
  if (page_size == 0 || region_length % page_size != 0 || staging_pages > CUFFD_SNAPSHOT_MAX_STAGING_PAGES) {
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
  if (staging_pages > 0) {
    c->slots = calloc(staging_pages, sizeof *c->slots);
    void *staging = mmap(NULL, staging_pages * page_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (c->slots == NULL || staging == MAP_FAILED) {
      free(c->slots);
      if (staging != MAP_FAILED) munmap(staging, staging_pages * page_size);
      free((void *)c->states);
      free(c);
      errno = ENOMEM;
      return NULL;
    }
    c->staging = staging;
    c->slot_count = staging_pages;
  }
  c->uffd = uffd;
  c->out_fd = out_fd;
  c->out_offset = out_offset;
  c->region_base = region_base;
  c->region_length = region_length;
  c->read_offset = read_base - region_base; /* wraps as unsigned: adding it back gives read_base */
  c->page_size = page_size;
  return c;
}

void cuffd_snapshot_context_destroy(struct cuffd_snapshot_context *c) {
  if (c == NULL) return;
  free(c->file_slots);
  free((void *)c->written);
  if (c->staging != NULL) munmap(c->staging, c->slot_count * c->page_size);
  free(c->slots);
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
  out->staged_by_faults = atomic_load(&c->staged_by_faults);
  out->written_by_faults = atomic_load(&c->written_by_faults);
  out->staging_peak_pages = atomic_load(&c->staging_peak);
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

// Where page `index`'s content goes in the output, from the output offset.
static int64_t file_position(const struct cuffd_snapshot_context *c, size_t index) {
  uint64_t slot = c->file_slots != NULL ? c->file_slots[index] : index;
  return (int64_t)(slot * c->page_size);
}

static void count_write_error(struct cuffd_snapshot_context *c, int error) {
  int zero = 0;
  atomic_compare_exchange_strong(&c->first_write_errno, &zero, error);
  atomic_fetch_add_explicit(&c->write_errors, 1, memory_order_relaxed);
}

// Copies the page into a free staging slot: 1 when staged, 0 when every slot is taken. One pass
// over the slots from a moving hint; lock-free and async-signal-safe.
static int stage_page(struct cuffd_snapshot_context *c, uintptr_t page, size_t index) {
  size_t count = c->slot_count;
  if (count == 0) return 0;
  size_t first = atomic_load_explicit(&c->slot_hint, memory_order_relaxed) % count;
  for (size_t step = 0; step < count; step++) {
    size_t k = (first + step) % count;
    uint32_t expected = SLOT_FREE;
    if (!atomic_compare_exchange_strong_explicit(&c->slots[k].state, &expected, SLOT_FILLING,
                                                 memory_order_acquire, memory_order_relaxed))
      continue;
    memcpy(c->staging + k * c->page_size, (const void *)(page + c->read_offset), c->page_size);
    c->slots[k].page_index = index;
    atomic_store_explicit(&c->slots[k].state, SLOT_FULL, memory_order_release);
    atomic_store_explicit(&c->slot_hint, k + 1, memory_order_relaxed);
    uint64_t used = atomic_fetch_add_explicit(&c->staging_used, 1, memory_order_relaxed) + 1;
    uint64_t peak = atomic_load_explicit(&c->staging_peak, memory_order_relaxed);
    while (used > peak && !atomic_compare_exchange_weak_explicit(&c->staging_peak, &peak, used,
                                                                 memory_order_relaxed, memory_order_relaxed)) {
    }
    return 1;
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
    if (by_fault && stage_page(c, page, index)) {
      atomic_fetch_add_explicit(&c->staged_by_faults, 1, memory_order_relaxed);
    } else {
      int error = write_fully(c->out_fd, (const uint8_t *)(page + c->read_offset), c->page_size,
                              c->out_offset + file_position(c, index));
      if (error != 0) count_write_error(c, error);
      if (by_fault) atomic_fetch_add_explicit(&c->written_by_faults, 1, memory_order_relaxed);
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

size_t cuffd_snapshot_drain_staging(struct cuffd_snapshot_context *c) {
  size_t written = 0;
  for (size_t k = 0; k < c->slot_count; k++) {
    if (atomic_load_explicit(&c->slots[k].state, memory_order_acquire) != SLOT_FULL) continue;
    uint64_t index = c->slots[k].page_index;
    int error = write_fully(c->out_fd, c->staging + k * c->page_size, c->page_size,
                            c->out_offset + file_position(c, index));
    if (error != 0) count_write_error(c, error);
    atomic_store_explicit(&c->slots[k].state, SLOT_FREE, memory_order_release);
    atomic_fetch_sub_explicit(&c->staging_used, 1, memory_order_relaxed);
    written++;
  }
  return written;
}

size_t cuffd_snapshot_staged_pages(struct cuffd_snapshot_context *c) {
  return (size_t)atomic_load_explicit(&c->staging_used, memory_order_relaxed);
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
  // Marked before the page is un-protected: the next layer's cut (writers paused) sees it.
  if (c->tracking && by_fault && page >= c->region_base && page - c->region_base < c->region_length)
    atomic_store_explicit(&c->written[(page - c->region_base) / c->page_size], 1, memory_order_release);
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
      int error = write_fully(c->out_fd, (const uint8_t *)(address + c->read_offset), run * c->page_size,
                              c->out_offset + file_position(c, first + index));
      if (error != 0) count_write_error(c, error);
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
  // Every page of the chunk is in the file: let writers at them without a fault (unless tracking:
  // then the next first write must fault to be recorded).
  if (!c->tracking && unprotect(c->uffd, start, pages * c->page_size, 1) != 0) {
    int error = errno;
    int zero = 0;
    atomic_compare_exchange_strong(&c->first_unprotect_errno, &zero, error);
    atomic_fetch_add_explicit(&c->unprotect_errors, 1, memory_order_relaxed);
    return -1;
  }
  return 0;
}

int cuffd_snapshot_enable_tracking(struct cuffd_snapshot_context *c) {
  size_t pages = c->region_length / c->page_size;
  c->written = calloc(pages + 1, 1);
  c->file_slots = calloc(pages + 1, sizeof *c->file_slots);
  if (c->written == NULL || c->file_slots == NULL) {
    free((void *)c->written);
    free(c->file_slots);
    c->written = NULL;
    c->file_slots = NULL;
    errno = ENOMEM;
    return -1;
  }
  for (size_t i = 0; i < pages; i++) c->file_slots[i] = i;  /* the base layer: every page in place */
  c->tracking = 1;
  return 0;
}

size_t cuffd_snapshot_take_written(struct cuffd_snapshot_context *c, uint8_t *out) {
  size_t pages = c->region_length / c->page_size, count = 0;
  for (size_t i = 0; i < pages; i++) {
    out[i] = c->written != NULL ? atomic_exchange_explicit(&c->written[i], 0, memory_order_acq_rel) : 0;
    count += out[i];
  }
  return count;
}

void cuffd_snapshot_begin_layer(struct cuffd_snapshot_context *c, int out_fd, int64_t out_offset, const uint8_t *include) {
  size_t pages = c->region_length / c->page_size;
  uint64_t rank = 0;
  for (size_t i = 0; i < pages; i++) {
    int in = include == NULL || include[i];
    if (c->file_slots != NULL) c->file_slots[i] = in ? rank : 0;
    if (in) rank++;
    atomic_store_explicit(&c->states[i], in ? CUFFD_SNAPSHOT_PAGE_PENDING : CUFFD_SNAPSHOT_PAGE_COPIED,
                          memory_order_release);
  }
  c->out_fd = out_fd;
  c->out_offset = out_offset;
  atomic_store(&c->copied_by_faults, 0);
  atomic_store(&c->copied_in_background, 0);
  atomic_store(&c->staged_by_faults, 0);
  atomic_store(&c->written_by_faults, 0);
  atomic_store(&c->staging_peak, 0);
}
