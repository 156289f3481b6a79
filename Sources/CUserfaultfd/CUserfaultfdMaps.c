#include "CUserfaultfdMaps.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <unistd.h>

// A line reader over a stack buffer. Lines longer than the buffer (a very long path) are cut:
// only their first fields matter here.
struct lines {
  int fd;
  char buffer[4096];
  size_t length;
  size_t position;
  int eof;
};

static int lines_open(struct lines *l, const char *path) {
  do { l->fd = open(path, O_RDONLY | O_CLOEXEC); } while (l->fd < 0 && errno == EINTR);
  l->length = 0;
  l->position = 0;
  l->eof = 0;
  return l->fd < 0 ? -1 : 0;
}

static void lines_close(struct lines *l) {
  int saved = errno;
  close(l->fd);
  errno = saved;
}

// Returns the next line (NUL-terminated, without its newline) or NULL at the end or on error.
static char *lines_next(struct lines *l) {
  for (;;) {
    char *start = l->buffer + l->position;
    char *newline = memchr(start, '\n', l->length - l->position);
    if (newline) {
      *newline = 0;
      l->position = (size_t)(newline - l->buffer) + 1;
      return start;
    }
    // Keep the partial line, then read more behind it.
    size_t rest = l->length - l->position;
    if (l->eof) {
      if (rest == 0) return NULL;
      l->buffer[l->length < sizeof l->buffer ? l->length : sizeof l->buffer - 1] = 0;
      l->position = l->length;
      return start;
    }
    if (rest == sizeof l->buffer - 1 || rest == sizeof l->buffer) {
      // A line longer than the buffer: keep its head, drop the rest of it.
      l->buffer[sizeof l->buffer - 1] = 0;
      char c;
      ssize_t n;
      do { n = read(l->fd, &c, 1); } while ((n == 1 && c != '\n') || (n < 0 && errno == EINTR));
      l->length = 0;
      l->position = 0;
      if (n <= 0) l->eof = 1;
      return l->buffer;
    }
    memmove(l->buffer, start, rest);
    l->length = rest;
    l->position = 0;
    ssize_t n;
    do { n = read(l->fd, l->buffer + l->length, sizeof l->buffer - 1 - l->length); } while (n < 0 && errno == EINTR);
    if (n < 0) return NULL;
    if (n == 0) l->eof = 1;
    l->length += (size_t)n;
  }
}

static uintptr_t parse_hex(const char **cursor) {
  uintptr_t value = 0;
  const char *p = *cursor;
  for (;; p++) {
    char c = *p;
    if (c >= '0' && c <= '9') value = value * 16 + (uintptr_t)(c - '0');
    else if (c >= 'a' && c <= 'f') value = value * 16 + (uintptr_t)(c - 'a' + 10);
    else break;
  }
  *cursor = p;
  return value;
}

static const char *skip_field(const char *p) {
  while (*p && *p != ' ') p++;
  while (*p == ' ') p++;
  return p;
}

// Parses a maps-style header line "start-end perms offset dev inode   path". Returns 1 when it is one.
static int parse_header(const char *line, struct cuffd_vma *vma) {
  const char *p = line;
  if (!((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'f'))) return 0;
  vma->start = parse_hex(&p);
  if (*p != '-') return 0;
  p++;
  vma->end = parse_hex(&p);
  if (*p != ' ') return 0;
  p++;
  if (strlen(p) < 4) return 0;
  vma->readable = p[0] == 'r';
  vma->writable = p[1] == 'w';
  vma->executable = p[2] == 'x';
  vma->shared = p[3] == 's';
  p = skip_field(p);  // perms
  p = skip_field(p);  // offset
  p = skip_field(p);  // device
  const char *inode = p;
  p = skip_field(p);  // inode
  int no_inode = inode[0] == '0' && (inode[1] == ' ' || inode[1] == 0);
  int no_path = *p == 0;
  int anon_name = strncmp(p, "[anon:", 6) == 0 || strcmp(p, "[heap]") == 0 || strcmp(p, "[stack]") == 0;
  vma->anonymous = no_inode && (no_path || anon_name);
  return 1;
}

int cuffd_vma_lookup(uintptr_t address, struct cuffd_vma *out) {
  struct lines l;
  if (lines_open(&l, "/proc/self/maps") < 0) return -1;
  int found = 0;
  char *line;
  while ((line = lines_next(&l)) != NULL) {
    struct cuffd_vma vma;
    if (!parse_header(line, &vma)) continue;
    if (vma.start <= address && address < vma.end) {
      *out = vma;
      found = 1;
      break;
    }
    if (vma.start > address) break;  // sorted by address
  }
  lines_close(&l);
  return found;
}

int cuffd_vma_has_flag(uintptr_t address, const char *flag) {
  struct lines l;
  if (lines_open(&l, "/proc/self/smaps") < 0) return -1;
  int inside = 0;
  int result = -1;
  char *line;
  while ((line = lines_next(&l)) != NULL) {
    struct cuffd_vma vma;
    if (strncmp(line, "VmFlags:", 8) == 0) {
      if (!inside) continue;
      result = 0;
      for (const char *p = line + 8; *p; p++) {
        if (p[0] == flag[0] && p[1] == flag[1] && (p[-1] == ' ') && (p[2] == ' ' || p[2] == 0)) {
          result = 1;
          break;
        }
      }
      break;
    }
    if (strchr(line, ':') != NULL && strchr(line, '-') == NULL) continue;  // a "Key: value" line
    if (parse_header(line, &vma)) inside = vma.start <= address && address < vma.end;
  }
  lines_close(&l);
  return result;
}

long cuffd_vma_kernel_page_size(uintptr_t address) {
  struct lines l;
  if (lines_open(&l, "/proc/self/smaps") < 0) return -1;
  int inside = 0;
  long result = 0;
  char *line;
  while ((line = lines_next(&l)) != NULL) {
    struct cuffd_vma vma;
    if (strncmp(line, "KernelPageSize:", 15) == 0) {
      if (!inside) continue;
      long kib = 0;
      for (const char *p = line + 15; *p; p++) {
        if (*p >= '0' && *p <= '9') kib = kib * 10 + (*p - '0');
        else if (kib > 0) break;
      }
      result = kib * 1024;
      break;
    }
    if (strchr(line, ':') != NULL && strchr(line, '-') == NULL) continue;  // a "Key: value" line
    if (parse_header(line, &vma)) inside = vma.start <= address && address < vma.end;
  }
  lines_close(&l);
  return result;
}
