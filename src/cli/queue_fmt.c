/*
 * `tern queue` output, text and JSON (see queue_fmt.h for the forms).
 */
#include "queue_fmt.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* One line being built; `oom` sticks once an allocation failed. */
struct line {
  char *p;
  size_t len, cap;
  bool oom;
};

static void put(struct line *l, const char *s, size_t n) {
  if (l->oom)
    return;
  if (l->len + n + 1 > l->cap) {
    size_t cap = l->cap ? l->cap : 256;
    while (cap < l->len + n + 1)
      cap *= 2;
    char *q = realloc(l->p, cap);
    if (q == NULL) {
      l->oom = true;
      return;
    }
    l->p = q;
    l->cap = cap;
  }
  memcpy(l->p + l->len, s, n);
  l->len += n;
  l->p[l->len] = '\0';
}

static void puts_(struct line *l, const char *s) { put(l, s, strlen(s)); }

static void putf(struct line *l, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void putf(struct line *l, const char *fmt, ...) {
  char buf[128];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  if (n > 0)
    put(l, buf, (size_t)n < sizeof buf ? (size_t)n : sizeof buf - 1);
}

/* Hand the line to the sink and start the next. */
static int flush_line(struct line *l, qfmt_sink sink, void *arg) {
  int rc = l->oom ? -1 : sink(arg, l->p ? l->p : "", l->len);
  l->len = 0;
  return rc;
}

/* The length of the valid UTF-8 sequence at s[0..n) (2 to 4), or 0. */
static size_t utf8_len(const unsigned char *s, size_t n) {
  size_t need;
  unsigned min;
  if (s[0] >= 0xc2 && s[0] <= 0xdf)
    need = 2, min = 0x80;
  else if (s[0] >= 0xe0 && s[0] <= 0xef)
    need = 3, min = 0x800;
  else if (s[0] >= 0xf0 && s[0] <= 0xf4)
    need = 4, min = 0x10000;
  else
    return 0;
  if (n < need)
    return 0;
  unsigned cp = s[0] & (0x7f >> need);
  for (size_t i = 1; i < need; i++) {
    if ((s[i] & 0xc0) != 0x80)
      return 0;
    cp = (cp << 6) | (s[i] & 0x3f);
  }
  if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
    return 0;
  return need;
}

/* Outside text: printable ASCII and valid UTF-8 as they are; the rest
 * (and '\\' itself in text) escaped, so nothing can start a new line or
 * move the terminal's cursor. */
static void put_text(struct line *l, const char *s) {
  const unsigned char *p = (const unsigned char *)(s ? s : "");
  size_t n = strlen((const char *)p);
  for (size_t i = 0; i < n;) {
    if (p[i] >= 0x20 && p[i] < 0x7f && p[i] != '\\') {
      put(l, (const char *)p + i, 1);
      i++;
      continue;
    }
    size_t u = p[i] >= 0x80 ? utf8_len(p + i, n - i) : 0;
    if (u > 0) {
      put(l, (const char *)p + i, u);
      i += u;
      continue;
    }
    putf(l, "\\x%02X", p[i]);
    i++;
  }
}

/* A JSON string, quotes included (RFC 8259 §7). */
static void put_json(struct line *l, const char *s) {
  const unsigned char *p = (const unsigned char *)(s ? s : "");
  size_t n = strlen((const char *)p);
  put(l, "\"", 1);
  for (size_t i = 0; i < n;) {
    unsigned char ch = p[i];
    if (ch == '"' || ch == '\\') {
      char e[2] = {'\\', (char)ch};
      put(l, e, 2);
      i++;
    } else if (ch >= 0x20 && ch < 0x7f) {
      put(l, (const char *)p + i, 1);
      i++;
    } else if (ch >= 0x80 && utf8_len(p + i, n - i) > 0) {
      size_t u = utf8_len(p + i, n - i);
      put(l, (const char *)p + i, u);
      i += u;
    } else {
      putf(l, "\\u%04x", ch);
      i++;
    }
  }
  put(l, "\"", 1);
}

static void put_time(struct line *l, time_t t) {
  struct tm tm;
  char buf[32];
  if (localtime_r(&t, &tm) == NULL ||
      strftime(buf, sizeof buf, "%Y-%m-%d %H:%M:%S", &tm) == 0) {
    putf(l, "@%lld", (long long)t);
    return;
  }
  puts_(l, buf);
}

const char *qfmt_state_name(enum tern_queue_rcpt_state s) {
  switch (s) {
  case TERN_QRS_QUEUED:
    return "queued";
  case TERN_QRS_DEFERRED:
    return "deferred";
  case TERN_QRS_ACTIVE:
    return "active";
  case TERN_QRS_DELIVERED:
    return "delivered";
  case TERN_QRS_FAILED:
    return "failed";
  }
  return "unknown";
}

bool qfmt_id_ok(const char *s) {
  size_t n = 0;
  if (s == NULL)
    return false;
  for (; s[n]; n++)
    if (!((s[n] >= '0' && s[n] <= '9') || (s[n] >= 'A' && s[n] <= 'Z')) ||
        n >= TERN_QUEUE_ID_MAX - 1)
      return false;
  return n > 0;
}

static void count(const struct tern_queue_list_msg *m, struct qfmt_totals *t) {
  if (t != NULL) {
    t->messages++;
    t->recipients += m->nrcpts;
  }
}

int qfmt_text(const struct tern_queue_list_msg *m, struct qfmt_totals *t,
              qfmt_sink sink, void *arg) {
  struct line l = {0};
  int rc = 0;
  put_text(&l, m->id);
  puts_(&l, m->held ? "!  " : "  ");
  putf(&l, "%" PRIu64 "  ", m->size);
  put_time(&l, m->arrival);
  puts_(&l, "  ");
  if (m->from == NULL || m->from[0] == '\0')
    puts_(&l, "<>");
  else
    put_text(&l, m->from);
  if (m->is_bounce)
    puts_(&l, "  (DSN)");
  rc = flush_line(&l, sink, arg);
  for (size_t i = 0; i < m->nrcpts && rc == 0; i++) {
    const struct tern_queue_list_rcpt *r = &m->rcpts[i];
    puts_(&l, "  ");
    put_text(&l, r->addr);
    puts_(&l, "  ");
    puts_(&l, qfmt_state_name(r->state));
    putf(&l, "  attempts %u", r->attempts);
    if (r->next_try != 0 &&
        (r->state == TERN_QRS_QUEUED || r->state == TERN_QRS_DEFERRED)) {
      puts_(&l, "  next ");
      put_time(&l, r->next_try);
    }
    if (r->dest != NULL && r->dest[0] != '\0') {
      puts_(&l, "  via ");
      put_text(&l, r->dest);
    }
    rc = flush_line(&l, sink, arg);
    if (rc == 0 && r->last_reply != NULL && r->last_reply[0] != '\0') {
      puts_(&l, "    (");
      put_text(&l, r->last_reply);
      puts_(&l, ")");
      rc = flush_line(&l, sink, arg);
    }
  }
  free(l.p);
  if (rc == 0)
    count(m, t);
  return rc;
}

int qfmt_json(const struct tern_queue_list_msg *m, struct qfmt_totals *t,
              qfmt_sink sink, void *arg) {
  struct line l = {0};
  puts_(&l, "{\"id\":");
  put_json(&l, m->id);
  putf(&l, ",\"arrival\":%lld,\"size\":%" PRIu64 ",\"from\":",
       (long long)m->arrival, m->size);
  put_json(&l, m->from);
  putf(&l, ",\"held\":%s,\"bounce\":%s,\"rcpts\":[", m->held ? "true" : "false",
       m->is_bounce ? "true" : "false");
  for (size_t i = 0; i < m->nrcpts; i++) {
    const struct tern_queue_list_rcpt *r = &m->rcpts[i];
    puts_(&l, i ? ",{\"addr\":" : "{\"addr\":");
    put_json(&l, r->addr);
    puts_(&l, ",\"dest\":");
    put_json(&l, r->dest);
    putf(&l,
         ",\"state\":\"%s\",\"attempts\":%u,\"next_try\":%lld,"
         "\"last_code\":%d,\"last_reply\":",
         qfmt_state_name(r->state), r->attempts, (long long)r->next_try,
         r->last_code);
    put_json(&l, r->last_reply);
    puts_(&l, "}");
  }
  puts_(&l, "]}");
  int rc = flush_line(&l, sink, arg);
  free(l.p);
  if (rc == 0)
    count(m, t);
  return rc;
}

int qfmt_summary(const struct qfmt_totals *t, qfmt_sink sink, void *arg) {
  char buf[128];
  int n;
  if (t->messages == 0)
    n = snprintf(buf, sizeof buf, "Queue is empty");
  else
    n = snprintf(buf, sizeof buf, "-- %zu message%s, %zu recipient%s",
                 t->messages, t->messages == 1 ? "" : "s", t->recipients,
                 t->recipients == 1 ? "" : "s");
  return sink(arg, buf, (size_t)n);
}
