// C reference for `uffd bench faults`: the same fault round trip the Swift library serves, written
// directly against the kernel.
#include "CUserfaultfdReference.h"
#include "CUserfaultfd.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <string.h>
#include <unistd.h>

struct handler_state {
  int uffd;
  int use_move;
  int busy_poll;
  int stop_pipe[2];
  uintptr_t region;
  uintptr_t source;
  size_t page;
  _Atomic int stopping;
};

static int resolve(struct handler_state *s, uintptr_t address) {
  uintptr_t page = address & ~(s->page - 1);
  uintptr_t from = s->source + (page - s->region);
  if (s->use_move) {
    struct cuffd_move arg = {.dst = page, .src = from, .len = s->page, .mode = 0, .move = 0};
    if (cuffd_ioctl_move(s->uffd, &arg) == 0 || errno == EEXIST || errno == ENOENT) return 0;
  } else {
    struct cuffd_copy arg = {.dst = page, .src = from, .len = s->page, .mode = 0, .copy = 0};
    if (cuffd_ioctl_copy(s->uffd, &arg) == 0 || errno == EEXIST) return 0;
  }
  return -1;
}

static void *handler_main(void *context) {
  struct handler_state *s = context;
  unsigned char buffer[64 * CUFFD_MSG_SIZE];
  struct pollfd fds[2] = {{.fd = s->uffd, .events = POLLIN}, {.fd = s->stop_pipe[0], .events = POLLIN}};
  while (!atomic_load_explicit(&s->stopping, memory_order_acquire)) {
    if (!s->busy_poll) {
      fds[0].revents = fds[1].revents = 0;
      poll(fds, 2, -1);
      if (fds[1].revents) break;
    }
    ssize_t n = read(s->uffd, buffer, sizeof buffer);
    if (n <= 0) continue;
    for (ssize_t off = 0; off + CUFFD_MSG_SIZE <= n; off += CUFFD_MSG_SIZE) {
      if (buffer[off] != CUFFD_EVENT_PAGEFAULT) continue;
      uint64_t address;
      memcpy(&address, buffer + off + 16, sizeof address);
      resolve(s, (uintptr_t)address);
    }
  }
  return NULL;
}

static struct handler_state sigbus_state;

static void sigbus_handler(int signo, siginfo_t *info, void *ucontext) {
  (void)signo;
  (void)ucontext;
  int saved = errno;
  resolve(&sigbus_state, (uintptr_t)info->si_addr);
  errno = saved;
}

static void touch_all(char *region, size_t pages, size_t page, int64_t *latencies_ns) {
  for (size_t i = 0; i < pages; i++) {
    int64_t start = cuffd_ref_now_ns();
    (void)*(volatile char *)(region + i * page);
    latencies_ns[i] = cuffd_ref_now_ns() - start;
  }
}

int cuffd_ref_fault_latency(int mode, int use_move, int uffd, char *region, char *source,
                            size_t pages, int64_t *latencies_ns) {
  size_t page = (size_t)sysconf(_SC_PAGESIZE);
  if (mode == CUFFD_REF_SIGBUS) {
    sigbus_state.uffd = uffd;
    sigbus_state.use_move = use_move;
    sigbus_state.region = (uintptr_t)region;
    sigbus_state.source = (uintptr_t)source;
    sigbus_state.page = page;
    struct sigaction action, previous;
    memset(&action, 0, sizeof action);
    action.sa_sigaction = sigbus_handler;
    action.sa_flags = SA_SIGINFO | SA_NODEFER;
    sigemptyset(&action.sa_mask);
    if (sigaction(SIGBUS, &action, &previous) < 0) return -errno;
    touch_all(region, pages, page, latencies_ns);
    sigaction(SIGBUS, &previous, NULL);
    return 0;
  }
  struct handler_state s = {.uffd = uffd, .use_move = use_move, .busy_poll = mode == CUFFD_REF_BUSY_POLL,
                            .region = (uintptr_t)region, .source = (uintptr_t)source, .page = page};
  atomic_init(&s.stopping, 0);
  if (pipe(s.stop_pipe) < 0) return -errno;
  pthread_t thread;
  int rc = pthread_create(&thread, NULL, handler_main, &s);
  if (rc != 0) {
    close(s.stop_pipe[0]);
    close(s.stop_pipe[1]);
    return -rc;
  }
  touch_all(region, pages, page, latencies_ns);
  atomic_store_explicit(&s.stopping, 1, memory_order_release);
  char byte = 1;
  (void)!write(s.stop_pipe[1], &byte, 1);
  pthread_join(thread, NULL);
  close(s.stop_pipe[0]);
  close(s.stop_pipe[1]);
  return 0;
}
