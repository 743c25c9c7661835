/*
 * `tern serve` configuration: the embedded default and the INI file.
 *
 * Parsing is inih's (ini_parse_stream) over our own line reader, which
 *   - counts lines, so every message names FILE:LINE (the handler of
 *     Debian's inih build gets no line number);
 *   - sees section headers first, so an unknown or empty section is
 *     reported where it is written;
 *   - strips leading white space, so inih's multi-line values (an
 *     indented line continues the previous key) never apply: every line
 *     stands alone, whatever the build's INI_ALLOW_MULTILINE;
 *   - passes lines longer than inih's buffer (INI_MAX_LINE, 200 by
 *     default) as "name=<marker>" and keeps the value itself, so a long
 *     `accept` list works.
 * Every key is in the table `keys` below; docs/configuration.md and
 * docs/man/tern.ini.5 describe them.
 */
#include "config.h"

#include <arpa/inet.h>
#include <errno.h>
#include <grp.h>
#include <ini.h>
#include <limits.h>
#include <pwd.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "users.h"

/* ---- small helpers ---------------------------------------------------------
 */

static void oom(void) {
  fputs("tern: out of memory\n", stderr);
  abort();
}

static char *xstrdup(const char *s) {
  char *p = strdup(s);
  if (p == NULL)
    oom();
  return p;
}

static char *xstrndup(const char *s, size_t n) {
  char *p = strndup(s, n);
  if (p == NULL)
    oom();
  return p;
}

static void set_str(char **slot, const char *v) {
  char *n = xstrdup(v);
  free(*slot);
  *slot = n;
}

static bool is_space(int ch) {
  return ch == ' ' || ch == '\t' || ch == '\r' || ch == '\n' || ch == '\v' ||
         ch == '\f';
}

static bool is_alnum(int ch) {
  return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
         (ch >= '0' && ch <= '9');
}

static bool is_digit(int ch) { return ch >= '0' && ch <= '9'; }

static int lower(int ch) {
  return (ch >= 'A' && ch <= 'Z') ? ch - 'A' + 'a' : ch;
}

static bool has_prefix(const char *s, const char *p) {
  return strncmp(s, p, strlen(p)) == 0;
}

/* Any control character or DEL? (Values are one line of text.) */
static bool has_ctl(const char *s) {
  for (; *s; s++)
    if ((unsigned char)*s < 0x20 || *s == 0x7f)
      return true;
  return false;
}

/* Decimal digits only, no sign, no overflow past UINT64_MAX. */
static int parse_u64(const char *s, size_t n, uint64_t *out) {
  uint64_t v = 0;
  if (n == 0)
    return -1;
  for (size_t i = 0; i < n; i++) {
    if (!is_digit((unsigned char)s[i]))
      return -1;
    unsigned d = (unsigned)(s[i] - '0');
    if (v > (UINT64_MAX - d) / 10)
      return -1;
    v = v * 10 + d;
  }
  *out = v;
  return 0;
}

/* ---- value syntaxes (also used by cfg_parse_*) ----------------------------
 */

int cfg_parse_bool(const char *s, bool *out) {
  static const char *const yes[] = {"yes", "true", "on", "1"};
  static const char *const no[] = {"no", "false", "off", "0"};
  for (size_t i = 0; i < sizeof yes / sizeof yes[0]; i++) {
    if (strcasecmp(s, yes[i]) == 0) {
      *out = true;
      return 0;
    }
    if (strcasecmp(s, no[i]) == 0) {
      *out = false;
      return 0;
    }
  }
  return -1;
}

int cfg_parse_size(const char *s, uint64_t *out) {
  size_t n = strlen(s);
  uint64_t mul = 1, v;
  if (n > 0) {
    switch (s[n - 1]) {
    case 'k':
    case 'K':
      mul = 1024;
      n--;
      break;
    case 'm':
    case 'M':
      mul = 1024 * 1024;
      n--;
      break;
    case 'g':
    case 'G':
      mul = 1024ull * 1024 * 1024;
      n--;
      break;
    default:
      break;
    }
  }
  if (parse_u64(s, n, &v) != 0 || (v != 0 && v > UINT64_MAX / mul))
    return -1;
  *out = v * mul;
  return 0;
}

int cfg_parse_duration_ms(const char *s, uint64_t *out) {
  size_t n = strlen(s);
  uint64_t mul = 1000, v;
  if (n >= 2 && strcmp(s + n - 2, "ms") == 0) {
    mul = 1;
    n -= 2;
  } else if (n >= 1 &&
             (s[n - 1] == 's' || s[n - 1] == 'm' || s[n - 1] == 'h')) {
    mul = s[n - 1] == 's' ? 1000 : s[n - 1] == 'm' ? 60000 : 3600000;
    n--;
  }
  if (parse_u64(s, n, &v) != 0 || (v != 0 && v > UINT64_MAX / mul))
    return -1;
  *out = v * mul;
  return 0;
}

/* "smtp://HOST:PORT", "smtps://HOST:PORT", "lmtp://HOST:PORT" (HOST an
 * IPv4 address, [IPv6] or *), "smtp:///path", "lmtp:///path". */
static bool listener_url_ok(const char *u) {
  const char *rest;
  bool tls = false;
  if (has_prefix(u, "smtp://"))
    rest = u + 7;
  else if (has_prefix(u, "lmtp://"))
    rest = u + 7;
  else if (has_prefix(u, "smtps://"))
    rest = u + 8, tls = true;
  else
    return false;
  if (rest[0] == '/')
    return !tls && rest[1] != '\0';
  const char *colon;
  char host[64];
  if (rest[0] == '[') {
    const char *end = strchr(rest, ']');
    if (end == NULL || end[1] != ':' || (size_t)(end - rest - 1) >= sizeof host)
      return false;
    memcpy(host, rest + 1, (size_t)(end - rest - 1));
    host[end - rest - 1] = '\0';
    struct in6_addr a6;
    if (inet_pton(AF_INET6, host, &a6) != 1)
      return false;
    colon = end + 1;
  } else {
    colon = strchr(rest, ':');
    if (colon == NULL || (size_t)(colon - rest) >= sizeof host)
      return false;
    memcpy(host, rest, (size_t)(colon - rest));
    host[colon - rest] = '\0';
    struct in_addr a4;
    if (strcmp(host, "*") != 0 && inet_pton(AF_INET, host, &a4) != 1)
      return false;
  }
  uint64_t port;
  if (parse_u64(colon + 1, strlen(colon + 1), &port) != 0 || port == 0 ||
      port > 65535)
    return false;
  return true;
}

static bool is_unix_url(const char *u) {
  const char *p = strstr(u, "://");
  return p != NULL && p[3] == '/';
}

/* A host name or an address: letters, digits, '-', '.', ':', '[', ']',
 * '_' (some internal names have one). */
static bool host_ok(const char *s, size_t n) {
  if (n == 0 || n > 255)
    return false;
  for (size_t i = 0; i < n; i++) {
    unsigned char ch = (unsigned char)s[i];
    if (!is_alnum(ch) && ch != '-' && ch != '.' && ch != ':' && ch != '[' &&
        ch != ']' && ch != '_')
      return false;
  }
  return true;
}

/* Forwarding endpoints: the client library's smtp://, smtp+starttls://,
 * smtps://, lmtp://host[:port] and lmtp:///path. `target` says which
 * schemes fit. */
static bool forward_url_ok(const char *u, enum cfg_target target) {
  const char *rest;
  if (target == CFG_LMTP) {
    if (!has_prefix(u, "lmtp://"))
      return false;
    rest = u + 7;
  } else if (has_prefix(u, "smtp://")) {
    rest = u + 7;
  } else if (has_prefix(u, "smtp+starttls://")) {
    rest = u + 16;
  } else if (has_prefix(u, "smtps://")) {
    rest = u + 8;
  } else {
    return false;
  }
  if (rest[0] == '/')
    return target == CFG_LMTP && rest[1] != '\0';
  const char *port = NULL;
  size_t hl;
  if (rest[0] == '[') {
    const char *end = strchr(rest, ']');
    if (end == NULL)
      return false;
    hl = (size_t)(end - rest) + 1;
    if (end[1] == ':')
      port = end + 2;
    else if (end[1] != '\0')
      return false;
  } else {
    const char *colon = strchr(rest, ':');
    hl = colon ? (size_t)(colon - rest) : strlen(rest);
    if (colon)
      port = colon + 1;
  }
  if (!host_ok(rest, hl))
    return false;
  if (port != NULL) {
    uint64_t p;
    if (parse_u64(port, strlen(port), &p) != 0 || p == 0 || p > 65535)
      return false;
  }
  return true;
}

/* "%x" escapes in a template: only those in `allowed` (and "%%"). */
static bool template_ok(const char *t, const char *allowed) {
  for (const char *p = t; *p; p++) {
    if (*p != '%')
      continue;
    p++;
    if (*p == '%')
      continue;
    if (*p == '\0' || strchr(allowed, *p) == NULL)
      return false;
  }
  return true;
}

#define MAILDIR_ESCAPES "uda"
#define COMMAND_ESCAPES "srdua"

/* One network: an IPv4 or IPv6 address, optionally "/PREFIX". */
static bool network_ok(const char *s, size_t n) {
  char buf[64];
  if (n == 0 || n >= sizeof buf)
    return false;
  memcpy(buf, s, n);
  buf[n] = '\0';
  char *slash = strchr(buf, '/');
  uint64_t plen = 0;
  if (slash != NULL) {
    *slash = '\0';
    if (parse_u64(slash + 1, strlen(slash + 1), &plen) != 0)
      return false;
  }
  struct in_addr a4;
  struct in6_addr a6;
  if (inet_pton(AF_INET, buf, &a4) == 1)
    return plen <= 32;
  if (inet_pton(AF_INET6, buf, &a6) == 1)
    return plen <= 128;
  return false;
}

/* A domain: labels of letters, digits and '-', not starting or ending
 * with '-', separated by single dots; one trailing dot is dropped. */
static bool domain_ok(const char *s, size_t n) {
  if (n > 0 && s[n - 1] == '.')
    n--;
  if (n == 0 || n > 253)
    return false;
  size_t lab = 0;
  for (size_t i = 0; i < n; i++) {
    unsigned char ch = (unsigned char)s[i];
    if (ch == '.') {
      if (lab == 0 || s[i - 1] == '-')
        return false;
      lab = 0;
      continue;
    }
    if (!is_alnum(ch) && ch != '-' && ch != '_')
      return false;
    if (ch == '-' && lab == 0)
      return false;
    if (++lab > 63)
      return false;
  }
  return s[n - 1] != '-';
}

/* ---- defaults --------------------------------------------------------------
 */

static void listener_reset(struct cfg_listener *l) {
  free(l->name);
  free(l->url);
  free(l->socket_user);
  free(l->socket_group);
  memset(l, 0, sizeof *l);
}

static void add_default_listener(struct cfg *c, const char *name,
                                 const char *url) {
  struct cfg_listener *l = &c->listeners[c->nlisteners++];
  memset(l, 0, sizeof *l);
  l->name = xstrdup(name);
  l->url = xstrdup(url);
}

void cfg_defaults(struct cfg *c) {
  char host[256];
  memset(c, 0, sizeof *c);
  if (gethostname(host, sizeof host) != 0 || host[0] == '\0')
    strncpy(host, "localhost", sizeof host);
  host[sizeof host - 1] = '\0';
  c->hostname = xstrdup(host);
  c->workers = 1;
  c->max_connections = 1000;
  c->max_per_ip = 0;
  c->greeting_delay_ms = 0;
  c->shutdown_timeout_ms = 30000;
  c->max_message_size = 30u * 1024 * 1024;
  c->max_recipients = 1000;
  c->timeout_command_ms = 5 * 60 * 1000;
  c->timeout_data_ms = 5 * 60 * 1000;
  c->max_junk_commands = 100;
  c->recipient_check_timeout_ms = 30000;
  c->timeout_proxy_ms = 10 * 1000;
  c->timeout_tls_handshake_ms = 30 * 1000;
  c->timeout_write_ms = 60 * 1000;
  c->log = xstrdup("stderr");
  add_default_listener(c, "default", "smtp://127.0.0.1:2525");
  add_default_listener(c, "default-ipv6", "smtp://[::1]:2525");
  c->auth_mechanisms = xstrdup("PLAIN LOGIN");
  c->accept_any = true;
  c->relay_authenticated = true;
  c->target = CFG_MAILDIR;
  c->maildir = xstrdup("./mail");
  c->fsync = true;
  c->forward_verify = true;
}

void cfg_free(struct cfg *c) {
  if (c == NULL)
    return;
  free(c->hostname);
  free(c->xclient_networks);
  free(c->user);
  free(c->group);
  free(c->log);
  for (size_t i = 0; i < c->nlisteners; i++)
    listener_reset(&c->listeners[i]);
  for (size_t i = 0; i < c->ncerts; i++) {
    free((char *)c->certs[i].cert_file);
    free((char *)c->certs[i].key_file);
  }
  free(c->users_file);
  free(c->auth_mechanisms);
  for (size_t i = 0; i < c->ndomains; i++)
    free(c->domains[i]);
  free(c->maildir);
  free(c->command);
  free(c->recipients_file);
  free(c->recipient_check);
  free(c->forward_url);
  free(c->forward_ca_file);
  free(c->forward_auth_user);
  free(c->forward_auth_password_file);
  if (c->forward_auth_password) {
    explicit_bzero(c->forward_auth_password, strlen(c->forward_auth_password));
    free(c->forward_auth_password);
  }
  free(c->path);
  memset(c, 0, sizeof *c);
}

/* ---- reload: what needs a restart --------------------------------------- */

static bool str_differs(const char *a, const char *b) {
  return (a == NULL) != (b == NULL) || (a && strcmp(a, b) != 0);
}

struct keylist {
  char *buf;
  size_t cap, len, n;
  bool full;
};

/* Add "a.b.c" to the list; past cap the list ends in "..." (4 octets
 * are always kept free for it). */
static void key_add(struct keylist *k, const char *a, const char *b,
                    const char *c) {
  char one[256];
  snprintf(one, sizeof one, "%s%s%s%s%s", a, b ? "." : "", b ? b : "",
           c ? "." : "", c ? c : "");
  k->n++;
  if (k->full || k->cap < 4)
    return;
  size_t need = strlen(one) + (k->len ? 1 : 0);
  if (k->len + need + 4 > k->cap) {
    k->full = true;
    snprintf(k->buf + k->len, k->cap - k->len, "...");
    return;
  }
  snprintf(k->buf + k->len, k->cap - k->len, "%s%s", k->len ? "," : "", one);
  k->len += need;
}

static const struct cfg_listener *listener_named(const struct cfg *c,
                                                 const char *name) {
  for (size_t i = 0; i < c->nlisteners; i++)
    if (c->listeners[i].name && !strcmp(c->listeners[i].name, name))
      return &c->listeners[i];
  return NULL;
}

size_t cfg_restart_keys(const struct cfg *a, const struct cfg *b,
                        bool listeners_fixed, char *buf, size_t cap) {
  struct keylist k = {buf, cap, 0, 0, false};
  if (cap)
    buf[0] = '\0';
  if (a->workers != b->workers)
    key_add(&k, "server", "workers", NULL);
  if (str_differs(a->user, b->user))
    key_add(&k, "server", "user", NULL);
  if (str_differs(a->group, b->group))
    key_add(&k, "server", "group", NULL);
  if (str_differs(a->log, b->log))
    key_add(&k, "server", "log", NULL);
  if (str_differs(a->xclient_networks, b->xclient_networks))
    key_add(&k, "server", "xclient_networks", NULL);
  /* AUTH is offered or not from start-up on; its users apply live */
  if ((a->users_file == NULL) != (b->users_file == NULL))
    key_add(&k, "auth", "users", NULL);
  if (str_differs(a->auth_mechanisms, b->auth_mechanisms))
    key_add(&k, "auth", "mechanisms", NULL);
  /* certificates: other files apply live, none <-> some does not */
  if ((a->ncerts == 0) != (b->ncerts == 0))
    key_add(&k, "tls", "cert", NULL);
  if (a->fsync != b->fsync)
    key_add(&k, "delivery", "fsync", NULL);
  if (listeners_fixed)
    return k.n;
  for (size_t i = 0; i < b->nlisteners; i++) {
    const struct cfg_listener *n = &b->listeners[i];
    const struct cfg_listener *o = listener_named(a, n->name);
    if (!o) {
      key_add(&k, "listener", n->name, NULL);
      continue;
    }
    if (str_differs(o->url, n->url))
      key_add(&k, "listener", n->name, "url");
    if (o->starttls != n->starttls)
      key_add(&k, "listener", n->name, "starttls");
    if (o->proxy != n->proxy)
      key_add(&k, "listener", n->name, "proxy_protocol");
    if (o->auth != n->auth)
      key_add(&k, "listener", n->name, "auth");
    if (o->insecure_auth != n->insecure_auth)
      key_add(&k, "listener", n->name, "insecure_auth");
    if (o->xclient != n->xclient)
      key_add(&k, "listener", n->name, "xclient");
  }
  for (size_t i = 0; i < a->nlisteners; i++)
    if (!listener_named(b, a->listeners[i].name))
      key_add(&k, "listener", a->listeners[i].name, NULL);
  /* the same listeners in another order: fds and ports follow the order */
  for (size_t i = 0; i < a->nlisteners && i < b->nlisteners; i++)
    if (str_differs(a->listeners[i].name, b->listeners[i].name)) {
      key_add(&k, "listener", "order", NULL);
      break;
    }
  return k.n;
}

/* ---- the parser state
 * -------------------------------------------------------- */

enum section {
  SEC_NONE = 0, /* before the first [section] */
  SEC_SERVER,
  SEC_LISTENER,
  SEC_TLS,
  SEC_AUTH,
  SEC_DOMAINS,
  SEC_DELIVERY,
};

static const char *const section_names[] = {
    [SEC_NONE] = "",
    [SEC_SERVER] = "server",
    [SEC_LISTENER] = "listener",
    [SEC_TLS] = "tls",
    [SEC_AUTH] = "auth",
    [SEC_DOMAINS] = "domains",
    [SEC_DELIVERY] = "delivery",
};

/* Marks a value kept aside by the reader (the line was too long). */
#define LONG_MARKER "\x01tern-long-value\x01"

struct pstate {
  struct cfg *c;
  const char *path; /* for messages */
  FILE *f;
  int line;
  char *buf;
  size_t bufcap;
  char *longval; /* the value of the current (over-long) line */
  enum section sec;
  size_t cur; /* current listener index (SEC_LISTENER) */
  bool listeners_replaced;
  int listener_line[CFG_MAX_LISTENERS];
  uint64_t listener_seen[CFG_MAX_LISTENERS];
  uint64_t seen; /* keys of the other sections, by table index */
  int cert_line; /* a cert waiting for its key, else 0 */
  int target_line;
  bool accept_given;
  /* the first error */
  char *err;
  size_t cap;
  bool failed;
  int err_line;
};

#if defined(__GNUC__)
__attribute__((format(printf, 3, 4)))
#endif
static void
fail(struct pstate *st, int line, const char *fmt, ...) {
  if (st->failed)
    return;
  st->failed = true;
  st->err_line = line;
  if (st->err == NULL || st->cap == 0)
    return;
  int n;
  if (line > 0)
    n = snprintf(st->err, st->cap, "%s:%d: ", st->path, line);
  else
    n = snprintf(st->err, st->cap, "%s: ", st->path);
  if (n < 0 || (size_t)n >= st->cap)
    return;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(st->err + n, st->cap - (size_t)n, fmt, ap);
  va_end(ap);
}

/* ---- the keys -------------------------------------------------------------
 */

struct key;
typedef int (*parse_fn)(struct pstate *st, const struct key *k, const char *v,
                        void *field);

struct key {
  enum section sec;
  const char *name;
  parse_fn parse;
  size_t off;         /* into struct cfg, or struct cfg_listener */
  uint64_t min, max;  /* numbers, durations (ms), sizes */
  const char *expect; /* "expected ..." for messages */
};

static int bad(struct pstate *st, const struct key *k, const char *v) {
  fail(st, st->line, "bad value '%s' for %s: expected %s", v, k->name,
       k->expect);
  return -1;
}

static int p_uint(struct pstate *st, const struct key *k, const char *v,
                  void *field) {
  uint64_t n;
  if (parse_u64(v, strlen(v), &n) != 0 || n < k->min || n > k->max)
    return bad(st, k, v);
  *(unsigned *)field = (unsigned)n;
  return 0;
}

/* A file mode in octal, like 0660 (at most 0777: no set-id bits). */
static int p_mode(struct pstate *st, const struct key *k, const char *v,
                  void *field) {
  unsigned m = 0;
  size_t n = strlen(v);
  if (n == 0 || n > 4)
    return bad(st, k, v);
  for (size_t i = 0; i < n; i++) {
    if (v[i] < '0' || v[i] > '7')
      return bad(st, k, v);
    m = m * 8 + (unsigned)(v[i] - '0');
  }
  if (m > 0777 || m == 0)
    return bad(st, k, v);
  *(unsigned *)field = m;
  return 0;
}

static int p_duration(struct pstate *st, const struct key *k, const char *v,
                      void *field) {
  uint64_t ms;
  if (cfg_parse_duration_ms(v, &ms) != 0 || ms < k->min || ms > k->max)
    return bad(st, k, v);
  *(unsigned *)field = (unsigned)ms;
  return 0;
}

static int p_size(struct pstate *st, const struct key *k, const char *v,
                  void *field) {
  uint64_t n;
  if (cfg_parse_size(v, &n) != 0 || n < k->min || n > k->max)
    return bad(st, k, v);
  *(uint64_t *)field = n;
  return 0;
}

static int p_bool(struct pstate *st, const struct key *k, const char *v,
                  void *field) {
  if (cfg_parse_bool(v, (bool *)field) != 0)
    return bad(st, k, v);
  return 0;
}

/* A non-empty string without control characters (paths, names). */
static int p_string(struct pstate *st, const struct key *k, const char *v,
                    void *field) {
  if (v[0] == '\0' || has_ctl(v))
    return bad(st, k, v);
  set_str((char **)field, v);
  return 0;
}

static int p_hostname(struct pstate *st, const struct key *k, const char *v,
                      void *field) {
  if (!host_ok(v, strlen(v)))
    return bad(st, k, v);
  set_str((char **)field, v);
  return 0;
}

static int p_log(struct pstate *st, const struct key *k, const char *v,
                 void *field) {
  if (strcmp(v, "stderr") != 0 && strcmp(v, "syslog") != 0)
    return bad(st, k, v);
  set_str((char **)field, v);
  return 0;
}

static int p_networks(struct pstate *st, const struct key *k, const char *v,
                      void *field) {
  const char *p = v;
  bool any = false;
  while (*p) {
    while (is_space((unsigned char)*p) || *p == ',')
      p++;
    if (*p == '\0')
      break;
    const char *s = p;
    while (*p && !is_space((unsigned char)*p) && *p != ',')
      p++;
    if (!network_ok(s, (size_t)(p - s))) {
      fail(st, st->line,
           "bad value '%.*s' for %s: expected networks like 127.0.0.0/8 ::1",
           (int)(p - s), s, k->name);
      return -1;
    }
    any = true;
  }
  if (!any)
    return bad(st, k, v);
  set_str((char **)field, v);
  return 0;
}

static int p_listener_url(struct pstate *st, const struct key *k, const char *v,
                          void *field) {
  if (!listener_url_ok(v))
    return bad(st, k, v);
  set_str((char **)field, v);
  return 0;
}

static int p_auth(struct pstate *st, const struct key *k, const char *v,
                  void *field) {
  bool b;
  enum cfg_auth *a = field;
  if (strcasecmp(v, "required") == 0)
    *a = CFG_AUTH_REQUIRED;
  else if (cfg_parse_bool(v, &b) == 0)
    *a = b ? CFG_AUTH_ON : CFG_AUTH_OFF;
  else
    return bad(st, k, v);
  return 0;
}

static int p_cert(struct pstate *st, const struct key *k, const char *v,
                  void *field) {
  struct cfg *c = st->c;
  (void)field;
  if (v[0] == '\0' || has_ctl(v))
    return bad(st, k, v);
  if (st->cert_line != 0) {
    fail(st, st->line,
         "cert without a key (the cert on line %d needs a "
         "key line before the next cert)",
         st->cert_line);
    return -1;
  }
  if (c->ncerts == CFG_MAX_CERTS) {
    fail(st, st->line, "too many certificates (at most %d)", CFG_MAX_CERTS);
    return -1;
  }
  c->certs[c->ncerts].cert_file = xstrdup(v);
  c->certs[c->ncerts].key_file = NULL;
  c->ncerts++;
  st->cert_line = st->line;
  return 0;
}

static int p_key(struct pstate *st, const struct key *k, const char *v,
                 void *field) {
  struct cfg *c = st->c;
  (void)field;
  if (v[0] == '\0' || has_ctl(v))
    return bad(st, k, v);
  if (st->cert_line == 0) {
    fail(st, st->line,
         "key without a cert: write cert = FILE, then key = "
         "FILE");
    return -1;
  }
  c->certs[c->ncerts - 1].key_file = xstrdup(v);
  st->cert_line = 0;
  return 0;
}

static int p_mechanisms(struct pstate *st, const struct key *k, const char *v,
                        void *field) {
  char out[64] = "";
  size_t n = 0;
  const char *p = v;
  bool any = false;
  while (*p) {
    while (is_space((unsigned char)*p) || *p == ',')
      p++;
    if (*p == '\0')
      break;
    const char *s = p;
    while (*p && !is_space((unsigned char)*p) && *p != ',')
      p++;
    size_t len = (size_t)(p - s);
    const char *m = NULL;
    if (len == 5 && strncasecmp(s, "PLAIN", 5) == 0)
      m = "PLAIN";
    else if (len == 5 && strncasecmp(s, "LOGIN", 5) == 0)
      m = "LOGIN";
    if (m == NULL) {
      fail(st, st->line,
           "bad value '%.*s' for %s: expected PLAIN and/or LOGIN (the "
           "users file holds crypt hashes, which other mechanisms cannot "
           "use)",
           (int)len, s, k->name);
      return -1;
    }
    if (strstr(out, m) != NULL)
      continue; /* said twice */
    n += (size_t)snprintf(out + n, sizeof out - n, "%s%s", n ? " " : "", m);
    any = true;
  }
  if (!any)
    return bad(st, k, v);
  set_str((char **)field, out);
  return 0;
}

static void clear_domains(struct cfg *c) {
  for (size_t i = 0; i < c->ndomains; i++)
    free(c->domains[i]);
  c->ndomains = 0;
}

static int p_accept(struct pstate *st, const struct key *k, const char *v,
                    void *field) {
  struct cfg *c = st->c;
  const char *p = v;
  bool any = false, star = false;
  (void)field;
  clear_domains(c);
  c->accept_any = false; /* so cfg_domain_accepted finds repeats */
  while (*p) {
    while (is_space((unsigned char)*p) || *p == ',')
      p++;
    if (*p == '\0')
      break;
    const char *s = p;
    while (*p && !is_space((unsigned char)*p) && *p != ',')
      p++;
    size_t len = (size_t)(p - s);
    any = true;
    if (len == 1 && s[0] == '*') {
      star = true;
      continue;
    }
    if (!domain_ok(s, len)) {
      fail(st, st->line,
           "bad value '%.*s' for %s: expected domains like example.org "
           "(or * for any)",
           (int)len, s, k->name);
      return -1;
    }
    if (s[len - 1] == '.')
      len--;
    if (cfg_domain_accepted(c, s, len))
      continue; /* listed twice */
    if (c->ndomains == CFG_MAX_DOMAINS) {
      fail(st, st->line, "too many domains for accept (at most %d)",
           CFG_MAX_DOMAINS);
      return -1;
    }
    char *d = xstrndup(s, len);
    for (char *q = d; *q; q++)
      *q = (char)lower((unsigned char)*q);
    c->domains[c->ndomains++] = d;
  }
  if (!any)
    return bad(st, k, v);
  c->accept_any = star;
  st->accept_given = true;
  return 0;
}

static int p_target(struct pstate *st, const struct key *k, const char *v,
                    void *field) {
  static const char *const names[] = {[CFG_MAILDIR] = "maildir",
                                      [CFG_PIPE] = "pipe",
                                      [CFG_LMTP] = "lmtp",
                                      [CFG_SMTP] = "smtp"};
  for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
    if (strcmp(v, names[i]) == 0) {
      *(enum cfg_target *)field = (enum cfg_target)i;
      st->target_line = st->line;
      return 0;
    }
  }
  return bad(st, k, v);
}

static int p_maildir(struct pstate *st, const struct key *k, const char *v,
                     void *field) {
  if (v[0] == '\0' || has_ctl(v) || !template_ok(v, MAILDIR_ESCAPES))
    return bad(st, k, v);
  set_str((char **)field, v);
  return 0;
}

static int p_command(struct pstate *st, const struct key *k, const char *v,
                     void *field) {
  if (v[0] == '\0' || has_ctl(v) || !template_ok(v, COMMAND_ESCAPES))
    return bad(st, k, v);
  set_str((char **)field, v);
  return 0;
}

/* The scheme is checked against the target once the whole file is read. */
static int p_forward_url(struct pstate *st, const struct key *k, const char *v,
                         void *field) {
  if (!forward_url_ok(v, CFG_SMTP) && !forward_url_ok(v, CFG_LMTP))
    return bad(st, k, v);
  set_str((char **)field, v);
  return 0;
}

#define CO(f) offsetof(struct cfg, f)
#define LO(f) offsetof(struct cfg_listener, f)
#define DAY_MS (24ull * 3600 * 1000)
#define E_NUM(max) "a number from 0 to " #max
#define E_DUR "a duration like 30s, 500ms or 5m"
#define E_BOOL "yes or no"

static const struct key keys[] = {
    /* [server] */
    {SEC_SERVER, "hostname", p_hostname, CO(hostname), 0, 0,
     "a host name like mx.example.org"},
    {SEC_SERVER, "workers", p_uint, CO(workers), 0, 1024,
     "a number from 0 (one per core) to 1024"},
    {SEC_SERVER, "max_connections", p_uint, CO(max_connections), 1, 1000000,
     "a number from 1 to 1000000"},
    {SEC_SERVER, "max_per_ip", p_uint, CO(max_per_ip), 0, 1000000,
     "a number from 0 (no limit) to 1000000"},
    {SEC_SERVER, "greeting_delay", p_duration, CO(greeting_delay_ms), 0,
     5 * 60 * 1000, "a duration like 5s or 500ms (at most 5m)"},
    {SEC_SERVER, "shutdown_timeout", p_duration, CO(shutdown_timeout_ms), 0,
     DAY_MS, E_DUR " (at most 24h)"},
    {SEC_SERVER, "max_message_size", p_size, CO(max_message_size), 0,
     1ull << 40, "a size like 30M (0 = no limit)"},
    {SEC_SERVER, "max_recipients", p_uint, CO(max_recipients), 1, 1000000,
     "a number from 1 to 1000000"},
    {SEC_SERVER, "timeout_command", p_duration, CO(timeout_command_ms), 1000,
     DAY_MS, E_DUR " (1s to 24h)"},
    {SEC_SERVER, "timeout_data", p_duration, CO(timeout_data_ms), 1000, DAY_MS,
     E_DUR " (1s to 24h)"},
    {SEC_SERVER, "max_line_length", p_uint, CO(max_line_length), 0,
     1u << 30, "a number of octets (0 = no limit; RFC 5321 says 1000)"},
    {SEC_SERVER, "max_junk_commands", p_uint, CO(max_junk_commands), 0,
     1000000, "a number from 0 (no limit) to 1000000"},
    {SEC_SERVER, "timeout_proxy", p_duration, CO(timeout_proxy_ms), 100,
     DAY_MS, E_DUR " (100ms to 24h)"},
    {SEC_SERVER, "timeout_tls_handshake", p_duration,
     CO(timeout_tls_handshake_ms), 100, DAY_MS, E_DUR " (100ms to 24h)"},
    {SEC_SERVER, "timeout_write", p_duration, CO(timeout_write_ms), 100,
     DAY_MS, E_DUR " (100ms to 24h)"},
    {SEC_SERVER, "xclient_networks", p_networks, CO(xclient_networks), 0, 0,
     "networks like 127.0.0.0/8 ::1"},
    {SEC_SERVER, "user", p_string, CO(user), 0, 0, "a user name"},
    {SEC_SERVER, "group", p_string, CO(group), 0, 0, "a group name"},
    {SEC_SERVER, "log", p_log, CO(log), 0, 0, "stderr or syslog"},
    /* [listener NAME] */
    {SEC_LISTENER, "url", p_listener_url, LO(url), 0, 0,
     "a listener URL like smtp://0.0.0.0:25, smtp://[::]:587, "
     "smtps://*:465 or lmtp:///run/tern/lmtp"},
    {SEC_LISTENER, "starttls", p_bool, LO(starttls), 0, 0, E_BOOL},
    {SEC_LISTENER, "proxy_protocol", p_bool, LO(proxy), 0, 0, E_BOOL},
    {SEC_LISTENER, "auth", p_auth, LO(auth), 0, 0, "no, yes or required"},
    {SEC_LISTENER, "insecure_auth", p_bool, LO(insecure_auth), 0, 0, E_BOOL},
    {SEC_LISTENER, "xclient", p_bool, LO(xclient), 0, 0, E_BOOL},
    {SEC_LISTENER, "socket_user", p_string, LO(socket_user), 0, 0,
     "a user name (unix-socket listeners)"},
    {SEC_LISTENER, "socket_group", p_string, LO(socket_group), 0, 0,
     "a group name (unix-socket listeners)"},
    {SEC_LISTENER, "socket_mode", p_mode, LO(socket_mode), 0, 0,
     "an octal mode like 0660 (unix-socket listeners)"},
    /* [tls] */
    {SEC_TLS, "cert", p_cert, 0, 0, 0, "a certificate file (PEM)"},
    {SEC_TLS, "key", p_key, 0, 0, 0, "a private key file (PEM)"},
    /* [auth] */
    {SEC_AUTH, "users", p_string, CO(users_file), 0, 0, "a file name"},
    {SEC_AUTH, "mechanisms", p_mechanisms, CO(auth_mechanisms), 0, 0,
     "PLAIN and/or LOGIN"},
    /* [domains] */
    {SEC_DOMAINS, "accept", p_accept, 0, 0, 0,
     "domains like example.org example.net"},
    {SEC_DOMAINS, "relay_authenticated", p_bool, CO(relay_authenticated), 0, 0,
     E_BOOL},
    /* [delivery] */
    {SEC_DELIVERY, "target", p_target, CO(target), 0, 0,
     "maildir, pipe, lmtp or smtp"},
    {SEC_DELIVERY, "maildir", p_maildir, CO(maildir), 0, 0,
     "a directory, or a template with %u (local part), %d (domain), "
     "%a (address), %%"},
    {SEC_DELIVERY, "fsync", p_bool, CO(fsync), 0, 0, E_BOOL},
    {SEC_DELIVERY, "command", p_command, CO(command), 0, 0,
     "a command line; escapes %s (sender), %r or %a (recipient), "
     "%u (local part), %d (domain), %%"},
    {SEC_DELIVERY, "url", p_forward_url, CO(forward_url), 0, 0,
     "a URL like lmtp:///run/dovecot/lmtp, lmtp://host:24, "
     "smtp://host:25, smtp+starttls://host:587 or smtps://host:465"},
    {SEC_DELIVERY, "verify", p_bool, CO(forward_verify), 0, 0, E_BOOL},
    {SEC_DELIVERY, "recipients", p_string, CO(recipients_file), 0, 0,
     "a file name"},
    {SEC_DELIVERY, "recipient_check", p_command, CO(recipient_check), 0, 0,
     "a command line; escapes %s (sender), %r or %a (recipient), "
     "%u (local part), %d (domain), %%"},
    {SEC_DELIVERY, "recipient_check_timeout", p_duration,
     CO(recipient_check_timeout_ms), 100, 10 * 60 * 1000,
     E_DUR " (100ms to 10m)"},
    {SEC_DELIVERY, "ca_file", p_string, CO(forward_ca_file), 0, 0,
     "a file name"},
    {SEC_DELIVERY, "auth_user", p_string, CO(forward_auth_user), 0, 0,
     "a user name for the next hop's AUTH"},
    {SEC_DELIVERY, "auth_password_file", p_string,
     CO(forward_auth_password_file), 0, 0,
     "a file whose first line is the next hop's AUTH password"},
};

_Static_assert(sizeof keys / sizeof keys[0] <= 64, "seen bits are 64");

/* ---- sections --------------------------------------------------------------
 */

/* A "[...]" line: the name between the brackets, trimmed. */
static void section_begin(struct pstate *st, const char *name, size_t n) {
  struct cfg *c = st->c;
  while (n > 0 && is_space((unsigned char)*name))
    name++, n--;
  while (n > 0 && is_space((unsigned char)name[n - 1]))
    n--;
  for (int s = SEC_SERVER; s <= SEC_DELIVERY; s++) {
    if (s == SEC_LISTENER)
      continue;
    if (strlen(section_names[s]) == n &&
        strncmp(name, section_names[s], n) == 0) {
      st->sec = (enum section)s;
      return;
    }
  }
  if (n >= 8 && strncmp(name, "listener", 8) == 0 &&
      (n == 8 || is_space((unsigned char)name[8]))) {
    const char *ln = name + 8;
    size_t lnn = n - 8;
    while (lnn > 0 && is_space((unsigned char)*ln))
      ln++, lnn--;
    if (lnn == 0) {
      fail(st, st->line, "a listener section needs a name: [listener NAME]");
      return;
    }
    for (size_t i = 0; i < lnn; i++) {
      unsigned char ch = (unsigned char)ln[i];
      if (!is_alnum(ch) && ch != '-' && ch != '_' && ch != '.') {
        fail(st, st->line,
             "bad listener name '%.*s': use letters, digits, '-', '_', '.'",
             (int)lnn, ln);
        return;
      }
    }
    if (!st->listeners_replaced) {
      /* The file's listeners replace the embedded ones. */
      for (size_t i = 0; i < c->nlisteners; i++)
        listener_reset(&c->listeners[i]);
      c->nlisteners = 0;
      st->listeners_replaced = true;
    }
    for (size_t i = 0; i < c->nlisteners; i++) {
      if (strlen(c->listeners[i].name) == lnn &&
          strncmp(c->listeners[i].name, ln, lnn) == 0) {
        fail(st, st->line, "listener '%.*s' is already defined on line %d",
             (int)lnn, ln, st->listener_line[i]);
        return;
      }
    }
    if (c->nlisteners == CFG_MAX_LISTENERS) {
      fail(st, st->line, "too many listeners (at most %d)", CFG_MAX_LISTENERS);
      return;
    }
    st->cur = c->nlisteners++;
    struct cfg_listener *l = &c->listeners[st->cur];
    memset(l, 0, sizeof *l);
    l->name = xstrndup(ln, lnn);
    st->listener_line[st->cur] = st->line;
    st->listener_seen[st->cur] = 0;
    st->sec = SEC_LISTENER;
    return;
  }
  fail(st, st->line, "unknown section [%.*s]", (int)n, name);
}

static void key_value(struct pstate *st, const char *name, const char *v) {
  if (st->sec == SEC_NONE) {
    fail(st, st->line,
         "key '%s' outside any section (write [server], "
         "[listener NAME], ... first)",
         name);
    return;
  }
  for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) {
    const struct key *k = &keys[i];
    if (k->sec != st->sec || strcmp(k->name, name) != 0)
      continue;
    uint64_t bit = 1ull << i;
    uint64_t *seen =
        st->sec == SEC_LISTENER ? &st->listener_seen[st->cur] : &st->seen;
    bool repeatable = st->sec == SEC_TLS;
    if ((*seen & bit) && !repeatable) {
      if (st->sec == SEC_LISTENER)
        fail(st, st->line, "key '%s' given twice in [listener %s]", name,
             st->c->listeners[st->cur].name);
      else
        fail(st, st->line, "key '%s' given twice in [%s]", name,
             section_names[st->sec]);
      return;
    }
    *seen |= bit;
    void *base = st->sec == SEC_LISTENER ? (void *)&st->c->listeners[st->cur]
                                         : (void *)st->c;
    k->parse(st, k, v, (char *)base + k->off);
    return;
  }
  if (st->sec == SEC_LISTENER)
    fail(st, st->line, "unknown key '%s' in [listener %s]", name,
         st->c->listeners[st->cur].name);
  else
    fail(st, st->line, "unknown key '%s' in [%s]", name,
         section_names[st->sec]);
}

/* ---- inih glue
 * ---------------------------------------------------------------- */

#if INI_HANDLER_LINENO
static int handler(void *user, const char *section, const char *name,
                   const char *value, int lineno) {
  (void)lineno; /* ours counts the same lines */
#else
static int handler(void *user, const char *section, const char *name,
                   const char *value) {
#endif
  struct pstate *st = user;
  (void)section; /* ours, from the reader, is the one that counts */
  if (st->failed || name == NULL)
    return 1;
  if (value == NULL)
    value = "";
  if (strcmp(value, LONG_MARKER) == 0 && st->longval != NULL)
    value = st->longval;
  key_value(st, name, value);
  return 1; /* errors are ours to report; a 0 would count as syntax */
}

/*
 * inih's fgets-style reader: one line of the file per call. See the top
 * of the file for what it does besides.
 */
static char *reader(char *str, int num, void *stream) {
  struct pstate *st = stream;
  if (st->failed)
    return NULL;
  if (num < 80) { /* a build of inih with a tiny line buffer */
    fail(st, 0, "cannot parse: inih's line buffer is too small (%d)", num);
    return NULL;
  }
  errno = 0;
  ssize_t got = getline(&st->buf, &st->bufcap, st->f);
  if (got < 0) {
    if (ferror(st->f))
      fail(st, 0, "cannot read: %s", strerror(errno ? errno : EIO));
    return NULL;
  }
  st->line++;
  free(st->longval);
  st->longval = NULL;
  size_t n = (size_t)got;
  char *p = st->buf;
  if (strlen(p) != n) {
    fail(st, st->line, "NUL byte in the file");
    return NULL;
  }
  while (n > 0 && (p[n - 1] == '\n' || p[n - 1] == '\r'))
    p[--n] = '\0';
  if (st->line == 1 && n >= 3 && memcmp(p, "\xEF\xBB\xBF", 3) == 0)
    p += 3, n -= 3; /* UTF-8 byte-order mark */
  while (n > 0 && is_space((unsigned char)*p))
    p++, n--;

  if (p[0] == '[') {
    const char *end = strchr(p, ']');
    if (end != NULL)
      section_begin(st, p + 1, (size_t)(end - p - 1));
    /* else inih reports the syntax error on this line */
    if (st->failed)
      return NULL;
    if (n + 3 > (size_t)num) /* inih needs to see only "[x]" */
      n = 3, p = "[x]";
  } else if (n + 3 > (size_t)num && p[0] != ';' && p[0] != '#') {
    /* Too long for inih's buffer: split it as inih would (name up to the
     * first '=' or ':'; value trimmed, up to a ';' after white space)
     * and hand inih the name with a marker. */
    size_t d = strcspn(p, "=:");
    if (p[d] == '\0') {
      fail(st, st->line,
           "syntax error: expected 'key = value' or "
           "'[section]'");
      return NULL;
    }
    size_t nl = d;
    while (nl > 0 && is_space((unsigned char)p[nl - 1]))
      nl--;
    const char *v = p + d + 1;
    while (is_space((unsigned char)*v))
      v++;
    size_t vl = strlen(v);
    for (size_t i = 1; i < vl; i++) {
      if (v[i] == ';' && is_space((unsigned char)v[i - 1])) {
        vl = i;
        break;
      }
    }
    while (vl > 0 && is_space((unsigned char)v[vl - 1]))
      vl--;
    if (nl + sizeof LONG_MARKER + 2 > (size_t)num) {
      fail(st, st->line, "unknown key '%.*s'", (int)(nl > 60 ? 60 : nl), p);
      return NULL;
    }
    st->longval = xstrndup(v, vl);
    snprintf(str, (size_t)num, "%.*s=%s\n", (int)nl, p, LONG_MARKER);
    return str;
  } else if (n + 3 > (size_t)num) {
    p = ";", n = 1; /* a long comment */
  }
  memcpy(str, p, n);
  str[n] = '\n';
  str[n + 1] = '\0';
  return str;
}

int cfg_load(struct cfg *c, const char *path, char *err, size_t cap) {
  struct pstate st;
  memset(&st, 0, sizeof st);
  st.c = c;
  st.path = path;
  st.err = err;
  st.cap = cap;
  if (err != NULL && cap > 0)
    err[0] = '\0';
  st.f = fopen(path, "r");
  if (st.f == NULL) {
    fail(&st, 0, "cannot open: %s", strerror(errno));
    return -1;
  }
  set_str(&c->path, path);
  int rc = ini_parse_stream(reader, &st, handler, &st);
  fclose(st.f);
  free(st.buf);
  free(st.longval);
  if (rc > 0 && (!st.failed || st.err_line == 0 || rc < st.err_line)) {
    /* inih's syntax error comes first */
    st.failed = false;
    fail(&st, rc, "syntax error: expected 'key = value' or '[section]'");
  } else if (rc < 0 && !st.failed) {
    fail(&st, 0, "out of memory");
  }
  if (st.failed)
    return -1;

  /* What needs the whole file. */
  if (st.cert_line != 0) {
    fail(&st, st.cert_line,
         "cert without a key: write key = FILE after "
         "it");
    return -1;
  }
  if (st.listeners_replaced) {
    for (size_t i = 0; i < c->nlisteners; i++) {
      struct cfg_listener *l = &c->listeners[i];
      if (l->url == NULL) {
        fail(&st, st.listener_line[i], "[listener %s] has no url", l->name);
        return -1;
      }
      if (l->starttls && has_prefix(l->url, "smtps://")) {
        fail(&st, st.listener_line[i],
             "[listener %s]: starttls with smtps:// (TLS from the start); "
             "use one or the other",
             l->name);
        return -1;
      }
    }
  }
  int tl = st.target_line;
  if (c->target == CFG_PIPE && c->command == NULL) {
    fail(&st, tl, "target = pipe needs a command in [delivery]");
    return -1;
  }
  if ((c->target == CFG_LMTP || c->target == CFG_SMTP) &&
      c->forward_url == NULL) {
    fail(&st, tl, "target = %s needs a url in [delivery]",
         c->target == CFG_LMTP ? "lmtp" : "smtp");
    return -1;
  }
  if ((c->target == CFG_LMTP || c->target == CFG_SMTP) &&
      !forward_url_ok(c->forward_url, c->target)) {
    fail(&st, tl, "target = %s does not go with url = %s (%s)",
         c->target == CFG_LMTP ? "lmtp" : "smtp", c->forward_url,
         c->target == CFG_LMTP
             ? "expected lmtp://host[:port] or lmtp:///path"
             : "expected smtp://, smtp+starttls:// or smtps://");
    return -1;
  }
  if (c->forward_auth_user || c->forward_auth_password_file) {
    /* Next-hop credentials go only over TLS whose certificate was
     * verified: never over smtp:// (opportunistic, unverified). */
    if (!c->forward_auth_user || !c->forward_auth_password_file) {
      fail(&st, tl, "[delivery] auth_user and auth_password_file go "
                    "together");
      return -1;
    }
    if (c->target != CFG_SMTP || !c->forward_url ||
        !(has_prefix(c->forward_url, "smtp+starttls://") ||
          has_prefix(c->forward_url, "smtps://")) ||
        !c->forward_verify) {
      fail(&st, tl, "[delivery] auth_user needs a verified TLS channel: "
                    "url = smtp+starttls:// or smtps:// with verify = yes");
      return -1;
    }
    FILE *f = fopen(c->forward_auth_password_file, "r");
    char pw[1024];
    if (!f) {
      fail(&st, tl, "auth_password_file = %s: %s",
           c->forward_auth_password_file, strerror(errno));
      return -1;
    }
    bool got = fgets(pw, sizeof pw, f) != NULL;
    fclose(f);
    pw[strcspn(pw, "\r\n")] = '\0';
    if (!got || !pw[0]) {
      fail(&st, tl, "auth_password_file = %s: no password on its first line",
           c->forward_auth_password_file);
      return -1;
    }
    set_str(&c->forward_auth_password, pw);
    explicit_bzero(pw, sizeof pw);
  }
  return 0;
}

int cfg_set(struct cfg *c, const char *section, const char *key,
            const char *value, char *err, size_t cap) {
  struct pstate st;
  memset(&st, 0, sizeof st);
  st.c = c;
  st.path = "command line";
  st.err = err;
  st.cap = cap;
  for (int s = SEC_SERVER; s <= SEC_DELIVERY; s++)
    if (s != SEC_LISTENER && s != SEC_TLS &&
        strcmp(section, section_names[s]) == 0)
      st.sec = (enum section)s;
  if (st.sec == SEC_NONE) {
    fail(&st, 0,
         "unknown section [%s] (only [server], [auth], [domains], "
         "[delivery] can be set this way)",
         section);
    return -1;
  }
  key_value(&st, key, value);
  return st.failed ? -1 : 0;
}

/* ---- whole-configuration checks ---------------------------------------------
 */

#if defined(__GNUC__)
__attribute__((format(printf, 4, 5)))
#endif
static int
check_fail(const struct cfg *c, char *err, size_t cap, const char *fmt, ...) {
  if (err == NULL || cap == 0)
    return -1;
  int n = snprintf(err, cap, "%s: ", c->path ? c->path : "tern serve");
  if (n < 0 || (size_t)n >= cap)
    return -1;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(err + n, cap - (size_t)n, fmt, ap);
  va_end(ap);
  return -1;
}

int cfg_check(const struct cfg *c, char *err, size_t cap) {
  bool any_auth = false;
  if (err != NULL && cap > 0)
    err[0] = '\0';
  if (c->nlisteners == 0)
    return check_fail(c, err, cap, "no listeners");
  for (size_t i = 0; i < c->ncerts; i++)
    if (c->certs[i].cert_file == NULL || c->certs[i].key_file == NULL)
      return check_fail(c, err, cap, "[tls]: cert without a key");
  for (size_t i = 0; i < c->nlisteners; i++) {
    const struct cfg_listener *l = &c->listeners[i];
    bool smtps = l->url != NULL && has_prefix(l->url, "smtps://");
    bool unix_sock = l->url != NULL && is_unix_url(l->url);
    if (l->url == NULL || !listener_url_ok(l->url))
      return check_fail(c, err, cap, "[listener %s]: %s url", l->name,
                        l->url ? "bad" : "no");
    if ((l->starttls || smtps) && c->ncerts == 0)
      return check_fail(c, err, cap,
                        "[listener %s]: %s needs a certificate: add cert "
                        "and key to [tls]",
                        l->name, smtps ? "smtps://" : "starttls");
    if (l->starttls && smtps)
      return check_fail(c, err, cap,
                        "[listener %s]: starttls with smtps:// (TLS from "
                        "the start); use one or the other",
                        l->name);
    if (l->auth != CFG_AUTH_OFF) {
      any_auth = true;
      if (c->users_file == NULL)
        return check_fail(c, err, cap,
                          "[listener %s]: auth = %s needs a users file: "
                          "add users = FILE to [auth]",
                          l->name,
                          l->auth == CFG_AUTH_REQUIRED ? "required" : "yes");
      if (!l->starttls && !smtps && !unix_sock && !l->insecure_auth)
        return check_fail(c, err, cap,
                          "[listener %s]: auth is offered only over TLS: "
                          "set starttls = yes, use smtps://, or set "
                          "insecure_auth = yes",
                          l->name);
    }
    if ((l->socket_user || l->socket_group || l->socket_mode) && !unix_sock)
      return check_fail(c, err, cap,
                        "[listener %s]: socket_user, socket_group and "
                        "socket_mode are for unix-socket listeners "
                        "(lmtp:///path)",
                        l->name);
    if (l->socket_user && !getpwnam(l->socket_user))
      return check_fail(c, err, cap,
                        "[listener %s]: socket_user '%s' does not exist",
                        l->name, l->socket_user);
    if (l->socket_group && !getgrnam(l->socket_group))
      return check_fail(c, err, cap,
                        "[listener %s]: socket_group '%s' does not exist",
                        l->name, l->socket_group);
    if (l->xclient && c->xclient_networks == NULL)
      return check_fail(c, err, cap,
                        "[listener %s]: xclient = yes needs "
                        "xclient_networks in [server]",
                        l->name);
  }
  if (any_auth) {
    struct users *u = NULL;
    char uerr[512];
    if (users_load(c->users_file, &u, uerr, sizeof uerr) != 0)
      return check_fail(c, err, cap, "[auth] users: %s", uerr);
    users_free(u);
  }
  switch (c->target) {
  case CFG_MAILDIR:
    if (c->maildir == NULL || c->maildir[0] == '\0')
      return check_fail(c, err, cap, "target = maildir needs maildir");
    if (!template_ok(c->maildir, MAILDIR_ESCAPES))
      return check_fail(c, err, cap,
                        "maildir = %s: unknown %%-escape (known: %%u %%d "
                        "%%a %%%%)",
                        c->maildir);
    break;
  case CFG_PIPE:
    if (c->command == NULL || c->command[0] == '\0')
      return check_fail(c, err, cap, "target = pipe needs a command");
    if (!template_ok(c->command, COMMAND_ESCAPES))
      return check_fail(c, err, cap,
                        "command = %s: unknown %%-escape (known: %%s %%r "
                        "%%a %%u %%d %%%%)",
                        c->command);
    break;
  case CFG_LMTP:
  case CFG_SMTP:
    if (c->recipient_check != NULL)
      return check_fail(c, err, cap,
                        "recipient_check works with target = maildir or "
                        "pipe (the next hop checks its own recipients)");
    if (c->forward_url == NULL)
      return check_fail(c, err, cap, "target = %s needs a url",
                        c->target == CFG_LMTP ? "lmtp" : "smtp");
    if (!forward_url_ok(c->forward_url, c->target))
      return check_fail(c, err, cap, "target = %s does not go with url = %s",
                        c->target == CFG_LMTP ? "lmtp" : "smtp",
                        c->forward_url);
    break;
  }
  return 0;
}

bool cfg_domain_accepted(const struct cfg *c, const char *domain, size_t len) {
  if (c->accept_any)
    return true;
  if (len > 0 && domain[len - 1] == '.')
    len--;
  for (size_t i = 0; i < c->ndomains; i++) {
    const char *d = c->domains[i];
    if (strlen(d) == len && strncasecmp(d, domain, len) == 0)
      return true;
  }
  return false;
}
