/*
 * "FILE:LINE: what" messages (fileerr.h).
 */
#include "fileerr.h"

#include <stdio.h>

int file_verror(char *err, size_t cap, const char *path, int line,
                const char *fmt, va_list ap) {
  if (err == NULL || cap == 0)
    return -1;
  int n = line > 0 ? snprintf(err, cap, "%s:%d: ", path, line)
                   : snprintf(err, cap, "%s: ", path);
  if (n < 0 || (size_t)n >= cap)
    return -1;
  vsnprintf(err + n, cap - (size_t)n, fmt, ap);
  return -1;
}

int file_error(char *err, size_t cap, const char *path, int line,
               const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  file_verror(err, cap, path, line, fmt, ap);
  va_end(ap);
  return -1;
}
