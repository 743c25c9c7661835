/*
 * Recipients of `tern serve`'s local targets (recipients.h has the
 * contracts).
 */
#define _POSIX_C_SOURCE 200809L
#include "recipients.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Local parts are at most 64 octets (RFC 5321 §4.5.3.1.1), domains 255. */
#define RC_ENTRY_MAX 512

int rcpt_local(const char *addr, char *out, size_t cap) {
  const char *at = strrchr(addr, '@');
  size_t n = at ? (size_t)(at - addr) : strlen(addr);
  size_t o = 0;

  if (cap == 0)
    return -1;
  if (n >= 2 && addr[0] == '"' && addr[n - 1] == '"') {
    /* Quoted-string = DQUOTE *QcontentSMTP DQUOTE, where a quoted pair
     * is "\" followed by one octet (%d32-126): drop the quotes and the
     * backslashes. */
    for (size_t i = 1; i + 1 < n; i++) {
      if (addr[i] == '\\' && i + 2 < n)
        i++;
      if (o + 1 >= cap)
        return -1;
      out[o++] = addr[i];
    }
  } else {
    if (n >= cap)
      return -1;
    memcpy(out, addr, n);
    o = n;
  }
  out[o] = '\0';
  return (int)o;
}

const char *rcpt_domain(const char *addr) {
  const char *at = strrchr(addr, '@');
  return at ? at + 1 : "";
}

static bool fs_safe(unsigned char c, size_t i) {
  return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' ||
         c == '_' || c == '+' || c >= 0x80 || (c == '.' && i > 0);
}

int rcpt_fs_escape(const char *s, size_t n, char *out, size_t cap) {
  static const char hex[] = "0123456789ABCDEF";
  size_t o = 0;

  if (n == 0) {
    if (cap < 2)
      return -1;
    memcpy(out, "%", 2);
    return 1;
  }
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)s[i];
    if (c >= 'A' && c <= 'Z')
      c = (unsigned char)(c + 32);
    if (fs_safe(c, i)) {
      if (o + 1 >= cap)
        return -1;
      out[o++] = (char)c;
    } else {
      if (o + 3 >= cap)
        return -1;
      out[o++] = '%';
      out[o++] = hex[c >> 4];
      out[o++] = hex[c & 15];
    }
  }
  out[o] = '\0';
  return (int)o;
}

int rcpt_expand_maildir(const char *tpl, const char *addr, char *out,
                        size_t cap) {
  char local[RC_ENTRY_MAX];
  const char *dom = rcpt_domain(addr);
  int ln = rcpt_local(addr, local, sizeof local);
  size_t o = 0;

  if (ln < 0 || cap == 0)
    return -1;
  for (const char *t = tpl; *t; t++) {
    int n = 0;
    if (*t == '%' && (t[1] == 'u' || t[1] == 'd' || t[1] == 'a')) {
      t++;
      if (*t == 'u' || *t == 'a')
        n = rcpt_fs_escape(local, (size_t)ln, out + o, cap - o);
      if (n >= 0 && *t == 'a') {
        o += (size_t)n;
        if (o + 1 >= cap)
          return -1;
        out[o++] = '@';
      }
      if (n >= 0 && (*t == 'd' || *t == 'a'))
        n = rcpt_fs_escape(dom, strlen(dom), out + o, cap - o);
      if (n < 0)
        return -1;
      o += (size_t)n;
      continue;
    }
    if (*t == '%' && t[1] == '%')
      t++;
    if (o + 1 >= cap)
      return -1;
    out[o++] = *t;
  }
  out[o] = '\0';
  return 0;
}

int rcpt_template_spool(const char *tpl, char *out, size_t cap) {
  const char *pct = strchr(tpl, '%');
  size_t end = pct ? (size_t)(pct - tpl) : strlen(tpl);
  while (end > 0 && tpl[end - 1] != '/')
    end--;
  while (end > 1 && tpl[end - 1] == '/')
    end--; /* "/srv/mail/" -> "/srv/mail", "/" stays */
  int n = end == 0 ? snprintf(out, cap, "./.tern-spool")
          : end == 1 && tpl[0] == '/'
              ? snprintf(out, cap, "/.tern-spool")
              : snprintf(out, cap, "%.*s/.tern-spool", (int)end, tpl);
  return n > 0 && (size_t)n < cap ? 0 : -1;
}

bool rcpt_pipe_safe(const char *addr) {
  char local[RC_ENTRY_MAX];
  int n = rcpt_local(addr, local, sizeof local);
  return n >= 0 && local[0] != '-';
}

int rcpt_pipe_argv(const char *cmd, const char *sender, const char *rcpt,
                   char *words, size_t cap, char **argv, size_t maxargs) {
  char local[RC_ENTRY_MAX];
  const char *dom = rcpt_domain(rcpt);
  size_t na = 0, wo = 0;

  if (rcpt_local(rcpt, local, sizeof local) < 0 || maxargs == 0)
    return -1;
  for (const char *t = cmd; *t;) {
    while (*t == ' ')
      t++;
    if (!*t)
      break;
    if (na + 1 >= maxargs)
      return -1;
    argv[na++] = words + wo;
    for (; *t && *t != ' '; t++) {
      const char *src = t;
      size_t n = 1;
      if (*t == '%' && t[1]) {
        t++;
        if (*t == 's')
          src = sender, n = strlen(sender);
        else if (*t == 'r' || *t == 'a')
          src = rcpt, n = strlen(rcpt);
        else if (*t == 'u')
          src = local, n = strlen(local);
        else if (*t == 'd')
          src = dom, n = strlen(dom);
        else
          src = t, n = 1; /* %% (config.c rejects other escapes) */
      }
      if (wo + n + 1 > cap)
        return -1;
      memcpy(words + wo, src, n);
      wo += n;
    }
    words[wo++] = '\0';
  }
  argv[na] = NULL;
  return na > 0 ? (int)na : -1;
}

/* ---- the recipients file ------------------------------------------------ */

/* A sorted array of lower-cased entries ("local@domain", "local",
 * "@domain"), local parts unquoted. */
struct rcptset {
  char **v;
  size_t n, cap;
};

static void lower(char *s) {
  for (; *s; s++)
    if (*s >= 'A' && *s <= 'Z')
      *s = (char)(*s + 32);
}

static int cmp(const void *a, const void *b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}

/* The lookup form of an address: unquoted local part "@" domain,
 * lower-cased; *at is set to the offset of the '@'. */
static int normal(const char *addr, char *out, size_t cap, size_t *at) {
  const char *dom = rcpt_domain(addr);
  int n = rcpt_local(addr, out, cap);
  if (n < 0 || (size_t)n + 1 + strlen(dom) + 1 > cap)
    return -1;
  *at = (size_t)n;
  out[n] = '@';
  memcpy(out + n + 1, dom, strlen(dom) + 1);
  lower(out);
  return 0;
}

static int add(struct rcptset *s, const char *e) {
  if (s->n == s->cap) {
    size_t cap = s->cap ? 2 * s->cap : 64;
    char **v = realloc(s->v, cap * sizeof *v);
    if (!v)
      return -1;
    s->v = v;
    s->cap = cap;
  }
  if ((s->v[s->n] = strdup(e)) == NULL)
    return -1;
  s->n++;
  return 0;
}

int rcptset_load(const char *path, struct rcptset **out, char *err,
                 size_t cap) {
  struct rcptset *s = calloc(1, sizeof *s);
  FILE *f = fopen(path, "r");
  char line[RC_ENTRY_MAX + 2];
  unsigned lineno = 0;

  if (!s || !f) {
    snprintf(err, cap, "%s: %s", path, !s ? "out of memory" : strerror(errno));
    goto fail;
  }
  while (fgets(line, sizeof line, f)) {
    size_t n = strlen(line);
    lineno++;
    if (n == sizeof line - 1 && line[n - 1] != '\n') {
      snprintf(err, cap, "%s:%u: entry too long (at most %d octets)", path,
               lineno, RC_ENTRY_MAX);
      goto fail;
    }
    while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r' ||
                     line[n - 1] == ' ' || line[n - 1] == '\t'))
      line[--n] = '\0';
    char *e = line;
    while (*e == ' ' || *e == '\t')
      e++;
    if (*e == '\0' || *e == '#')
      continue;
    if (strpbrk(e, " \t")) {
      snprintf(err, cap, "%s:%u: one address, local part or @domain a line",
               path, lineno);
      goto fail;
    }
    char norm[RC_ENTRY_MAX + 2];
    size_t at;
    int r;
    if (e[0] == '@')
      r = snprintf(norm, sizeof norm, "%s", e) < (int)sizeof norm ? 0 : -1;
    else if (strchr(e, '@'))
      r = normal(e, norm, sizeof norm, &at);
    else
      r = rcpt_local(e, norm, sizeof norm) >= 0 ? 0 : -1;
    if (r != 0) {
      snprintf(err, cap, "%s:%u: entry too long", path, lineno);
      goto fail;
    }
    lower(norm);
    if (add(s, norm) != 0) {
      snprintf(err, cap, "%s: out of memory", path);
      goto fail;
    }
  }
  if (ferror(f)) {
    snprintf(err, cap, "%s: %s", path, strerror(errno));
    goto fail;
  }
  fclose(f);
  if (s->n)
    qsort(s->v, s->n, sizeof *s->v, cmp);
  *out = s;
  return 0;
fail:
  if (f)
    fclose(f);
  rcptset_free(s);
  return -1;
}

static bool has(const struct rcptset *s, const char *key) {
  return s->n && bsearch(&key, s->v, s->n, sizeof *s->v, cmp) != NULL;
}

bool rcptset_has(const struct rcptset *s, const char *addr) {
  char norm[RC_ENTRY_MAX + 2];
  size_t at;
  if (!s || normal(addr, norm, sizeof norm, &at) != 0)
    return false;
  if (has(s, norm) || has(s, norm + at)) /* the address, "@domain" */
    return true;
  norm[at] = '\0';
  return has(s, norm); /* the local part */
}

size_t rcptset_count(const struct rcptset *s) { return s ? s->n : 0; }

void rcptset_free(struct rcptset *s) {
  if (!s)
    return;
  for (size_t i = 0; i < s->n; i++)
    free(s->v[i]);
  free(s->v);
  free(s);
}
