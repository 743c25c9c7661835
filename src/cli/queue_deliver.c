/*
 * tern serve: delivery from the queue. The queue (include/tern/queue.h)
 * hands over jobs (one message, some of its recipients) on its home
 * loop; each is run through the configured target and every recipient
 * is reported with the target's own reply:
 *
 *   maildir, pipe  the Step 6 deliver_ops (per-recipient templates, one
 *                  command per recipient with its exit status), with a
 *                  Return-Path header: the stored body already starts
 *                  with our Received field. Local: no remote MTA.
 *   lmtp, smtp     the forward URL through the client library, over
 *                  connections that are kept and reused: a job takes an
 *                  idle connection to the same URL or opens one; after
 *                  its message the connection waits (at most
 *                  `concurrency` of them, 10 s) for the next. MAIL, the
 *                  RCPTs and DATA go out as one PIPELINING group when
 *                  the next hop offers it. A kept connection that turns
 *                  out dead before the next hop said anything about the
 *                  message is replaced once, at once.
 *
 * The body is read from the queue a chunk at a time and handed to the
 * target only as fast as it takes it (its written callback, the client
 * session's on_body_ready), so memory stays bounded.
 *
 * A recipient's result: the next hop's reply to its RCPT when that
 * refused it, else the reply after the data (LMTP: its own). No
 * connection, a lost one, a timeout: 4xx (the queue retries later).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <tern/net.h>
#include <tern/queue.h>

#include "deliver.h"
#include "serve.h"

#define IDLE_MS 10000u /* a kept connection unused this long is closed */

struct rconn;

struct rstatus {
  bool set;
  int code;
  char enh[16];
  char text[400];
};

struct qjob {
  struct qdeliver *qd;
  struct qjob *prev, *next;   /* qd->jobs */
  struct tern_queue_job *job; /* NULL once handed back (or orphaned) */
  struct policy *pol;
  char id[TERN_QUEUE_ID_MAX];
  time_t arrival;
  char *from;
  char **rcpts;
  struct tern_client_rcpt *crcpts;
  char **corcpt; /* ORCPT addresses for the client */
  size_t nrcpts;
  struct rstatus *res;
  uint64_t size;
  struct tern_client_message msg;
  char *envid;
  bool reading; /* a tern_queue_job_read is out */
  bool eof;
  bool read_error; /* the store failed: report nothing */
  bool finished;   /* the outcome is known: hand back */
  /* local targets */
  const struct deliver_ops *ops;
  struct delivery *dlv;
  bool dlv_waiting; /* a write returned DELIVER_LATER */
  bool committed;
  char hdr[1100];
  /* relay */
  struct rconn *conn;
  char remote[300]; /* the next hop's host, for results */
  size_t *acc;      /* accepted recipient k -> its index */
  size_t nacc;
  bool sent;      /* the envelope went to the session */
  bool got_reply; /* the next hop answered this message */
  bool retried;   /* a dead kept connection was replaced */
  bool unreachable; /* failed before the next hop said a word about this
                       message: no connection, greeting, EHLO, TLS, or a
                       421 to MAIL (the destination, not the message) */
  bool body_open, body_ended;
  bool in_pump, pump_again;
  char *pend;
  size_t pend_len, pend_off, pend_cap;
};

struct rconn {
  struct qdeliver *qd;
  struct rconn *prev, *next; /* qd->conns */
  struct tern_client *cl;
  char *key;        /* the URL (and user) it was opened for */
  struct qjob *job; /* the job it carries, or NULL: idle */
  uv_timer_t idle;
  bool timer_open;
  bool connected; /* on_connect said 0 */
  bool used;      /* a message ended on it already */
  bool closing, closed;
  bool lmtp;
  char err[300]; /* why the connection failed */
};

struct qdeliver {
  uv_loop_t *loop;
  unsigned concurrency;
  struct qjob *jobs;
  struct rconn *conns;
  unsigned nconns, nidle;
  bool closing;
};

static void rj_pump(struct qjob *j);
static void rconn_close(struct rconn *c);
static void qj_free(struct qjob *j);

/* The job being handed back: the queue reports its recipients' events
 * from inside tern_queue_job_done, and their log lines want the
 * message's arrival (delay=), which events do not carry. Home loop. */
static const char *g_cur_id;
static time_t g_cur_arrival;

time_t qdeliver_arrival(const char *id) {
  return g_cur_id && id && !strcmp(g_cur_id, id) ? g_cur_arrival : 0;
}

/* The one qdeliver of the process (tern serve opens one queue), for
 * qdeliver_running(). */
static struct qdeliver *g_qd;

bool qdeliver_running(const char *id, const char **remote, time_t *arrival) {
  for (struct qjob *j = g_qd && id ? g_qd->jobs : NULL; j; j = j->next)
    if (j->job && !strcmp(j->id, id)) {
      *remote = j->ops ? "" : j->remote;
      *arrival = j->arrival;
      return true;
    }
  return false;
}

/* ---- jobs ------------------------------------------------------------------
 */

static void set_st(struct rstatus *s, int code, const char *enh,
                   const char *text) {
  s->set = true;
  s->code = code;
  snprintf(s->enh, sizeof s->enh, "%s",
           enh && enh[0] == '0' + code / 100 ? enh : "");
  snprintf(s->text, sizeof s->text, "%s", text ? text : "");
}

static void reply_of(const struct rstatus *s, struct tern_reply *r) {
  r->code = s->code;
  r->enhanced = s->enh[0] ? s->enh : NULL;
  r->text = s->text;
}

/* Hand the job back to the queue once nothing of ours is in flight for
 * it (a read, a pump), then free it. */
static void qj_end(struct qjob *j) {
  j->finished = true;
  if (j->reading || j->in_pump)
    return;
  if (j->job) {
    g_cur_id = j->id;
    g_cur_arrival = j->arrival;
    const char *remote = j->conn || j->remote[0] ? j->remote : NULL;
    if (j->read_error) {
      static const struct tern_reply rr = {451, "4.3.0",
                                           "Error: queue read failed"};
      tern_queue_job_done(j->job, &rr);
    } else {
      for (size_t i = 0; i < j->nrcpts; i++) {
        if (!j->res[i].set)
          continue;
        struct tern_reply r;
        reply_of(&j->res[i], &r);
        tern_queue_job_result(j->job, i, &r, j->ops ? NULL : remote);
      }
      if (j->unreachable && j->nrcpts) {
        /* The destination is down, not this message: the queue defers
         * its other waiting jobs with this reply instead of each
         * costing its own connection attempt. This job's recipients
         * have their results above (naming the next hop). */
        struct tern_reply r;
        reply_of(&j->res[0], &r);
        tern_queue_job_unreachable(j->job, &r);
      } else {
        tern_queue_job_done(j->job, NULL);
      }
    }
    j->job = NULL;
    g_cur_id = NULL;
  }
  qj_free(j);
}

static void qj_free(struct qjob *j) {
  struct qdeliver *qd = j->qd;
  if (j->prev)
    j->prev->next = j->next;
  else if (qd->jobs == j)
    qd->jobs = j->next;
  if (j->next)
    j->next->prev = j->prev;
  for (size_t i = 0; i < j->nrcpts; i++) {
    free(j->rcpts[i]);
    if (j->corcpt)
      free(j->corcpt[i]);
  }
  free(j->rcpts);
  free(j->corcpt);
  free(j->crcpts);
  free(j->res);
  free(j->acc);
  free(j->from);
  free(j->envid);
  free(j->pend);
  policy_put(j->pol);
  free(j);
  if (qd->closing && qd->nconns == 0 && !qd->jobs)
    free(qd);
}

/* Every recipient without a result gets r. */
static void fill(struct qjob *j, int code, const char *enh, const char *text) {
  for (size_t i = 0; i < j->nrcpts; i++)
    if (!j->res[i].set)
      set_st(&j->res[i], code, enh, text);
}

static struct qjob *qj_new(struct qdeliver *qd, struct tern_queue_job *job,
                           const struct tern_queue_job_info *info) {
  struct qjob *j = calloc(1, sizeof *j);
  if (!j)
    return NULL;
  j->qd = qd;
  j->job = job;
  j->pol = policy_get();
  j->nrcpts = info->nrcpts;
  j->size = info->size;
  snprintf(j->id, sizeof j->id, "%s", info->id);
  j->arrival = info->arrival;
  j->from = strdup(info->from);
  j->rcpts = calloc(info->nrcpts ? info->nrcpts : 1, sizeof *j->rcpts);
  j->corcpt = calloc(info->nrcpts ? info->nrcpts : 1, sizeof *j->corcpt);
  j->crcpts = calloc(info->nrcpts ? info->nrcpts : 1, sizeof *j->crcpts);
  j->res = calloc(info->nrcpts ? info->nrcpts : 1, sizeof *j->res);
  j->acc = calloc(info->nrcpts ? info->nrcpts : 1, sizeof *j->acc);
  j->envid = info->envid ? strdup(info->envid) : NULL;
  j->next = qd->jobs;
  if (qd->jobs)
    qd->jobs->prev = j;
  qd->jobs = j;
  bool ok = j->from && j->rcpts && j->corcpt && j->crcpts && j->res && j->acc &&
            (!info->envid || j->envid);
  for (size_t i = 0; ok && i < info->nrcpts; i++) {
    const struct tern_queue_job_rcpt *r = &info->rcpts[i];
    ok = (j->rcpts[i] = strdup(r->addr)) != NULL;
    /* the client adds "rfc822;" itself: only such an ORCPT goes on */
    if (ok && r->orcpt && !strncasecmp(r->orcpt, "rfc822;", 7))
      ok = (j->corcpt[i] = strdup(r->orcpt + 7)) != NULL;
    j->crcpts[i].address = j->rcpts[i];
    j->crcpts[i].notify = r->notify;
    j->crcpts[i].orcpt = j->corcpt[i];
  }
  if (!ok) {
    j->job = NULL; /* the caller hands it back */
    qj_free(j);
    return NULL;
  }
  struct forward_mail fm = {j->from,          info->size,
                           info->body,       info->smtputf8,
                           info->requiretls, info->ret,
                           j->envid};
  forward_message_set(&j->msg, &fm);
  j->msg.rcpts = j->crcpts;
  j->msg.nrcpts = j->nrcpts;
  return j;
}

/* ---- local targets: maildir, pipe (deliver_ops) -----------------------------
 */

static void lj_read(struct qjob *j);

static void lj_written(void *arg, int status) {
  struct qjob *j = arg;
  (void)status; /* kept by the delivery: commit reports it */
  j->dlv_waiting = false;
  lj_read(j);
}

static void lj_commit(struct qjob *j) {
  if (j->committed)
    return;
  j->committed = true;
  j->ops->commit(j->dlv);
}

/* The command's own words after "command exited with status 67
 * (EX_NOUSER): " in a pipe delivery's detail (deliver_pipe.c has
 * already made them one printable-ASCII line), or NULL. */
static const char *pipe_output(const char *detail) {
  static const char wr[] = "writing to command: "; /* then an error */
  if (detail && !strncmp(detail, wr, sizeof wr - 1))
    detail += sizeof wr - 1;
  const char *p = detail ? strstr(detail, ": ") : NULL;
  return p && p[2] ? p + 2 : NULL;
}

/* A failed recipient's reply text carries the command's output, as
 * Postfix's pipe(8) does ("... (command output: no such mailbox)"): it
 * goes into the DSN's Diagnostic-Code, where the sender can read why.
 * Bounded so the reply stays a reply. */
static void pipe_text(const struct tern_reply *r, const char *detail,
                      char *out, size_t cap) {
  const char *o = pipe_output(detail);
  if (r->code / 100 == 2 || !o) {
    snprintf(out, cap, "%s", r->text ? r->text : "");
    return;
  }
  snprintf(out, cap, "%s (command output: %.160s)", r->text ? r->text : "",
           o);
}

static void lj_result(void *arg, size_t i, const struct tern_reply *r,
                      const char *detail) {
  struct qjob *j = arg;
  if (i != DELIVER_ALL) {
    if (i < j->nrcpts && !j->res[i].set) {
      char t[sizeof j->res[i].text];
      if (j->ops == &pipe_ops)
        pipe_text(r, detail, t, sizeof t);
      else
        snprintf(t, sizeof t, "%s", r->text ? r->text : "");
      set_st(&j->res[i], r->code, r->enhanced, t);
    }
    return;
  }
  j->dlv = NULL; /* it frees itself after this returns */
  if (r)
    fill(j, r->code, r->enhanced, r->text);
  fill(j, 451, "4.3.0", "Error: delivery gave no answer");
  qj_end(j);
}

static const struct deliver_cbs lj_cbs = {lj_written, lj_result};

static void lj_chunk(void *arg, const char *buf, size_t len, int status) {
  struct qjob *j = arg;
  j->reading = false;
  if (j->finished) {
    qj_end(j);
    return;
  }
  if (status < 0) { /* nothing delivered: every recipient is deferred */
    j->read_error = true;
    if (j->dlv)
      j->ops->abort(j->dlv);
    j->dlv = NULL;
    qj_end(j);
    return;
  }
  if (len == 0) {
    lj_commit(j);
    return;
  }
  int r = j->ops->write(j->dlv, buf, len);
  if (r == DELIVER_LATER) {
    j->dlv_waiting = true;
    return;
  }
  if (r < 0) { /* the delivery keeps the error: commit says it */
    lj_commit(j);
    return;
  }
  lj_read(j);
}

static void lj_read(struct qjob *j) {
  if (j->reading || j->finished || j->committed || !j->job)
    return;
  j->reading = true;
  if (tern_queue_job_read(j->job, lj_chunk, j) != 0) {
    j->reading = false;
    j->read_error = true;
    if (j->dlv)
      j->ops->abort(j->dlv);
    j->dlv = NULL;
    qj_end(j);
  }
}

static void local_start(struct qjob *j) {
  const struct cfg *c = &j->pol->cfg;
  uv_loop_t *loop = j->qd->loop;
  struct deliver_target t = {&pipe_ops, c->command, NULL, forward_timeout(c)};
  if (c->target == CFG_MAILDIR)
    t = (struct deliver_target){&maildir_ops, c->maildir,
                                serve_maildir_ctx(loop), 0};
  /* RFC 5321 §4.4: the final delivery adds Return-Path; the Received
   * field is already the first line of the stored body */
  int n = snprintf(j->hdr, sizeof j->hdr, "Return-Path: <%s>\r\n", j->from);
  struct deliver_msg m = {
      loop,      j->from, (const char *const *)j->rcpts,
      j->nrcpts, j->hdr,  n > 0 && (size_t)n < sizeof j->hdr ? (size_t)n : 0,
      NULL,      NULL,    NULL,
      NULL};
  struct tern_reply refusal = {451, "4.3.0", "Error: delivery failed"};
  j->ops = t.ops;
  if (t.ops->begin(&t, &m, &lj_cbs, j, &j->dlv, &refusal) != 0) {
    j->dlv = NULL;
    fill(j, refusal.code, refusal.enhanced, refusal.text);
    qj_end(j);
    return;
  }
  lj_read(j);
}

/* ---- relay targets: lmtp, smtp over kept connections ------------------------
 */

/* The next hop's host from the URL, as results name it. */
static void url_host(const char *url, char *out, size_t cap) {
  const char *p = strstr(url, "://");
  p = p ? p + 3 : url;
  if (*p == '/') { /* lmtp:///path: a unix socket */
    snprintf(out, cap, "%s", p);
    return;
  }
  size_t n = strcspn(p, "/");
  if (*p == '[') { /* [v6]:port */
    const char *e = memchr(p, ']', n);
    n = e ? (size_t)(e - p) + 1 : n;
  } else {
    const char *e = memchr(p, ':', n);
    n = e ? (size_t)(e - p) : n;
  }
  snprintf(out, cap, "%.*s", (int)n, p);
}

static void first_line(const struct tern_client_reply *r, char *t, size_t cap) {
  size_t n = r->nlines ? r->lines[0].len : 0;
  snprintf(t, cap, "%.*s", (int)(n < cap ? n : cap - 1),
           r->nlines ? r->lines[0].ptr : "");
}

static void rj_read_cb(void *arg, const char *buf, size_t len, int status);

static void rj_read(struct qjob *j) {
  if (j->reading || j->eof || j->finished || !j->job)
    return;
  j->reading = true;
  if (tern_queue_job_read(j->job, rj_read_cb, j) != 0) {
    j->reading = false;
    j->read_error = true;
    if (j->conn)
      rconn_close(j->conn); /* the message must not end as if whole */
  }
}

/* Hand what is pending to the session's body; when it took everything,
 * read the next chunk, or end the body. body() may call back into us
 * (the runtime flushes, on_body_ready): a pump inside a pump only asks
 * the outer one to go round again. */
static void rj_pump(struct qjob *j) {
  if (j->in_pump) {
    j->pump_again = true;
    return;
  }
  if (!j->conn || !j->body_open || j->finished)
    return;
  struct tern_client_session *s = tern_client_get_session(j->conn->cl);
  j->in_pump = true;
  do {
    j->pump_again = false;
    while (j->pend_off < j->pend_len && !j->finished) {
      long n = tern_client_session_body(s, j->pend + j->pend_off,
                                        j->pend_len - j->pend_off);
      if (n < 0) { /* the message failed: on_message_done says how */
        j->pend_off = j->pend_len;
        break;
      }
      if (n == 0)
        break;
      j->pend_off += (size_t)n;
    }
  } while (j->pump_again && !j->finished);
  j->in_pump = false;
  if (j->finished) {
    qj_end(j);
    return;
  }
  if (j->pend_off < j->pend_len)
    return; /* on_body_ready comes when the session takes more */
  j->pend_len = j->pend_off = 0;
  if (j->eof) {
    if (!j->body_ended) {
      j->body_ended = true;
      tern_client_session_body_end(s);
    }
    return;
  }
  rj_read(j);
}

static void rj_read_cb(void *arg, const char *buf, size_t len, int status) {
  struct qjob *j = arg;
  j->reading = false;
  if (j->finished || !j->conn) {
    qj_end(j);
    return;
  }
  if (status < 0) {
    j->read_error = true;
    rconn_close(j->conn);
    return;
  }
  if (len == 0) {
    j->eof = true;
  } else {
    if (len > j->pend_cap) {
      char *n = realloc(j->pend, len);
      if (!n) {
        j->read_error = true;
        rconn_close(j->conn);
        return;
      }
      j->pend = n;
      j->pend_cap = len;
    }
    memcpy(j->pend, buf, len);
    j->pend_len = len;
    j->pend_off = 0;
  }
  rj_pump(j);
}

/* What the next hop cannot take is refused before MAIL (as the
 * forwarding targets do, docs/decisions/0007): a permanent failure, so
 * the sender hears of it. Returns true when refused. */
static bool rj_refuse(struct qjob *j, struct rconn *c) {
  struct tern_client_session *s = tern_client_get_session(c->cl);
  struct tern_reply r;
  if (!forward_refusal(&j->msg, tern_client_session_caps(s),
                       tern_client_session_max_size(s),
                       tern_client_tls_version(c->cl) != NULL, &r))
    return false;
  fill(j, r.code, r.enhanced, r.text);
  return true;
}

static void rconn_idle(struct rconn *c);

/* The connection is ready and carries its job: send the envelope (MAIL,
 * RCPTs, DATA: one group with PIPELINING). */
static void rj_send(struct rconn *c) {
  struct qjob *j = c->job;
  struct tern_client_session *s = tern_client_get_session(c->cl);
  if (!j || j->sent || !(tern_client_session_want(s) & TERN_CLIENT_READY))
    return;
  j->sent = true;
  if (rj_refuse(j, c)) {
    c->job = NULL;
    j->conn = NULL;
    qj_end(j);
    rconn_idle(c);
    return;
  }
  int rc = tern_client_session_send(s, &j->msg);
  if (rc == 0) {
    return; /* replies: rc_on_reply; the end: rc_on_message_done */
  }
  if (rc == TERN_ENOTSUP)
    fill(j, 550, "5.5.1",
         "Error: next hop does not offer what this "
         "message needs (SMTPUTF8, BINARYMIME, REQUIRETLS)");
  else if (rc == TERN_EINVAL)
    fill(j, 553, "5.1.3", "Error: address cannot be sent");
  else
    fill(j, 451, "4.3.0", "Error: cannot send this message");
  c->job = NULL;
  j->conn = NULL;
  qj_end(j);
  rconn_idle(c);
}

static void rc_on_ready(struct tern_client_session *s, void *ud) {
  struct rconn *c = ud;
  (void)s;
  rj_send(c);
}

/* Every reply of the next hop, as it comes: a refused RCPT is that
 * recipient's result; the reply after the data is the accepted ones'
 * (LMTP: each its own). */
static void rc_on_reply(struct tern_client_session *s, enum tern_client_cmd cmd,
                        unsigned index, const struct tern_client_reply *r,
                        void *ud) {
  struct rconn *c = ud;
  struct qjob *j = c->job;
  char t[240];
  (void)s;
  if (!j || !j->sent)
    return;
  first_line(r, t, sizeof t);
  switch (cmd) {
  case TERN_CMD_MAIL:
    j->got_reply = true;
    /* 421 to MAIL: the next hop is closing, whatever the message */
    if (r->code == 421)
      j->unreachable = true;
    if (r->code / 100 != 2)
      fill(j, r->code, r->enhanced, t);
    break;
  case TERN_CMD_RCPT:
    j->got_reply = true;
    if (index >= j->nrcpts)
      break;
    if (r->code / 100 == 2)
      j->acc[j->nacc++] = index;
    else
      set_st(&j->res[index], r->code, r->enhanced, t);
    break;
  case TERN_CMD_BDAT: /* a chunk refused ends the message (BINARYMIME) */
  case TERN_CMD_DATA:
    j->got_reply = true;
    if (r->code != 354 && r->code / 100 != 2)
      for (size_t k = 0; k < j->nacc; k++)
        if (!j->res[j->acc[k]].set)
          set_st(&j->res[j->acc[k]], r->code, r->enhanced, t);
    break;
  case TERN_CMD_DATA_END:
    j->got_reply = true;
    for (size_t k = 0; k < j->nacc; k++)
      if ((!c->lmtp || k == index) && !j->res[j->acc[k]].set)
        set_st(&j->res[j->acc[k]], r->code, r->enhanced, t);
    break;
  default:
    break;
  }
}

static void rc_on_body_ready(struct tern_client_session *s, void *ud) {
  struct rconn *c = ud;
  (void)s;
  if (!c->job || !c->job->sent)
    return;
  c->job->body_open = true;
  rj_pump(c->job);
}

static void relay_start(struct qjob *j, bool fresh);

/* The message ended. A kept connection that was dead before the next
 * hop said a word about this message is replaced once (nothing of it
 * can have been delivered); otherwise every recipient has its result. */
static void rc_on_message_done(struct tern_client_session *s,
                               const struct tern_client_outcome *o, void *ud) {
  struct rconn *c = ud;
  struct qjob *j = c->job;
  (void)s;
  if (!j)
    return;
  c->job = NULL;
  j->conn = NULL;
  bool reused = c->used;
  c->used = true;
  if (o->local && !j->got_reply && !j->retried && reused && !j->reading &&
      j->pend_len == 0 && !j->read_error && o->code / 100 == 4) {
    rconn_close(c); /* dead: the next hop closed it while it was kept */
    j->retried = true;
    j->sent = j->body_open = false;
    relay_start(j, true);
    return;
  }
  /* lost before any reply to this message on a fresh connection (a
   * kept one was replaced above): the connection, not the message */
  if (o->local && !j->got_reply && o->code / 100 == 4 && !j->read_error)
    j->unreachable = true;
  if (o->local) {
    char t[240];
    const char *why = tern_client_last_error(c->cl);
    if (strcmp(why, "no error") == 0) /* failed in the session: an
                                         unreadable or oversized reply */
      why = j->body_open ? "no readable reply (the message may have arrived)"
                         : "no readable reply";
    snprintf(t, sizeof t, "Error: next hop: %s", why);
    fill(j, o->code / 100 == 5 ? o->code : 451,
         o->code / 100 == 5 ? "5.3.0" : "4.4.2", t);
  }
  fill(j, 451, "4.4.2", "Error: next hop gave no answer");
  qj_end(j);
  rconn_idle(c);
}

static void rc_on_connect(struct tern_client *cl, int status, void *ud) {
  struct rconn *c = ud;
  if (status == 0) {
    c->connected = true;
    return;
  }
  snprintf(c->err, sizeof c->err, "%s", tern_client_last_error(cl));
}

static void rc_timer_closed(uv_handle_t *h) {
  struct rconn *c = h->data;
  struct qdeliver *qd = c->qd;
  free(c->key);
  free(c);
  /* nconns counts connections until their memory is gone (a closed
   * one's timer may still be closing after it left qd->conns) */
  if (--qd->nconns == 0 && qd->closing && !qd->jobs)
    free(qd);
}

/* The connection is gone: a job it carried is deferred with why (no
 * connection: 4.4.1, as the client words it), then it is freed. */
static void rc_on_close(struct tern_client *cl, void *ud) {
  struct rconn *c = ud;
  struct qdeliver *qd = c->qd;
  struct qjob *j = c->job;
  c->closed = true;
  if (j) {
    c->job = NULL;
    j->conn = NULL;
    char t[360];
    const char *why = c->err[0] ? c->err : tern_client_last_error(cl);
    snprintf(t, sizeof t, "Error: next hop: %s", why);
    fill(j, 451, c->connected ? "4.4.2" : "4.4.1", t);
    /* never ready (connect, greeting, TLS, EHLO, AUTH), or lost before
     * the next hop answered anything of this message */
    if (!j->read_error && (!c->connected || !j->got_reply))
      j->unreachable = true;
    qj_end(j);
  }
  uv_timer_stop(&c->idle);
  if (c->prev)
    c->prev->next = c->next;
  else
    qd->conns = c->next;
  if (c->next)
    c->next->prev = c->prev;
  tern_client_free(cl);
  c->cl = NULL;
  uv_close((uv_handle_t *)&c->idle, rc_timer_closed);
}

/* Gone for good: the runtime's second close drops the connection at
 * once (its first asks QUIT and waits for the answer). */
static void rconn_abort(uv_timer_t *t) {
  struct rconn *c = t->data;
  if (!c->closed)
    tern_client_close(c->cl);
}

/* Close: an idle connection says QUIT (and is dropped if the answer
 * takes over a second); one that carries a message is dropped at once
 * (a QUIT would wait behind the message's replies, and nothing must
 * end the message as if it were whole). */
static void rconn_close(struct rconn *c) {
  if (c->closed)
    return;
  bool busy = c->job != NULL;
  if (!c->closing) {
    c->closing = true;
    tern_client_close(c->cl);
  }
  if (c->closed)
    return;
  if (busy)
    tern_client_close(c->cl);
  else
    uv_timer_start(&c->idle, rconn_abort, 1000, 0);
}

static void rc_idle_timeout(uv_timer_t *t) {
  struct rconn *c = t->data;
  if (!c->job)
    rconn_close(c);
}

/* After a message: keep the connection for the next job (when it is
 * still usable and not one too many), else close it. */
static void rconn_idle(struct rconn *c) {
  struct qdeliver *qd = c->qd;
  if (c->closing || c->closed)
    return;
  unsigned idle = 0;
  for (struct rconn *k = qd->conns; k; k = k->next)
    idle += !k->job && !k->closing && k != c;
  if (qd->closing || idle >= qd->concurrency ||
      (tern_client_session_want(tern_client_get_session(c->cl)) &
       TERN_CLIENT_WANT_CLOSE)) {
    rconn_close(c);
    return;
  }
  uv_timer_start(&c->idle, rc_idle_timeout, IDLE_MS, 0);
}

/* The key a connection is reused by: the URL and the AUTH user (a
 * reload may change either). */
static char *conn_key(const struct cfg *c) {
  char *k = NULL;
  if (asprintf(&k, "%s %s", c->forward_url ? c->forward_url : "",
               c->forward_auth_user ? c->forward_auth_user : "") < 0)
    return NULL;
  return k;
}

static struct rconn *rconn_new(struct qdeliver *qd, const struct cfg *cf,
                               char *key) {
  static struct tern_client_callbacks ccb;
  struct rconn *c = calloc(1, sizeof *c);
  if (!c)
    return NULL;
  tern_client_callbacks_init(&ccb);
  ccb.on_reply = rc_on_reply;
  ccb.on_ready = rc_on_ready;
  ccb.on_message_done = rc_on_message_done;
  ccb.on_body_ready = rc_on_body_ready;

  struct tern_client_options co;
  struct tern_client_config cc;
  tern_client_options_init(&co);
  tern_client_config_init(&cc);
  co.session = &cc;
  co.url = cf->forward_url;
  cc.ehlo_name = cf->hostname;
  /* BDAT where offered (RFC 3030): no dot-stuffing, and the end of the
   * message is a length, not a line the body could imitate */
  cc.chunking = true;
  co.callbacks = &ccb;
  co.ud = c;
  /* as the forwarding targets (forward_open): smtp:// is opportunistic
   * TLS, never verified; smtp+starttls:// and smtps:// verified unless
   * verify = no */
  co.tls_verify = cf->forward_verify && strncmp(cf->forward_url, "smtp://", 7);
  co.ca_file = cf->forward_ca_file;
  co.auth_user = cf->forward_auth_user;
  co.auth_password = cf->forward_auth_password;
  unsigned tmo = forward_timeout(cf);
  co.connect_timeout_ms = tmo;
  co.command_timeout_ms = tmo;
  co.data_timeout_ms = tmo;
  co.on_connect = rc_on_connect;
  co.on_close = rc_on_close;
  if (tern_client_new(&c->cl, qd->loop, &co) != 0) {
    free(c);
    return NULL;
  }
  c->qd = qd;
  c->key = key;
  c->lmtp = !strncmp(cf->forward_url, "lmtp:", 5);
  uv_timer_init(qd->loop, &c->idle);
  c->idle.data = c;
  c->timer_open = true;
  c->next = qd->conns;
  if (qd->conns)
    qd->conns->prev = c;
  qd->conns = c;
  qd->nconns++;
  return c;
}

/* Put j on a kept connection to the same next hop, or on a new one
 * (fresh: always a new one). */
static void relay_start(struct qjob *j, bool fresh) {
  struct qdeliver *qd = j->qd;
  const struct cfg *cf = &j->pol->cfg;
  char *key = conn_key(cf);
  struct rconn *c = NULL;
  if (!key) {
    fill(j, 451, "4.3.0", "Error: out of memory");
    qj_end(j);
    return;
  }
  url_host(cf->forward_url, j->remote, sizeof j->remote);
  for (struct rconn *k = qd->conns; k && !fresh && !c; k = k->next)
    if (!k->job && !k->closing && !k->closed && k->connected &&
        (tern_client_session_want(tern_client_get_session(k->cl)) &
         TERN_CLIENT_READY) &&
        !strcmp(k->key, key))
      c = k;
  if (c) {
    free(key);
    uv_timer_stop(&c->idle);
    c->job = j;
    j->conn = c;
    rj_send(c); /* else on_ready sends it */
    return;
  }
  c = rconn_new(qd, cf, key);
  if (!c) {
    free(key);
    fill(j, 451, "4.3.0", "Error: cannot create a client");
    qj_end(j);
    return;
  }
  c->job = j;
  j->conn = c;
  if (tern_client_connect(c->cl) != 0) /* on_close reports */
    rconn_close(c);
}

/* ---- the queue's deliver callback ------------------------------------------
 */

int qdeliver_new(struct qdeliver **out, uv_loop_t *loop, unsigned concurrency) {
  struct qdeliver *qd = calloc(1, sizeof *qd);
  if (!qd)
    return -ENOMEM;
  qd->loop = loop;
  qd->concurrency = concurrency ? concurrency : 20;
  g_qd = qd;
  *out = qd;
  return 0;
}

void qdeliver_job(struct tern_queue_job *job,
                  const struct tern_queue_job_info *info, void *ud) {
  struct qdeliver *qd = ud;
  struct qjob *j = qd->closing ? NULL : qj_new(qd, job, info);
  if (!j) {
    static const struct tern_reply oom = {451, "4.3.0", "Error: out of memory"};
    tern_queue_job_done(job, &oom);
    return;
  }
  const struct cfg *c = &j->pol->cfg;
  if (c->target == CFG_LMTP || c->target == CFG_SMTP)
    relay_start(j, false);
  else
    local_start(j);
}

void qdeliver_free(struct qdeliver *qd) {
  if (!qd)
    return;
  /* The queue is closed: a job still running was cancelled (its results
   * are not recorded, it is delivered again after a restart). Stop its
   * delivery and end it, as tern_queue_free wants. */
  for (struct qjob *j = qd->jobs, *n; j; j = n) {
    n = j->next;
    if (j->job)
      tern_queue_job_done(j->job, NULL);
    j->job = NULL;
    j->finished = true;
    if (j->dlv) {
      j->ops->abort(j->dlv);
      j->dlv = NULL;
    }
    if (!j->conn && !j->reading && !j->in_pump)
      qj_free(j);
    /* else: the connection's on_close or the read's callback frees it */
  }
  qd->closing = true; /* the last job or connection to go frees qd */
  if (g_qd == qd)
    g_qd = NULL;
  for (struct rconn *c = qd->conns; c; c = c->next)
    rconn_close(c);
  if (qd->nconns == 0 && !qd->jobs)
    free(qd);
}
