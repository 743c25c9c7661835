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

/* See send_msg.h. */
void send_parse_addr_list(const char *p, size_t n, struct strvec *out) {
  char *plain = send_xmalloc(n + 1), *angle = send_xmalloc(n + 1);
  size_t pl = 0, al = 0;
  bool in_angle = false, had_angle = false;
  size_t i = 0;

  for (;;) {
    char c = i < n ? p[i] : ',';
    bool end = i >= n;
    if (c == '"') { /* quoted string: copied with its quotes */
      char *dst = in_angle ? angle : plain;
      size_t *dl = in_angle ? &al : &pl;
      dst[(*dl)++] = c;
      for (i++; i < n && p[i] != '"'; i++) {
        if (p[i] == '\\' && i + 1 < n)
          dst[(*dl)++] = p[i++];
        if (p[i] != '\r' && p[i] != '\n')
          dst[(*dl)++] = p[i];
      }
      if (i < n)
        dst[(*dl)++] = '"';
      i++;
      continue;
    }
    if (c == '[') { /* domain literal, e.g. [IPv6:::1]: copied whole */
      char *dst = in_angle ? angle : plain;
      size_t *dl = in_angle ? &al : &pl;
      for (; i < n && p[i] != ']'; i++)
        if (p[i] != ' ' && p[i] != '\t' && p[i] != '\r' && p[i] != '\n')
          dst[(*dl)++] = p[i];
      if (i < n)
        dst[(*dl)++] = ']';
      i++;
      continue;
    }
    if (c == '(') { /* comment, nested, dropped */
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
      i++;
      continue;
    }
    if (in_angle) {
      if (c == '>' || end) {
        in_angle = false;
        had_angle = true;
      } else if (c != ' ' && c != '\t' && c != '\r' && c != '\n') {
        angle[al++] = c;
      }
      if (end)
        c = ',';
      else {
        i++;
        continue;
      }
    }
    if (c == '<') {
      in_angle = true;
      al = 0; /* a second <...> in one element: the last wins */
      i++;
      continue;
    }
    if (c == ':' && !had_angle) { /* group name: drop what came before */
      pl = 0;
      i++;
      continue;
    }
    if (c == ',' || c == ';') {
      const char *a = had_angle ? angle : plain;
      size_t len = had_angle ? al : pl;
      if (had_angle && len && a[0] == '@') { /* source route */
        const char *colon = memchr(a, ':', len);
        if (colon) {
          len -= (size_t)(colon + 1 - a);
          a = colon + 1;
        }
      }
      if (len)
        send_sv_push(out, send_xstrndup(a, len));
      pl = al = 0;
      had_angle = false;
      if (end)
        break;
      i++;
      continue;
    }
    if (c != ' ' && c != '\t' && c != '\r' && c != '\n')
      plain[pl++] = c;
    i++;
  }
  free(plain);
  free(angle);
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
