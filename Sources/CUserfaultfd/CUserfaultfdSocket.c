// SCM_RIGHTS messaging on Unix stream sockets (see CUserfaultfdSocket.h).
#include "CUserfaultfd.h"

#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>

ssize_t cuffd_socket_send(int socket, const void *bytes, size_t length, int fd) {
  struct iovec io = {.iov_base = (void *)bytes, .iov_len = length};
  union {
    char buffer[CMSG_SPACE(sizeof(int))];
    struct cmsghdr align;
  } control;
  memset(&control, 0, sizeof control);
  struct msghdr message = {.msg_iov = &io, .msg_iovlen = 1};
  if (fd >= 0) {
    message.msg_control = control.buffer;
    message.msg_controllen = sizeof control.buffer;
    struct cmsghdr *header = CMSG_FIRSTHDR(&message);
    header->cmsg_level = SOL_SOCKET;
    header->cmsg_type = SCM_RIGHTS;
    header->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(header), &fd, sizeof(int));
  }
  ssize_t sent;
  do {
    sent = sendmsg(socket, &message, MSG_NOSIGNAL);
  } while (sent < 0 && errno == EINTR);
  return sent;
}

// Closes every descriptor a control message carried.
static void close_all(struct msghdr *message) {
  for (struct cmsghdr *header = CMSG_FIRSTHDR(message); header; header = CMSG_NXTHDR(message, header)) {
    if (header->cmsg_level != SOL_SOCKET || header->cmsg_type != SCM_RIGHTS) continue;
    size_t count = (header->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (size_t i = 0; i < count; i++) {
      int fd;
      memcpy(&fd, CMSG_DATA(header) + i * sizeof(int), sizeof(int));
      close(fd);
    }
  }
}

ssize_t cuffd_socket_receive(int socket, void *bytes, size_t capacity, int *fd) {
  *fd = -1;
  struct iovec io = {.iov_base = bytes, .iov_len = capacity};
  // Room for a few descriptors, so a sender that attaches more is detected (and refused) rather
  // than silently truncated.
  union {
    char buffer[CMSG_SPACE(4 * sizeof(int))];
    struct cmsghdr align;
  } control;
  memset(&control, 0, sizeof control);
  struct msghdr message = {.msg_iov = &io, .msg_iovlen = 1, .msg_control = control.buffer,
                           .msg_controllen = sizeof control.buffer};
  ssize_t received;
  do {
    received = recvmsg(socket, &message, MSG_CMSG_CLOEXEC);
  } while (received < 0 && errno == EINTR);
  if (received < 0) return -1;
  int count = 0, found = -1;
  for (struct cmsghdr *header = CMSG_FIRSTHDR(&message); header; header = CMSG_NXTHDR(&message, header)) {
    if (header->cmsg_level != SOL_SOCKET || header->cmsg_type != SCM_RIGHTS) continue;
    size_t n = (header->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    if (n >= 1 && found < 0) memcpy(&found, CMSG_DATA(header), sizeof(int));
    count += (int)n;
  }
  if ((message.msg_flags & MSG_CTRUNC) || count > 1) {
    close_all(&message);
    errno = EBADMSG;
    return -1;
  }
  if (message.msg_flags & MSG_TRUNC) {
    close_all(&message);
    errno = EMSGSIZE;
    return -1;
  }
  *fd = found;
  return received;
}

pid_t cuffd_socket_peer_pid(int socket) {
  struct ucred credentials;
  socklen_t length = sizeof credentials;
  if (getsockopt(socket, SOL_SOCKET, SO_PEERCRED, &credentials, &length) < 0) return -1;
  return credentials.pid;
}

static int fill_address(struct sockaddr_un *address, const char *path) {
  memset(address, 0, sizeof *address);
  address->sun_family = AF_UNIX;
  size_t length = strlen(path);
  if (length == 0 || length >= sizeof address->sun_path) {
    errno = length == 0 ? EINVAL : ENAMETOOLONG;
    return -1;
  }
  memcpy(address->sun_path, path, length);
  return 0;
}

int cuffd_socket_listen(const char *path, int backlog) {
  struct sockaddr_un address;
  if (fill_address(&address, path) < 0) return -1;
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  if (bind(fd, (struct sockaddr *)&address, sizeof address) < 0 || listen(fd, backlog) < 0) {
    int saved = errno;
    close(fd);
    errno = saved;
    return -1;
  }
  return fd;
}

int cuffd_socket_connect(const char *path) {
  struct sockaddr_un address;
  if (fill_address(&address, path) < 0) return -1;
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  int result;
  do {
    result = connect(fd, (struct sockaddr *)&address, sizeof address);
  } while (result < 0 && errno == EINTR);
  if (result < 0) {
    int saved = errno;
    close(fd);
    errno = saved;
    return -1;
  }
  return fd;
}

int cuffd_socket_accept(int listener) {
  int fd;
  do {
    fd = accept4(listener, NULL, NULL, SOCK_CLOEXEC);
  } while (fd < 0 && errno == EINTR);
  return fd;
}
