// C reference for `uffd bench restore`: the restoring client (a VMM's side of Firecracker's
// handshake) and the page server Firecracker's example handler is, one UFFDIO_COPY per 4 KiB
// fault. Written directly against the kernel, independent of the library it is measured against.
#include "CUserfaultfdReference.h"
#include "CUserfaultfd.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
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
  int huge = pattern == CUFFD_REF_SEQUENTIAL_HUGE;
  size_t region_page = huge ? (size_t)2 << 20 : page;
  volatile unsigned char *guest = mmap(NULL, size, PROT_READ | PROT_WRITE,
                                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | (huge ? MAP_HUGETLB | (21 << 26) : 0), -1, 0);
  int uffd = cuffd_userfaultfd(O_CLOEXEC | O_NONBLOCK);
  struct cuffd_api api = {.api = CUFFD_API,
                          .features = CUFFD_FEATURE_EVENT_REMOVE | (huge ? CUFFD_FEATURE_MISSING_HUGETLBFS : 0)};
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
                          (unsigned long)(uintptr_t)guest, size, region_page, region_page / 1024);
    int64_t start = cuffd_ref_now_ns();
    if (cuffd_socket_send(sock, json, (size_t)length, uffd) != length) result.status = 5;
    size_t pages = size / page;
    size_t count = pattern == CUFFD_REF_SEQUENTIAL || huge ? pages : pages / 10;
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

struct fault_all_part {
  int uffd;
  uintptr_t dst, src;
  size_t len, page;
  int error;
};

// One part of the whole-region copy: UFFDIO_COPY until every byte is in (a partial copy or
// EAGAIN continues where it stopped; EEXIST skips the page a fault filled meanwhile).
static void *fault_all_copy(void *argument) {
  struct fault_all_part *part = argument;
  size_t page = part->page;
  size_t done = 0;
  while (done < part->len) {
    struct cuffd_copy arg = {.dst = part->dst + done, .src = part->src + done, .len = part->len - done};
    if (cuffd_ioctl_copy(part->uffd, &arg) == 0) break;
    if (arg.copy > 0) done += (size_t)arg.copy;
    else if (errno == EEXIST) done += page;
    else if (errno != EAGAIN) {
      part->error = errno;
      break;
    }
  }
  return NULL;
}

int cuffd_ref_restore_server_fault_all(int listener, const char *snapshot, size_t snapshot_length, int threads,
                                       size_t *faults) {
  *faults = 0;
  if (threads < 1 || threads > 8) return -EINVAL;
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
  const char *ps = strstr(json, "\"page_size\":");
  unsigned long region_page = 0;
  if (ps && sscanf(ps + 12, "%lu", &region_page) == 1 && region_page > page) page = region_page;
  unsigned char events[64 * CUFFD_MSG_SIZE];
  int result = 0, copied = 0;
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
    for (ssize_t i = 0; i + CUFFD_MSG_SIZE <= n; i += CUFFD_MSG_SIZE) {
      if (events[i + CUFFD_MSG_OFFSET_EVENT] != CUFFD_EVENT_PAGEFAULT) continue;
      *faults += 1;
      if (!copied) {
        copied = 1;
        // Parts in whole pages; the last takes the remainder.
        size_t share = size / (size_t)threads / page * page;
        struct fault_all_part parts[8];
        pthread_t workers[8];
        int started = 0;
        for (int t = 0; t < threads; t++) {
          size_t from = (size_t)t * share;
          parts[t] = (struct fault_all_part){uffd, base + from, (uintptr_t)snapshot + offset + from,
                                             t == threads - 1 ? size - from : share, page, 0};
        }
        for (int t = 1; t < threads; t++)
          if (pthread_create(&workers[t], NULL, fault_all_copy, &parts[t]) == 0) started |= 1 << t;
          else fault_all_copy(&parts[t]);
        fault_all_copy(&parts[0]);
        for (int t = 1; t < threads; t++)
          if (started & (1 << t)) pthread_join(workers[t], NULL);
        for (int t = 0; t < threads; t++)
          if (parts[t].error) result = -parts[t].error;
      }
      uint64_t address;
      memcpy(&address, events + i + CUFFD_MSG_OFFSET_ARG + 8, sizeof address);
      struct cuffd_range range = {.start = (uintptr_t)address & ~(uintptr_t)(page - 1), .len = page};
      (void)cuffd_ioctl_wake(uffd, &range);
    }
    if (result != 0) break;
  }
  close(uffd);
  close(sock);
  return result;
}

struct ceiling_part {
  int uffd;
  uintptr_t dst, src;
  size_t len, batch;
  int error;
};

static void *ceiling_copy(void *argument) {
  struct ceiling_part *part = argument;
  for (size_t done = 0; done < part->len && !part->error;) {
    size_t n = part->len - done < part->batch ? part->len - done : part->batch;
    struct cuffd_copy arg = {.dst = part->dst + done, .src = part->src + done, .len = n, .mode = CUFFD_COPY_MODE_DONTWAKE};
    if (cuffd_ioctl_copy(part->uffd, &arg) == 0) done += n;
    else if (arg.copy > 0) done += (size_t)arg.copy;
    else if (errno != EAGAIN) part->error = errno;
  }
  return NULL;
}

int64_t cuffd_ref_copy_ceiling(const char *source, size_t length, size_t batch, int threads) {
  size_t page = (size_t)sysconf(_SC_PAGESIZE);
  if (threads < 1 || threads > 8 || batch < page || length < page * (size_t)threads) return -EINVAL;
  char *memory = mmap(NULL, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (memory == MAP_FAILED) return -errno;
  int uffd = cuffd_userfaultfd(O_CLOEXEC | O_NONBLOCK);
  struct cuffd_api api = {.api = CUFFD_API};
  struct cuffd_register reg = {.range = {.start = (uintptr_t)memory, .len = length}, .mode = CUFFD_REGISTER_MODE_MISSING};
  if (uffd < 0 || cuffd_ioctl_api(uffd, &api) < 0 || cuffd_ioctl_register(uffd, &reg) < 0) {
    int error = errno;
    if (uffd >= 0) close(uffd);
    munmap(memory, length);
    return -error;
  }
  size_t share = length / (size_t)threads / page * page;
  struct ceiling_part parts[8];
  pthread_t workers[8];
  for (int t = 0; t < threads; t++) {
    size_t from = (size_t)t * share;
    parts[t] = (struct ceiling_part){uffd, (uintptr_t)memory + from, (uintptr_t)source + from,
                                     t == threads - 1 ? length - from : share, batch, 0};
  }
  int started = 0;
  int64_t start = cuffd_ref_now_ns();
  for (int t = 1; t < threads; t++)
    if (pthread_create(&workers[t], NULL, ceiling_copy, &parts[t]) == 0) started |= 1 << t;
    else ceiling_copy(&parts[t]);
  ceiling_copy(&parts[0]);
  for (int t = 1; t < threads; t++)
    if (started & (1 << t)) pthread_join(workers[t], NULL);
  int64_t elapsed = cuffd_ref_now_ns() - start;
  int error = 0;
  for (int t = 0; t < threads; t++)
    if (parts[t].error) error = parts[t].error;
  if (!error && memcmp(memory + length / 2, source + length / 2, page) != 0) error = EIO;
  close(uffd);
  munmap(memory, length);
  return error ? -error : elapsed;
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
