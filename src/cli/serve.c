/*
 * tern serve — the sessions of the mail-receiving daemon (daemon.c starts
 * it), on the public API only: the server callbacks, and each message's
 * way to its delivery target through deliver_ops (deliver.h).
 *
 * Every message is answered 250 only once its target says so: durable
 * (Maildir: written, fsynced, renamed into new/, directory fsynced),
 * accepted by the pipe command, or accepted by the next hop; with the
 * queue, once it is fsynced in the queue (queue_ops: "queued as ID",
 * the queue id being the message id; docs/decisions/0018). One
 * key=value log line per session and per message.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <tern/net.h>
#include <tern/tern.h>

#include "config.h"
#include "deliver.h"
#include "log.h"
#include "recipients.h"
#include "serve.h"
#include "serve_dkim.h"
#include "users.h"

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
static uv_mutex_t g_loops_lock;
static struct loopctx g_loops[256];
static size_t g_nloops;
static bool g_fsync = true;

void serve_loops_init(bool fsync) {
  uv_mutex_init(&g_loops_lock);
  g_fsync = fsync;
}

void serve_loops_free(void) {
  for (size_t i = 0; i < g_nloops; i++)
    maildir_ctx_free(g_loops[i].md);
  g_nloops = 0;
}

/* The maildir context of this session's loop (group commit is per loop). */
struct maildir_ctx *serve_maildir_ctx(uv_loop_t *loop) {
  struct maildir_ctx *md = NULL;
  uv_mutex_lock(&g_loops_lock);
  for (size_t i = 0; i < g_nloops; i++)
    if (g_loops[i].loop == loop)
      md = g_loops[i].md;
  if (!md && g_nloops < sizeof g_loops / sizeof g_loops[0] &&
      maildir_ctx_new(&md, loop, g_fsync) == 0) {
    g_loops[g_nloops].loop = loop;
    g_loops[g_nloops++].md = md;
  }
  uv_mutex_unlock(&g_loops_lock);
  return md;
}

/* ---- the queue ---------------------------------------------------------------- */

/* Set before the server starts and cleared after it is down: sessions
 * on every loop only read it. */
static struct tern_queue *g_queue;

void serve_set_queue(struct tern_queue *q) { g_queue = q; }

/* Whether messages go through the queue is decided once, at start-up
 * (the daemon opens the queue or not): [delivery] queue needs a restart
 * (cfg_restart_keys), so a reload that turns it off or on must not
 * bypass a running queue nor start using one, whatever the reloaded
 * policy says; the reload's restart_needed=delivery.queue tells the
 * truth. */
bool sess_uses_queue(const struct sess *x) {
  (void)x;
  return g_queue != NULL;
}

/* ---- sessions ---------------------------------------------------------------- */

void sess_drop_delivery(struct sess *x) {
  if (x->dlv) /* a forwarding delivery is x->fd itself */
    x->ops->abort(x->dlv);
  else if (x->fd)
    forward_release(x->fd);
  x->dlv = NULL;
  x->fd = NULL;
}

int sess_rcpt_room(struct sess *x) {
  if (x->nrcpts < x->rcap)
    return 0;
  size_t cap = x->rcap ? 2 * x->rcap : 8;
  char **n = realloc(x->rcpts, cap * sizeof *n);
  if (!n)
    return -1;
  x->rcpts = n;
  unsigned *nt = realloc(x->notify, cap * sizeof *nt);
  if (!nt)
    return -1;
  x->notify = nt;
  char **o = realloc(x->orcpt, cap * sizeof *o);
  if (!o)
    return -1;
  x->orcpt = o;
  char **d = realloc(x->dests, cap * sizeof *d);
  if (!d)
    return -1;
  x->dests = d;
  x->rcap = cap;
  return 0;
}

void sess_push_rcpt(struct sess *x, char *addr) {
  x->notify[x->nrcpts] = x->cur_notify;
  x->orcpt[x->nrcpts] = x->cur_orcpt; /* taken over */
  x->cur_orcpt = NULL;
  x->dests[x->nrcpts] = x->cur_dest; /* taken over */
  x->cur_dest = NULL;
  x->rcpts[x->nrcpts++] = addr;
}

static void txn_clear(struct sess *x) {
  sess_drop_delivery(x);
  free(x->res);
  x->res = NULL;
  free(x->fwd_rcpt);
  x->fwd_rcpt = NULL;
  free(x->from);
  x->from = NULL;
  for (size_t i = 0; i < x->nrcpts; i++) {
    free(x->rcpts[i]);
    free(x->orcpt[i]);
    free(x->dests[i]);
  }
  x->nrcpts = 0;
  free(x->cur_orcpt);
  x->cur_orcpt = NULL;
  free(x->cur_dest);
  x->cur_dest = NULL;
  free((char *)x->mail.envid);
  memset(&x->mail, 0, sizeof x->mail);
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
  x->utf8 = p->smtputf8;
  x->from = strndup(from->mailbox.ptr, from->mailbox.len);
  x->mail.body = p->body;
  x->mail.smtputf8 = p->smtputf8;
  x->mail.requiretls = p->requiretls;
  x->mail.ret = p->ret;
  x->mail.envid = p->envid.len ? strndup(p->envid.ptr, p->envid.len) : NULL;
  if (!x->from || (p->envid.len && !x->mail.envid)) {
    r->code = 451;
    r->enhanced = "4.3.0";
    r->text = "Error: out of memory";
    return TERN_REPLY_NOW;
  }
  /* With the queue the next hop is not asked during the transaction:
   * the local policy answers MAIL and RCPT, the queue DATA. */
  if (is_forward(&x->pol->cfg) && !sess_uses_queue(x))
    return forward_mail_step(x, p, r);
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
 * The local targets' checks of one recipient (recipients.h), when it is
 * delivered by the [delivery] target (`local`): unknown
 * users ([delivery] recipients), and for the pipe target an option-like
 * local part and, behind an SMTP listener, a second recipient: a pipe
 * runs once per recipient, and after DATA an SMTP reply can carry only
 * one outcome, so each message takes one recipient (RFC 5321 §3.3: the
 * client sends the others in another transaction). Behind LMTP, where
 * each recipient gets its own reply, the commands run at once, so their
 * number is bounded too. True when *r is set to the refusal.
 */
static bool local_rcpt_refused(struct sess *x, const struct tern_path *to,
                               bool local, struct tern_reply *r) {
  const struct cfg *c = &x->pol->cfg;
  char addr[600], path[4096];
  size_t n = to->mailbox.len < sizeof addr - 1 ? to->mailbox.len
                                               : sizeof addr - 1;
  memcpy(addr, to->mailbox.ptr, n);
  addr[n] = '\0';
  /* Queued, a pipe message is one 250 for all: the queue runs each
   * recipient's command later, so the one-recipient rules below (one
   * outcome per SMTP reply, commands at once behind LMTP) are moot. */
  bool direct = !sess_uses_queue(x);
  if (!local) {
    /* going on (mx:, url:): only the list of known users, when the
     * recipient is in one of our domains (see route_rcpt) */
    if (x->pol->known && !rcptset_has(x->pol->known, addr)) {
      r->code = 550;
      r->enhanced = "5.1.1";
      r->text = "Error: user unknown";
      return true;
    }
    return false;
  }
  if (direct && c->target == CFG_PIPE && x->nrcpts >= 1 &&
      !lmtp_listener(x)) {
    r->code = 452;
    r->enhanced = "4.5.3";
    r->text = "Error: too many recipients, one per message here";
  } else if (direct && c->target == CFG_PIPE &&
             x->nrcpts >= PIPE_MAX_RCPTS) {
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

/*
 * The recipient's destination (cfg_route_dest; docs/configuration.md
 * "[routes]") into x->cur_dest, and whether the local checks apply to
 * it (*check): every recipient the [delivery] target delivers
 * ("local"), and those of our own domains (accepted, or named in
 * [routes]) whatever their route: [delivery] recipients and
 * recipient_check say which users of our domains exist, also with
 * target = mx or a route to another host (no backscatter later). An
 * authenticated user's mail to another domain is not checked here.
 * False, with *r set, when it cannot be routed now: a destination
 * other than local on a server that runs without the queue (a reload
 * added a route that needs it; cfg_check refuses it at start).
 */
static bool route_rcpt(struct sess *x, const struct tern_path *to,
                       bool *check, struct tern_reply *r) {
  const struct cfg *c = &x->pol->cfg;
  char buf[4200];
  const char *d = cfg_route_dest(c, to->domain.ptr, to->domain.len, buf,
                                 sizeof buf);
  free(x->cur_dest);
  x->cur_dest = NULL;
  if (d != NULL && strcmp(d, "local") != 0 && !sess_uses_queue(x)) {
    log_kv("session", x->info->id, "event", "error", "what", "route",
           "dest", d, "error", "needs the queue (restart tern serve)", NULL);
    *r = (struct tern_reply){451, "4.3.5",
                             "Error: cannot route this recipient now"};
    return false;
  }
  if (d == NULL || (x->cur_dest = strdup(d)) == NULL) {
    *r = (struct tern_reply){451, "4.3.0",
                             d ? "Error: out of memory"
                               : "Error: destination name too long"};
    return false;
  }
  *check = !strcmp(d, "local") ||
           (to->flags & TERN_PATHF_POSTMASTER) ||
           cfg_domain_accepted(c, to->domain.ptr, to->domain.len);
  return true;
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
  /* RFC 5321 §4.5.1: the bare <postmaster> is ours. With target = mx
   * there is no local mailbox: it goes to [queue] postmaster (the
   * address double bounces go to) when one is set, else to the MX of
   * [server] hostname, which this server never hands mail to itself
   * (self_addrs: 5.4.6; docs/configuration.md "Mail loops"). */
  struct tern_path pm;
  bool pm_alias = (to->flags & TERN_PATHF_POSTMASTER) && !to->domain.len &&
                  c->target == CFG_MX && c->queue_postmaster &&
                  strchr(c->queue_postmaster, '@');
  if (pm_alias) {
    const char *a = c->queue_postmaster, *at = strrchr(a, '@');
    pm = (struct tern_path){{a, strlen(a)}, {a, (size_t)(at - a)},
                            {at + 1, strlen(at + 1)}, 0};
    to = &pm;
  }
  bool check = true;
  if (!route_rcpt(x, to, &check, r))
    return TERN_REPLY_NOW;
  bool local = !strcmp(x->cur_dest, "local");
  if (check && local_rcpt_refused(x, to, local, r))
    return TERN_REPLY_NOW;
  /* NOTIFY and ORCPT go with the recipient once it is accepted (here,
   * after the recipient check, or after the next hop's answer) */
  free(x->cur_orcpt);
  x->cur_orcpt = NULL;
  x->cur_notify = p->notify;
  if (p->orcpt_type.len && p->orcpt.len &&
      asprintf(&x->cur_orcpt, "%.*s;%.*s", (int)p->orcpt_type.len,
               p->orcpt_type.ptr, (int)p->orcpt.len, p->orcpt.ptr) < 0) {
    x->cur_orcpt = NULL;
    goto oom;
  }
  /* the alias above: a DSN names the recipient the client gave */
  if (pm_alias && !x->cur_orcpt &&
      !(x->cur_orcpt = strdup("rfc822;postmaster")))
    goto oom;
  /* maildir, pipe, and lmtp/smtp through the queue (cfg_check); a
   * queue-less daemon reloaded into a queue configuration still
   * forwards in the transaction (sess_uses_queue), where the next hop
   * answers the RCPT itself */
  if (check && c->recipient_check && (!is_forward(c) || sess_uses_queue(x)))
    return rcheck_start(x, to, r);
  if (sess_rcpt_room(x) != 0)
    goto oom;
  if (is_forward(c) && !sess_uses_queue(x))
    return forward_rcpt_step(x, to, p, r);
  char *a = strndup(to->mailbox.ptr, to->mailbox.len);
  if (!a)
    goto oom;
  sess_push_rcpt(x, a);
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
  else if (x->queued)
    snprintf(buf, cap, "Ok: queued as %s", x->msgid);
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
  /* The "with" protocol names of RFC 3848 and RFC 6531 §4.3: UTF8 for
   * an SMTPUTF8 transaction, LMTP or ESMTP, then S (TLS) and A (AUTH). */
  char with[16];
  snprintf(with, sizeof with, "%s%s%s%s", x->utf8 ? "UTF8" : "",
           x->utf8 ? (i->lmtp ? "LMTP" : "SMTP")
                   : (i->lmtp ? "LMTP" : "ESMTP"),
           i->tls ? "S" : "", i->auth_user ? "A" : "");
  /* RFC 5321 §4.4: Return-Path is added at final delivery only. "for"
   * names the recipient only when there is exactly one: every copy of a
   * message to several would show the first (a Bcc leak; Postfix does
   * the same). */
  bool final = !x->queued && (x->pol->cfg.target == CFG_MAILDIR ||
                              x->pol->cfg.target == CFG_PIPE);
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

/* ---- the message's delivery (deliver_ops) ------------------------------ */

static void on_written(void *arg, int status) {
  struct sess *x = arg;
  (void)status; /* remembered by the delivery; reported at commit */
  tern_server_session_resume(x->s);
}

static void set_result(struct rcpt_result *p, int code, const char *enh,
                       const char *text) {
  p->known = true;
  p->code = code;
  snprintf(p->enh, sizeof p->enh, "%s", enh ? enh : "");
  snprintf(p->text, sizeof p->text, "%s", text ? text : "");
}

/* on_data_end waits for recipient x->wait: answer it once it is known
 * (LMTP answers in RCPT order; outcomes come in any). */
static void answer_waiting(struct sess *x) {
  if (x->wait < 0 || !x->res[x->wait].known)
    return;
  const struct rcpt_result *p = &x->res[x->wait];
  struct tern_reply rr = {p->code, p->enh[0] ? p->enh : NULL, p->text};
  x->wait = -1;
  tern_server_session_reply(x->s, &rr);
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
  /* queued: the deliveries have their own lines (queue events) */
  log_line_kv(&l, "event", x->queued && x->code / 100 == 2 ? "queued"
                                                           : "message");
  log_line_kv(&l, "from", from);
  log_line_list(&l, "to", (const char *const *)x->rcpts, x->nrcpts);
  log_line_kv(&l, "size", LOG_U(x->size));
  log_line_kv(&l, "status", LOG_U(x->code));
  log_line_kv(&l, "enh", x->enh[0] ? x->enh : "-");
  log_line_kv(&l, "detail", x->text);
  if (!x->queued)
    log_line_kv(&l, "file", file);
  else
    serve_dkim_log(&l, x->file); /* the queue's detail: DKIM's outcome */
  log_line_emit(&l);
}

/* The message's outcome (and its log line), for every recipient that
 * has none of its own. The delivery frees itself after this. */
static void outcome_all(struct sess *x, const struct tern_reply *r,
                        const char *detail) {
  x->dlv = NULL;
  x->fd = NULL;
  if (!x->ops->final && !x->queued)
    log_forward(x, detail && !strcmp(detail, "unknown") ? "end-unknown"
                                                        : "end",
                r, NULL);
  x->done = true;
  x->code = r->code;
  snprintf(x->enh, sizeof x->enh, "%s", r->enhanced ? r->enhanced : "");
  final_text(x, r, x->text, sizeof x->text);
  snprintf(x->file, sizeof x->file, "%s", detail ? detail : "");
  x->messages++;
  log_message(x);
  for (size_t i = 0; i < x->nrcpts; i++)
    if (!x->res[i].known)
      set_result(&x->res[i], x->code, x->enh, x->text);
}

/* Recipient i's own outcome: a final target's (pipe: its command's exit
 * status) is logged and worded as ours; a next hop's is passed on as it
 * is behind LMTP, where each recipient gets its own reply (behind SMTP
 * the message's one outcome is the reply). */
static void outcome_one(struct sess *x, size_t i, const struct tern_reply *r,
                        const char *detail) {
  struct rcpt_result *p = &x->res[i];
  char from[1024], to[1024], text[256];

  if (!x->ops->final) {
    if (lmtp_listener(x))
      set_result(p, r->code, r->enhanced, r->text);
    return;
  }
  final_text(x, r, text, sizeof text);
  set_result(p, r->code, r->enhanced, text);
  snprintf(from, sizeof from, "<%s>", x->from ? x->from : "");
  snprintf(to, sizeof to, "<%s>", x->rcpts[i]);
  log_kv("session", x->info->id, "id", x->msgid, "event", "message", "from",
         from, "to", to, "size", LOG_U(x->size), "status", LOG_U(p->code),
         "enh", p->enh[0] ? p->enh : "-", "detail", p->text, "command",
         detail ? detail : "", NULL);
  size_t known = 0;
  for (size_t k = 0; k < x->nrcpts; k++)
    known += x->res[k].known;
  if (known == x->nrcpts) { /* the last one (DELIVER_ALL follows) */
    x->done = true;
    x->messages++;
  }
}

/* The delivery's news. A reply may end the session (a pipelined QUIT):
 * on_close then aborts the delivery, which therefore stays in x->dlv
 * until DELIVER_ALL, so that no callback comes for a freed session. */
static void on_result(void *arg, size_t i, const struct tern_reply *r,
                      const char *detail) {
  struct sess *x = arg;
  if (i == DELIVER_ALL && r)
    outcome_all(x, r, detail);
  else if (i == DELIVER_ALL)
    x->dlv = NULL; /* every recipient had its own */
  else if (i < x->nrcpts)
    outcome_one(x, i, r, detail);
  if (i == DELIVER_ALL || x->ops->final)
    answer_waiting(x);
}

static const struct deliver_cbs sess_cbs = {on_written, on_result};

static void queue_msg_of(struct sess *x, struct deliver_msg *m);

/* Begin the queued message (qm: queue_open). TERN_REPLY_NOW: *r is the
 * go-ahead (the core's 354) or the refusal. */
static int delivery_begin_queue(struct sess *x, struct tern_queue_msg *qm,
                                struct tern_reply *r) {
  struct deliver_target t = {&queue_ops, NULL, NULL, 0};
  struct deliver_msg m;
  queue_msg_of(x, &m);
  m.header = x->hdr;
  m.hlen = x->hlen;
  m.envelope = qm;
  /* DKIM: mail we originate only (an authenticated session), never mail
   * relayed in from elsewhere (docs/decisions/0020-dkim.md), with the
   * keys this user may sign with ([dkim NAME] users). */
  x->mail.dkim = serve_dkim_for(x->pol->dkim, x->info->auth_user);
  free(x->res);
  x->res = calloc(x->nrcpts ? x->nrcpts : 1, sizeof *x->res);
  x->ops = t.ops;
  x->dlv = NULL;
  if (!x->res) {
    tern_queue_msg_abort(qm);
    *r = (struct tern_reply){451, "4.3.0", "Error: out of memory"};
    return TERN_REPLY_NOW;
  }
  if (t.ops->begin(&t, &m, &sess_cbs, x, &x->dlv, r) != 0) {
    x->dlv = NULL; /* qm belonged to it */
    log_kv("session", x->info->id, "id", x->msgid, "event", "error", "what",
           "queue", NULL);
  }
  return TERN_REPLY_NOW;
}

/* Begin the message with the configured target. Returns 0, or -errno
 * with *r set to the refusal. */
static int delivery_begin(struct sess *x, struct tern_reply *r) {
  const struct cfg *c = &x->pol->cfg;
  uv_loop_t *loop = tern_session_loop(x->s);
  struct deliver_target t = {&forward_ops, NULL, NULL, forward_timeout(c)};
  if (c->target == CFG_MAILDIR)
    t = (struct deliver_target){&maildir_ops, c->maildir,
                                serve_maildir_ctx(loop),
                                0};
  else if (c->target == CFG_PIPE)
    t.ops = &pipe_ops, t.spec = c->command;
  struct deliver_msg m = {loop,    x->from ? x->from : "",
                          (const char *const *)x->rcpts,
                          x->nrcpts, x->hdr, x->hlen, x->fd,
                          x->notify, (const char *const *)x->orcpt,
                          &x->mail};
  free(x->res);
  x->res = calloc(x->nrcpts ? x->nrcpts : 1, sizeof *x->res);
  x->ops = t.ops;
  x->dlv = NULL;
  if (!x->res) {
    *r = (struct tern_reply){451, "4.3.0", "Error: local delivery failed"};
    return -ENOMEM;
  }
  int rc = t.ops->begin(&t, &m, &sess_cbs, x, &x->dlv, r);
  if (rc)
    x->dlv = NULL;
  if (rc && t.ops == &forward_ops)
    x->fd = NULL; /* it belonged to the delivery */
  return rc;
}

/* The session's message as the queue takes it. */
static void queue_msg_of(struct sess *x, struct deliver_msg *m) {
  char helo[300];
  esc(x->helo, strlen(x->helo), helo, sizeof helo);
  snprintf(x->client, sizeof x->client, "dns; %s (%s)",
           helo[0] ? helo : "unknown", x->info->peer_addr);
  x->mail.client = x->client;
  *m = (struct deliver_msg){tern_session_loop(x->s),
                            x->from ? x->from : "",
                            (const char *const *)x->rcpts,
                            x->nrcpts,
                            NULL,
                            0,
                            NULL,
                            x->notify,
                            (const char *const *)x->orcpt,
                            &x->mail};
}

/* Open the queued message: its queue id becomes the message id (the
 * Received field, the reply, every log line). Returns 0 or -errno with
 * *r set. */
static int queue_open(struct sess *x, struct tern_queue_msg **qm,
                      struct tern_reply *r) {
  struct deliver_msg m;
  int rc = 0;
  if (!x->port)
    rc = tern_queue_port_new(g_queue, tern_session_loop(x->s), &x->port);
  if (rc) {
    x->port = NULL;
    rc = -EIO;
  } else {
    queue_msg_of(x, &m);
    rc = queue_msg_open(x->port, &m, (const char *const *)x->dests, qm);
  }
  if (rc) {
    *r = (struct tern_reply){451, "4.3.0",
                             rc == -ESHUTDOWN ? "Error: shutting down"
                                              : "Error: queue unavailable"};
    return rc;
  }
  snprintf(x->msgid, sizeof x->msgid, "%s", tern_queue_msg_id(*qm));
  tern_server_session_set_message_id(x->s, x->msgid);
  return 0;
}

static int on_data_start(struct tern_server_session *s, struct tern_reply *r,
                         void *ud) {
  struct sess *x = sess_of(s);
  struct tern_queue_msg *qm = NULL;
  (void)ud;
  x->done = x->committed = false;
  x->wait = -1;
  x->size = 0;
  memset(&x->hops, 0, sizeof x->hops);
  x->queued = sess_uses_queue(x);
  if (x->queued) {
    int rc = queue_open(x, &qm, r);
    if (rc) {
      log_kv("session", x->info->id, "event", "error", "what", "queue",
             "error", strerror(-rc), NULL);
      return TERN_REPLY_NOW;
    }
  } else if (x->msgid_used) /* a second DATA in one transaction */
    message_id(x);
  x->msgid_used = true;
  x->hlen = trace_header(x, x->hdr, sizeof x->hdr);
  if (x->queued)
    return delivery_begin_queue(x, qm, r);
  int rc = delivery_begin(x, r);
  if (rc) {
    log_kv("session", x->info->id, "event", "error", "what",
           "delivery-start", "error", strerror(-rc), NULL);
    return TERN_REPLY_NOW;
  }
  /* lmtp / smtp: DATA to the next hop, its 354 is ours */
  return is_forward(&x->pol->cfg) ? forward_data_step(x, r) : TERN_REPLY_NOW;
}

/* ---- hop count (Postfix's hopcount_limit) ---------------------------------- */

enum { HC_BOL, HC_NAME, HC_LINE, HC_CR_BOL, HC_BODY };

void hopcount_feed(struct hopcount *h, const char *buf, size_t len) {
  static const char name[] = "received:";
  for (size_t i = 0; i < len && h->st != HC_BODY; i++) {
    unsigned char c = (unsigned char)buf[i];
    switch (h->st) {
    case HC_CR_BOL: /* a CR at the start of a line */
      if (c == '\n') {
        h->st = HC_BODY; /* the empty line: the header has ended */
        break;
      }
      h->st = c == '\r' ? HC_CR_BOL : HC_LINE;
      break;
    case HC_BOL:
      if (c == '\n') {
        h->st = HC_BODY;
        break;
      }
      if (c == '\r') {
        h->st = HC_CR_BOL;
        break;
      }
      h->at = 0;
      h->st = HC_NAME;
      /* fall through */
    case HC_NAME:
      if (c == '\n') {
        h->st = HC_BOL;
      } else if ((c | 0x20) == (unsigned char)name[h->at] ||
                 (c == ':' && name[h->at] == ':')) {
        if (name[++h->at] == '\0') {
          h->n += h->n < UINT32_MAX;
          h->st = HC_LINE;
        }
      } else if ((c == ' ' || c == '\t') && name[h->at] == ':') {
        /* "Received :": white space before the colon, the obsolete
         * form RFC 5322 §4.5 still lets a field have (Postfix counts it) */
      } else {
        h->st = HC_LINE;
      }
      break;
    case HC_LINE:
      if (c == '\n')
        h->st = HC_BOL;
      break;
    default:
      break;
    }
  }
}

/* Content, in chunks of any size: the delivery takes (or copies) it
 * before write returns; pause the session while it writes. */
static int on_data(struct tern_server_session *s, const char *buf, size_t len,
                   void *ud) {
  struct sess *x = sess_of(s);
  (void)ud;
  if (!x->dlv)
    return TERN_EIO;
  x->size += len;
  hopcount_feed(&x->hops, buf, len);
  /* < 0: an earlier write failed (ENOSPC, no command reading, the next
   * hop gone); the delivery keeps the error and commit answers it (452
   * 4.3.1 for a full disk, the exit status for a pipe): read on, drop
   * the rest. An on_data error here would become the core's "451 4.3.0
   * internal error" instead. */
  return x->ops->write(x->dlv, buf, len) == DELIVER_LATER ? TERN_PENDING : 0;
}

/* Too many Received: fields: a loop (ours or someone's). Nothing is
 * delivered or queued (the delivery is aborted, which drops the queue's
 * message and the next hop's transaction), and every recipient gets
 * 554 5.4.6, whatever the target. */
static void hops_refuse(struct sess *x) {
  x->committed = true;
  sess_drop_delivery(x);
  x->queued = false; /* for the log line: nothing was queued */
  x->done = true;
  x->code = 554;
  snprintf(x->enh, sizeof x->enh, "5.4.6");
  snprintf(x->text, sizeof x->text, "Error: too many hops");
  snprintf(x->file, sizeof x->file, "-");
  x->messages++;
  log_kv("session", x->info->id, "id", x->msgid, "event", "reject", "what",
         "hops", "received", LOG_U(x->hops.n), "limit",
         LOG_U(SERVE_MAX_HOPS), NULL);
  log_message(x);
  for (size_t i = 0; i < x->nrcpts; i++)
    set_result(&x->res[i], x->code, x->enh, x->text);
}

static int on_data_end(struct tern_server_session *s,
                       const struct tern_envelope *env, struct tern_reply *r,
                       void *ud) {
  struct sess *x = sess_of(s);
  unsigned rcpt = (unsigned)env->rcpt_index;
  (void)ud;
  if (!x->res || rcpt >= x->nrcpts || (!x->committed && !x->dlv))
    return TERN_EIO;
  if (!x->committed && x->hops.n > SERVE_MAX_HOPS)
    hops_refuse(x);
  if (!x->committed && x->dlv) {
    x->committed = true;
    x->ops->commit(x->dlv);
  }
  const struct rcpt_result *p = &x->res[rcpt];
  if (!p->known) {
    x->wait = (long)rcpt;
    return TERN_PENDING;
  }
  r->code = p->code;
  r->enhanced = p->enh[0] ? p->enh : NULL;
  r->text = p->text;
  return TERN_REPLY_NOW;
}

static void on_data_abort(struct tern_server_session *s, const char *why,
                          void *ud) {
  struct sess *x = sess_of(s);
  (void)ud;
  if (!x)
    return;
  if (x->dlv || x->fd)
    log_kv("session", x->info->id, "id", x->msgid, "event", "abort", "why",
           why, "size", LOG_U(x->size), NULL);
  sess_drop_delivery(x);
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
  if (x->port) /* no message of it is open: txn_clear aborted it */
    tern_queue_port_free(x->port);
  free(x->rcpts);
  free(x->notify);
  free(x->orcpt);
  free(x->dests);
  policy_put(x->pol);
  tern_server_session_set_userdata(s, NULL);
  free(x);
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

void serve_callbacks(struct tern_server_callbacks *cb,
                     struct tern_auth_callbacks *auth) {
  tern_server_callbacks_init(cb);
  cb->on_connect = on_connect;
  cb->on_helo = on_helo;
  cb->on_mail = on_mail;
  cb->on_rcpt = on_rcpt;
  cb->on_data_start = on_data_start;
  cb->on_data = on_data;
  cb->on_data_end = on_data_end;
  cb->on_data_abort = on_data_abort;
  cb->on_reset = on_reset;
  cb->on_close = on_close;
  cb->on_command = serve_on_command;
  cb->on_reply = serve_on_reply;
  tern_auth_callbacks_init(auth);
  auth->check_password = check_password;
}
