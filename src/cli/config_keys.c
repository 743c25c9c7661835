/*
 * `tern serve` configuration: every key of the INI file, with its value
 * syntax, its limits and where it is stored (the table `keys`), and the
 * value syntaxes command-line flags share (cfg_parse_*). config.c reads
 * the file and calls cfg_key_apply for each "key = value" line.
 */
#include <arpa/inet.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include <tern/address.h>

#include "config_keys.h"

/* ---- small helpers ------------------------------------------------------- */

static bool is_digit(int ch) { return ch >= '0' && ch <= '9'; }

static int lower(int ch) {
  return (ch >= 'A' && ch <= 'Z') ? ch - 'A' + 'a' : ch;
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

/* A duration: ms, s, m, h, and d (days) when `days`; no unit means
 * seconds. */
static int parse_duration(const char *s, uint64_t *out, bool days) {
  size_t n = strlen(s);
  uint64_t mul = 1000, v;
  if (n >= 2 && strcmp(s + n - 2, "ms") == 0) {
    mul = 1;
    n -= 2;
  } else if (n >= 1 &&
             (s[n - 1] == 's' || s[n - 1] == 'm' || s[n - 1] == 'h' ||
              (days && s[n - 1] == 'd'))) {
    mul = s[n - 1] == 's'   ? 1000
          : s[n - 1] == 'm' ? 60000
          : s[n - 1] == 'h' ? 3600000
                            : 86400000;
    n--;
  }
  if (parse_u64(s, n, &v) != 0 || (v != 0 && v > UINT64_MAX / mul))
    return -1;
  *out = v * mul;
  return 0;
}

int cfg_parse_duration_ms(const char *s, uint64_t *out) {
  return parse_duration(s, out, false);
}

int cfg_parse_duration_days_ms(const char *s, uint64_t *out) {
  return parse_duration(s, out, true);
}

/* [queue] durations are kept in whole seconds: "1500ms" is refused
 * rather than rounded. */
static int duration_s(const char *s, uint64_t *out) {
  uint64_t ms;
  if (parse_duration(s, &ms, true) != 0 || ms % 1000 != 0)
    return -1;
  *out = ms / 1000;
  return 0;
}

/* See config_keys.h. */
static bool listener_url_ok(const char *u, bool port0) {
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
  if (parse_u64(colon + 1, strlen(colon + 1), &port) != 0 ||
      (port == 0 && !port0) || port > 65535)
    return false;
  return true;
}

bool cfg_listener_url_ok(const char *u) {
  return listener_url_ok(u, false);
}

bool cfg_listener_url_cli_ok(const char *u) {
  return listener_url_ok(u, true);
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

/* See config_keys.h. */
bool cfg_forward_url_ok(const char *u, enum cfg_target target) {
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

/* See config_keys.h. */
bool cfg_template_ok(const char *t, const char *allowed) {
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

/* ---- the keys ------------------------------------------------------------ */

struct cfg_key;

/* Check v and store it in field (inside struct cfg or struct
 * cfg_listener); a bad value goes to cfg_fail. Returns 0 or -1. */
typedef int (*parse_fn)(struct cfg_parser *st, const struct cfg_key *k,
                        const char *v, void *field);

struct cfg_key {
  enum cfg_section sec;
  const char *name;
  parse_fn parse;
  size_t off;         /* into struct cfg, or struct cfg_listener */
  uint64_t min, max;  /* numbers, durations (ms), sizes */
  const char *expect; /* "expected ..." for messages */
  /* p_text: what a good value looks like */
  bool (*valid)(const char *v);
  /* p_number: how the number is written, and whether it is stored in
   * a uint64_t (else an unsigned) */
  int (*number)(const char *v, uint64_t *out);
  bool wide;
};

static int bad(struct cfg_parser *st, const struct cfg_key *k,
               const char *v) {
  cfg_fail(st, st->line, "bad value '%s' for %s: expected %s", v, k->name,
           k->expect);
  return -1;
}

/* The next item of a list separated by white space and/or commas:
 * its start (*len octets), or NULL at the end. *p moves past it. */
static const char *next_item(const char **p, size_t *len) {
  const char *q = *p;
  while (is_space((unsigned char)*q) || *q == ',')
    q++;
  if (*q == '\0')
    return NULL;
  const char *s = q;
  while (*q && !is_space((unsigned char)*q) && *q != ',')
    q++;
  *len = (size_t)(q - s);
  *p = q;
  return s;
}

/* ---- numbers ---- */

static int decimal(const char *v, uint64_t *out) {
  return parse_u64(v, strlen(v), out);
}

/* A number read by k->number, from k->min to k->max, stored as an
 * unsigned (uint64_t with k->wide). */
static int p_number(struct cfg_parser *st, const struct cfg_key *k,
                    const char *v, void *field) {
  uint64_t n;
  if (k->number(v, &n) != 0 || n < k->min || n > k->max)
    return bad(st, k, v);
  if (k->wide)
    *(uint64_t *)field = n;
  else
    *(unsigned *)field = (unsigned)n;
  return 0;
}

/* A file mode in octal, like 0660 (at most 0777: no set-id bits). */
static int p_mode(struct cfg_parser *st, const struct cfg_key *k,
                  const char *v, void *field) {
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

/* ---- words ---- */

static int p_bool(struct cfg_parser *st, const struct cfg_key *k,
                  const char *v, void *field) {
  if (cfg_parse_bool(v, (bool *)field) != 0)
    return bad(st, k, v);
  return 0;
}

/* yes or no into an int (1 or 0) whose -1 means "not given". */
static int p_tristate(struct cfg_parser *st, const struct cfg_key *k,
                      const char *v, void *field) {
  bool b;
  if (cfg_parse_bool(v, &b) != 0)
    return bad(st, k, v);
  *(int *)field = b ? 1 : 0;
  return 0;
}

static int p_auth(struct cfg_parser *st, const struct cfg_key *k,
                  const char *v, void *field) {
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

static int p_target(struct cfg_parser *st, const struct cfg_key *k,
                    const char *v, void *field) {
  static const char *const names[] = {[CFG_MAILDIR] = "maildir",
                                      [CFG_PIPE] = "pipe",
                                      [CFG_LMTP] = "lmtp",
                                      [CFG_SMTP] = "smtp",
                                      [CFG_MX] = "mx"};
  for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
    if (strcmp(v, names[i]) == 0) {
      *(enum cfg_target *)field = (enum cfg_target)i;
      st->target_line = st->line;
      if (i == CFG_MX)
        st->c->outbound_keys = true;
      return 0;
    }
  }
  return bad(st, k, v);
}

/* ---- strings: checked by k->valid, then kept ---- */

static int p_text(struct cfg_parser *st, const struct cfg_key *k,
                  const char *v, void *field) {
  if (!k->valid(v))
    return bad(st, k, v);
  set_str((char **)field, v);
  return 0;
}

/* See config_keys.h. */
void cfg_abs_path(char **slot) {
  const char *p = *slot;
  if (p == NULL || p[0] == '/')
    return;
  while (p[0] == '.' && p[1] == '/')
    for (p += 2; *p == '/'; p++)
      ;
  char *cwd = getcwd(NULL, 0);
  if (cwd == NULL)
    return;
  size_t n = strlen(cwd) + 1 + strlen(p) + 1;
  char *abs = malloc(n);
  if (abs == NULL)
    oom();
  bool root = !strcmp(cwd, "/");
  if (!strcmp(p, ".") || p[0] == '\0')
    snprintf(abs, n, "%s", cwd);
  else
    snprintf(abs, n, "%s%s%s", cwd, root ? "" : "/", p);
  free(cwd);
  free(*slot);
  *slot = abs;
}

/* A path ([queue] directory, control): absolute from here on. */
static int p_path(struct cfg_parser *st, const struct cfg_key *k,
                  const char *v, void *field) {
  if (p_text(st, k, v, field) != 0)
    return -1;
  cfg_abs_path((char **)field);
  return 0;
}

/* A non-empty string without control characters (paths, names). */
static bool v_text(const char *v) { return v[0] != '\0' && !has_ctl(v); }

static bool v_hostname(const char *v) { return host_ok(v, strlen(v)); }

static bool v_log(const char *v) {
  return strcmp(v, "stderr") == 0 || strcmp(v, "syslog") == 0;
}

static bool v_maildir(const char *v) {
  return v_text(v) && cfg_template_ok(v, CFG_MAILDIR_ESCAPES);
}

static bool v_command(const char *v) {
  return v_text(v) && cfg_template_ok(v, CFG_COMMAND_ESCAPES);
}

/* The scheme is checked against the target once the whole file is read. */
static bool v_forward_url(const char *v) {
  return cfg_forward_url_ok(v, CFG_SMTP) || cfg_forward_url_ok(v, CFG_LMTP);
}

/* An address for double bounces, "postmaster@example.org" (or in
 * <>), read by the library's path parser as a RCPT TO would be; empty:
 * none (double bounces are kept on hold). The mailbox is kept. */
static int p_address(struct cfg_parser *st, const struct cfg_key *k,
                     const char *v, void *field) {
  struct tern_path path;
  size_t used = 0, n = strlen(v);
  char **slot = field;
  if (n == 0) {
    free(*slot);
    *slot = NULL;
    return 0;
  }
  if (has_ctl(v) ||
      tern_path_parse(v, n, TERN_PATH_ALLOW_NO_BRACKETS | TERN_PATH_ALLOW_UTF8,
                      &path, &used) != 0 ||
      used != n || (path.flags & (TERN_PATHF_NULL | TERN_PATHF_ROUTE)) ||
      path.domain.len == 0)
    return bad(st, k, v);
  char *m = xstrndup(path.mailbox.ptr, path.mailbox.len);
  free(*slot);
  *slot = m;
  return 0;
}

/* ---- lists ---- */

static int p_networks(struct cfg_parser *st, const struct cfg_key *k,
                      const char *v, void *field) {
  const char *p = v, *s;
  size_t len;
  bool any = false;
  while ((s = next_item(&p, &len)) != NULL) {
    if (!network_ok(s, len)) {
      cfg_fail(st, st->line,
               "bad value '%.*s' for %s: expected networks like "
               "127.0.0.0/8 ::1",
               (int)len, s, k->name);
      return -1;
    }
    any = true;
  }
  if (!any)
    return bad(st, k, v);
  set_str((char **)field, v);
  return 0;
}

static int p_mechanisms(struct cfg_parser *st, const struct cfg_key *k,
                        const char *v, void *field) {
  char out[64] = "";
  size_t n = 0, len;
  const char *p = v, *s;
  bool any = false;
  while ((s = next_item(&p, &len)) != NULL) {
    const char *m = NULL;
    if (len == 5 && strncasecmp(s, "PLAIN", 5) == 0)
      m = "PLAIN";
    else if (len == 5 && strncasecmp(s, "LOGIN", 5) == 0)
      m = "LOGIN";
    if (m == NULL) {
      cfg_fail(st, st->line,
               "bad value '%.*s' for %s: expected PLAIN and/or LOGIN (the "
               "users file holds crypt hashes, which other mechanisms "
               "cannot use)",
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

/* One domain of `accept` (not "*"): checked, lower-cased, kept once. */
static int add_domain(struct cfg_parser *st, const struct cfg_key *k,
                      const char *s, size_t len) {
  struct cfg *c = st->c;
  if (!domain_ok(s, len)) {
    cfg_fail(st, st->line,
             "bad value '%.*s' for %s: expected domains like example.org "
             "(or * for any)",
             (int)len, s, k->name);
    return -1;
  }
  if (s[len - 1] == '.')
    len--;
  if (cfg_domain_listed(c, s, len))
    return 0; /* listed twice */
  if (c->ndomains == CFG_MAX_DOMAINS) {
    cfg_fail(st, st->line, "too many domains for accept (at most %d)",
             CFG_MAX_DOMAINS);
    return -1;
  }
  char *d = xstrndup(s, len);
  for (char *q = d; *q; q++)
    *q = (char)lower((unsigned char)*q);
  c->domains[c->ndomains++] = d;
  return 0;
}

static int p_accept(struct cfg_parser *st, const struct cfg_key *k,
                    const char *v, void *field) {
  struct cfg *c = st->c;
  const char *p = v, *s;
  size_t len;
  bool any = false, star = false;
  (void)field;
  clear_domains(c);
  c->accept_any = false;
  while ((s = next_item(&p, &len)) != NULL) {
    any = true;
    if (len == 1 && s[0] == '*')
      star = true;
    else if (add_domain(st, k, s, len) != 0)
      return -1;
  }
  if (!any)
    return bad(st, k, v);
  c->accept_any = star;
  st->accept_given = true;
  return 0;
}

/* ---- [tls]: cert and key lines in pairs ---- */

/* "cert = FILE" opens a pair, "key = FILE" closes it: a cert is always
 * followed by its key before the next cert. */
static int p_tls_pair(struct cfg_parser *st, const struct cfg_key *k,
                      const char *v, void *field) {
  struct cfg *c = st->c;
  bool cert = strcmp(k->name, "cert") == 0;
  (void)field;
  if (!v_text(v))
    return bad(st, k, v);
  if (cert && st->cert_line != 0)
    cfg_fail(st, st->line,
             "cert without a key (the cert on line %d needs a "
             "key line before the next cert)",
             st->cert_line);
  else if (cert && c->ncerts == CFG_MAX_CERTS)
    cfg_fail(st, st->line, "too many certificates (at most %d)",
             CFG_MAX_CERTS);
  else if (!cert && st->cert_line == 0)
    cfg_fail(st, st->line,
             "key without a cert: write cert = FILE, then key = "
             "FILE");
  if (st->failed) /* one of the above (nothing had failed before) */
    return -1;
  if (cert) {
    c->certs[c->ncerts].cert_file = xstrdup(v);
    c->certs[c->ncerts].key_file = NULL;
    c->ncerts++;
    st->cert_line = st->line;
  } else {
    c->certs[c->ncerts - 1].key_file = xstrdup(v);
    st->cert_line = 0;
  }
  return 0;
}

/* ---- Step 8: relay, [outbound], [dkim NAME], [routes], [tls_policy] ---- */

/* See config_keys.h. */
bool cfg_ip_ok(const char *s, int family) {
  unsigned char a[16];
  return s[0] != '\0' && strlen(s) < 64 && inet_pton(family, s, a) == 1;
}

static bool v_ipv4(const char *v) { return cfg_ip_ok(v, AF_INET); }
static bool v_ipv6(const char *v) { return cfg_ip_ok(v, AF_INET6); }

/* [delivery] relay: "mx", "local", or a URL for the smtp target. */
static int p_relay(struct cfg_parser *st, const struct cfg_key *k,
                   const char *v, void *field) {
  struct cfg *c = st->c;
  (void)field;
  c->relay_local = strcmp(v, "local") == 0;
  if (strcmp(v, "mx") == 0 || c->relay_local) {
    free(c->relay_url);
    c->relay_url = NULL;
  } else if (!has_ctl(v) && cfg_forward_url_ok(v, CFG_SMTP)) {
    set_str(&c->relay_url, v);
  } else {
    return bad(st, k, v);
  }
  c->relay_set = true;
  return 0;
}

/* One resolver address: IPv4 or IPv6, "ADDR:PORT" or "[IPv6]:PORT". */
static bool resolver_item_ok(const char *s, size_t n) {
  char buf[80];
  const char *port = NULL;
  int family = AF_INET;
  if (n == 0 || n >= sizeof buf)
    return false;
  memcpy(buf, s, n);
  buf[n] = '\0';
  char *host = buf;
  if (buf[0] == '[') {
    char *end = strchr(buf, ']');
    if (end == NULL || (end[1] != '\0' && end[1] != ':'))
      return false;
    *end = '\0';
    host = buf + 1;
    port = end[1] == ':' ? end + 2 : NULL;
    family = AF_INET6;
  } else if (strchr(buf, ':') != strrchr(buf, ':')) {
    family = AF_INET6; /* a bare IPv6 address: no port */
  } else {
    char *colon = strchr(buf, ':');
    if (colon != NULL) {
      *colon = '\0';
      port = colon + 1;
    }
  }
  if (!cfg_ip_ok(host, family))
    return false;
  uint64_t p;
  if (port != NULL &&
      (parse_u64(port, strlen(port), &p) != 0 || p == 0 || p > 65535))
    return false;
  return true;
}

/* [outbound] resolver: addresses separated by spaces or commas. */
static int p_resolver(struct cfg_parser *st, const struct cfg_key *k,
                      const char *v, void *field) {
  const char *p = v, *s;
  size_t len;
  bool any = false;
  while ((s = next_item(&p, &len)) != NULL) {
    if (!resolver_item_ok(s, len)) {
      cfg_fail(st, st->line, "bad value '%.*s' for %s: expected %s", (int)len,
               s, k->name, k->expect);
      return -1;
    }
    any = true;
  }
  if (!any)
    return bad(st, k, v);
  set_str((char **)field, v);
  return 0;
}

/* A domain pattern of [routes], [tls_policy] and [dkim] domain:
 * "example.org", ".example.org" (subdomains) or, with star_ok, "*".
 * Lower-cased, without a trailing dot, in *out (malloc'd); NULL when
 * bad. */
static char *domain_pattern(const char *v, bool star_ok) {
  size_t n = strlen(v);
  if (star_ok && n == 1 && v[0] == '*')
    return xstrdup(v);
  const char *d = v[0] == '.' ? v + 1 : v;
  size_t dn = n - (size_t)(d - v);
  if (!domain_ok(d, dn))
    return NULL;
  if (n > 0 && v[n - 1] == '.')
    n--;
  char *out = xstrndup(v, n);
  for (char *q = out; *q; q++)
    *q = (char)lower((unsigned char)*q);
  return out;
}

/* [dkim NAME] domain */
static int p_dkim_domain(struct cfg_parser *st, const struct cfg_key *k,
                         const char *v, void *field) {
  char *d = domain_pattern(v, false);
  if (d == NULL)
    return bad(st, k, v);
  free(*(char **)field);
  *(char **)field = d;
  return 0;
}

/* [dkim NAME] users: user names (as in the [auth] users file: no
 * white space, no ':'), separated by spaces; at least one. Kept in the
 * cfg (not the tern_dkim_key, `field`). */
static int p_dkim_users(struct cfg_parser *st, const struct cfg_key *k,
                        const char *v, void *field) {
  (void)field;
  bool any = false;
  for (const char *p = v; *p; p++) {
    unsigned char ch = (unsigned char)*p;
    if (ch == ':' || ch < 32 || ch == 127 || ch == '\t')
      return bad(st, k, v);
    any |= ch != ' ';
  }
  if (!any)
    return bad(st, k, v);
  free(st->c->dkim_users[st->cur]);
  st->c->dkim_users[st->cur] = xstrdup(v);
  return 0;
}

/* A selector: dot-separated labels (RFC 6376 §3.1). */
static bool v_selector(const char *v) {
  return v[0] != '.' && domain_ok(v, strlen(v)) && v[strlen(v) - 1] != '.';
}

/* Header field names separated by ':' (RFC 5322 ftext: printable
 * ASCII but ':'), none empty. */
static bool v_headers(const char *v) {
  bool in_name = false;
  for (const char *p = v; *p; p++) {
    unsigned char ch = (unsigned char)*p;
    if (ch == ':') {
      if (!in_name)
        return false;
      in_name = false;
    } else if (ch < 33 || ch > 126) {
      return false;
    } else {
      in_name = true;
    }
  }
  return in_name;
}

/* A domain key of [routes] or [tls_policy] line, checked. */
static char *domain_key(struct cfg_parser *st, const char *sec,
                        const char *name) {
  char *d = has_ctl(name) ? NULL : domain_pattern(name, true);
  if (d == NULL)
    cfg_fail(st, st->line,
             "[%s]: bad domain '%s': expected a domain like example.org, "
             ".example.org (its subdomains) or * (any other)",
             sec, name);
  return d;
}

void cfg_route_line(struct cfg_parser *st, const char *name, const char *v) {
  struct cfg *c = st->c;
  char *d = domain_key(st, "routes", name);
  if (d == NULL)
    return;
  for (size_t i = 0; i < c->nroutes; i++) {
    if (strcmp(c->routes[i].domain, d) == 0) {
      cfg_fail(st, st->line, "[routes]: %s is already routed on line %d", d,
               c->routes[i].line);
      free(d);
      return;
    }
  }
  if (c->nroutes == CFG_MAX_ROUTES) {
    cfg_fail(st, st->line, "[routes]: too many routes (at most %d)",
             CFG_MAX_ROUTES);
    free(d);
    return;
  }
  struct cfg_route r = {.domain = d, .line = st->line};
  if (strcmp(v, "local") == 0) {
    r.kind = CFG_ROUTE_LOCAL;
  } else if (strcmp(v, "mx") == 0) {
    r.kind = CFG_ROUTE_MX;
  } else if (!has_ctl(v) && (cfg_forward_url_ok(v, CFG_SMTP) ||
                             cfg_forward_url_ok(v, CFG_LMTP))) {
    r.kind = CFG_ROUTE_URL;
    r.url = xstrdup(v);
  } else {
    cfg_fail(st, st->line,
             "[routes]: bad value '%s' for %s: expected local, mx, or a URL "
             "like smtp://host:25, smtp+starttls://host:587, smtps://host:465, "
             "lmtp://host:24 or lmtp:///path",
             v, d);
    free(d);
    return;
  }
  c->routes[c->nroutes++] = r;
}

void cfg_tls_policy_line(struct cfg_parser *st, const char *name,
                         const char *v) {
  static const struct {
    const char *name;
    enum tern_tls_policy level;
  } levels[] = {{"none", TERN_TLS_POLICY_NONE},
                {"may", TERN_TLS_POLICY_MAY},
                {"encrypt", TERN_TLS_POLICY_ENCRYPT},
                {"verify", TERN_TLS_POLICY_VERIFY},
                {"dane", TERN_TLS_POLICY_DANE}};
  struct cfg *c = st->c;
  char *d = domain_key(st, "tls_policy", name);
  if (d == NULL)
    return;
  for (size_t i = 0; i < c->ntls_policies; i++) {
    if (strcmp(c->tls_policies[i].domain, d) == 0) {
      cfg_fail(st, st->line, "[tls_policy]: %s is already given on line %d", d,
               c->tls_policies[i].line);
      free(d);
      return;
    }
  }
  if (c->ntls_policies == CFG_MAX_TLS_POLICIES) {
    cfg_fail(st, st->line, "[tls_policy]: too many domains (at most %d)",
             CFG_MAX_TLS_POLICIES);
    free(d);
    return;
  }
  for (size_t i = 0; i < sizeof levels / sizeof levels[0]; i++) {
    if (strcmp(v, levels[i].name) == 0) {
      c->tls_policies[c->ntls_policies++] =
          (struct cfg_tls_policy){d, levels[i].level, st->line};
      return;
    }
  }
  cfg_fail(st, st->line,
           "[tls_policy]: bad value '%s' for %s: expected none, may, "
           "encrypt, verify or dane",
           v, d);
  free(d);
}

/* The fields every key has; `valid` or `number` follow where used. */
#define K(s, n, fn, o, lo, hi, e)                                            \
  .sec = s, .name = n, .parse = fn, .off = o, .min = lo, .max = hi,          \
  .expect = e
#define CO(f) offsetof(struct cfg, f)
#define LO(f) offsetof(struct cfg_listener, f)
#define DO(f) offsetof(struct tern_dkim_key, f)
#define E_FILE "a file name"
#define DAY_MS (24ull * 3600 * 1000)
#define E_DUR "a duration like 30s, 500ms or 5m"
#define E_BOOL "yes or no"
#define DAY_S (24u * 3600)
#define E_QDUR "a duration in whole seconds like 30s, 5m, 1h or 5d"

static const struct cfg_key keys[] = {
    /* [server] */
    {K(SEC_SERVER, "hostname", p_text, CO(hostname), 0, 0,
       "a host name like mx.example.org"),
     .valid = v_hostname},
    {K(SEC_SERVER, "workers", p_number, CO(workers), 0, 1024,
       "a number from 0 (one per core) to 1024"),
     .number = decimal},
    {K(SEC_SERVER, "max_connections", p_number, CO(max_connections), 1, 1000000,
       "a number from 1 to 1000000"),
     .number = decimal},
    {K(SEC_SERVER, "max_per_ip", p_number, CO(max_per_ip), 0, 1000000,
       "a number from 0 (no limit) to 1000000"),
     .number = decimal},
    {K(SEC_SERVER, "greeting_delay", p_number, CO(greeting_delay_ms), 0,
       5 * 60 * 1000, "a duration like 5s or 500ms (at most 5m)"),
     .number = cfg_parse_duration_ms},
    {K(SEC_SERVER, "shutdown_timeout", p_number, CO(shutdown_timeout_ms), 0,
       DAY_MS, E_DUR " (at most 24h)"),
     .number = cfg_parse_duration_ms},
    {K(SEC_SERVER, "max_message_size", p_number, CO(max_message_size), 0,
       1ull << 40, "a size like 30M (0 = no limit)"),
     .number = cfg_parse_size, .wide = true},
    {K(SEC_SERVER, "max_recipients", p_number, CO(max_recipients), 1, 1000000,
       "a number from 1 to 1000000"),
     .number = decimal},
    {K(SEC_SERVER, "timeout_command", p_number, CO(timeout_command_ms), 1000,
       DAY_MS, E_DUR " (1s to 24h)"),
     .number = cfg_parse_duration_ms},
    {K(SEC_SERVER, "timeout_data", p_number, CO(timeout_data_ms), 1000, DAY_MS,
       E_DUR " (1s to 24h)"),
     .number = cfg_parse_duration_ms},
    {K(SEC_SERVER, "max_line_length", p_number, CO(max_line_length), 0,
       1u << 30, "a number of octets (0 = no limit; RFC 5321 says 1000)"),
     .number = decimal},
    {K(SEC_SERVER, "max_junk_commands", p_number, CO(max_junk_commands), 0,
       1000000, "a number from 0 (no limit) to 1000000"),
     .number = decimal},
    {K(SEC_SERVER, "timeout_proxy", p_number, CO(timeout_proxy_ms), 100, DAY_MS,
       E_DUR " (100ms to 24h)"),
     .number = cfg_parse_duration_ms},
    {K(SEC_SERVER, "timeout_tls_handshake", p_number,
       CO(timeout_tls_handshake_ms), 100, DAY_MS, E_DUR " (100ms to 24h)"),
     .number = cfg_parse_duration_ms},
    {K(SEC_SERVER, "timeout_write", p_number, CO(timeout_write_ms), 100, DAY_MS,
       E_DUR " (100ms to 24h)"),
     .number = cfg_parse_duration_ms},
    {K(SEC_SERVER, "xclient_networks", p_networks, CO(xclient_networks), 0, 0,
       "networks like 127.0.0.0/8 ::1")},
    {K(SEC_SERVER, "user", p_text, CO(user), 0, 0, "a user name"),
     .valid = v_text},
    {K(SEC_SERVER, "group", p_text, CO(group), 0, 0, "a group name"),
     .valid = v_text},
    {K(SEC_SERVER, "log", p_text, CO(log), 0, 0, "stderr or syslog"),
     .valid = v_log},
    /* [listener NAME] */
    {K(SEC_LISTENER, "url", p_text, LO(url), 0, 0,
       "a listener URL like smtp://0.0.0.0:25, smtp://[::]:587, "
       "smtps://*:465 or lmtp:///run/tern/lmtp"),
     .valid = cfg_listener_url_ok},
    {K(SEC_LISTENER, "starttls", p_bool, LO(starttls), 0, 0, E_BOOL)},
    {K(SEC_LISTENER, "proxy_protocol", p_bool, LO(proxy), 0, 0, E_BOOL)},
    {K(SEC_LISTENER, "auth", p_auth, LO(auth), 0, 0, "no, yes or required")},
    {K(SEC_LISTENER, "insecure_auth", p_bool, LO(insecure_auth), 0, 0, E_BOOL)},
    {K(SEC_LISTENER, "xclient", p_bool, LO(xclient), 0, 0, E_BOOL)},
    {K(SEC_LISTENER, "socket_user", p_text, LO(socket_user), 0, 0,
       "a user name (unix-socket listeners)"),
     .valid = v_text},
    {K(SEC_LISTENER, "socket_group", p_text, LO(socket_group), 0, 0,
       "a group name (unix-socket listeners)"),
     .valid = v_text},
    {K(SEC_LISTENER, "socket_mode", p_mode, LO(socket_mode), 0, 0,
       "an octal mode like 0660 (unix-socket listeners)")},
    /* [tls] */
    {K(SEC_TLS, "cert", p_tls_pair, 0, 0, 0, "a certificate file (PEM)")},
    {K(SEC_TLS, "key", p_tls_pair, 0, 0, 0, "a private key file (PEM)")},
    /* [auth] */
    {K(SEC_AUTH, "users", p_text, CO(users_file), 0, 0, "a file name"),
     .valid = v_text},
    {K(SEC_AUTH, "mechanisms", p_mechanisms, CO(auth_mechanisms), 0, 0,
       "PLAIN and/or LOGIN")},
    /* [domains] */
    {K(SEC_DOMAINS, "accept", p_accept, 0, 0, 0,
       "domains like example.org example.net")},
    {K(SEC_DOMAINS, "relay_authenticated", p_bool, CO(relay_authenticated), 0,
       0, E_BOOL)},
    /* [delivery] */
    {K(SEC_DELIVERY, "target", p_target, CO(target), 0, 0,
       "maildir, pipe, lmtp, smtp or mx")},
    {K(SEC_DELIVERY, "maildir", p_text, CO(maildir), 0, 0,
       "a directory, or a template with %u (local part), %d (domain), "
       "%a (address), %%"),
     .valid = v_maildir},
    {K(SEC_DELIVERY, "fsync", p_bool, CO(fsync), 0, 0, E_BOOL)},
    {K(SEC_DELIVERY, "command", p_text, CO(command), 0, 0,
       "a command line; escapes %s (sender), %r or %a (recipient), "
       "%u (local part), %d (domain), %%"),
     .valid = v_command},
    {K(SEC_DELIVERY, "url", p_text, CO(forward_url), 0, 0,
       "a URL like lmtp:///run/dovecot/lmtp, lmtp://host:24, "
       "smtp://host:25, smtp+starttls://host:587 or smtps://host:465"),
     .valid = v_forward_url},
    {K(SEC_DELIVERY, "verify", p_bool, CO(forward_verify), 0, 0, E_BOOL)},
    {K(SEC_DELIVERY, "recipients", p_text, CO(recipients_file), 0, 0,
       "a file name"),
     .valid = v_text},
    {K(SEC_DELIVERY, "recipient_check", p_text, CO(recipient_check), 0, 0,
       "a command line; escapes %s (sender), %r or %a (recipient), "
       "%u (local part), %d (domain), %%"),
     .valid = v_command},
    {K(SEC_DELIVERY, "recipient_check_timeout", p_number,
       CO(recipient_check_timeout_ms), 100, 10 * 60 * 1000,
       E_DUR " (100ms to 10m)"),
     .number = cfg_parse_duration_ms},
    {K(SEC_DELIVERY, "ca_file", p_text, CO(forward_ca_file), 0, 0,
       "a file name"),
     .valid = v_text},
    {K(SEC_DELIVERY, "auth_user", p_text, CO(forward_auth_user), 0, 0,
       "a user name for the next hop's AUTH"),
     .valid = v_text},
    {K(SEC_DELIVERY, "auth_password_file", p_text,
       CO(forward_auth_password_file), 0, 0,
       "a file whose first line is the next hop's AUTH password"),
     .valid = v_text},
    {K(SEC_DELIVERY, "queue", p_tristate, CO(queue), 0, 0, E_BOOL)},
    {K(SEC_DELIVERY, "relay", p_relay, 0, 0, 0,
       "mx, local, or a URL like smtp+starttls://smtp.example.net:587, "
       "smtps://host:465 or smtp://host:25")},
    {K(SEC_DELIVERY, "relay_auth_user", p_text, CO(relay_auth_user), 0, 0,
       "a user name for the relay's AUTH"),
     .valid = v_text},
    {K(SEC_DELIVERY, "relay_auth_password_file", p_text,
       CO(relay_auth_password_file), 0, 0,
       "a file whose first line is the relay's AUTH password"),
     .valid = v_text},
    {K(SEC_DELIVERY, "relay_verify", p_bool, CO(relay_verify), 0, 0, E_BOOL)},
    {K(SEC_DELIVERY, "relay_ca_file", p_text, CO(relay_ca_file), 0, 0, E_FILE),
     .valid = v_text},
    /* [queue] */
    {K(SEC_QUEUE, "directory", p_path, CO(queue_dir), 0, 0, "a directory"),
     .valid = v_text},
    {K(SEC_QUEUE, "lifetime", p_number, CO(queue_lifetime_s), 1, 365 * DAY_S,
       E_QDUR " (1s to 365d)"),
     .number = duration_s},
    {K(SEC_QUEUE, "retry_min", p_number, CO(queue_retry_min_s), 1,
       30 * DAY_S, E_QDUR " (1s to 30d)"),
     .number = duration_s},
    {K(SEC_QUEUE, "retry_max", p_number, CO(queue_retry_max_s), 1,
       30 * DAY_S, E_QDUR " (1s to 30d)"),
     .number = duration_s},
    {K(SEC_QUEUE, "delay_warning", p_number, CO(queue_delay_warning_s), 0,
       365 * DAY_S, E_QDUR " (0 = no warnings, at most 365d)"),
     .number = duration_s},
    {K(SEC_QUEUE, "concurrency", p_number, CO(queue_concurrency), 1, 10000,
       "a number from 1 to 10000"),
     .number = decimal},
    {K(SEC_QUEUE, "max_active", p_number, CO(queue_max_active), 1, 100000,
       "a number from 1 to 100000"),
     .number = decimal},
    {K(SEC_QUEUE, "fsync", p_bool, CO(queue_fsync), 0, 0, E_BOOL)},
    {K(SEC_QUEUE, "postmaster", p_address, CO(queue_postmaster), 0, 0,
       "an address like postmaster@example.org (or nothing: keep double "
       "bounces on hold)")},
    {K(SEC_QUEUE, "control", p_path, CO(queue_control), 0, 0,
       "a socket path"),
     .valid = v_text},
    /* [outbound] */
    {K(SEC_OUTBOUND, "helo", p_text, CO(out.helo), 0, 0,
       "a host name like mail.example.org"),
     .valid = v_hostname},
    {K(SEC_OUTBOUND, "bind", p_text, CO(out.bind), 0, 0,
       "an IPv4 address like 192.0.2.10"),
     .valid = v_ipv4},
    {K(SEC_OUTBOUND, "bind6", p_text, CO(out.bind6), 0, 0,
       "an IPv6 address like 2001:db8::10"),
     .valid = v_ipv6},
    {K(SEC_OUTBOUND, "resolver", p_resolver, CO(out.resolver), 0, 0,
       "addresses like 127.0.0.53, 192.0.2.1:5353 or [::1]:53")},
    {K(SEC_OUTBOUND, "trust_anchor", p_text, CO(out.trust_anchor), 0, 0,
       "a file of DNSSEC trust anchors (DS or DNSKEY records)"),
     .valid = v_text},
    {K(SEC_OUTBOUND, "dnssec", p_bool, CO(out.dnssec), 0, 0, E_BOOL)},
    {K(SEC_OUTBOUND, "mta_sts", p_bool, CO(out.mta_sts), 0, 0, E_BOOL)},
    {K(SEC_OUTBOUND, "mta_sts_ca_file", p_text, CO(out.mta_sts_ca_file), 0, 0,
       E_FILE),
     .valid = v_text},
    {K(SEC_OUTBOUND, "ca_file", p_text, CO(out.ca_file), 0, 0, E_FILE),
     .valid = v_text},
    {K(SEC_OUTBOUND, "port", p_number, CO(out.port), 1, 65535,
       "a port number from 1 to 65535"),
     .number = decimal},
    {K(SEC_OUTBOUND, "connect_timeout", p_number, CO(out.connect_timeout_ms),
       100, 3600 * 1000, E_DUR " (100ms to 1h)"),
     .number = cfg_parse_duration_ms},
    {K(SEC_OUTBOUND, "timeout", p_number, CO(out.timeout_ms), 1000,
       3600 * 1000, E_DUR " (1s to 1h)"),
     .number = cfg_parse_duration_ms},
    /* [dkim NAME] */
    {K(SEC_DKIM, "domain", p_dkim_domain, DO(domain), 0, 0,
       "a domain like example.org (.example.org: also its subdomains)")},
    {K(SEC_DKIM, "selector", p_text, DO(selector), 0, 0,
       "a selector like s1 or 2026-rsa"),
     .valid = v_selector},
    {K(SEC_DKIM, "key", p_text, DO(key_file), 0, 0,
       "a private key file (PEM: RSA or Ed25519)"),
     .valid = v_text},
    {K(SEC_DKIM, "headers", p_text, DO(headers), 0, 0,
       "header field names separated by ':' like from:to:subject:date"),
     .valid = v_headers},
    {K(SEC_DKIM, "users", p_dkim_users, 0, 0, 0,
       "user names separated by spaces like alice bob")},
};

_Static_assert(sizeof keys / sizeof keys[0] <= CFG_KEYS_MAX,
               "st->seen has CFG_KEYS_MAX places");

int cfg_key_index(enum cfg_section sec, const char *name) {
  for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++)
    if (keys[i].sec == sec && strcmp(keys[i].name, name) == 0)
      return (int)i;
  return -1;
}

void cfg_key_apply(struct cfg_parser *st, int index, const char *v) {
  const struct cfg_key *k = &keys[index];
  void *base = st->sec == SEC_LISTENER ? (void *)&st->c->listeners[st->cur]
               : st->sec == SEC_DKIM   ? (void *)&st->c->dkim[st->cur]
                                       : (void *)st->c;
  k->parse(st, k, v, (char *)base + k->off);
}
