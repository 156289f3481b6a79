// epoll and eventfd for the snapshot pager's loops: Swift's Glibc module does not export them, and
// struct epoll_event is packed on x86_64, so tokens and event masks cross as plain arrays.
#ifndef CUSERFAULTFD_EPOLL_H
#define CUSERFAULTFD_EPOLL_H

#include <stdint.h>

/// Event bits the pager asks for and reads back.
enum {
  CUFFD_EPOLL_IN = 0x001,
  CUFFD_EPOLL_ERR = 0x008,
  CUFFD_EPOLL_HUP = 0x010,
  CUFFD_EPOLL_RDHUP = 0x2000,
};

/// epoll_create1(EPOLL_CLOEXEC).
int cuffd_epoll_create(void);
/// EPOLL_CTL_ADD of `fd` for `events`, reporting `token`.
int cuffd_epoll_add(int epfd, int fd, uint32_t events, uint64_t token);
/// EPOLL_CTL_DEL of `fd`.
int cuffd_epoll_remove(int epfd, int fd);
/// epoll_wait into `tokens` / `events` (`capacity` entries each); the count, 0 on EINTR, -1 on error.
int cuffd_epoll_wait(int epfd, uint64_t *tokens, uint32_t *events, int capacity, int timeout_ms);
/// eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC).
int cuffd_eventfd(void);
/// accept4 with SOCK_NONBLOCK | SOCK_CLOEXEC.
int cuffd_socket_accept_nonblocking(int listener);
/// Sets O_NONBLOCK on `fd` (the open file's flags: a dup shares them); 0 or -1.
int cuffd_set_nonblocking(int fd);

#endif
