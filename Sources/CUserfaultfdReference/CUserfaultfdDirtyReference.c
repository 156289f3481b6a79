// What `uffd bench dirty` compares write protection against: the fork() copy-on-write snapshot
// (Redis BGSAVE's way; the child runs only async-signal-safe calls: pwrite, write, read, _exit, as
// the parent is multi-threaded), and the package's copy-before-write fault path done in plain C.
#include "CUserfaultfdReference.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

int cuffd_ref_fork_snapshot(const char *base, size_t length, int fd, int *done_fd, int *release_fd) {
  int done[2], release[2];
  if (pipe(done) != 0) return -errno;
  if (pipe(release) != 0) {
    int error = errno;
    close(done[0]);
    close(done[1]);
    return -error;
  }
  pid_t pid = fork();
  if (pid < 0) {
    int error = errno;
    close(done[0]); close(done[1]); close(release[0]); close(release[1]);
    return -error;
  }
  if (pid == 0) {
    close(done[0]);
    close(release[1]);
    size_t offset = 0;
    int status = 0;
    while (offset < length) {
      size_t chunk = length - offset < (1 << 20) ? length - offset : (1 << 20);
      ssize_t n = pwrite(fd, base + offset, chunk, (off_t)offset);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) { status = 1; break; }
      offset += (size_t)n;
    }
    char byte = (char)status;
    (void)!write(done[1], &byte, 1);
    (void)!read(release[0], &byte, 1);  // returns 0 once the parent closes its end
    _exit(status);
  }
  close(done[1]);
  close(release[0]);
  *done_fd = done[0];
  *release_fd = release[1];
  return pid;
}

// MARK: - Copy-before-write fault cost, the package's resolvers done in plain C


#ifndef UFFD_FEATURE_WP_UNPOPULATED
#define UFFD_FEATURE_WP_UNPOPULATED (1 << 13)
#endif

enum { REF_PENDING = 0, REF_COPYING = 1, REF_COPIED = 2 };
enum { REF_STAGING_SLOTS = 256, REF_CHUNK = 64 };

// One snapshot's state; one at a time (the SIGBUS handler finds it through `current`).
static struct ref_wp {
  int uffd, fd;
  uintptr_t base;
  size_t length, page;
  _Atomic uint8_t *states;
  uint8_t *staging;
  _Atomic uint32_t slot_state[REF_STAGING_SLOTS];
  size_t slot_page[REF_STAGING_SLOTS];
  _Atomic int stop;
} ref;

static void ref_unprotect(uintptr_t start, size_t length) {
  struct uffdio_writeprotect arg = {.range = {.start = start, .len = length}, .mode = 0};
  for (int attempt = 0; attempt < 10000 && ioctl(ref.uffd, UFFDIO_WRITEPROTECT, &arg) != 0; attempt++) {
    if (errno != EAGAIN && errno != EINTR) return;
  }
}

static void ref_save(size_t index) {
  uint8_t expected = REF_PENDING;
  if (!atomic_compare_exchange_strong(&ref.states[index], &expected, REF_COPYING)) {
    while (atomic_load(&ref.states[index]) != REF_COPIED) sched_yield();
    return;
  }
  const uint8_t *page = (const uint8_t *)(ref.base + index * ref.page);
  for (size_t k = 0; k < REF_STAGING_SLOTS; k++) {
    uint32_t free_slot = 0;
    if (atomic_compare_exchange_strong(&ref.slot_state[k], &free_slot, 1)) {
      memcpy(ref.staging + k * ref.page, page, ref.page);
      ref.slot_page[k] = index;
      atomic_store(&ref.slot_state[k], 2);
      atomic_store(&ref.states[index], REF_COPIED);
      return;
    }
  }
  (void)!pwrite(ref.fd, page, ref.page, (off_t)(index * ref.page));
  atomic_store(&ref.states[index], REF_COPIED);
}

static void ref_resolve(uintptr_t address) {
  uintptr_t page = address & ~(uintptr_t)(ref.page - 1);
  ref_save((page - ref.base) / ref.page);
  ref_unprotect(page, ref.page);
}

static void ref_sigbus(int signo, siginfo_t *info, void *context) {
  (void)signo;
  (void)context;
  int saved = errno;
  ref_resolve((uintptr_t)info->si_addr);
  errno = saved;
}

static void *ref_handler(void *unused) {
  (void)unused;
  struct uffd_msg msg;
  while (!atomic_load(&ref.stop)) {
    struct pollfd p = {.fd = ref.uffd, .events = POLLIN};
    if (poll(&p, 1, 20) <= 0) continue;
    if (read(ref.uffd, &msg, sizeof msg) != sizeof msg) continue;
    if (msg.event == UFFD_EVENT_PAGEFAULT) ref_resolve((uintptr_t)msg.arg.pagefault.address);
  }
  return NULL;
}

static void ref_drain(void) {
  for (size_t k = 0; k < REF_STAGING_SLOTS; k++) {
    if (atomic_load(&ref.slot_state[k]) != 2) continue;
    (void)!pwrite(ref.fd, ref.staging + k * ref.page, ref.page, (off_t)(ref.slot_page[k] * ref.page));
    atomic_store(&ref.slot_state[k], 0);
  }
}

static void *ref_copier(void *unused) {
  (void)unused;
  size_t pages = ref.length / ref.page;
  for (size_t first = 0; first < pages && !atomic_load(&ref.stop); first += REF_CHUNK) {
    size_t count = pages - first < REF_CHUNK ? pages - first : REF_CHUNK;
    size_t k = 0;
    while (k < count) {
      size_t run = 0;
      uint8_t expected = REF_PENDING;
      while (k + run < count && atomic_compare_exchange_strong(&ref.states[first + k + run], &expected, REF_COPYING)) {
        run++;
        expected = REF_PENDING;
      }
      if (run > 0) {
        (void)!pwrite(ref.fd, (const void *)(ref.base + (first + k) * ref.page), run * ref.page,
                      (off_t)((first + k) * ref.page));
        for (size_t j = 0; j < run; j++) atomic_store(&ref.states[first + k + j], REF_COPIED);
        k += run;
      } else {
        while (atomic_load(&ref.states[first + k]) != REF_COPIED) sched_yield();
        k++;
      }
    }
    ref_unprotect(ref.base + first * ref.page, count * ref.page);
    ref_drain();
  }
  ref_drain();
  return NULL;
}

double cuffd_ref_wp_fault_cost(char *base, size_t length, int fd, int in_thread, const size_t *pages, size_t count,
                               int64_t *times) {
  memset(&ref, 0, sizeof ref);
  ref.base = (uintptr_t)base;
  ref.length = length;
  ref.page = (size_t)sysconf(_SC_PAGESIZE);
  ref.fd = fd;
  ref.states = calloc(length / ref.page, 1);
  void *staging = mmap(NULL, REF_STAGING_SLOTS * ref.page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  ref.uffd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
  if (ref.states == NULL || staging == MAP_FAILED || ref.uffd < 0) {
    int error = errno;
    free((void *)ref.states);
    if (staging != MAP_FAILED) munmap(staging, REF_STAGING_SLOTS * ref.page);
    if (ref.uffd >= 0) close(ref.uffd);
    return -(double)error;
  }
  ref.staging = staging;
  struct uffdio_api api = {.api = UFFD_API,
                           .features = UFFD_FEATURE_PAGEFAULT_FLAG_WP | (in_thread ? UFFD_FEATURE_SIGBUS : 0)};
  struct uffdio_api probe = {.api = UFFD_API};
  int probe_fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC);
  if (probe_fd >= 0 && ioctl(probe_fd, UFFDIO_API, &probe) == 0 && (probe.features & UFFD_FEATURE_WP_UNPOPULATED))
    api.features |= UFFD_FEATURE_WP_UNPOPULATED;
  if (probe_fd >= 0) close(probe_fd);
  struct uffdio_register reg = {.range = {.start = ref.base, .len = length}, .mode = UFFDIO_REGISTER_MODE_WP};
  struct sigaction action, previous;
  memset(&action, 0, sizeof action);
  action.sa_sigaction = ref_sigbus;
  action.sa_flags = SA_SIGINFO | SA_NODEFER;
  sigemptyset(&action.sa_mask);
  double result = -1;
  pthread_t handler, copier;
  int handler_started = 0, copier_started = 0, registered = 0;
  if (ioctl(ref.uffd, UFFDIO_API, &api) != 0 || ioctl(ref.uffd, UFFDIO_REGISTER, &reg) != 0) {
    result = -(double)errno;
    goto out;
  }
  registered = 1;
  if (in_thread) sigaction(SIGBUS, &action, &previous);
  handler_started = !in_thread && pthread_create(&handler, NULL, ref_handler, NULL) == 0;
  struct uffdio_writeprotect cut = {.range = {.start = ref.base, .len = length}, .mode = UFFDIO_WRITEPROTECT_MODE_WP};
  if (ioctl(ref.uffd, UFFDIO_WRITEPROTECT, &cut) != 0) {
    result = -(double)errno;
    goto out;
  }
  copier_started = pthread_create(&copier, NULL, ref_copier, NULL) == 0;
  int64_t total = 0;
  for (size_t i = 0; i < count; i++) {
    volatile uint64_t *first = (volatile uint64_t *)(base + pages[i] * ref.page);
    volatile uint64_t *last = (volatile uint64_t *)(base + (pages[i] + 1) * ref.page - 8);
    int64_t began = cuffd_ref_now_ns();
    *first = i;
    *last = i;
    int64_t took = cuffd_ref_now_ns() - began;
    if (times != NULL) times[i] = took;
    total += took;
  }
  result = count > 0 ? (double)total / (double)count : 0;
out:
  if (copier_started) pthread_join(copier, NULL);  // it finishes the copy: every page released
  atomic_store(&ref.stop, 1);
  if (registered) {
    ref_unprotect(ref.base, length);
    struct uffdio_range range = {.start = ref.base, .len = length};
    ioctl(ref.uffd, UFFDIO_UNREGISTER, &range);
  }
  if (handler_started) pthread_join(handler, NULL);
  if (in_thread && registered) sigaction(SIGBUS, &previous, NULL);
  close(ref.uffd);
  munmap(staging, REF_STAGING_SLOTS * ref.page);
  free((void *)ref.states);
  return result;
}
