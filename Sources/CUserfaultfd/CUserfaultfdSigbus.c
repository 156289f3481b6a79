#include "CUserfaultfdSigbus.h"
#include "CUserfaultfd.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <string.h>
#include <unistd.h>

enum { FREE = 0, CLAIMED = 1, ACTIVE = 2, RETIRED = 3 };

struct region {
  _Atomic int state;
  _Atomic int inflight;
  uintptr_t start;
  size_t length;
  int uffd;
  size_t page_size;
  int failure_action;
  cuffd_sigbus_resolver resolver;
  void *context;
  _Atomic uint64_t resolved;
  _Atomic uint64_t failed;
  _Atomic uintptr_t last_failed_address;
  _Atomic int last_failed_errno;
  uint64_t retired_at;  // retire order: the oldest retired slot is reused first
};

static struct region regions[CUFFD_SIGBUS_MAX_REGIONS];
static pthread_mutex_t table_lock = PTHREAD_MUTEX_INITIALIZER;
static uint64_t retire_sequence = 0;
static struct sigaction previous;
static _Atomic int installed = 0;
static _Atomic uint64_t resolved_total = 0;
static _Atomic uint64_t failed_total = 0;
static _Atomic uint64_t forwarded = 0;

// A thread that keeps getting SIGBUS at one address inside a retired (or unfillable) range is
// not waiting for an unregister any more: after this many retries the signal is passed on.
#define MAX_BLIND_RETRIES (1 << 16)
static __thread __attribute__((tls_model("initial-exec"))) uintptr_t retry_address;
static __thread __attribute__((tls_model("initial-exec"))) unsigned retry_count;
// The page this thread's last failed fault poisoned: its next SIGBUS there is the poison's (a
// kernel without CONFIG_MEMORY_FAILURE reports it as BUS_ADRERR, like a userfault), and genuine.
static __thread __attribute__((tls_model("initial-exec"))) uintptr_t poisoned_page = (uintptr_t)-1;

static int note_retry(uintptr_t address) {
  if (retry_address != address) {
    retry_address = address;
    retry_count = 0;
  }
  return ++retry_count <= MAX_BLIND_RETRIES;
}

// What the signal would have done without this package's handler.
static void forward(int signo, siginfo_t *info, void *ucontext) {
  atomic_fetch_add_explicit(&forwarded, 1, memory_order_relaxed);
  if (previous.sa_flags & SA_SIGINFO) {
    if (previous.sa_sigaction) {
      previous.sa_sigaction(signo, info, ucontext);
      return;
    }
  } else if (previous.sa_handler == SIG_IGN) {
    // Ignored: a signal sent with kill/raise is dropped. A fault cannot be ignored (the kernel
    // forces the default action), so fall through to the default for those.
    if (info->si_code <= 0) return;
  } else if (previous.sa_handler != SIG_DFL) {
    previous.sa_handler(signo);
    return;
  }
  // The default action (terminate with a core dump), taken for real: reset the disposition and
  // deliver the signal again. A fault re-raises it by retrying the access; a sent signal is sent
  // again, unblocked. Either way the process ends, so no region is left disarmed in a live one.
  struct sigaction dfl;
  memset(&dfl, 0, sizeof dfl);
  dfl.sa_handler = SIG_DFL;
  sigemptyset(&dfl.sa_mask);
  sigaction(SIGBUS, &dfl, NULL);
  if (info->si_code <= 0) {
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGBUS);
    pthread_sigmask(SIG_UNBLOCK, &set, NULL);
    raise(SIGBUS);
  }
}

// 0 when the page is now mapped (by this call or, EEXIST, by someone else); -1 with errno set.
static int is_filled(struct cuffd_answer answer) {
  if (answer.outcome == CUFFD_OUTCOME_DONE || answer.outcome == CUFFD_OUTCOME_PARTIAL ||
      answer.outcome == CUFFD_OUTCOME_ALREADY_PRESENT)
    return 0;
  errno = answer.error;
  return -1;
}

// Fills a page the resolver could not: poison it (the retried access raises a genuine SIGBUS) or
// map zeros. Returns 0 when the page is now filled (by us or by someone else), -1 otherwise.
static int fail_page(const struct region *r, uintptr_t page) {
  if (r->failure_action == CUFFD_SIGBUS_FAIL_RETRY) return -1;
  if (r->failure_action == CUFFD_SIGBUS_FAIL_POISON) {
    struct cuffd_answer poisoned = cuffd_range_ioctl(r->uffd, CUFFD_OP_POISON, page, 0, r->page_size, 0);
    if (poisoned.outcome == CUFFD_OUTCOME_DONE || poisoned.outcome == CUFFD_OUTCOME_ALREADY_PRESENT) {
      poisoned_page = page;
      return 0;
    }
    if (poisoned.error != EINVAL && poisoned.error != ENOTTY) return -1;  // no POISON here: zeros instead
  }
  return is_filled(cuffd_range_ioctl(r->uffd, CUFFD_OP_ZEROPAGE, page, 0, r->page_size, 0));
}

static void handler(int signo, siginfo_t *info, void *ucontext) {
  int saved_errno = errno;
  uintptr_t address = (uintptr_t)info->si_addr;
  // A poisoned page (ours or the hardware's) and a signal sent by a process are genuine.
  int from_fault = info->si_code > 0 && info->si_code != BUS_MCEERR_AR && info->si_code != BUS_MCEERR_AO;
  if (from_fault) {
    int retired_hit = 0;
    for (int i = 0; i < CUFFD_SIGBUS_MAX_REGIONS; i++) {
      struct region *r = &regions[i];
      int state = atomic_load_explicit(&r->state, memory_order_acquire);
      if (state != ACTIVE && state != RETIRED) continue;
      atomic_fetch_add_explicit(&r->inflight, 1, memory_order_acq_rel);
      state = atomic_load_explicit(&r->state, memory_order_acquire);
      int inside = address >= r->start && address - r->start < r->length;
      if (inside && state == ACTIVE) {
        uintptr_t page = address & ~(uintptr_t)(r->page_size - 1);
        if (page == poisoned_page) {
          // The retried access hit the poison this thread's failed fault left: a real error now.
          poisoned_page = (uintptr_t)-1;
          atomic_fetch_sub_explicit(&r->inflight, 1, memory_order_acq_rel);
          break;
        }
        int rc = r->resolver(r->context, page);
        if (rc == 0) {
          poisoned_page = (uintptr_t)-1;
          atomic_fetch_add_explicit(&r->resolved, 1, memory_order_relaxed);
          atomic_fetch_add_explicit(&resolved_total, 1, memory_order_relaxed);
        } else {
          int error = errno;
          atomic_fetch_add_explicit(&r->failed, 1, memory_order_relaxed);
          atomic_fetch_add_explicit(&failed_total, 1, memory_order_relaxed);
          atomic_store_explicit(&r->last_failed_address, page, memory_order_relaxed);
          atomic_store_explicit(&r->last_failed_errno, error, memory_order_relaxed);
          rc = fail_page(r, page);
        }
        atomic_fetch_sub_explicit(&r->inflight, 1, memory_order_acq_rel);
        if (rc == 0 || note_retry(address)) {
          errno = saved_errno;
          return;
        }
        break;
      }
      if (inside && state == RETIRED) retired_hit = 1;
      atomic_fetch_sub_explicit(&r->inflight, 1, memory_order_acq_rel);
    }
    if (retired_hit && note_retry(address)) {
      // Closed while this signal was on its way: once the range is unregistered the retried
      // access is an ordinary fault.
      errno = saved_errno;
      return;
    }
  }
  errno = saved_errno;
  forward(signo, info, ucontext);
}

int cuffd_sigbus_install(void) {
  int expected = 0;
  if (!atomic_compare_exchange_strong(&installed, &expected, 1)) return 0;
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
  pthread_mutex_lock(&table_lock);
  for (int i = 0; i < CUFFD_SIGBUS_MAX_REGIONS; i++) {
    int state = atomic_load(&regions[i].state);
    if (state == CLAIMED || state == ACTIVE) {
      pthread_mutex_unlock(&table_lock);
      errno = EBUSY;
      return -1;
    }
  }
  int expected = 1;
  int rc = 0;
  if (atomic_compare_exchange_strong(&installed, &expected, 0) && sigaction(SIGBUS, &previous, NULL) < 0) {
    atomic_store(&installed, 1);
    rc = -1;
  }
  pthread_mutex_unlock(&table_lock);
  return rc;
}

static void wait_idle(struct region *r) {
  while (atomic_load_explicit(&r->inflight, memory_order_acquire) != 0) sched_yield();
}

int cuffd_sigbus_claim(uintptr_t start, size_t length, int uffd, size_t page_size,
                       int failure_action, cuffd_sigbus_resolver resolver, void *context) {
  pthread_mutex_lock(&table_lock);
  int chosen = -1;
  uint64_t oldest = UINT64_MAX;
  for (int i = 0; i < CUFFD_SIGBUS_MAX_REGIONS; i++) {
    struct region *r = &regions[i];
    int state = atomic_load(&r->state);
    int overlaps = start < r->start + r->length && r->start < start + length;
    if ((state == CLAIMED || state == ACTIVE) && overlaps) {
      pthread_mutex_unlock(&table_lock);
      errno = EEXIST;
      return -1;
    }
    if (state == RETIRED && overlaps) {
      // The new region takes this range over: forget the old one.
      atomic_store_explicit(&r->state, FREE, memory_order_release);
      wait_idle(r);
      state = FREE;
    }
    if (state == FREE && (chosen < 0 || oldest != 0)) {
      chosen = i;
      oldest = 0;
    } else if (state == RETIRED && r->retired_at < oldest) {
      chosen = i;
      oldest = r->retired_at;
    }
  }
  if (chosen < 0) {
    pthread_mutex_unlock(&table_lock);
    errno = ENOSPC;
    return -1;
  }
  struct region *r = &regions[chosen];
  atomic_store_explicit(&r->state, CLAIMED, memory_order_release);
  wait_idle(r);  // a handler may still be reading the retired range this slot held
  r->start = start;
  r->length = length;
  r->uffd = uffd;
  r->page_size = page_size;
  r->failure_action = failure_action;
  r->resolver = resolver;
  r->context = context;
  atomic_store(&r->resolved, 0);
  atomic_store(&r->failed, 0);
  atomic_store(&r->last_failed_address, 0);
  atomic_store(&r->last_failed_errno, 0);
  pthread_mutex_unlock(&table_lock);
  return chosen;
}

void cuffd_sigbus_activate(int slot) {
  if (slot < 0 || slot >= CUFFD_SIGBUS_MAX_REGIONS) return;
  atomic_store_explicit(&regions[slot].state, ACTIVE, memory_order_release);
}

void cuffd_sigbus_release(int slot) {
  if (slot < 0 || slot >= CUFFD_SIGBUS_MAX_REGIONS) return;
  pthread_mutex_lock(&table_lock);
  atomic_store_explicit(&regions[slot].state, FREE, memory_order_release);
  pthread_mutex_unlock(&table_lock);
}

void cuffd_sigbus_retire(int slot) {
  if (slot < 0 || slot >= CUFFD_SIGBUS_MAX_REGIONS) return;
  pthread_mutex_lock(&table_lock);
  struct region *r = &regions[slot];
  r->retired_at = ++retire_sequence;
  atomic_store_explicit(&r->state, RETIRED, memory_order_release);
  wait_idle(r);
  pthread_mutex_unlock(&table_lock);
}

void cuffd_sigbus_slot_stats(int slot, struct cuffd_sigbus_slot_stats *out) {
  memset(out, 0, sizeof *out);
  if (slot < 0 || slot >= CUFFD_SIGBUS_MAX_REGIONS) return;
  struct region *r = &regions[slot];
  out->resolved = atomic_load(&r->resolved);
  out->failed = atomic_load(&r->failed);
  out->last_failed_address = atomic_load(&r->last_failed_address);
  out->last_failed_errno = atomic_load(&r->last_failed_errno);
}

int cuffd_sigbus_resolve_from_source(void *context, uintptr_t address) {
  const struct cuffd_sigbus_source *s = context;
  if (s->source_base == 0) return is_filled(cuffd_range_ioctl(s->uffd, CUFFD_OP_ZEROPAGE, address, 0, s->page_size, 0));
  uintptr_t source = s->source_base + (address - s->region_base);
  if (s->use_move) {
    struct cuffd_answer moved = cuffd_range_ioctl(s->uffd, CUFFD_OP_MOVE, address, source, s->page_size, 0);
    if (moved.outcome != CUFFD_OUTCOME_BUSY) return is_filled(moved);
    // Shared with a forked child: copy it, then drop this process's view of the source, as a move would.
    struct cuffd_answer copied = cuffd_range_ioctl(s->uffd, CUFFD_OP_COPY, address, source, s->page_size, 0);
    if (copied.outcome == CUFFD_OUTCOME_DONE) madvise((void *)source, s->page_size, MADV_DONTNEED);
    return is_filled(copied);
  }
  return is_filled(cuffd_range_ioctl(s->uffd, CUFFD_OP_COPY, address, source, s->page_size, 0));
}

uint64_t cuffd_sigbus_resolved_count(void) { return atomic_load(&resolved_total); }
uint64_t cuffd_sigbus_failed_count(void) { return atomic_load(&failed_total); }
uint64_t cuffd_sigbus_forwarded_count(void) { return atomic_load(&forwarded); }
