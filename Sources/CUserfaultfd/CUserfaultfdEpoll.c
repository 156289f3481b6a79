#include "CUserfaultfdEpoll.h"

#include <errno.h>
#include <stddef.h>
#include <fcntl.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>

int cuffd_epoll_create(void) { return epoll_create1(EPOLL_CLOEXEC); }

int cuffd_epoll_add(int epfd, int fd, uint32_t events, uint64_t token) {
  struct epoll_event event = {.events = events, .data.u64 = token};
  return epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &event);
}

int cuffd_epoll_remove(int epfd, int fd) {
  struct epoll_event event = {0};
  return epoll_ctl(epfd, EPOLL_CTL_DEL, fd, &event);
}

int cuffd_epoll_wait(int epfd, uint64_t *tokens, uint32_t *events, int capacity, int timeout_ms) {
  struct epoll_event ready[64];
  if (capacity > 64) capacity = 64;
  int count = epoll_wait(epfd, ready, capacity, timeout_ms);
  if (count < 0) return errno == EINTR ? 0 : -1;
  for (int index = 0; index < count; index++) {
    tokens[index] = ready[index].data.u64;
    events[index] = ready[index].events;
  }
  return count;
}

int cuffd_eventfd(void) { return eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC); }

int cuffd_socket_accept_nonblocking(int listener) {
  return accept4(listener, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
}

int cuffd_set_nonblocking(int fd) {
  int flags = fcntl(fd, F_GETFL);
  if (flags < 0) return -1;
  return fcntl(fd, F_SETFL, flags | O_NONBLOCK);
}
