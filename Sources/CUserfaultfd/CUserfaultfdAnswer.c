// The package's reading of a range ioctl's answer (see CUserfaultfdAnswer.h). Every caller, Swift
// or C, signal handler or not, goes through cuffd_range_ioctl or cuffd_answer_classify.
#include "CUserfaultfd.h"

struct cuffd_answer cuffd_answer_classify(int op, int result, int error, int64_t progress, uint64_t length) {
  struct cuffd_answer answer = {.bytes_done = length, .error = 0, .outcome = CUFFD_OUTCOME_DONE};
  if (result == 0) return answer;
  // A negative progress field is -errno, never a count; a count is never more than was asked.
  answer.bytes_done = progress > 0 ? ((uint64_t)progress < length ? (uint64_t)progress : length) : 0;
  answer.error = error;
  switch (error) {
  case EEXIST: answer.outcome = CUFFD_OUTCOME_ALREADY_PRESENT; break;
  case EAGAIN:
    answer.outcome = answer.bytes_done > 0 ? CUFFD_OUTCOME_PARTIAL : CUFFD_OUTCOME_RETRY_AFTER_EVENTS;
    break;
  case ESRCH: answer.outcome = CUFFD_OUTCOME_PROCESS_GONE; break;
  // MOVE alone gives these their own meaning: COPY's ENOENT is a destination with no VMA.
  case ENOENT: answer.outcome = op == CUFFD_OP_MOVE ? CUFFD_OUTCOME_SOURCE_MISSING : CUFFD_OUTCOME_FAILED; break;
  case EBUSY: answer.outcome = op == CUFFD_OP_MOVE ? CUFFD_OUTCOME_BUSY : CUFFD_OUTCOME_FAILED; break;
  default: answer.outcome = CUFFD_OUTCOME_FAILED; break;
  }
  return answer;
}

struct cuffd_answer cuffd_range_ioctl(int fd, int op, uint64_t destination, uint64_t source, uint64_t length,
                                      uint64_t mode) {
  int result;
  int64_t progress = 0;
  switch (op) {
  case CUFFD_OP_COPY: {
    struct cuffd_copy arg = {.dst = destination, .src = source, .len = length, .mode = mode, .copy = 0};
    result = cuffd_ioctl_copy(fd, &arg);
    progress = arg.copy;
    break;
  }
  case CUFFD_OP_ZEROPAGE: {
    struct cuffd_zeropage arg = {.range = {.start = destination, .len = length}, .mode = mode, .zeropage = 0};
    result = cuffd_ioctl_zeropage(fd, &arg);
    progress = arg.zeropage;
    break;
  }
  case CUFFD_OP_MOVE: {
    struct cuffd_move arg = {.dst = destination, .src = source, .len = length, .mode = mode, .move = 0};
    result = cuffd_ioctl_move(fd, &arg);
    progress = arg.move;
    break;
  }
  case CUFFD_OP_CONTINUE: {
    struct cuffd_continue arg = {.range = {.start = destination, .len = length}, .mode = mode, .mapped = 0};
    result = cuffd_ioctl_continue(fd, &arg);
    progress = arg.mapped;
    break;
  }
  case CUFFD_OP_POISON: {
    struct cuffd_poison arg = {.range = {.start = destination, .len = length}, .mode = mode, .updated = 0};
    result = cuffd_ioctl_poison(fd, &arg);
    progress = arg.updated;
    break;
  }
  case CUFFD_OP_WAKE: {
    struct cuffd_range arg = {.start = destination, .len = length};
    result = cuffd_ioctl_wake(fd, &arg);  // all or nothing: no progress field
    break;
  }
  default:
    return cuffd_answer_classify(op, -1, EINVAL, 0, length);
  }
  return cuffd_answer_classify(op, result, result == 0 ? 0 : errno, progress, length);
}
