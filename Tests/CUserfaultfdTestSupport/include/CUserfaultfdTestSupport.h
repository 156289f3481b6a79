// Process-level helpers for tests. Forking from a multi-threaded test runner is only safe when
// the child does nothing but async-signal-safe calls, so the children live here in C.
#ifndef CUSERFAULTFD_TEST_SUPPORT_H
#define CUSERFAULTFD_TEST_SUPPORT_H

#include <sys/types.h>

/// Forks a child that shares every private page copy-on-write and sleeps until killed (it also
/// dies with its parent). Returns the child's pid, or -1 with errno set. End it with
/// `cuffd_test_kill_and_wait`.
pid_t cuffd_test_fork_holder(void);

/// Sends SIGKILL to `pid` and reaps it. Returns 0, or -1 with errno set.
int cuffd_test_kill_and_wait(pid_t pid);

/// Forks a child that reads one byte at `address` and exits 0. Returns the signal that ended the
/// child (e.g. SIGBUS), 0 if it exited normally, or -1 with errno set.
int cuffd_test_child_touch(const volatile unsigned char *address);

/// The calling thread's kernel thread id.
int cuffd_test_gettid(void);

/// In a forked child: installs a SIGBUS handler that exits 42, then the package's SIGBUS handler
/// on top of it, then raises a genuine SIGBUS (a read past the end of an empty memfd mapping).
/// Returns the child's exit code (42 when the signal was passed on to the earlier handler), 128 +
/// the signal that killed it, or -1.
int cuffd_test_sigbus_chain_in_child(void);

/// Forks a child that exits at once, and reaps it. Returns 0, or -1.
int cuffd_test_fork_and_reap(void);

/// How many file descriptors this process has open.
int cuffd_test_count_open_descriptors(void);

/// Lowers this process's RLIMIT_AS soft limit to `bytes` (for memory-pressure tests, in a child).
int cuffd_test_limit_address_space(unsigned long long bytes);

/// `raise(SIGBUS)`: a signal sent by the process itself, not a fault.
int cuffd_test_raise_sigbus(void);

/// Installs a plain SIGBUS handler that only counts, and reads its count.
int cuffd_test_install_noting_sigbus_handler(void);
int cuffd_test_noted_sigbus_count(void);

/// Atomically adds 1 to `*word` (one locked instruction: a page fault restarts it whole, so the
/// increment lands in exactly one physical page even while the page is being moved).
static inline void cuffd_test_atomic_increment(unsigned long long *word) {
  __atomic_fetch_add(word, 1, __ATOMIC_RELAXED);
}

#include "CUserfaultfdTestVMM.h"
#include "CUserfaultfdTestRestore.h"

#endif
