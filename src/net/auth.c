/*
 * AUTH through GNU SASL for both runtimes (auth.h). The server's side
 * and XCLIENT are glued to a connection: what a listener offers, the
 * SASL exchange, password checks on libuv's thread pool, the delay after
 * a failure, and the peer an XCLIENT names. The client's side chooses a
 * mechanism from what the server offers and runs it.
 */
#include "internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "conn.h"

/*
 * The reply for an exchange that is over (any result but CONTINUE and
 * VERIFY); frees the SASL session. A failed password waits, longer each
 * time (guessing gets slow): then the timer answers and this returns
 * TERN_PENDING.
 */
static int auth_result(struct tern__conn *c, int r, struct tern_reply *reply) {
  if (r == TERN__SASL_OK) {
    const char *user = tern__sasl_user(c->sasl);
    free(c->auth_user);
    c->auth_user = user ? strdup(user) : NULL;
    c->info.auth_user = c->auth_user;
    c->auth_failures = 0;
    reply->code = 235;
    reply->enhanced = "2.7.0";
    reply->text = "Authentication successful";
  }
  tern__sasl_session_free(c->sasl);
  c->sasl = NULL;
  if (r == TERN__SASL_OK)
    return TERN_REPLY_NOW;
  if (r == TERN_ETEMP || r == TERN_ENOMEM) {
    reply->code = 454;
    reply->enhanced = "4.7.0";
    reply->text = "Temporary authentication failure";
    return TERN_REPLY_NOW;
  }
  if (r == TERN_ENOTSUP) {
    reply->code = 504;
    reply->enhanced = "5.5.4";
    reply->text = "Unrecognized authentication type";
    return TERN_REPLY_NOW;
  }
  if (r == TERN_ESYNTAX) {
    reply->code = 501;
    reply->enhanced = "5.5.2";
    reply->text = "Error: cannot decode AUTH response";
    return TERN_REPLY_NOW;
  }
  unsigned delay = TERN__LIVE(c->w->srv->opt.auth_fail_delay_ms);
  unsigned shift = c->auth_failures < 3 ? c->auth_failures : 3;
  c->auth_failures++;
  reply->code = 535;
  reply->enhanced = "5.7.8";
  reply->text = "Error: authentication failed";
  if (!delay)
    return TERN_REPLY_NOW;
  tern__conn_auth_delay(c, (uint64_t)delay << shift);
  return TERN_PENDING;
}

/*
 * Password checks (issue 8 item 13). check_password hashes (yescrypt:
 * tens of milliseconds), so it runs on libuv's thread pool while the
 * session's AUTH decision is pending; the loop goes on serving everyone
 * else. At most auth_max_concurrent checks of a worker run at once (the
 * pool's four threads also do the file I/O of deliveries); up to
 * auth_max_queued more wait in FIFO order; past that AUTH gets 454 4.7.0
 * at once. A connection with a check on the pool counts it as a handle,
 * so it is freed only after the check is done.
 */
static void auth_work_cb(uv_work_t *req) {
  struct tern__conn *c = req->data;
  tern__sasl_verify(c->sasl); /* only c->sasl is touched off the loop */
}

static void auth_after_cb(uv_work_t *req, int status);

static unsigned auth_max_running(const struct tern__conn *c) {
  unsigned n = c->w->srv->opt.auth_max_concurrent;
  return n ? n : 1;
}

static int auth_submit(struct tern__conn *c) {
  c->auth_work.data = c;
  if (uv_queue_work(c->w->loop, &c->auth_work, auth_work_cb, auth_after_cb))
    return -1;
  c->w->auth_running++;
  c->auth_busy = true;
  c->handles++;
  return 0;
}

/* End a check that cannot run: 454, the session goes on. */
static void auth_cannot_run(struct tern__conn *c) {
  struct tern_reply r;
  tern__sasl_verify_done(c->sasl); /* wipes the credentials */
  auth_result(c, TERN_ETEMP, &r);
  tern_server_session_reply(c->s, &r);
}

/* Start waiting checks while there is room. */
static void auth_start_waiting(struct tern__worker *w) {
  while (w->auth_head && w->auth_running < auth_max_running(w->auth_head)) {
    struct tern__conn *c = w->auth_head;
    w->auth_head = c->auth_next;
    if (!w->auth_head)
      w->auth_tail = NULL;
    c->auth_next = NULL;
    c->auth_queued = false;
    w->auth_waiting--;
    if (auth_submit(c) != 0)
      auth_cannot_run(c);
  }
}

void tern__auth_unqueue(struct tern__conn *c) {
  struct tern__worker *w = c->w;
  struct tern__conn **pp = &w->auth_head, *prev = NULL;
  if (!c->auth_queued)
    return;
  while (*pp && *pp != c) {
    prev = *pp;
    pp = &(*pp)->auth_next;
  }
  if (*pp) {
    *pp = c->auth_next;
    if (w->auth_tail == c)
      w->auth_tail = prev;
    w->auth_waiting--;
  }
  c->auth_next = NULL;
  c->auth_queued = false;
}

/* The step read the credentials: check them off the loop. */
static int auth_verify_start(struct tern__conn *c, struct tern_reply *reply) {
  struct tern__worker *w = c->w;
  if (w->auth_running < auth_max_running(c)) {
    if (auth_submit(c) == 0)
      return TERN_PENDING;
  } else if (w->auth_waiting < w->srv->opt.auth_max_queued) {
    c->auth_queued = true;
    c->auth_next = NULL;
    if (w->auth_tail)
      w->auth_tail->auth_next = c;
    else
      w->auth_head = c;
    w->auth_tail = c;
    w->auth_waiting++;
    return TERN_PENDING;
  }
  /* Too many checks waiting: a temporary failure, the client retries. */
  tern__sasl_verify_done(c->sasl);
  return auth_result(c, TERN_ETEMP, reply);
}

static void auth_after_cb(uv_work_t *req, int status) {
  struct tern__conn *c = req->data;
  struct tern__worker *w = c->w;
  int r = tern__sasl_verify_done(c->sasl); /* wipes the credentials */
  if (status != 0)
    r = TERN_ETEMP; /* the check did not run */
  w->auth_running--;
  c->auth_busy = false;
  bool gone = c->closing || !c->s;
  if (--c->handles == 0) { /* closed meanwhile; its handles are gone */
    auth_start_waiting(w);
    tern__conn_free(c);
    return;
  }
  auth_start_waiting(w);
  if (gone)
    return;
  struct tern_reply rep;
  if (auth_result(c, r, &rep) == TERN_REPLY_NOW)
    tern_server_session_reply(c->s, &rep); /* notifies: pumps */
}

static int on_auth(struct tern_server_session *s, struct tern_str mech,
                   struct tern_str resp, bool has_resp, unsigned step,
                   struct tern_reply *reply, void *ud) {
  struct tern__conn *c = tern__conn_of(s);
  const char *challenge = NULL;
  (void)ud;
  if (!c)
    return TERN_EINVAL;
  if (step == 0 && c->sasl) {
    tern__sasl_session_free(c->sasl);
    c->sasl = NULL;
  }
  int r = tern__sasl_step(c->w->sasl, &c->sasl, s, mech.ptr, resp.ptr, resp.len,
                          has_resp, &challenge);
  if (r == TERN__SASL_CONTINUE) {
    reply->code = 334;
    reply->enhanced = NULL;
    reply->text = challenge;
    return TERN_REPLY_NOW; /* the core copies the text at once */
  }
  if (r == TERN__SASL_VERIFY)
    return auth_verify_start(c, reply);
  return auth_result(c, r, reply);
}

/* XCLIENT from a trusted peer: the session now speaks for ADDR/PORT. */
static int on_xclient(struct tern_server_session *s,
                      const struct tern_xclient *x, struct tern_reply *reply,
                      void *ud) {
  struct tern__conn *c = tern__conn_of(s);
  int rc = TERN_REPLY_NOW;
  if (c && c->w->srv->cb.on_xclient)
    rc = c->w->srv->cb.on_xclient(s, x, reply, ud);
  if (c && rc == TERN_REPLY_NOW && reply->code / 100 == 2 && x->addr.len &&
      x->addr.len < sizeof c->peer_addr) {
    memcpy(c->peer_addr, x->addr.ptr, x->addr.len);
    c->peer_addr[x->addr.len] = '\0';
    c->info.peer_port = 0;
    for (size_t i = 0; i < x->port.len && x->port.ptr[i] >= '0' &&
                       x->port.ptr[i] <= '9' && i < 5;
         i++)
      c->info.peer_port =
          c->info.peer_port * 10 + (unsigned)(x->port.ptr[i] - '0');
  }
  return rc;
}

void tern__auth_setup(struct tern__conn *c, struct tern_server_config *cfg,
                      struct tern_server_callbacks *cb) {
  struct tern_server *srv = c->w->srv;
  struct tern__listener *l = c->l;
  bool trusted = false;
  if (srv->opt.auth && c->w->sasl && !l->lo.no_auth &&
      tern__sasl_mechanisms(c->w->sasl)[0]) {
    cfg->extensions |= TERN_EXT_AUTH;
    cfg->auth_mechanisms = tern__sasl_mechanisms(c->w->sasl);
    cb->on_auth = on_auth;
  }
  if (l->lo.xclient && srv->xclient_nets && c->info.peer &&
      tern__cidr_match(srv->xclient_nets, c->info.peer)) {
    cfg->extensions |= TERN_EXT_XCLIENT;
    trusted = true;
    cb->on_xclient = on_xclient;
  }
  if (l->lo.no_auth)
    cfg->extensions &= ~(unsigned)TERN_EXT_AUTH;
  cfg->xclient_trusted = trusted;
}

/* ---- client ---------------------------------------------------------- */

void tern__client_auth_end(struct tern__client_auth *a) {
  tern__sasl_client_free(a->sasl);
  a->sasl = NULL;
}

const char *tern__client_auth_choose(struct tern__client_auth *a,
                                     const char *offered, bool tls) {
  snprintf(a->offered, sizeof a->offered, "%s", offered ? offered : "");
  a->p.tls = tls;
  tern__client_auth_end(a);
  a->mech = tern__sasl_client_choose(a->offered, a->prefs, &a->p);
  return a->mech;
}

long tern__client_auth_step(struct tern__client_auth *a, bool tls,
                            struct tern_str challenge, bool has_challenge,
                            char *out, size_t cap) {
  if (!a->mech)
    return TERN_EAUTH;
  if (!has_challenge && !a->sasl) {
    a->p.tls = tls;
    int rc = tern__sasl_client_new(&a->sasl, a->mech, &a->p);
    if (rc)
      return rc;
  }
  if (!a->sasl)
    return TERN_EAUTH;
  return tern__sasl_client_step(a->sasl, challenge.ptr, challenge.len,
                                has_challenge, out, cap);
}
