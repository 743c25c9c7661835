/*
 * The log of `tern serve`: one line per event, "TIME key=value ...", on
 * stderr or syslog (LOG_MAIL).
 *
 * Every value goes through one escaper, so no value can forge a key
 * (logfmt rules): a value that is empty or holds a space, '=', '"', '\',
 * a control character or a byte over 0x7e is written in double quotes,
 * with \" \\ \n \r \t and \xHH escapes; anything else is written bare.
 * Keys are literals of the program ([a-z0-9_.]); a key with any other
 * byte is written as "badkey". The printf-style logf_() below keys its
 * values by the format's literal text only and escapes every value it
 * composes the same way: no argument can add a key.
 *
 *   log_kv("session", id, "event", "connect", "client", addr,
 *          "port", LOG_U(port), NULL);
 *
 * Thread safety: every function may be called from any thread; a line is
 * written with one write (stderr) or one syslog() call.
 */
#ifndef TERN_CLI_LOG_H
#define TERN_CLI_LOG_H

#include <stdbool.h>
#include <stddef.h>

/* Longest value written as it is; a longer one is cut and ends in "..."
 * (inside the quotes). Lists (log_line_list) are never cut. */
#define LOG_VALUE_MAX 1024

/* Send lines to syslog (true) or stderr (false, the default). */
void log_use_syslog(bool on);

/*
 * One line of key/value pairs: key, value, key, value, ..., NULL. A NULL
 * value is written as "-". Values are copied and escaped; nothing is
 * kept after the call.
 */
void log_kv(const char *key, const char *value, ...) __attribute__((sentinel));

/* A line built piece by piece (for fields made in a loop). The buffer
 * grows as needed; on out-of-memory the line ends in "truncated=yes". */
struct log_line {
  char *buf;
  size_t len, cap;
  bool oom;
};

void log_line_init(struct log_line *l);
/* Add key=value (value escaped, cut at LOG_VALUE_MAX). */
void log_line_kv(struct log_line *l, const char *key, const char *value);
/* Add key=<item1>,<item2>,... with every item: the whole list is one
 * escaped value, never cut (e.g. every recipient of a message). */
void log_line_list(struct log_line *l, const char *key,
                   const char *const *items, size_t n);
/* Write the line and free its buffer. */
void log_line_emit(struct log_line *l);

/*
 * printf-style lines, for call sites written as
 *   logf_("session=%s event=message from=<%s> size=%llu", id, from, n);
 * The format's literal text alone makes the keys: it is cut into
 * key=value tokens at its own spaces (not at spaces inside literal
 * quotes), each token's value is composed from its literal text and its
 * conversions, then escaped as one value by the rules above (literal
 * quotes around a whole value in the format, as in detail=\"%s\", are
 * the format's and are dropped first). So an argument can never end a
 * value or start a key, whatever it holds. A token that does not start
 * with a literal key is written as badkey=VALUE. Conversions: those of
 * printf with their flags, width, precision and length (no %n).
 */
void logf_(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Decimal text of v in buf (for LOG_U). */
const char *log_u(char buf[24], unsigned long long v);
/* LOG_U(v): v as a decimal value, valid until the end of the enclosing
 * block (a compound literal holds the text). */
#define LOG_U(v) log_u((char[24]){0}, (unsigned long long)(v))

/*
 * Escape p[0..n) as one logfmt value into buf (NUL-terminated, at most
 * cap - 1 octets; cut at a whole escape). Exposed for the tests' sake and
 * for messages that are not log lines. Returns buf.
 */
const char *log_escape(const char *p, size_t n, char *buf, size_t cap);

#endif /* TERN_CLI_LOG_H */
