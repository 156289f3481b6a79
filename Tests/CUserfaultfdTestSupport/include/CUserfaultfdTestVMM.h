// A client that behaves like a VMM restoring a snapshot with an external page server (Firecracker's
// snapshot-resume handshake), in a forked child: there is no KVM here to run the real one.
#ifndef CUSERFAULTFD_TEST_VMM_H
#define CUSERFAULTFD_TEST_VMM_H

#include <stddef.h>
#include <sys/types.h>

/// What the client does after the handshake.
enum cuffd_test_vmm_script {
  /// Check every page (the first half by user-mode loads, the second half through write(2), a
  /// kernel-mode fault), release four pages with MADV_DONTNEED, check they read zero, exit 0.
  CUFFD_TEST_VMM_FULL = 0,
  /// Check a few pages, then die of SIGKILL mid-restore.
  CUFFD_TEST_VMM_DIE = 1,
  /// A balloon racing the prefetch (base pages): right after the handshake, release every fourth
  /// 64 KiB block with MADV_DONTNEED, front to back, 100 µs apart (while a prefetch streams the
  /// snapshot in); then check every page: released blocks read zero, the rest the snapshot's.
  CUFFD_TEST_VMM_BALLOON = 2,
};

/// Forks the client. It maps `size` bytes of guest memory (anonymous private, or hugetlbfs 2 MiB
/// pages when `huge`), opens a userfaultfd that handles kernel-mode faults with EVENT_REMOVE,
/// registers the memory (MISSING), connects to `socket_path` and sends, in one message, the JSON
/// array with its one region (offset 0 in the snapshot, `page_size` and `page_size_kib`) and the
/// userfaultfd (SCM_RIGHTS), then runs `script`, comparing against `snapshot_path`. Returns the
/// child's pid or -1. Exit codes name the first check that failed (see the .c file).
pid_t cuffd_test_vmm_client(const char *socket_path, const char *snapshot_path, size_t size, int huge,
                            int script);

/// Waits up to `milliseconds` for `pid` to end; kills it (SIGKILL) when it has not. Returns its
/// exit code, 128 + the signal that ended it, or -1 when it had to be killed (or on error).
int cuffd_test_wait(pid_t pid, int milliseconds);

#endif
