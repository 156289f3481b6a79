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

int cuffd_pipe_nonblocking(int fds[2]) { return pipe2(fds, O_CLOEXEC | O_NONBLOCK); }
