/*
 * tern send — the message helpers that need no session: address lists,
 * header fields, the Date: and Message-ID: it adds (send_msg.h).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <sysexits.h>
#include <time.h>

#include "send_msg.h"

/* ---- memory and string lists --------------------------------------------- */

void *send_xmalloc(size_t n) {
  void *p = malloc(n ? n : 1);
  if (!p) {
    fprintf(stderr, "tern send: out of memory\n");
    exit(EX_OSERR);
  }
  return p;
}

char *send_xstrndup(const char *p, size_t n) {
  char *s = send_xmalloc(n + 1);
  memcpy(s, p, n);
  s[n] = '\0';
  return s;
}

void send_sv_push(struct strvec *v, char *s) {
  for (size_t i = 0; i < v->n; i++)
    if (!strcmp(v->v[i], s)) { /* exact duplicates are sent once */
      free(s);
      return;
    }
  if (v->n == v->cap) {
    size_t cap = v->cap ? v->cap * 2 : 8;
    char **n = realloc(v->v, cap * sizeof *n);
    if (!n) {
      fprintf(stderr, "tern send: out of memory\n");
      exit(EX_OSERR);
    }
    v->v = n;
    v->cap = cap;
  }
  v->v[v->n++] = s;
}

void send_sv_free(struct strvec *v) {
  for (size_t i = 0; i < v->n; i++)
    free(v->v[i]);
  free(v->v);
  v->v = NULL;
  v->n = v->cap = 0;
}

/* ---- addresses
 * ---------------------------------------------------------------- */

/* One element of an address list being collected: the text outside
 * <...> and the text inside (the address when there is one). */
struct addr_acc {
  char *plain, *angle;
  size_t pl, al;
  bool in_angle, had_angle;
};

static bool is_fws(char c) {
  return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

/* Add c to the part being read: inside <...> or outside. */
static void acc_put(struct addr_acc *a, char c) {
  if (a->in_angle)
    a->angle[a->al++] = c;
  else
    a->plain[a->pl++] = c;
}

/* A quoted string at p[i], copied with its quotes and escapes, line
 * breaks dropped. Returns the index past it. */
static size_t copy_quoted(const char *p, size_t n, size_t i,
                          struct addr_acc *a) {
  acc_put(a, '"');
  for (i++; i < n && p[i] != '"'; i++) {
    if (p[i] == '\\' && i + 1 < n)
      acc_put(a, p[i++]);
    if (p[i] != '\r' && p[i] != '\n')
      acc_put(a, p[i]);
  }
  if (i < n)
    acc_put(a, '"');
  return i + 1;
}

/* A domain literal at p[i], e.g. [IPv6:::1], copied whole without white
 * space. Returns the index past it. */
static size_t copy_literal(const char *p, size_t n, size_t i,
                           struct addr_acc *a) {
  for (; i < n && p[i] != ']'; i++)
    if (!is_fws(p[i]))
      acc_put(a, p[i]);
  if (i < n)
    acc_put(a, ']');
  return i + 1;
}

/* A comment at p[i], nested, dropped. Returns the index past it. */
static size_t skip_comment(const char *p, size_t n, size_t i) {
  int depth = 0;
  for (; i < n; i++) {
    if (p[i] == '\\' && i + 1 < n) {
      i++;
      continue;
    }
    if (p[i] == '(')
      depth++;
    else if (p[i] == ')' && --depth == 0)
      break;
  }
  return i + 1;
}

/* The element ends (',' or ';'): its address, the <...> one if any
 * (without a source route "@a,@b:"), goes to out. */
static void end_element(struct addr_acc *a, struct strvec *out) {
  const char *s = a->had_angle ? a->angle : a->plain;
  size_t len = a->had_angle ? a->al : a->pl;
  if (a->had_angle && len && s[0] == '@') { /* source route */
    const char *colon = memchr(s, ':', len);
    if (colon) {
      len -= (size_t)(colon + 1 - s);
      s = colon + 1;
    }
  }
  if (len)
    send_sv_push(out, send_xstrndup(s, len));
  a->pl = a->al = 0;
  a->had_angle = false;
}

/* See send_msg.h. */
void send_parse_addr_list(const char *p, size_t n, struct strvec *out) {
  struct addr_acc a = {send_xmalloc(n + 1), send_xmalloc(n + 1), 0, 0,
                       false, false};
  size_t i = 0;
  for (;;) {
    char c = i < n ? p[i] : ',';
    bool end = i >= n;
    if (c == '"') {
      i = copy_quoted(p, n, i, &a);
      continue;
    }
    if (c == '[') {
      i = copy_literal(p, n, i, &a);
      continue;
    }
    if (c == '(') {
      i = skip_comment(p, n, i);
      continue;
    }
    if (a.in_angle) {
      if (c == '>' || end) {
        a.in_angle = false;
        a.had_angle = true;
      } else if (!is_fws(c)) {
        a.angle[a.al++] = c;
      }
      if (!end) {
        i++;
        continue;
      }
      c = ',';
    }
    if (c == '<') {
      a.in_angle = true;
      a.al = 0; /* a second <...> in one element: the last wins */
    } else if (c == ':' && !a.had_angle) {
      a.pl = 0; /* group name: drop what came before */
    } else if (c == ',' || c == ';') {
      end_element(&a, out);
      if (end)
        break;
    } else if (!is_fws(c)) {
      a.plain[a.pl++] = c;
    }
    i++;
  }
  free(a.plain);
  free(a.angle);
}

/* ---- header fields
 * -------------------------------------------------------------- */

bool send_field_named(const char *f, size_t flen, const char *name) {
  size_t n = strlen(name);
  if (flen < n || strncasecmp(f, name, n) != 0)
    return false;
  size_t i = n;
  while (i < flen && (f[i] == ' ' || f[i] == '\t')) /* obsolete "To :" */
    i++;
  return i < flen && f[i] == ':';
}

/* A header field starts with ftext (printable ASCII but ':') then ':'. */
bool send_field_start(const char *p, size_t n) {
  size_t i = 0;
  while (i < n && p[i] > 32 && p[i] < 127 && p[i] != ':')
    i++;
  while (i > 0 && i < n && (p[i] == ' ' || p[i] == '\t'))
    i++; /* obsolete white space before the colon */
  return i > 0 && i < n && p[i] == ':';
}

/* n bytes from the kernel's random source. Returns 0 or -1 (errno). */
int send_random(void *buf, size_t n) {
  unsigned char *p = buf;
  while (n > 0) {
    ssize_t r = getrandom(p, n, 0);
    if (r < 0 && errno == EINTR)
      continue;
    if (r <= 0)
      return -1;
    p += r;
    n -= (size_t)r;
  }
  return 0;
}

size_t send_format_date(char *buf, size_t cap, time_t now) {
  static const char *const days[] = {"Sun", "Mon", "Tue", "Wed",
                                     "Thu", "Fri", "Sat"};
  static const char *const months[] = {"Jan", "Feb", "Mar", "Apr",
                                       "May", "Jun", "Jul", "Aug",
                                       "Sep", "Oct", "Nov", "Dec"};
  struct tm tm;
  if (!localtime_r(&now, &tm))
    return 0;
  long off = tm.tm_gmtoff / 60;
  char sign = off < 0 ? '-' : '+';
  if (off < 0)
    off = -off;
  int n = snprintf(buf, cap,
                   "Date: %s, %02d %s %04d %02d:%02d:%02d %c%02ld%02ld\r\n",
                   days[tm.tm_wday % 7], tm.tm_mday, months[tm.tm_mon % 12],
                   tm.tm_year + 1900, tm.tm_hour, tm.tm_min, tm.tm_sec, sign,
                   off / 60, off % 60);
  return n > 0 && (size_t)n < cap ? (size_t)n : 0;
}

/* Is h usable as a msg-id's right side (RFC 5322 §3.6.4, dot-atom-text)? */
static bool dot_atom(const char *h) {
  if (!*h || *h == '.')
    return false;
  for (const char *q = h; *q; q++) {
    bool atext = (*q >= 'a' && *q <= 'z') || (*q >= 'A' && *q <= 'Z') ||
                 (*q >= '0' && *q <= '9') || strchr("!#$%&'*+-/=?^_`{|}~", *q);
    if (*q == '.' ? q[1] == '.' || q[1] == '\0' : !atext)
      return false;
  }
  return true;
}

size_t send_format_msgid(char *buf, size_t cap, time_t now, const char *host) {
  unsigned char rnd[16];
  char hex[2 * sizeof rnd + 1], stamp[32];
  struct tm tm;
  if (send_random(rnd, sizeof rnd) != 0)
    return 0;
  for (size_t i = 0; i < sizeof rnd; i++)
    snprintf(hex + 2 * i, 3, "%02x", rnd[i]);
  if (!gmtime_r(&now, &tm) ||
      strftime(stamp, sizeof stamp, "%Y%m%d%H%M%S", &tm) == 0)
    snprintf(stamp, sizeof stamp, "%lld", (long long)now);
  int n = snprintf(buf, cap, "Message-ID: <%s.%s@%s>\r\n", stamp, hex,
                   dot_atom(host) ? host : "localhost");
  return n > 0 && (size_t)n < cap ? (size_t)n : 0;
}
