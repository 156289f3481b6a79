#include "CUserfaultfdTestSupport.h"
#include "CUserfaultfd.h"

#include <string.h>
#include <sys/mman.h>

#include <errno.h>
#include <signal.h>
#include <fcntl.h>
#include <sys/prctl.h>
#include <sys/resource.h>
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

static void exit_42(int signo) {
  (void)signo;
  _exit(42);
}

int cuffd_test_sigbus_chain_in_child(void) {
  pid_t pid = fork();
  if (pid < 0) return -1;
  if (pid == 0) {
    // Start from a clean slate: the parent may have installed the package handler already.
    if (cuffd_sigbus_uninstall() < 0) _exit(3);
    struct sigaction earlier;
    memset(&earlier, 0, sizeof earlier);
    earlier.sa_handler = exit_42;
    sigemptyset(&earlier.sa_mask);
    if (sigaction(SIGBUS, &earlier, NULL) < 0) _exit(4);
    if (cuffd_sigbus_install() < 0) _exit(5);
    int fd = memfd_create("sigbus", MFD_CLOEXEC);
    if (fd < 0) _exit(6);
    volatile unsigned char *page = mmap(NULL, 4096, PROT_READ, MAP_SHARED, fd, 0);
    if (page == MAP_FAILED) _exit(7);
    volatile unsigned char value = page[0];  // Past EOF: SIGBUS (BUS_ADRERR), outside any region.
    (void)value;
    _exit(0);
  }
  int status = 0;
  if (wait_for(pid, &status) < 0) return -1;
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return -1;
}

int cuffd_test_fork_and_reap(void) {
  pid_t pid = fork();
  if (pid < 0) return -1;
  if (pid == 0) _exit(0);
  int status = 0;
  if (wait_for(pid, &status) < 0) return -1;
  return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : -1;
}

int cuffd_test_count_open_descriptors(void) {
  int count = 0;
  for (int fd = 0; fd < 65536; fd++) {
    if (fcntl(fd, F_GETFD) >= 0) count++;
  }
  return count;
}

int cuffd_test_limit_address_space(unsigned long long bytes) {
  struct rlimit limit = {.rlim_cur = bytes, .rlim_max = RLIM_INFINITY};
  struct rlimit old;
  if (getrlimit(RLIMIT_AS, &old) < 0) return -1;
  limit.rlim_max = old.rlim_max;
  return setrlimit(RLIMIT_AS, &limit);
}

int cuffd_test_raise_sigbus(void) { return raise(SIGBUS); }

static volatile sig_atomic_t noted_sigbus = 0;
static void note_sigbus(int signo) { (void)signo; noted_sigbus++; }

int cuffd_test_install_noting_sigbus_handler(void) {
  struct sigaction action;
  memset(&action, 0, sizeof action);
  action.sa_handler = note_sigbus;
  sigemptyset(&action.sa_mask);
  return sigaction(SIGBUS, &action, NULL);
}

int cuffd_test_noted_sigbus_count(void) { return noted_sigbus; }
