/*
 * The lmtp and smtp delivery targets: forward each message to the next
 * hop within the same transaction, through the client library's
 * incremental API (tern_client_session_mail/rcpt/data). There is no
 * queue, so every reply to the inbound client is the next hop's own:
 *
 *   inbound MAIL  -> connect, MAIL to the next hop; its answer (or why it
 *                    cannot take this envelope: SMTPUTF8, BINARYMIME,
 *                    8BITMIME, SIZE, REQUIRETLS) is the MAIL reply
 *   inbound RCPT  -> RCPT to the next hop; its answer is the RCPT reply
 *   inbound DATA  -> DATA; the next hop's 354 (or refusal)
 *   end of data   -> the next hop's verdict; LMTP next hop: one per
 *                    recipient, handed out by forward_result()
 *
 * so the DATA reply is true for every recipient the inbound client was
 * told 250 (docs/decisions/0007-forwarding-without-a-queue.md).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <tern/net.h>

#include "deliver.h"

struct status {
  int code;
  char enh[16];
  char text[240];
};

struct forward_delivery {
  struct tern_client *cl;
  struct tern_client_message m; /* the MAIL envelope (strings below) */
  char *from, *envid;
  /* The one step waiting for the next hop (the inbound session takes no
   * input while its decision is pending, so there is never more). */
  deliver_done_fn step;
  void *step_arg;
  enum forward_step kind;
  struct status st;          /* the answer handed to step/done */
  struct status *data;       /* per accepted recipient: data reply */
  size_t naccepted, dcap;
  char *header;              /* written first (Received; a copy) */
  size_t hlen, hsent;
  char *pend;                /* bytes body() has not taken yet (a copy) */
  size_t pend_len, pend_off, pend_cap;
  const struct deliver_cbs *ocb; /* behind deliver_ops: the session's */
  void *oarg;
  void (*write_cb)(void *arg, int status);
  void *write_arg;
  deliver_done_fn done;
  void *done_arg;
  bool lmtp_out;             /* the next hop speaks LMTP */
  bool in_push, push_again;  /* push() reentrancy */
  bool in_open;              /* inside forward_open() */
  /* Each step's deadline (open to MAIL reply, RCPT, DATA, end of data):
   * the runtime's timeouts bound each exchange, this the whole step,
   * so the inbound client always hears from us first. */
  uv_timer_t timer;
  unsigned timeout_ms;
  bool timer_init, timer_closing, timer_closed;
  bool known_pending; /* the timer reports an outcome known at commit:
                       * nothing may stop or re-arm it (fwo_known) */
  bool in_call;              /* inside forward_rcpt()/forward_data() */
  bool answered_now;         /* the step was answered inside it */
  bool failed_early;         /* the connection failed inside it */
  bool mail_sent;            /* MAIL handed to the session */
  bool body_open;            /* the next hop takes body bytes */
  bool finished;             /* on_message_done came */
  bool released;             /* the caller is done with us */
  bool closed;               /* the client is closed */
};

static void push_once(struct forward_delivery *d);

static void set_status(struct status *st, int code, const char *enh,
                       const char *text) {
  st->code = code;
  snprintf(st->enh, sizeof st->enh, "%s", enh ? enh : "");
  snprintf(st->text, sizeof st->text, "%s", text ? text : "");
}

static void reply_of(const struct status *st, struct tern_reply *r) {
  r->code = st->code;
  r->enhanced = st->enh[0] && st->enh[0] == '0' + st->code / 100 ? st->enh
                                                                  : NULL;
  r->text = st->text;
}

static void on_timer_closed(uv_handle_t *h);

static void maybe_free(struct forward_delivery *d) {
  if (!d->released || !d->closed)
    return;
  if (d->timer_init && !d->timer_closed) {
    if (!d->timer_closing) {
      d->timer_closing = true;
      uv_close((uv_handle_t *)&d->timer, on_timer_closed);
    }
    return;
  }
  tern_client_free(d->cl);
  free(d->data);
  free(d->from);
  free(d->envid);
  free(d->pend);
  free(d->header);
  free(d);
}

static void on_timer_closed(uv_handle_t *h) {
  struct forward_delivery *d = h->data;
  d->timer_closed = true;
  maybe_free(d);
}

static void on_deadline(uv_timer_t *t);

static void arm(struct forward_delivery *d) {
  if (d->timer_init && !d->timer_closing && !d->known_pending)
    uv_timer_start(&d->timer, on_deadline, d->timeout_ms, 0);
}

static void disarm(struct forward_delivery *d) {
  if (d->timer_init && !d->timer_closing && !d->known_pending)
    uv_timer_stop(&d->timer);
}

/* Answer the waiting step (once). */
static void answer(struct forward_delivery *d, int code, const char *enh,
                   const char *text) {
  if (!d->step)
    return;
  deliver_done_fn cb = d->step;
  d->step = NULL;
  disarm(d);
  set_status(&d->st, code, enh, text);
  if (d->in_call) { /* the caller takes it as the call's result */
    d->answered_now = true;
    return;
  }
  struct tern_reply r;
  reply_of(&d->st, &r);
  cb(d->step_arg, &r, d->st.text);
}

/* The next hop failed (no connection, lost, timed out): whatever waits
 * gets a 451, the end of data too (the outcome is then unknown). */
static void hop_failed_text(struct forward_delivery *d, const char *enh,
                            const char *t) {
  disarm(d);
  if (d->step)
    answer(d, 451, enh, t);
  if (d->done) {
    deliver_done_fn cb = d->done;
    d->done = NULL;
    set_status(&d->st, 451, "4.4.2", t);
    struct tern_reply r;
    reply_of(&d->st, &r);
    cb(d->done_arg, &r, "unknown");
  }
}

/* The next hop is gone with body bytes still waiting: let the caller's
 * paused inbound session go on (it reads the rest; commit says why). */
static void release_writer(struct forward_delivery *d) {
  if (!d->write_cb)
    return;
  void (*cb)(void *, int) = d->write_cb;
  d->write_cb = NULL;
  d->pend_len = d->pend_off = 0;
  cb(d->write_arg, -EIO);
}

static void hop_failed(struct forward_delivery *d, const char *enh) {
  char t[220];
  snprintf(t, sizeof t, "Error: next hop: %s", tern_client_last_error(d->cl));
  hop_failed_text(d, enh, t);
}

/* A step took too long as a whole: give up on the next hop. */
static void on_deadline(uv_timer_t *tm) {
  struct forward_delivery *d = tm->data;
  char t[220];
  snprintf(t, sizeof t, "Error: next hop: timed out: no answer within %u ms",
           d->timeout_ms);
  hop_failed_text(d, d->mail_sent ? "4.4.2" : "4.4.1", t);
  tern_client_close(d->cl);
}

/* Push what is pending into the session body. body() may call back into
 * us (its runtime hook flushes, which fires on_body_ready), so a push
 * that starts inside another only asks the outer one to go round again. */
static void push(struct forward_delivery *d) {
  if (d->in_push) {
    d->push_again = true;
    return;
  }
  d->in_push = true;
  do {
    d->push_again = false;
    push_once(d);
  } while (d->push_again);
  d->in_push = false;
  if (d->pend_off == d->pend_len && d->write_cb) {
    void (*cb)(void *, int) = d->write_cb;
    d->write_cb = NULL;
    d->pend_len = d->pend_off = 0;
    cb(d->write_arg, 0);
  }
}

static void push_once(struct forward_delivery *d) {
  struct tern_client_session *c = tern_client_get_session(d->cl);
  while (d->body_open && d->hsent < d->hlen) {
    long n = tern_client_session_body(c, d->header + d->hsent,
                                      d->hlen - d->hsent);
    if (n < 0) {
      d->hsent = d->hlen;
      d->pend_off = d->pend_len;
      return;
    }
    if (n == 0)
      return;
    d->hsent += (size_t)n;
  }
  while (d->body_open && d->pend_off < d->pend_len) {
    long n = tern_client_session_body(c, d->pend + d->pend_off,
                                      d->pend_len - d->pend_off);
    if (n < 0) {
      d->pend_off = d->pend_len;
      break;
    }
    if (n == 0)
      return;
    d->pend_off += (size_t)n;
  }
}

static void on_body_ready(struct tern_client_session *c, void *ud) {
  struct forward_delivery *d = ud;
  (void)c;
  if (d->body_open)
    push(d);
}

static void first_line(const struct tern_client_reply *r, char *t,
                       size_t cap) {
  const char *text = r->nlines ? r->lines[0].ptr : "";
  size_t tl = r->nlines ? r->lines[0].len : 0;
  snprintf(t, cap, "%.*s", (int)(tl < cap ? tl : cap - 1), text);
}

/* The next hop's answer to MAIL, RCPT or DATA (or a local one when the
 * connection ended first). */
static void on_step(struct tern_client_session *c,
                    const struct tern_client_reply *r, bool local,
                    void *arg) {
  struct forward_delivery *d = arg;
  (void)c;
  /* A local reply: never sent or never answered (the next hop failed),
   * except BDAT's go-ahead, which no server sends (client.h). */
  if (local && !(d->kind == FWD_DATA && r->code == 354)) {
    hop_failed(d, "4.4.2");
    return;
  }
  char t[240];
  first_line(r, t, sizeof t);
  if (d->kind == FWD_RCPT && r->code / 100 == 2) {
    if (d->naccepted == d->dcap) {
      size_t cap = d->dcap ? 2 * d->dcap : 8;
      struct status *n = realloc(d->data, cap * sizeof *n);
      if (!n) {
        answer(d, 451, "4.3.0", "Error: out of memory");
        return;
      }
      d->data = n;
      d->dcap = cap;
    }
    memset(&d->data[d->naccepted++], 0, sizeof *d->data);
  }
  if (d->kind == FWD_DATA && r->code == 354)
    d->body_open = true;
  answer(d, r->code, r->enhanced, t);
  if (d->body_open)
    push(d);
}

/* Per-recipient data replies: an LMTP next hop answers each accepted
 * recipient (index counts them in RCPT order); an SMTP one once. */
static void on_reply(struct tern_client_session *c, enum tern_client_cmd cmd,
                     unsigned index, const struct tern_client_reply *r,
                     void *ud) {
  struct forward_delivery *d = ud;
  (void)c;
  if (cmd != TERN_CMD_DATA_END || !d->body_open)
    return;
  char t[240];
  first_line(r, t, sizeof t);
  for (size_t j = 0; j < d->naccepted; j++)
    if (!d->lmtp_out || j == index)
      set_status(&d->data[j], r->code, r->enhanced, t);
}

void forward_message_set(struct tern_client_message *m,
                         const struct forward_mail *fm) {
  m->from = fm->from;
  m->size = fm->size;
  m->body = fm->body;
  m->smtputf8 = fm->smtputf8;
  m->requiretls = fm->requiretls;
  m->ret = fm->ret;
  m->envid = fm->envid;
}

bool forward_refusal(const struct tern_client_message *m, unsigned caps,
                     uint64_t max_size, bool tls, struct tern_reply *r) {
  r->enhanced = NULL;
  if (m->body == TERN_BODY_BINARYMIME &&
      (caps & (TERN_EXT_BINARYMIME | TERN_EXT_CHUNKING)) !=
          (TERN_EXT_BINARYMIME | TERN_EXT_CHUNKING)) {
    /* RFC 3030 §3: BINARYMIME goes only to a server that offers it with
     * CHUNKING; DATA would alter it. RFC 3463 5.6.1 media not supported. */
    *r = (struct tern_reply){554, "5.6.1",
                             "Error: next hop does not accept BINARYMIME"};
  } else if (m->smtputf8 && !(caps & TERN_EXT_SMTPUTF8)) {
    /* RFC 6531 §3.2/§3.7: no SMTPUTF8 message to a server without it. */
    *r = (struct tern_reply){553, "5.6.7",
                             "Error: next hop does not accept SMTPUTF8"};
  } else if (m->body == TERN_BODY_8BITMIME && !(caps & TERN_EXT_8BITMIME)) {
    /* RFC 6152 §3: an 8-bit message goes to a 7-bit server only
     * converted, which we do not do. 5.6.3: conversion required but not
     * supported. */
    *r = (struct tern_reply){550, "5.6.3",
                             "Error: next hop does not accept 8BITMIME"};
  } else if (m->requiretls && (!(caps & TERN_EXT_REQUIRETLS) || !tls)) {
    /* RFC 8689 §4.2.1 */
    *r = (struct tern_reply){550, "5.7.30",
                             "Error: REQUIRETLS not supported by next hop"};
  } else if ((caps & TERN_EXT_SIZE) && max_size && m->size > max_size) {
    /* RFC 1870 §6 */
    *r = (struct tern_reply){
        552, "5.3.4",
        "Error: message size exceeds the next hop's fixed maximum"};
  } else {
    return false;
  }
  return true;
}

static void on_ready(struct tern_client_session *c, void *ud) {
  struct forward_delivery *d = ud;
  if (d->mail_sent)
    return;
  d->mail_sent = true;
  struct tern_reply no;
  if (forward_refusal(&d->m, tern_client_session_caps(c),
                      tern_client_session_max_size(c),
                      tern_client_tls_version(d->cl) != NULL, &no)) {
    answer(d, no.code, no.enhanced, no.text);
    tern_client_close(d->cl);
    return;
  }
  int rc = tern_client_session_mail(c, &d->m, on_step, d);
  if (rc) {
    answer(d, rc == TERN_EINVAL ? 501 : 451,
           rc == TERN_EINVAL ? "5.5.4" : "4.3.0",
           rc == TERN_EINVAL ? "Error: envelope cannot be forwarded"
                             : "Error: cannot forward this message");
    tern_client_close(d->cl);
  }
}

static void on_message_done(struct tern_client_session *c,
                            const struct tern_client_outcome *o, void *ud) {
  struct forward_delivery *d = ud;
  (void)c;
  d->finished = true;
  disarm(d);
  release_writer(d);
  if (d->done) {
    deliver_done_fn cb = d->done;
    d->done = NULL;
    struct tern_reply r;
    if (o->local) {
      char t[220];
      snprintf(t, sizeof t, "Error: next hop: %s",
               tern_client_last_error(d->cl));
      set_status(&d->st, 451, "4.4.2", t);
    } else if (!d->lmtp_out && d->naccepted) {
      d->st = d->data[0];
    } else if (d->lmtp_out) {
      /* the caller takes each recipient's own from forward_result() */
      d->st = d->naccepted ? d->data[0] : d->st;
    }
    if (!d->st.code)
      set_status(&d->st, 451, "4.4.2", "Error: next hop gave no answer");
    reply_of(&d->st, &r);
    cb(d->done_arg, &r, o->local ? "unknown" : "forwarded");
  }
  tern_client_close(d->cl);
}

static void on_connect(struct tern_client *cl, int status, void *ud) {
  struct forward_delivery *d = ud;
  (void)cl;
  if (status == 0)
    return;
  if (d->in_open) {
    d->failed_early = true;
    return;
  }
  /* RFC 3463 4.4.1: no answer from host */
  hop_failed(d, "4.4.1");
}

static void on_close(struct tern_client *cl, void *ud) {
  struct forward_delivery *d = ud;
  (void)cl;
  d->closed = true;
  if (!d->in_open)
    hop_failed(d, "4.4.2");
  if (!d->released)
    release_writer(d);
  maybe_free(d);
}

int forward_open(uv_loop_t *loop, const struct forward_opts *o,
                 const struct forward_mail *fm, deliver_done_fn cb,
                 void *arg, struct forward_delivery **out) {
  struct forward_delivery *d = calloc(1, sizeof *d);
  static struct tern_client_callbacks ccb;
  if (!d)
    return -ENOMEM;
  tern_client_callbacks_init(&ccb);
  ccb.on_reply = on_reply;
  ccb.on_ready = on_ready;
  ccb.on_message_done = on_message_done;
  ccb.on_body_ready = on_body_ready;

  d->from = strdup(fm->from);
  d->envid = fm->envid ? strdup(fm->envid) : NULL;
  if (!d->from || (fm->envid && !d->envid)) {
    d->closed = d->released = true;
    maybe_free(d);
    return -ENOMEM;
  }
  struct forward_mail own = *fm;
  own.from = d->from;
  own.envid = d->envid;
  forward_message_set(&d->m, &own);
  d->lmtp_out = !strncmp(o->url, "lmtp:", 5);
  d->step = cb;
  d->step_arg = arg;
  d->kind = FWD_MAIL;

  struct tern_client_options co;
  tern_client_options_init(&co);
  struct tern_client_config cc;
  tern_client_config_init(&cc);
  co.session = &cc;
  co.url = o->url;
  cc.ehlo_name = o->ehlo;
  co.callbacks = &ccb;
  co.ud = d;
  /* smtp:// is opportunistic TLS, never verified (Postfix's "may");
   * smtp+starttls:// and smtps:// require TLS, verified unless
   * verify = no (config.c refuses AUTH then). */
  co.tls_verify = o->verify && strncmp(o->url, "smtp://", 7) != 0;
  co.ca_file = o->ca_file;
  co.auth_user = o->auth_user;
  co.auth_password = o->auth_password;
  co.connect_timeout_ms = o->timeout_ms;
  co.command_timeout_ms = o->timeout_ms;
  co.data_timeout_ms = o->timeout_ms;
  co.on_connect = on_connect;
  co.on_close = on_close;
  int r = tern_client_new(&d->cl, loop, &co);
  if (r) {
    d->closed = d->released = true;
    maybe_free(d);
    return r == TERN_ENOMEM ? -ENOMEM : -EINVAL;
  }
  d->timeout_ms = o->timeout_ms ? o->timeout_ms : 60000;
  uv_timer_init(loop, &d->timer);
  d->timer.data = d;
  d->timer_init = true;
  arm(d);
  /* A connect that fails at once reports through on_connect before
   * tern_client_connect() returns: catch it here, not as a callback. */
  d->in_open = true;
  r = tern_client_connect(d->cl);
  d->in_open = false;
  if (r || d->failed_early) {
    d->step = NULL;
    forward_release(d);
    return -EHOSTUNREACH;
  }
  *out = d;
  return 0;
}

/* Run one step's client call; an answer that comes inside it (BDAT's
 * local go-ahead, a failure) is handed back in *now (returns 1). */
static int step_call(struct forward_delivery *d, enum forward_step kind,
                     const struct tern_client_rcpt *rc, deliver_done_fn cb,
                     void *arg, struct tern_reply *now) {
  struct tern_client_session *c = tern_client_get_session(d->cl);
  d->step = cb;
  d->step_arg = arg;
  d->kind = kind;
  arm(d);
  d->in_call = true;
  d->answered_now = false;
  int r = kind == FWD_RCPT ? tern_client_session_rcpt(c, rc, on_step, d)
                           : tern_client_session_data(c, on_step, d);
  d->in_call = false;
  if (r) {
    d->step = NULL;
    disarm(d);
    return r == TERN_EINVAL ? -EINVAL : -EIO;
  }
  if (d->answered_now) {
    reply_of(&d->st, now);
    return 1;
  }
  return 0;
}

int forward_rcpt(struct forward_delivery *d, const char *addr,
                 unsigned notify, const char *orcpt, deliver_done_fn cb,
                 void *arg, struct tern_reply *now) {
  if (d->step || d->closed)
    return -EBUSY;
  struct tern_client_rcpt r = {addr, notify, orcpt};
  return step_call(d, FWD_RCPT, &r, cb, arg, now);
}

int forward_data(struct forward_delivery *d, const char *header, size_t hlen,
                 deliver_done_fn cb, void *arg, struct tern_reply *now) {
  if (d->step || d->closed)
    return -EBUSY;
  free(d->header);
  d->hlen = d->hsent = 0;
  if ((d->header = malloc(hlen ? hlen : 1)) == NULL)
    return -EIO;
  memcpy(d->header, header, hlen);
  d->hlen = hlen;
  return step_call(d, FWD_DATA, NULL, cb, arg, now);
}

int forward_write(struct forward_delivery *d, const char *buf, size_t len,
                  void (*cb)(void *arg, int status), void *arg) {
  if (d->finished || d->closed)
    return -EIO;
  if (len > d->pend_cap) { /* the chunk as the runtime read it, any size */
    char *n = realloc(d->pend, len);
    if (!n)
      return -ENOMEM;
    d->pend = n;
    d->pend_cap = len;
  }
  if (len)
    memcpy(d->pend, buf, len);
  d->pend_len = len;
  d->pend_off = 0;
  d->write_cb = NULL;
  push(d);
  if (d->pend_off == d->pend_len) {
    d->pend_len = d->pend_off = 0;
    return 1; /* all taken now */
  }
  d->write_cb = cb;
  d->write_arg = arg;
  return 0;
}

int forward_commit(struct forward_delivery *d, deliver_done_fn done,
                   void *arg, struct tern_reply *now) {
  if (d->finished || d->closed) { /* ended already (failed mid-body) */
    char t[220];
    snprintf(t, sizeof t, "Error: next hop: %s",
             tern_client_last_error(d->cl));
    set_status(&d->st, 451, "4.4.2", t);
    reply_of(&d->st, now);
    return 1;
  }
  d->done = done;
  d->done_arg = arg;
  arm(d);
  push(d);
  tern_client_session_body_end(tern_client_get_session(d->cl));
  return 0;
}

void forward_result(const struct forward_delivery *d, size_t i,
                    struct tern_reply *r) {
  if (i >= d->naccepted || !d->data[i].code) {
    *r = (struct tern_reply){451, "4.4.2", "Error: next hop gave no answer"};
    return;
  }
  reply_of(&d->data[i], r);
}

bool forward_is_lmtp(const struct forward_delivery *d) { return d->lmtp_out; }

size_t forward_accepted(const struct forward_delivery *d) {
  return d->naccepted;
}

void forward_release(struct forward_delivery *d) {
  if (!d)
    return;
  d->released = true;
  d->step = NULL;
  d->done = NULL;
  d->write_cb = NULL;
  disarm(d);
  if (!d->closed)
    tern_client_close(d->cl);
  maybe_free(d);
}

/* ---- the delivery interface (deliver_ops) ------------------------------- */

/* The delivery is the forward_delivery that answered MAIL, RCPT and DATA
 * (forward_open, forward_rcpt, forward_data): begin only takes it over. */
static int fwo_begin(const struct deliver_target *t,
                     const struct deliver_msg *m, const struct deliver_cbs *cb,
                     void *arg, struct delivery **out,
                     struct tern_reply *refusal) {
  struct forward_delivery *d = m->envelope;
  (void)t;
  if (!d) {
    *refusal = (struct tern_reply){451, "4.4.1", "Error: next hop unavailable"};
    return -EHOSTUNREACH;
  }
  d->ocb = cb;
  d->oarg = arg;
  *out = (struct delivery *)d;
  return 0;
}

static int fwo_write(struct delivery *dv, const char *buf, size_t len) {
  struct forward_delivery *d = (struct forward_delivery *)dv;
  int r = forward_write(d, buf, len, d->ocb->written, d->oarg);
  /* forward_write: 1 all taken, 0 cb comes */
  return r == 1 ? 0 : r == 0 ? DELIVER_LATER : r;
}

/* The outcome: each recipient the next hop accepted (LMTP: its own
 * reply; SMTP: the one reply), then the message's, then the end. */
static void fwo_report(struct forward_delivery *d, const struct tern_reply *r,
                       const char *detail) {
  for (size_t i = 0; i < d->naccepted && !d->released; i++) {
    struct tern_reply ri;
    forward_result(d, i, &ri);
    d->ocb->result(d->oarg, i, &ri, detail);
  }
  if (d->released)
    return;
  d->ocb->result(d->oarg, DELIVER_ALL, r, detail);
  forward_release(d);
}

static void fwo_done(void *arg, const struct tern_reply *r,
                     const char *detail) {
  fwo_report(arg, r, detail);
}

/* An outcome known at commit (the next hop failed during the body),
 * reported from the loop as every other. */
static void fwo_known(uv_timer_t *t) {
  struct forward_delivery *d = t->data;
  d->known_pending = false;
  struct tern_reply r;
  reply_of(&d->st, &r);
  fwo_report(d, &r, "next hop failed");
}

static void fwo_commit(struct delivery *dv) {
  struct forward_delivery *d = (struct forward_delivery *)dv;
  struct tern_reply now;
  if (forward_commit(d, fwo_done, d, &now) == 1 && d->timer_init &&
      !d->timer_closing) {
    d->known_pending = true; /* the hop's later on_close must not stop it */
    uv_timer_start(&d->timer, fwo_known, 0, 0);
  }
}

static void fwo_abort(struct delivery *dv) {
  forward_release((struct forward_delivery *)dv);
}

const struct deliver_ops forward_ops = {false, fwo_begin, fwo_write,
                                        fwo_commit, fwo_abort};
