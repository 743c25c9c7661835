/*
 * The scheduler (queue_int.h describes the model): the id table, the
 * heap of waiting messages and its timer, destinations with their FIFOs
 * of ready jobs, the pump that starts jobs under the limits, and the job
 * calls of tern/queue.h (read, result, done, cancelled). What a finished
 * job means for the store (states, retries, DSNs) is in outcome.c.
 */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "queue_int.h"

/* ---- clock and randomness ------------------------------------------------ */

static int64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Wall-clock seconds from the same clock as now_ms(): time() reads a
 * coarse clock that can lag a few milliseconds behind, and a retry due
 * "at X+1" computed from it could look due already to the timer. */
int64_t q_now_s(void) { return now_ms() / 1000; }

/* xorshift64*: jitter and MIME boundaries need spread, not secrecy. */
uint64_t q_rand(struct tern_queue *q) {
  uint64_t x = q->rng;
  x ^= x >> 12;
  x ^= x << 25;
  x ^= x >> 27;
  q->rng = x;
  return x * 0x2545F4914F6CDD1DULL;
}

static void event(struct tern_queue *q, enum tern_queue_event_type type,
                  const char *id, const char *rcpt, const struct tern_reply *r,
                  const char *remote, const char *bounce_id, time_t retry_at,
                  const char *detail, bool expired) {
  if (!q->o.on_event)
    return;
  struct tern_queue_event ev = {
      .type = type,
      .id = id ? id : "",
      .rcpt = rcpt,
      .reply = r,
      .remote_mta = remote,
      .bounce_id = bounce_id,
      .retry_at = retry_at,
      .detail = detail ? detail : "",
      .expired = expired,
  };
  q->o.on_event(&ev, q->o.ud);
}

void q_event(struct tern_queue *q, enum tern_queue_event_type type,
             const char *id, const char *rcpt, const struct tern_reply *r,
             const char *remote, const char *bounce_id, time_t retry_at,
             const char *detail) {
  event(q, type, id, rcpt, r, remote, bounce_id, retry_at, detail, false);
}

void q_event_ex(struct tern_queue *q, enum tern_queue_event_type type,
                const char *id, const char *rcpt, const struct tern_reply *r,
                const char *remote, const char *detail, bool expired) {
  event(q, type, id, rcpt, r, remote, NULL, 0, detail, expired);
}

/* ---- messages in memory -------------------------------------------------- */

static size_t slen(const char *s) { return s ? strlen(s) + 1 : 0; }

static const char *put(char **p, const char *s) {
  if (!s)
    return NULL;
  size_t n = strlen(s) + 1;
  memcpy(*p, s, n);
  const char *r = *p;
  *p += n;
  return r;
}

/* One allocation per message (struct, recipients, strings): 100,000
 * messages load in well under a second and free in one call each. */
struct qmsg *q_msg_from_store(const struct qstore_msg *s) {
  size_t strs = slen(s->from ? s->from : "") + slen(s->envid) + slen(s->client);
  for (size_t i = 0; i < s->nrcpts; i++)
    strs += slen(s->rcpts[i].addr) + slen(s->rcpts[i].orcpt) +
            slen(s->rcpts[i].dest ? s->rcpts[i].dest : "local");
  if (s->nrcpts >
      (SIZE_MAX - sizeof(struct qmsg) - strs) / sizeof(struct qrcpt))
    return NULL;
  struct qmsg *m = malloc(sizeof *m + s->nrcpts * sizeof(struct qrcpt) + strs);
  if (!m)
    return NULL;
  memset(m, 0, sizeof *m);
  m->rcpts = (struct qrcpt *)(m + 1);
  char *p = (char *)(m->rcpts + s->nrcpts);
  memcpy(m->id, s->id, sizeof m->id);
  m->id[TERN_QUEUE_ID_MAX - 1] = '\0';
  m->arrival = s->arrival;
  m->from = put(&p, s->from ? s->from : "");
  m->envid = put(&p, s->envid);
  m->client = put(&p, s->client);
  m->size = s->size;
  m->body = s->body;
  m->ret = s->ret;
  m->smtputf8 = s->smtputf8;
  m->requiretls = s->requiretls;
  m->held = s->held;
  m->is_bounce = s->is_bounce;
  m->warned = s->warned;
  m->nchunks = s->nchunks;
  m->heap_i = Q_NOHEAP;
  m->nrcpts = s->nrcpts;
  for (size_t i = 0; i < s->nrcpts; i++) {
    const struct qstore_rcpt *sr = &s->rcpts[i];
    struct qrcpt *r = &m->rcpts[i];
    r->addr = put(&p, sr->addr ? sr->addr : "");
    r->orcpt = put(&p, sr->orcpt);
    r->dest = put(&p, sr->dest ? sr->dest : "local");
    r->notify = sr->notify;
    r->idx = sr->idx;
    r->state = (uint8_t)sr->state;
    r->busy = QB_IDLE;
    r->attempts = sr->attempts;
    r->next_try = sr->next_try;
  }
  return m;
}

static size_t id_hash(const char *id, size_t mask) {
  uint64_t h = 1469598103934665603ULL; /* FNV-1a */
  for (; *id; id++)
    h = (h ^ (unsigned char)*id) * 1099511628211ULL;
  return (size_t)(h ^ (h >> 29)) & mask;
}

static bool table_grow(struct tern_queue *q) {
  size_t n = q->table_size ? q->table_size * 2 : 1024;
  struct qmsg **t = calloc(n, sizeof *t);
  if (!t)
    return false;
  for (size_t i = 0; i < q->table_size; i++) {
    struct qmsg *m = q->table[i];
    while (m) {
      struct qmsg *next = m->hnext;
      size_t h = id_hash(m->id, n - 1);
      m->hnext = t[h];
      t[h] = m;
      m = next;
    }
  }
  free(q->table);
  q->table = t;
  q->table_size = n;
  return true;
}

struct qmsg *q_msg_find(const struct tern_queue *q, const char *id) {
  if (!q->table_size || !id)
    return NULL;
  for (struct qmsg *m = q->table[id_hash(id, q->table_size - 1)]; m;
       m = m->hnext)
    if (strcmp(m->id, id) == 0)
      return m;
  return NULL;
}

/* ---- the heap ------------------------------------------------------------ */

static void heap_set(struct tern_queue *q, size_t i, struct qmsg *m) {
  q->heap[i] = m;
  m->heap_i = i;
}

static void heap_up(struct tern_queue *q, size_t i) {
  struct qmsg *m = q->heap[i];
  while (i > 0) {
    size_t p = (i - 1) / 2;
    if (q->heap[p]->due <= m->due)
      break;
    heap_set(q, i, q->heap[p]);
    i = p;
  }
  heap_set(q, i, m);
}

static void heap_down(struct tern_queue *q, size_t i) {
  struct qmsg *m = q->heap[i];
  for (;;) {
    size_t c = 2 * i + 1;
    if (c >= q->heap_len)
      break;
    if (c + 1 < q->heap_len && q->heap[c + 1]->due < q->heap[c]->due)
      c++;
    if (m->due <= q->heap[c]->due)
      break;
    heap_set(q, i, q->heap[c]);
    i = c;
  }
  heap_set(q, i, m);
}

static bool heap_push(struct tern_queue *q, struct qmsg *m) {
  if (q->heap_len == q->heap_cap) {
    size_t n = q->heap_cap ? q->heap_cap * 2 : 1024;
    struct qmsg **h = realloc(q->heap, n * sizeof *h);
    if (!h)
      return false;
    q->heap = h;
    q->heap_cap = n;
  }
  heap_set(q, q->heap_len++, m);
  heap_up(q, m->heap_i);
  return true;
}

static void heap_remove(struct tern_queue *q, struct qmsg *m) {
  size_t i = m->heap_i;
  if (i == Q_NOHEAP)
    return;
  m->heap_i = Q_NOHEAP;
  struct qmsg *last = q->heap[--q->heap_len];
  if (i == q->heap_len)
    return;
  heap_set(q, i, last);
  heap_up(q, i);
  heap_down(q, last->heap_i);
}

/* When is the message next due? false: nothing of it waits (held, gone,
 * every recipient done or in a job). */
static bool msg_due(const struct qmsg *m, int64_t *due) {
  if (m->held || m->gone)
    return false;
  bool any = false;
  int64_t best = 0;
  for (size_t i = 0; i < m->nrcpts; i++) {
    const struct qrcpt *r = &m->rcpts[i];
    if ((r->state != QS_QUEUED && r->state != QS_DEFERRED) ||
        r->busy != QB_IDLE)
      continue;
    if (!any || r->next_try < best)
      best = r->next_try;
    any = true;
  }
  *due = best;
  return any;
}

void q_msg_resched(struct tern_queue *q, struct qmsg *m) {
  int64_t due;
  if (!msg_due(m, &due)) {
    heap_remove(q, m);
  } else if (m->heap_i == Q_NOHEAP) {
    m->due = due;
    if (!heap_push(q, m))
      q_event(q, TERN_QEV_ERROR, m->id, NULL, NULL, NULL, NULL, 0,
              "out of memory: message not scheduled until restart");
  } else if (due != m->due) {
    m->due = due;
    heap_up(q, m->heap_i);
    heap_down(q, m->heap_i);
  }
  q_timer_arm(q);
}

void q_msg_add(struct tern_queue *q, struct qmsg *m) {
  if (q->nmsgs >= q->table_size && !table_grow(q) && !q->table_size) {
    q_event(q, TERN_QEV_ERROR, m->id, NULL, NULL, NULL, NULL, 0,
            "out of memory: message not scheduled until restart");
    free(m);
    return;
  }
  size_t h = id_hash(m->id, q->table_size - 1);
  m->hnext = q->table[h];
  q->table[h] = m;
  q->nmsgs++;
  q_msg_resched(q, m);
}

void q_msg_forget(struct tern_queue *q, struct qmsg *m) {
  if (m->gone)
    return;
  heap_remove(q, m);
  struct qmsg **pp = &q->table[id_hash(m->id, q->table_size - 1)];
  while (*pp && *pp != m)
    pp = &(*pp)->hnext;
  if (*pp) {
    *pp = m->hnext;
    q->nmsgs--;
  }
  m->gone = true;
  if (m->njobs == 0)
    free(m);
  q_timer_arm(q);
}

/* ---- destinations and jobs ----------------------------------------------- */

/* Destinations by name: a chained hash table that doubles when it holds
 * as many destinations as buckets. With mx:DOMAIN destinations there is
 * one per recipient domain in the queue (thousands on a busy relay),
 * and every job looks its own up. */
static bool dtab_grow(struct tern_queue *q) {
  size_t n = q->dtab_size ? q->dtab_size * 2 : 64;
  struct qdest **t = calloc(n, sizeof *t);
  if (!t)
    return false;
  for (size_t i = 0; i < q->dtab_size; i++)
    for (struct qdest *d = q->dtab[i], *next; d; d = next) {
      next = d->hnext;
      size_t h = id_hash(d->name, n - 1);
      d->hnext = t[h];
      t[h] = d;
    }
  free(q->dtab);
  q->dtab = t;
  q->dtab_size = n;
  return true;
}

static struct qdest *dest_get(struct tern_queue *q, const char *name) {
  if (q->dtab_size)
    for (struct qdest *d = q->dtab[id_hash(name, q->dtab_size - 1)]; d;
         d = d->hnext)
      if (strcmp(d->name, name) == 0)
        return d;
  /* a table that cannot grow still takes more in its chains */
  if (q->ndests >= q->dtab_size && !dtab_grow(q) && !q->dtab_size)
    return NULL;
  struct qdest *d = calloc(1, sizeof *d);
  if (!d || !(d->name = strdup(name))) {
    free(d);
    return NULL;
  }
  size_t h = id_hash(name, q->dtab_size - 1);
  d->hnext = q->dtab[h];
  q->dtab[h] = d;
  q->ndests++;
  return d;
}

static void dest_free(struct qdest *d) {
  free(d->name);
  free(d->susp_enhanced);
  free(d->susp_text);
  free(d);
}

/* A destination that holds nothing (no job waiting or running, not
 * suspended, not in the run ring) is forgotten: made again, as new, by
 * its next job. So the table holds the destinations with mail, not
 * every domain ever written to. */
static void dest_gc(struct tern_queue *q, struct qdest *d) {
  if (d->head || d->active || d->suspended || d->runnable)
    return;
  struct qdest **pp = &q->dtab[id_hash(d->name, q->dtab_size - 1)];
  while (*pp && *pp != d)
    pp = &(*pp)->hnext;
  if (*pp) {
    *pp = d->hnext;
    q->ndests--;
  }
  dest_free(d);
}

static void susp_link(struct tern_queue *q, struct qdest *d) {
  d->sprev = NULL;
  d->snext = q->susp;
  if (q->susp)
    q->susp->sprev = d;
  q->susp = d;
}

static void susp_unlink(struct tern_queue *q, struct qdest *d) {
  if (d->sprev)
    d->sprev->snext = d->snext;
  else if (q->susp == d)
    q->susp = d->snext;
  if (d->snext)
    d->snext->sprev = d->sprev;
  d->sprev = d->snext = NULL;
}

/* How many jobs of d may run now: the concurrency, or while suspended
 * none until susp_until, then one (the probe). */
static unsigned dest_cap(const struct tern_queue *q, const struct qdest *d) {
  if (!d->suspended)
    return q->o.concurrency;
  return q_now_s() >= d->susp_until ? 1 : 0;
}

static void run_push(struct tern_queue *q, struct qdest *d) {
  if (d->runnable || !d->head || d->active >= dest_cap(q, d))
    return;
  d->runnable = true;
  d->run_next = NULL;
  if (q->run_tail)
    q->run_tail->run_next = d;
  else
    q->run_head = d;
  q->run_tail = d;
}

static struct qdest *run_pop(struct tern_queue *q) {
  struct qdest *d = q->run_head;
  if (d) {
    q->run_head = d->run_next;
    if (!q->run_head)
      q->run_tail = NULL;
    d->runnable = false;
  }
  return d;
}

static void job_free(struct tern_queue_job *j) {
  for (size_t i = 0; i < j->n; i++) {
    free(j->res[i].enhanced);
    free(j->res[i].text);
    free(j->res[i].remote);
  }
  free(j);
}

static struct tern_queue_job *job_new(struct tern_queue *q, struct qmsg *m,
                                      struct qdest *d, size_t n) {
  size_t each = sizeof(uint32_t) + sizeof(struct tern_queue_job_rcpt) +
                sizeof(struct qres);
  struct tern_queue_job *j = calloc(1, sizeof *j + n * each);
  if (!j)
    return NULL;
  /* Pointer-aligned arrays first, then the indices. */
  j->jr = (struct tern_queue_job_rcpt *)(j + 1);
  j->res = (struct qres *)(j->jr + n);
  j->idx = (uint32_t *)(j->res + n);
  j->q = q;
  j->msg = m;
  j->dest = d;
  return j;
}

/* Drop a job that never started (its message was held or removed). */
static void job_discard(struct tern_queue *q, struct tern_queue_job *j) {
  struct qmsg *m = j->msg;
  for (size_t i = 0; i < j->n; i++)
    m->rcpts[j->idx[i]].busy = QB_IDLE;
  m->njobs--;
  job_free(j);
  if (m->gone) {
    if (m->njobs == 0)
      free(m);
  } else {
    q_msg_resched(q, m);
  }
}

/* Recipient o can join a job for destination `dest`. */
static bool joins(const struct qrcpt *o, const char *dest) {
  return (o->state == QS_QUEUED || o->state == QS_DEFERRED) &&
         o->busy == QB_IDLE && strcmp(o->dest, dest) == 0;
}

/* The message's recipients due by `now` become jobs, one per destination
 * (and per max_job_rcpts recipients), in their destinations' FIFOs. A
 * due recipient takes along every waiting recipient of the message for
 * the same destination, due or not: a message's recipients for one
 * destination travel in one transaction, as Postfix keeps them, instead
 * of being split by retry times that differ by seconds (results of
 * different jobs, a restart). */
static void make_ready(struct tern_queue *q, struct qmsg *m, int64_t now) {
  for (size_t i = 0; i < m->nrcpts; i++) {
    struct qrcpt *r = &m->rcpts[i];
    if ((r->state != QS_QUEUED && r->state != QS_DEFERRED) ||
        r->busy != QB_IDLE || r->next_try > now)
      continue;
    size_t n = 0;
    for (size_t k = 0; k < m->nrcpts && n < q->o.max_job_rcpts; k++)
      if (joins(&m->rcpts[k], r->dest))
        n++;
    struct qdest *d = dest_get(q, r->dest);
    struct tern_queue_job *j = d ? job_new(q, m, d, n) : NULL;
    if (!j) {
      q_event(q, TERN_QEV_ERROR, m->id, r->addr, NULL, NULL, NULL, 0,
              "out of memory: delivery postponed");
      r->next_try = now + 60;
      continue;
    }
    /* r first: it is due, and the cap may leave others for later. */
    r->busy = QB_READY;
    j->idx[j->n++] = (uint32_t)i;
    for (size_t k = 0; k < m->nrcpts && j->n < n; k++) {
      struct qrcpt *o = &m->rcpts[k];
      if (joins(o, r->dest)) {
        o->busy = QB_READY;
        j->idx[j->n++] = (uint32_t)k;
      }
    }
    m->njobs++;
    if (d->tail)
      d->tail->next = j;
    else
      d->head = j;
    d->tail = j;
    q->ready++;
    run_push(q, d);
  }
}

static void on_timer(uv_timer_t *t) {
  struct tern_queue *q = t->data;
  q->timer_armed = false;
  if (q->close_phase)
    return;
  int64_t now = now_ms();
  while (q->heap_len && q->heap[0]->due * 1000 <= now) {
    struct qmsg *m = q->heap[0];
    heap_remove(q, m);
    make_ready(q, m, now / 1000);
    q_msg_resched(q, m); /* recipients due later, or none */
  }
  /* Suspended destinations whose time is up: a probe may start. */
  for (struct qdest *d = q->susp; d; d = d->snext)
    run_push(q, d);
  q_timer_arm(q);
  q_pump(q);
}

void q_timer_arm(struct tern_queue *q) {
  bool any = q->heap_len > 0;
  int64_t at = any ? q->heap[0]->due : 0;
  /* A suspended destination with jobs waiting and none running wakes
   * the timer when its probe may start (once in the run ring, the pump
   * takes it from there). */
  for (struct qdest *d = q->susp; d; d = d->snext)
    if (d->head && !d->runnable && d->active == 0 &&
        (!any || d->susp_until < at)) {
      at = d->susp_until;
      any = true;
    }
  if (q->close_phase || !any) {
    if (q->timer_armed)
      uv_timer_stop(&q->timer);
    q->timer_armed = false;
    return;
  }
  if (q->timer_armed && q->timer_at == at)
    return;
  int64_t delay = at * 1000 - now_ms();
  uv_timer_start(&q->timer, on_timer, delay > 0 ? (uint64_t)delay : 0, 0);
  q->timer_armed = true;
  q->timer_at = at;
}

static void job_start(struct tern_queue *q, struct tern_queue_job *j) {
  struct qmsg *m = j->msg;
  unsigned attempt = 0;
  for (size_t i = 0; i < j->n; i++) {
    struct qrcpt *r = &m->rcpts[j->idx[i]];
    r->busy = QB_RUNNING;
    j->jr[i].addr = r->addr;
    j->jr[i].orcpt = r->orcpt;
    j->jr[i].notify = r->notify;
    if (r->attempts > attempt)
      attempt = r->attempts;
  }
  j->info = (struct tern_queue_job_info){
      .id = m->id,
      .from = m->from,
      .dest = j->dest->name,
      .rcpts = j->jr,
      .nrcpts = j->n,
      .size = m->size,
      .body = (enum tern_body)m->body,
      .smtputf8 = m->smtputf8,
      .requiretls = m->requiretls,
      .ret = (enum tern_dsn_ret)m->ret,
      .envid = m->envid,
      .arrival = (time_t)m->arrival,
      .attempt = attempt + 1,
      .is_bounce = m->is_bounce,
  };
  j->running = true;
  j->rprev = NULL;
  j->rnext = q->running;
  if (q->running)
    q->running->rprev = j;
  q->running = j;
  j->dest->active++;
  q->active++;
}

static void on_kick(uv_idle_t *h) {
  struct tern_queue *q = h->data;
  uv_idle_stop(h);
  q_pump(q);
}

void q_kick(struct tern_queue *q) {
  if (!q->close_phase && q->run_head)
    uv_idle_start(&q->kick, on_kick);
}

void q_pump(struct tern_queue *q) {
  if (q->pumping || q->close_phase)
    return;
  q->pumping = true;
  while (q->active < q->o.max_active && !q->close_phase) {
    struct qdest *d = run_pop(q);
    if (!d)
      break;
    if (!d->head || d->active >= dest_cap(q, d)) {
      dest_gc(q, d);
      continue;
    }
    struct tern_queue_job *j = d->head;
    d->head = j->next;
    if (!d->head)
      d->tail = NULL;
    j->next = NULL;
    q->ready--;
    if (j->msg->gone || j->msg->held) {
      job_discard(q, j);
      run_push(q, d);
      dest_gc(q, d);
      continue;
    }
    job_start(q, j);
    run_push(q, d); /* before deliver: it may end the job inside */
    q->o.deliver(j, &j->info, q->o.ud);
  }
  q->pumping = false;
}

static void running_unlink(struct tern_queue *q, struct tern_queue_job *j,
                           struct tern_queue_job **list) {
  if (j->rprev)
    j->rprev->rnext = j->rnext;
  else
    *list = j->rnext;
  if (j->rnext)
    j->rnext->rprev = j->rprev;
  j->rprev = j->rnext = NULL;
  (void)q;
}

void q_cancel_running(struct tern_queue *q) {
  while (q->running) {
    struct tern_queue_job *j = q->running;
    running_unlink(q, j, &q->running);
    j->cancelled = true;
    j->running = false;
    j->dest->active--;
    q->active--;
    /* The recipients stay as stored: after a restart they are due. */
    j->rnext = q->cancelled;
    if (q->cancelled)
      q->cancelled->rprev = j;
    q->cancelled = j;
    for (size_t i = 0; i < j->n; i++)
      q_event(q, TERN_QEV_DEFERRED, j->msg->id, j->jr[i].addr, NULL, NULL, NULL,
              0, "cancelled at shutdown: delivered again after restart");
  }
}

void q_sched_free(struct tern_queue *q) {
  for (size_t i = 0; i < q->dtab_size; i++)
    for (struct qdest *d = q->dtab[i], *n; d; d = n) {
      for (struct tern_queue_job *j = d->head; j;) {
        struct tern_queue_job *jn = j->next;
        job_free(j);
        j = jn;
      }
      n = d->hnext;
      dest_free(d);
    }
  free(q->dtab);
  q->dtab = NULL;
  q->dtab_size = q->ndests = 0;
  q->susp = NULL;
  q->run_head = q->run_tail = NULL;
  struct tern_queue_job *lists[2] = {q->running, q->cancelled};
  for (int k = 0; k < 2; k++)
    for (struct tern_queue_job *j = lists[k]; j;) {
      struct tern_queue_job *n = j->rnext;
      struct qmsg *m = j->msg;
      if (m->gone && --m->njobs == 0)
        free(m);
      job_free(j);
      j = n;
    }
  q->running = q->cancelled = NULL;
  for (size_t i = 0; i < q->table_size; i++)
    for (struct qmsg *m = q->table[i]; m;) {
      struct qmsg *n = m->hnext;
      free(m);
      m = n;
    }
  free(q->table);
  free(q->heap);
  q->table = NULL;
  q->heap = NULL;
  q->table_size = q->nmsgs = q->heap_len = q->heap_cap = 0;
}

/* ---- the job API --------------------------------------------------------- */

bool tern_queue_job_cancelled(const struct tern_queue_job *job) {
  return job && job->cancelled;
}

static void on_read(void *arg, int status, const char *data, size_t len);

static void read_next(struct tern_queue_job *j) {
  j->reading = true;
  j->q->pending++;
  qstore_read(j->q->home, j->msg->id, j->seq, on_read, j);
}

static void on_read(void *arg, int status, const char *data, size_t len) {
  struct tern_queue_job *j = arg;
  struct tern_queue *q = j->q;
  q->pending--;
  j->reading = false;
  if (j->finished) { /* done while this read was in flight */
    job_free(j);
    q_close_step(q);
    return;
  }
  if (j->cancelled) {
    j->read_cb(j->read_arg, NULL, 0, TERN_ECLOSED);
    q_close_step(q);
    return;
  }
  if (status == 0 && len == 0) { /* an empty chunk: nothing to hand on */
    j->seq++;
    read_next(j);
    return;
  }
  if (status == TERN_ENOENT && j->seq >= j->msg->nchunks) {
    j->read_cb(j->read_arg, "", 0, 0);
    return;
  }
  if (status < 0) {
    j->read_cb(j->read_arg, NULL, 0, status == TERN_ENOENT ? TERN_EIO : status);
    return;
  }
  j->seq++;
  j->read_cb(j->read_arg, data, len, 0);
}

int tern_queue_job_read(struct tern_queue_job *job,
                        void (*cb)(void *arg, const char *buf, size_t len,
                                   int status),
                        void *arg) {
  if (!job || !cb)
    return TERN_EINVAL;
  if (job->reading)
    return TERN_EBUSY;
  if (job->cancelled || !job->q->home)
    return TERN_ECLOSED;
  job->read_cb = cb;
  job->read_arg = arg;
  read_next(job);
  return 0;
}

static char *dup_or_null(const char *s) { return s ? strdup(s) : NULL; }

void tern_queue_job_result(struct tern_queue_job *job, size_t i,
                           const struct tern_reply *r, const char *remote_mta) {
  if (!job || !r || i >= job->n || job->res[i].set || job->cancelled)
    return;
  struct qres *x = &job->res[i];
  /* A code outside 200..599 is no answer: the recipient is deferred by
   * tern_queue_job_done's default instead. */
  if (r->code < 200 || r->code > 599)
    return;
  x->code = r->code;
  x->enhanced = dup_or_null(r->enhanced);
  x->text = dup_or_null(r->text ? r->text : "");
  x->remote = dup_or_null(remote_mta);
  if (!x->text || (r->enhanced && !x->enhanced) || (remote_mta && !x->remote)) {
    /* Out of memory: keep the code alone, which is what decides. */
    free(x->enhanced);
    free(x->remote);
    x->enhanced = x->remote = NULL;
    free(x->text);
    x->text = NULL;
  }
  x->set = true;
}

/* A job that ended (or was deferred without starting) gives its
 * recipients back to the scheduler; its message is freed if it went
 * meanwhile and this was its last job. */
static void job_release(struct tern_queue *q, struct tern_queue_job *j) {
  struct qmsg *m = j->msg;
  for (size_t i = 0; i < j->n; i++)
    m->rcpts[j->idx[i]].busy = QB_IDLE;
  m->njobs--;
  if (m->gone) {
    if (m->njobs == 0)
      free(m);
  } else {
    q_msg_resched(q, m);
  }
}

/* Defer every job waiting in d's FIFO with d's suspension reply, without
 * handing it to deliver: the attempt is counted and backs off as if it
 * had been made (it would have met the same dead next hop). */
static void defer_waiting(struct tern_queue *q, struct qdest *d) {
  struct tern_reply r = {d->susp_code, d->susp_enhanced,
                         d->susp_text ? d->susp_text : "next hop unreachable"};
  while (d->head) {
    struct tern_queue_job *j = d->head;
    d->head = j->next;
    if (!d->head)
      d->tail = NULL;
    j->next = NULL;
    q->ready--;
    if (j->msg->gone || j->msg->held) {
      job_discard(q, j);
      continue;
    }
    j->untried = true;
    q_outcome(q, j, &r);
    job_release(q, j);
    job_free(j);
  }
}

/* tern_queue_job_unreachable: suspend d with reply r (copied; on no
 * memory the code alone, which is what decides). */
static void dest_suspend(struct tern_queue *q, struct qdest *d,
                         const struct tern_reply *r) {
  free(d->susp_enhanced);
  free(d->susp_text);
  d->susp_code = r->code;
  d->susp_enhanced = r->enhanced ? strdup(r->enhanced) : NULL;
  d->susp_text = strdup(r->text ? r->text : "");
  if (!d->suspended)
    susp_link(q, d);
  d->suspended = true;
  d->susp_until = q_now_s() + (int64_t)q->o.retry_min_s;
  defer_waiting(q, d);
}

void q_dest_flush(struct tern_queue *q, const char *name) {
  if (!q->dtab_size || !name)
    return;
  struct qdest *d = q->dtab[id_hash(name, q->dtab_size - 1)];
  while (d && strcmp(d->name, name) != 0)
    d = d->hnext;
  if (!d || !d->suspended)
    return;
  int64_t now = q_now_s();
  if (d->susp_until > now)
    d->susp_until = now;
  run_push(q, d); /* jobs already waiting in its FIFO */
  q_kick(q);
  q_timer_arm(q);
}

static void dest_resume(struct tern_queue *q, struct qdest *d) {
  susp_unlink(q, d);
  d->suspended = false;
  free(d->susp_enhanced);
  free(d->susp_text);
  d->susp_enhanced = d->susp_text = NULL;
}

static void job_end(struct tern_queue_job *job, const struct tern_reply *r,
                    bool unreachable) {
  if (!job || job->finished)
    return;
  struct tern_queue *q = job->q;
  struct qmsg *m = job->msg;
  job->finished = true;
  if (job->cancelled) {
    running_unlink(q, job, &q->cancelled);
    if (--m->njobs == 0 && m->gone)
      free(m);
    if (!job->reading)
      job_free(job);
    return;
  }
  running_unlink(q, job, &q->running);
  job->running = false;
  job->dest->active--;
  q->active--;
  if (!m->gone)
    q_outcome(q, job, r);
  job_release(q, job);
  if (unreachable)
    dest_suspend(q, job->dest, r);
  else if (job->dest->suspended)
    dest_resume(q, job->dest); /* the destination answers again */
  run_push(q, job->dest);
  dest_gc(q, job->dest);
  if (!job->reading)
    job_free(job);
  /* Not q_pump(): deliver must not run inside the application's call. */
  q_kick(q);
  q_timer_arm(q);
  q_close_step(q);
}

void tern_queue_job_done(struct tern_queue_job *job,
                         const struct tern_reply *r) {
  job_end(job, r, false);
}

void tern_queue_job_unreachable(struct tern_queue_job *job,
                                const struct tern_reply *r) {
  struct tern_reply dflt = {451, "4.4.1", "next hop unreachable"};
  if (!r || r->code < 400 || r->code > 499)
    r = &dflt;
  job_end(job, r, true);
}
