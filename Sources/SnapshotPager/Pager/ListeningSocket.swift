import CUserfaultfd
import Glibc
import SystemPackage
import Userfaultfd

/// Binding a pager socket where a killed pager may have left its path behind: a socket file that
/// nothing listens on is removed and the path reused; one something still listens on is refused,
/// as is any path that is not a socket. Then the mode and owner the jailer needs are set.
package enum ListeningSocket {
  package static func bind(_ path: String, access: PagerConfiguration.SocketAccess, backlog: Int = 128) throws(UserfaultfdError) -> UnixSocket {
    var info = stat()
    if lstat(path, &info) == 0 {
      guard info.st_mode & S_IFMT == S_IFSOCK else {
        throw .invalidArgument(.socket, .badConfiguration("\(path) exists and is not a socket: refusing to replace it"))
      }
      let probe = cuffd_socket_connect(path)
      if probe >= 0 {
        _ = close(probe)
        throw .invalidArgument(.socket, .badConfiguration("\(path): another process is listening on it (a pager already running?)"))
      }
      // ECONNREFUSED: a stale socket file, left by a pager that did not exit cleanly.
      guard errno == ECONNREFUSED else {
        throw .systemCallFailed("connect(\(path)) to check for a stale socket", Errno(rawValue: errno))
      }
      guard unlink(path) == 0 || errno == ENOENT else { throw .systemCallFailed("unlink(\(path))", Errno(rawValue: errno)) }
    }
    // Created with the final mode: the socket is never reachable with wider permissions.
    let previous = umask(0o777 & ~mode_t(access.mode))
    let socket: UnixSocket
    do {
      socket = try UnixSocket.listen(at: path, backlog: backlog)
    } catch {
      umask(previous)
      throw error
    }
    umask(previous)
    if access.owner != nil || access.group != nil {
      guard chown(path, access.owner ?? UInt32.max, access.group ?? UInt32.max) == 0 else {
        let error = Errno(rawValue: errno)
        socket.close()
        unlink(path)
        throw .systemCallFailed("chown(\(path))", error)
      }
    }
    guard chmod(path, mode_t(access.mode)) == 0 else {
      let error = Errno(rawValue: errno)
      socket.close()
      unlink(path)
      throw .systemCallFailed("chmod(\(path))", error)
    }
    return socket
  }
}
