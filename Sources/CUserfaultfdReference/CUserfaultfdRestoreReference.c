// C reference for `uffd bench restore`: the restoring client (a VMM's side of Firecracker's
// handshake) and the page server Firecracker's example handler is, one UFFDIO_COPY per 4 KiB
// fault. Written directly against the kernel, independent of the library it is measured against.
#include "CUserfaultfdReference.h"
#include "CUserfaultfd.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

static void client(const char *socket_path, size_t size, int pattern, int report_fd) {
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  struct cuffd_ref_restore_result result = {0, 0, 0, 0};
  size_t page = (size_t)sysconf(_SC_PAGESIZE);
  volatile unsigned char *guest = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  int uffd = cuffd_userfaultfd(O_CLOEXEC | O_NONBLOCK);
  struct cuffd_api api = {.api = CUFFD_API, .features = CUFFD_FEATURE_EVENT_REMOVE};
  struct cuffd_register reg = {.range = {.start = (uintptr_t)guest, .len = size}, .mode = CUFFD_REGISTER_MODE_MISSING};
  if (guest == MAP_FAILED) result.status = 1;
  else if (uffd < 0 || cuffd_ioctl_api(uffd, &api) < 0) result.status = 2;
  else if (cuffd_ioctl_register(uffd, &reg) < 0) result.status = 3;
  int sock = -1;
  for (int attempt = 0; result.status == 0 && attempt < 1000 && sock < 0; attempt++) {
    sock = cuffd_socket_connect(socket_path);
    if (sock < 0) usleep(5000);
  }
  if (result.status == 0 && sock < 0) result.status = 4;
  if (result.status == 0) {
    char json[256];
    int length = snprintf(json, sizeof json,
                          "[{\"base_host_virt_addr\":%lu,\"size\":%zu,\"offset\":0,\"page_size\":%zu,\"page_size_kib\":%zu}]",
                          (unsigned long)(uintptr_t)guest, size, page, page / 1024);
    int64_t start = cuffd_ref_now_ns();
    if (cuffd_socket_send(sock, json, (size_t)length, uffd) != length) result.status = 5;
    size_t pages = size / page;
    size_t count = pattern == CUFFD_REF_SEQUENTIAL ? pages : pages / 10;
    size_t run = 16, slots = pages / run;  // random-10pct: 64 KiB runs in random slots
    unsigned long sum = 0;
    for (size_t i = 0; result.status == 0 && i < count; i++) {
      // An odd multiplier walks a power-of-two count as a permutation: scattered, each once.
      size_t index = i;
      if (pattern == CUFFD_REF_SCATTERED_10PCT) index = (i * 0x9E3779B1u) % pages;
      if (pattern == CUFFD_REF_RANDOM_10PCT) index = ((i / run) * 0x9E3779B1u) % slots * run + i % run;
      sum += guest[index * page];
      if (i == 0) result.first_byte_ns = cuffd_ref_now_ns() - start;
    }
    result.complete_ns = cuffd_ref_now_ns() - start;
    result.pages_touched = (int64_t)count;
    (void)sum;
  }
  if (write(report_fd, &result, sizeof result) != (ssize_t)sizeof result) _exit(9);
  _exit(result.status == 0 ? 0 : 1);
}

pid_t cuffd_ref_restore_client(const char *socket_path, size_t size, int pattern, int report_fd) {
  pid_t pid = fork();
  if (pid == 0) client(socket_path, size, pattern, report_fd);
  return pid;
}

int cuffd_ref_restore_server(int listener, const char *snapshot, size_t snapshot_length, int64_t *latencies_ns,
                             size_t capacity, size_t *faults) {
  *faults = 0;
  int sock = cuffd_socket_accept(listener);
  if (sock < 0) return -errno;
  char json[1024];
  int uffd = -1;
  ssize_t got = cuffd_socket_receive(sock, json, sizeof json - 1, &uffd);
  if (got <= 0 || uffd < 0) {
    close(sock);
    return -EPROTO;
  }
  json[got] = 0;
  unsigned long base = 0, size = 0, offset = 0;
  const char *at = strstr(json, "\"base_host_virt_addr\":");
  const char *sz = strstr(json, "\"size\":");
  const char *off = strstr(json, "\"offset\":");
  if (!at || !sz || !off || sscanf(at + 22, "%lu", &base) != 1 || sscanf(sz + 7, "%lu", &size) != 1 ||
      sscanf(off + 9, "%lu", &offset) != 1 || offset + size > snapshot_length) {
    close(uffd);
    close(sock);
    return -EPROTO;
  }
  size_t page = (size_t)sysconf(_SC_PAGESIZE);
  unsigned char events[64 * CUFFD_MSG_SIZE];
  int result = 0;
  for (;;) {
    struct pollfd fds[2] = {{.fd = uffd, .events = POLLIN}, {.fd = sock, .events = POLLIN}};
    if (poll(fds, 2, -1) < 0) {
      if (errno == EINTR) continue;
      result = -errno;
      break;
    }
    if (fds[1].revents) {
      char byte;
      if (recv(sock, &byte, 1, MSG_PEEK | MSG_DONTWAIT) == 0) break;  // the client hung up
    }
    ssize_t n = read(uffd, events, sizeof events);
    if (n < 0) {
      if (errno == EAGAIN || errno == EINTR) continue;
      result = -errno;
      break;
    }
    int64_t read_at = cuffd_ref_now_ns();
    for (ssize_t i = 0; i + CUFFD_MSG_SIZE <= n; i += CUFFD_MSG_SIZE) {
      if (events[i + CUFFD_MSG_OFFSET_EVENT] != CUFFD_EVENT_PAGEFAULT) continue;
      uint64_t address;
      memcpy(&address, events + i + CUFFD_MSG_OFFSET_ARG + 8, sizeof address);
      uintptr_t target = (uintptr_t)address & ~(uintptr_t)(page - 1);
      struct cuffd_copy arg = {.dst = target, .src = (uintptr_t)snapshot + offset + (target - base), .len = page};
      while (cuffd_ioctl_copy(uffd, &arg) < 0 && errno == EAGAIN && arg.copy <= 0) arg.copy = 0;
      if (*faults < capacity) latencies_ns[*faults] = cuffd_ref_now_ns() - read_at;
      *faults += 1;
    }
  }
  close(uffd);
  close(sock);
  return result;
}

int cuffd_ref_wait(pid_t pid, int milliseconds) {
  for (int waited = 0; waited <= milliseconds; waited += 5) {
    int status;
    pid_t done = waitpid(pid, &status, WNOHANG);
    if (done == pid) return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    if (done < 0) return -1;
    usleep(5000);
  }
  kill(pid, SIGKILL);
  waitpid(pid, NULL, 0);
  return -1;
}
