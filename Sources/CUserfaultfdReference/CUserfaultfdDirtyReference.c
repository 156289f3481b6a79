// The fork() copy-on-write snapshot `uffd bench dirty` compares write protection against. The child
// runs only async-signal-safe calls (pwrite, write, read, _exit): the parent is multi-threaded.
#include "CUserfaultfdReference.h"

#include <errno.h>
#include <unistd.h>

int cuffd_ref_fork_snapshot(const char *base, size_t length, int fd, int *done_fd, int *release_fd) {
  int done[2], release[2];
  if (pipe(done) != 0) return -errno;
  if (pipe(release) != 0) {
    int error = errno;
    close(done[0]);
    close(done[1]);
    return -error;
  }
  pid_t pid = fork();
  if (pid < 0) {
    int error = errno;
    close(done[0]); close(done[1]); close(release[0]); close(release[1]);
    return -error;
  }
  if (pid == 0) {
    close(done[0]);
    close(release[1]);
    size_t offset = 0;
    int status = 0;
    while (offset < length) {
      size_t chunk = length - offset < (1 << 20) ? length - offset : (1 << 20);
      ssize_t n = pwrite(fd, base + offset, chunk, (off_t)offset);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) { status = 1; break; }
      offset += (size_t)n;
    }
    char byte = (char)status;
    (void)!write(done[1], &byte, 1);
    (void)!read(release[0], &byte, 1);  // returns 0 once the parent closes its end
    _exit(status);
  }
  close(done[1]);
  close(release[0]);
  *done_fd = done[0];
  *release_fd = release[1];
  return pid;
}
