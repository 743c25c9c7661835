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
 * Every key is in the table `keys` of config_keys.c, with its value
 * syntax; docs/configuration.md and docs/man/tern.ini.5 describe them.
 * Here: the defaults, the reader and sections, the checks that need the
 * whole file, and what a reload cannot apply.
 */
#include "config_keys.h"

#include <arpa/inet.h>
#include <errno.h>
#include <grp.h>
#include <ini.h>
#include <pwd.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "fileerr.h"
#include "users.h"

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
  c->queue = -1;
  c->queue_dir = xstrdup("./queue");
  cfg_abs_path(&c->queue_dir); /* the working directory at start */
  c->queue_lifetime_s = 5u * 24 * 3600;
  c->queue_retry_min_s = 300;
  c->queue_retry_max_s = 3600;
  c->queue_delay_warning_s = 0;
  c->queue_concurrency = 20;
  c->queue_max_active = 200;
  c->queue_fsync = true;
  c->relay_verify = true;
  c->out.dnssec = true;
  c->out.mta_sts = true;
  c->out.port = 25;
  c->out.connect_timeout_ms = 30 * 1000;
  c->out.timeout_ms = 5 * 60 * 1000;
}

int cfg_queue_control_path(const struct cfg *c, char *buf, size_t cap) {
  int n;
  if (c->queue_control != NULL)
    n = snprintf(buf, cap, "%s", c->queue_control);
  else
    n = snprintf(buf, cap, "%s/control", c->queue_dir ? c->queue_dir : ".");
  return n < 0 || (size_t)n >= cap ? -1 : 0;
}

bool cfg_relay_is_mx(const struct cfg *c) {
  return !c->relay_url && !c->relay_local &&
         (c->relay_set || c->outbound_keys);
}

/* Can authenticated users send to domains that are not accepted? */
static bool relays_authenticated(const struct cfg *c) {
  return c->relay_authenticated && c->users_file != NULL && !c->accept_any;
}

bool cfg_uses_outbound(const struct cfg *c) {
  if (c->target == CFG_MX)
    return true;
  for (size_t i = 0; i < c->nroutes; i++)
    if (c->routes[i].kind != CFG_ROUTE_LOCAL)
      return true;
  if (!c->relay_url && !cfg_relay_is_mx(c))
    return false;
  /* users' mail to other domains, or the queue's bounces to senders
   * elsewhere when the queue is on anyway (not through cfg_uses_queue,
   * which asks this) */
  bool forwards = c->target == CFG_LMTP || c->target == CFG_SMTP;
  bool queued = c->queue == 1 || (c->queue < 0 && forwards);
  return relays_authenticated(c) || queued;
}

bool cfg_uses_queue(const struct cfg *c) {
  if (c->queue >= 0)
    return c->queue != 0;
  return c->target == CFG_LMTP || c->target == CFG_SMTP ||
         cfg_uses_outbound(c);
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
  free(c->relay_url);
  free(c->relay_auth_user);
  free(c->relay_auth_password_file);
  if (c->relay_auth_password) {
    explicit_bzero(c->relay_auth_password, strlen(c->relay_auth_password));
    free(c->relay_auth_password);
  }
  free(c->relay_ca_file);
  for (size_t i = 0; i < c->nroutes; i++) {
    free(c->routes[i].domain);
    free(c->routes[i].url);
  }
  free(c->out.helo);
  free(c->out.bind);
  free(c->out.bind6);
  free(c->out.resolver);
  free(c->out.trust_anchor);
  free(c->out.mta_sts_ca_file);
  free(c->out.ca_file);
  for (size_t i = 0; i < c->ntls_policies; i++)
    free(c->tls_policies[i].domain);
  for (size_t i = 0; i < c->ndkim; i++) {
    free((char *)c->dkim[i].domain);
    free((char *)c->dkim[i].selector);
    free((char *)c->dkim[i].key_file);
    free((char *)c->dkim[i].headers);
    free(c->dkim_name[i]);
    free(c->dkim_users[i]);
  }
  free(c->queue_dir);
  free(c->queue_postmaster);
  free(c->queue_control);
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
  if (cfg_uses_queue(a) != cfg_uses_queue(b))
    key_add(&k, "delivery", "queue", NULL);
  /* A running queue keeps the options it was opened with (tern_queue_open
   * takes them once; there is no call to change them), so every [queue]
   * key needs a restart -- when there is a queue to restart. */
  if (cfg_uses_queue(a) && cfg_uses_queue(b)) {
    if (str_differs(a->queue_dir, b->queue_dir))
      key_add(&k, "queue", "directory", NULL);
    if (str_differs(a->queue_control, b->queue_control))
      key_add(&k, "queue", "control", NULL);
    if (a->queue_lifetime_s != b->queue_lifetime_s)
      key_add(&k, "queue", "lifetime", NULL);
    if (a->queue_retry_min_s != b->queue_retry_min_s)
      key_add(&k, "queue", "retry_min", NULL);
    if (a->queue_retry_max_s != b->queue_retry_max_s)
      key_add(&k, "queue", "retry_max", NULL);
    if (a->queue_delay_warning_s != b->queue_delay_warning_s)
      key_add(&k, "queue", "delay_warning", NULL);
    if (a->queue_concurrency != b->queue_concurrency)
      key_add(&k, "queue", "concurrency", NULL);
    if (a->queue_max_active != b->queue_max_active)
      key_add(&k, "queue", "max_active", NULL);
    if (a->queue_fsync != b->queue_fsync)
      key_add(&k, "queue", "fsync", NULL);
    if (str_differs(a->queue_postmaster, b->queue_postmaster))
      key_add(&k, "queue", "postmaster", NULL);
  }
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

const char *const cfg_section_names[] = {
    [SEC_NONE] = "",
    [SEC_SERVER] = "server",
    [SEC_LISTENER] = "listener",
    [SEC_TLS] = "tls",
    [SEC_AUTH] = "auth",
    [SEC_DOMAINS] = "domains",
    [SEC_DELIVERY] = "delivery",
    [SEC_QUEUE] = "queue",
    [SEC_ROUTES] = "routes",
    [SEC_OUTBOUND] = "outbound",
    [SEC_TLS_POLICY] = "tls_policy",
    [SEC_DKIM] = "dkim",
};

/* Marks a value kept aside by the reader (the line was too long). */
#define LONG_MARKER "\x01tern-long-value\x01"

/* See config_keys.h. */
void cfg_fail(struct cfg_parser *st, int line, const char *fmt, ...) {
  if (st->failed)
    return;
  st->failed = true;
  st->err_line = line;
  va_list ap;
  va_start(ap, fmt);
  file_verror(st->err, st->cap, st->path, line, fmt, ap);
  va_end(ap);
}

/* ---- sections --------------------------------------------------------------
 */

/* "[dkim NAME]": a new key; the name is what follows "dkim". */
static void dkim_begin(struct cfg_parser *st, const char *kn, size_t knn) {
  struct cfg *c = st->c;
  while (knn > 0 && is_space((unsigned char)*kn))
    kn++, knn--;
  if (knn == 0) {
    cfg_fail(st, st->line, "a dkim section needs a name: [dkim NAME]");
    return;
  }
  for (size_t i = 0; i < knn; i++) {
    unsigned char ch = (unsigned char)kn[i];
    if (!is_alnum(ch) && ch != '-' && ch != '_' && ch != '.') {
      cfg_fail(st, st->line,
               "bad dkim name '%.*s': use letters, digits, '-', '_', '.'",
               (int)knn, kn);
      return;
    }
  }
  for (size_t i = 0; i < c->ndkim; i++) {
    if (strlen(c->dkim_name[i]) == knn &&
        strncmp(c->dkim_name[i], kn, knn) == 0) {
      cfg_fail(st, st->line, "[dkim %.*s] is already defined on line %d",
               (int)knn, kn, c->dkim_line[i]);
      return;
    }
  }
  if (c->ndkim == CFG_MAX_DKIM) {
    cfg_fail(st, st->line, "too many dkim keys (at most %d)", CFG_MAX_DKIM);
    return;
  }
  st->cur = c->ndkim++;
  memset(&c->dkim[st->cur], 0, sizeof c->dkim[st->cur]);
  c->dkim_name[st->cur] = xstrndup(kn, knn);
  c->dkim_line[st->cur] = st->line;
  memset(st->dkim_seen[st->cur], 0, sizeof st->dkim_seen[st->cur]);
  st->sec = SEC_DKIM;
}

/* A "[...]" line: the name between the brackets, trimmed. */
static void section_begin(struct cfg_parser *st, const char *name, size_t n) {
  struct cfg *c = st->c;
  while (n > 0 && is_space((unsigned char)*name))
    name++, n--;
  while (n > 0 && is_space((unsigned char)name[n - 1]))
    n--;
  for (int s = SEC_SERVER; s <= SEC_LAST; s++) {
    if (s == SEC_LISTENER || s == SEC_DKIM)
      continue;
    if (strlen(cfg_section_names[s]) == n &&
        strncmp(name, cfg_section_names[s], n) == 0) {
      st->sec = (enum cfg_section)s;
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
      cfg_fail(st, st->line,
               "a listener section needs a name: [listener NAME]");
      return;
    }
    for (size_t i = 0; i < lnn; i++) {
      unsigned char ch = (unsigned char)ln[i];
      if (!is_alnum(ch) && ch != '-' && ch != '_' && ch != '.') {
        cfg_fail(st, st->line,
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
        cfg_fail(st, st->line, "listener '%.*s' is already defined on line %d",
                 (int)lnn, ln, st->listener_line[i]);
        return;
      }
    }
    if (c->nlisteners == CFG_MAX_LISTENERS) {
      cfg_fail(st, st->line, "too many listeners (at most %d)",
               CFG_MAX_LISTENERS);
      return;
    }
    st->cur = c->nlisteners++;
    struct cfg_listener *l = &c->listeners[st->cur];
    memset(l, 0, sizeof *l);
    l->name = xstrndup(ln, lnn);
    l->line = st->line;
    st->listener_line[st->cur] = st->line;
    memset(st->listener_seen[st->cur], 0, sizeof st->listener_seen[st->cur]);
    st->sec = SEC_LISTENER;
    return;
  }
  if (n >= 4 && strncmp(name, "dkim", 4) == 0 &&
      (n == 4 || is_space((unsigned char)name[4]))) {
    dkim_begin(st, name + 4, n - 4);
    return;
  }
  cfg_fail(st, st->line, "unknown section [%.*s]", (int)n, name);
}

/* A "key = value" line of the current section. Each key is given once
 * per section (per listener), except cert and key in [tls]. */
static void key_value(struct cfg_parser *st, const char *name, const char *v) {
  if (st->sec == SEC_NONE) {
    cfg_fail(st, st->line,
             "key '%s' outside any section (write [server], "
             "[listener NAME], ... first)",
             name);
    return;
  }
  if (st->sec >= SEC_ROUTES ||
      (st->sec == SEC_DELIVERY && has_prefix(name, "relay")))
    st->c->outbound_keys = true;
  if (st->sec == SEC_ROUTES) {
    cfg_route_line(st, name, v);
    return;
  }
  if (st->sec == SEC_TLS_POLICY) {
    cfg_tls_policy_line(st, name, v);
    return;
  }
  /* "[listener NAME]", "[dkim NAME]" or "[server]" in messages */
  bool in_listener = st->sec == SEC_LISTENER;
  bool in_dkim = st->sec == SEC_DKIM;
  const char *sec = cfg_section_names[st->sec];
  const char *sp = in_listener || in_dkim ? " " : "";
  const char *lname = in_listener ? st->c->listeners[st->cur].name
                      : in_dkim   ? st->c->dkim_name[st->cur]
                                  : "";
  int i = cfg_key_index(st->sec, name);
  if (i < 0) {
    cfg_fail(st, st->line, "unknown key '%s' in [%s%s%s]", name, sec, sp,
             lname);
    return;
  }
  bool *seen = in_listener ? st->listener_seen[st->cur]
               : in_dkim   ? st->dkim_seen[st->cur]
                           : st->seen;
  if (seen[i] && st->sec != SEC_TLS) {
    cfg_fail(st, st->line, "key '%s' given twice in [%s%s%s]", name, sec, sp,
             lname);
    return;
  }
  seen[i] = true;
  if (!in_listener && !in_dkim)
    st->key_line[i] = st->line;
  cfg_key_apply(st, i, v);
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
  struct cfg_parser *st = user;
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
  struct cfg_parser *st = stream;
  if (st->failed)
    return NULL;
  if (num < 80) { /* a build of inih with a tiny line buffer */
    cfg_fail(st, 0, "cannot parse: inih's line buffer is too small (%d)", num);
    return NULL;
  }
  errno = 0;
  ssize_t got = getline(&st->buf, &st->bufcap, st->f);
  if (got < 0) {
    if (ferror(st->f))
      cfg_fail(st, 0, "cannot read: %s", strerror(errno ? errno : EIO));
    return NULL;
  }
  st->line++;
  free(st->longval);
  st->longval = NULL;
  size_t n = (size_t)got;
  char *p = st->buf;
  if (strlen(p) != n) {
    cfg_fail(st, st->line, "NUL byte in the file");
    return NULL;
  }
  while (n > 0 && (p[n - 1] == '\n' || p[n - 1] == '\r'))
    p[--n] = '\0';
  if (memchr(p, '\r', n)) { /* CR-only line ends: the rest would be lost */
    cfg_fail(st, st->line, "a carriage return inside the line (lines must "
             "end in LF or CRLF)");
    return NULL;
  }
  if (st->line == 1 && n >= 3 && memcmp(p, "\xEF\xBB\xBF", 3) == 0)
    p += 3, n -= 3; /* UTF-8 byte-order mark */
  while (n > 0 && is_space((unsigned char)*p))
    p++, n--;

  if (p[0] == '[') {
    const char *end = strchr(p, ']');
    const char *after = end ? end + 1 : "";
    while (is_space((unsigned char)*after))
      after++;
    if (*after != '\0' && *after != ';' && *after != '#') {
      cfg_fail(st, st->line, "text after the section's ']': \"%.40s\"", after);
      return NULL;
    }
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
      cfg_fail(st, st->line,
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
      cfg_fail(st, st->line, "unknown key '%.*s'", (int)(nl > 60 ? 60 : nl), p);
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

/* inih over our reader; its syntax error is reported when it comes
 * before ours. */
static void parse_file(struct cfg_parser *st) {
  int rc = ini_parse_stream(reader, st, handler, st);
  if (rc > 0 && (!st->failed || st->err_line == 0 || rc < st->err_line)) {
    st->failed = false;
    cfg_fail(st, rc, "syntax error: expected 'key = value' or '[section]'");
  } else if (rc < 0 && !st->failed) {
    cfg_fail(st, 0, "out of memory");
  }
}

/* [tls] and the listeners, once the whole file is read: every cert has
 * its key, every listener a url, and none both starttls and smtps. */
static int check_tls_listeners(struct cfg_parser *st) {
  struct cfg *c = st->c;
  if (st->cert_line != 0) {
    cfg_fail(st, st->cert_line,
             "cert without a key: write key = FILE after "
             "it");
    return -1;
  }
  if (!st->listeners_replaced)
    return 0;
  for (size_t i = 0; i < c->nlisteners; i++) {
    struct cfg_listener *l = &c->listeners[i];
    if (l->url == NULL) {
      cfg_fail(st, st->listener_line[i], "[listener %s] has no url", l->name);
      return -1;
    }
    if (l->starttls && has_prefix(l->url, "smtps://")) {
      cfg_fail(st, st->listener_line[i],
               "[listener %s]: starttls with smtps:// (TLS from the start); "
               "use one or the other",
               l->name);
      return -1;
    }
  }
  return 0;
}

/* The delivery target has what it needs: a command, or a url that
 * fits it. Reported on the target line (0: the file as a whole). */
static int check_target(struct cfg_parser *st) {
  struct cfg *c = st->c;
  int tl = st->target_line;
  bool forward = c->target == CFG_LMTP || c->target == CFG_SMTP;
  const char *name = c->target == CFG_LMTP ? "lmtp" : "smtp";
  if (c->target == CFG_PIPE && c->command == NULL) {
    cfg_fail(st, tl, "target = pipe needs a command in [delivery]");
    return -1;
  }
  if (forward && c->forward_url == NULL) {
    cfg_fail(st, tl, "target = %s needs a url in [delivery]", name);
    return -1;
  }
  if (forward && !cfg_forward_url_ok(c->forward_url, c->target)) {
    cfg_fail(st, tl, "target = %s does not go with url = %s (%s)", name,
             c->forward_url,
             c->target == CFG_LMTP
                 ? "expected lmtp://host[:port] or lmtp:///path"
                 : "expected smtp://, smtp+starttls:// or smtps://");
    return -1;
  }
  return 0;
}

/* The first line of `file` (key `key`, for messages) into *slot. */
static int read_password(struct cfg_parser *st, int line, const char *key,
                         const char *file, char **slot) {
  FILE *f = fopen(file, "r");
  char pw[1024] = "";
  if (!f) {
    cfg_fail(st, line, "%s = %s: %s", key, file, strerror(errno));
    return -1;
  }
  bool got = fgets(pw, sizeof pw, f) != NULL;
  bool whole = !got || strchr(pw, '\n') || feof(f);
  fclose(f);
  if (!whole) { /* never cut a password short without a word */
    explicit_bzero(pw, sizeof pw);
    cfg_fail(st, line, "%s = %s: the password is longer than %zu octets",
             key, file, sizeof pw - 2);
    return -1;
  }
  pw[strcspn(pw, "\r\n")] = '\0';
  if (!got || !pw[0]) {
    cfg_fail(st, line, "%s = %s: no password on its first line", key, file);
    return -1;
  }
  set_str(slot, pw);
  explicit_bzero(pw, sizeof pw);
  return 0;
}

static int line_of(const struct cfg_parser *st, enum cfg_section sec,
                   const char *name);

/* The relay's credentials: as the next hop's (load_forward_auth), over
 * verified TLS only; read now. Reported on the relay_auth lines. */
static int load_relay_auth(struct cfg_parser *st) {
  struct cfg *c = st->c;
  int lu = line_of(st, SEC_DELIVERY, "relay_auth_user");
  int lf = line_of(st, SEC_DELIVERY, "relay_auth_password_file");
  int l = lu ? lu : lf;
  if (!c->relay_auth_user && !c->relay_auth_password_file)
    return 0;
  if (!c->relay_auth_user || !c->relay_auth_password_file) {
    cfg_fail(st, l,
             "[delivery] relay_auth_user and relay_auth_password_file go "
             "together");
    return -1;
  }
  if (!c->relay_url) {
    cfg_fail(st, l, "[delivery] relay_auth_user needs relay = URL (a relay "
             "host; MX hosts take no AUTH)");
    return -1;
  }
  if (!(has_prefix(c->relay_url, "smtp+starttls://") ||
        has_prefix(c->relay_url, "smtps://")) ||
      !c->relay_verify) {
    cfg_fail(st, l,
             "[delivery] relay_auth_user needs a verified TLS channel: "
             "relay = smtp+starttls:// or smtps:// with relay_verify = yes");
    return -1;
  }
  return read_password(st, lf, "relay_auth_password_file",
                       c->relay_auth_password_file, &c->relay_auth_password);
}

/* Every [dkim NAME] has its domain, selector and key (reported on its
 * section line), and no two share a domain and selector. */
static int check_dkim_sections(struct cfg_parser *st) {
  struct cfg *c = st->c;
  for (size_t i = 0; i < c->ndkim; i++) {
    const struct tern_dkim_key *k = &c->dkim[i];
    const char *missing = !k->domain     ? "domain"
                          : !k->selector ? "selector"
                          : !k->key_file ? "key"
                                         : NULL;
    if (missing) {
      cfg_fail(st, c->dkim_line[i], "[dkim %s] has no %s", c->dkim_name[i],
               missing);
      return -1;
    }
    for (size_t j = 0; j < i; j++) {
      if (!strcmp(c->dkim[j].domain, k->domain) &&
          !strcmp(c->dkim[j].selector, k->selector)) {
        cfg_fail(st, c->dkim_line[i],
                 "[dkim %s]: selector %s of %s is already [dkim %s] (line %d)",
                 c->dkim_name[i], k->selector, k->domain, c->dkim_name[j],
                 c->dkim_line[j]);
        return -1;
      }
    }
  }
  return 0;
}

/* Next-hop credentials go only over TLS whose certificate was verified:
 * never over smtp:// (opportunistic, unverified). The password is read
 * from its file now. */
static int load_forward_auth(struct cfg_parser *st) {
  struct cfg *c = st->c;
  int tl = st->target_line;
  if (!c->forward_auth_user && !c->forward_auth_password_file)
    return 0;
  if (!c->forward_auth_user || !c->forward_auth_password_file) {
    cfg_fail(st, tl,
             "[delivery] auth_user and auth_password_file go "
             "together");
    return -1;
  }
  if (c->target != CFG_SMTP || !c->forward_url ||
      !(has_prefix(c->forward_url, "smtp+starttls://") ||
        has_prefix(c->forward_url, "smtps://")) ||
      !c->forward_verify) {
    cfg_fail(st, tl,
             "[delivery] auth_user needs a verified TLS channel: "
             "url = smtp+starttls:// or smtps:// with verify = yes");
    return -1;
  }
  return read_password(st, tl, "auth_password_file",
                       c->forward_auth_password_file,
                       &c->forward_auth_password);
}

/* The line a key was given on (0: not in the file). */
static int line_of(const struct cfg_parser *st, enum cfg_section sec,
                   const char *name) {
  int i = cfg_key_index(sec, name);
  return i < 0 ? 0 : st->key_line[i];
}

static int later(int a, int b) { return a > b ? a : b; }

/* [queue] as a whole: a retry schedule that makes sense. Reported on
 * the later of the two keys that disagree (a default has no line). */
static int check_queue(struct cfg_parser *st) {
  struct cfg *c = st->c;
  int lmin = line_of(st, SEC_QUEUE, "retry_min");
  int lmax = line_of(st, SEC_QUEUE, "retry_max");
  int llife = line_of(st, SEC_QUEUE, "lifetime");
  if (c->queue_retry_min_s > c->queue_retry_max_s) {
    cfg_fail(st, later(lmin, lmax),
             "[queue] retry_min (%us) is longer than retry_max (%us)",
             c->queue_retry_min_s, c->queue_retry_max_s);
    return -1;
  }
  if (c->queue_lifetime_s < c->queue_retry_min_s) {
    cfg_fail(st, later(llife, lmin),
             "[queue] lifetime (%us) is shorter than retry_min (%us): "
             "a deferred message would expire before its first retry",
             c->queue_lifetime_s, c->queue_retry_min_s);
    return -1;
  }
  return 0;
}

/* [queue] directory and control as the daemon will use them, when there
 * is a queue: the control socket's path fits a sockaddr_un (107 octets
 * and its NUL), and the directory, which the daemon makes with one
 * mkdir, has a parent. Otherwise `tern serve` would fail at start after
 * --check said OK. */
static int check_queue_paths(struct cfg_parser *st) {
  struct cfg *c = st->c;
  if (!cfg_uses_queue(c))
    return 0;
  int ldir = line_of(st, SEC_QUEUE, "directory");
  int lctl = line_of(st, SEC_QUEUE, "control");
  char ctl[4096];
  size_t max = sizeof(((struct sockaddr_un *)0)->sun_path) - 1;
  if (cfg_queue_control_path(c, ctl, sizeof ctl) != 0 || strlen(ctl) > max) {
    if (c->queue_control != NULL)
      cfg_fail(st, lctl,
               "[queue] control = %.60s...: %zu octets, longer than a unix "
               "socket path may be (%zu)",
               ctl, strlen(c->queue_control), max);
    else
      cfg_fail(st, ldir,
               "[queue] directory = %.60s...: its control socket "
               "DIRECTORY/control would be longer than a unix socket path "
               "may be (%zu octets): set [queue] control to a shorter path",
               c->queue_dir, max);
    return -1;
  }
  struct stat sb;
  if (stat(c->queue_dir, &sb) == 0)
    return 0;
  char *parent = xstrdup(c->queue_dir);
  char *slash = strrchr(parent, '/');
  if (slash != NULL && slash != parent)
    *slash = '\0';
  else if (slash != NULL)
    slash[1] = '\0';
  int e = 0;
  if (slash != NULL && stat(parent, &sb) != 0)
    e = errno;
  else if (slash != NULL && !S_ISDIR(sb.st_mode))
    e = ENOTDIR;
  int rc = 0;
  if (e != 0) {
    cfg_fail(st, ldir,
             "[queue] directory = %s: its parent %s: %s (the daemon makes "
             "the directory itself, not its parents)",
             c->queue_dir, parent,
             e == ENOENT ? "does not exist" : strerror(e));
    rc = -1;
  }
  free(parent);
  return rc;
}

int cfg_load(struct cfg *c, const char *path, char *err, size_t cap) {
  struct cfg_parser st;
  memset(&st, 0, sizeof st);
  st.c = c;
  st.path = path;
  st.err = err;
  st.cap = cap;
  if (err != NULL && cap > 0)
    err[0] = '\0';
  st.f = fopen(path, "r");
  if (st.f == NULL) {
    cfg_fail(&st, 0, "cannot open: %s", strerror(errno));
    return -1;
  }
  set_str(&c->path, path);
  parse_file(&st);
  fclose(st.f);
  free(st.buf);
  free(st.longval);
  if (st.failed || check_tls_listeners(&st) != 0 || check_target(&st) != 0 ||
      check_queue(&st) != 0 || check_queue_paths(&st) != 0 ||
      load_forward_auth(&st) != 0 || load_relay_auth(&st) != 0 ||
      check_dkim_sections(&st) != 0)
    return -1;
  return 0;
}

int cfg_set(struct cfg *c, const char *section, const char *key,
            const char *value, char *err, size_t cap) {
  struct cfg_parser st;
  memset(&st, 0, sizeof st);
  st.c = c;
  st.path = "command line";
  st.err = err;
  st.cap = cap;
  for (int s = SEC_SERVER; s <= SEC_LAST; s++)
    if (s != SEC_LISTENER && s != SEC_TLS && s != SEC_ROUTES &&
        s != SEC_TLS_POLICY && s != SEC_DKIM &&
        strcmp(section, cfg_section_names[s]) == 0)
      st.sec = (enum cfg_section)s;
  if (st.sec == SEC_NONE) {
    cfg_fail(&st, 0,
             "unknown section [%s] (only [server], [auth], [domains], "
             "[delivery], [queue], [outbound] can be set this way)",
             section);
    return -1;
  }
  key_value(&st, key, value);
  return st.failed ? -1 : 0;
}

/* ---- whole-configuration checks ---------------------------------------------
 */

/* "FILE: what" about the configuration as a whole. Returns -1. */
/* A whole-configuration check failed: "FILE[:LINE]: what" (LINE 0: the
 * problem has no one line, or the listener came from --listen). */
static int check_fail_at(const struct cfg *c, int line, char *err,
                         size_t cap, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
static int check_fail_at(const struct cfg *c, int line, char *err,
                         size_t cap, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  file_verror(err, cap, c->path ? c->path : "tern serve", line, fmt, ap);
  va_end(ap);
  return -1;
}

#define check_fail(c, err, cap, ...) check_fail_at(c, 0, err, cap, __VA_ARGS__)

static bool is_unix_url(const char *u) {
  const char *p = strstr(u, "://");
  return p != NULL && p[3] == '/';
}

/* One listener: a good url, TLS where it needs certificates, AUTH where
 * it has users and a safe channel, socket options only on sockets. */
static int check_listener(const struct cfg *c, const struct cfg_listener *l,
                          char *err, size_t cap) {
  bool smtps = l->url != NULL && has_prefix(l->url, "smtps://");
  bool unix_sock = l->url != NULL && is_unix_url(l->url);
  if (l->url == NULL || !cfg_listener_url_ok(l->url))
    return check_fail_at(c, l->line, err, cap, "[listener %s]: %s url", l->name,
                      l->url ? "bad" : "no");
  if ((l->starttls || smtps) && c->ncerts == 0)
    return check_fail_at(c, l->line, err, cap,
                      "[listener %s]: %s needs a certificate: add cert "
                      "and key to [tls]",
                      l->name, smtps ? "smtps://" : "starttls");
  if (l->starttls && smtps)
    return check_fail_at(c, l->line, err, cap,
                      "[listener %s]: starttls with smtps:// (TLS from "
                      "the start); use one or the other",
                      l->name);
  if (l->auth != CFG_AUTH_OFF && c->users_file == NULL)
    return check_fail_at(c, l->line, err, cap,
                      "[listener %s]: auth = %s needs a users file: "
                      "add users = FILE to [auth]",
                      l->name,
                      l->auth == CFG_AUTH_REQUIRED ? "required" : "yes");
  if (l->auth != CFG_AUTH_OFF && !l->starttls && !smtps && !unix_sock &&
      !l->insecure_auth)
    return check_fail_at(c, l->line, err, cap,
                      "[listener %s]: auth is offered only over TLS: "
                      "set starttls = yes, use smtps://, or set "
                      "insecure_auth = yes",
                      l->name);
  if ((l->socket_user || l->socket_group || l->socket_mode) && !unix_sock)
    return check_fail_at(c, l->line, err, cap,
                      "[listener %s]: socket_user, socket_group and "
                      "socket_mode are for unix-socket listeners "
                      "(lmtp:///path)",
                      l->name);
  if (l->socket_user && !getpwnam(l->socket_user))
    return check_fail_at(c, l->line, err, cap,
                      "[listener %s]: socket_user '%s' does not exist",
                      l->name, l->socket_user);
  if (l->socket_group && !getgrnam(l->socket_group))
    return check_fail_at(c, l->line, err, cap,
                      "[listener %s]: socket_group '%s' does not exist",
                      l->name, l->socket_group);
  if (l->xclient && c->xclient_networks == NULL)
    return check_fail_at(c, l->line, err, cap,
                      "[listener %s]: xclient = yes needs "
                      "xclient_networks in [server]",
                      l->name);
  return 0;
}

/* key = template: only the escapes in `allowed` (listed in `known`). */
static int check_template(const struct cfg *c, char *err, size_t cap,
                          const char *key, const char *t, const char *allowed,
                          const char *known) {
  if (!cfg_template_ok(t, allowed))
    return check_fail(c, err, cap, "%s = %s: unknown %%-escape (known: %s)",
                      key, t, known);
  return 0;
}

/* The delivery target: its template, or its url (and no
 * recipient_check when forwarding in the transaction). */
static int check_delivery(const struct cfg *c, char *err, size_t cap) {
  const char *name = c->target == CFG_LMTP ? "lmtp" : "smtp";
  switch (c->target) {
  case CFG_MAILDIR:
    if (c->maildir == NULL || c->maildir[0] == '\0')
      return check_fail(c, err, cap, "target = maildir needs maildir");
    return check_template(c, err, cap, "maildir", c->maildir,
                          CFG_MAILDIR_ESCAPES, "%u %d %a %%");
  case CFG_PIPE:
    if (c->command == NULL || c->command[0] == '\0')
      return check_fail(c, err, cap, "target = pipe needs a command");
    return check_template(c, err, cap, "command", c->command,
                          CFG_COMMAND_ESCAPES, "%s %r %a %u %d %%");
  case CFG_LMTP:
  case CFG_SMTP:
    /* Forwarded in the transaction, the next hop answers each RCPT
     * itself; through the queue only local policy does, and a check
     * here is what keeps a refused recipient from becoming a bounce
     * later (backscatter). */
    if (c->recipient_check != NULL && !cfg_uses_queue(c))
      return check_fail(c, err, cap,
                        "recipient_check works with target = maildir or "
                        "pipe, or with %s through the queue (queue = no: "
                        "the next hop checks its own recipients)",
                        name);
    if (c->forward_url == NULL)
      return check_fail(c, err, cap, "target = %s needs a url", name);
    if (!cfg_forward_url_ok(c->forward_url, c->target))
      return check_fail(c, err, cap, "target = %s does not go with url = %s",
                        name, c->forward_url);
    break;
  case CFG_MX:
    break; /* the queue: checked with the routes (check_outbound) */
  }
  return 0;
}

/* A listener only this host can reach: a unix socket, or a TCP address
 * in 127.0.0.0/8 or ::1 ("localhost" too). Not when it takes the PROXY
 * protocol: its clients are whoever the proxy in front lets in. */
static bool listener_local(const struct cfg_listener *l) {
  if (l->url == NULL || l->proxy)
    return false;
  if (is_unix_url(l->url))
    return true;
  const char *h = strstr(l->url, "://");
  if (h == NULL)
    return false;
  h += 3;
  char host[64];
  size_t n;
  if (h[0] == '[') {
    const char *e = strchr(h, ']');
    if (e == NULL)
      return false;
    h++;
    n = (size_t)(e - h);
  } else {
    const char *e = strrchr(h, ':');
    n = e ? (size_t)(e - h) : strlen(h);
  }
  if (n == 0 || n >= sizeof host)
    return false;
  memcpy(host, h, n);
  host[n] = '\0';
  unsigned char a[16];
  if (inet_pton(AF_INET, host, a) == 1)
    return a[0] == 127;
  if (inet_pton(AF_INET6, host, a) == 1) {
    static const unsigned char loop6[16] = {[15] = 1};
    return memcmp(a, loop6, 16) == 0;
  }
  return strcasecmp(host, "localhost") == 0;
}

/* A file the daemon reads later: readable now. `what` names the key. */
static int check_readable(const struct cfg *c, int line, const char *what,
                          const char *file, char *err, size_t cap) {
  FILE *f = file ? fopen(file, "r") : NULL;
  if (file && !f)
    return check_fail_at(c, line, err, cap, "%s = %s: %s", what, file,
                         strerror(errno));
  if (f)
    fclose(f);
  return 0;
}

/* A DKIM key file: readable, and a PEM private key. (Its type and size
 * are the signer's to check, when the daemon loads it.) */
static int check_dkim_key(const struct cfg *c, size_t i, char *err,
                          size_t cap) {
  const char *file = c->dkim[i].key_file;
  FILE *f = fopen(file, "r");
  if (!f)
    return check_fail_at(c, c->dkim_line[i], err, cap,
                         "[dkim %s]: key = %s: %s", c->dkim_name[i], file,
                         strerror(errno));
  char buf[16384];
  size_t n = fread(buf, 1, sizeof buf - 1, f);
  fclose(f);
  buf[n] = '\0';
  if (!strstr(buf, "-----BEGIN ") || !strstr(buf, "PRIVATE KEY-----"))
    return check_fail_at(c, c->dkim_line[i], err, cap,
                         "[dkim %s]: key = %s: not a PEM private key",
                         c->dkim_name[i], file);
  explicit_bzero(buf, sizeof buf);
  return 0;
}

/* Mail that leaves for other hosts (target = mx, routes to mx or a URL,
 * relay) waits in the queue; the files of [outbound], the relay and
 * [dkim] are readable. */
static int check_outbound(const struct cfg *c, char *err, size_t cap) {
  if (cfg_uses_outbound(c) && !cfg_uses_queue(c)) {
    int line = 0;
    const char *why = c->target == CFG_MX ? "target = mx" : NULL;
    for (size_t i = 0; !why && i < c->nroutes; i++)
      if (c->routes[i].kind != CFG_ROUTE_LOCAL) {
        why = c->routes[i].kind == CFG_ROUTE_MX ? "a route to mx"
                                                : "a route to a URL";
        line = c->routes[i].line;
      }
    if (!why)
      why = c->relay_url   ? "[delivery] relay = URL"
            : c->relay_set ? "[delivery] relay = mx"
                           : "[delivery] relay (mx: the default with "
                             "[outbound], [routes], [tls_policy] or [dkim])";
    return check_fail_at(c, line, err, cap,
                         "%s needs the queue (mail for other hosts waits "
                         "there until they take it): remove [delivery] "
                         "queue = no%s",
                         why,
                         line || c->target == CFG_MX
                             ? ""
                             : ", or set relay = local to deliver "
                               "authenticated users' mail to other domains "
                               "with the target");
  }
  if (check_readable(c, 0, "[outbound] trust_anchor", c->out.trust_anchor,
                     err, cap) ||
      check_readable(c, 0, "[outbound] mta_sts_ca_file",
                     c->out.mta_sts_ca_file, err, cap) ||
      check_readable(c, 0, "[outbound] ca_file", c->out.ca_file, err, cap) ||
      check_readable(c, 0, "[delivery] relay_ca_file", c->relay_ca_file, err,
                     cap))
    return -1;
  for (size_t i = 0; i < c->ndkim; i++)
    if (check_dkim_key(c, i, err, cap) != 0)
      return -1;
  return 0;
}

/* Does mail for a domain nobody named go on to another host? The
 * forwarding targets, target = mx, or a "*" route that is not local.
 * Returns what says so (for the message), or NULL. */
static const char *relays_any(const struct cfg *c, char *buf, size_t cap) {
  if (c->target == CFG_SMTP || c->target == CFG_LMTP || c->target == CFG_MX) {
    snprintf(buf, cap, "target = %s",
             c->target == CFG_SMTP   ? "smtp"
             : c->target == CFG_LMTP ? "lmtp"
                                     : "mx");
    return buf;
  }
  for (size_t i = 0; i < c->nroutes; i++)
    if (!strcmp(c->routes[i].domain, "*") &&
        c->routes[i].kind != CFG_ROUTE_LOCAL) {
      snprintf(buf, cap, "[routes] * = %s",
               c->routes[i].kind == CFG_ROUTE_MX ? "mx" : c->routes[i].url);
      return buf;
    }
  return NULL;
}

/*
 * No open relay. serve.c's RCPT policy takes a recipient when
 * accept_any (no [domains] accept, or accept = *), when its domain is
 * accepted, or from an authenticated client when relay_authenticated.
 * With mail that goes on to other hosts (target smtp, lmtp or mx, or a
 * "*" route to mx or a URL) and accept_any, anyone who can connect
 * unauthenticated relays mail anywhere -- unless every listener is
 * local (a smarthost for this host's programs) or requires AUTH before
 * MAIL. The maildir and pipe targets keep what they take.
 */
int cfg_check_relay(const struct cfg *c, const struct cfg_listener *ls,
                    size_t n, char *err, size_t cap) {
  char what[300];
  const char *why = relays_any(c, what, sizeof what);
  if (why == NULL || !c->accept_any)
    return 0;
  for (size_t i = 0; i < n; i++) {
    const struct cfg_listener *l = &ls[i];
    if (l->auth == CFG_AUTH_REQUIRED || listener_local(l))
      continue;
    return check_fail(c, err, cap,
                      "open relay: %s with no [domains] accept "
                      "list (or accept = *) sends mail for any domain from "
                      "anyone who reaches [listener %s] (%s); set [domains] "
                      "accept = YOUR-DOMAINS, or auth = required on every "
                      "listener that is not loopback or a unix socket",
                      why, l->name, l->url ? l->url : "no url");
  }
  return 0;
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
    if (check_listener(c, &c->listeners[i], err, cap) != 0)
      return -1;
    any_auth = any_auth || c->listeners[i].auth != CFG_AUTH_OFF;
  }
  if (any_auth) {
    struct users *u = NULL;
    char uerr[512];
    if (users_load(c->users_file, &u, uerr, sizeof uerr) != 0)
      return check_fail(c, err, cap, "[auth] users: %s", uerr);
    users_free(u);
  }
  if (check_delivery(c, err, cap) != 0 || check_outbound(c, err, cap) != 0)
    return -1;
  return cfg_check_relay(c, c->listeners, c->nlisteners, err, cap);
}

/* Does `pat` (a [routes] or [tls_policy] domain: "d", ".d" or "*")
 * match domain[0..len) (no trailing dot)? 0: no; else how well: the
 * exact name 1 << 20, a suffix its length, "*" 1. */
static size_t domain_match(const char *pat, const char *domain, size_t len) {
  size_t pl = strlen(pat);
  if (pl == 1 && pat[0] == '*')
    return 1;
  if (pat[0] == '.')
    return len > pl && strncasecmp(domain + len - pl, pat, pl) == 0 ? pl : 0;
  return pl == len && strncasecmp(pat, domain, len) == 0 ? (size_t)1 << 20 : 0;
}

static size_t trim_dot(const char *domain, size_t len) {
  return len > 0 && domain[len - 1] == '.' ? len - 1 : len;
}

bool cfg_domain_listed(const struct cfg *c, const char *domain, size_t len) {
  len = trim_dot(domain, len);
  for (size_t i = 0; i < c->ndomains; i++) {
    const char *d = c->domains[i];
    if (strlen(d) == len && strncasecmp(d, domain, len) == 0)
      return true;
  }
  return false;
}

bool cfg_domain_accepted(const struct cfg *c, const char *domain, size_t len) {
  if (c->accept_any)
    return true;
  len = trim_dot(domain, len);
  if (cfg_domain_listed(c, domain, len))
    return true;
  for (size_t i = 0; i < c->nroutes; i++)
    if (domain_match(c->routes[i].domain, domain, len) > 1)
      return true;
  return false;
}

const struct cfg_route *cfg_route_find(const struct cfg *c, const char *domain,
                                       size_t len) {
  const struct cfg_route *best = NULL;
  size_t how = 0;
  len = trim_dot(domain, len);
  if (len == 0)
    return NULL;
  for (size_t i = 0; i < c->nroutes; i++) {
    size_t m = domain_match(c->routes[i].domain, domain, len);
    if (m > how)
      how = m, best = &c->routes[i];
  }
  /* "*" is for the domains nobody named: not those of [domains] accept */
  if (how == 1 && cfg_domain_listed(c, domain, len))
    return NULL;
  return best;
}

enum tern_tls_policy cfg_tls_policy_for(const struct cfg *c,
                                        const char *domain, size_t len) {
  enum tern_tls_policy best = TERN_TLS_POLICY_AUTO;
  size_t how = 0;
  len = trim_dot(domain, len);
  for (size_t i = 0; i < c->ntls_policies; i++) {
    size_t m = domain_match(c->tls_policies[i].domain, domain, len);
    if (m > how)
      how = m, best = c->tls_policies[i].level;
  }
  return best;
}

/* "mx:" and the domain in lower case. */
static const char *mx_dest(const char *domain, size_t len, char *buf,
                           size_t cap) {
  if (len + 4 > cap)
    return NULL;
  memcpy(buf, "mx:", 3);
  for (size_t i = 0; i < len; i++) {
    unsigned char ch = (unsigned char)domain[i];
    buf[3 + i] = (char)(ch >= 'A' && ch <= 'Z' ? ch + 32 : ch);
  }
  buf[3 + len] = '\0';
  return buf;
}

const char *cfg_route_dest(const struct cfg *c, const char *domain,
                           size_t len, char *buf, size_t cap) {
  len = trim_dot(domain, len);
  if (len == 0) /* <postmaster>: ours, never routed */
    return c->target != CFG_MX
               ? "local"
               : mx_dest(c->hostname, strlen(c->hostname), buf, cap);
  const struct cfg_route *r = cfg_route_find(c, domain, len);
  int kind;
  if (r != NULL)
    kind = r->kind;
  else if (cfg_domain_accepted(c, domain, len))
    kind = CFG_ROUTE_LOCAL;
  else if (c->relay_url != NULL)
    return "smarthost";
  else if (cfg_relay_is_mx(c))
    kind = CFG_ROUTE_MX;
  else
    kind = CFG_ROUTE_LOCAL; /* relay = local, or an earlier version's file */
  if (kind == CFG_ROUTE_URL) {
    int n = snprintf(buf, cap, "url:%s", r->url);
    return n < 0 || (size_t)n >= cap ? NULL : buf;
  }
  if (kind == CFG_ROUTE_LOCAL && c->target != CFG_MX)
    return "local";
  return mx_dest(domain, len, buf, cap);
}

/* ---- tern serve --check: the routing summary --------------------------- */

static const char *route_kind_name(const struct cfg_route *r) {
  return r->kind == CFG_ROUTE_LOCAL ? "local"
         : r->kind == CFG_ROUTE_MX  ? "mx"
                                    : r->url;
}

static const char *tls_level_name(enum tern_tls_policy l) {
  switch (l) {
  case TERN_TLS_POLICY_NONE:
    return "none";
  case TERN_TLS_POLICY_MAY:
    return "may";
  case TERN_TLS_POLICY_ENCRYPT:
    return "encrypt";
  case TERN_TLS_POLICY_VERIFY:
    return "verify";
  case TERN_TLS_POLICY_DANE:
    return "dane";
  default:
    return "auto";
  }
}

void cfg_print_summary(const struct cfg *c, FILE *f) {
  static const char *const targets[] = {[CFG_MAILDIR] = "maildir",
                                        [CFG_PIPE] = "pipe",
                                        [CFG_LMTP] = "lmtp",
                                        [CFG_SMTP] = "smtp",
                                        [CFG_MX] = "mx"};
  bool q = cfg_uses_queue(c);
  fprintf(f, "  delivery: target=%s queue=%s relay=%s\n", targets[c->target],
          q ? "yes" : "no",
          c->relay_url           ? c->relay_url
          : cfg_relay_is_mx(c) ? "mx"
                               : "local");
  for (size_t i = 0; i < c->nroutes; i++)
    fprintf(f, "  route %s: %s\n", c->routes[i].domain,
            route_kind_name(&c->routes[i]));
  for (size_t i = 0; i < c->ntls_policies; i++)
    fprintf(f, "  tls_policy %s: %s\n", c->tls_policies[i].domain,
            tls_level_name(c->tls_policies[i].level));
  for (size_t i = 0; i < c->ndkim; i++)
    fprintf(f, "  dkim %s: d=%s s=%s key=%s\n", c->dkim_name[i],
            c->dkim[i].domain, c->dkim[i].selector, c->dkim[i].key_file);
  if (cfg_uses_outbound(c))
    fprintf(f,
            "  outbound: helo=%s resolver=%s dnssec=%s mta_sts=%s port=%u\n",
            c->out.helo ? c->out.helo : c->hostname,
            c->out.resolver ? c->out.resolver : "/etc/resolv.conf",
            c->out.dnssec ? "yes" : "no", c->out.mta_sts ? "yes" : "no",
            c->out.port);
}
