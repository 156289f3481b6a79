// Most wrappers are static inline in the header; this file holds the ones that need _GNU_SOURCE
// declarations, and makes the header's _Static_assert checks run on every build.
#include "CUserfaultfd.h"

void *cuffd_mremap(void *old_address, size_t old_length, size_t new_length, int flags,
                   void *new_address) {
  return mremap(old_address, old_length, new_length, flags, new_address);
}

_Static_assert(CUFFD_MREMAP_MAYMOVE == MREMAP_MAYMOVE, "MREMAP_MAYMOVE");
_Static_assert(CUFFD_MREMAP_FIXED == MREMAP_FIXED, "MREMAP_FIXED");
#ifdef MREMAP_DONTUNMAP
_Static_assert(CUFFD_MREMAP_DONTUNMAP == MREMAP_DONTUNMAP, "MREMAP_DONTUNMAP");
#endif

_Static_assert(CUFFD_MADV_DONTNEED == MADV_DONTNEED, "MADV_DONTNEED");
_Static_assert(CUFFD_MADV_DONTFORK == MADV_DONTFORK, "MADV_DONTFORK");
_Static_assert(CUFFD_MADV_DOFORK == MADV_DOFORK, "MADV_DOFORK");
_Static_assert(CUFFD_MADV_HUGEPAGE == MADV_HUGEPAGE, "MADV_HUGEPAGE");
_Static_assert(CUFFD_MADV_NOHUGEPAGE == MADV_NOHUGEPAGE, "MADV_NOHUGEPAGE");
#ifdef MADV_WIPEONFORK
_Static_assert(CUFFD_MADV_WIPEONFORK == MADV_WIPEONFORK, "MADV_WIPEONFORK");
_Static_assert(CUFFD_MADV_KEEPONFORK == MADV_KEEPONFORK, "MADV_KEEPONFORK");
#endif
#ifdef MADV_POPULATE_WRITE
_Static_assert(CUFFD_MADV_POPULATE_READ == MADV_POPULATE_READ, "MADV_POPULATE_READ");
_Static_assert(CUFFD_MADV_POPULATE_WRITE == MADV_POPULATE_WRITE, "MADV_POPULATE_WRITE");
#endif

#ifdef MAP_HUGE_2MB
_Static_assert(CUFFD_MAP_HUGE_2MB == MAP_HUGE_2MB, "MAP_HUGE_2MB");
#endif
#ifdef MFD_CLOEXEC
_Static_assert(CUFFD_MFD_CLOEXEC == MFD_CLOEXEC, "MFD_CLOEXEC");
#endif

int cuffd_pipe_nonblocking(int fds[2]) { return pipe2(fds, O_CLOEXEC | O_NONBLOCK); }

#include <signal.h>
#include <string.h>

static volatile sig_atomic_t sigsys_seen = 0;
static void note_sigsys(int signo) { (void)signo; sigsys_seen = 1; }

int cuffd_ioctl_move_noting_sigsys(int fd, struct cuffd_move *arg, int *sigsys) {
  struct sigaction action, previous;
  memset(&action, 0, sizeof action);
  action.sa_handler = note_sigsys;
  sigemptyset(&action.sa_mask);
  sigsys_seen = 0;
  int installed = sigaction(SIGSYS, &action, &previous) == 0;
  int result = ioctl(fd, CUFFD_IOC_MOVE, arg);
  int saved = errno;
  if (installed) sigaction(SIGSYS, &previous, NULL);
  *sigsys = sigsys_seen;
  errno = saved;
  return result;
}
