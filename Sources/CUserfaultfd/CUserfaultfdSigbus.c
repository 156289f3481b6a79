#include "CUserfaultfdSigbus.h"
#include "CUserfaultfd.h"

#include <errno.h>
#include <signal.h>
#include <stdatomic.h>
#include <string.h>
#include <unistd.h>

struct region {
  _Atomic int state;  // 0 free, 1 claimed (being written), 2 active
  _Atomic int inflight;
  uintptr_t start;
  size_t length;
  cuffd_sigbus_resolver resolver;
  void *context;
};

static struct region regions[CUFFD_SIGBUS_MAX_REGIONS];
static struct sigaction previous;
static _Atomic int installed = 0;
static _Atomic uint64_t resolved = 0;
static _Atomic uint64_t forwarded = 0;

static void forward(int signo, siginfo_t *info, void *ucontext) {
  atomic_fetch_add_explicit(&forwarded, 1, memory_order_relaxed);
  if (previous.sa_flags & SA_SIGINFO) {
    if (previous.sa_sigaction) {
      previous.sa_sigaction(signo, info, ucontext);
      return;
    }
  } else if (previous.sa_handler != SIG_DFL && previous.sa_handler != SIG_IGN) {
    previous.sa_handler(signo);
    return;
  }
  // Default action (ignoring a fault would retry it forever): reset and return, so the faulting
  // instruction runs again and the kernel delivers SIGBUS with the default disposition.
  struct sigaction dfl;
  memset(&dfl, 0, sizeof dfl);
  dfl.sa_handler = SIG_DFL;
  sigemptyset(&dfl.sa_mask);
  sigaction(SIGBUS, &dfl, NULL);
}

static uintptr_t page_size = 4096;

static void handler(int signo, siginfo_t *info, void *ucontext) {
  int saved_errno = errno;
  uintptr_t address = (uintptr_t)info->si_addr;
  for (int i = 0; i < CUFFD_SIGBUS_MAX_REGIONS; i++) {
    struct region *r = &regions[i];
    if (atomic_load_explicit(&r->state, memory_order_acquire) != 2) continue;
    atomic_fetch_add_explicit(&r->inflight, 1, memory_order_acq_rel);
    if (atomic_load_explicit(&r->state, memory_order_acquire) == 2 && address >= r->start &&
        address - r->start < r->length) {
      int rc = r->resolver(r->context, address & ~(page_size - 1));
      atomic_fetch_sub_explicit(&r->inflight, 1, memory_order_acq_rel);
      if (rc == 0) {
        atomic_fetch_add_explicit(&resolved, 1, memory_order_relaxed);
        errno = saved_errno;
        return;
      }
      break;
    }
    atomic_fetch_sub_explicit(&r->inflight, 1, memory_order_acq_rel);
  }
  errno = saved_errno;
  forward(signo, info, ucontext);
}

int cuffd_sigbus_install(void) {
  int expected = 0;
  if (!atomic_compare_exchange_strong(&installed, &expected, 1)) return 0;
  page_size = (uintptr_t)sysconf(_SC_PAGESIZE);
  struct sigaction action;
  memset(&action, 0, sizeof action);
  action.sa_sigaction = handler;
  action.sa_flags = SA_SIGINFO | SA_NODEFER | SA_ONSTACK;
  sigemptyset(&action.sa_mask);
  if (sigaction(SIGBUS, &action, &previous) < 0) {
    atomic_store(&installed, 0);
    return -1;
  }
  return 0;
}

int cuffd_sigbus_uninstall(void) {
  for (int i = 0; i < CUFFD_SIGBUS_MAX_REGIONS; i++) {
    if (atomic_load(&regions[i].state) != 0) {
      errno = EBUSY;
      return -1;
    }
  }
  int expected = 1;
  if (!atomic_compare_exchange_strong(&installed, &expected, 0)) return 0;
  if (sigaction(SIGBUS, &previous, NULL) < 0) {
    atomic_store(&installed, 1);
    return -1;
  }
  return 0;
}

int cuffd_sigbus_add_region(uintptr_t start, size_t length, cuffd_sigbus_resolver resolver,
                            void *context) {
  for (int i = 0; i < CUFFD_SIGBUS_MAX_REGIONS; i++) {
    int expected = 0;
    if (atomic_compare_exchange_strong(&regions[i].state, &expected, 1)) {
      regions[i].start = start;
      regions[i].length = length;
      regions[i].resolver = resolver;
      regions[i].context = context;
      atomic_store_explicit(&regions[i].state, 2, memory_order_release);
      return i;
    }
  }
  errno = ENOSPC;
  return -1;
}

void cuffd_sigbus_remove_region(int slot) {
  if (slot < 0 || slot >= CUFFD_SIGBUS_MAX_REGIONS) return;
  atomic_store_explicit(&regions[slot].state, 1, memory_order_release);
  while (atomic_load_explicit(&regions[slot].inflight, memory_order_acquire) != 0) {}
  atomic_store_explicit(&regions[slot].state, 0, memory_order_release);
}

int cuffd_sigbus_resolve_from_source(void *context, uintptr_t address) {
  const struct cuffd_sigbus_source *s = context;
  if (s->source_base == 0) {
    struct cuffd_zeropage arg = {.range = {.start = address, .len = s->page_size}, .mode = 0, .zeropage = 0};
    if (cuffd_ioctl_zeropage(s->uffd, &arg) == 0 || errno == EEXIST) return 0;
    return -1;
  }
  uintptr_t source = s->source_base + (address - s->region_base);
  if (s->use_move) {
    struct cuffd_move arg = {.dst = address, .src = source, .len = s->page_size, .mode = 0, .move = 0};
    if (cuffd_ioctl_move(s->uffd, &arg) == 0 || errno == EEXIST || errno == ENOENT) return 0;
    return -1;
  }
  struct cuffd_copy arg = {.dst = address, .src = source, .len = s->page_size, .mode = 0, .copy = 0};
  if (cuffd_ioctl_copy(s->uffd, &arg) == 0 || errno == EEXIST) return 0;
  return -1;
}

uint64_t cuffd_sigbus_resolved_count(void) { return atomic_load(&resolved); }
uint64_t cuffd_sigbus_forwarded_count(void) { return atomic_load(&forwarded); }
