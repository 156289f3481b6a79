// The VMM-like test client (see CUserfaultfdTestVMM.h). Only system calls after the fork: the
// parent is a multi-threaded test runner.
#include "CUserfaultfdTestVMM.h"
#include "CUserfaultfd.h"

#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef MAP_HUGE_2MB
#define MAP_HUGE_2MB (21 << 26)
#endif

// Exit codes: which step failed.
enum {
  E_MAP = 10, E_UFFD = 11, E_API = 12, E_REGISTER = 13, E_CONNECT = 14, E_SEND = 15, E_SNAPSHOT = 16,
  E_USER_READ = 20, E_KERNEL_READ = 21, E_PIPE = 22, E_RELEASE = 23, E_NOT_ZERO = 24, E_SCRATCH = 25,
};

static int compare_page(const unsigned char *guest, const unsigned char *expected, size_t length) {
  return memcmp(guest, expected, length) == 0;
}

static void client(const char *socket_path, const char *snapshot_path, size_t size, int huge, int script) {
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  size_t page = huge ? (2u << 20) : (size_t)sysconf(_SC_PAGESIZE);
  int flags = MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | (huge ? MAP_HUGETLB | MAP_HUGE_2MB : 0);
  unsigned char *guest = mmap(NULL, size, PROT_READ | PROT_WRITE, flags, -1, 0);
  if (guest == MAP_FAILED) _exit(E_MAP);
  int uffd = cuffd_userfaultfd(O_CLOEXEC | O_NONBLOCK);  // no UFFD_USER_MODE_ONLY: KVM-like kernel faults
  if (uffd < 0) _exit(E_UFFD);
  struct cuffd_api api = {.api = CUFFD_API,
                          .features = CUFFD_FEATURE_EVENT_REMOVE | (huge ? CUFFD_FEATURE_MISSING_HUGETLBFS : 0)};
  if (cuffd_ioctl_api(uffd, &api) < 0) _exit(E_API);
  struct cuffd_register reg = {.range = {.start = (unsigned long)guest, .len = size},
                               .mode = CUFFD_REGISTER_MODE_MISSING};
  if (cuffd_ioctl_register(uffd, &reg) < 0) _exit(E_REGISTER);
  int sock = -1;
  for (int attempt = 0; attempt < 500 && sock < 0; attempt++) {  // up to 5 s for the server to listen
    sock = cuffd_socket_connect(socket_path);
    if (sock < 0) usleep(10000);
  }
  if (sock < 0) _exit(E_CONNECT);
  char json[256];
  int length = snprintf(json, sizeof json,
                        "[{\"base_host_virt_addr\":%lu,\"size\":%zu,\"offset\":0,\"page_size\":%zu,\"page_size_kib\":%zu}]",
                        (unsigned long)guest, size, page, page / 1024);
  if (cuffd_socket_send(sock, json, (size_t)length, uffd) != length) _exit(E_SEND);
  // The VMM keeps the socket (and its userfaultfd) open while it runs.
  int snapshot = open(snapshot_path, O_RDONLY | O_CLOEXEC);
  if (snapshot < 0) _exit(E_SNAPSHOT);
  unsigned char *expected = mmap(NULL, page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (expected == MAP_FAILED) _exit(E_SCRATCH);
  size_t pages = size / page;
  if (script == CUFFD_TEST_VMM_BALLOON) {
    size_t block = 16;  // pages: 64 KiB
    for (size_t first = 0; first + block <= pages; first += 4 * block) {
      if (madvise(guest + first * page, block * page, MADV_DONTNEED) < 0) _exit(E_RELEASE);
      usleep(100);
    }
    for (size_t index = 0; index < pages; index++) {
      unsigned char *at = guest + index * page;
      if (index / block % 4 == 0) {
        for (size_t offset = 0; offset < page; offset += 8)
          if (*(volatile unsigned long *)(at + offset) != 0) _exit(E_NOT_ZERO);
      } else {
        if (pread(snapshot, expected, page, (off_t)(index * page)) != (ssize_t)page) _exit(E_SNAPSHOT);
        if (!compare_page(at, expected, page)) _exit(E_USER_READ);
      }
    }
    _exit(0);
  }
  size_t checked = script == CUFFD_TEST_VMM_DIE ? (pages < 4 ? pages : 4) : pages;
  int pipes[2];
  if (pipe(pipes) < 0) _exit(E_PIPE);
  size_t chunk = 4096;  // write(2) a page in pipe-sized pieces
  for (size_t index = 0; index < checked; index++) {
    if (pread(snapshot, expected, page, (off_t)(index * page)) != (ssize_t)page) _exit(E_SNAPSHOT);
    unsigned char *at = guest + index * page;
    if (index < pages / 2 || script == CUFFD_TEST_VMM_DIE) {
      if (!compare_page(at, expected, page)) _exit(E_USER_READ);  // user-mode faults
    } else {
      // Kernel-mode faults: the kernel reads guest memory on the process's behalf.
      for (size_t offset = 0; offset < page; offset += chunk) {
        unsigned char back[4096];
        if (write(pipes[1], at + offset, chunk) != (ssize_t)chunk) _exit(E_KERNEL_READ);
        if (read(pipes[0], back, chunk) != (ssize_t)chunk) _exit(E_PIPE);
        if (memcmp(back, expected + offset, chunk) != 0) _exit(E_KERNEL_READ);
      }
    }
  }
  if (script == CUFFD_TEST_VMM_DIE) {
    raise(SIGKILL);
    _exit(99);
  }
  // A balloon: release pages, which must read zero afterwards (not stale snapshot data).
  // (Firecracker does not combine a balloon with hugetlbfs memory; MADV_DONTNEED on it needs 5.18.)
  size_t released = huge ? 0 : (pages >= 8 ? 4 : (pages > 1 ? 1 : 0));
  if (released > 0) {
    unsigned char *first = guest + (pages / 2 - released / 2) * page;
    if (madvise(first, released * page, MADV_DONTNEED) < 0) _exit(E_RELEASE);
    for (size_t offset = 0; offset < released * page; offset += 512) {
      if (first[offset] != 0) _exit(E_NOT_ZERO);
    }
  }
  _exit(0);
}

pid_t cuffd_test_vmm_client(const char *socket_path, const char *snapshot_path, size_t size, int huge,
                            int script) {
  pid_t pid = fork();
  if (pid == 0) {
    // A poisoned page (a pager's failure policy) must end the client by SIGBUS, quietly: not
    // through the handler the test runner's backtracer installed and the fork inherited.
    signal(SIGBUS, SIG_DFL);
    client(socket_path, snapshot_path, size, huge, script);
  }
  return pid;
}

int cuffd_test_wait(pid_t pid, int milliseconds) {
  for (int waited = 0; waited <= milliseconds; waited += 10) {
    int status;
    pid_t done = waitpid(pid, &status, WNOHANG);
    if (done == pid) return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    if (done < 0) return -1;
    usleep(10000);
  }
  kill(pid, SIGKILL);
  waitpid(pid, NULL, 0);
  return -1;
}
