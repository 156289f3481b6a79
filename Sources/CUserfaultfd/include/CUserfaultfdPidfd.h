// Recovering another process's userfaultfd: what a pager restarted after a crash (or an upgrade)
// needs to serve the sessions its predecessor served. System calls glibc may not wrap.
#ifndef CUSERFAULTFD_PIDFD_H
#define CUSERFAULTFD_PIDFD_H

#include <sys/types.h>

/// pidfd_open(pid, 0) (Linux 5.3+): a descriptor for the process that pins its pid and becomes
/// readable when it exits. -1 with errno set (ESRCH: no such process; ENOSYS: kernel too old).
int cuffd_pidfd_open(pid_t pid);

/// pidfd_getfd(pidfd, fd, 0) (Linux 5.6+): a duplicate, in this process, of descriptor `fd` of the
/// process behind `pidfd` (needs ptrace access to it). -1 with errno set (ENOSYS: too old; EPERM:
/// no ptrace access; EBADF: no such descriptor).
int cuffd_pidfd_getfd(int pidfd, int fd);

/// kcmp(pid1, pid2, KCMP_FILE, fd1, fd2) (Linux 3.5+, CONFIG_KCMP): 0 when the two descriptors
/// refer to the same open file, 1 or 2 when not, -1 with errno set (ENOSYS, EPERM, EBADF).
int cuffd_kcmp_same_file(pid_t pid1, int fd1, pid_t pid2, int fd2);

#endif
