/*
 * The lmtp and smtp delivery targets: forward each message to the next
 * hop within the same transaction, through the client library. There is
 * no queue, so nothing can be lost in between: the sender gets its 354
 * only once the next hop said 354, and its 250 only once the next hop
 * accepted the message.
 *
 * Recipients are sent to the next hop when the message starts (at DATA),
 * in one pipelined group. With an inbound LMTP session every recipient
 * gets the next hop's own answer. An inbound SMTP session has a single
 * end-of-data reply: it is 250 only when the next hop accepted every
 * recipient; otherwise it is the next hop's first refusal, so the sender
 * retries or bounces the whole message (a recipient the next hop did
 * accept may then see it twice; none is ever silently dropped).
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
  char text[200];
};

struct forward_delivery {
  struct tern_client *cl;
  struct tern_client_message m;
  struct tern_client_rcpt *rcpts;
  char *from;
  size_t n;
  struct status *rcpt;      /* per recipient: RCPT reply */
  struct status *data;      /* per recipient: end-of-data reply */
  struct status first_fail; /* what SMTP inbound answers on failure */
  const char *header;       /* written first (Return-Path, Received) */
  size_t hlen, hsent;
  char *pend;               /* bytes body() has not taken yet */
  size_t pend_len, pend_off;
  void (*write_cb)(void *arg, int status);
  void *write_arg;
  deliver_done_fn started, done;
  void *arg;
  bool lmtp_out;            /* the next hop speaks LMTP */
  bool in_push, push_again; /* push() reentrancy */
  bool in_begin;            /* inside forward_begin() */
  struct status early;      /* a failure while in_begin */
  bool sent;                /* the message was handed to the session */
  bool body_open;           /* the next hop takes body bytes */
  bool finished;            /* on_message_done came */
  bool released;            /* the caller is done with us */
  bool closed;              /* the client is closed */
  unsigned accepted_seen;   /* LMTP data replies seen */
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

static void maybe_free(struct forward_delivery *d) {
  if (!d->released || !d->closed)
    return;
  tern_client_free(d->cl);
  for (size_t i = 0; d->rcpts && i < d->n; i++)
    free((char *)d->rcpts[i].address);
  free(d->rcpts);
  free(d->rcpt);
  free(d->data);
  free(d->from);
  free(d->pend);
  free(d);
}

/* The message cannot start: tell the caller once, as its DATA reply. */
static void start_failed(struct forward_delivery *d, int code,
                         const char *enh, const char *text) {
  if (!d->started)
    return;
  if (d->in_begin) { /* the caller is still in forward_begin(): tell it */
    d->started = NULL;
    set_status(&d->early, code, enh, text);
    return;
  }
  deliver_done_fn cb = d->started;
  d->started = NULL;
  struct status st;
  set_status(&st, code, enh, text);
  struct tern_reply r;
  reply_of(&st, &r);
  cb(d->arg, &r, text);
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
    if (n <= 0)
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
  if (!d->body_open) {
    d->body_open = true;
    if (d->started) { /* the next hop said 354: so may we */
      deliver_done_fn cb = d->started;
      d->started = NULL;
      struct tern_reply r = {354, NULL, "End data with <CR><LF>.<CR><LF>"};
      cb(d->arg, &r, NULL);
      return;
    }
  }
  push(d);
}

static void on_reply(struct tern_client_session *c, enum tern_client_cmd cmd,
                     unsigned index, const struct tern_client_reply *r,
                     void *ud) {
  struct forward_delivery *d = ud;
  (void)c;
  const char *text = r->nlines ? r->lines[0].ptr : "";
  size_t tl = r->nlines ? r->lines[0].len : 0;
  char t[200];
  snprintf(t, sizeof t, "%.*s", (int)(tl < sizeof t ? tl : sizeof t - 1),
           text);
  if (cmd == TERN_CMD_RCPT && index < d->n) {
    set_status(&d->rcpt[index], r->code, r->enhanced, t);
    if (r->code / 100 != 2 && !d->first_fail.code)
      set_status(&d->first_fail, r->code, r->enhanced, t);
  } else if (cmd == TERN_CMD_DATA_END) {
    /* An LMTP next hop answers each accepted recipient (index counts them
     * in RCPT order); an SMTP one answers once for all of them. */
    size_t k = 0;
    for (size_t j = 0; j < d->n; j++) {
      if (d->rcpt[j].code / 100 != 2)
        continue;
      if (!d->lmtp_out || k == index)
        set_status(&d->data[j], r->code, r->enhanced, t);
      k++;
    }
    if (r->code / 100 != 2 && !d->first_fail.code)
      set_status(&d->first_fail, r->code, r->enhanced, t);
  } else if ((cmd == TERN_CMD_MAIL || cmd == TERN_CMD_DATA ||
              cmd == TERN_CMD_BDAT) &&
             r->code / 100 != 2 && r->code != 354 && !d->first_fail.code) {
    set_status(&d->first_fail, r->code, r->enhanced, t);
  }
}

static void on_ready(struct tern_client_session *c, void *ud) {
  struct forward_delivery *d = ud;
  if (d->sent)
    return;
  d->sent = true;
  if (tern_client_session_send(c, &d->m) != 0)
    start_failed(d, 451, "4.3.0", "Error: cannot forward this message");
}

static void on_message_done(struct tern_client_session *c,
                            const struct tern_client_outcome *o, void *ud) {
  struct forward_delivery *d = ud;
  (void)c;
  d->finished = true;
  if (d->started) { /* it failed before the body: that is our DATA reply */
    if (!d->first_fail.code)
      set_status(&d->first_fail, o->code ? o->code : 451, NULL,
                 "Error: next hop refused the message");
    struct status f = d->first_fail;
    start_failed(d, f.code, f.enh, f.text);
  } else if (d->done) {
    deliver_done_fn cb = d->done;
    d->done = NULL;
    struct tern_reply r;
    bool all = o->delivered == d->n && !d->first_fail.code;
    if (all)
      reply_of(&d->data[0], &r);
    else
      reply_of(&d->first_fail, &r);
    if (!r.code) {
      r.code = 451;
      r.enhanced = "4.4.2";
      r.text = "Error: next hop gave no answer";
    }
    cb(d->arg, &r, all ? "forwarded" : "refused by the next hop");
  }
  tern_client_close(d->cl);
}

static void on_error(struct tern_client_session *c, int err,
                     const struct tern_client_reply *r, void *ud) {
  struct forward_delivery *d = ud;
  (void)c, (void)err, (void)r;
  char t[200];
  snprintf(t, sizeof t, "Error: next hop: %s", tern_client_last_error(d->cl));
  start_failed(d, 451, "4.4.1", t);
  if (d->done && !d->finished) {
    deliver_done_fn cb = d->done;
    d->done = NULL;
    struct tern_reply rr = {451, "4.4.2", t};
    cb(d->arg, &rr, t);
  }
}

static void on_connect(struct tern_client *cl, int status, void *ud) {
  struct forward_delivery *d = ud;
  if (status == 0)
    return;
  char t[200];
  /* RFC 3463 4.4.1: no answer from host */
  snprintf(t, sizeof t, "Error: next hop unavailable: %s",
           tern_client_last_error(cl));
  start_failed(d, 451, "4.4.1", t);
}

static void on_close(struct tern_client *cl, void *ud) {
  struct forward_delivery *d = ud;
  (void)cl;
  d->closed = true;
  if (d->started)
    start_failed(d, 451, "4.4.1", "Error: next hop closed the connection");
  if (d->done) {
    deliver_done_fn cb = d->done;
    d->done = NULL;
    struct tern_reply r = {451, "4.4.2",
                           "Error: next hop closed the connection"};
    cb(d->arg, &r, "closed");
  }
  maybe_free(d);
}

int forward_begin(uv_loop_t *loop, const struct forward_opts *o,
                  const char *from, char *const *rcpts, size_t n,
                  const char *header, size_t hlen, deliver_done_fn started,
                  void *arg, struct forward_delivery **out) {
  struct forward_delivery *d = calloc(1, sizeof *d);
  static struct tern_client_callbacks cb;
  if (!d)
    return -ENOMEM;
  tern_client_callbacks_init(&cb);
  cb.on_reply = on_reply;
  cb.on_ready = on_ready;
  cb.on_message_done = on_message_done;
  cb.on_error = on_error;
  cb.on_body_ready = on_body_ready;

  d->n = n;
  d->from = strdup(from);
  d->rcpts = calloc(n, sizeof *d->rcpts);
  d->rcpt = calloc(n, sizeof *d->rcpt);
  d->data = calloc(n, sizeof *d->data);
  d->pend = malloc(65536);
  d->header = header;
  d->hlen = hlen;
  d->started = started;
  d->arg = arg;
  if (!d->from || !d->rcpts || !d->rcpt || !d->data || !d->pend)
    goto oom;
  for (size_t i = 0; i < n; i++)
    if (!(d->rcpts[i].address = strdup(rcpts[i])))
      goto oom;
  d->lmtp_out = !strncmp(o->url, "lmtp:", 5);
  d->m.from = d->from;
  d->m.rcpts = d->rcpts;
  d->m.nrcpts = n;

  struct tern_client_options co;
  tern_client_options_init(&co);
  co.url = o->url;
  co.session.ehlo_name = o->ehlo;
  co.callbacks = &cb;
  co.ud = d;
  co.tls_verify = o->verify;
  co.ca_file = o->ca_file;
  co.on_connect = on_connect;
  co.on_close = on_close;
  int r = tern_client_new(&d->cl, loop, &co);
  if (r) {
    d->closed = true;
    d->released = true;
    maybe_free(d);
    return r == TERN_ENOMEM ? -ENOMEM : -EINVAL;
  }
  /* A connect that fails at once reports through on_connect before
   * tern_client_connect() returns: catch it here, not as a callback. */
  d->in_begin = true;
  r = tern_client_connect(d->cl);
  d->in_begin = false;
  if (r || d->early.code) {
    forward_release(d);
    return -EHOSTUNREACH;
  }
  *out = d;
  return 0;
oom:
  d->closed = d->released = true;
  maybe_free(d);
  return -ENOMEM;
}

int forward_write(struct forward_delivery *d, const char *buf, size_t len,
                  void (*cb)(void *arg, int status), void *arg) {
  if (d->finished || len > 65536)
    return -EIO;
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
  if (d->finished) { /* ended already (the next hop failed mid-body) */
    if (!d->first_fail.code)
      set_status(&d->first_fail, 451, "4.4.2", "Error: next hop failed");
    reply_of(&d->first_fail, now);
    return 1;
  }
  d->done = done;
  d->arg = arg;
  push(d);
  tern_client_session_body_end(tern_client_get_session(d->cl));
  return 0;
}

void forward_result(const struct forward_delivery *d, size_t i,
                    struct tern_reply *r) {
  if (i >= d->n) {
    *r = (struct tern_reply){451, "4.3.0", "Error: no such recipient"};
    return;
  }
  reply_of(d->rcpt[i].code / 100 == 2 ? &d->data[i] : &d->rcpt[i], r);
  if (!r->code)
    *r = (struct tern_reply){451, "4.4.2", "Error: next hop gave no answer"};
}

void forward_release(struct forward_delivery *d) {
  if (!d)
    return;
  d->released = true;
  d->started = NULL;
  d->done = NULL;
  d->write_cb = NULL;
  if (!d->closed)
    tern_client_close(d->cl);
  maybe_free(d);
}
