// pidfd_open, pidfd_getfd and kcmp by number: glibc wraps the first two only since 2.36.
#include "CUserfaultfdPidfd.h"

#include <errno.h>
#include <sys/syscall.h>
#include <unistd.h>

// The same numbers on every architecture but alpha (the unified table, Linux 5.1+).
#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif
#ifndef SYS_pidfd_getfd
#define SYS_pidfd_getfd 438
#endif
#define CUFFD_KCMP_FILE 0

int cuffd_pidfd_open(pid_t pid) { return (int)syscall(SYS_pidfd_open, pid, 0); }

int cuffd_pidfd_getfd(int pidfd, int fd) { return (int)syscall(SYS_pidfd_getfd, pidfd, fd, 0); }

int cuffd_kcmp_same_file(pid_t pid1, int fd1, pid_t pid2, int fd2) {
#ifdef SYS_kcmp
  return (int)syscall(SYS_kcmp, pid1, pid2, CUFFD_KCMP_FILE, fd1, fd2);
#else
  errno = ENOSYS;
  return -1;
#endif
}
