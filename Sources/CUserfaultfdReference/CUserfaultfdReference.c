#include "CUserfaultfdReference.h"
#include "CUserfaultfd.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define HUGE_SIZE ((size_t)2 << 20)

int64_t cuffd_ref_now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

void cuffd_ref_fill_page(char *page, uint64_t seed, size_t page_size) {
  uint64_t *words = (uint64_t *)page;
  for (size_t i = 0; i < page_size / 8; i++) words[i] = seed + i;
}

static int move_range(int uffd, char *src, char *dst, size_t len) {
  struct cuffd_move arg = {.dst = (uint64_t)dst, .src = (uint64_t)src, .len = len, .mode = 0, .move = 0};
  if (cuffd_ioctl_move(uffd, &arg) < 0) return -errno;
  return 0;
}

int64_t cuffd_ref_move(int uffd, char *src, char *dst, size_t length, size_t batch) {
  int64_t start = cuffd_ref_now_ns();
  for (size_t off = 0; off < length; off += batch) {
    size_t n = length - off < batch ? length - off : batch;
    int rc = move_range(uffd, src + off, dst + off, n);
    if (rc < 0) return rc;
  }
  return cuffd_ref_now_ns() - start;
}

int64_t cuffd_ref_copy_dontneed(int uffd, char *src, char *dst, size_t length, size_t batch) {
  int64_t start = cuffd_ref_now_ns();
  for (size_t off = 0; off < length; off += batch) {
    size_t n = length - off < batch ? length - off : batch;
    struct cuffd_copy arg = {.dst = (uint64_t)(dst + off), .src = (uint64_t)(src + off), .len = n, .mode = 0, .copy = 0};
    if (cuffd_ioctl_copy(uffd, &arg) < 0) return -errno;
    if (madvise(src + off, n, MADV_DONTNEED) < 0) return -errno;
  }
  return cuffd_ref_now_ns() - start;
}

int64_t cuffd_ref_logical(int uffd, char *src, char *dst, size_t length, size_t batch) {
  long page = sysconf(_SC_PAGESIZE);
  int64_t start = cuffd_ref_now_ns();
  size_t pages = length / (size_t)page;
  uint64_t *entries = malloc(pages * 8);
  if (!entries) return -ENOMEM;
  int fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
  if (fd < 0) { free(entries); return -errno; }
  ssize_t got = pread(fd, entries, pages * 8, (off_t)((uintptr_t)dst / (size_t)page) * 8);
  close(fd);
  if (got != (ssize_t)(pages * 8)) { free(entries); return -EIO; }
  for (size_t i = 0; i < pages; i++) {
    if (entries[i] & (3ULL << 62)) { free(entries); return -EEXIST; }
  }
  free(entries);
  for (size_t off = 0; off < length;) {
    size_t to_boundary = HUGE_SIZE - ((uintptr_t)(src + off) % HUGE_SIZE);
    size_t n = length - off;
    if (n > batch) n = batch;
    if (n > to_boundary) n = to_boundary;
    int rc = move_range(uffd, src + off, dst + off, n);
    if (rc < 0) return rc;
    off += n;
  }
  return cuffd_ref_now_ns() - start;
}

int64_t cuffd_ref_fill_copy(int uffd, char *buffer, char *dst, size_t length) {
  size_t page = (size_t)sysconf(_SC_PAGESIZE);
  int64_t start = cuffd_ref_now_ns();
  for (size_t off = 0; off < length; off += page) {
    cuffd_ref_fill_page(buffer, off, page);
    struct cuffd_copy arg = {.dst = (uint64_t)(dst + off), .src = (uint64_t)buffer, .len = page, .mode = 0, .copy = 0};
    if (cuffd_ioctl_copy(uffd, &arg) < 0) return -errno;
  }
  return cuffd_ref_now_ns() - start;
}

int64_t cuffd_ref_fill_move(int uffd, char *src, char *dst, size_t length) {
  size_t page = (size_t)sysconf(_SC_PAGESIZE);
  int64_t start = cuffd_ref_now_ns();
  for (size_t off = 0; off < length; off += page) {
    cuffd_ref_fill_page(src + off, off, page);
    int rc = move_range(uffd, src + off, dst + off, page);
    if (rc < 0) return rc;
  }
  return cuffd_ref_now_ns() - start;
}
