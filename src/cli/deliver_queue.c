/*
 * The queue as a delivery target of `tern serve` (deliver_ops): the
 * session's message goes into the durable queue (include/tern/queue.h)
 * through its loop's port, and the reply at the end of data is the
 * queue's commit: 250 once the message and its envelope are fsynced,
 * 452 4.3.1 on a full disk, 451 4.3.0 on another store error. Every
 * recipient gets that one reply (the queue answers for all of them
 * alike: SMTP's one reply and LMTP's per-recipient replies tell the
 * same truth).
 *
 * The message is opened before begin (queue_msg_open) because its
 * queue id goes into the Received field that begin writes first.
 *
 * DKIM (docs/decisions/0020-dkim.md): with deliver_mail.dkim set (mail
 * the session originates), every chunk the queue takes after that
 * Received field also goes through the signer (the Received field is
 * ours and not signed: a hop may add more in front of it anyway); at
 * commit the DKIM-Signature fields are put in front of the message
 * (tern_queue_msg_prepend) before the queue commits it. A signing that
 * fails leaves the message unsigned and queued; the outcome is the
 * DELIVER_ALL detail (serve_dkim.h) for the session's log line.
 *
 * Line ends: unless the message is BODY=BINARYMIME, what the queue
 * stores is what the signer sees is what is delivered: a bare CR or a
 * bare LF becomes CRLF and a missing final CRLF is added, here, once
 * (BDAT may carry any of them; DATA never does). The deliverers then
 * find nothing to change, so a signature made over these bytes verifies
 * at the recipient. A BINARYMIME message is stored as it came and not
 * signed (dkim=none why="binarymime"): its octets are not lines.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <tern/dkim.h>
#include <tern/queue.h>

#include "deliver.h"
#include "serve_dkim.h"

int queue_msg_open(struct tern_queue_port *p, const struct deliver_msg *m,
                   const char *const *dests, struct tern_queue_msg **out) {
  struct tern_queue_rcpt *r = calloc(m->nrcpts ? m->nrcpts : 1, sizeof *r);
  if (!r)
    return -ENOMEM;
  for (size_t i = 0; i < m->nrcpts; i++) {
    r[i].addr = m->rcpts[i];
    r[i].orcpt = m->orcpt ? m->orcpt[i] : NULL;
    r[i].notify = m->notify ? m->notify[i] : 0;
    r[i].dest = dests && dests[i] ? dests[i] : "local";
  }
  struct tern_queue_envelope env = {0};
  env.from = m->from;
  env.rcpts = r;
  env.nrcpts = m->nrcpts;
  if (m->mail) {
    env.body = m->mail->body;
    env.smtputf8 = m->mail->smtputf8;
    env.requiretls = m->mail->requiretls;
    env.ret = m->mail->ret;
    env.envid = m->mail->envid;
    env.client = m->mail->client;
  }
  int rc = tern_queue_msg_begin(p, &env, out); /* strings are copied */
  free(r);
  if (rc == 0)
    return 0;
  *out = NULL;
  return rc == TERN_ENOMEM    ? -ENOMEM
         : rc == TERN_ECLOSED ? -ESHUTDOWN
                              : -EINVAL;
}

struct qdelivery {
  struct tern_queue_msg *m;
  const struct deliver_cbs *cb;
  void *arg;
  /* A write the queue is taking (it said 1): the next must wait. The
   * header is written in begin, where the session cannot wait, so a
   * chunk that comes while it is still being taken is held here. */
  bool busy;
  bool tell; /* the session waits for cb->written */
  char *held;
  size_t held_len;
  int err; /* the first write error (commit reports the queue's) */
  bool local_err; /* ours (no memory to hold a chunk): the queue does not
                     know the message lost bytes, so commit must not ask */
  bool committed;
  bool aborted;
  uv_loop_t *loop;
  uv_timer_t later; /* a local failure's result, outside qo_commit */
  /* DKIM: signing (or NULL), and why it stopped if it did */
  bool dkim;                 /* asked to sign */
  struct tern_dkim_sign *sign;
  const char *sign_fail;     /* static: signing given up before the end */
  char dkim_detail[512];     /* the outcome (serve_dkim_detail) */
  /* line ends made CRLF (not BINARYMIME): the state across chunks */
  bool norm;
  bool cr;      /* the last octet taken was a CR (its LF may follow) */
  bool bol;     /* the last octet written ended a line (or none yet) */
  bool any;     /* some body octet was taken */
  bool commit_wait; /* commit waits for the final CRLF to be taken */
};

/* A chunk with its line ends made CRLF (d's state carried over): into
 * a new buffer (*out, freed by the caller) of *olen octets. */
static int qd_norm(struct qdelivery *d, const char *buf, size_t len,
                   char **out, size_t *olen) {
  char *o = malloc(2 * len + 2);
  size_t n = 0;
  if (!o)
    return -1;
  for (size_t i = 0; i < len; i++) {
    char c = buf[i];
    if (d->cr && c != '\n')
      o[n++] = '\n'; /* a bare CR: its LF */
    if (c == '\n' && !d->cr)
      o[n++] = '\r'; /* a bare LF: its CR */
    o[n++] = c;
    d->cr = c == '\r';
  }
  if (len) {
    d->any = true;
    d->bol = n && o[n - 1] == '\n';
  }
  *out = o;
  *olen = n;
  return 0;
}

static void qd_free(struct qdelivery *d) {
  tern_dkim_sign_abort(d->sign);
  free(d->held);
  free(d);
}

/* A chunk of the message as received: the signer sees what the queue
 * takes. Out of memory there only costs the signature. */
static void qd_sign(struct qdelivery *d, const char *buf, size_t len) {
  if (!d->sign)
    return;
  if (tern_dkim_sign_write(d->sign, buf, len) != 0) {
    tern_dkim_sign_abort(d->sign);
    d->sign = NULL;
    d->sign_fail = "out of memory";
  }
}

/* Before commit: end the signing and put its fields in front. */
static void qd_sign_end(struct qdelivery *d) {
  if (!d->dkim)
    return;
  if (!d->sign) {
    serve_dkim_detail(d->dkim_detail, sizeof d->dkim_detail, TERN_EIO, NULL,
                      d->sign_fail ? d->sign_fail : "out of memory");
    return;
  }
  char *fields = NULL;
  const char *why = NULL;
  int rc = tern_dkim_sign_end(d->sign, &fields, &why);
  d->sign = NULL;
  if (rc == 0 && fields[0]) {
    int pr = tern_queue_msg_prepend(d->m, fields, strlen(fields));
    if (pr != 0) {
      rc = pr;
      why = pr == TERN_EINVAL ? "signature fields over 64 KiB"
                              : tern_strerror(pr);
    }
  }
  serve_dkim_detail(d->dkim_detail, sizeof d->dkim_detail, rc, fields, why);
  free(fields);
}

static void qd_later_closed(uv_handle_t *h) {
  qd_free(h->data);
}

/* The local failure's result (a chunk was lost before the queue had it):
 * 451, and nothing queued. */
static void qd_later(uv_timer_t *t) {
  struct qdelivery *d = t->data;
  if (!d->aborted) {
    static const struct tern_reply r = {451, "4.3.0",
                                        "Error: local error in processing"};
    d->cb->result(d->arg, DELIVER_ALL, &r, "out of memory");
  }
  uv_close((uv_handle_t *)t, qd_later_closed);
}

static void qd_commit_now(struct qdelivery *d);

static void qd_written(void *arg, int status) {
  struct qdelivery *d = arg;
  d->busy = false;
  if (status && !d->err)
    d->err = status;
  if (d->held) { /* the chunk that came during the header */
    char *h = d->held;
    size_t n = d->held_len;
    d->held = NULL;
    int r = d->err ? d->err : tern_queue_msg_write(d->m, h, n, qd_written, d);
    free(h);
    if (r == 1) {
      d->busy = true;
      return; /* tell the session once this one is taken */
    }
    if (r < 0 && !d->err)
      d->err = r;
  }
  if (d->tell) {
    d->tell = false;
    d->cb->written(d->arg, d->err ? -EIO : 0);
  }
  if (d->commit_wait) { /* the final CRLF is taken: commit now */
    d->commit_wait = false;
    qd_commit_now(d);
  }
}

static int qo_begin(const struct deliver_target *t, const struct deliver_msg *m,
                    const struct deliver_cbs *cb, void *arg,
                    struct delivery **out, struct tern_reply *refusal) {
  struct tern_queue_msg *qm = m->envelope;
  (void)t;
  if (!qm) {
    *refusal = (struct tern_reply){451, "4.3.0", "Error: queue unavailable"};
    return -EINVAL;
  }
  struct qdelivery *d = calloc(1, sizeof *d);
  if (!d) {
    tern_queue_msg_abort(qm);
    *refusal = (struct tern_reply){451, "4.3.0", "Error: out of memory"};
    return -ENOMEM;
  }
  d->m = qm;
  d->cb = cb;
  d->arg = arg;
  d->loop = m->loop;
  d->norm = !(m->mail && m->mail->body == TERN_BODY_BINARYMIME);
  d->bol = true;
  if (m->mail && m->mail->dkim && !d->norm) {
    /* not lines: no canonical form the recipient would see alike */
    serve_dkim_detail(d->dkim_detail, sizeof d->dkim_detail, 0, NULL,
                      "binarymime");
  } else if (m->mail && m->mail->dkim) {
    d->dkim = true;
    if (tern_dkim_sign_new(m->mail->dkim, &d->sign) != 0)
      d->sign_fail = "out of memory";
  }
  if (m->hlen) {
    int r = tern_queue_msg_write(qm, m->header, m->hlen, qd_written, d);
    if (r == 1)
      d->busy = true;
    else if (r < 0)
      d->err = r;
  }
  *out = (struct delivery *)d;
  return 0;
}

/* Hand a chunk to the queue (and the signer). `own`: buf is ours to
 * keep for a held chunk (else freed here). */
static int qd_put(struct qdelivery *d, char *buf, size_t len) {
  if (d->busy) { /* the header is still being taken: hold this chunk */
    d->held = buf;
    d->held_len = len;
    d->tell = true;
    qd_sign(d, buf, len);
    return DELIVER_LATER;
  }
  int r = tern_queue_msg_write(d->m, buf, len, qd_written, d);
  if (r == 0 || r == 1)
    qd_sign(d, buf, len);
  free(buf);
  if (r == 0)
    return 0;
  if (r == 1) {
    d->busy = d->tell = true;
    return DELIVER_LATER;
  }
  d->err = r;
  return -EIO;
}

static int qo_write(struct delivery *dv, const char *buf, size_t len) {
  struct qdelivery *d = (struct qdelivery *)dv;
  if (d->err)
    return -EIO;
  char *c = NULL;
  size_t n = len;
  if (d->norm ? qd_norm(d, buf, len, &c, &n) != 0
              : !(c = malloc(len ? len : 1))) {
    d->err = TERN_ENOMEM;
    d->local_err = true;
    return -ENOMEM;
  }
  if (!d->norm)
    memcpy(c, buf, len);
  return qd_put(d, c, n);
}

static void qo_done(void *arg, const struct tern_reply *r) {
  struct qdelivery *d = arg;
  d->m = NULL; /* freed by the queue after this returns */
  const struct deliver_cbs *cb = d->cb;
  void *a = d->arg;
  bool aborted = d->aborted;
  char detail[sizeof d->dkim_detail];
  memcpy(detail, d->dkim_detail, sizeof detail);
  qd_free(d);
  if (!aborted)
    cb->result(a, DELIVER_ALL, r, detail[0] ? detail : NULL);
}

static void qo_commit(struct delivery *dv) {
  struct qdelivery *d = (struct qdelivery *)dv;
  d->committed = true;
  if (d->local_err) {
    /* A chunk never reached the queue: committing would queue the
     * message with a hole. Drop it and answer 451 from the loop. */
    tern_queue_msg_abort(d->m);
    d->m = NULL;
    uv_timer_init(d->loop, &d->later);
    d->later.data = d;
    uv_timer_start(&d->later, qd_later, 0, 0);
    return;
  }
  /* The end of the last line: a CR's LF, or a whole CRLF. */
  if (!d->err && d->norm && d->any && (d->cr || !d->bol)) {
    static const char crlf[] = "\r\n";
    const char *t = d->cr ? crlf + 1 : crlf;
    size_t tl = strlen(t);
    d->cr = false;
    d->bol = true;
    int r = tern_queue_msg_write(d->m, t, tl, qd_written, d);
    if (r == 0 || r == 1)
      qd_sign(d, t, tl);
    if (r == 1) {
      d->busy = true;
      d->commit_wait = true; /* qd_written commits */
      return;
    }
    if (r < 0)
      d->err = r;
  }
  qd_commit_now(d);
}

static void qd_commit_now(struct qdelivery *d) {
  /* A write the queue refused has failed the message in the queue: its
   * commit says so (452 4.3.1, 451 4.3.0) and leaves nothing behind. */
  if (!d->err)
    qd_sign_end(d);
  tern_queue_msg_commit(d->m, qo_done, d);
}

static void qo_abort(struct delivery *dv) {
  struct qdelivery *d = (struct qdelivery *)dv;
  if (d->aborted)
    return;
  d->aborted = true;
  if (d->local_err && d->committed)
    return; /* qd_later frees it, telling no one */
  if (d->m)
    tern_queue_msg_abort(d->m);
  d->m = NULL;
  /* after an abort the queue calls neither `written` nor `done` */
  qd_free(d);
}

const struct deliver_ops queue_ops = {false, qo_begin, qo_write, qo_commit,
                                      qo_abort};
