/*
 * The queue (include/tern/queue.h): opening (the store, the home sink,
 * every stored message loaded into the scheduler), closing in phases,
 * and the control calls (list, scan, flush, delete, hold). Submission is
 * in submit.c, the scheduler and jobs in sched.c, outcomes in outcome.c,
 * DSN composition in bounce.c.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"
#include "queue_int.h"

static void seterr(char *buf, size_t cap, const char *msg) {
  if (buf && cap)
    snprintf(buf, cap, "%s", msg);
}

/* ---- loading ------------------------------------------------------------- */

struct load_ctx {
  struct tern_queue *q;
  int err;
  size_t n;
};

static int ctl_update(struct tern_queue *q, const struct qstore_update *u,
                      enum tern_queue_event_type type, const char *detail);
static bool has_pending(const struct qmsg *m);

static int load_cb(const struct qstore_msg *sm, void *arg) {
  struct load_ctx *c = arg;
  struct qmsg *m = q_msg_from_store(sm);
  if (!m) {
    c->err = TERN_ENOMEM;
    return 1;
  }
  if (q_msg_find(c->q, m->id)) { /* already known */
    free(m);
    return 0;
  }
  if (!m->held && !has_pending(m)) {
    /* Every recipient done, not held, yet still there: no update of
     * ours leaves that (removal is in the same transaction), but an
     * operator's repair with sqlite3 may. Nothing to deliver: it goes. */
    struct qstore_update u = {
        .id = m->id, .held = -1, .warned = -1, .remove = true};
    ctl_update(c->q, &u, TERN_QEV_REMOVED, "nothing left to deliver");
    free(m);
    return 0;
  }
  q_msg_add(c->q, m);
  c->n++;
  return 0;
}

void q_load_one(struct tern_queue *q, const char *id) {
  struct load_ctx c = {q, 0, 0};
  int rc = qstore_list(q->store, id, load_cb, &c);
  if (rc == 0 && c.err)
    rc = c.err;
  if (rc != 0) {
    char d[128];
    snprintf(d, sizeof d,
             "cannot load the message (%s): scheduled after restart",
             tern_err_name(rc));
    q_event(q, TERN_QEV_ERROR, id, NULL, NULL, NULL, NULL, 0, d);
  }
}

void q_on_home(void *arg, struct qstore_msg *sm) {
  struct tern_queue *q = arg;
  atomic_fetch_sub(&q->homing, 1);
  if (q->close_phase)
    q_close_step(q);
  struct qmsg *m = q_msg_from_store(sm);
  char id[TERN_QUEUE_ID_MAX];
  memcpy(id, sm->id, sizeof id);
  qstore_msg_clear(sm);
  free(sm);
  if (!m) {
    q_event(q, TERN_QEV_ERROR, id, NULL, NULL, NULL, NULL, 0,
            "out of memory: message scheduled after restart");
    return;
  }
  if (q_msg_find(q, m->id)) {
    free(m);
    return;
  }
  q_msg_add(q, m);
  q_event(q, TERN_QEV_QUEUED, id, NULL, NULL, NULL, NULL, 0, "committed");
}

/* ---- opening and closing ------------------------------------------------- */

/* The store entered or left its disk-full mode (on the home loop, from
 * the store's writer thread through the home sink): the application
 * hears of it, or the only sign would be 452s to the clients. */
static void on_full(void *arg, bool full, uint64_t need) {
  struct tern_queue *q = arg;
  char d[512];
  if (full)
    snprintf(d, sizeof d,
             "disk full: new mail refused (452 4.3.1) until %llu MiB are "
             "free in %s",
             (unsigned long long)((need + (1u << 20) - 1) >> 20), q->dir);
  else
    snprintf(d, sizeof d, "disk space back: accepting mail again");
  q_event(q, full ? TERN_QEV_ERROR : TERN_QEV_RESUMED, "", NULL, NULL, NULL,
          NULL, 0, d);
}

int tern_queue_open(struct tern_queue **out, uv_loop_t *loop,
                    const struct tern_queue_options *opts) {
  if (!out)
    return TERN_EINVAL;
  *out = NULL;
  struct tern_queue_options o;
  tern_queue_options_init(&o);
  if (!loop || !opts || tern__copy_sized(&o, sizeof o, opts) != 0)
    return TERN_EINVAL;
  char *err = o.error;
  size_t cap = o.error_size;
  o.error = NULL;
  o.error_size = 0;
  const char *bad = NULL;
  if (!o.dir || !o.dir[0])
    bad = "no spool directory";
  else if (!o.deliver)
    bad = "no deliver callback";
  else if (!o.lifetime_s || !o.retry_min_s || o.retry_max_s < o.retry_min_s)
    bad = "bad lifetime or retry times";
  else if (!o.concurrency || !o.max_active || !o.max_job_rcpts)
    bad = "concurrency, max_active and max_job_rcpts must be at least 1";
  if (bad) {
    seterr(err, cap, bad);
    return TERN_EINVAL;
  }

  struct tern_queue *q = calloc(1, sizeof *q);
  if (!q)
    return TERN_ENOMEM;
  q->loop = loop;
  q->o = o;
  atomic_init(&q->closing, false);
  atomic_init(&q->homing, 0u);
  char host[256];
  if (!o.hostname || !o.hostname[0]) {
    if (gethostname(host, sizeof host) != 0 || !host[0])
      snprintf(host, sizeof host, "localhost");
    host[sizeof host - 1] = '\0';
  }
  q->dir = strdup(o.dir);
  q->hostname = strdup(o.hostname && o.hostname[0] ? o.hostname : host);
  q->postmaster = o.postmaster && o.postmaster[0] ? strdup(o.postmaster) : NULL;
  q->o.dir = q->dir;
  q->o.hostname = q->hostname;
  q->o.postmaster = q->postmaster;
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  q->rng = ((uint64_t)ts.tv_nsec << 20) ^ (uint64_t)ts.tv_sec ^
           ((uint64_t)getpid() << 40) ^ (uint64_t)(uintptr_t)q;
  if (!q->rng)
    q->rng = 1;
  int rc = TERN_ENOMEM;
  if (!q->dir || !q->hostname ||
      (o.postmaster && o.postmaster[0] && !q->postmaster)) {
    seterr(err, cap, "out of memory");
    goto fail;
  }
  rc = qstore_open(&q->store, q->dir, o.fsync, false, err, cap);
  if (rc != 0)
    goto fail;
  rc = qstore_sink_new(q->store, loop, &q->home);
  if (rc != 0) {
    seterr(err, cap, "cannot create the queue's mailbox");
    goto fail;
  }
  qstore_set_notify(q->store, q->home, on_full, q);
  uv_timer_init(loop, &q->timer);
  uv_timer_init(loop, &q->close_timer);
  uv_idle_init(loop, &q->kick);
  uv_timer_init(loop, &q->redo_timer);
  q->timer.data = q->close_timer.data = q->kick.data = q->redo_timer.data = q;
  q->handles_open = 4;
  /* The timer is armed as messages load, but fires only once the loop
   * runs: delivery never starts inside this call. */
  struct load_ctx c = {q, 0, 0};
  rc = qstore_list(q->store, NULL, load_cb, &c);
  if (rc == 0)
    rc = c.err;
  if (rc != 0) {
    seterr(err, cap,
           rc == TERN_ENOMEM ? "out of memory loading the queue"
                             : "cannot read the queue");
    /* The handles are closed the normal way; `done` is left empty. */
    q_sched_free(q);
    tern_queue_close(q, 0, NULL, NULL);
    q->free_when_closed = true;
    return rc;
  }
  *out = q;
  return 0;
fail:
  if (q->store)
    qstore_close(q->store);
  free(q->dir);
  free(q->hostname);
  free(q->postmaster);
  free(q);
  return rc;
}

/* Nothing of the store's is on its way to the home sink. */
static bool idle(struct tern_queue *q) {
  return q->pending == 0 && atomic_load(&q->homing) == 0;
}

static void on_handle_closed(uv_handle_t *h) {
  struct tern_queue *q = h->data;
  if (--q->handles_open > 0)
    return;
  qstore_close(q->store);
  q->store = NULL;
  q->close_phase = 4;
  if (q->free_when_closed) { /* freed early, or a failed open: no done */
    tern_queue_free(q);
    return;
  }
  /* done may free the queue: nothing of q is touched after it */
  if (q->close_done)
    q->close_done(q->close_arg);
}

/* Phase 3 runs from the queue's own timer, never from inside a store
 * completion: the home sink is freed there. */
static void on_close_timer(uv_timer_t *t) {
  struct tern_queue *q = t->data;
  if (q->close_phase == 1) { /* the jobs' time is up */
    q_cancel_running(q);
    q->close_phase = 2;
  }
  if (q->close_phase == 2 && idle(q)) {
    q->close_phase = 3;
    qstore_set_notify(q->store, NULL, NULL, NULL);
    qstore_sink_free(q->home);
    q->home = NULL;
    uv_close((uv_handle_t *)&q->timer, on_handle_closed);
    uv_close((uv_handle_t *)&q->kick, on_handle_closed);
    q_redo_free(q);
    uv_close((uv_handle_t *)&q->redo_timer, on_handle_closed);
    uv_close((uv_handle_t *)&q->close_timer, on_handle_closed);
  }
}

void q_close_step(struct tern_queue *q) {
  if (q->close_phase == 1 && q->active == 0)
    q->close_phase = 2;
  if (q->close_phase == 2 && idle(q))
    uv_timer_start(&q->close_timer, on_close_timer, 0, 0);
}

void tern_queue_close(struct tern_queue *q, unsigned timeout_ms,
                      void (*done)(void *arg), void *arg) {
  if (!q || q->close_phase)
    return;
  atomic_store(&q->closing, true);
  q->close_done = done;
  q->close_arg = arg;
  q->close_phase = 1;
  q_timer_arm(q); /* stops it */
  uv_timer_start(&q->close_timer, on_close_timer, timeout_ms, 0);
  q_close_step(q);
}

void tern_queue_free(struct tern_queue *q) {
  if (!q)
    return;
  if (q->close_phase && q->close_phase < 4) {
    /* Freed before closing finished: finish it, then free. */
    q->free_when_closed = true;
    q->close_done = NULL;
    return;
  }
  q_sched_free(q);
  if (q->store) /* never opened a loop's handles (failed open) */
    qstore_close(q->store);
  free(q->dir);
  free(q->hostname);
  free(q->postmaster);
  free(q);
}

/* ---- looking ------------------------------------------------------------- */

struct list_ctx {
  const struct tern_queue *q;
  tern_queue_list_fn fn;
  void *arg;
  struct tern_queue_list_rcpt *buf;
  size_t cap;
  int err;
};

static int list_cb(const struct qstore_msg *m, void *arg) {
  struct list_ctx *c = arg;
  if (m->nrcpts > c->cap) {
    struct tern_queue_list_rcpt *b = realloc(c->buf, m->nrcpts * sizeof *b);
    if (!b) {
      c->err = TERN_ENOMEM;
      return 1;
    }
    c->buf = b;
    c->cap = m->nrcpts;
  }
  const struct qmsg *qm = c->q ? q_msg_find(c->q, m->id) : NULL;
  for (size_t i = 0; i < m->nrcpts; i++) {
    const struct qstore_rcpt *s = &m->rcpts[i];
    enum tern_queue_rcpt_state st = (enum tern_queue_rcpt_state)s->state;
    if (qm && i < qm->nrcpts && qm->rcpts[i].idx == s->idx &&
        qm->rcpts[i].busy == QB_RUNNING)
      st = TERN_QRS_ACTIVE;
    c->buf[i] = (struct tern_queue_list_rcpt){
        .addr = s->addr ? s->addr : "",
        .dest = s->dest ? s->dest : "",
        .state = st,
        .attempts = s->attempts,
        /* A held message is not tried: no retry time to show (the
         * stored one is kept for its release). */
        .next_try = m->held ? 0 : (time_t)s->next_try,
        .last_code = s->last_code,
        .last_reply = s->last_reply ? s->last_reply : "",
    };
  }
  struct tern_queue_list_msg lm = {
      .id = m->id,
      .arrival = (time_t)m->arrival,
      .size = m->size,
      .from = m->from ? m->from : "",
      .held = m->held,
      .is_bounce = m->is_bounce,
      .nrcpts = m->nrcpts,
      .rcpts = c->buf,
  };
  return c->fn(&lm, c->arg);
}

static int list_store(const struct tern_queue *q, struct qstore *s,
                      const char *id, tern_queue_list_fn fn, void *arg) {
  struct list_ctx c = {q, fn, arg, NULL, 0, 0};
  int rc = qstore_list(s, id, list_cb, &c);
  free(c.buf);
  return c.err ? c.err : rc;
}

int tern_queue_list(struct tern_queue *q, const char *id, tern_queue_list_fn fn,
                    void *arg) {
  if (!q || !fn || !q->store)
    return TERN_EINVAL;
  return list_store(q, q->store, id, fn, arg);
}

int tern_queue_scan(const char *dir, const char *id, tern_queue_list_fn fn,
                    void *arg, char *error, size_t error_size) {
  if (!dir || !fn)
    return TERN_EINVAL;
  struct qstore *s;
  int rc = qstore_open(&s, dir, false, true, error, error_size);
  if (rc != 0)
    return rc;
  rc = list_store(NULL, s, id, fn, arg);
  qstore_close(s);
  return rc;
}

int tern_queue_scan_body(const char *dir, const char *id,
                         int (*cb)(void *arg, const char *buf, size_t len),
                         void *arg, char *error, size_t error_size) {
  if (!dir || !id || !cb)
    return TERN_EINVAL;
  struct qstore *s;
  int rc = qstore_open(&s, dir, false, true, error, error_size);
  if (rc != 0)
    return rc;
  rc = qstore_body(s, id, cb, arg);
  qstore_close(s);
  return rc;
}

/* ---- steering ------------------------------------------------------------ */

/* Send a control update; the event (if detail) once it is durable. */
static int ctl_update(struct tern_queue *q, const struct qstore_update *u,
                      enum tern_queue_event_type type, const char *detail) {
  struct q_upd_events ev;
  memset(&ev, 0, sizeof ev);
  ev.type = type;
  ev.detail = detail;
  return q_update(q, u, &ev);
}

static bool has_pending(const struct qmsg *m) {
  for (size_t i = 0; i < m->nrcpts; i++)
    if (m->rcpts[i].state == QS_QUEUED || m->rcpts[i].state == QS_DEFERRED)
      return true;
  return false;
}

static struct qmsg *ctl_find(struct tern_queue *q, const char *id) {
  if (!q || !id || q->close_phase)
    return NULL;
  return q_msg_find(q, id);
}

static void flush_one(struct tern_queue *q, struct qmsg *m) {
  if (m->held)
    return;
  for (size_t i = 0; i < m->nrcpts; i++) {
    struct qrcpt *r = &m->rcpts[i];
    if ((r->state == QS_QUEUED || r->state == QS_DEFERRED) &&
        r->busy == QB_IDLE)
      r->next_try = 0; /* in memory only: a restart keeps the schedule */
    /* and its destination's suspension ends (Postfix's postqueue -f):
     * otherwise the mail is due but its dead next hop's wait holds it */
    if ((r->state == QS_QUEUED || r->state == QS_DEFERRED) &&
        r->busy != QB_RUNNING)
      q_dest_flush(q, r->dest);
  }
  q_msg_resched(q, m);
}

int tern_queue_flush(struct tern_queue *q, const char *id) {
  if (!q)
    return TERN_EINVAL;
  if (id) {
    struct qmsg *m = ctl_find(q, id);
    if (!m)
      return TERN_ENOENT;
    flush_one(q, m);
    return 0;
  }
  if (q->close_phase)
    return 0;
  for (size_t i = 0; i < q->table_size; i++)
    for (struct qmsg *m = q->table[i]; m; m = m->hnext)
      flush_one(q, m);
  return 0;
}

int tern_queue_delete(struct tern_queue *q, const char *id) {
  struct qmsg *m = ctl_find(q, id);
  if (!m)
    return TERN_ENOENT;
  struct qstore_update u = {
      .id = m->id, .held = -1, .warned = -1, .remove = true};
  int rc = ctl_update(q, &u, TERN_QEV_DELETED, "deleted by request");
  if (rc == 0)
    q_msg_forget(q, m); /* jobs in flight end unrecorded */
  return rc;
}

int tern_queue_hold(struct tern_queue *q, const char *id, bool hold) {
  struct qmsg *m = ctl_find(q, id);
  if (!m)
    return TERN_ENOENT;
  struct qstore_update u = {.id = m->id, .held = hold ? 1 : 0, .warned = -1};
  if (!hold && !has_pending(m)) {
    /* Released with nothing left to deliver (a bounce kept for the
     * postmaster): the operator has seen it; it goes. */
    u.held = -1;
    u.remove = true;
    int rc = ctl_update(q, &u, TERN_QEV_REMOVED,
                        "released with nothing left to deliver");
    if (rc == 0)
      q_msg_forget(q, m);
    return rc;
  }
  int rc = ctl_update(q, &u, TERN_QEV_ERROR, NULL);
  if (rc != 0)
    return rc;
  m->held = hold;
  q_msg_resched(q, m);
  return 0;
}

size_t tern_queue_count(const struct tern_queue *q) {
  return q ? q->nmsgs : 0;
}
