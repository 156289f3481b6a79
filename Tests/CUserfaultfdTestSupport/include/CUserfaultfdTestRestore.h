// VMM-like clients for the working-set and restart tests: like CUserfaultfdTestVMM.h's (a forked
// child that hands its userfaultfd and one region to the pager over a socket), with scripts that
// touch a working set, release part of it, or restore slowly while the pager is killed.
#ifndef CUSERFAULTFD_TEST_RESTORE_H
#define CUSERFAULTFD_TEST_RESTORE_H

#include <stddef.h>
#include <sys/types.h>

/// What the client does after the handshake.
enum cuffd_test_restore_script {
  /// Touch the working set (a quarter of the pages, in runs of 8 base pages or single huge
  /// pages, in a fixed scattered order), checking every byte; exit 0.
  CUFFD_TEST_RESTORE_WORKING_SET = 0,
  /// Release the working set's last run first (MADV_DONTNEED; base pages only), wait 200 ms (the
  /// pager replays meanwhile), then touch the working set: the released run must read zero,
  /// everything else the snapshot's bytes; exit 0.
  CUFFD_TEST_RESTORE_RELEASE_THEN_WORKING_SET = 1,
  /// Touch every page in order, checking its bytes and then writing a marker into it, counting
  /// pages in `*progress` and pausing `pause_us` every 16 pages (so the pager can be killed and
  /// restarted midway); release 4 pages near the end and check they read zero; finally check
  /// every marker is still there (no page was copied over after the client wrote it); exit 0.
  CUFFD_TEST_RESTORE_SLOW_FULL = 2,
};

/// Forks the client (see the scripts). `progress` (shared memory the parent reads) may be NULL.
/// Exit codes name the first check that failed (see the .c file). Returns the pid or -1.
pid_t cuffd_test_restore_client(const char *socket_path, const char *snapshot_path, size_t size, int huge,
                                int script, volatile long *progress, int pause_us);

/// Whether page `index` of `pages` is in the working set the scripts touch.
int cuffd_test_restore_in_working_set(size_t index, size_t pages, int huge);

/// An acquire load of a counter a client stores into (shared memory).
long cuffd_test_restore_progress(volatile long *counter);

#endif
