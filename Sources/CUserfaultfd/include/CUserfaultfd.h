// CUserfaultfd: this package's own copy of the userfaultfd uapi (Linux 6.8+, through UFFDIO_MOVE
// and UFFDIO_POISON) and thin wrappers for what Swift cannot call: the variadic syscall(),
// ioctl() and mremap(), and the _IOWR-style ioctl numbers.
//
// Every name is prefixed `cuffd_` / `CUFFD_` so this header never clashes with an older or newer
// <linux/userfaultfd.h>: Debian 12's system header predates MOVE and POISON. When the system
// header is new enough, the layouts and numbers are checked against it at compile time.
#ifndef CUSERFAULTFD_H
#define CUSERFAULTFD_H

#include <stdint.h>
#include <stddef.h>
#include <errno.h>
#include <fcntl.h>
#include <unistd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>

// MARK: - ioctl numbers

#define CUFFD_IOCTL_MAGIC 0xAA

#define CUFFD__UFFDIO_REGISTER     0x00
#define CUFFD__UFFDIO_UNREGISTER   0x01
#define CUFFD__UFFDIO_WAKE         0x02
#define CUFFD__UFFDIO_COPY         0x03
#define CUFFD__UFFDIO_ZEROPAGE     0x04
#define CUFFD__UFFDIO_MOVE         0x05
#define CUFFD__UFFDIO_WRITEPROTECT 0x06
#define CUFFD__UFFDIO_CONTINUE     0x07
#define CUFFD__UFFDIO_POISON       0x08
#define CUFFD__UFFDIO_API          0x3F

#define CUFFD_API 0xAAULL

// MARK: - Structures (layouts identical to include/uapi/linux/userfaultfd.h)

struct cuffd_range {
  uint64_t start;
  uint64_t len;
};

struct cuffd_api {
  uint64_t api;
  uint64_t features;
  uint64_t ioctls;
};

struct cuffd_register {
  struct cuffd_range range;
  uint64_t mode;
  uint64_t ioctls;
};

struct cuffd_copy {
  uint64_t dst;
  uint64_t src;
  uint64_t len;
  uint64_t mode;
  int64_t copy;
};

struct cuffd_zeropage {
  struct cuffd_range range;
  uint64_t mode;
  int64_t zeropage;
};

struct cuffd_move {
  uint64_t dst;
  uint64_t src;
  uint64_t len;
  uint64_t mode;
  int64_t move;
};

struct cuffd_writeprotect {
  struct cuffd_range range;
  uint64_t mode;
};

struct cuffd_continue {
  struct cuffd_range range;
  uint64_t mode;
  int64_t mapped;
};

struct cuffd_poison {
  struct cuffd_range range;
  uint64_t mode;
  int64_t updated;
};

/// The 32-byte event record read(2) returns. Decoded field by field by the Swift side at these
/// fixed offsets: event (u8) at 0, arg union at 8.
#define CUFFD_MSG_SIZE 32
#define CUFFD_MSG_OFFSET_EVENT 0
#define CUFFD_MSG_OFFSET_ARG 8

#define CUFFD_EVENT_PAGEFAULT 0x12
#define CUFFD_EVENT_FORK      0x13
#define CUFFD_EVENT_REMAP     0x14
#define CUFFD_EVENT_REMOVE    0x15
#define CUFFD_EVENT_UNMAP     0x16

#define CUFFD_PAGEFAULT_FLAG_WRITE (1ULL << 0)
#define CUFFD_PAGEFAULT_FLAG_WP    (1ULL << 1)
#define CUFFD_PAGEFAULT_FLAG_MINOR (1ULL << 2)

#define CUFFD_FEATURE_PAGEFAULT_FLAG_WP   (1ULL << 0)
#define CUFFD_FEATURE_EVENT_FORK          (1ULL << 1)
#define CUFFD_FEATURE_EVENT_REMAP         (1ULL << 2)
#define CUFFD_FEATURE_EVENT_REMOVE        (1ULL << 3)
#define CUFFD_FEATURE_MISSING_HUGETLBFS   (1ULL << 4)
#define CUFFD_FEATURE_MISSING_SHMEM       (1ULL << 5)
#define CUFFD_FEATURE_EVENT_UNMAP         (1ULL << 6)
#define CUFFD_FEATURE_SIGBUS              (1ULL << 7)
#define CUFFD_FEATURE_THREAD_ID           (1ULL << 8)
#define CUFFD_FEATURE_MINOR_HUGETLBFS     (1ULL << 9)
#define CUFFD_FEATURE_MINOR_SHMEM         (1ULL << 10)
#define CUFFD_FEATURE_EXACT_ADDRESS       (1ULL << 11)
#define CUFFD_FEATURE_WP_HUGETLBFS_SHMEM  (1ULL << 12)
#define CUFFD_FEATURE_WP_UNPOPULATED      (1ULL << 13)
#define CUFFD_FEATURE_POISON              (1ULL << 14)
#define CUFFD_FEATURE_WP_ASYNC            (1ULL << 15)
#define CUFFD_FEATURE_MOVE                (1ULL << 16)

#define CUFFD_REGISTER_MODE_MISSING (1ULL << 0)
#define CUFFD_REGISTER_MODE_WP      (1ULL << 1)
#define CUFFD_REGISTER_MODE_MINOR   (1ULL << 2)

#define CUFFD_COPY_MODE_DONTWAKE (1ULL << 0)
#define CUFFD_COPY_MODE_WP       (1ULL << 1)
#define CUFFD_ZEROPAGE_MODE_DONTWAKE (1ULL << 0)
#define CUFFD_MOVE_MODE_DONTWAKE        (1ULL << 0)
#define CUFFD_MOVE_MODE_ALLOW_SRC_HOLES (1ULL << 1)
#define CUFFD_WRITEPROTECT_MODE_WP       (1ULL << 0)
#define CUFFD_WRITEPROTECT_MODE_DONTWAKE (1ULL << 1)
#define CUFFD_CONTINUE_MODE_DONTWAKE (1ULL << 0)
#define CUFFD_CONTINUE_MODE_WP       (1ULL << 1)
#define CUFFD_POISON_MODE_DONTWAKE (1ULL << 0)

/// Flag for the userfaultfd syscall / USERFAULTFD_IOC_NEW: handle user-mode faults only, which
/// unprivileged callers need when vm.unprivileged_userfaultfd = 0.
#define CUFFD_USER_MODE_ONLY 1

#define CUFFD_IOC_API          _IOWR(CUFFD_IOCTL_MAGIC, CUFFD__UFFDIO_API, struct cuffd_api)
#define CUFFD_IOC_REGISTER     _IOWR(CUFFD_IOCTL_MAGIC, CUFFD__UFFDIO_REGISTER, struct cuffd_register)
#define CUFFD_IOC_UNREGISTER   _IOR(CUFFD_IOCTL_MAGIC, CUFFD__UFFDIO_UNREGISTER, struct cuffd_range)
#define CUFFD_IOC_WAKE         _IOR(CUFFD_IOCTL_MAGIC, CUFFD__UFFDIO_WAKE, struct cuffd_range)
#define CUFFD_IOC_COPY         _IOWR(CUFFD_IOCTL_MAGIC, CUFFD__UFFDIO_COPY, struct cuffd_copy)
#define CUFFD_IOC_ZEROPAGE     _IOWR(CUFFD_IOCTL_MAGIC, CUFFD__UFFDIO_ZEROPAGE, struct cuffd_zeropage)
#define CUFFD_IOC_MOVE         _IOWR(CUFFD_IOCTL_MAGIC, CUFFD__UFFDIO_MOVE, struct cuffd_move)
#define CUFFD_IOC_WRITEPROTECT _IOWR(CUFFD_IOCTL_MAGIC, CUFFD__UFFDIO_WRITEPROTECT, struct cuffd_writeprotect)
#define CUFFD_IOC_CONTINUE     _IOWR(CUFFD_IOCTL_MAGIC, CUFFD__UFFDIO_CONTINUE, struct cuffd_continue)
#define CUFFD_IOC_POISON       _IOWR(CUFFD_IOCTL_MAGIC, CUFFD__UFFDIO_POISON, struct cuffd_poison)
/// ioctl on /dev/userfaultfd that returns a new userfaultfd (Linux 6.1+).
#define CUFFD_IOC_NEW          _IO(CUFFD_IOCTL_MAGIC, 0x00)

// MARK: - ABI checks

_Static_assert(sizeof(struct cuffd_range) == 16, "uffdio_range layout");
_Static_assert(sizeof(struct cuffd_api) == 24, "uffdio_api layout");
_Static_assert(sizeof(struct cuffd_register) == 32, "uffdio_register layout");
_Static_assert(sizeof(struct cuffd_copy) == 40, "uffdio_copy layout");
_Static_assert(sizeof(struct cuffd_zeropage) == 32, "uffdio_zeropage layout");
_Static_assert(sizeof(struct cuffd_move) == 40, "uffdio_move layout");
_Static_assert(sizeof(struct cuffd_writeprotect) == 24, "uffdio_writeprotect layout");
_Static_assert(sizeof(struct cuffd_continue) == 32, "uffdio_continue layout");
_Static_assert(sizeof(struct cuffd_poison) == 32, "uffdio_poison layout");
_Static_assert(offsetof(struct cuffd_move, move) == 32, "uffdio_move.move offset");
_Static_assert(offsetof(struct cuffd_copy, copy) == 32, "uffdio_copy.copy offset");

#if defined(__x86_64__) || defined(__aarch64__)
// The documented numbers for the common 64-bit encodings (the kernel uapi, include/uapi/linux/userfaultfd.h).
_Static_assert(CUFFD_IOC_API == 0xC018AA3FUL, "UFFDIO_API number");
_Static_assert(CUFFD_IOC_REGISTER == 0xC020AA00UL, "UFFDIO_REGISTER number");
_Static_assert(CUFFD_IOC_UNREGISTER == 0x8010AA01UL, "UFFDIO_UNREGISTER number");
_Static_assert(CUFFD_IOC_WAKE == 0x8010AA02UL, "UFFDIO_WAKE number");
_Static_assert(CUFFD_IOC_COPY == 0xC028AA03UL, "UFFDIO_COPY number");
_Static_assert(CUFFD_IOC_ZEROPAGE == 0xC020AA04UL, "UFFDIO_ZEROPAGE number");
_Static_assert(CUFFD_IOC_MOVE == 0xC028AA05UL, "UFFDIO_MOVE number");
_Static_assert(CUFFD_IOC_WRITEPROTECT == 0xC018AA06UL, "UFFDIO_WRITEPROTECT number");
_Static_assert(CUFFD_IOC_CONTINUE == 0xC020AA07UL, "UFFDIO_CONTINUE number");
_Static_assert(CUFFD_IOC_POISON == 0xC020AA08UL, "UFFDIO_POISON number");
#endif

#if __has_include(<linux/userfaultfd.h>)
#include <linux/userfaultfd.h>
// Cross-check against whatever the system header knows; newer parts are checked when present.
_Static_assert(sizeof(struct uffd_msg) == CUFFD_MSG_SIZE, "uffd_msg size");
_Static_assert(offsetof(struct uffd_msg, arg) == CUFFD_MSG_OFFSET_ARG, "uffd_msg.arg offset");
_Static_assert(offsetof(struct uffd_msg, arg.pagefault.flags) == 8, "pagefault.flags offset");
_Static_assert(offsetof(struct uffd_msg, arg.pagefault.address) == 16, "pagefault.address offset");
_Static_assert(offsetof(struct uffd_msg, arg.pagefault.feat.ptid) == 24, "pagefault.ptid offset");
_Static_assert(CUFFD_IOC_COPY == UFFDIO_COPY, "UFFDIO_COPY matches the system header");
_Static_assert(CUFFD_IOC_REGISTER == UFFDIO_REGISTER, "UFFDIO_REGISTER matches the system header");
#ifdef UFFDIO_MOVE
_Static_assert(CUFFD_IOC_MOVE == UFFDIO_MOVE, "UFFDIO_MOVE matches the system header");
_Static_assert(sizeof(struct uffdio_move) == sizeof(struct cuffd_move), "uffdio_move matches");
#endif
#ifdef UFFDIO_POISON
_Static_assert(CUFFD_IOC_POISON == UFFDIO_POISON, "UFFDIO_POISON matches the system header");
#endif
#endif

// madvise advice (the Linux values; glibc hides the newer ones behind _GNU_SOURCE or lacks them).
#define CUFFD_MADV_DONTNEED       4
#define CUFFD_MADV_DONTFORK       10
#define CUFFD_MADV_DOFORK         11
#define CUFFD_MADV_HUGEPAGE       14
#define CUFFD_MADV_NOHUGEPAGE     15
#define CUFFD_MADV_WIPEONFORK     18  /* Linux 4.14+ */
#define CUFFD_MADV_KEEPONFORK     19
#define CUFFD_MADV_POPULATE_READ  22  /* Linux 5.14+ */
#define CUFFD_MADV_POPULATE_WRITE 23  /* Linux 5.14+ */

// mremap flags (glibc declares them only under _GNU_SOURCE, which Swift's importer lacks).
#define CUFFD_MREMAP_MAYMOVE   1
#define CUFFD_MREMAP_FIXED     2
#define CUFFD_MREMAP_DONTUNMAP 4  /* Linux 5.7+ */

// MARK: - Calls Swift cannot make directly (variadic in libc)

/// `syscall(SYS_userfaultfd, flags)`. Returns the fd or -1 with errno set.
static inline int cuffd_userfaultfd(int flags) {
#ifdef SYS_userfaultfd
  return (int)syscall(SYS_userfaultfd, flags);
#else
  errno = ENOSYS;
  return -1;
#endif
}

/// `ioctl(devfd, USERFAULTFD_IOC_NEW, flags)` on an open `/dev/userfaultfd`.
static inline int cuffd_dev_new(int devfd, int flags) {
  return ioctl(devfd, CUFFD_IOC_NEW, flags);
}

static inline int cuffd_ioctl_api(int fd, struct cuffd_api *arg) { return ioctl(fd, CUFFD_IOC_API, arg); }
static inline int cuffd_ioctl_register(int fd, struct cuffd_register *arg) { return ioctl(fd, CUFFD_IOC_REGISTER, arg); }
static inline int cuffd_ioctl_unregister(int fd, struct cuffd_range *arg) { return ioctl(fd, CUFFD_IOC_UNREGISTER, arg); }
static inline int cuffd_ioctl_wake(int fd, struct cuffd_range *arg) { return ioctl(fd, CUFFD_IOC_WAKE, arg); }
static inline int cuffd_ioctl_copy(int fd, struct cuffd_copy *arg) { return ioctl(fd, CUFFD_IOC_COPY, arg); }
static inline int cuffd_ioctl_zeropage(int fd, struct cuffd_zeropage *arg) { return ioctl(fd, CUFFD_IOC_ZEROPAGE, arg); }
static inline int cuffd_ioctl_move(int fd, struct cuffd_move *arg) { return ioctl(fd, CUFFD_IOC_MOVE, arg); }
static inline int cuffd_ioctl_writeprotect(int fd, struct cuffd_writeprotect *arg) { return ioctl(fd, CUFFD_IOC_WRITEPROTECT, arg); }
static inline int cuffd_ioctl_continue(int fd, struct cuffd_continue *arg) { return ioctl(fd, CUFFD_IOC_CONTINUE, arg); }
static inline int cuffd_ioctl_poison(int fd, struct cuffd_poison *arg) { return ioctl(fd, CUFFD_IOC_POISON, arg); }

/// `mremap(old, old_len, new_len, flags, new_address)`; `new_address` is used only with
/// MREMAP_FIXED. Returns MAP_FAILED with errno set on failure. Defined in the .c file, which is
/// compiled with _GNU_SOURCE (Swift's importer sees glibc without it).
void *cuffd_mremap(void *old_address, size_t old_length, size_t new_length, int flags,
                   void *new_address);

/// `pipe2(fds, O_CLOEXEC | O_NONBLOCK)` (declared by glibc only under _GNU_SOURCE).
int cuffd_pipe_nonblocking(int fds[2]);

/// UFFDIO_MOVE with a SIGSYS handler installed for the call: a seccomp filter that traps the
/// ioctl (SECCOMP_RET_TRAP) would otherwise kill a probe. `*sigsys` is 1 when it fired.
int cuffd_ioctl_move_noting_sigsys(int fd, struct cuffd_move *arg, int *sigsys);

/// `memfd_create(name, flags)` through the system call (glibc declares it only under _GNU_SOURCE).
static inline int cuffd_memfd_create(const char *name, unsigned int flags) {
#ifdef SYS_memfd_create
  return (int)syscall(SYS_memfd_create, name, flags);
#else
  errno = ENOSYS;
  return -1;
#endif
}
#define CUFFD_MFD_CLOEXEC 1U
/// MAP_HUGE_2MB: 21 (log2 of 2 MiB) in the MAP_HUGE_SHIFT (26) bits.
#define CUFFD_MAP_HUGE_2MB (21 << 26)

/// MAP_FAILED as a value Swift can compare against.
static inline void *cuffd_map_failed(void) { return MAP_FAILED; }

#include "CUserfaultfdAnswer.h"
#include "CUserfaultfdSocket.h"
#include "CUserfaultfdSigbus.h"
#include "CUserfaultfdMaps.h"
#include "CUserfaultfdEpoll.h"
#include "CUserfaultfdWriteProtect.h"
#include "CUserfaultfdPidfd.h"

#endif /* CUSERFAULTFD_H */
