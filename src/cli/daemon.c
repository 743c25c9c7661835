/*
 * tern serve — the mail-receiving daemon, on the public API only.
 *
 *   tern serve                       embedded default: 127.0.0.1:2525 and
 *                                    [::1]:2525, any recipient, ./mail
 *   tern serve -c tern.ini           a configuration file (docs/configuration.md)
 *   tern serve --listen URL --maildir DIR --hostname NAME
 *   tern serve --check -c tern.ini   check the configuration and exit
 *
 * Every message is answered 250 only once it is durable (Maildir: written,
 * fsynced, renamed into new/, directory fsynced), accepted by the pipe
 * command or the next hop, or, with [delivery] queue, fsynced in the
 * queue, which then delivers it (queue_deliver.c; the control socket of
 * `tern queue` is control.c; docs/decisions/0018). One key=value log line per session and per message. SIGTERM and
 * SIGINT drain gracefully; SIGHUP reloads the configuration (users,
 * domains, delivery, certificates, hostname, sizes, limits, timeouts;
 * what needs a restart is logged by key: on_hup()). systemd
 * socket activation (LISTEN_FDS) is honoured; privileges are dropped to
 * [server] user/group after binding.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <getopt.h>
#include <ifaddrs.h>
#include <netdb.h>
#include <netinet/in.h>
#include <grp.h>
#include <pwd.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sysexits.h>
#include <syslog.h>
#include <time.h>
#include <unistd.h>

#include <systemd/sd-daemon.h>
#include <tern/net.h>
#include <tern/queue.h>
#include <tern/resolve.h>
#include <tern/tern.h>

#include "cli.h"
#include "config.h"
#include "config_keys.h"
#include "control.h"
#include "deliver.h"
#include "log.h"
#include "recipients.h"
#include "serve.h"
#include "serve_dkim.h"
#include "users.h"

/* ---- the policy: what a reload replaces ----------------------------------- */

static uv_mutex_t g_lock;       /* g_policy swaps */
static struct policy *g_policy; /* current */

struct policy *policy_get(void) {
  uv_mutex_lock(&g_lock);
  struct policy *p = g_policy;
  atomic_fetch_add(&p->refs, 1);
  uv_mutex_unlock(&g_lock);
  return p;
}

void policy_put(struct policy *p) {
  if (p && atomic_fetch_sub(&p->refs, 1) == 1) {
    cfg_free(&p->cfg);
    if (p->users)
      users_free(p->users);
    rcptset_free(p->known);
    serve_dkim_free(p->dkim);
    free(p);
  }
}

/* Make p the current policy (its reference moves there). */
static void policy_set(struct policy *p) {
  uv_mutex_lock(&g_lock);
  struct policy *old = g_policy;
  g_policy = p;
  uv_mutex_unlock(&g_lock);
  policy_put(old);
}

static int load_policy(const char *path, const struct cfg *base,
                       struct policy **out, char *err, size_t cap) {
  struct policy *p = calloc(1, sizeof *p);
  if (!p) {
    snprintf(err, cap, "out of memory");
    return -1;
  }
  atomic_init(&p->refs, 1);
  if (base)
    p->cfg = *base;
  else
    cfg_defaults(&p->cfg);
  if (path && cfg_load(&p->cfg, path, err, cap) != 0)
    goto fail;
  if (cfg_check(&p->cfg, err, cap) != 0)
    goto fail;
  if (p->cfg.users_file &&
      users_load(p->cfg.users_file, &p->users, err, cap) != 0)
    goto fail;
  if (p->cfg.recipients_file &&
      rcptset_load(p->cfg.recipients_file, &p->known, err, cap) != 0)
    goto fail;
  /* every key loads, or the policy (a reload: the old one stays) */
  if (serve_dkim_load(&p->cfg, &p->dkim, err, cap) != 0)
    goto fail;
  *out = p;
  return 0;
fail:
  if (p->users)
    users_free(p->users);
  rcptset_free(p->known);
  cfg_free(&p->cfg);
  free(p);
  return -1;
}

/* --hostname and --maildir override the file, with the file's checks,
 * at start-up and on every reload. Returns 0 or -1 with err set. */
static int apply_flags(struct cfg *c, const char *hostname,
                       const char *maildir, char *err, size_t cap) {
  if (hostname && cfg_set(c, "server", "hostname", hostname, err, cap) != 0)
    return -1;
  if (maildir && (cfg_set(c, "delivery", "target", "maildir", err, cap) != 0 ||
                  cfg_set(c, "delivery", "maildir", maildir, err, cap) != 0))
    return -1;
  return 0;
}

/* ---- signals ------------------------------------------------------------------ */

struct daemon {
  uv_loop_t *loop;
  struct tern_server *srv;
  struct tern_server_callbacks cb; /* the server keeps pointers to these */
  struct tern_auth_callbacks auth;
  uv_signal_t sigterm, sigint, sighup;
  const char *path; /* config file, for reload */
  const char *maildir, *hostname; /* command-line overrides, kept on reload */
  bool cli_listeners;               /* --listen: the file's are not used */
  struct policy *boot;              /* what the server was started with */
  struct tern_queue *q;             /* the queue, or NULL (direct) */
  struct qdeliver *qd;              /* its deliverer */
  char *res_sig;                    /* the [outbound] resolver settings the
                                       deliverer's resolver was made from
                                       (resolver_sig), NULL: none made */
  bool q_closed;                    /* tern_queue_close is done */
  uint64_t stop_ms;                 /* when SIGTERM came (uv_now) */
  int exit_code;
};

/* The queue is closed (its jobs ended or were cancelled): end our
 * deliveries of cancelled jobs, free it. The loop then runs out. */
static void on_queue_closed(void *arg) {
  struct daemon *d = arg;
  qdeliver_free(d->qd);
  d->qd = NULL;
  d->q_closed = true;
  /* tern_queue_free once the loop has run out, not from inside this
   * callback (the queue still reads itself after calling it) */
  log_kv("event", "queue-closed", NULL);
}

static void free_queue(struct daemon *d) {
  if (d->q && d->q_closed)
    tern_queue_free(d->q);
  d->q = NULL;
}

static void close_queue(struct daemon *d);

static void on_control_stopped(void *arg) { close_queue(arg); }

/* After the server: the queue gets what is left of shutdown_timeout to
 * let deliveries in flight end (their results are recorded); the rest
 * are cancelled and delivered again after a restart. */
static void close_queue(struct daemon *d) {
  if (!d->q)
    return;
  serve_set_queue(NULL); /* every session is gone */
  unsigned limit = d->boot->cfg.shutdown_timeout_ms;
  uint64_t spent = uv_now(d->loop) - d->stop_ms;
  unsigned left = spent >= limit ? 0 : (unsigned)(limit - spent);
  tern_queue_close(d->q, left, on_queue_closed, d);
}

static void on_down(struct tern_server *srv, void *arg) {
  struct daemon *d = arg;
  (void)srv;
  uv_close((uv_handle_t *)&d->sigterm, NULL);
  uv_close((uv_handle_t *)&d->sigint, NULL);
  uv_close((uv_handle_t *)&d->sighup, NULL);
  log_kv("event", "stopped", NULL);
  /* `tern queue` works while sessions drain; then the control socket
   * goes (the queue must outlive it), then the queue */
  if (d->q)
    control_stop(on_control_stopped, d);
}

static void on_stop(uv_signal_t *h, int sig) {
  struct daemon *d = h->data;
  log_kv("event", "stopping", "signal", sig == SIGTERM ? "TERM" : "INT",
         NULL);
  sd_notify(0, "STOPPING=1");
  d->stop_ms = uv_now(d->loop);
  uv_signal_stop(&d->sigterm);
  uv_signal_stop(&d->sigint);
  tern_server_shutdown(d->srv, on_down, d);
}

/* The server's options from the configuration, for start-up and for
 * reload alike (tern_server_update() takes the session template, limits
 * and certificates from them and ignores the rest), so a key set here
 * never reverts to its default on SIGHUP. Every [server] setting that
 * reaches the runtime belongs here. */
static void server_options(const struct cfg *c, struct tern_server_options *o,
                           struct tern_server_config *sc) {
  tern_server_config_init(sc);
  o->session = sc;
  sc->hostname = c->hostname;
  sc->max_message_size = c->max_message_size;
  sc->max_recipients = c->max_recipients;
  sc->timeout_command_ms = c->timeout_command_ms;
  sc->timeout_data_ms = c->timeout_data_ms;
  sc->max_line_length = c->max_line_length;
  sc->max_junk_commands = c->max_junk_commands;
  /* REQUIRETLS (RFC 8689; offered over TLS only, the session sees to
   * that) where the queue delivers: every way out of it honours the
   * flag (mx: only to verified hosts, URLs only over verified TLS to a
   * next hop that offers it, else the message bounces with 5.7.30) */
  if (cfg_uses_queue(c))
    sc->extensions |= TERN_EXT_REQUIRETLS;
  o->max_connections = c->max_connections;
  o->max_per_ip = c->max_per_ip;
  o->greeting_delay_ms = c->greeting_delay_ms;
  o->shutdown_timeout_ms = c->shutdown_timeout_ms;
  o->tls_certs = c->certs;
  o->tls_cert_count = c->ncerts;
  o->workers = c->workers;
  o->xclient_networks = c->xclient_networks;
  o->proxy_timeout_ms = c->timeout_proxy_ms;
  o->tls_handshake_timeout_ms = c->timeout_tls_handshake_ms;
  o->write_timeout_ms = c->timeout_write_ms;
}

/* ---- the resolver of mail to the world ([outbound]) ------------------------ */

/* The [outbound] settings a resolver is made from, as one string: a
 * reload makes a new resolver only when it changes (a new one starts
 * with an empty cache, MTA-STS policies included). NULL: no memory. */
static char *resolver_sig(const struct cfg *c) {
  const struct cfg_outbound *o = &c->out;
  char *s = NULL;
  if (asprintf(&s, "%s|%s|%d|%d|%s", o->resolver ? o->resolver : "",
               o->trust_anchor ? o->trust_anchor : "", (int)o->dnssec,
               (int)o->mta_sts, o->mta_sts_ca_file ? o->mta_sts_ca_file : "") <
      0)
    return NULL;
  return s;
}

/* One resolver for the queue's loop, from [outbound]
 * (qdeliver_resolver_make). Returns 0, or -1 with err set. */
static int resolver_make(uv_loop_t *loop, const struct cfg *c,
                         struct tern_resolver **out, char *err, size_t cap) {
  return qdeliver_resolver_make(loop, c, out, err, cap);
}

/* For the policy about to take over: a new resolver when mail can leave
 * through MX and the resolver settings changed (or none was made yet).
 * *res stays NULL when the current one goes on; *sig is the new
 * settings' signature to keep with it. Returns 0 or -1 with err set. */
static int resolver_renew(const struct daemon *d, const struct cfg *c,
                          struct tern_resolver **res, char **sig, char *err,
                          size_t cap) {
  *res = NULL;
  *sig = NULL;
  if (!d->qd || !cfg_uses_outbound(c))
    return 0;
  char *s = resolver_sig(c);
  if (!s) {
    snprintf(err, cap, "out of memory");
    return -1;
  }
  if (d->res_sig && !strcmp(s, d->res_sig)) {
    free(s);
    return 0;
  }
  if (resolver_make(d->loop, c, res, err, cap) != 0) {
    free(s);
    return -1;
  }
  *sig = s;
  return 0;
}

static void reload_failed(const struct daemon *d, const char *err) {
  const struct cfg *b = &d->boot->cfg;
  /* after dropping privileges, say as whom the files were read */
  log_kv("event", "reload", "result", "failed", "error", err, "user",
         b->user, NULL);
}

/*
 * SIGHUP: read the file again and apply what a running server can take
 * (issue 8, item 24). All or nothing: a file that does not load, a users
 * file or certificate that cannot be read keeps the current settings
 * (result=failed, naming the file). What needs a restart (listeners,
 * workers, user, ...: cfg_restart_keys()) is logged by key with
 * result=partial; the rest applies to sessions that start from now on.
 */
static void reload(struct daemon *d) {
  char err[512], keys[512];
  struct policy *p;
  if (!d->path) {
    log_kv("event", "reload", "result", "skipped", "why",
           "no configuration file", NULL);
    return;
  }
  if (load_policy(d->path, NULL, &p, err, sizeof err) != 0) {
    reload_failed(d, err);
    return;
  }
  /* --hostname and --maildir still override the file */
  if (apply_flags(&p->cfg, d->hostname, d->maildir, err, sizeof err) != 0) {
    reload_failed(d, err);
    policy_put(p);
    return;
  }
  /* The listeners do not change on a reload: the new relay policy must
   * be safe on the ones still running (a file that moved its listener to
   * loopback and opened [domains] would make a public one a relay). */
  if (cfg_check_relay(&p->cfg, d->boot->cfg.listeners,
                      d->boot->cfg.nlisteners, err, sizeof err) != 0) {
    reload_failed(d, err);
    policy_put(p);
    return;
  }
  struct tern_resolver *res;
  char *res_sig;
  if (resolver_renew(d, &p->cfg, &res, &res_sig, err, sizeof err) != 0) {
    reload_failed(d, err);
    policy_put(p);
    return;
  }
  size_t nkeys = cfg_restart_keys(&d->boot->cfg, &p->cfg, d->cli_listeners,
                                  keys, sizeof keys);
  struct tern_server_options o;
  tern_server_options_init(&o);
  struct tern_server_config sc;
  server_options(&p->cfg, &o, &sc);
  if (d->boot->cfg.ncerts == 0 || p->cfg.ncerts == 0) {
    o.tls_certs = d->boot->cfg.certs; /* none <-> some: at restart */
    o.tls_cert_count = d->boot->cfg.ncerts;
  }
  int r = tern_server_update(d->srv, &o);
  if (r) {
    reload_failed(d, tern_server_last_error(d->srv));
    if (res)
      tern_resolver_free(res);
    free(res_sig);
    policy_put(p);
    return;
  }
  policy_set(p);
  if (res) { /* new connections use it; kept ones keep theirs */
    qdeliver_set_resolver(d->qd, res);
    free(d->res_sig);
    d->res_sig = res_sig;
    log_kv("event", "resolver", "result", "renewed", "resolver",
           p->cfg.out.resolver ? p->cfg.out.resolver : "resolv.conf", NULL);
  }
  if (nkeys)
    log_kv("event", "reload", "result", "partial", "restart_needed", keys,
           NULL);
  else
    log_kv("event", "reload", "result", "ok", NULL);
}

/* systemd (Type=notify): RELOADING=1 with the time, the reload, READY=1
 * again whatever its outcome (the old settings are still serving). */
static void on_hup(uv_signal_t *h, int sig) {
  struct daemon *d = h->data;
  struct timespec ts;
  (void)sig;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  sd_notifyf(0, "RELOADING=1\nMONOTONIC_USEC=%llu",
             (unsigned long long)ts.tv_sec * 1000000ULL +
                 (unsigned long long)ts.tv_nsec / 1000);
  reload(d);
  sd_notify(0, "READY=1");
}

/* ---- start-up ----------------------------------------------------------------- */

static void usage(FILE *f) {
  fprintf(f,
          "usage: tern serve [-c FILE] [--check] [--listen URL]... "
          "[--maildir DIR] [--hostname NAME]\n"
          "  -c, --config FILE   the configuration file (tern.ini(5)); "
          "without one:\n"
          "                      127.0.0.1:2525 and [::1]:2525, any "
          "recipient, Maildir ./mail\n"
          "  --check             load and check the configuration (users "
          "file,\n"
          "                      certificates, [server] user and group "
          "included),\n"
          "                      print OK, exit\n"
          "  --listen URL        listen here instead of the file's "
          "listeners (repeatable):\n"
          "                      smtp://HOST:PORT, smtps://HOST:PORT, "
          "lmtp://HOST:PORT,\n"
          "                      smtp:///PATH, lmtp:///PATH (port 0: any "
          "free port)\n"
          "  --maildir DIR       deliver into this Maildir (overrides "
          "[delivery])\n"
          "  --hostname NAME     our name in the greeting and Received "
          "fields\n"
          "  -h, --help          this text\n"
          "Signals: TERM/INT drain and stop, HUP reloads the file. "
          "See tern(1).\n");
}


/* The command line: exit status to return at once, or -1 to go on. */
struct args {
  const char *path, *maildir, *hostname;
  const char *listen[CFG_MAX_LISTENERS];
  size_t nlisten;
  bool check;
};

static int parse_args(int argc, char **argv, struct args *a) {
  static const struct option longopts[] = {
      {"config", required_argument, NULL, 'c'},
      {"check", no_argument, NULL, 'k'},
      {"listen", required_argument, NULL, 'l'},
      {"maildir", required_argument, NULL, 'm'},
      {"hostname", required_argument, NULL, 'H'},
      {"help", no_argument, NULL, 'h'},
      {NULL, 0, NULL, 0}};
  int ch;

  optind = 1;
  while ((ch = getopt_long(argc, argv, "c:h", longopts, NULL)) != -1) {
    switch (ch) {
    case 'c':
      a->path = optarg;
      break;
    case 'k':
      a->check = true;
      break;
    case 'l':
      if (a->nlisten == CFG_MAX_LISTENERS) {
        fprintf(stderr, "tern serve: too many --listen\n");
        return EX_USAGE;
      }
      if (!cfg_listener_url_cli_ok(optarg)) { /* as url = in a file */
        fprintf(stderr,
                "tern serve: --listen %s: expected a listener URL like "
                "smtp://0.0.0.0:25, smtp://[::]:587, smtps://*:465 or "
                "lmtp:///run/tern/lmtp (addresses, not host names)\n",
                optarg);
        return EX_USAGE;
      }
      a->listen[a->nlisten++] = optarg;
      break;
    case 'm':
      a->maildir = optarg;
      break;
    case 'H':
      a->hostname = optarg;
      break;
    case 'h':
      usage(stdout);
      return 0;
    default:
      usage(stderr);
      return EX_USAGE;
    }
  }
  if (optind < argc) {
    usage(stderr);
    return EX_USAGE;
  }
  return -1;
}

/* --listen replaces the file's listeners. */
static void use_cli_listeners(struct cfg *c, const struct args *a) {
  for (size_t i = 0; i < c->nlisteners; i++) {
    free(c->listeners[i].name);
    free(c->listeners[i].url);
    free(c->listeners[i].socket_user);
    free(c->listeners[i].socket_group);
  }
  memset(c->listeners, 0, sizeof c->listeners);
  for (size_t i = 0; i < a->nlisten; i++) {
    c->listeners[i].name = strdup("cli");
    c->listeners[i].url = strdup(a->listen[i]);
  }
  c->nlisteners = a->nlisten;
}

/* --check: the certificates load as at start-up (the users file has
 * already, in load_policy); nothing is bound. */
static int check_only(const struct args *a, struct policy *pol) {
  struct tern_server_options co;
  struct tern_server_config sc;
  struct tern_server *cs = NULL;
  char why[512];
  tern_server_options_init(&co);
  server_options(&pol->cfg, &co, &sc);
  co.error = why;
  co.error_size = sizeof why;
  int cr = tern_server_new(&cs, uv_default_loop(), &co);
  if (cr) {
    fprintf(stderr, "tern serve: %s\n", why);
  } else if (pol->cfg.user && !getpwnam(pol->cfg.user)) {
    /* as the privilege drop at start-up would find (exit 77 there) */
    fprintf(stderr, "tern serve: %s: [server] user '%s' does not exist\n",
            a->path ? a->path : "(default)", pol->cfg.user);
    cr = -1;
  } else if (pol->cfg.group && !getgrnam(pol->cfg.group)) {
    fprintf(stderr, "tern serve: %s: [server] group '%s' does not exist\n",
            a->path ? a->path : "(default)", pol->cfg.group);
    cr = -1;
  } else if (cfg_uses_outbound(&pol->cfg) && cfg_uses_queue(&pol->cfg)) {
    /* as open_queue will: the resolver's files load */
    struct tern_resolver *res;
    if (resolver_make(uv_default_loop(), &pol->cfg, &res, why,
                      sizeof why) != 0) {
      fprintf(stderr, "tern serve: %s: %s\n", a->path ? a->path : "(default)",
              why);
      cr = -1;
    } else {
      tern_resolver_free(res);
    }
  }
  if (!cr) {
    printf("tern serve: %s: configuration OK\n",
           a->path ? a->path : "(default)");
    cfg_print_summary(&pol->cfg, stdout);
  }
  tern_server_free(cs);
  policy_put(pol);
  return cr ? EX_CONFIG : 0;
}

/* Listener i's options; unix sockets get their owner and mode while we
 * are still root. Returns 0 or an exit status (said on stderr). */
static int listener_options(const struct cfg_listener *cl, bool activated,
                            struct tern_listener_options *lo) {
  tern_listener_options_init(lo);
  lo->starttls = cl->starttls;
  lo->proxy_protocol = cl->proxy;
  lo->auth_required = cl->auth == CFG_AUTH_REQUIRED;
  lo->auth_insecure_ok = cl->insecure_auth;
  lo->xclient = cl->xclient;
  lo->no_auth = cl->auth == CFG_AUTH_OFF;
  lo->socket_mode = cl->socket_mode;
  if (cl->socket_user) {
    struct passwd *pw = getpwnam(cl->socket_user);
    if (!pw) {
      fprintf(stderr, "tern serve: [listener %s]: socket_user '%s' does "
              "not exist\n", cl->name, cl->socket_user);
      return EX_CONFIG;
    }
    lo->socket_uid = (long)pw->pw_uid;
  }
  if (cl->socket_group) {
    struct group *gr = getgrnam(cl->socket_group);
    if (!gr) {
      fprintf(stderr, "tern serve: [listener %s]: socket_group '%s' does "
              "not exist\n", cl->name, cl->socket_group);
      return EX_CONFIG;
    }
    lo->socket_gid = (long)gr->gr_gid;
  }
  if (activated && (cl->socket_user || cl->socket_group || cl->socket_mode))
    fprintf(stderr, "tern serve: [listener %s]: socket_user, socket_group "
            "and socket_mode do not apply to a socket from systemd (set "
            "SocketUser=, SocketGroup=, SocketMode= in its unit)\n",
            cl->name);
  return 0;
}

/* Bind every listener (or take its socket from systemd). Returns 0 or
 * an exit status (said on stderr). */
static int open_listeners(struct daemon *d, const struct cfg *c,
                          bool defaults) {
  int fd_of[CFG_MAX_LISTENERS];
  char err[1024];
  if (activation_fds(c, fd_of, err, sizeof err) != 0) {
    fprintf(stderr, "tern serve: %s\n", err);
    return EX_CONFIG;
  }
  for (size_t i = 0; i < c->nlisteners; i++) {
    const struct cfg_listener *cl = &c->listeners[i];
    struct tern_listener_options lo;
    int r = listener_options(cl, fd_of[i] >= 0, &lo);
    if (r)
      return r;
    r = fd_of[i] >= 0 ? tern_server_listen_fd(d->srv, fd_of[i], cl->url, &lo)
                      : tern_server_listen(d->srv, cl->url, &lo);
    if (r == TERN_EADDRINUSE || r == TERN_EIO || r == TERN_EINVAL) {
      /* the default [::1] listener is optional on hosts without IPv6 */
      if (defaults && strstr(cl->url, "[::1]") && r != TERN_EADDRINUSE)
        continue;
      fprintf(stderr, "tern serve: %s\n", tern_server_last_error(d->srv));
      return r == TERN_EADDRINUSE ? EX_UNAVAILABLE : EX_CONFIG;
    }
    if (r) {
      fprintf(stderr, "tern serve: %s: %s\n", cl->url, tern_strerror(r));
      return EX_SOFTWARE;
    }
  }
  return 0;
}

/* A fixed Maildir: create it (as the user we now are) and drop what a
 * crash left in tmp/. A template: its spool (recipients.h), likewise;
 * the maildirs themselves are made when a message for them is accepted.
 * Returns 0 or an exit status. */
static int prepare_maildir(const struct cfg *c) {
  char spool[4096];
  const char *fixed = c->target != CFG_MAILDIR ? NULL
                      : !strchr(c->maildir, '%') ? c->maildir
                      : rcpt_template_spool(c->maildir, spool,
                                            sizeof spool) == 0 ? spool
                                                               : NULL;
  int mr = fixed ? maildir_prepare(fixed, true) : 0;
  if (mr) {
    fprintf(stderr, "tern serve: maildir %s: %s\n", fixed, strerror(-mr));
    return EX_CANTCREAT;
  }
  return 0;
}

/* The spool directory, made by root for the [server] user before the
 * privileges are dropped (its parent may be root's, as /var/spool is);
 * the queue itself is opened after the drop, so that every file it
 * makes belongs to the user that will write it. An existing directory
 * is left as it is. Returns 0 or an exit status. */
static int prepare_queue_dir(const struct cfg *c) {
  if (!cfg_uses_queue(c) || geteuid() != 0 || !c->user)
    return 0;
  struct passwd *pw = getpwnam(c->user);
  if (!pw)
    return 0; /* drop_privileges says so */
  if (mkdir(c->queue_dir, 0700) != 0) {
    if (errno == EEXIST)
      return 0;
    fprintf(stderr, "tern serve: queue directory %s: %s\n", c->queue_dir,
            strerror(errno));
    return EX_CANTCREAT;
  }
  gid_t gid = pw->pw_gid;
  if (c->group) {
    struct group *gr = getgrnam(c->group);
    if (gr)
      gid = gr->gr_gid;
  }
  if (chown(c->queue_dir, pw->pw_uid, gid) != 0) {
    fprintf(stderr, "tern serve: queue directory %s: chown: %s\n",
            c->queue_dir, strerror(errno));
    return EX_CANTCREAT;
  }
  return 0;
}

/* Where a DSN the queue makes goes: the destination the configuration
 * as it is now gives its recipient's domain (cfg_route_dest: a local
 * sender's bounce is delivered locally, a foreign one's goes to its
 * domain's MX or the relay). Without outbound mail (Step 7's targets)
 * everything is "local": the target, whatever it is. Home loop only:
 * the name is in a static buffer the queue copies at once. */
static const char *dsn_route(const char *addr, void *ud) {
  static char buf[1100];
  (void)ud;
  struct policy *p = policy_get();
  const char *dest = "local";
  if (cfg_uses_outbound(&p->cfg)) {
    const char *at = strrchr(addr, '@');
    const char *dom = at ? at + 1 : "";
    dest = cfg_route_dest(&p->cfg, dom, strlen(dom), buf, sizeof buf);
    if (dest != buf && dest) { /* a static name: keep it past the put */
      snprintf(buf, sizeof buf, "%s", dest);
      dest = buf;
    }
  }
  policy_put(p);
  return dest ? dest : "local";
}

/* ---- this server's own addresses (mail loops) ------------------------------ */

#define SELF_MAX 256

static bool self_has(const struct sockaddr_storage *a, size_t n,
                     const struct sockaddr *sa) {
  for (size_t i = 0; i < n; i++) {
    if (a[i].ss_family != sa->sa_family)
      continue;
    if (sa->sa_family == AF_INET &&
        ((const struct sockaddr_in *)&a[i])->sin_addr.s_addr ==
            ((const struct sockaddr_in *)sa)->sin_addr.s_addr)
      return true;
    if (sa->sa_family == AF_INET6 &&
        !memcmp(&((const struct sockaddr_in6 *)&a[i])->sin6_addr,
                &((const struct sockaddr_in6 *)sa)->sin6_addr,
                sizeof(struct in6_addr)))
      return true;
  }
  return false;
}

static void self_add(struct sockaddr_storage *a, size_t *n,
                     const struct sockaddr *sa, int port) {
  size_t len = sa->sa_family == AF_INET    ? sizeof(struct sockaddr_in)
               : sa->sa_family == AF_INET6 ? sizeof(struct sockaddr_in6)
                                           : 0;
  if (!len || *n >= SELF_MAX || self_has(a, *n, sa))
    return;
  memset(&a[*n], 0, sizeof a[*n]);
  memcpy(&a[*n], sa, len);
  if (sa->sa_family == AF_INET)
    ((struct sockaddr_in *)&a[*n])->sin_port = htons((uint16_t)port);
  else
    ((struct sockaddr_in6 *)&a[*n])->sin6_port = htons((uint16_t)port);
  (*n)++;
}

static bool unspecified(const struct sockaddr *sa) {
  if (sa->sa_family == AF_INET)
    return ((const struct sockaddr_in *)sa)->sin_addr.s_addr == INADDR_ANY;
  if (sa->sa_family == AF_INET6)
    return IN6_IS_ADDR_UNSPECIFIED(&((const struct sockaddr_in6 *)sa)->sin6_addr);
  return false;
}

/* The host part of a listener URL ("smtp://192.0.2.1:25",
 * "smtps://[2001:db8::1]:465") into buf; false for a unix socket or a
 * URL without one. */
static bool listener_host(const char *url, char *buf, size_t cap) {
  const char *p = strstr(url, "://");
  if (!p || !strncmp(url, "lmtp:///", 8) || !strncmp(url, "unix", 4))
    return false;
  p += 3;
  const char *e;
  if (*p == '[') {
    e = strchr(++p, ']');
  } else {
    e = strrchr(p, ':');
    const char *slash = strchr(p, '/');
    if (!e || (slash && slash < e))
      e = slash ? slash : p + strlen(p);
  }
  if (!e || e == p || (size_t)(e - p) >= cap)
    return false;
  memcpy(buf, p, (size_t)(e - p));
  buf[e - p] = '\0';
  return true;
}

/* This server's addresses for the mx: clients (net.h self_addrs): each
 * listener's address, and every interface's address when a listener is
 * on a wildcard one (0.0.0.0, ::). Only the addresses there are: no
 * 127.0.0.0/8 beyond what an interface has. The listeners do not change
 * on a reload, so this runs once, at start. */
static void set_self_addrs(struct daemon *d, const struct cfg *c) {
  struct sockaddr_storage *a = calloc(SELF_MAX, sizeof *a);
  size_t n = 0;
  bool wild = false;
  int wild_port = 25;
  if (!a || !d->qd) {
    free(a);
    return;
  }
  for (size_t i = 0; i < c->nlisteners; i++) {
    char host[256];
    if (!listener_host(c->listeners[i].url, host, sizeof host))
      continue;
    int port = tern_server_listener_port(d->srv, i);
    struct addrinfo hints = {0}, *res = NULL;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICHOST;
    if (getaddrinfo(host, NULL, &hints, &res) != 0) {
      hints.ai_flags = 0; /* a name: what it stands for now */
      if (getaddrinfo(host, NULL, &hints, &res) != 0)
        continue;
    }
    for (struct addrinfo *r = res; r; r = r->ai_next) {
      if (unspecified(r->ai_addr)) {
        wild = true;
        wild_port = port > 0 ? port : 25;
      } else {
        self_add(a, &n, r->ai_addr, port > 0 ? port : 25);
      }
    }
    freeaddrinfo(res);
  }
  struct ifaddrs *ifs = NULL;
  if (wild && getifaddrs(&ifs) == 0) {
    for (struct ifaddrs *i = ifs; i; i = i->ifa_next)
      if (i->ifa_addr)
        self_add(a, &n, i->ifa_addr, wild_port);
    freeifaddrs(ifs);
  }
  if (qdeliver_set_self_addrs(d->qd, a, n) == 0)
    log_kv("event", "self-addresses", "count", LOG_U(n), NULL);
  free(a);
}

/* Open the queue ([queue] settings; delivery through qdeliver on this
 * loop, the queue's home). Returns 0 or an exit status. */
static int open_queue(struct daemon *d, const struct cfg *c) {
  char err[512] = "";
  struct tern_queue_options o;
  if (qdeliver_new(&d->qd, d->loop, c->queue_concurrency) != 0) {
    fprintf(stderr, "tern serve: queue: out of memory\n");
    return EX_OSERR;
  }
  set_self_addrs(d, c); /* before the queue hands out its first job */
  tern_queue_options_init(&o);
  o.dir = c->queue_dir;
  o.hostname = c->hostname;
  o.lifetime_s = c->queue_lifetime_s;
  o.retry_min_s = c->queue_retry_min_s;
  o.retry_max_s = c->queue_retry_max_s;
  o.delay_warning_s = c->queue_delay_warning_s;
  o.concurrency = c->queue_concurrency;
  o.max_active = c->queue_max_active;
  o.fsync = c->queue_fsync;
  o.postmaster = c->queue_postmaster;
  o.deliver = qdeliver_job;
  o.on_event = serve_queue_event;
  o.route = dsn_route;
  o.ud = d->qd;
  o.error = err;
  o.error_size = sizeof err;
  if (cfg_uses_outbound(c)) {
    struct tern_resolver *res;
    if (resolver_make(d->loop, c, &res, err, sizeof err) != 0 ||
        !(d->res_sig = resolver_sig(c))) {
      fprintf(stderr, "tern serve: %s\n", err[0] ? err : "out of memory");
      if (res)
        tern_resolver_free(res);
      qdeliver_free(d->qd);
      d->qd = NULL;
      return EX_CONFIG;
    }
    qdeliver_set_resolver(d->qd, res);
  }
  int r = tern_queue_open(&d->q, d->loop, &o);
  if (r) {
    fprintf(stderr, "tern serve: queue %s: %s\n", c->queue_dir,
            err[0] ? err : tern_strerror(r));
    qdeliver_free(d->qd);
    d->qd = NULL;
    d->q = NULL;
    return r == TERN_EBUSY ? EX_TEMPFAIL : EX_CANTCREAT;
  }
  unsigned long n = (unsigned long)tern_queue_count(d->q);
  char ctl[4096];
  if (cfg_queue_control_path(c, ctl, sizeof ctl) != 0) {
    fprintf(stderr, "tern serve: [queue] control: path too long\n");
    return EX_CONFIG;
  }
  if (control_start(d->loop, d->q, ctl, err, sizeof err) != 0) {
    fprintf(stderr, "tern serve: %s\n", err);
    return EX_UNAVAILABLE;
  }
  log_kv("event", "queue-open", "dir", c->queue_dir, "messages", LOG_U(n),
         "control", ctl, NULL);
  serve_set_queue(d->q);
  return 0;
}

/* The server with our callbacks. Returns 0 or an exit status. */
static int server_new(struct daemon *d, const struct policy *pol) {
  const struct cfg *c = &pol->cfg;
  struct tern_server_options o;
  struct tern_server_config sc;
  char why[512];
  serve_callbacks(&d->cb, &d->auth);
  tern_server_options_init(&o);
  o.callbacks = &d->cb;
  server_options(c, &o, &sc);
  o.error = why;
  o.error_size = sizeof why;
  o.on_event = serve_on_net_event;
  if (pol->users) {
    o.auth = &d->auth;
    o.auth_mechanisms = c->auth_mechanisms ? c->auth_mechanisms : "PLAIN LOGIN";
  }
  int r = tern_server_new(&d->srv, d->loop, &o);
  if (r) {
    fprintf(stderr, "tern serve: %s\n", why);
    return r == TERN_ETLS ? EX_CONFIG : EX_SOFTWARE;
  }
  return 0;
}

/* Signals before "ready": a SIGHUP or SIGTERM sent once we said ready
 * must find its handler, not the default action. Then say where we
 * listen and that we are ready: systemd may start what depends on us
 * (Type=notify; a no-op without NOTIFY_SOCKET). */
static void announce(struct daemon *d, const struct cfg *c) {
  uv_signal_init(d->loop, &d->sigterm);
  uv_signal_init(d->loop, &d->sigint);
  uv_signal_init(d->loop, &d->sighup);
  d->sigterm.data = d->sigint.data = d->sighup.data = d;
  uv_signal_start(&d->sigterm, on_stop, SIGTERM);
  uv_signal_start(&d->sigint, on_stop, SIGINT);
  uv_signal_start(&d->sighup, on_hup, SIGHUP);
  for (size_t i = 0; i < c->nlisteners; i++) {
    char pt[16];
    snprintf(pt, sizeof pt, "%d", tern_server_listener_port(d->srv, i));
    log_kv("event", "listening", "url", c->listeners[i].url, "port", pt,
           NULL);
  }
  log_kv("event", "ready", "hostname", c->hostname, "delivery",
         c->target == CFG_MAILDIR ? c->maildir
         : c->target == CFG_PIPE  ? c->command
         : c->target == CFG_MX    ? "mx"
                                  : c->forward_url,
         "queue", d->q ? c->queue_dir : "no", NULL);
  sd_notify(0, "READY=1");
}

/* Server, listeners, privileges dropped, maildir ready, started. Returns
 * 0 or an exit status. */
static int daemon_start(struct daemon *d, const struct args *a) {
  const struct cfg *c = &d->boot->cfg;
  char err[1024];
  int r = server_new(d, d->boot);
  if (!r)
    r = open_listeners(d, c, !a->path && !a->nlisten);
  if (!r)
    r = prepare_queue_dir(c);
  if (!r && drop_privileges(c, err, sizeof err) != 0) {
    fprintf(stderr, "tern serve: %s\n", err);
    r = EX_NOPERM;
  }
  if (!r && c->user)
    check_reloadable(a->path, c);
  if (!r)
    r = prepare_maildir(c);
  if (!r && cfg_uses_queue(c))
    r = open_queue(d, c);
  int sr = r ? 0 : tern_server_start(d->srv);
  if (sr) {
    fprintf(stderr, "tern serve: start: %s\n", tern_strerror(sr));
    r = EX_SOFTWARE;
  }
  if (!r)
    announce(d, c);
  return r;
}

/* The configuration as the command line makes it: the file (or the
 * embedded default), then the flags. Returns 0 or an exit status. */
static int configure(const struct args *a, struct policy **out) {
  char err[1024];
  struct policy *pol;
  if (load_policy(a->path, NULL, &pol, err, sizeof err) != 0) {
    fprintf(stderr, "tern serve: %s\n", err);
    return EX_CONFIG;
  }
  if (apply_flags(&pol->cfg, a->hostname, a->maildir, err, sizeof err) != 0) {
    fprintf(stderr, "tern serve: %s\n", err);
    policy_put(pol);
    return EX_USAGE;
  }
  if (a->nlisten) {
    use_cli_listeners(&pol->cfg, a);
    /* the file's listeners passed cfg_check; these must too */
    if (cfg_check_relay(&pol->cfg, pol->cfg.listeners, pol->cfg.nlisteners,
                        err, sizeof err) != 0) {
      fprintf(stderr, "tern serve: %s\n", err);
      policy_put(pol);
      return EX_CONFIG;
    }
  }
  *out = pol;
  return 0;
}

int tern_cli_serve(int argc, char **argv) {
  struct args a = {0};
  struct policy *pol;
  int r = parse_args(argc, argv, &a);
  if (r >= 0)
    return r;
  uv_mutex_init(&g_lock);
  if ((r = configure(&a, &pol)) != 0)
    return r;
  if (a.check)
    return check_only(&a, pol);
  const struct cfg *c = &pol->cfg;
  g_policy = pol;
  serve_loops_init(c->fsync);
  if (c->log && !strcmp(c->log, "syslog")) {
    openlog("tern", LOG_PID | LOG_NDELAY, LOG_MAIL);
    log_use_syslog(true);
  }
  signal(SIGPIPE, SIG_IGN);

  struct daemon d = {0};
  d.loop = uv_default_loop();
  d.path = a.path;
  d.maildir = a.maildir;
  d.hostname = a.hostname;
  d.cli_listeners = a.nlisten > 0;
  d.boot = pol;
  atomic_fetch_add(&pol->refs, 1);
  if ((r = daemon_start(&d, &a)) != 0) {
    tern_server_free(d.srv);
    if (d.q) { /* opened, then something else failed */
      serve_set_queue(NULL);
      control_stop(NULL, NULL);
      tern_queue_close(d.q, 0, on_queue_closed, &d);
      uv_run(d.loop, UV_RUN_DEFAULT);
      free_queue(&d);
    }
    return r;
  }
  uv_run(d.loop, UV_RUN_DEFAULT);

  free_queue(&d);
  tern_server_free(d.srv);
  serve_loops_free();
  policy_put(g_policy);
  policy_put(d.boot);
  free(d.res_sig);
  uv_loop_close(d.loop);
  return d.exit_code;
}
