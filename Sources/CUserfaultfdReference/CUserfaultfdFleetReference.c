// C side of `uffd bench fleet`: the clones (VMM-like clients with their own working sets) and the
// one-process-per-VM C handlers the daemon is measured against. Only system calls after fork.
#include "CUserfaultfdReference.h"
#include "CUserfaultfd.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

static void clone_main(const char *socket_path, size_t size, uint64_t seed, int64_t *latencies,
                       struct cuffd_ref_fleet_result *result) {
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  size_t page = (size_t)sysconf(_SC_PAGESIZE);
  volatile unsigned char *guest = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  int uffd = cuffd_userfaultfd(O_CLOEXEC | O_NONBLOCK);
  struct cuffd_api api = {.api = CUFFD_API, .features = CUFFD_FEATURE_EVENT_REMOVE};
  struct cuffd_register reg = {.range = {.start = (uintptr_t)guest, .len = size}, .mode = CUFFD_REGISTER_MODE_MISSING};
  int64_t status = 0;
  if (guest == MAP_FAILED) status = 1;
  else if (uffd < 0 || cuffd_ioctl_api(uffd, &api) < 0) status = 2;
  else if (cuffd_ioctl_register(uffd, &reg) < 0) status = 3;
  int sock = -1;
  for (int attempt = 0; status == 0 && attempt < 2000 && sock < 0; attempt++) {
    sock = cuffd_socket_connect(socket_path);
    if (sock < 0) usleep(5000);
  }
  if (status == 0 && sock < 0) status = 4;
  if (status == 0) {
    char json[256];
    int length = snprintf(json, sizeof json,
                          "[{\"base_host_virt_addr\":%lu,\"size\":%zu,\"offset\":0,\"page_size\":%zu,\"page_size_kib\":%zu}]",
                          (unsigned long)(uintptr_t)guest, size, page, page / 1024);
    result->start_ns = cuffd_ref_now_ns();
    if (cuffd_socket_send(sock, json, (size_t)length, uffd) != length) status = 5;
    size_t pages = size / page, run = 16, slots = pages / run, count = pages / 10;
    // Slots walked by an odd multiplier (a permutation of a power-of-two count), shifted by the seed.
    uint64_t shift = seed * 0x632BE59BD9B4E019ull;
    unsigned long sum = 0;
    for (size_t i = 0; status == 0 && i < count; i++) {
      size_t slot = (size_t)(((uint64_t)(i / run) * 0x9E3779B1u + shift) % slots);
      size_t index = slot * run + i % run;
      int64_t before = cuffd_ref_now_ns();
      sum += guest[index * page];
      latencies[i] = cuffd_ref_now_ns() - before;
    }
    result->end_ns = cuffd_ref_now_ns();
    result->pages_touched = (int64_t)count;
    (void)sum;
  }
  result->status = status;
  _exit(status == 0 ? 0 : 1);
}

pid_t cuffd_ref_fleet_client(const char *socket_path, size_t size, uint64_t seed, int64_t *latencies_ns,
                             struct cuffd_ref_fleet_result *result) {
  pid_t pid = fork();
  if (pid == 0) clone_main(socket_path, size, seed, latencies_ns, result);
  return pid;
}

/// Resident bytes of this process now (/proc/self/statm), all of them or (`anonymous`) those not
/// backed by a file; 0 when unknown.
static int64_t resident_bytes(int anonymous) {
  char text[128];
  int fd = open("/proc/self/statm", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return 0;
  ssize_t got = read(fd, text, sizeof text - 1);
  close(fd);
  if (got <= 0) return 0;
  text[got] = 0;
  unsigned long size = 0, resident = 0, shared = 0;
  if (sscanf(text, "%lu %lu %lu", &size, &resident, &shared) != 3) return 0;
  return (int64_t)(anonymous ? resident - shared : resident) * sysconf(_SC_PAGESIZE);
}

pid_t cuffd_ref_fleet_handler(const char *socket_path, const char *snapshot_path, int64_t *rss_bytes) {
  // Bound before the fork, so a clone connecting right away finds it listening.
  unlink(socket_path);
  int listener = cuffd_socket_listen(socket_path, 1);
  if (listener < 0) return -1;
  pid_t pid = fork();
  if (pid != 0) {
    close(listener);
    return pid;
  }
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  // The same priority as the daemon's serving loops (nice -10 where permitted): a fair comparison.
  setpriority(PRIO_PROCESS, 0, -10);
  // What the fork inherited (the benchmark's own memory) is not the handler's: count what it adds.
  int64_t inherited = resident_bytes(0), inherited_anonymous = resident_bytes(1);
  int fd = open(snapshot_path, O_RDONLY | O_CLOEXEC);
  struct stat info;
  if (fd < 0 || fstat(fd, &info) < 0) _exit(2);
  void *snapshot = mmap(NULL, (size_t)info.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
  if (snapshot == MAP_FAILED) _exit(3);
  size_t faults = 0;
  int result = cuffd_ref_restore_server(listener, snapshot, (size_t)info.st_size, NULL, 0, &faults);
  int64_t added = resident_bytes(0) - inherited, added_anonymous = resident_bytes(1) - inherited_anonymous;
  rss_bytes[0] = added > 0 ? added : 0;
  rss_bytes[1] = added_anonymous > 0 ? added_anonymous : 0;
  _exit(result == 0 ? 0 : 1);
}
