// The clones of `uffd bench restore`'s `recorded` and `restart` rows: a working set read in a fixed
// order (the same in every clone of one seed), with what the restart row needs to count.
#ifndef CUSERFAULTFD_RECORDED_REFERENCE_H
#define CUSERFAULTFD_RECORDED_REFERENCE_H

#include <stdint.h>
#include <sys/types.h>

/// Working sets of the recorded rows.
enum cuffd_ref_ws_pattern {
  /// A tenth of the pages as 64 KiB runs in slots placed by the seed, in the seed's order.
  CUFFD_REF_WS_RANDOM_10PCT = 0,
  /// A boot: four sequential runs (1.25% of the pages each, placed by the seed), then a random
  /// tail of 64 KiB runs (5% of the pages).
  CUFFD_REF_WS_BOOT = 1,
};

/// What a working-set clone measured, in memory shared with the parent.
struct cuffd_ref_ws_result {
  int64_t first_byte_ns;  ///< from sending the handshake to the first page read
  int64_t complete_ns;    ///< from sending the handshake to the last page of the working set read
  int64_t done_at_ns;     ///< CLOCK_MONOTONIC when the working set had been read
  int64_t pages_touched;
  int64_t progress;       ///< pages read so far (the parent watches it)
  int64_t stalls;         ///< reads that waited 50 ms or more
  int64_t copied_twice;   ///< pages whose marker the client wrote was gone at the end
  int64_t status;         ///< 0, or the step that failed
};

/// Forks a clone: maps `size` bytes, registers them with a userfaultfd (MISSING, EVENT_REMOVE),
/// sends them to `socket_path` (Firecracker's handshake), reads its working set (`pattern` with
/// `seed`), one byte of each page; with `markers`, writes a marker into each page after reading it
/// and checks every marker at the end. Results in `result` (MAP_SHARED). Returns its pid or -1.
pid_t cuffd_ref_ws_client(const char *socket_path, size_t size, int pattern, uint64_t seed, int markers,
                          struct cuffd_ref_ws_result *result);

/// Page `i` of the working set of `pages` pages (`pattern`, `seed`); `*count` gets its length.
size_t cuffd_ref_ws_page(size_t i, size_t pages, int pattern, uint64_t seed, size_t *count);

/// An acquire load of a clone's progress counter.
int64_t cuffd_ref_ws_progress(int64_t *counter);

#endif
