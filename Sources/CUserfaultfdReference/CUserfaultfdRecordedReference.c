// The working-set clones of `uffd bench restore`'s recorded and restart rows (see the header).
#include "CUserfaultfdReference.h"
#include "CUserfaultfd.h"

#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <unistd.h>

// Affine maps with an odd multiplier permute a power-of-two count.
static size_t permute(size_t i, size_t count, uint64_t seed) {
  return (size_t)((i * 0x9E3779B1u + seed * 0x85EBCA6Bu) % count);
}

size_t cuffd_ref_ws_page(size_t i, size_t pages, int pattern, uint64_t seed, size_t *count) {
  size_t run = 16, slots = pages / run;
  if (pattern == CUFFD_REF_WS_RANDOM_10PCT) {
    *count = pages / 10;
    return permute(i / run, slots, seed) * run + i % run;
  }
  // Boot: 4 sequential runs of pages/80 each, at seed-placed quarters, then a random tail.
  size_t sequential = pages / 80, head = 4 * sequential, tail = pages / 20;
  *count = head + tail;
  if (i < head) {
    size_t quarter = pages / 4, which = i / sequential;
    size_t start = which * quarter + (size_t)((seed * 0x9E37u + which * 0x7F4Au) % (quarter - sequential));
    return start + i % sequential;
  }
  size_t j = i - head;
  return permute(j / run, slots, seed ^ 0x5bd1e995u) * run + j % run;
}

static void client(const char *socket_path, size_t size, int pattern, uint64_t seed, int markers,
                   struct cuffd_ref_ws_result *result) {
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  size_t page = (size_t)sysconf(_SC_PAGESIZE);
  volatile unsigned char *guest = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  int uffd = cuffd_userfaultfd(O_CLOEXEC | O_NONBLOCK);
  struct cuffd_api api = {.api = CUFFD_API, .features = CUFFD_FEATURE_EVENT_REMOVE};
  struct cuffd_register reg = {.range = {.start = (uintptr_t)guest, .len = size}, .mode = CUFFD_REGISTER_MODE_MISSING};
  if (guest == MAP_FAILED) result->status = 1;
  else if (uffd < 0 || cuffd_ioctl_api(uffd, &api) < 0) result->status = 2;
  else if (cuffd_ioctl_register(uffd, &reg) < 0) result->status = 3;
  int sock = -1;
  for (int attempt = 0; result->status == 0 && attempt < 1000 && sock < 0; attempt++) {
    sock = cuffd_socket_connect(socket_path);
    if (sock < 0) usleep(5000);
  }
  if (result->status == 0 && sock < 0) result->status = 4;
  if (result->status == 0) {
    char json[256];
    int length = snprintf(json, sizeof json,
                          "[{\"base_host_virt_addr\":%lu,\"size\":%zu,\"offset\":0,\"page_size\":%zu,\"page_size_kib\":%zu}]",
                          (unsigned long)(uintptr_t)guest, size, page, page / 1024);
    int64_t start = cuffd_ref_now_ns();
    if (cuffd_socket_send(sock, json, (size_t)length, uffd) != length) result->status = 5;
    size_t pages = size / page, count = 0;
    cuffd_ref_ws_page(0, pages, pattern, seed, &count);
    unsigned long sum = 0;
    for (size_t i = 0; result->status == 0 && i < count; i++) {
      size_t index = cuffd_ref_ws_page(i, pages, pattern, seed, &count);
      int64_t before = cuffd_ref_now_ns();
      sum += guest[index * page];
      int64_t after = cuffd_ref_now_ns();
      if (after - before >= 50000000) result->stalls += 1;
      if (markers) *(volatile uint64_t *)(guest + index * page + page - 8) = 0xC0FFEE0000000000ull ^ index;
      if (i == 0) result->first_byte_ns = after - start;
      __atomic_store_n(&result->progress, (int64_t)(i + 1), __ATOMIC_RELEASE);
    }
    result->done_at_ns = cuffd_ref_now_ns();
    result->complete_ns = result->done_at_ns - start;
    result->pages_touched = (int64_t)count;
    if (markers) {
      for (size_t i = 0; result->status == 0 && i < count; i++) {
        size_t index = cuffd_ref_ws_page(i, pages, pattern, seed, &count);
        if (*(volatile uint64_t *)(guest + index * page + page - 8) != (0xC0FFEE0000000000ull ^ index)) result->copied_twice += 1;
      }
    }
    (void)sum;
  }
  _exit(result->status == 0 ? 0 : 1);
}

pid_t cuffd_ref_ws_client(const char *socket_path, size_t size, int pattern, uint64_t seed, int markers,
                          struct cuffd_ref_ws_result *result) {
  memset(result, 0, sizeof *result);
  pid_t pid = fork();
  if (pid == 0) client(socket_path, size, pattern, seed, markers, result);
  return pid;
}

int64_t cuffd_ref_ws_progress(int64_t *counter) { return __atomic_load_n(counter, __ATOMIC_ACQUIRE); }
