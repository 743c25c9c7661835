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
 * fsynced, renamed into new/, directory fsynced) or accepted by the pipe
 * command. One key=value log line per session and per message. SIGTERM and
 * SIGINT drain gracefully; SIGHUP reloads the configuration (users,
 * domains, delivery, certificates, hostname, sizes, limits, timeouts;
 * what needs a restart is logged by key: on_hup()). systemd
 * socket activation (LISTEN_FDS) is honoured; privileges are dropped to
 * [server] user/group after binding.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <grp.h>
#include <pwd.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/un.h>
#include <sysexits.h>
#include <syslog.h>
#include <time.h>
#include <unistd.h>

#include <systemd/sd-daemon.h>
#include <tern/net.h>
#include <tern/tern.h>

#include "cli.h"
#include "config.h"
#include "deliver.h"
#include "log.h"
#include "recipients.h"
#include "users.h"

/* ---- the policy: what a reload replaces ----------------------------------- */

/* Sessions hold a reference to the policy they started with, so a reload
 * never changes the rules under a transaction. */
struct policy {
  atomic_int refs;
  struct cfg cfg;
  struct users *users; /* NULL without AUTH */
  struct rcptset *known; /* [delivery] recipients, or NULL */
};

static uv_mutex_t g_lock;          /* g_policy swaps, per-loop contexts */
static struct policy *g_policy;    /* current */
static bool g_syslog;

static struct policy *policy_get(void) {
  uv_mutex_lock(&g_lock);
  struct policy *p = g_policy;
  atomic_fetch_add(&p->refs, 1);
  uv_mutex_unlock(&g_lock);
  return p;
}

static void policy_put(struct policy *p) {
  if (p && atomic_fetch_sub(&p->refs, 1) == 1) {
    cfg_free(&p->cfg);
    if (p->users)
      users_free(p->users);
    rcptset_free(p->known);
    free(p);
  }
}

/* Peer text for a header field: printable ASCII kept, the rest \xHH,
 * spaces and quotes escaped, at most 200 octets. (Log values go through
 * log.h instead.) */
static const char *esc(const char *p, size_t n, char *buf, size_t cap) {
  size_t o = 0;
  if (n > 200)
    n = 200;
  for (size_t i = 0; i < n && o + 5 < cap; i++) {
    unsigned char c = (unsigned char)p[i];
    if (c > 0x20 && c < 0x7f && c != '"' && c != '\\' && c != '=')
      buf[o++] = (char)c;
    else
      o += (size_t)snprintf(buf + o, cap - o, "\\x%02X", c);
  }
  buf[o] = '\0';
  return buf;
}

/* ---- per-loop delivery contexts -------------------------------------------- */

struct loopctx {
  uv_loop_t *loop;
  struct maildir_ctx *md;
};
static struct loopctx g_loops[256];
static size_t g_nloops;
static bool g_fsync = true;

/* The maildir context of this session's loop (group commit is per loop). */
static struct maildir_ctx *maildir_for(uv_loop_t *loop) {
  struct maildir_ctx *md = NULL;
  uv_mutex_lock(&g_lock);
  for (size_t i = 0; i < g_nloops; i++)
    if (g_loops[i].loop == loop)
      md = g_loops[i].md;
  if (!md && g_nloops < sizeof g_loops / sizeof g_loops[0] &&
      maildir_ctx_new(&md, loop, g_fsync) == 0) {
    g_loops[g_nloops].loop = loop;
    g_loops[g_nloops++].md = md;
  }
  uv_mutex_unlock(&g_lock);
  return md;
}

/* ---- sessions ---------------------------------------------------------------- */

#define CHUNK_MAX 65536

/* A pipe recipient's outcome (its command's exit status). */
struct pipe_result {
  bool known;
  int code;
  char enh[16];
  char text[128];
};

struct sess {
  struct tern_server_session *s;
  struct policy *pol;
  const struct tern_session_info *info;
  char helo[256];
  char *from;                 /* current sender ("" for <>) */
  char **rcpts;               /* accepted recipients */
  size_t nrcpts, rcap;
  /* the message being delivered */
  struct maildir_delivery *md;
  struct pipe_group *pd;      /* pipe: one command per recipient */
  struct pipe_result *pres;   /* pipe: each recipient's outcome */
  size_t pknown;              /* how many of pres are known */
  long pwait;                 /* pipe: on_data_end waiting for this one */
  struct rcheck *rcheck;      /* [delivery] recipient_check running */
  struct forward_delivery *fd;
  char *fwd_rcpt;             /* the RCPT waiting for the next hop */
  char hdr[2048];             /* trace header, lives until the commit */
  size_t hlen;
  bool done;                  /* delivery outcome known */
  int code;                   /* its reply (for LMTP's later recipients) */
  char enh[16];
  char text[256];
  char file[512];             /* where it went (log) */
  uint64_t size;
  unsigned messages;          /* per session, for the log */
  unsigned txns;              /* DATA/BDAT started: numbers message ids */
  char msgid[48];             /* this message's id (message_id()) */
  bool msgid_used;            /* a DATA/BDAT of this transaction has it */
  char cmd[200];              /* last command line (AUTH redacted), raw */
};

static void txn_clear(struct sess *x) {
  if (x->md)
    maildir_abort(x->md);
  pipe_group_abort(x->pd);
  forward_release(x->fd);
  x->md = NULL;
  x->pd = NULL;
  x->fd = NULL;
  free(x->pres);
  x->pres = NULL;
  free(x->fwd_rcpt);
  x->fwd_rcpt = NULL;
  free(x->from);
  x->from = NULL;
  for (size_t i = 0; i < x->nrcpts; i++)
    free(x->rcpts[i]);
  x->nrcpts = 0;
  x->done = false;
  x->file[0] = '\0';
}

static struct sess *sess_of(struct tern_server_session *s) {
  return tern_server_session_userdata(s);
}

static int on_connect(struct tern_server_session *s, struct tern_reply *r,
                      void *ud) {
  struct sess *x = calloc(1, sizeof *x);
  (void)r;
  (void)ud;
  if (!x)
    return TERN_ENOMEM;
  x->s = s;
  x->pol = policy_get();
  x->info = tern_session_info(s);
  tern_server_session_set_userdata(s, x);
  log_kv("session", x->info->id, "event", "connect", "client",
         x->info->peer_addr, "port", LOG_U(x->info->peer_port), "listener",
         x->info->listener, NULL);
  return TERN_REPLY_NOW;
}

static int on_helo(struct tern_server_session *s, enum tern_helo_verb verb,
                   struct tern_str dom, struct tern_reply *r, void *ud) {
  struct sess *x = sess_of(s);
  (void)verb, (void)r, (void)ud;
  size_t n = dom.len < sizeof x->helo - 1 ? dom.len : sizeof x->helo - 1;
  memcpy(x->helo, dom.ptr, n);
  x->helo[n] = '\0';
  return TERN_REPLY_NOW;
}

/* ---- forwarding (lmtp / smtp targets): each step is the next hop's ------------ */

static bool is_forward(const struct cfg *c) {
  return c->target == CFG_LMTP || c->target == CFG_SMTP;
}

static void log_forward(struct sess *x, const char *step,
                        const struct tern_reply *r, const char *what) {
  log_kv("session", x->info->id, "id", x->msgid, "event", "forward", "step",
         step, "hop", x->pol->cfg.forward_url, "rcpt", what, "result",
         LOG_U(r->code), "enh", r->enhanced ? r->enhanced : NULL, "text",
         r->text ? r->text : "", NULL);
}

/* The next hop's timeouts stay well inside the inbound session's, so the
 * client hears 451 4.4.x from us before its own session times out. */
static unsigned forward_timeout(const struct cfg *c) {
  unsigned t = c->timeout_command_ms < c->timeout_data_ms
                   ? c->timeout_command_ms
                   : c->timeout_data_ms;
  t = t / 3 * 2;
  return t < 500 ? 500 : t;
}

static void fwd_mail_done(void *arg, const struct tern_reply *r,
                          const char *detail) {
  struct sess *x = arg;
  (void)detail;
  log_forward(x, "mail", r, NULL);
  if (r->code / 100 != 2) {
    forward_release(x->fd);
    x->fd = NULL;
  }
  tern_server_session_reply(x->s, r);
}

static void fwd_rcpt_done(void *arg, const struct tern_reply *r,
                          const char *detail) {
  struct sess *x = arg;
  (void)detail;
  char *a = x->fwd_rcpt;
  x->fwd_rcpt = NULL;
  log_forward(x, "rcpt", r, a);
  if (r->code / 100 == 2 && a)
    x->rcpts[x->nrcpts++] = a; /* room was made before RCPT went out */
  else
    free(a);
  tern_server_session_reply(x->s, r);
}

static int forward_mail(struct sess *x, const struct tern_mail_params *p,
                        struct tern_reply *r) {
  const struct cfg *c = &x->pol->cfg;
  char envid[128];
  struct forward_mail fm = {x->from, p->has_size ? p->size : 0, p->body,
                            p->smtputf8, p->requiretls, p->ret, NULL};
  if (p->envid.len) {
    snprintf(envid, sizeof envid, "%.*s", (int)p->envid.len, p->envid.ptr);
    fm.envid = envid;
  }
  struct forward_opts fo = {c->forward_url,       c->hostname,
                            c->forward_verify,    c->forward_ca_file,
                            c->forward_auth_user, c->forward_auth_password,
                            forward_timeout(c)};
  int rc = forward_open(tern_session_loop(x->s), &fo, &fm, fwd_mail_done, x,
                        &x->fd);
  if (!rc)
    return TERN_PENDING; /* the next hop's answer to MAIL */
  r->code = 451;
  r->enhanced = rc == -EHOSTUNREACH ? "4.4.1" : "4.3.0";
  r->text = rc == -EHOSTUNREACH ? "Error: next hop unavailable"
                                : "Error: cannot forward";
  log_forward(x, "mail", r, NULL);
  return TERN_REPLY_NOW;
}

static int forward_rcpt_step(struct sess *x, const struct tern_path *to,
                             const struct tern_rcpt_params *p,
                             struct tern_reply *r) {
  /* An LMTP next hop answers each recipient after the data, which an
   * SMTP listener's one reply cannot pass on: one recipient per
   * transaction (RFC 5321 §3.3: the client sends the rest again). */
  if (x->fd && forward_is_lmtp(x->fd) && x->nrcpts > 0 &&
      strncmp(x->info->listener, "lmtp:", 5) != 0) {
    r->code = 452;
    r->enhanced = "4.5.3";
    r->text = "Error: one recipient per transaction with this next hop; "
              "send the others again";
    return TERN_REPLY_NOW;
  }
  char orcpt[600];
  const char *o = NULL;
  if (p->orcpt.len && p->orcpt_type.len == 6 &&
      !strncasecmp(p->orcpt_type.ptr, "rfc822", 6) &&
      p->orcpt.len < sizeof orcpt) {
    snprintf(orcpt, sizeof orcpt, "%.*s", (int)p->orcpt.len, p->orcpt.ptr);
    o = orcpt;
  }
  free(x->fwd_rcpt);
  x->fwd_rcpt = strndup(to->mailbox.ptr, to->mailbox.len);
  struct tern_reply now;
  int rc = x->fwd_rcpt && x->fd
               ? forward_rcpt(x->fd, x->fwd_rcpt, p->notify, o,
                              fwd_rcpt_done, x, &now)
               : -EIO;
  if (!rc)
    return TERN_PENDING; /* the next hop's answer to RCPT */
  if (rc == 1) { /* known at once (the next hop failed) */
    free(x->fwd_rcpt);
    x->fwd_rcpt = NULL;
    log_forward(x, "rcpt", &now, NULL);
    *r = now;
    return TERN_REPLY_NOW;
  }
  free(x->fwd_rcpt);
  x->fwd_rcpt = NULL;
  r->code = rc == -EINVAL ? 501 : 451;
  r->enhanced = rc == -EINVAL ? "5.1.3" : "4.4.2";
  r->text = rc == -EINVAL ? "Error: address cannot be forwarded"
                          : "Error: next hop unavailable";
  log_forward(x, "rcpt", r, NULL);
  return TERN_REPLY_NOW;
}

static void message_id(struct sess *x);

static int on_mail(struct tern_server_session *s, const struct tern_path *from,
                   const struct tern_mail_params *p, struct tern_reply *r,
                   void *ud) {
  struct sess *x = sess_of(s);
  (void)ud;
  txn_clear(x);
  message_id(x); /* at MAIL, so the forward log lines of MAIL and RCPT
                  * carry the id of the message they belong to */
  x->msgid_used = false;
  x->from = strndup(from->mailbox.ptr, from->mailbox.len);
  if (!x->from) {
    r->code = 451;
    r->enhanced = "4.3.0";
    r->text = "Error: out of memory";
    return TERN_REPLY_NOW;
  }
  if (is_forward(&x->pol->cfg))
    return forward_mail(x, p, r);
  /* %s puts the sender on a command line too (pipe, recipient_check):
   * no option-like local part there either (Postfix's allow_min_user) */
  if ((x->pol->cfg.target == CFG_PIPE || x->pol->cfg.recipient_check) &&
      x->from[0] && !rcpt_pipe_safe(x->from)) {
    r->code = 553;
    r->enhanced = "5.1.7";
    r->text = "Error: a local part may not begin with '-'";
  }
  return TERN_REPLY_NOW;
}

/* Commands of one pipe message that run at once (one per recipient),
 * behind LMTP: Postfix's lmtp_destination_recipient_limit default. */
#define PIPE_MAX_RCPTS 50

static bool lmtp_listener(const struct sess *x) {
  return !strncmp(x->info->listener, "lmtp:", 5);
}

/*
 * The local targets' checks of one recipient (recipients.h): unknown
 * users ([delivery] recipients), and for the pipe target an option-like
 * local part and, behind an SMTP listener, a second recipient: a pipe
 * runs once per recipient, and after DATA an SMTP reply can carry only
 * one outcome, so each message takes one recipient (RFC 5321 §3.3: the
 * client sends the others in another transaction). Behind LMTP, where
 * each recipient gets its own reply, the commands run at once, so their
 * number is bounded too. True when *r is set to the refusal.
 */
static bool local_rcpt_refused(struct sess *x, const struct tern_path *to,
                               struct tern_reply *r) {
  const struct cfg *c = &x->pol->cfg;
  char addr[600], path[4096];
  size_t n = to->mailbox.len < sizeof addr - 1 ? to->mailbox.len
                                               : sizeof addr - 1;
  memcpy(addr, to->mailbox.ptr, n);
  addr[n] = '\0';
  if (c->target == CFG_PIPE && x->nrcpts >= 1 && !lmtp_listener(x)) {
    r->code = 452;
    r->enhanced = "4.5.3";
    r->text = "Error: too many recipients, one per message here";
  } else if (c->target == CFG_PIPE && x->nrcpts >= PIPE_MAX_RCPTS) {
    r->code = 452;
    r->enhanced = "4.5.3";
    r->text = "Error: too many recipients for one message";
  } else if ((c->target == CFG_PIPE || c->recipient_check) &&
             !rcpt_pipe_safe(addr)) {
    r->code = 553;
    r->enhanced = "5.1.3";
    r->text = "Error: a local part may not begin with '-'";
  } else if (c->target == CFG_MAILDIR && strchr(c->maildir, '%') &&
             rcpt_expand_maildir(c->maildir, addr, path, sizeof path) != 0) {
    r->code = 553;
    r->enhanced = "5.1.3";
    r->text = "Error: mailbox name too long";
  } else if (x->pol->known && !rcptset_has(x->pol->known, addr)) {
    r->code = 550;
    r->enhanced = "5.1.1";
    r->text = "Error: user unknown";
  } else {
    return false;
  }
  return true;
}

/* ---- [delivery] recipient_check ------------------------------------------- */

/*
 * A command asked about each recipient at RCPT time (maildir and pipe
 * targets): its exit status maps as the pipe target's does (0 accepts,
 * 67 EX_NOUSER is 550 5.1.1, 75 EX_TEMPFAIL 451 4.3.0, ...); a command
 * still running after recipient_check_timeout is stopped and the
 * recipient gets 451 4.4.3. The RCPT is answered when it is known
 * (TERN_PENDING meanwhile). The check owns its timer and frees itself in
 * the timer's close callback; a session that goes away first only
 * detaches from it (rcheck_cancel).
 */
struct rcheck {
  uv_timer_t timer;
  struct sess *x;           /* NULL once the session is gone */
  struct pipe_delivery *pd; /* NULL once finished or stopped */
  char addr[600];
};

static void rcheck_closed(uv_handle_t *h) { free(h->data); }

static void rcheck_end(struct rcheck *k) {
  if (k->pd)
    pipe_abort(k->pd);
  k->pd = NULL;
  uv_timer_stop(&k->timer);
  uv_close((uv_handle_t *)&k->timer, rcheck_closed);
}

/* The answer: a 2xx adds the recipient, anything else refuses it. */
static void rcheck_finish(struct rcheck *k, const struct tern_reply *r,
                          const char *detail) {
  struct sess *x = k->x;

  rcheck_end(k);
  if (!x)
    return;
  x->rcheck = NULL;
  logf_("session=%s event=recipient-check to=<%s> status=%d detail=\"%s\"",
        x->info->id, k->addr, r->code, detail);
  if (r->code / 100 != 2) {
    tern_server_session_reply(x->s, r);
    return;
  }
  char *copy = strdup(k->addr);
  if (copy && x->nrcpts == x->rcap) {
    size_t cap = x->rcap ? 2 * x->rcap : 8;
    char **n = realloc(x->rcpts, cap * sizeof *n);
    if (n) {
      x->rcpts = n;
      x->rcap = cap;
    }
  }
  if (!copy || x->nrcpts == x->rcap) {
    static const struct tern_reply oom = {451, "4.3.0",
                                          "Error: out of memory"};
    free(copy);
    tern_server_session_reply(x->s, &oom);
    return;
  }
  x->rcpts[x->nrcpts++] = copy;
  tern_server_session_reply(x->s, NULL); /* 250 2.1.5 */
}

static void rcheck_done(void *arg, const struct tern_reply *r,
                        const char *detail) {
  struct rcheck *k = arg;
  k->pd = NULL; /* it frees itself after this returns */
  rcheck_finish(k, r, detail ? detail : "");
}

static void rcheck_timeout(uv_timer_t *t) {
  static const struct tern_reply late = {
      451, "4.4.3", "Error: recipient check timed out, try again later"};
  rcheck_finish(t->data, &late, "timed out");
}

static void rcheck_cancel(struct sess *x) {
  if (x->rcheck) {
    x->rcheck->x = NULL;
    rcheck_end(x->rcheck);
    x->rcheck = NULL;
  }
}

static int rcheck_start(struct sess *x, struct tern_server_session *s,
                        const struct tern_path *to, struct tern_reply *r) {
  const struct cfg *c = &x->pol->cfg;
  const char *from = x->from ? x->from : "";
  char words[4096], *argv[64], envs[2][700];
  char *env[] = {envs[0], envs[1], "PATH=/usr/local/bin:/usr/bin:/bin", NULL};
  struct rcheck *k = calloc(1, sizeof *k);
  int rc = -ENOMEM;

  if (k) {
    size_t n = to->mailbox.len < sizeof k->addr - 1 ? to->mailbox.len
                                                    : sizeof k->addr - 1;
    memcpy(k->addr, to->mailbox.ptr, n);
    k->addr[n] = '\0';
    snprintf(envs[0], sizeof envs[0], "SENDER=%s", from);
    snprintf(envs[1], sizeof envs[1], "RECIPIENT=%s", k->addr);
    rc = rcpt_pipe_argv(c->recipient_check, from, k->addr, words,
                        sizeof words, argv, 64) > 0
             ? pipe_begin(tern_session_loop(s), argv, env, NULL, 0, &k->pd)
             : -E2BIG;
  }
  if (rc != 0) {
    logf_("session=%s event=error what=recipient-check error=\"%s\"",
          x->info->id, strerror(-rc));
    free(k);
    r->code = 451;
    r->enhanced = "4.3.0";
    r->text = "Error: cannot check the recipient, try again later";
    return TERN_REPLY_NOW;
  }
  uv_timer_init(tern_session_loop(s), &k->timer);
  k->timer.data = k;
  uv_timer_start(&k->timer, rcheck_timeout, c->recipient_check_timeout_ms, 0);
  pipe_commit(k->pd, rcheck_done, k); /* stdin closed: no message yet */
  k->x = x;
  x->rcheck = k;
  return TERN_PENDING;
}

/* No open relay: unauthenticated clients only reach accepted domains. */
static int on_rcpt(struct tern_server_session *s, const struct tern_path *to,
                   const struct tern_rcpt_params *p, struct tern_reply *r,
                   void *ud) {
  struct sess *x = sess_of(s);
  const struct cfg *c = &x->pol->cfg;
  (void)ud;
  bool ok = c->accept_any || (to->flags & TERN_PATHF_POSTMASTER) ||
            cfg_domain_accepted(c, to->domain.ptr, to->domain.len) ||
            (tern_server_session_is_authenticated(s) &&
             c->relay_authenticated);
  if (!ok) {
    r->code = 554;
    r->enhanced = "5.7.1";
    r->text = "Error: relay access denied";
    return TERN_REPLY_NOW;
  }
  if (local_rcpt_refused(x, to, r))
    return TERN_REPLY_NOW;
  if (x->pol->cfg.recipient_check) /* maildir, pipe (cfg_check) */
    return rcheck_start(x, s, to, r);
  if (x->nrcpts == x->rcap) {
    size_t cap = x->rcap ? 2 * x->rcap : 8;
    char **n = realloc(x->rcpts, cap * sizeof *n);
    if (!n)
      goto oom;
    x->rcpts = n;
    x->rcap = cap;
  }
  if (is_forward(c))
    return forward_rcpt_step(x, to, p, r);
  x->rcpts[x->nrcpts] = strndup(to->mailbox.ptr, to->mailbox.len);
  if (!x->rcpts[x->nrcpts])
    goto oom;
  x->nrcpts++;
  return TERN_REPLY_NOW;
oom:
  r->code = 451;
  r->enhanced = "4.3.0";
  r->text = "Error: out of memory";
  return TERN_REPLY_NOW;
}

/* A new id for the message about to be received: the session's id and
 * the number of the message within the session, so two messages of one
 * session never share one (issue 8, item 23). Only letters, digits and
 * '-': an Atom in "with ESMTP id" (RFC 5321 §4.4) and a bare log value.
 * It goes into the Received field, the final reply (final_text()) and
 * the log line of the message. */
static void message_id(struct sess *x) {
  snprintf(x->msgid, sizeof x->msgid, "%s-%u", x->info->id, ++x->txns);
  tern_server_session_set_message_id(x->s, x->msgid);
}

/* The text of a 2xx end-of-data reply, with the message id: what
 * happened, in the words of the target ("delivered" for maildir and pipe,
 * where this is the final delivery; "forwarded" for a next hop, whose own
 * words follow). Other replies keep their text. */
static void final_text(const struct sess *x, const struct tern_reply *r,
                       char *buf, size_t cap) {
  const char *t = r->text ? r->text : "";
  if (r->code < 200 || r->code > 299)
    snprintf(buf, cap, "%s", t);
  else if (x->pol->cfg.target == CFG_MAILDIR ||
           x->pol->cfg.target == CFG_PIPE)
    snprintf(buf, cap, "Ok: delivered as %s", x->msgid);
  else if (*t)
    snprintf(buf, cap, "Ok: forwarded as %s (next hop: %s)", x->msgid, t);
  else
    snprintf(buf, cap, "Ok: forwarded as %s", x->msgid);
}

/* Return-Path and Received, as an MTA adds them (RFC 5321 §4.4). */
static size_t trace_header(struct sess *x, char *buf, size_t cap) {
  const struct tern_session_info *i = x->info;
  char date[64], helo[300];
  time_t now = time(NULL);
  struct tm tm;
  localtime_r(&now, &tm);
  strftime(date, sizeof date, "%a, %d %b %Y %H:%M:%S %z", &tm);
  esc(x->helo, strlen(x->helo), helo, sizeof helo);
  const char *with = i->tls ? (i->auth_user ? "ESMTPSA" : "ESMTPS")
                            : (i->auth_user ? "ESMTPA" : "ESMTP");
  /* RFC 5321 §4.4: Return-Path is added at final delivery only. "for"
   * names the recipient only when there is exactly one: every copy of a
   * message to several would show the first (a Bcc leak; Postfix does
   * the same). */
  bool final = x->pol->cfg.target == CFG_MAILDIR ||
               x->pol->cfg.target == CFG_PIPE;
  int n = snprintf(buf, cap,
                   "%s%s%s"
                   "Received: from %s (%s [%s])\r\n"
                   "\tby %s (tern) with %s id %s%s%s%s; %s\r\n",
                   final ? "Return-Path: <" : "",
                   final ? (x->from ? x->from : "") : "",
                   final ? ">\r\n" : "", helo[0] ? helo : "unknown",
                   i->peer_addr, i->peer_addr, x->pol->cfg.hostname, with,
                   x->msgid, x->nrcpts == 1 ? "\r\n\tfor <" : "",
                   x->nrcpts == 1 ? x->rcpts[0] : "",
                   x->nrcpts == 1 ? ">" : "", date);
  return n > 0 && (size_t)n < cap ? (size_t)n : 0;
}

/* The next hop answered our DATA (354) or refused the message. */
static void fwd_started(void *arg, const struct tern_reply *r,
                        const char *detail) {
  struct sess *x = arg;
  (void)detail;
  log_forward(x, "data", r, NULL);
  if (r->code != 354) {
    forward_release(x->fd);
    x->fd = NULL;
  }
  tern_server_session_reply(x->s, r);
}

/* Maildir: one directory per distinct expansion of the template
 * (recipients.h spells each name). Nothing is created here: the
 * delivery opens its file and makes missing maildirs in the thread pool,
 * and with a template the file waits in the spool until the message is
 * accepted, so a recipient whose message is not accepted gets no
 * directory. */
static int maildir_start(struct sess *x, struct tern_server_session *s) {
  const struct cfg *c = &x->pol->cfg;
  bool tpl = strchr(c->maildir, '%') != NULL;
  char path[4096], spool[4096];
  char **dirs = calloc(x->nrcpts ? x->nrcpts : 1, sizeof *dirs);
  size_t nd = 0;
  int rc = 0;

  if (!dirs)
    return -ENOMEM;
  for (size_t i = 0; !rc && i < x->nrcpts; i++) {
    bool seen = false;
    if (rcpt_expand_maildir(c->maildir, x->rcpts[i], path, sizeof path) != 0) {
      rc = -ENAMETOOLONG; /* not reached: on_rcpt refused it */
      break;
    }
    for (size_t k = 0; k < nd && !seen; k++)
      seen = !strcmp(dirs[k], path);
    if (seen)
      continue;
    if ((dirs[nd] = strdup(path)) == NULL)
      rc = -ENOMEM;
    else
      nd++;
  }
  if (!rc && tpl && rcpt_template_spool(c->maildir, spool, sizeof spool) != 0)
    rc = -ENAMETOOLONG;
  if (!rc)
    rc = maildir_begin(maildir_for(tern_session_loop(s)), tpl ? spool : NULL,
                       (const char *const *)dirs, nd, x->hdr, x->hlen, &x->md);
  for (size_t k = 0; k < nd; k++)
    free(dirs[k]);
  free(dirs);
  return rc;
}

/* Pipe: one command per recipient, each with its own %r %u %d, its own
 * environment and its own exit status (pipe_group). Fails only when no
 * command could be started. */
static int pipe_start(struct sess *x, struct tern_server_session *s) {
  const struct cfg *c = &x->pol->cfg;
  const char *from = x->from ? x->from : "";
  size_t started = 0;
  int rc;

  free(x->pres);
  x->pknown = 0;
  x->pwait = -1;
  if ((x->pres = calloc(x->nrcpts ? x->nrcpts : 1, sizeof *x->pres)) == NULL)
    return -ENOMEM;
  pipe_set_time_limit(forward_timeout(c));
  if ((rc = pipe_group_new(&x->pd, x->nrcpts, x->hdr, x->hlen)) != 0)
    return rc;
  for (size_t i = 0; i < x->nrcpts; i++) {
    char words[4096], *argv[64], envs[4][600];
    char *env[] = {envs[0], envs[1], envs[2], envs[3], NULL};
    const char *rcpt = x->rcpts[i];
    bool fits = rcpt_pipe_argv(c->command, from, rcpt, words, sizeof words,
                               argv, 64) > 0;
    snprintf(envs[0], sizeof envs[0], "SENDER=%s", from);
    snprintf(envs[1], sizeof envs[1], "RECIPIENT=%s", rcpt);
    snprintf(envs[2], sizeof envs[2], "ORIGINAL_RECIPIENT=%s", rcpt);
    snprintf(envs[3], sizeof envs[3], "PATH=/usr/local/bin:/usr/bin:/bin");
    int r = pipe_group_start(x->pd, tern_session_loop(s), i,
                             fits ? argv : NULL, env);
    if (r == 0)
      started++;
    else
      rc = r;
  }
  if (started == 0) {
    pipe_group_abort(x->pd);
    x->pd = NULL;
    free(x->pres);
    x->pres = NULL;
    return rc ? rc : -EINVAL;
  }
  return 0;
}

static int on_data_start(struct tern_server_session *s, struct tern_reply *r,
                         void *ud) {
  struct sess *x = sess_of(s);
  const struct cfg *c = &x->pol->cfg;
  char *hdr = x->hdr;
  int rc = 0;
  (void)ud;

  x->done = false;
  x->size = 0;
  if (x->msgid_used) /* a second DATA in one transaction: a new message */
    message_id(x);
  x->msgid_used = true;
  size_t hlen = x->hlen = trace_header(x, x->hdr, sizeof x->hdr);
  if (c->target == CFG_MAILDIR)
    rc = maildir_start(x, s);
  else if (c->target == CFG_PIPE)
    rc = pipe_start(x, s);
  else { /* lmtp / smtp: DATA to the next hop, its 354 is ours */
    struct tern_reply now;
    rc = x->fd ? forward_data(x->fd, hdr, hlen, fwd_started, x, &now) : -EIO;
    if (!rc)
      return TERN_PENDING;
    if (rc == 1) { /* BDAT's go-ahead, or a failure known at once */
      log_forward(x, "data", &now, NULL);
      if (now.code / 100 == 2 || now.code == 354) {
        r->code = 250; /* BDAT: the chunk's reply comes later */
        r->enhanced = "2.0.0";
        r->text = "Ok";
        return TERN_REPLY_NOW;
      }
      *r = now;
      return TERN_REPLY_NOW;
    }
    rc = -EHOSTUNREACH;
  }
  if (rc) {
    log_kv("session", x->info->id, "event", "error", "what",
           "delivery-start", "error", strerror(-rc), NULL);
    r->code = 451;
    r->enhanced = rc == -EHOSTUNREACH ? "4.4.1" : "4.3.0";
    r->text = rc == -EHOSTUNREACH ? "Error: next hop unavailable"
                                  : "Error: local delivery failed";
  }
  return TERN_REPLY_NOW;
}

static void on_written(void *arg, int status) {
  struct sess *x = arg;
  (void)status; /* remembered by the delivery; reported at commit */
  tern_server_session_resume(x->s);
}

/* Content: copy the chunk (the runtime's buffer is reused after we
 * return), write it off the loop, pause the session until it is done. */
static int on_data(struct tern_server_session *s, const char *buf, size_t len,
                   void *ud) {
  struct sess *x = sess_of(s);
  (void)ud;
  if (!x->fd) { /* local targets copy: the runtime's buffer may go */
    int rc;
    x->size += len;
    if (x->md)
      rc = maildir_write(x->md, buf, len, on_written, x);
    else if (x->pd)
      rc = pipe_group_write(x->pd, buf, len, on_written, x);
    else
      return TERN_EIO;
    /* 0: on_written resumes us. 1: taken at once. < 0: an earlier write
     * failed (ENOSPC, no command reading...); the delivery keeps the
     * error and commit answers it (452 4.3.1 for a full disk, the exit
     * status for a pipe): read on, drop the rest. An on_data error here
     * would become the core's "451 4.3.0 internal error" instead. */
    return rc == 0 ? TERN_PENDING : 0;
  }
  while (len) {
    size_t n = len < CHUNK_MAX ? len : CHUNK_MAX;
    x->size += n;
    if (x->fd) { /* forwarding copies; the next hop may take it at once */
      int fr = forward_write(x->fd, buf, n, on_written, x);
      if (fr < 0) /* the next hop is gone: read on, commit says why */
        return 0;
      buf += n;
      len -= n;
      if (fr == 0)
        return TERN_PENDING;
      continue;
    }
    return TERN_EIO; /* not reached: only forwarding gets here */
  }
  return 0;
}

static void log_message(struct sess *x) {
  const struct cfg *c = &x->pol->cfg;
  bool fixed = c->target == CFG_MAILDIR && !strchr(c->maildir, '%');
  char from[1024], file[1200];
  snprintf(from, sizeof from, "<%s>", x->from ? x->from : "");
  snprintf(file, sizeof file, "%s%s%s", fixed && x->file[0] ? c->maildir : "",
           fixed && x->file[0] ? "/new/" : "", x->file[0] ? x->file : "-");
  struct log_line l;
  log_line_init(&l);
  log_line_kv(&l, "session", x->info->id);
  log_line_kv(&l, "id", x->msgid);
  log_line_kv(&l, "event", "message");
  log_line_kv(&l, "from", from);
  log_line_list(&l, "to", (const char *const *)x->rcpts, x->nrcpts);
  log_line_kv(&l, "size", LOG_U(x->size));
  log_line_kv(&l, "status", LOG_U(x->code));
  log_line_kv(&l, "enh", x->enh[0] ? x->enh : "-");
  log_line_kv(&l, "detail", x->text);
  log_line_kv(&l, "file", file);
  log_line_emit(&l);
}

/* Note a delivery's outcome (and log it); the caller answers. */
static void record(struct sess *x, const struct tern_reply *r,
                   const char *detail) {
  x->md = NULL; /* the delivery freed itself */
  x->pd = NULL;
  x->done = true;
  x->code = r->code;
  snprintf(x->enh, sizeof x->enh, "%s", r->enhanced ? r->enhanced : "");
  final_text(x, r, x->text, sizeof x->text);
  snprintf(x->file, sizeof x->file, "%s", detail ? detail : "");
  x->messages++;
  log_message(x);
}

static void delivered(void *arg, const struct tern_reply *r,
                      const char *detail) {
  struct sess *x = arg;
  if (x->fd)
    log_forward(x, detail && !strcmp(detail, "unknown") ? "end-unknown" : "end",
                r, NULL);
  record(x, r, detail);
  struct tern_reply rr = {x->code, x->enh[0] ? x->enh : NULL, x->text};
  if (x->fd && !strncmp(x->info->listener, "lmtp:", 5))
    forward_result(x->fd, 0, &rr); /* LMTP: the first recipient's own */
  tern_server_session_reply(x->s, &rr);
}

/* A pipe recipient's outcome: log it, and answer it if on_data_end is
 * waiting for it (LMTP answers in RCPT order; commands finish in any). */
static void pipe_each(void *arg, size_t i, const struct tern_reply *r,
                      const char *detail) {
  struct sess *x = arg;
  struct pipe_result *p = &x->pres[i];
  char from[1024], to[1024];

  p->known = true;
  p->code = r->code;
  snprintf(p->enh, sizeof p->enh, "%s", r->enhanced ? r->enhanced : "");
  final_text(x, r, p->text, sizeof p->text);
  snprintf(from, sizeof from, "<%s>", x->from ? x->from : "");
  snprintf(to, sizeof to, "<%s>", x->rcpts[i]);
  log_kv("session", x->info->id, "id", x->msgid, "event", "message", "from",
         from, "to", to, "size", LOG_U(x->size), "status", LOG_U(p->code),
         "enh", p->enh[0] ? p->enh : "-", "detail", p->text, "command",
         detail ? detail : "", NULL);
  if (++x->pknown == x->nrcpts) {
    x->pd = NULL; /* the group frees itself after this returns */
    x->done = true;
    x->messages++;
  }
  if (x->pwait == (long)i) {
    struct tern_reply rr = {p->code, p->enh[0] ? p->enh : NULL, p->text};
    x->pwait = -1;
    tern_server_session_reply(x->s, &rr);
  }
}

static int pipe_data_end(struct sess *x, unsigned i, struct tern_reply *r) {
  if (i >= x->nrcpts)
    return TERN_EIO;
  if (i == 0 && x->pd)
    pipe_group_commit(x->pd, pipe_each, x);
  if (!x->pres[i].known) {
    x->pwait = (long)i;
    return TERN_PENDING;
  }
  r->code = x->pres[i].code;
  r->enhanced = x->pres[i].enh[0] ? x->pres[i].enh : NULL;
  r->text = x->pres[i].text;
  return TERN_REPLY_NOW;
}

static int on_data_end(struct tern_server_session *s,
                       const struct tern_envelope *env, struct tern_reply *r,
                       void *ud) {
  struct sess *x = sess_of(s);
  unsigned rcpt = (unsigned)env->rcpt_index;
  (void)ud;
  if (x->pres) /* pipe: each recipient its own command's answer */
    return pipe_data_end(x, rcpt, r);
  if (x->fd && (x->done || rcpt > 0)) { /* LMTP: each its own answer */
    forward_result(x->fd, rcpt, r);
    return TERN_REPLY_NOW;
  }
  if (x->done || rcpt > 0) { /* LMTP: the same outcome for each */
    r->code = x->code;
    r->enhanced = x->enh[0] ? x->enh : NULL;
    r->text = x->text;
    return TERN_REPLY_NOW;
  }
  if (x->fd) {
    struct tern_reply now;
    if (!forward_commit(x->fd, delivered, x, &now))
      return TERN_PENDING;
    log_forward(x, "end", &now, NULL);
    record(x, &now, "next hop failed"); /* known already */
    r->code = x->code;
    r->enhanced = x->enh[0] ? x->enh : NULL;
    r->text = x->text;
    if (!strncmp(x->info->listener, "lmtp:", 5))
      forward_result(x->fd, rcpt, r);
    return TERN_REPLY_NOW;
  } else if (x->md)
    maildir_commit(x->md, delivered, x);
  else
    return TERN_EIO;
  return TERN_PENDING;
}

static void on_data_abort(struct tern_server_session *s, const char *why,
                          void *ud) {
  struct sess *x = sess_of(s);
  (void)ud;
  if (!x)
    return;
  if (x->md || x->pd || x->fd)
    log_kv("session", x->info->id, "id", x->msgid, "event", "abort", "why",
           why, "size", LOG_U(x->size), NULL);
  if (x->md)
    maildir_abort(x->md);
  pipe_group_abort(x->pd);
  forward_release(x->fd);
  x->md = NULL;
  x->pd = NULL;
  x->fd = NULL;
}

static void on_reset(struct tern_server_session *s, void *ud) {
  (void)ud;
  txn_clear(sess_of(s));
}

static void on_close(struct tern_server_session *s, void *ud) {
  struct sess *x = sess_of(s);
  (void)ud;
  if (!x)
    return;
  const struct tern_session_info *i = x->info;
  log_kv("session", i->id, "event", "close", "client", i->peer_addr, "helo",
         x->helo[0] ? x->helo : "-", "tls",
         i->tls_version ? i->tls_version : "no", "auth",
         i->auth_user ? i->auth_user : "-", "messages", LOG_U(x->messages),
         NULL);
  rcheck_cancel(x);
  txn_clear(x);
  free(x->rcpts);
  policy_put(x->pol);
  tern_server_session_set_userdata(s, NULL);
  free(x);
}

/* ---- rejections, for the log (and fail2ban) ------------------------------ */

/* The last command, as the core shows it (AUTH payloads redacted: the
 * line is "AUTH <MECH>", continuation lines "*"), for its reply's log. */
static void on_command(struct tern_server_session *s, struct tern_str line,
                       void *ud) {
  struct sess *x = sess_of(s);
  (void)ud;
  if (!x)
    return;
  size_t n = line.len < sizeof x->cmd - 1 ? line.len : sizeof x->cmd - 1;
  memcpy(x->cmd, line.ptr, n);
  x->cmd[n] = '\0';
}

/* Every 4xx/5xx reply is a rejection: one line with the client, the
 * listener, the command, the code and the enhanced code. */
static void log_reject(const struct tern_session_info *i, const char *why,
                       const char *cmd, unsigned code, const char *enh,
                       const char *text, size_t text_len) {
  char codes[8];
  snprintf(codes, sizeof codes, "%u", code);
  logf_("session=%s event=reject client=%s port=%u listener=%s why=%s "
        "cmd=\"%s\" code=%s enhanced=%s text=\"%.*s\"",
        i->id, i->peer_addr, i->peer_port, i->listener, why,
        cmd && *cmd ? cmd : "-", code ? codes : "-", enh && *enh ? enh : "-",
        (int)(text_len < 512 ? text_len : 512), text);
}

static void on_reply(struct tern_server_session *s, struct tern_str bytes,
                     void *ud) {
  struct sess *x = sess_of(s);
  (void)ud;
  if (!x || bytes.len < 3 || bytes.ptr[0] < '4' || bytes.ptr[0] > '5')
    return;
  /* The last line of a multi-line reply: "NNN[ -]X.Y.Z text\r\n". */
  const char *p = bytes.ptr, *end = bytes.ptr + bytes.len;
  while (end > p && (end[-1] == '\r' || end[-1] == '\n'))
    end--;
  for (const char *q = end; q > p; q--)
    if (q[-1] == '\n') {
      p = q;
      break;
    }
  if (end - p < 3)
    return;
  unsigned code = (unsigned)((p[0] - '0') * 100 + (p[1] - '0') * 10 +
                             (p[2] - '0'));
  p += 3;
  if (p < end)
    p++;
  char enh[16] = "";
  size_t e = 0;
  while (p + e < end && e < sizeof enh - 1 &&
         ((p[e] >= '0' && p[e] <= '9') || p[e] == '.'))
    e++;
  if (e >= 5 && (p + e == end || p[e] == ' ') && p[1] == '.') {
    memcpy(enh, p, e);
    enh[e] = '\0';
    p += e;
    if (p < end)
      p++;
  }
  log_reject(x->info, "reply", x->cmd, code, enh, p, (size_t)(end - p));
}

/* What the runtime did on its own (tern_server_options.on_event). */
static void on_net_event(const struct tern_net_event *ev, void *ud) {
  static const char *const names[] = {
      [TERN_NET_CONN_LIMIT] = "conn-limit",
      [TERN_NET_IP_LIMIT] = "ip-limit",
      [TERN_NET_PREGREET] = "pregreet",
      [TERN_NET_TLS_FAILED] = "tls-failed",
      [TERN_NET_TLS_TIMEOUT] = "tls-handshake",
      [TERN_NET_PROXY_FAILED] = "proxy-failed",
      [TERN_NET_PROXY_TIMEOUT] = "proxy",
      [TERN_NET_LINE_TIMEOUT] = "command-line",
      [TERN_NET_WRITE_TIMEOUT] = "write"};
  const struct tern_session_info *i = ev->info;
  const char *name = (unsigned)ev->type < sizeof names / sizeof names[0] &&
                             names[ev->type]
                         ? names[ev->type]
                         : "other";
  (void)ud;
  switch (ev->type) {
  case TERN_NET_CONN_LIMIT:
  case TERN_NET_IP_LIMIT:
  case TERN_NET_PREGREET:
  case TERN_NET_TLS_FAILED:
  case TERN_NET_PROXY_FAILED:
    log_reject(i, name, NULL, ev->code, ev->enhanced, ev->detail,
               strlen(ev->detail));
    return;
  default: {
    logf_("session=%s event=timeout client=%s port=%u listener=%s what=%s "
          "text=\"%s\"",
          i->id, i->peer_addr, i->peer_port, i->listener, name, ev->detail);
    return;
  }
  }
}

/*
 * AUTH: the users file (crypt hashes) through GNU SASL's PLAIN/LOGIN.
 * This runs on libuv's thread pool, off the event loop (a yescrypt hash
 * takes tens of milliseconds), while the session may be closing: so it
 * uses no per-session data, only the current policy, under its own
 * reference (net.h, tern_auth_callbacks). users_check() is thread-safe.
 */
static int check_password(struct tern_server_session *s, const char *authzid,
                          const char *user, const char *password, void *ud) {
  (void)s;
  (void)ud;
  if (authzid && *authzid && strcmp(authzid, user))
    return TERN_EAUTH; /* no acting for someone else */
  struct policy *pol = policy_get();
  int rc = !pol->users ? TERN_ETEMP
           : users_check(pol->users, user, password) == 0 ? 0
                                                          : TERN_EAUTH;
  policy_put(pol);
  return rc;
}

/* ---- privileges, socket activation ------------------------------------------- */

/* Bind first, then drop to user/group, checking each step (OpenSMTPD's
 * order: setgroups, setresgid, setresuid), and that root cannot return. */
static int drop_privileges(const struct cfg *c, char *err, size_t cap) {
  if (!c->user)
    return 0;
  struct passwd *pw = getpwnam(c->user);
  if (!pw) {
    snprintf(err, cap, "user '%s' does not exist", c->user);
    return -1;
  }
  gid_t gid = pw->pw_gid;
  if (c->group) {
    struct group *gr = getgrnam(c->group);
    if (!gr) {
      snprintf(err, cap, "group '%s' does not exist", c->group);
      return -1;
    }
    gid = gr->gr_gid;
  }
  /* Started as that user already (systemd User=, packaging/systemd):
   * nothing to drop, and setgroups() would fail without privileges. */
  if (getuid() == pw->pw_uid && geteuid() == pw->pw_uid &&
      getgid() == gid && getegid() == gid && pw->pw_uid != 0)
    return 0;
  if (setgroups(1, &gid) != 0 || setresgid(gid, gid, gid) != 0 ||
      setresuid(pw->pw_uid, pw->pw_uid, pw->pw_uid) != 0) {
    snprintf(err, cap, "cannot drop privileges to %s: %s", c->user,
             strerror(errno));
    return -1;
  }
  if (pw->pw_uid != 0 && (setuid(0) == 0 || geteuid() == 0)) {
    snprintf(err, cap, "privileges could be regained after dropping them");
    return -1;
  }
  return 0;
}

/* SIGHUP re-reads the configuration file, the users file and the
 * certificates as the user the daemon now is (issue 8, item 21): no
 * descriptor is kept open across the drop, because a kept descriptor
 * would not see a file replaced by a new one (certbot, tern passwd >
 * new && mv). Say at start-up which of them that user cannot read, so
 * the operator learns it now rather than from a failed reload. access()
 * checks with the real uid, which is the dropped one. */
static void check_reloadable(const char *path, const struct cfg *c) {
  const char *files[2 + 2 * CFG_MAX_CERTS];
  size_t n = 0;
  files[n++] = path;
  files[n++] = c->users_file;
  for (size_t i = 0; i < c->ncerts; i++) {
    files[n++] = c->certs[i].cert_file;
    files[n++] = c->certs[i].key_file;
  }
  for (size_t i = 0; i < n; i++)
    if (files[i] && access(files[i], R_OK) != 0)
      log_kv("event", "warning", "what", "reload-unreadable", "file",
             files[i], "user", c->user, "error", strerror(errno), "effect",
             "SIGHUP will fail until this user can read the file", NULL);
}

/* systemd socket activation: fds 3.. when LISTEN_PID is us, and their
 * names (LISTEN_FDNAMES, colon-separated; FileDescriptorName=). Returns
 * the number of fds (0 when not activated), -1 when there are more than
 * listeners can take. names[k] point into *names_buf (free it). */
static int listen_fds(char **names_buf, const char *names[]) {
  const char *pid = getenv("LISTEN_PID"), *fds = getenv("LISTEN_FDS");
  const char *fdnames = getenv("LISTEN_FDNAMES");
  *names_buf = NULL;
  if (!pid || !fds || strtol(pid, NULL, 10) != getpid())
    return 0;
  long n = strtol(fds, NULL, 10);
  if (n > CFG_MAX_LISTENERS)
    return -1;
  for (long k = 0; k < n; k++)
    names[k] = NULL;
  if (fdnames && (*names_buf = strdup(fdnames)) != NULL) {
    char *p = *names_buf;
    for (long k = 0; k < n && p; k++) {
      names[k] = p;
      if ((p = strchr(p, ':')) != NULL)
        *p++ = '\0';
    }
  }
  unsetenv("LISTEN_PID");
  unsetenv("LISTEN_FDS");
  unsetenv("LISTEN_FDNAMES");
  return n > 0 ? (int)n : 0;
}

/* "127.0.0.1:25", "[::]:25" or the unix path of socket fd. */
static const char *sock_text(int fd, char *buf, size_t cap) {
  struct sockaddr_storage ss;
  socklen_t len = sizeof ss;
  char a[INET6_ADDRSTRLEN];
  if (getsockname(fd, (struct sockaddr *)&ss, &len) != 0) {
    snprintf(buf, cap, "not a socket");
  } else if (ss.ss_family == AF_INET) {
    const struct sockaddr_in *x = (const struct sockaddr_in *)&ss;
    inet_ntop(AF_INET, &x->sin_addr, a, sizeof a);
    snprintf(buf, cap, "%s:%u", a, ntohs(x->sin_port));
  } else if (ss.ss_family == AF_INET6) {
    const struct sockaddr_in6 *x = (const struct sockaddr_in6 *)&ss;
    inet_ntop(AF_INET6, &x->sin6_addr, a, sizeof a);
    snprintf(buf, cap, "[%s]:%u", a, ntohs(x->sin6_port));
  } else if (ss.ss_family == AF_UNIX) {
    snprintf(buf, cap, "%.100s", ((const struct sockaddr_un *)&ss)->sun_path);
  } else {
    snprintf(buf, cap, "an unknown socket family");
  }
  return buf;
}

/*
 * Socket activation: give each handed-over socket to its listener, never
 * by position. A socket whose name (FileDescriptorName=) is a listener's
 * goes to that listener; any other to the listener whose url it listens
 * on (tern_listener_matches_fd()). Either way its address must be the
 * listener's: a socket that matches none, or two for one listener, stops
 * the start with a message naming both. fd_of[i] is the listener's fd or
 * -1 (it binds its own). Returns 0 or -1 with err set.
 */
static int match_fds(const struct cfg *c, int nfds, const char *names[],
                     int fd_of[], char *err, size_t cap) {
  char at[160];
  for (size_t i = 0; i < c->nlisteners; i++)
    fd_of[i] = -1;
  for (int k = 0; k < nfds; k++) {
    int fd = 3 + k;
    size_t li = c->nlisteners;
    for (size_t i = 0; names[k] && i < c->nlisteners; i++)
      if (!strcmp(c->listeners[i].name, names[k]))
        li = i;
    if (li < c->nlisteners) {
      if (tern_listener_matches_fd(c->listeners[li].url, fd) != 1) {
        snprintf(err, cap,
                 "socket activation: the socket named '%s' (fd %d) listens "
                 "on %s, but [listener %s] has url = %s",
                 names[k], fd, sock_text(fd, at, sizeof at),
                 c->listeners[li].name, c->listeners[li].url);
        return -1;
      }
    } else {
      for (size_t i = 0; i < c->nlisteners && li == c->nlisteners; i++)
        if (fd_of[i] < 0 &&
            tern_listener_matches_fd(c->listeners[i].url, fd) == 1)
          li = i;
      if (li == c->nlisteners) {
        snprintf(err, cap,
                 "socket activation: the socket %s%s%s(fd %d) on %s matches "
                 "no listener: give it FileDescriptorName= of a [listener "
                 "NAME], or make a listener's url its address",
                 names[k] ? "'" : "", names[k] ? names[k] : "",
                 names[k] ? "' " : "", fd, sock_text(fd, at, sizeof at));
        return -1;
      }
    }
    if (fd_of[li] >= 0) {
      snprintf(err, cap,
               "socket activation: [listener %s] is given two sockets "
               "(fd %d and fd %d)",
               c->listeners[li].name, fd_of[li], fd);
      return -1;
    }
    fd_of[li] = fd;
  }
  return 0;
}

/* ---- signals ------------------------------------------------------------------ */

struct daemon {
  uv_loop_t *loop;
  struct tern_server *srv;
  uv_signal_t sigterm, sigint, sighup;
  const char *path; /* config file, for reload */
  const char *maildir, *hostname; /* command-line overrides, kept on reload */
  bool cli_listeners;               /* --listen: the file's are not used */
  struct policy *boot;              /* what the server was started with */
  int exit_code;
};

static void on_down(struct tern_server *srv, void *arg) {
  struct daemon *d = arg;
  (void)srv;
  uv_close((uv_handle_t *)&d->sigterm, NULL);
  uv_close((uv_handle_t *)&d->sigint, NULL);
  uv_close((uv_handle_t *)&d->sighup, NULL);
  log_kv("event", "stopped", NULL);
}

static void on_stop(uv_signal_t *h, int sig) {
  struct daemon *d = h->data;
  log_kv("event", "stopping", "signal", sig == SIGTERM ? "TERM" : "INT",
         NULL);
  sd_notify(0, "STOPPING=1");
  uv_signal_stop(&d->sigterm);
  uv_signal_stop(&d->sigint);
  tern_server_shutdown(d->srv, on_down, d);
}

static int load_policy(const char *path, const struct cfg *base,
                       struct policy **out, char *err, size_t cap);

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
  if ((d->hostname && cfg_set(&p->cfg, "server", "hostname", d->hostname,
                              err, sizeof err) != 0) ||
      (d->maildir && (cfg_set(&p->cfg, "delivery", "target", "maildir", err,
                              sizeof err) != 0 ||
                      cfg_set(&p->cfg, "delivery", "maildir", d->maildir, err,
                              sizeof err) != 0))) {
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
    policy_put(p);
    return;
  }
  uv_mutex_lock(&g_lock);
  struct policy *old = g_policy;
  g_policy = p;
  uv_mutex_unlock(&g_lock);
  policy_put(old);
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
  *out = p;
  return 0;
fail:
  if (p->users)
    users_free(p->users);
  cfg_free(&p->cfg);
  free(p);
  return -1;
}

static void usage(FILE *f) {
  fprintf(f,
          "usage: tern serve [-c FILE] [--check] [--listen URL]... "
          "[--maildir DIR] [--hostname NAME]\n"
          "  -c, --config FILE   the configuration file (tern.ini(5)); "
          "without one:\n"
          "                      127.0.0.1:2525 and [::1]:2525, any "
          "recipient, Maildir ./mail\n"
          "  --check             load and check the configuration (users "
          "file and\n"
          "                      certificates included), print OK, exit\n"
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

int tern_cli_serve(int argc, char **argv) {
  static const struct option longopts[] = {
      {"config", required_argument, NULL, 'c'},
      {"check", no_argument, NULL, 'k'},
      {"listen", required_argument, NULL, 'l'},
      {"maildir", required_argument, NULL, 'm'},
      {"hostname", required_argument, NULL, 'H'},
      {"help", no_argument, NULL, 'h'},
      {NULL, 0, NULL, 0}};
  const char *path = NULL, *maildir = NULL, *hostname = NULL;
  const char *listen[CFG_MAX_LISTENERS];
  size_t nlisten = 0;
  bool check = false;
  int ch;

  optind = 1;
  while ((ch = getopt_long(argc, argv, "c:h", longopts, NULL)) != -1) {
    switch (ch) {
    case 'c':
      path = optarg;
      break;
    case 'k':
      check = true;
      break;
    case 'l':
      if (nlisten == CFG_MAX_LISTENERS) {
        fprintf(stderr, "tern serve: too many --listen\n");
        return EX_USAGE;
      }
      listen[nlisten++] = optarg;
      break;
    case 'm':
      maildir = optarg;
      break;
    case 'H':
      hostname = optarg;
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

  char err[1024];
  struct policy *pol;
  uv_mutex_init(&g_lock);
  if (load_policy(path, NULL, &pol, err, sizeof err) != 0) {
    fprintf(stderr, "tern serve: %s\n", err);
    return EX_CONFIG;
  }
  struct cfg *c = &pol->cfg;
  /* flags override the file, with the file's checks */
  if ((hostname && cfg_set(c, "server", "hostname", hostname, err,
                           sizeof err) != 0) ||
      (maildir && (cfg_set(c, "delivery", "target", "maildir", err,
                           sizeof err) != 0 ||
                   cfg_set(c, "delivery", "maildir", maildir, err,
                           sizeof err) != 0))) {
    fprintf(stderr, "tern serve: %s\n", err);
    policy_put(pol);
    return EX_USAGE;
  }
  if (nlisten) {
    for (size_t i = 0; i < c->nlisteners; i++) {
      free(c->listeners[i].name);
      free(c->listeners[i].url);
      free(c->listeners[i].socket_user);
      free(c->listeners[i].socket_group);
    }
    memset(c->listeners, 0, sizeof c->listeners);
    for (size_t i = 0; i < nlisten; i++) {
      c->listeners[i].name = strdup("cli");
      c->listeners[i].url = strdup(listen[i]);
    }
    c->nlisteners = nlisten;
  }
  if (check) {
    /* the certificates load as at start-up (the users file has already,
     * in load_policy); nothing is bound */
    struct tern_server_options co;
    struct tern_server *cs = NULL;
    tern_server_options_init(&co);
    struct tern_server_config sc;
    server_options(c, &co, &sc);
    char why[512];
    co.error = why;
    co.error_size = sizeof why;
    int cr = tern_server_new(&cs, uv_default_loop(), &co);
    if (cr) {
      fprintf(stderr, "tern serve: %s\n", why);
      tern_server_free(cs);
      policy_put(pol);
      return EX_CONFIG;
    }
    tern_server_free(cs);
    printf("tern serve: %s: configuration OK\n", path ? path : "(default)");
    policy_put(pol);
    return 0;
  }
  g_policy = pol;
  g_fsync = c->fsync;
  g_syslog = c->log && !strcmp(c->log, "syslog");
  if (g_syslog) {
    openlog("tern", LOG_PID | LOG_NDELAY, LOG_MAIL);
    log_use_syslog(true);
  }
  signal(SIGPIPE, SIG_IGN);

  struct tern_server_callbacks cb;
  tern_server_callbacks_init(&cb);
  cb.on_connect = on_connect;
  cb.on_helo = on_helo;
  cb.on_mail = on_mail;
  cb.on_rcpt = on_rcpt;
  cb.on_data_start = on_data_start;
  cb.on_data = on_data;
  cb.on_data_end = on_data_end;
  cb.on_data_abort = on_data_abort;
  cb.on_reset = on_reset;
  cb.on_close = on_close;
  cb.on_command = on_command;
  cb.on_reply = on_reply;

  struct tern_auth_callbacks auth;
  tern_auth_callbacks_init(&auth);
  auth.check_password = check_password;

  struct tern_server_options o;
  tern_server_options_init(&o);
  o.callbacks = &cb;
  struct tern_server_config sc;
  server_options(c, &o, &sc);
  char why[512];
  o.error = why;
  o.error_size = sizeof why;
  o.on_event = on_net_event;
  if (pol->users) {
    o.auth = &auth;
    o.auth_mechanisms = c->auth_mechanisms ? c->auth_mechanisms : "PLAIN LOGIN";
  }

  struct daemon d = {0};
  d.loop = uv_default_loop();
  d.path = path;
  d.maildir = maildir;
  d.hostname = hostname;
  d.cli_listeners = nlisten > 0;
  d.boot = pol;
  atomic_fetch_add(&pol->refs, 1);
  int r = tern_server_new(&d.srv, d.loop, &o);
  if (r) {
    fprintf(stderr, "tern serve: %s\n", why);
    tern_server_free(d.srv);
    return r == TERN_ETLS ? EX_CONFIG : EX_SOFTWARE;
  }
  const char *fdnames[CFG_MAX_LISTENERS];
  int fd_of[CFG_MAX_LISTENERS];
  char *fdnames_buf;
  int nfds = listen_fds(&fdnames_buf, fdnames);
  if (nfds < 0 ||
      match_fds(c, nfds, fdnames, fd_of, err, sizeof err) != 0) {
    if (nfds < 0)
      snprintf(err, sizeof err, "socket activation: more than %d sockets",
               CFG_MAX_LISTENERS);
    fprintf(stderr, "tern serve: %s\n", err);
    free(fdnames_buf);
    tern_server_free(d.srv);
    return EX_CONFIG;
  }
  free(fdnames_buf);
  for (size_t i = 0; i < c->nlisteners; i++) {
    const struct cfg_listener *cl = &c->listeners[i];
    struct tern_listener_options lo;
    tern_listener_options_init(&lo);
    lo.starttls = cl->starttls;
    lo.proxy_protocol = cl->proxy;
    lo.auth_required = cl->auth == CFG_AUTH_REQUIRED;
    lo.auth_insecure_ok = cl->insecure_auth;
    lo.xclient = cl->xclient;
    lo.no_auth = cl->auth == CFG_AUTH_OFF;
    /* unix sockets: owner and mode, set while we are still root */
    lo.socket_mode = cl->socket_mode;
    if (cl->socket_user) {
      struct passwd *pw = getpwnam(cl->socket_user);
      if (!pw) {
        fprintf(stderr, "tern serve: [listener %s]: socket_user '%s' does "
                "not exist\n", cl->name, cl->socket_user);
        tern_server_free(d.srv);
        return EX_CONFIG;
      }
      lo.socket_uid = (long)pw->pw_uid;
    }
    if (cl->socket_group) {
      struct group *gr = getgrnam(cl->socket_group);
      if (!gr) {
        fprintf(stderr, "tern serve: [listener %s]: socket_group '%s' does "
                "not exist\n", cl->name, cl->socket_group);
        tern_server_free(d.srv);
        return EX_CONFIG;
      }
      lo.socket_gid = (long)gr->gr_gid;
    }
    if (fd_of[i] >= 0 &&
        (cl->socket_user || cl->socket_group || cl->socket_mode))
      fprintf(stderr, "tern serve: [listener %s]: socket_user, socket_group "
              "and socket_mode do not apply to a socket from systemd (set "
              "SocketUser=, SocketGroup=, SocketMode= in its unit)\n",
              cl->name);
    r = fd_of[i] >= 0 ? tern_server_listen_fd(d.srv, fd_of[i], cl->url, &lo)
                      : tern_server_listen(d.srv, cl->url, &lo);
    if (r == TERN_EADDRINUSE || r == TERN_EIO || r == TERN_EINVAL) {
      /* the default [::1] listener is optional on hosts without IPv6 */
      if (!path && !nlisten && strstr(cl->url, "[::1]") && r != TERN_EADDRINUSE)
        continue;
      fprintf(stderr, "tern serve: %s\n", tern_server_last_error(d.srv));
      tern_server_free(d.srv);
      return r == TERN_EADDRINUSE ? EX_UNAVAILABLE : EX_CONFIG;
    }
    if (r) {
      fprintf(stderr, "tern serve: %s: %s\n", cl->url, tern_strerror(r));
      tern_server_free(d.srv);
      return EX_SOFTWARE;
    }
  }
  if (drop_privileges(c, err, sizeof err) != 0) {
    fprintf(stderr, "tern serve: %s\n", err);
    tern_server_free(d.srv);
    return EX_NOPERM;
  }
  if (c->user)
    check_reloadable(path, c);
  /* A fixed Maildir: create it (as the user we now are) and drop what a
   * crash left in tmp/. */
  /* A template: its spool (recipients.h), likewise; the maildirs
   * themselves are made when a message for them is accepted. */
  char spool[4096];
  const char *fixed = c->target != CFG_MAILDIR ? NULL
                      : !strchr(c->maildir, '%') ? c->maildir
                      : rcpt_template_spool(c->maildir, spool,
                                            sizeof spool) == 0 ? spool
                                                               : NULL;
  if (fixed) {
    int mr = maildir_prepare(fixed, true);
    if (mr) {
      fprintf(stderr, "tern serve: maildir %s: %s\n", fixed,
              strerror(-mr));
      tern_server_free(d.srv);
      return EX_CANTCREAT;
    }
  }

  if ((r = tern_server_start(d.srv)) != 0) {
    fprintf(stderr, "tern serve: start: %s\n", tern_strerror(r));
    tern_server_free(d.srv);
    return EX_SOFTWARE;
  }
  /* signals before "ready": a SIGHUP or SIGTERM sent once we said ready
   * must find its handler, not the default action */
  uv_signal_init(d.loop, &d.sigterm);
  uv_signal_init(d.loop, &d.sigint);
  uv_signal_init(d.loop, &d.sighup);
  d.sigterm.data = d.sigint.data = d.sighup.data = &d;
  uv_signal_start(&d.sigterm, on_stop, SIGTERM);
  uv_signal_start(&d.sigint, on_stop, SIGINT);
  uv_signal_start(&d.sighup, on_hup, SIGHUP);
  for (size_t i = 0; i < c->nlisteners; i++) {
    int port = tern_server_listener_port(d.srv, i);
    char pt[16];
    snprintf(pt, sizeof pt, "%d", port);
    log_kv("event", "listening", "url", c->listeners[i].url, "port", pt,
           NULL);
  }
  log_kv("event", "ready", "hostname", c->hostname, "delivery",
         c->target == CFG_MAILDIR ? c->maildir
         : c->target == CFG_PIPE  ? c->command
                                  : c->forward_url,
         NULL);
  /* every listener is bound and listening: systemd may start what
   * depends on us (Type=notify); a no-op without NOTIFY_SOCKET */
  sd_notify(0, "READY=1");

  uv_run(d.loop, UV_RUN_DEFAULT);

  tern_server_free(d.srv);
  for (size_t i = 0; i < g_nloops; i++)
    maildir_ctx_free(g_loops[i].md);
  policy_put(g_policy);
  policy_put(d.boot);
  uv_loop_close(d.loop);
  return d.exit_code;
}
