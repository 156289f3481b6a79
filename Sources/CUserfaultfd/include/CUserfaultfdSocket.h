// Unix-domain stream sockets that carry one descriptor with a message (SCM_RIGHTS), as VMMs hand
// a userfaultfd to a page server. C because the control-message macros (CMSG_*) are not
// importable into Swift.
#ifndef CUSERFAULTFD_SOCKET_H
#define CUSERFAULTFD_SOCKET_H

#include <stddef.h>
#include <sys/types.h>

/// Sends `length` bytes from `bytes` in one message, with descriptor `fd` attached (no descriptor
/// when `fd` < 0). Returns the bytes sent or -1 with errno set. Never raises SIGPIPE.
ssize_t cuffd_socket_send(int socket, const void *bytes, size_t length, int fd);

/// Receives one message of at most `capacity` bytes into `bytes`, and the descriptor it carries
/// into `*fd` (-1 when none), opened close-on-exec. A message that carried more than one
/// descriptor, or whose control data was truncated, keeps none of them (they are closed) and
/// fails with EBADMSG; a message longer than `capacity` fails with EMSGSIZE (its descriptor
/// closed). Returns the bytes received (0 when the peer has closed the connection) or -1 with
/// errno set.
ssize_t cuffd_socket_receive(int socket, void *bytes, size_t capacity, int *fd);

/// The process id of the peer of a connected Unix socket (SO_PEERCRED), or -1 with errno set.
pid_t cuffd_socket_peer_pid(int socket);

/// A listening Unix stream socket bound to `path` (close-on-exec; an existing socket file there
/// is not replaced: EADDRINUSE). Returns the descriptor or -1 with errno set; ENAMETOOLONG for a
/// path longer than a socket address holds.
int cuffd_socket_listen(const char *path, int backlog);

/// A Unix stream socket connected to `path` (close-on-exec), or -1 with errno set.
int cuffd_socket_connect(const char *path);

/// Accepts one connection (close-on-exec), or -1 with errno set.
int cuffd_socket_accept(int listener);

#endif /* CUSERFAULTFD_SOCKET_H */
