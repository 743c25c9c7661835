/*
 * The log of `tern serve` (log.h): logfmt lines, every value escaped by
 * one function, so nothing a peer sends can add a key or split a line
 * (issue 8, item 9; STYLE.md 16).
 */
#define _GNU_SOURCE
#include "log.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <syslog.h>
#include <time.h>
#include <unistd.h>

static atomic_bool g_syslog;

void log_use_syslog(bool on) { atomic_store(&g_syslog, on); }

const char *log_u(char buf[24], unsigned long long v) {
  snprintf(buf, 24, "%llu", v);
  return buf;
}

/* Does the value need quotes? Empty, or any byte that is not printable
 * ASCII, or one of the four that logfmt gives a meaning: space = " \ */
static bool needs_quotes(const char *p, size_t n) {
  if (n == 0)
    return true;
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)p[i];
    if (c <= 0x20 || c >= 0x7f || c == '=' || c == '"' || c == '\\')
      return true;
  }
  return false;
}

/* The escape of one byte inside quotes, in out (NUL-terminated). */
static size_t esc_byte(unsigned char c, char out[5]) {
  switch (c) {
  case '"':
    return (size_t)snprintf(out, 5, "\\\"");
  case '\\':
    return (size_t)snprintf(out, 5, "\\\\");
  case '\n':
    return (size_t)snprintf(out, 5, "\\n");
  case '\r':
    return (size_t)snprintf(out, 5, "\\r");
  case '\t':
    return (size_t)snprintf(out, 5, "\\t");
  default:
    if (c < 0x20 || c >= 0x7f)
      return (size_t)snprintf(out, 5, "\\x%02X", c);
    out[0] = (char)c;
    out[1] = '\0';
    return 1;
  }
}

const char *log_escape(const char *p, size_t n, char *buf, size_t cap) {
  size_t o = 0;
  if (cap == 0)
    return buf;
  bool q = needs_quotes(p, n);
  if (q && cap > 1)
    buf[o++] = '"';
  for (size_t i = 0; i < n; i++) {
    char e[5];
    size_t k = esc_byte((unsigned char)p[i], e);
    if (o + k + (q ? 1 : 0) + 1 > cap)
      break;
    memcpy(buf + o, e, k);
    o += k;
  }
  if (q && o + 2 <= cap)
    buf[o++] = '"';
  buf[o] = '\0';
  return buf;
}

/* ---- the line buffer ------------------------------------------------------- */

void log_line_init(struct log_line *l) {
  l->buf = NULL;
  l->len = l->cap = 0;
  l->oom = false;
}

static bool reserve(struct log_line *l, size_t more) {
  if (l->oom)
    return false;
  if (l->len + more + 1 <= l->cap)
    return true;
  size_t cap = l->cap ? l->cap : 256;
  while (cap < l->len + more + 1)
    cap *= 2;
  char *b = realloc(l->buf, cap);
  if (!b) {
    l->oom = true;
    return false;
  }
  l->buf = b;
  l->cap = cap;
  return true;
}

static void put(struct log_line *l, const char *p, size_t n) {
  if (!reserve(l, n))
    return;
  memcpy(l->buf + l->len, p, n);
  l->len += n;
  l->buf[l->len] = '\0';
}

static void put_key(struct log_line *l, const char *key) {
  bool ok = key && *key;
  for (const char *k = key; ok && *k; k++)
    ok = (*k >= 'a' && *k <= 'z') || (*k >= '0' && *k <= '9') || *k == '_' ||
         *k == '.';
  if (l->len)
    put(l, " ", 1);
  if (!ok)
    key = "badkey";
  put(l, key, strlen(key));
  put(l, "=", 1);
}

/* Escaped value, quoted when needed; `cut` bounds the raw octets taken. */
static void put_value(struct log_line *l, const char *p, size_t n,
                      size_t cut) {
  bool more = n > cut;
  if (more)
    n = cut;
  bool q = more || needs_quotes(p, n);
  if (q)
    put(l, "\"", 1);
  for (size_t i = 0; i < n; i++) {
    char e[5];
    size_t k = esc_byte((unsigned char)p[i], e);
    put(l, e, k);
  }
  if (more)
    put(l, "...", 3);
  if (q)
    put(l, "\"", 1);
}

void log_line_kv(struct log_line *l, const char *key, const char *value) {
  put_key(l, key);
  if (!value)
    value = "-";
  put_value(l, value, strlen(value), LOG_VALUE_MAX);
}

void log_line_list(struct log_line *l, const char *key,
                   const char *const *items, size_t n) {
  struct log_line raw;
  log_line_init(&raw);
  for (size_t i = 0; i < n; i++) {
    put(&raw, i ? ",<" : "<", i ? 2 : 1);
    put(&raw, items[i], strlen(items[i]));
    put(&raw, ">", 1);
  }
  put_key(l, key);
  if (raw.oom)
    l->oom = true;
  put_value(l, raw.buf ? raw.buf : "", raw.len, (size_t)-1);
  free(raw.buf);
}

void log_line_emit(struct log_line *l) {
  if (l->oom) {
    /* keep what fits: the pairs written so far are whole */
    l->oom = false;
    put(l, " truncated=yes", 14);
  }
  const char *text = l->buf ? l->buf : "";
  if (atomic_load(&g_syslog)) {
    syslog(LOG_MAIL | LOG_INFO, "%s", text);
  } else {
    char ts[32];
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    size_t tl = strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%SZ ", &tm);
    size_t n = strlen(text);
    char *out = malloc(tl + n + 1);
    if (out) { /* one write: lines from several threads never mix */
      memcpy(out, ts, tl);
      memcpy(out + tl, text, n);
      out[tl + n] = '\n';
      ssize_t w = write(STDERR_FILENO, out, tl + n + 1);
      (void)w;
      free(out);
    } else {
      fprintf(stderr, "%s%s\n", ts, text);
    }
  }
  free(l->buf);
  log_line_init(l);
}

void log_kv(const char *key, const char *value, ...) {
  struct log_line l;
  va_list ap;
  log_line_init(&l);
  log_line_kv(&l, key, value);
  va_start(ap, value);
  for (const char *k; (k = va_arg(ap, const char *)) != NULL;)
    log_line_kv(&l, k, va_arg(ap, const char *));
  va_end(ap);
  log_line_emit(&l);
}
