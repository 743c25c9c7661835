/*
 * `tern serve` configuration: the embedded default, command-line flags
 * and the INI file (inih). Every key is documented in
 * docs/configuration.md and docs/man/tern.ini.5.
 */
#ifndef TERN_CLI_CONFIG_H
#define TERN_CLI_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <tern/dkim.h>
#include <tern/net.h>

#define CFG_MAX_LISTENERS 16
#define CFG_MAX_CERTS 16
#define CFG_MAX_DOMAINS 256
#define CFG_MAX_ROUTES 256
#define CFG_MAX_TLS_POLICIES 256
#define CFG_MAX_DKIM 16

enum cfg_auth { CFG_AUTH_OFF = 0, CFG_AUTH_ON, CFG_AUTH_REQUIRED };

struct cfg_listener {
  char *name;            /* [listener NAME] */
  int line;              /* its [listener] line in the file; 0: none */
  char *url;             /* smtp://..., smtps://..., lmtp:///path */
  bool starttls;         /* offer STARTTLS (needs [tls] certificates) */
  bool proxy;            /* expect a PROXY v1/v2 header */
  enum cfg_auth auth;    /* off / offered / required before MAIL */
  bool insecure_auth;    /* offer AUTH without TLS */
  bool xclient;          /* XCLIENT from [server] xclient_networks */
  char *socket_user;     /* unix socket owner (name) */
  char *socket_group;    /* unix socket group (name) */
  unsigned socket_mode;  /* unix socket mode, 0 = umask's */
};

/* [delivery] target. CFG_MX: no local delivery; every recipient goes
 * to its own domain's MX hosts (dest "mx:DOMAIN"), through the queue. */
enum cfg_target { CFG_MAILDIR = 0, CFG_PIPE, CFG_LMTP, CFG_SMTP, CFG_MX };

/* [routes]: one line "DOMAIN = local | mx | URL". */
enum cfg_route_kind {
  CFG_ROUTE_LOCAL = 0, /* the [delivery] target (dest "local") */
  CFG_ROUTE_MX,        /* the recipient domain's MX (dest "mx:DOMAIN") */
  CFG_ROUTE_URL,       /* a next hop (dest "url:URL") */
};

struct cfg_route {
  char *domain;  /* lower case: "example.org" (exact), ".example.org"
                    (its subdomains, not itself) or "*" (any other) */
  int kind;      /* enum cfg_route_kind */
  char *url;     /* CFG_ROUTE_URL: smtp://, smtp+starttls://, smtps://,
                    lmtp://host[:port], lmtp:///path; else NULL */
  int line;      /* its line in the file (messages) */
};

/* [outbound]: how tern connects out to MX hosts and relays. */
struct cfg_outbound {
  char *helo;            /* EHLO name; NULL: [server] hostname */
  char *bind;            /* IPv4 source address; NULL: the system's */
  char *bind6;           /* IPv6 source address; NULL: the system's */
  char *resolver;        /* forwarders "ADDR[:PORT] ..." (tern/resolve.h
                            forward); NULL: /etc/resolv.conf */
  char *trust_anchor;    /* DNSSEC anchors file; NULL: the resolver's
                            default (/usr/share/dns/root.key, ...) */
  char *mta_sts_ca_file; /* CA of MTA-STS policy hosts; NULL: system */
  char *ca_file;         /* CA for verify / MTA-STS MX certs; NULL: system */
  bool dnssec;           /* validate (default yes) */
  bool mta_sts;          /* look MTA-STS policies up (default yes) */
  unsigned port;         /* MX port (default 25) */
  unsigned connect_timeout_ms; /* default 30 s */
  unsigned timeout_ms;   /* per command (default 5 min; the final reply
                            after the data waits twice that) */
};

/* [tls_policy]: "DOMAIN = none | may | encrypt | verify | dane". */
struct cfg_tls_policy {
  char *domain;              /* as cfg_route.domain ("*": the default) */
  enum tern_tls_policy level;
  int line;
};

struct cfg {
  /* [server] */
  char *hostname;              /* default: gethostname() */
  unsigned workers;            /* 0 = one per core; default 1 */
  unsigned max_connections;    /* default 1000 */
  unsigned max_per_ip;         /* default 0 (off) */
  unsigned greeting_delay_ms;  /* default 0 */
  unsigned shutdown_timeout_ms;/* default 30000 */
  uint64_t max_message_size;   /* default 30 MiB; "30M", "512K" accepted */
  unsigned max_recipients;     /* default 1000 */
  unsigned timeout_command_ms; /* default 300000 */
  unsigned timeout_data_ms;    /* default 300000 (RFC 5321 §4.5.3.2.7) */
  unsigned max_line_length;    /* message text line; default 0 = no limit */
  unsigned max_junk_commands;  /* default 100 (Postfix's junk limit) */
  unsigned timeout_proxy_ms;   /* whole PROXY header; default 10000 */
  unsigned timeout_tls_handshake_ms; /* whole handshake; default 30000 */
  unsigned timeout_write_ms;   /* output stuck this long: close; 60000 */
  char *xclient_networks;      /* default NULL */
  char *user, *group;          /* drop privileges to these after binding */
  char *log;                   /* "stderr" (default) or "syslog" */
  /* listeners ([listener NAME] sections, in order) */
  struct cfg_listener listeners[CFG_MAX_LISTENERS];
  size_t nlisteners;
  /* [tls]: cert/key pairs in order, the first is the default */
  struct tern_tls_cert certs[CFG_MAX_CERTS];
  size_t ncerts;
  /* [auth] */
  char *users_file;            /* user:crypt-hash lines */
  char *auth_mechanisms;       /* default "PLAIN LOGIN" */
  /* [domains] */
  bool accept_any;             /* embedded default: any recipient */
  char *domains[CFG_MAX_DOMAINS]; /* accepted recipient domains */
  size_t ndomains;
  bool relay_authenticated;    /* AUTH'd users may send anywhere (yes) */
  /* [delivery] */
  enum cfg_target target;
  char *maildir;               /* path, or template with %u %d %a */
  bool fsync;                  /* default yes */
  char *command;               /* pipe target: argv by spaces; %s sender,
                                  %r or %a recipient, %u local part,
                                  %d domain, %% */
  char *recipients_file;       /* known recipients, or NULL (any) */
  char *recipient_check;       /* command asked at RCPT (maildir, pipe) */
  unsigned recipient_check_timeout_ms; /* default 30000 */
  char *forward_url;           /* lmtp/smtp target */
  bool forward_verify;         /* verify the next hop's certificate */
  char *forward_ca_file;
  char *forward_auth_user;     /* next-hop AUTH (needs verified TLS) */
  char *forward_auth_password_file;
  char *forward_auth_password; /* read from the file by cfg_load */
  int queue;                   /* [delivery] queue = yes/no; -1: the
                                  default (cfg_uses_queue) */
  /* [delivery] relay: where authenticated users' mail to domains that
   * are not accepted goes: a URL (dest "smarthost"), mx ("mx:D") or
   * local (the target, as earlier versions did). Not given: mx when the
   * file uses any key of outbound mail (outbound_keys), else local --
   * a configuration written for an earlier version routes as it did. */
  char *relay_url;             /* the URL (smtp://, smtp+starttls://,
                                  smtps://); NULL: mx or local */
  bool relay_set;              /* the relay key was given */
  bool relay_local;            /* relay = local */
  bool outbound_keys;          /* the file (or a flag) gave target = mx, a
                                  relay key, [routes], [outbound],
                                  [tls_policy] or [dkim NAME] */
  char *relay_auth_user;       /* AUTH at the relay (needs verified TLS) */
  char *relay_auth_password_file;
  char *relay_auth_password;   /* read from the file by cfg_load */
  bool relay_verify;           /* verify the relay's certificate (yes) */
  char *relay_ca_file;
  /* [routes], in file order (cfg_route_dest picks) */
  struct cfg_route routes[CFG_MAX_ROUTES];
  size_t nroutes;
  /* [outbound] */
  struct cfg_outbound out;
  /* [tls_policy], in file order (cfg_tls_policy_for picks) */
  struct cfg_tls_policy tls_policies[CFG_MAX_TLS_POLICIES];
  size_t ntls_policies;
  /* [dkim NAME] sections, in order: the strings are owned (malloc'd) by
   * the cfg; hand dkim[0..ndkim) to tern_dkim_signer_new as they are. */
  struct tern_dkim_key dkim[CFG_MAX_DKIM];
  char *dkim_name[CFG_MAX_DKIM]; /* NAME of [dkim NAME] */
  char *dkim_users[CFG_MAX_DKIM]; /* its `users`: the authenticated users
                                     who may sign with it, separated by
                                     spaces; NULL: every one */
  int dkim_line[CFG_MAX_DKIM];   /* its section line, for messages:
                                    "FILE:LINE: [dkim NAME]: ..." */
  size_t ndkim;
  /* [queue] (docs/configuration.md "[queue]") */
  char *queue_dir;             /* default "./queue" (embedded) */
  unsigned queue_lifetime_s;   /* default 5 days */
  unsigned queue_retry_min_s;  /* default 300 */
  unsigned queue_retry_max_s;  /* default 3600 */
  unsigned queue_delay_warning_s; /* default 0 (no warnings) */
  unsigned queue_concurrency;  /* jobs per destination; default 20 */
  unsigned queue_max_active;   /* jobs in all; default 200 */
  bool queue_fsync;            /* default yes */
  char *queue_postmaster;      /* double bounces go here; NULL: kept held */
  char *queue_control;         /* control socket; default DIR/control */
  /* where the file came from, for reload and messages */
  char *path;                  /* NULL for the embedded default */
};

/* The embedded default: 127.0.0.1:2525 and [::1]:2525, any recipient,
 * Maildir ./mail with fsync. */
void cfg_defaults(struct cfg *c);

/*
 * Load an INI file over the defaults. Unknown sections or keys, bad
 * values, missing required keys (a listener without url, a pipe target
 * without command, ...) stop with a message "FILE:LINE: what" in
 * err[0..cap) and return -1. Returns 0 on success.
 */
int cfg_load(struct cfg *c, const char *path, char *err, size_t cap);
/* (On failure *c may be half-loaded: cfg_free it; a reload keeps the
 * configuration it had.) */

/* Checks that need the whole file (e.g. starttls without certificates;
 * outbound mail without the queue; the DKIM key, [outbound] and relay
 * CA files readable). Returns 0 or -1 with "FILE: what" or, where one
 * line is to blame, "FILE:LINE: what" in err. */
int cfg_check(const struct cfg *c, char *err, size_t cap);

/* The open-relay rule of cfg_check (mail for any domain that goes on
 * to other hosts -- target smtp, lmtp or mx, or a "* = mx|URL" route --
 * with any domain accepted needs every listener local or with auth =
 * required), for
 * listeners other than c's own: the --listen ones, or on a reload the
 * listeners still running (a reload does not change them). Returns 0 or
 * -1 with "FILE: open relay: ..." in err. */
int cfg_check_relay(const struct cfg *c, const struct cfg_listener *ls,
                    size_t n, char *err, size_t cap);

void cfg_free(struct cfg *c);

/*
 * What a reload (SIGHUP) cannot apply to a running server: the keys whose
 * value differs between `running` (the configuration the server was
 * started with) and `next`, written into buf as a comma-separated list
 * ("server.workers,listener.sub.url,auth.users", "listener.NAME" for a
 * listener added or removed). With `listeners_fixed` (the listeners came
 * from --listen) the listener sections are not compared. Everything else
 * applies live: hostname, sizes, limits, timeouts, domains, users
 * (contents and path), certificates (contents and paths), delivery
 * (relay_* too), [routes], [tls_policy], [dkim NAME] (new sessions sign
 * with the new keys) and [outbound] (the deliverer reads the
 * configuration per job and makes its resolver anew on a reload).
 * [delivery] target = mx to or from another target changes whether the
 * queue is used only through cfg_uses_queue (below).
 * [delivery] queue needs a restart when it changes whether the queue is
 * used (what a 250 means changes under running sessions), and so does
 * every [queue] key while the queue is used: the open queue keeps the
 * options it was opened with (the queue API takes them once). [queue]
 * keys are not compared when either side runs without the queue.
 * Returns the number of keys (0: everything applies); a list longer than
 * cap ends in "...".
 */
size_t cfg_restart_keys(const struct cfg *running, const struct cfg *next,
                        bool listeners_fixed, char *buf, size_t cap);

/* Does delivery go through the queue? [delivery] queue when set; else
 * yes for the relaying targets (lmtp, smtp, mx) and when mail can leave
 * through MX or a route/relay URL (cfg_uses_outbound), no for maildir
 * and pipe otherwise (answered in the transaction, durable as they
 * are). cfg_check refuses queue = no when cfg_uses_outbound. */
bool cfg_uses_queue(const struct cfg *c);

/* The control socket's path: [queue] control, else DIRECTORY/control.
 * Returns 0, or -1 when it does not fit in buf[cap]. */
int cfg_queue_control_path(const struct cfg *c, char *buf, size_t cap);

/* Is `domain` (pointer + length, case-insensitive) accepted? The
 * [domains] accept list, and every domain a [routes] line names (exact,
 * or a subdomain of a ".suffix" line; not "*"). accept_any is the
 * caller's to check. */
bool cfg_domain_accepted(const struct cfg *c, const char *domain, size_t len);

/*
 * The destination name (the queue's per-recipient dest) of an accepted
 * recipient in `domain` (pointer + length, any case):
 *   1. a [routes] line: the exact domain, else the longest ".suffix"
 *      that matches, else "*" -- which is for the domains nobody named:
 *      not for those of [domains] accept (they stay local unless an
 *      exact or suffix line says otherwise; no loop back to our own MX);
 *   2. else built in: an accepted domain (accept_any, [domains], a
 *      routed domain) -> local; any other (an authenticated user's
 *      mail) -> [delivery] relay: "smarthost" for a URL, mx
 *      (cfg_relay_is_mx), else local.
 * A route or rule that says local gives "local" -- except with target =
 * mx, where local delivery is off and local means "mx:DOMAIN". No
 * domain (RCPT TO:<postmaster>) is never routed: "local", or with
 * target = mx "mx:" and [server] hostname. mx gives
 * "mx:DOMAIN" (domain lower-cased), a route URL "url:URL".
 * Returns buf (or a static string: "local", "smarthost"); NULL when the
 * name does not fit in buf[cap] (a domain is at most 255 octets, a URL
 * at most what the file held: cap 1100 is always enough for mx:).
 */
const char *cfg_route_dest(const struct cfg *c, const char *domain,
                           size_t len, char *buf, size_t cap);

/* The [routes] line that applies to `domain` (same precedence as
 * cfg_route_dest, "*" not for [domains] accept), or NULL. */
const struct cfg_route *cfg_route_find(const struct cfg *c,
                                       const char *domain, size_t len);

/* The [tls_policy] level for a recipient domain: exact, then the
 * longest ".suffix"; no entry: TERN_TLS_POLICY_AUTO. */
enum tern_tls_policy cfg_tls_policy_for(const struct cfg *c,
                                        const char *domain, size_t len);

/*
 * What `tern serve --check` says of where mail goes, after "configuration
 * OK": one line each, indented two spaces, for the delivery ("delivery:
 * target=maildir queue=yes relay=mx"), each [routes] line ("route
 * .example.org: mx"), each [tls_policy] line, each [dkim NAME] ("dkim
 * rsa: d=example.org s=2026r key=FILE") and, when mail can leave,
 * [outbound] ("outbound: helo=... resolver=... dnssec=yes mta_sts=yes
 * port=25"). Writes to f; errors of f are the caller's.
 */
void cfg_print_summary(const struct cfg *c, FILE *f);

/* Does [delivery] relay mean mx (given, or the default with
 * outbound_keys)? */
bool cfg_relay_is_mx(const struct cfg *c);

/* Can mail leave for other hosts with this configuration: target = mx,
 * a route to mx or a URL, or mail to other domains going to mx or the
 * relay URL -- authenticated users' (relay_authenticated, a users file,
 * an accept list), or the queue's bounces to senders elsewhere when the
 * queue is on anyway (queue = yes, or the lmtp/smtp targets)? Such mail
 * needs the queue (and the deliverer a resolver from [outbound]). */
bool cfg_uses_outbound(const struct cfg *c);

/*
 * Set one key as if it were in the file, for command-line flags
 * (`section` "server", "auth", "domains", "delivery" or "queue"; not
 * listeners or [tls]). Same checks and messages, with "command line" for FILE.
 * Returns 0 or -1.
 */
int cfg_set(struct cfg *c, const char *section, const char *key,
            const char *value, char *err, size_t cap);

/* The value syntaxes of the file, for flags that take them.
 * Booleans: yes/no, true/false, on/off, 1/0 (any case). Sizes: bytes
 * or a number with K, M, G (×1024). Durations: a number with ms, s, m
 * or h; no unit means seconds. cfg_parse_duration_days_ms also takes
 * d (days), for the long durations of [queue]. Return 0 or -1. */
int cfg_parse_bool(const char *s, bool *out);
int cfg_parse_size(const char *s, uint64_t *out);
int cfg_parse_duration_ms(const char *s, uint64_t *out);
int cfg_parse_duration_days_ms(const char *s, uint64_t *out);

#endif
