/*
 * tern serve: the envelope of the forwarding targets (lmtp, smtp). There
 * is no queue, so the next hop answers MAIL, RCPT and DATA itself and
 * its answers are ours (deliver_forward.c; docs/decisions/0007); the
 * body and the end of data then go through deliver_ops like any target.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "serve.h"

bool is_forward(const struct cfg *c) {
  return c->target == CFG_LMTP || c->target == CFG_SMTP;
}

void log_forward(struct sess *x, const char *step,
                        const struct tern_reply *r, const char *what) {
  log_kv("session", x->info->id, "id", x->msgid, "event", "forward", "step",
         step, "hop", x->pol->cfg.forward_url, "rcpt", what, "result",
         LOG_U(r->code), "enh", r->enhanced ? r->enhanced : NULL, "text",
         r->text ? r->text : "", NULL);
}

/* The next hop's timeouts stay well inside the inbound session's, so the
 * client hears 451 4.4.x from us before its own session times out. */
unsigned forward_timeout(const struct cfg *c) {
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
    sess_drop_delivery(x);
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
    sess_push_rcpt(x, a); /* room was made before RCPT went out */
  else
    free(a);
  tern_server_session_reply(x->s, r);
}

int forward_mail_step(struct sess *x, const struct tern_mail_params *p,
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

int forward_rcpt_step(struct sess *x, const struct tern_path *to,
                      const struct tern_rcpt_params *p, struct tern_reply *r) {
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

/* The next hop answered our DATA (354) or refused the message. */
static void fwd_started(void *arg, const struct tern_reply *r,
                        const char *detail) {
  struct sess *x = arg;
  (void)detail;
  log_forward(x, "data", r, NULL);
  if (r->code != 354) {
    sess_drop_delivery(x);
  }
  tern_server_session_reply(x->s, r);
}

/* DATA: the next hop's 354 is ours (with BDAT, the local go-ahead). */
int forward_data_step(struct sess *x, struct tern_reply *r) {
  struct tern_reply now;
  int rc = x->fd ? forward_data(x->fd, x->hdr, x->hlen, fwd_started, x, &now)
                 : -EIO;
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
  log_kv("session", x->info->id, "event", "error", "what", "delivery-start",
         "error", strerror(EHOSTUNREACH), NULL);
  r->code = 451;
  r->enhanced = "4.4.1";
  r->text = "Error: next hop unavailable";
  return TERN_REPLY_NOW;
}
