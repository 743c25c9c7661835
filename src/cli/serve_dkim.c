/*
 * tern serve's DKIM signer from the configuration (serve_dkim.h). Which
 * mail is signed is decided in serve.c (authenticated sessions only, see
 * docs/decisions/0020-dkim.md); the signing itself is in the queue
 * target (deliver_queue.c).
 */
#include "serve_dkim.h"

#include <stdio.h>
#include <string.h>

#include "log.h"

int serve_dkim_load(const struct cfg *c, struct tern_dkim_signer **out,
                    char *err, size_t cap) {
  *out = NULL;
  if (c->ndkim == 0)
    return 0;
  /* Each key alone first, so that the message names its section. */
  for (size_t i = 0; i < c->ndkim; i++) {
    char e[512];
    struct tern_dkim_signer *one;
    if (tern_dkim_signer_new(&one, &c->dkim[i], 1, e, sizeof e) != 0) {
      snprintf(err, cap, "%s:%d: [dkim %s]: %s", c->path ? c->path : "-",
               c->dkim_line[i], c->dkim_name[i] ? c->dkim_name[i] : "?", e);
      return -1;
    }
    tern_dkim_signer_free(one);
  }
  char e[512];
  if (tern_dkim_signer_new(out, c->dkim, c->ndkim, e, sizeof e) != 0) {
    snprintf(err, cap, "%s: DKIM keys: %s", c->path ? c->path : "-", e);
    *out = NULL;
    return -1;
  }
  return 0;
}

/* The value of tag `t` ("d", "s") in one DKIM-Signature field f[n]
 * (tags separated by ';', white space and folding around them). */
static size_t tag_value(const char *f, size_t n, const char *t,
                        const char **v) {
  size_t tl = strlen(t);
  size_t i = 0;
  while (i < n) {
    while (i < n && strchr(" \t\r\n;", f[i]))
      i++;
    size_t s = i;
    while (i < n && f[i] != ';')
      i++;
    if (i - s > tl && strncmp(f + s, t, tl) == 0 && f[s + tl] == '=') {
      *v = f + s + tl + 1;
      size_t e = i;
      while (e > s && strchr(" \t\r\n", f[e - 1]))
        e--;
      return e - (s + tl + 1);
    }
  }
  return 0;
}

void serve_dkim_detail(char *buf, size_t cap, int rc, const char *fields,
                       const char *why) {
  if (!cap)
    return;
  buf[0] = '\0';
  if (rc != 0 || !fields || !fields[0]) {
    snprintf(buf, cap, "%s %s", rc != 0 ? "failed" : "none",
             why ? why : (rc != 0 ? tern_strerror(rc) : "not signed"));
    return;
  }
  static const char name[] = "DKIM-Signature:";
  size_t len = 0;
  const char *p = fields;
  while ((p = strstr(p, name)) != NULL) {
    p += sizeof name - 1;
    const char *next = strstr(p, name);
    size_t n = next ? (size_t)(next - p) : strlen(p);
    const char *d = "", *s = "";
    size_t dn = tag_value(p, n, "d", &d), sn = tag_value(p, n, "s", &s);
    int w = snprintf(buf + len, cap - len, "%sd=%.*s,s=%.*s", len ? ";" : "",
                     (int)dn, d, (int)sn, s);
    if (w < 0 || (size_t)w >= cap - len)
      break;
    len += (size_t)w;
  }
}

void serve_dkim_log(struct log_line *l, const char *detail) {
  if (!detail || !detail[0])
    return;
  const char *sp = strchr(detail, ' ');
  if (sp && ((size_t)(sp - detail) == 6 && !strncmp(detail, "failed", 6))) {
    log_line_kv(l, "dkim", "failed");
    log_line_kv(l, "why", sp + 1);
  } else if (sp && (size_t)(sp - detail) == 4 && !strncmp(detail, "none", 4)) {
    log_line_kv(l, "dkim", "none");
    log_line_kv(l, "why", sp + 1);
  } else {
    log_line_kv(l, "dkim", detail);
  }
}
