// The range ioctls with the package's one reading of the kernel's answer. C so that the SIGBUS
// handler can use the same rule as the Swift library; Swift calls these through its ioctl core.
#ifndef CUSERFAULTFD_ANSWER_H
#define CUSERFAULTFD_ANSWER_H

#include <stdint.h>

/// The range ioctls the core issues (the operand of `cuffd_range_ioctl`).
#define CUFFD_OP_COPY     0
#define CUFFD_OP_ZEROPAGE 1
#define CUFFD_OP_MOVE     2
#define CUFFD_OP_CONTINUE 3
#define CUFFD_OP_POISON   4
#define CUFFD_OP_WAKE     5

/// What an answer means; decided only by `cuffd_answer_classify`.
/// Every byte was done.
#define CUFFD_OUTCOME_DONE               0
/// EAGAIN after some progress: resume at `bytes_done` to learn the real state of the rest.
#define CUFFD_OUTCOME_PARTIAL            1
/// EEXIST: the page at `bytes_done` is already populated (someone else resolved it).
#define CUFFD_OUTCOME_ALREADY_PRESENT    2
/// MOVE's ENOENT: the source page at `bytes_done` is a hole (nothing to move).
#define CUFFD_OUTCOME_SOURCE_MISSING     3
/// MOVE's EBUSY: the source page at `bytes_done` is not exclusively mapped (fork, KSM, a pin).
#define CUFFD_OUTCOME_BUSY               4
/// EAGAIN with nothing done: a remove, unmap or remap event is pending; read events, then retry.
#define CUFFD_OUTCOME_RETRY_AFTER_EVENTS 5
/// ESRCH: the process whose memory this is has exited.
#define CUFFD_OUTCOME_PROCESS_GONE       6
/// Anything else: the operation cannot succeed as asked (`error` says why).
#define CUFFD_OUTCOME_FAILED             7

/// One range ioctl's answer: bytes done (never a negative progress field read as a count), the
/// errno (0 when done) and the outcome.
struct cuffd_answer {
  uint64_t bytes_done;
  int32_t error;
  int32_t outcome;
};

/// The rule, once: `result` and `error` as the ioctl returned them, `progress` the ioctl's
/// progress field (bytes when positive, a negated errno when nothing was done, untouched (0) after
/// an early argument check), `length` the bytes asked for.
struct cuffd_answer cuffd_answer_classify(int op, int result, int error, int64_t progress, uint64_t length);

/// Issues range ioctl `op` (a `CUFFD_OP_*`) on `fd` and classifies the answer. `source` is read by
/// COPY and MOVE only; `mode` is the ioctl's mode bits (WAKE has none). Async-signal-safe; does not
/// preserve errno.
struct cuffd_answer cuffd_range_ioctl(int fd, int op, uint64_t destination, uint64_t source, uint64_t length,
                                      uint64_t mode);

#endif /* CUSERFAULTFD_ANSWER_H */
