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
 *                  `concurrency` of them per next hop, 10 s) for the
 *                  next. MAIL, the RCPTs and DATA go out as one
 *                  PIPELINING group when the next hop offers it. A kept
 *                  connection that turns out dead before the next hop
 *                  said anything about the message is replaced once, at
 *                  once.
 *
 * Which of them a job takes is its destination's (info->dest, the
 * names of docs/decisions/0021):
 *
 *   local, relay   the [delivery] target, as above ("relay" is what
 *                  Step 7 stored for the lmtp and smtp targets)
 *   mx:DOMAIN      a client with the URL "mx:DOMAIN": the domain's MX
 *                  hosts through the loop's resolver, [outbound] and
 *                  the domain's [tls_policy]; a message with REQUIRETLS
 *                  only over verified TLS
 *   url:URL        a [routes] next hop, without AUTH
 *   smarthost      the [delivery] relay URL with relay_auth_*
 *
 * all but the local targets over the same kept connections, keyed by
 * URL, AUTH user, TLS policy and REQUIRETLS. A connection that cannot be
 * made fails the job's recipients with the client's reply for it
 * (tern_client_failure_reply): permanent (null MX 5.1.10, no such
 * domain 5.1.2, REQUIRETLS impossible 5.7.30) bounces them at once;
 * temporary suspends the destination (tern_queue_job_unreachable).
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
#include <tern/resolve.h>

#include "deliver.h"
#include "log.h"
#include "serve.h"

#define IDLE_MS 10000u /* a kept connection unused this long is closed */
#define IDLE_ALL 256u  /* kept connections in all, whatever the hops */

/* Where a job's message goes and how: made from its destination and
 * the configuration it started with (its strings are the job's policy's
 * or the job's own, alive as long as the job). */
struct hop {
  const char *url;
  const char *ehlo;
  const char *auth_user, *auth_password;
  bool verify;
  const char *ca_file;
  unsigned connect_ms, command_ms, data_ms;
  const char *bind4, *bind6;
  bool mx; /* an mx: URL: the resolver, the policy, REQUIRETLS */
  enum tern_tls_policy policy;
  bool requiretls;
  unsigned mx_port;
};

/* The loop's resolver, shared by the connections made with it: a reload
 * that changes [outbound]'s resolver settings puts a new one in place
 * for new connections, and the old one goes with its last connection. */
struct qresolver {
  struct tern_resolver *r;
  unsigned refs;
};

/* What the log line of an attempt says about its connection
 * (tern_client_conn_info), copied: the connection may be gone or
 * carrying another message when the line is written. */
struct conn_facts {
  bool set;
  char host[256], addr[64], tls[24], cipher[80], verified[16], policy[24];
  char failure[240];
  unsigned tried;
};

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
  /* relay, mx:, url:, smarthost */
  char *dest;
  struct hop hop;
  struct conn_facts facts;
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
  bool mx;
  char err[300]; /* why the connection failed */
  /* a failed connect's reply for the senders (mx: URLs) */
  bool fail_set, fail_perm;
  int fail_code;
  char fail_enh[16], fail_text[300];
  struct qresolver *res; /* a reference, or NULL */
};

struct qdeliver {
  uv_loop_t *loop;
  unsigned concurrency;
  struct qresolver *res; /* the current one (a reference), or NULL */
  struct qjob *jobs;
  struct rconn *conns;
  unsigned nconns, nidle;
  bool closing;
  struct sockaddr_storage *self; /* qdeliver_set_self_addrs */
  size_t nself;
};

static void rj_pump(struct qjob *j);
static void rconn_close(struct rconn *c);
static void qj_free(struct qjob *j);

/* The job being handed back: the queue reports its recipients' events
 * from inside tern_queue_job_done, and their log lines want the
 * message's arrival (delay=), which events do not carry. Home loop. */
static const char *g_cur_id;
static time_t g_cur_arrival;
static const struct conn_facts *g_cur_facts;
static const char *g_cur_dest;

time_t qdeliver_arrival(const char *id) {
  return g_cur_id && id && !strcmp(g_cur_id, id) ? g_cur_arrival : 0;
}

static struct qdeliver *g_qd;

const char *qdeliver_dest(const char *id) {
  if (g_cur_id && id && !strcmp(g_cur_id, id))
    return g_cur_dest;
  /* a running job cancelled at shutdown: its events come from the queue
   * with no hand-back of ours around them */
  for (struct qjob *j = g_qd && id ? g_qd->jobs : NULL; j; j = j->next)
    if (j->job && !strcmp(j->id, id))
      return j->dest;
  return NULL;
}

/* Values from the connection are the peer's or the DNS's: log_line_kv
 * quotes and escapes them. Empty ones are left out. */
static void kv(struct log_line *l, const char *key, const char *v) {
  if (v && v[0])
    log_line_kv(l, key, v);
}

void qdeliver_log_fields(const char *id, struct log_line *l) {
  if (!g_cur_id || !id || strcmp(g_cur_id, id))
    return;
  if (g_cur_dest && strcmp(g_cur_dest, "local"))
    kv(l, "dest", g_cur_dest);
  const struct conn_facts *f = g_cur_facts;
  if (!f)
    return;
  kv(l, "mx", f->host);
  kv(l, "addr", f->addr);
  if (f->tried > 1) /* the ones before it failed: refused, 4xx... */
    log_line_kv(l, "tried", LOG_U(f->tried));
  log_line_kv(l, "tls", f->tls[0] ? f->tls : "none");
  kv(l, "cipher", f->cipher);
  if (f->tls[0])
    log_line_kv(l, "verified", f->verified[0] ? f->verified : "no");
  kv(l, "policy", f->policy);
  kv(l, "tls_failure", f->failure);
}

/* g_qd: the one qdeliver of the process (tern serve opens one queue),
 * for qdeliver_running() and qdeliver_dest(). */

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
    g_cur_facts = j->facts.set ? &j->facts : NULL;
    g_cur_dest = j->dest;
    const char *remote = j->remote[0] ? j->remote : NULL;
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
    g_cur_facts = NULL;
    g_cur_dest = NULL;
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
  free(j->dest);
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
  j->dest = strdup(info->dest ? info->dest : "local");
  j->next = qd->jobs;
  if (qd->jobs)
    qd->jobs->prev = j;
  qd->jobs = j;
  bool ok = j->from && j->rcpts && j->corcpt && j->crcpts && j->res && j->acc &&
            (!info->envid || j->envid) && j->dest;
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

static void copy_str(char *out, size_t cap, const char *v) {
  snprintf(out, cap, "%s", v ? v : "");
}

/* Where the connection went and how it is protected, for the job's log
 * lines; for an mx: URL the MX host that took it is also the remote MTA
 * its results name. */
static void rj_note_conn(struct qjob *j, struct rconn *c, bool up) {
  const struct tern_client_conn_info *ci = tern_client_conn_info(c->cl);
  if (!ci || !ci->host)
    return;
  struct conn_facts *f = &j->facts;
  f->set = true;
  copy_str(f->host, sizeof f->host, ci->host);
  copy_str(f->addr, sizeof f->addr, ci->addr);
  copy_str(f->tls, sizeof f->tls, ci->tls_version);
  copy_str(f->cipher, sizeof f->cipher, ci->tls_cipher);
  copy_str(f->verified, sizeof f->verified, ci->verified);
  copy_str(f->policy, sizeof f->policy, ci->policy);
  copy_str(f->failure, sizeof f->failure, ci->policy_failure);
  f->tried = ci->hosts_tried;
  /* a host that only failed is no remote MTA of the result (the reply
   * names it): relay=none, no Remote-MTA in the DSN */
  if (c->mx && up)
    copy_str(j->remote, sizeof j->remote, ci->host);
}

/* The connection is ready and carries its job: send the envelope (MAIL,
 * RCPTs, DATA: one group with PIPELINING). */
static void rj_send(struct rconn *c) {
  struct qjob *j = c->job;
  struct tern_client_session *s = tern_client_get_session(c->cl);
  if (!j || j->sent || !(tern_client_session_want(s) & TERN_CLIENT_READY))
    return;
  j->sent = true;
  rj_note_conn(j, c, true); /* ready: the session is up */
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
    if (r->code / 100 == 2) {
      j->acc[j->nacc++] = index;
    } else if (r->code == 552) {
      /* RFC 5321 §4.5.3.1.10: 552 to RCPT ("too many recipients", or a
       * full mailbox) is to be taken as temporary, 452, as Postfix's
       * client does: the recipient is tried again, not bounced */
      char enh[16] = "";
      if (r->enhanced && r->enhanced[0] == '5' &&
          strlen(r->enhanced) < sizeof enh) {
        memcpy(enh, r->enhanced, strlen(r->enhanced) + 1);
        enh[0] = '4';
      }
      set_st(&j->res[index], 452, enh[0] ? enh : NULL, t);
    } else {
      set_st(&j->res[index], r->code, r->enhanced, t);
    }
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
  struct tern_reply r = {0, NULL, NULL};
  if (c->mx) {
    /* what the senders are told: null MX, no such domain, no host, TLS
     * or REQUIRETLS that cannot be met (the client knows which) */
    c->fail_perm = tern_client_failure_reply(cl, &r);
    if (r.code >= 400 && r.code <= 599) {
      c->fail_set = true;
      c->fail_code = r.code;
      snprintf(c->fail_enh, sizeof c->fail_enh, "%s",
               r.enhanced ? r.enhanced : "");
      snprintf(c->fail_text, sizeof c->fail_text, "%s",
               r.text ? r.text : c->err);
      c->fail_perm = r.code / 100 == 5;
    }
  }
}

static void qres_put(struct qresolver *r) {
  if (r && --r->refs == 0) {
    tern_resolver_free(r->r);
    free(r);
  }
}

static void rc_timer_closed(uv_handle_t *h) {
  struct rconn *c = h->data;
  struct qdeliver *qd = c->qd;
  free(c->key);
  qres_put(c->res);
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
    if (!j->facts.set)
      rj_note_conn(j, c, c->connected); /* else the last host tried */
    if (c->fail_set && !c->connected) {
      /* a permanent failure (null MX...) bounces the recipients now; a
       * temporary one is the destination's, as for a dead relay */
      fill(j, c->fail_code, c->fail_enh[0] ? c->fail_enh : NULL, c->fail_text);
      if (!c->fail_perm && !j->read_error)
        j->unreachable = true;
      qj_end(j);
    } else {
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
  unsigned idle = 0, same = 0;
  for (struct rconn *k = qd->conns; k; k = k->next)
    if (!k->job && !k->closing && k != c) {
      idle++;
      same += !strcmp(k->key, c->key);
    }
  if (qd->closing || same >= qd->concurrency || idle >= IDLE_ALL ||
      (tern_client_session_want(tern_client_get_session(c->cl)) &
       TERN_CLIENT_WANT_CLOSE)) {
    rconn_close(c);
    return;
  }
  uv_timer_start(&c->idle, rc_idle_timeout, IDLE_MS, 0);
}

/* The key a connection is reused by: what makes two connections the
 * same (a reload may change any of it). */
static char *conn_key(const struct hop *h) {
  char *k = NULL;
  if (asprintf(&k, "%s %s %d%d%d %s %s", h->url,
               h->auth_user ? h->auth_user : "", (int)h->policy,
               (int)h->requiretls, (int)h->verify, h->ehlo ? h->ehlo : "",
               h->ca_file ? h->ca_file : "") < 0)
    return NULL;
  return k;
}

static struct rconn *rconn_new(struct qdeliver *qd, const struct hop *h,
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
  co.url = h->url;
  cc.ehlo_name = h->ehlo;
  /* BDAT where offered (RFC 3030): no dot-stuffing, and the end of the
   * message is a length, not a line the body could imitate */
  cc.chunking = true;
  co.callbacks = &ccb;
  co.ud = c;
  co.tls_verify = h->verify;
  co.ca_file = h->ca_file;
  co.auth_user = h->auth_user;
  co.auth_password = h->auth_password;
  co.connect_timeout_ms = h->connect_ms;
  co.command_timeout_ms = h->command_ms;
  co.data_timeout_ms = h->data_ms;
  co.on_connect = rc_on_connect;
  co.on_close = rc_on_close;
  co.bind_addr = h->bind4;
  co.bind_addr6 = h->bind6;
  if (h->mx) {
    co.tls_policy = h->policy;
    co.require_verified_tls = h->requiretls;
    co.mx_port = h->mx_port;
    co.resolver = qd->res ? qd->res->r : NULL;
    co.self_addrs = qd->self;
    co.nself_addrs = qd->nself;
  } else if (h->requiretls) {
    /* RFC 8689 §4.2: the next hop's certificate verified, or nothing */
    cc.starttls = TERN_STARTTLS_REQUIRED;
  }
  if (tern_client_new(&c->cl, qd->loop, &co) != 0) {
    free(c);
    return NULL;
  }
  c->qd = qd;
  c->key = key;
  c->lmtp = !strncmp(h->url, "lmtp:", 5);
  c->mx = h->mx;
  if (h->mx && qd->res) {
    c->res = qd->res;
    c->res->refs++;
  }
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
  const struct hop *h = &j->hop;
  char *key = conn_key(h);
  struct rconn *c = NULL;
  if (!key) {
    fill(j, 451, "4.3.0", "Error: out of memory");
    qj_end(j);
    return;
  }
  if (h->mx) /* the MX host, once one takes the connection */
    j->remote[0] = '\0';
  else
    url_host(h->url, j->remote, sizeof j->remote);
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
  c = rconn_new(qd, h, key);
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

int qdeliver_resolver_make(uv_loop_t *loop, const struct cfg *c,
                           struct tern_resolver **out, char *err, size_t cap) {
  struct tern_resolver_options o;
  tern_resolver_options_init(&o);
  o.forward = c->out.resolver;
  o.trust_anchor_file = c->out.trust_anchor;
  o.dnssec = c->out.dnssec;
  o.mta_sts = c->out.mta_sts;
  o.mta_sts_ca_file = c->out.mta_sts_ca_file;
  /* MTA-STS policies outlive a restart (RFC 8461 §5.1: a policy blocked
   * after a restart must not downgrade the domain); one file shared by
   * every loop's resolver, next to the queue it serves */
  char cache[4096];
  if (c->queue_dir &&
      snprintf(cache, sizeof cache, "%s/mta-sts.cache", c->queue_dir) <
          (int)sizeof cache)
    o.mta_sts_cache_file = cache;
  *out = NULL;
  int r = tern_resolver_new(out, loop, &o);
  if (r) {
    /* on failure there is no resolver to ask tern_resolver_last_error */
    if (r == TERN_EIO)
      snprintf(err, cap,
               "[outbound] resolver: %s or /etc/resolv.conf did not load",
               c->out.trust_anchor ? c->out.trust_anchor : "the trust anchor");
    else if (r == TERN_EINVAL)
      snprintf(err, cap, "[outbound] resolver: bad address \"%s\"",
               c->out.resolver ? c->out.resolver : "");
    else
      snprintf(err, cap, "[outbound] resolver: %s", tern_strerror(r));
    *out = NULL;
    return -1;
  }
  return 0;
}

int qdeliver_set_self_addrs(struct qdeliver *qd,
                            const struct sockaddr_storage *a, size_t n) {
  struct sockaddr_storage *c = NULL;
  if (n && !(c = calloc(n, sizeof *c)))
    return -1;
  if (n)
    memcpy(c, a, n * sizeof *c);
  free(qd->self);
  qd->self = c;
  qd->nself = n;
  return 0;
}

void qdeliver_set_resolver(struct qdeliver *qd, struct tern_resolver *r) {
  struct qresolver *n = NULL;
  if (r && !(n = calloc(1, sizeof *n))) {
    tern_resolver_free(r); /* the current one stays */
    return;
  }
  if (n) {
    n->r = r;
    n->refs = 1;
  }
  qres_put(qd->res);
  qd->res = n;
}

/* [outbound]'s part of a hop: EHLO name, source addresses, timeouts
 * (the final reply after the data waits twice the command timeout, as
 * RFC 5321 §4.5.3.2.6 gives it 10 minutes to 5). */
static void hop_outbound(struct hop *h, const struct cfg *c) {
  h->ehlo = c->out.helo ? c->out.helo : c->hostname;
  h->bind4 = c->out.bind;
  h->bind6 = c->out.bind6;
  h->connect_ms = c->out.connect_timeout_ms;
  h->command_ms = c->out.timeout_ms;
  h->data_ms = c->out.timeout_ms > UINT32_MAX / 2 ? c->out.timeout_ms
                                                  : 2 * c->out.timeout_ms;
}

/* The next hop of destination j->dest under the job's configuration.
 * Returns 0, 1 for the local targets (local_start), or -1 with every
 * recipient's result set (the destination cannot be used now). */
static int hop_make(struct qjob *j, const struct tern_queue_job_info *info) {
  const struct cfg *c = &j->pol->cfg;
  struct hop *h = &j->hop;
  const char *d = j->dest;
  memset(h, 0, sizeof *h);
  h->requiretls = info->requiretls;
  if (!strcmp(d, "local") || !strcmp(d, "relay")) {
    if (c->target == CFG_MAILDIR || c->target == CFG_PIPE)
      return 1;
    if (c->target == CFG_MX || !c->forward_url) {
      /* stored for a local target the configuration no longer has */
      fill(j, 451, "4.3.5",
           "Error: no local delivery configured ([delivery] target)");
      return -1;
    }
    /* as the forwarding targets (forward_open): smtp:// is
     * opportunistic TLS, never verified; smtp+starttls:// and smtps://
     * verified unless verify = no */
    h->url = c->forward_url;
    h->ehlo = c->hostname;
    h->verify = c->forward_verify && strncmp(c->forward_url, "smtp://", 7);
    h->ca_file = c->forward_ca_file;
    h->auth_user = c->forward_auth_user;
    h->auth_password = c->forward_auth_password;
    h->connect_ms = h->command_ms = h->data_ms = forward_timeout(c);
    h->requiretls = false; /* forward_refusal checks TLS, as before */
    return 0;
  }
  hop_outbound(h, c);
  if (!strncmp(d, "mx:", 3) && d[3]) {
    const char *dom = d + 3;
    if (!j->qd->res) {
      /* mx: mail queued under another configuration than this one (the
       * daemon makes the resolver only when mail can leave): one from
       * this job's [outbound], kept for the next, never the system's
       * defaults behind the configuration's back */
      struct tern_resolver *r;
      char err[300];
      if (qdeliver_resolver_make(j->qd->loop, c, &r, err, sizeof err) != 0) {
        fill(j, 451, "4.3.5", err);
        return -1;
      }
      qdeliver_set_resolver(j->qd, r);
      if (!j->qd->res) {
        fill(j, 451, "4.3.0", "Error: out of memory");
        return -1;
      }
    }
    h->url = d;
    h->mx = true;
    h->policy = cfg_tls_policy_for(c, dom, strlen(dom));
    h->ca_file = c->out.ca_file;
    h->mx_port = c->out.port;
    h->verify = true; /* the policy decides what is checked */
    return 0;
  }
  if (!strncmp(d, "url:", 4) && d[4]) {
    h->url = d + 4;
    h->verify = strncmp(h->url, "smtp://", 7) != 0 || h->requiretls;
    h->ca_file = c->out.ca_file;
    return 0;
  }
  if (!strcmp(d, "smarthost")) {
    if (!c->relay_url) {
      fill(j, 451, "4.3.5",
           "Error: no [delivery] relay URL configured for this mail");
      return -1;
    }
    h->url = c->relay_url;
    h->verify =
        (c->relay_verify && strncmp(h->url, "smtp://", 7)) || h->requiretls;
    h->ca_file = c->relay_ca_file;
    h->auth_user = c->relay_auth_user;
    h->auth_password = c->relay_auth_password;
    return 0;
  }
  fill(j, 451, "4.3.5", "Error: unknown destination");
  return -1;
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
  switch (hop_make(j, info)) {
  case 0:
    relay_start(j, false);
    break;
  case 1:
    local_start(j);
    break;
  default:
    qj_end(j);
    break;
  }
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
  qres_put(qd->res);  /* connections keep theirs */
  qd->res = NULL;
  free(qd->self); /* each client has its copy */
  qd->self = NULL;
  qd->nself = 0;
  if (g_qd == qd)
    g_qd = NULL;
  for (struct rconn *c = qd->conns; c; c = c->next)
    rconn_close(c);
  if (qd->nconns == 0 && !qd->jobs)
    free(qd);
}
