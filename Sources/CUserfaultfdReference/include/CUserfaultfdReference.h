// C reference loops for `uffd bench`: the same system calls the Swift library issues, written
// the way a careful C programmer would, so the benchmark can print Swift/C ratios measured side by
// side in one run. Each returns elapsed nanoseconds (CLOCK_MONOTONIC), or -errno on failure.
#ifndef CUSERFAULTFD_REFERENCE_H
#define CUSERFAULTFD_REFERENCE_H

#include <stddef.h>
#include <stdint.h>

/// CLOCK_MONOTONIC in nanoseconds: the clock both sides use.
int64_t cuffd_ref_now_ns(void);

/// UFFDIO_MOVE of `length` bytes in `batch`-byte ioctls.
int64_t cuffd_ref_move(int uffd, char *src, char *dst, size_t length, size_t batch);

/// UFFDIO_COPY of each `batch` then MADV_DONTNEED of that part of the source.
int64_t cuffd_ref_copy_dontneed(int uffd, char *src, char *dst, size_t length, size_t batch);

/// What the library's logical move does on its fast path: one pagemap read checking that the
/// destination is empty, then MOVE in `batch`-byte ioctls cut at 2 MiB source boundaries.
int64_t cuffd_ref_logical(int uffd, char *src, char *dst, size_t length, size_t batch);

/// Per page: fill a reused buffer, then UFFDIO_COPY it into a fresh destination page.
int64_t cuffd_ref_fill_copy(int uffd, char *buffer, char *dst, size_t length);

/// Per page: fill a fresh source page (the write allocates it), then UFFDIO_MOVE it.
int64_t cuffd_ref_fill_move(int uffd, char *src, char *dst, size_t length);

/// The page-filling routine both fresh-page rows use (one 64-bit store per 8 bytes).
void cuffd_ref_fill_page(char *page, uint64_t seed, size_t page_size);

/// Fault-latency modes for `cuffd_ref_fault_latency`.
enum cuffd_ref_fault_mode {
  CUFFD_REF_THREAD = 0,     ///< handler thread sleeping in poll(2)
  CUFFD_REF_BUSY_POLL = 1,  ///< handler thread spinning on a non-blocking read
  CUFFD_REF_SIGBUS = 2,     ///< resolved in the faulting thread's SIGBUS handler
};

/// Touches each of `pages` pages of `region` (registered MISSING with `uffd`; for SIGBUS mode the
/// uffd has UFFD_FEATURE_SIGBUS, otherwise it is non-blocking) once, in order, from the calling
/// thread, and stores each access's round trip in `latencies_ns`. Faults are resolved by COPY (or
/// MOVE when `use_move`) from the matching page of `source`. Returns 0 or -errno.
int cuffd_ref_fault_latency(int mode, int use_move, int uffd, char *region, char *source,
                            size_t pages, int64_t *latencies_ns);

// MARK: - Snapshot restore (`uffd bench restore`)

#include <sys/types.h>

/// Access patterns of the restore client.
enum cuffd_ref_restore_pattern {
  CUFFD_REF_SEQUENTIAL = 0,     ///< every page, in order
  CUFFD_REF_RANDOM_10PCT = 1,   ///< a tenth of the pages as randomly placed 64 KiB runs, in random order
  CUFFD_REF_SCATTERED_10PCT = 2, ///< a tenth of the pages, each alone, scattered (no locality at all)
  CUFFD_REF_SEQUENTIAL_HUGE = 3,  ///< every 4 KiB in order, the memory in 2 MiB hugetlb pages
};

/// What the restore client measured, written to its report pipe.
struct cuffd_ref_restore_result {
  int64_t first_byte_ns;  ///< from sending the handshake to the first page read
  int64_t complete_ns;    ///< from sending the handshake to the last page read
  int64_t pages_touched;
  int64_t status;         ///< 0, or the step that failed
};

/// Forks the restore client: maps `size` bytes of guest memory, registers them (MISSING, with
/// EVENT_REMOVE) with a new userfaultfd that handles kernel-mode faults, connects to
/// `socket_path`, sends the JSON array with its region and the userfaultfd in one message
/// (Firecracker's handshake), reads one byte of every page of `pattern`, writes a
/// `cuffd_ref_restore_result` to `report_fd` and exits. Returns its pid or -1.
/// With `CUFFD_REF_SEQUENTIAL_HUGE` the guest memory is hugetlbfs 2 MiB pages (MAP_HUGETLB: the
/// caller reserves them) and the region says so; it still reads one byte of every 4 KiB.
pid_t cuffd_ref_restore_client(const char *socket_path, size_t size, int pattern, int report_fd);

/// A page server doing what Firecracker's example handler does: accepts one client on
/// `listener`, receives its userfaultfd and region, and answers each fault with one UFFDIO_COPY
/// of the faulting 4 KiB page from `snapshot` (no fault-around, no prefetch) until the client
/// hangs up. Stores each fault's service time (read to COPY done) in `latencies_ns` (up to
/// `capacity`) and the fault count in `*faults`. Returns 0 or -errno.
int cuffd_ref_restore_server(int listener, const char *snapshot, size_t snapshot_length, int64_t *latencies_ns,
                             size_t capacity, size_t *faults);

/// The kernel's own ceiling for a whole-snapshot restore, as Firecracker's `fault_all` example
/// handler does it: accepts one client on `listener`, and at its first fault copies the whole
/// region with UFFDIO_COPY from `snapshot`, split into `threads` contiguous parts (1: one ioctl of
/// the whole region, as Firecracker does; 2: two ioctls in parallel on two threads), then answers
/// any later fault with a wake until the client hangs up. `*faults` counts the faults read.
/// Returns 0 or -errno.
int cuffd_ref_restore_server_fault_all(int listener, const char *snapshot, size_t snapshot_length, int threads,
                                       size_t *faults);

/// The kernel's UFFDIO_COPY rate with no client and no faults: maps `length` bytes of fresh
/// anonymous memory (base pages), registers it with a new userfaultfd (MISSING) and copies `source`
/// into all of it in ioctls of `batch` bytes, split into `threads` contiguous parts copied in
/// parallel (1 to 8). Returns the nanoseconds the copies took, or -errno.
int64_t cuffd_ref_copy_ceiling(const char *source, size_t length, size_t batch, int threads);

#include "CUserfaultfdRecordedReference.h"

// MARK: - A fleet of clones (`uffd bench fleet`)

/// What one clone of the fleet measured, in memory shared with the parent.
struct cuffd_ref_fleet_result {
  int64_t start_ns;       ///< CLOCK_MONOTONIC when the handshake was sent
  int64_t end_ns;         ///< CLOCK_MONOTONIC when the working set had been read
  int64_t pages_touched;
  int64_t status;         ///< 0, or the step that failed
};

/// Forks one clone: like `cuffd_ref_restore_client`, but reads a random tenth of the pages in
/// 64 KiB runs placed by `seed` (a different working set per clone), timing every first touch
/// into `latencies_ns` (capacity: a tenth of the pages), and writes its result to `result`
/// (both in MAP_SHARED memory). Returns its pid or -1.
pid_t cuffd_ref_fleet_client(const char *socket_path, size_t size, uint64_t seed, int64_t *latencies_ns,
                             struct cuffd_ref_fleet_result *result);

/// Forks one C handler process, as Firecracker's example runs one per VM: it maps the snapshot
/// file itself, listens at `socket_path`, serves one client with one UFFDIO_COPY per 4 KiB fault
/// until it hangs up, stores the resident bytes it added (its RSS at the end less what the fork
/// inherited: the snapshot pages it mapped, its buffers) in `rss_bytes[0]` and the anonymous part
/// of them in `rss_bytes[1]` (shared memory), and exits. Returns its pid or -1.
pid_t cuffd_ref_fleet_handler(const char *socket_path, const char *snapshot_path, int64_t *rss_bytes);

/// Waits up to `milliseconds` for `pid`; kills it when it has not ended. Returns its exit code,
/// 128 + its signal, or -1.
int cuffd_ref_wait(pid_t pid, int milliseconds);

/// `fork()` copy-on-write snapshot, Redis BGSAVE's way: the child writes `length` bytes at `base`
/// to `fd` (from offset 0), writes one byte to `*done_fd` when finished and waits until
/// `*release_fd` is closed before exiting, so the parent can measure its memory first. Returns the
/// child's pid (the parent's ends of the pipes in `*done_fd` / `*release_fd`), or -errno.
int cuffd_ref_fork_snapshot(const char *base, size_t length, int fd, int *done_fd, int *release_fd);

/// The cost of a faulting write under a live snapshot, the package's way in plain C: registers
/// `length` bytes at `base` (populated) for uffd-wp, protects them all, starts a background copier
/// to `fd` (64-page pwrites, then un-protect; staged pages written between chunks), and has the
/// calling thread write the first and last word of each of `pages[0..<count]` (page indices),
/// timing each write. A fault copies its page into one of 256 staging pages (pwrite when all are
/// taken) and un-protects it: in a handler thread (blocking read after poll) or, `in_thread`, in
/// the writer's SIGBUS handler (installed for the call, the previous one restored). Waits for the
/// copy to finish. Returns the mean nanoseconds per write, or -errno; each write's nanoseconds in
/// `times[0..<count]` when `times` is not NULL.
double cuffd_ref_wp_fault_cost(char *base, size_t length, int fd, int in_thread, const size_t *pages, size_t count,
                               int64_t *times);

#endif
