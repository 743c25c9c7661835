/*
 * Messages about a file the program reads (the configuration, the users
 * file): "FILE:LINE: what", or "FILE: what" about the file as a whole.
 */
#ifndef TERN_CLI_FILEERR_H
#define TERN_CLI_FILEERR_H

#include <stdarg.h>
#include <stddef.h>

/*
 * Write "PATH:LINE: " (line > 0) or "PATH: " (line 0), then fmt, into
 * err[0..cap), cut to fit. Nothing is written when err is NULL or cap
 * is 0. Returns -1, so that `return file_error(...)` reports a failure.
 */
int file_error(char *err, size_t cap, const char *path, int line,
               const char *fmt, ...) __attribute__((format(printf, 5, 6)));
int file_verror(char *err, size_t cap, const char *path, int line,
                const char *fmt, va_list ap)
    __attribute__((format(printf, 5, 0)));

#endif /* TERN_CLI_FILEERR_H */
