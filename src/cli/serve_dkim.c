/*
 * tern serve's DKIM signer from the configuration (serve_dkim.h). Which
 * mail is signed is decided in serve.c (authenticated sessions only, see
 * docs/decisions/0020-dkim.md); the signing itself is in the queue
 * target (deliver_queue.c).
 */
#include "serve_dkim.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"

#define MAX_DKIM_USERS 256

struct serve_dkim {
  struct tern_dkim_signer *every; /* users not named in any `users` */
  size_t n;
  char *user[MAX_DKIM_USERS];     /* named in some `users` */
  struct tern_dkim_signer *theirs[MAX_DKIM_USERS]; /* or NULL */
};

void serve_dkim_free(struct serve_dkim *d) {
  if (!d)
    return;
  tern_dkim_signer_free(d->every);
  for (size_t i = 0; i < d->n; i++) {
    free(d->user[i]);
    tern_dkim_signer_free(d->theirs[i]);
  }
  free(d);
}

/* Is `user` (len n) a word of the space-separated list? */
static bool listed(const char *list, const char *user, size_t n) {
  for (const char *p = list; *p;) {
    while (*p == ' ')
      p++;
    size_t w = strcspn(p, " ");
    if (w && w == n && !strncmp(p, user, n))
      return true;
    p += w;
  }
  return false;
}

/* The signer of the keys `user` may use (user NULL: the keys of every
 * user), or NULL when there is none. Returns 0 or -1 with err set. */
static int signer_for(const struct cfg *c, const char *user, size_t un,
                      struct tern_dkim_signer **out, char *err,
                      size_t cap) {
  struct tern_dkim_key keys[CFG_MAX_DKIM];
  size_t n = 0;
  *out = NULL;
  for (size_t i = 0; i < c->ndkim; i++)
    if (!c->dkim_users[i] || (user && listed(c->dkim_users[i], user, un)))
      keys[n++] = c->dkim[i];
  if (n == 0)
    return 0;
  char e[512];
  if (tern_dkim_signer_new(out, keys, n, e, sizeof e) != 0) {
    snprintf(err, cap, "%s: DKIM keys: %s", c->path ? c->path : "-", e);
    *out = NULL;
    return -1;
  }
  return 0;
}

int serve_dkim_load(const struct cfg *c, struct serve_dkim **out,
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
  struct serve_dkim *d = calloc(1, sizeof *d);
  if (!d) {
    snprintf(err, cap, "DKIM keys: out of memory");
    return -1;
  }
  if (signer_for(c, NULL, 0, &d->every, err, cap) != 0)
    goto fail;
  /* one signer for each user some `users` names */
  for (size_t i = 0; i < c->ndkim; i++) {
    const char *p = c->dkim_users[i];
    while (p && *p) {
      while (*p == ' ')
        p++;
      size_t w = strcspn(p, " ");
      bool seen = false;
      for (size_t k = 0; w && k < d->n; k++)
        seen |= strlen(d->user[k]) == w && !strncmp(d->user[k], p, w);
      if (w && !seen) {
        if (d->n == MAX_DKIM_USERS) {
          snprintf(err, cap, "%s:%d: [dkim %s]: users: more than %d users "
                   "in all", c->path ? c->path : "-", c->dkim_line[i],
                   c->dkim_name[i], MAX_DKIM_USERS);
          goto fail;
        }
        if (!(d->user[d->n] = strndup(p, w))) {
          snprintf(err, cap, "DKIM keys: out of memory");
          goto fail;
        }
        d->n++;
        if (signer_for(c, d->user[d->n - 1], w, &d->theirs[d->n - 1], err,
                       cap) != 0)
          goto fail;
      }
      p += w;
    }
  }
  *out = d;
  return 0;
fail:
  serve_dkim_free(d);
  return -1;
}

struct tern_dkim_signer *serve_dkim_for(const struct serve_dkim *d,
                                        const char *user) {
  if (!d || !user)
    return NULL;
  for (size_t i = 0; i < d->n; i++)
    if (!strcmp(d->user[i], user))
      return d->theirs[i];
  return d->every;
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
