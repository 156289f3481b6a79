// The working-set and restart test clients (see CUserfaultfdTestRestore.h). Only system calls
// after the fork: the parent is a multi-threaded test runner.
#include "CUserfaultfdTestRestore.h"
#include "CUserfaultfd.h"
#include "CUserfaultfdSocket.h"

#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <unistd.h>

#ifndef MAP_HUGE_2MB
#define MAP_HUGE_2MB (21 << 26)
#endif

enum {
  E_MAP = 10, E_UFFD = 11, E_API = 12, E_REGISTER = 13, E_CONNECT = 14, E_SEND = 15, E_SNAPSHOT = 16,
  E_CONTENT = 30, E_RELEASE = 31, E_NOT_ZERO = 32, E_MARKER = 33, E_SCRATCH = 34,
};

static size_t run_pages(int huge) { return huge ? 1 : 8; }

// The i-th run of the working set: runs are visited in the order (i * 5) mod slots, a
// permutation of the slots when their count is a power of two.
static size_t working_set_run(size_t i, size_t pages, int huge) {
  size_t slots = pages / run_pages(huge);
  return (i * 5) % slots;
}

static size_t working_set_runs(size_t pages, int huge) {
  size_t runs = pages / run_pages(huge) / 4;
  return runs > 0 ? runs : 1;
}

int cuffd_test_restore_in_working_set(size_t index, size_t pages, int huge) {
  size_t run = index / run_pages(huge);
  for (size_t i = 0; i < working_set_runs(pages, huge); i++) {
    if (working_set_run(i, pages, huge) == run) return 1;
  }
  return 0;
}

static void check_page(unsigned char *at, int snapshot, unsigned char *expected, size_t page, size_t index) {
  if (pread(snapshot, expected, page, (off_t)(index * page)) != (ssize_t)page) _exit(E_SNAPSHOT);
  if (memcmp(at, expected, page) != 0) _exit(E_CONTENT);
}

static void client(const char *socket_path, const char *snapshot_path, size_t size, int huge, int script,
                   volatile long *progress, int pause_us) {
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  size_t page = huge ? (2u << 20) : (size_t)sysconf(_SC_PAGESIZE);
  int flags = MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | (huge ? MAP_HUGETLB | MAP_HUGE_2MB : 0);
  unsigned char *guest = mmap(NULL, size, PROT_READ | PROT_WRITE, flags, -1, 0);
  if (guest == MAP_FAILED) _exit(E_MAP);
  int uffd = cuffd_userfaultfd(O_CLOEXEC | O_NONBLOCK);
  if (uffd < 0) _exit(E_UFFD);
  struct cuffd_api api = {.api = CUFFD_API,
                          .features = CUFFD_FEATURE_EVENT_REMOVE | (huge ? CUFFD_FEATURE_MISSING_HUGETLBFS : 0)};
  if (cuffd_ioctl_api(uffd, &api) < 0) _exit(E_API);
  struct cuffd_register reg = {.range = {.start = (unsigned long)guest, .len = size},
                               .mode = CUFFD_REGISTER_MODE_MISSING};
  if (cuffd_ioctl_register(uffd, &reg) < 0) _exit(E_REGISTER);
  int sock = -1;
  for (int attempt = 0; attempt < 500 && sock < 0; attempt++) {
    sock = cuffd_socket_connect(socket_path);
    if (sock < 0) usleep(10000);
  }
  if (sock < 0) _exit(E_CONNECT);
  char json[256];
  int length = snprintf(json, sizeof json,
                        "[{\"base_host_virt_addr\":%lu,\"size\":%zu,\"offset\":0,\"page_size\":%zu,\"page_size_kib\":%zu}]",
                        (unsigned long)guest, size, page, page / 1024);
  if (cuffd_socket_send(sock, json, (size_t)length, uffd) != length) _exit(E_SEND);
  int snapshot = open(snapshot_path, O_RDONLY | O_CLOEXEC);
  if (snapshot < 0) _exit(E_SNAPSHOT);
  unsigned char *expected = mmap(NULL, page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (expected == MAP_FAILED) _exit(E_SCRATCH);
  size_t pages = size / page;
  size_t run = run_pages(huge);

  if (script == CUFFD_TEST_RESTORE_WORKING_SET || script == CUFFD_TEST_RESTORE_RELEASE_THEN_WORKING_SET) {
    size_t runs = working_set_runs(pages, huge);
    size_t released = (size_t)-1;
    if (script == CUFFD_TEST_RESTORE_RELEASE_THEN_WORKING_SET) {
      if (!huge) {
        released = working_set_run(runs - 1, pages, huge);
        if (madvise(guest + released * run * page, run * page, MADV_DONTNEED) < 0) _exit(E_RELEASE);
      }
      usleep(200000);
    }
    for (size_t i = 0; i < runs; i++) {
      size_t slot = working_set_run(i, pages, huge);
      for (size_t k = 0; k < run; k++) {
        size_t index = slot * run + k;
        unsigned char *at = guest + index * page;
        if (slot == released) {
          for (size_t offset = 0; offset < page; offset += 512) {
            if (at[offset] != 0) _exit(E_NOT_ZERO);
          }
        } else {
          check_page(at, snapshot, expected, page, index);
        }
      }
    }
    _exit(0);
  }

  // CUFFD_TEST_RESTORE_SLOW_FULL: every page, a marker written into each after it is checked.
  size_t release_at = pages >= 64 ? pages - 32 : (size_t)-1;
  for (size_t index = 0; index < pages; index++) {
    unsigned char *at = guest + index * page;
    check_page(at, snapshot, expected, page, index);
    unsigned long marker = 0xC0FFEE0000000000ul ^ index;
    memcpy(at + page - sizeof marker, &marker, sizeof marker);
    if (progress) __atomic_store_n(progress, (long)(index + 1), __ATOMIC_RELEASE);
    if (pause_us > 0 && index % 16 == 15) usleep((useconds_t)pause_us);
  }
  if (!huge && release_at != (size_t)-1) {
    if (madvise(guest + release_at * page, 4 * page, MADV_DONTNEED) < 0) _exit(E_RELEASE);
    for (size_t offset = 0; offset < 4 * page; offset += 512) {
      if (guest[release_at * page + offset] != 0) _exit(E_NOT_ZERO);
    }
  }
  for (size_t index = 0; index < pages; index++) {
    if (!huge && release_at != (size_t)-1 && index >= release_at && index < release_at + 4) continue;
    unsigned char *at = guest + index * page;
    unsigned long marker;
    memcpy(&marker, at + page - sizeof marker, sizeof marker);
    if (marker != (0xC0FFEE0000000000ul ^ index)) _exit(E_MARKER);
    if (pread(snapshot, expected, page, (off_t)(index * page)) != (ssize_t)page) _exit(E_SNAPSHOT);
    if (memcmp(at, expected, page - sizeof marker) != 0) _exit(E_CONTENT);
  }
  _exit(0);
}

pid_t cuffd_test_restore_client(const char *socket_path, const char *snapshot_path, size_t size, int huge,
                                int script, volatile long *progress, int pause_us) {
  pid_t pid = fork();
  if (pid == 0) client(socket_path, snapshot_path, size, huge, script, progress, pause_us);
  return pid;
}

long cuffd_test_restore_progress(volatile long *counter) { return __atomic_load_n(counter, __ATOMIC_ACQUIRE); }
