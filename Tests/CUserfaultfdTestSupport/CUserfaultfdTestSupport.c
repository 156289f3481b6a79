#include "CUserfaultfdTestSupport.h"

#include <errno.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

pid_t cuffd_test_fork_holder(int release_fd) {
  pid_t pid = fork();
  if (pid == 0) {
    char byte;
    while (read(release_fd, &byte, 1) < 0 && errno == EINTR) {}
    _exit(0);
  }
  return pid;
}

int cuffd_test_child_touch(const volatile unsigned char *address) {
  pid_t pid = fork();
  if (pid < 0) return -1;
  if (pid == 0) {
    // Default SIGBUS / SIGSEGV action, whatever handlers the test runner installed.
    signal(SIGBUS, SIG_DFL);
    signal(SIGSEGV, SIG_DFL);
    volatile unsigned char value = *address;
    (void)value;
    _exit(0);
  }
  int status = 0;
  while (waitpid(pid, &status, 0) < 0) {
    if (errno != EINTR) return -1;
  }
  if (WIFSIGNALED(status)) return WTERMSIG(status);
  return 0;
}

int cuffd_test_wait(pid_t pid) {
  int status = 0;
  while (waitpid(pid, &status, 0) < 0) {
    if (errno != EINTR) return -1;
  }
  return status;
}
