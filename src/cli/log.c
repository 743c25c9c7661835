/*
 * The log of `tern serve` (log.h): logfmt lines, every value escaped by
 * one function, so nothing a peer sends can add a key or split a line
 * (issue 8, item 9; STYLE.md 16).
 */
#define _GNU_SOURCE
#include "log.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
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

/* ---- the line buffer -------------------------------------------------------
 */

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
static void put_value(struct log_line *l, const char *p, size_t n, size_t cut) {
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

/* ---- printf-style formats ------------------------------------------------ */

static bool key_char(char c) {
  return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' ||
         c == '.';
}

/* The C type of a conversion's argument. */
enum arg_type {
  A_NONE, /* no argument (an unknown conversion) */
  A_INT,
  A_LONG,
  A_LLONG,
  A_SSIZE,
  A_INTMAX,
  A_PTRDIFF,
  A_UINT,
  A_ULONG,
  A_ULLONG,
  A_SIZE,
  A_UINTMAX,
  A_DOUBLE,
  A_LDOUBLE,
  A_PTR,
  A_STR,
  A_N, /* %n: its pointer is taken, never written through */
};

/* One conversion spec of a printf format, rebuilt with '*' widths and
 * precisions made literal. */
struct spec {
  char text[48]; /* "%-*.3lld" as "%-12.3lld" */
  char len[3];   /* the length modifier: "", "l", "ll", "z", ... */
  size_t ll;     /* its length */
  char conv;     /* 'd', 's', ... */
};

/* Read the spec at f (its '%'; not "%%"): flags, width, precision,
 * length, conversion. A '*' takes its int from ap. Returns the format
 * past the spec. */
static const char *spec_read(const char *f, va_list *ap, struct spec *s) {
  size_t o = 0;
  s->text[o++] = *f++;
  while (*f && strchr("-+ #0", *f) && o < 8)
    s->text[o++] = *f++;
  for (int part = 0; part < 2; part++) { /* width, then .precision */
    if (part == 1) {
      if (*f != '.')
        break;
      s->text[o++] = *f++;
    }
    if (*f == '*') {
      o += (size_t)snprintf(s->text + o, sizeof s->text - o, "%d",
                            va_arg(*ap, int));
      f++;
    } else {
      while (*f >= '0' && *f <= '9' && o < 30)
        s->text[o++] = *f++;
    }
  }
  memset(s->len, 0, sizeof s->len);
  s->ll = 0;
  while (*f && strchr("hlLjzt", *f) && s->ll < 2)
    s->len[s->ll++] = *f, s->text[o++] = *f++;
  s->conv = *f ? *f++ : 's';
  s->text[o++] = s->conv;
  s->text[o] = '\0';
  return f;
}

/* The argument type the spec's length modifier and conversion say. */
static enum arg_type spec_type(const struct spec *s) {
  bool l1 = s->ll == 1 && s->len[0] == 'l', l2 = s->ll == 2 && s->len[0] == 'l';
  char m = s->len[0];
  switch (s->conv) {
  case 'd':
  case 'i':
    return l2         ? A_LLONG
           : l1       ? A_LONG
           : m == 'z' ? A_SSIZE
           : m == 'j' ? A_INTMAX
           : m == 't' ? A_PTRDIFF
                      : A_INT;
  case 'u':
  case 'x':
  case 'X':
  case 'o':
    return l2         ? A_ULLONG
           : l1       ? A_ULONG
           : m == 'z' ? A_SIZE
           : m == 'j' ? A_UINTMAX
           : m == 't' ? A_PTRDIFF
                      : A_UINT;
  case 'c':
    return A_INT;
  case 'e':
  case 'E':
  case 'f':
  case 'F':
  case 'g':
  case 'G':
  case 'a':
  case 'A':
    return m == 'L' ? A_LDOUBLE : A_DOUBLE;
  case 'p':
    return A_PTR;
  case 's':
    return A_STR;
  case 'n':
    return A_N;
  default:
    return A_NONE;
  }
}

/* snprintf of the next argument, of type t, with the spec's text; ap
 * moves past it. Returns snprintf's count (0 when nothing is printed). */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wformat-nonliteral"
static int format_arg(char *out, size_t cap, const char *spec,
                      enum arg_type t, va_list *ap) {
  switch (t) {
  case A_INT:
    return snprintf(out, cap, spec, va_arg(*ap, int));
  case A_LONG:
    return snprintf(out, cap, spec, va_arg(*ap, long));
  case A_LLONG:
    return snprintf(out, cap, spec, va_arg(*ap, long long));
  case A_SSIZE:
    return snprintf(out, cap, spec, va_arg(*ap, ssize_t));
  case A_INTMAX:
    return snprintf(out, cap, spec, va_arg(*ap, intmax_t));
  case A_PTRDIFF:
    return snprintf(out, cap, spec, va_arg(*ap, ptrdiff_t));
  case A_UINT:
    return snprintf(out, cap, spec, va_arg(*ap, unsigned));
  case A_ULONG:
    return snprintf(out, cap, spec, va_arg(*ap, unsigned long));
  case A_ULLONG:
    return snprintf(out, cap, spec, va_arg(*ap, unsigned long long));
  case A_SIZE:
    return snprintf(out, cap, spec, va_arg(*ap, size_t));
  case A_UINTMAX:
    return snprintf(out, cap, spec, va_arg(*ap, uintmax_t));
  case A_DOUBLE:
    return snprintf(out, cap, spec, va_arg(*ap, double));
  case A_LDOUBLE:
    return snprintf(out, cap, spec, va_arg(*ap, long double));
  case A_PTR:
    return snprintf(out, cap, spec, va_arg(*ap, void *));
  case A_STR: {
    const char *str = va_arg(*ap, const char *);
    return snprintf(out, cap, spec, str ? str : "(null)");
  }
  case A_N:
    (void)va_arg(*ap, void *);
    return 0;
  case A_NONE:
    return 0;
  }
  return 0;
}
#pragma GCC diagnostic pop

/* One conversion of a printf format, f at the '%': format it into v
 * (the value being composed) and return the format past it. A result
 * longer than the stack buffer is formatted again, from a copy of ap,
 * into one of its size. */
static const char *conversion(const char *f, va_list *ap, struct log_line *v) {
  if (f[1] == '%') {
    put(v, "%", 1);
    return f + 2;
  }
  struct spec s;
  f = spec_read(f, ap, &s);
  enum arg_type t = spec_type(&s);
  char small[128], *buf = small;
  va_list again;
  va_copy(again, *ap);
  int n = format_arg(small, sizeof small, s.text, t, ap);
  if (n >= (int)sizeof small && (buf = malloc((size_t)n + 1)) != NULL)
    format_arg(buf, (size_t)n + 1, s.text, t, &again);
  va_end(again);
  if (!buf) {
    v->oom = true;
  } else if (n > 0) {
    size_t k = (size_t)n;
    if (buf == small && k >= sizeof small)
      k = sizeof small - 1;
    put(v, buf, k);
  }
  if (buf != small)
    free(buf);
  return f;
}

void logf_(const char *fmt, ...) {
  struct log_line l, v;
  va_list ap;
  va_start(ap, fmt);
  log_line_init(&l);
  const char *f = fmt;
  while (*f) {
    while (*f == ' ')
      f++;
    if (!*f)
      break;
    /* the key: literal text up to '=' */
    const char *k = f;
    while (key_char(*f))
      f++;
    char key[64] = "badkey";
    if (f > k && *f == '=' && (size_t)(f - k) < sizeof key) {
      memcpy(key, k, (size_t)(f - k));
      key[f - k] = '\0';
      f++;
    } else {
      f = k; /* the whole token is the value */
    }
    /* the value: up to a literal space outside literal quotes */
    log_line_init(&v);
    bool quoted = false;
    while (*f && (quoted || *f != ' ')) {
      if (*f == '"') {
        quoted = !quoted; /* the format's own quotes: dropped */
        f++;
      } else if (*f == '%') {
        f = conversion(f, &ap, &v);
      } else {
        put(&v, f, 1);
        f++;
      }
    }
    put_key(&l, key);
    put_value(&l, v.buf ? v.buf : "", v.len, LOG_VALUE_MAX);
    if (v.oom)
      l.oom = true;
    free(v.buf);
  }
  va_end(ap);
  log_line_emit(&l);
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
