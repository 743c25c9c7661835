/*
 * `tern serve` configuration, inside: what config.c (the line reader,
 * sections, whole-file checks) and config_keys.c (every key: its value
 * syntax, where it is stored) share while a file is parsed.
 */
#ifndef TERN_CLI_CONFIG_KEYS_H
#define TERN_CLI_CONFIG_KEYS_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"

enum cfg_section {
  SEC_NONE = 0, /* before the first [section] */
  SEC_SERVER,
  SEC_LISTENER,
  SEC_TLS,
  SEC_AUTH,
  SEC_DOMAINS,
  SEC_DELIVERY,
  SEC_QUEUE,
  SEC_ROUTES,     /* keys are domains: config.c reads them itself */
  SEC_OUTBOUND,
  SEC_TLS_POLICY, /* keys are domains: config.c reads them itself */
  SEC_DKIM,       /* [dkim NAME], one per key */
};

/* The last section of enum cfg_section. */
#define SEC_LAST SEC_DKIM

/* At most this many keys in the table of config_keys.c. */
#define CFG_KEYS_MAX 128

/* "server", "listener", ... by enum cfg_section ("" for SEC_NONE). */
extern const char *const cfg_section_names[];

/* One parse: of a file (cfg_load) or of one key (cfg_set). */
struct cfg_parser {
  struct cfg *c;
  const char *path; /* for messages */
  FILE *f;
  int line;
  char *buf;
  size_t bufcap;
  char *longval; /* the value of the current (over-long) line */
  enum cfg_section sec;
  size_t cur; /* current listener (SEC_LISTENER) or key (SEC_DKIM) */
  bool listeners_replaced;
  int listener_line[CFG_MAX_LISTENERS];
  /* keys given, by table index: per listener, per [dkim NAME], and of
   * the other sections */
  bool listener_seen[CFG_MAX_LISTENERS][CFG_KEYS_MAX];
  bool dkim_seen[CFG_MAX_DKIM][CFG_KEYS_MAX];
  bool seen[CFG_KEYS_MAX];
  int key_line[CFG_KEYS_MAX]; /* where those were given (0: not given) */
  int cert_line; /* a cert waiting for its key, else 0 */
  int target_line;
  bool accept_given;
  /* the first error */
  char *err;
  size_t cap;
  bool failed;
  int err_line;
};

/* Record the first error as "FILE:LINE: what" ("FILE: what" when line
 * is 0); later ones are dropped. */
void cfg_fail(struct cfg_parser *st, int line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* The key `name` of section `sec`: its index in the key table (the bit
 * of st->seen or st->listener_seen it owns), or -1 when there is none. */
int cfg_key_index(enum cfg_section sec, const char *name);

/* Parse v as the key at `index` of the current section (the current
 * listener's for SEC_LISTENER, the current key's for SEC_DKIM) and
 * store it; a bad value goes to cfg_fail. */
void cfg_key_apply(struct cfg_parser *st, int index, const char *v);

/* A line of [routes] ("DOMAIN = local | mx | URL") or of [tls_policy]
 * ("DOMAIN = none | may | encrypt | verify | dane"): checked and added;
 * a bad one goes to cfg_fail. */
void cfg_route_line(struct cfg_parser *st, const char *name, const char *v);
void cfg_tls_policy_line(struct cfg_parser *st, const char *name,
                         const char *v);

/* An IPv4 (family AF_INET) or IPv6 (AF_INET6) address literal. */
bool cfg_ip_ok(const char *s, int family);

/* "smtp://HOST:PORT", "smtps://HOST:PORT", "lmtp://HOST:PORT" (HOST an
 * IPv4 address, [IPv6] or *), "smtp:///path", "lmtp:///path". */
bool cfg_listener_url_ok(const char *u);
/* The same for --listen, which also takes port 0 (any free port). */
bool cfg_listener_url_cli_ok(const char *u);

/* Forwarding endpoints that fit `target`: smtp://, smtp+starttls://,
 * smtps://host[:port] for CFG_SMTP; lmtp://host[:port] and
 * lmtp:///path for CFG_LMTP. */
bool cfg_forward_url_ok(const char *u, enum cfg_target target);

/* Is the domain in the [domains] accept list itself (not accept_any,
 * not [routes])? */
bool cfg_domain_listed(const struct cfg *c, const char *domain, size_t len);

/* "%x" escapes in a template: only those in `allowed` (and "%%"). */
bool cfg_template_ok(const char *t, const char *allowed);

/* Make *slot absolute: a relative path is taken from the working
 * directory now (a leading "./" dropped), so every later user -- the
 * daemon's log, `tern queue -c`, a reload -- sees the one real place.
 * Left as it is when the working directory cannot be had. */
void cfg_abs_path(char **slot);

#define CFG_MAILDIR_ESCAPES "uda"
#define CFG_COMMAND_ESCAPES "srdua"

/* ---- character and string helpers for both files ------------------------ */

static inline bool is_space(int ch) {
  return ch == ' ' || ch == '\t' || ch == '\r' || ch == '\n' || ch == '\v' ||
         ch == '\f';
}

static inline bool is_alnum(int ch) {
  return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
         (ch >= '0' && ch <= '9');
}

static inline bool has_prefix(const char *s, const char *p) {
  return strncmp(s, p, strlen(p)) == 0;
}

/* Out of memory while reading the configuration: nothing to save. */
static inline void oom(void) {
  fputs("tern: out of memory\n", stderr);
  abort();
}

static inline char *xstrdup(const char *s) {
  char *p = strdup(s);
  if (p == NULL)
    oom();
  return p;
}

static inline char *xstrndup(const char *s, size_t n) {
  char *p = strndup(s, n);
  if (p == NULL)
    oom();
  return p;
}

static inline void set_str(char **slot, const char *v) {
  char *n = xstrdup(v);
  free(*slot);
  *slot = n;
}

#endif /* TERN_CLI_CONFIG_KEYS_H */
