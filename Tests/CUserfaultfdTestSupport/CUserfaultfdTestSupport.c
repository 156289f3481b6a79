#include "CUserfaultfdTestSupport.h"

#include <errno.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

static int wait_for(pid_t pid, int *status) {
  while (waitpid(pid, status, 0) < 0) {
    if (errno != EINTR) return -1;
  }
  return 0;
}

pid_t cuffd_test_fork_holder(void) {
  pid_t parent = getpid();
  pid_t pid = fork();
  if (pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(0);
    for (;;) pause();
  }
  return pid;
}

int cuffd_test_kill_and_wait(pid_t pid) {
  if (kill(pid, SIGKILL) < 0) return -1;
  int status = 0;
  return wait_for(pid, &status);
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
  if (wait_for(pid, &status) < 0) return -1;
  if (WIFSIGNALED(status)) return WTERMSIG(status);
  return 0;
}

int cuffd_test_gettid(void) { return (int)syscall(SYS_gettid); }
