// Process-level helpers for tests. Forking from a multi-threaded test runner is only safe when
// the child does nothing but async-signal-safe calls, so the children live here in C.
#ifndef CUSERFAULTFD_TEST_SUPPORT_H
#define CUSERFAULTFD_TEST_SUPPORT_H

#include <sys/types.h>

/// Forks a child that shares every private page copy-on-write and blocks until `release_fd`
/// (the read end of a pipe) becomes readable or closes, then exits 0. Returns the child's pid, or
/// -1 with errno set.
pid_t cuffd_test_fork_holder(int release_fd);

/// Forks a child that reads one byte at `address` and exits 0. Returns the signal that ended the
/// child (e.g. SIGBUS), 0 if it exited normally, or -1 with errno set.
int cuffd_test_child_touch(const volatile unsigned char *address);

/// Waits for `pid` and returns its exit status as waitpid reports it, or -1 with errno set.
int cuffd_test_wait(pid_t pid);

#endif
