/*
 * Submitting messages (tern/queue.h "submitting"): ports, one per loop,
 * and messages written through them. A message's body gathers in a
 * 64 KiB buffer; each full buffer goes to the store as a chunk (the
 * store owns it from then on), so a message of any size holds at most
 * Q_WINDOW chunks in flight plus the one being filled. Commit sends the
 * last chunk with the envelope; the store then tells the home loop,
 * whose scheduler takes the message up.
 */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "queue_int.h"

#define Q_CHUNK (64u * 1024)
/* Chunks in flight before a write asks the caller to wait: enough that a
 * large message does not pay one group commit per 64 KiB, few enough
 * that a message's memory stays small (here 5 × 64 KiB). */
#define Q_WINDOW 4

struct tern_queue_port {
  struct tern_queue *q;
  uv_loop_t *loop;
  struct qstore_sink *sink;
  unsigned pending; /* store operations not answered */
  unsigned nmsgs;   /* messages not freed */
  bool freeing;
};

struct tern_queue_msg {
  struct tern_queue_port *p;
  struct qstore_msg env;
  char *buf;
  size_t len, cap; /* cap grows from 4 KiB to Q_CHUNK */
  char *head;      /* tern_queue_msg_prepend's fields, or NULL */
  size_t head_len;
  uint32_t seq;    /* chunks sent */
  uint64_t size;
  unsigned inflight; /* chunks not answered */
  int err;           /* the first failure */
  bool committing;   /* commit called */
  bool commit_sent;  /* qstore_commit or the failure's drop sent */
  bool aborted;
  bool wait_written;
  void (*written)(void *arg, int status);
  void *warg;
  void (*done)(void *arg, const struct tern_reply *r);
  void *darg;
  char text[64];
};

static void port_release(struct tern_queue_port *p) {
  if (p->freeing && p->pending == 0 && p->nmsgs == 0) {
    qstore_sink_free(p->sink);
    free(p);
  }
}

int tern_queue_port_new(struct tern_queue *q, uv_loop_t *loop,
                        struct tern_queue_port **out) {
  if (!out)
    return TERN_EINVAL;
  *out = NULL;
  if (!q || !loop)
    return TERN_EINVAL;
  if (atomic_load(&q->closing))
    return TERN_ECLOSED;
  struct tern_queue_port *p = calloc(1, sizeof *p);
  if (!p)
    return TERN_ENOMEM;
  int rc = qstore_sink_new(q->store, loop, &p->sink);
  if (rc != 0) {
    free(p);
    return rc;
  }
  p->q = q;
  p->loop = loop;
  *out = p;
  return 0;
}

/* A port whose aborted messages still wait for the store is freed when
 * the last answer comes. */
void tern_queue_port_free(struct tern_queue_port *p) {
  if (!p)
    return;
  p->freeing = true;
  port_release(p);
}

static void msg_free(struct tern_queue_msg *m) {
  struct tern_queue_port *p = m->p;
  free(m->buf);
  free(m->head);
  qstore_msg_clear(&m->env);
  free(m);
  p->nmsgs--;
  port_release(p);
}

static char *sdup(const char *s, bool *ok) {
  if (!s)
    return NULL;
  char *d = strdup(s);
  if (!d)
    *ok = false;
  return d;
}

int tern_queue_msg_begin(struct tern_queue_port *p,
                         const struct tern_queue_envelope *env,
                         struct tern_queue_msg **out) {
  if (!out)
    return TERN_EINVAL;
  *out = NULL;
  if (!p || !env || !env->from || !env->rcpts || env->nrcpts == 0)
    return TERN_EINVAL;
  for (size_t i = 0; i < env->nrcpts; i++)
    if (!env->rcpts[i].addr || !env->rcpts[i].dest || !env->rcpts[i].dest[0])
      return TERN_EINVAL;
  if (atomic_load(&p->q->closing) || p->freeing)
    return TERN_ECLOSED;
  struct tern_queue_msg *m = calloc(1, sizeof *m);
  if (!m)
    return TERN_ENOMEM;
  m->p = p;
  p->nmsgs++;
  bool ok = true;
  struct qstore_msg *e = &m->env;
  qstore_new_id(p->q->store, e->id);
  e->arrival = q_now_s();
  e->from = sdup(env->from, &ok);
  e->body = env->body;
  e->smtputf8 = env->smtputf8;
  e->requiretls = env->requiretls;
  e->ret = env->ret;
  e->envid = sdup(env->envid, &ok);
  e->client = sdup(env->client, &ok);
  e->rcpts = calloc(env->nrcpts, sizeof *e->rcpts);
  if (e->rcpts) {
    e->nrcpts = env->nrcpts;
    for (size_t i = 0; i < env->nrcpts; i++) {
      const struct tern_queue_rcpt *r = &env->rcpts[i];
      struct qstore_rcpt *s = &e->rcpts[i];
      s->idx = (uint32_t)i;
      s->addr = sdup(r->addr, &ok);
      s->orcpt = sdup(r->orcpt, &ok);
      s->notify = r->notify;
      s->dest = sdup(r->dest, &ok);
      s->state = QS_QUEUED;
    }
  } else {
    ok = false;
  }
  if (!ok) {
    msg_free(m);
    return TERN_ENOMEM;
  }
  *out = m;
  return 0;
}

const char *tern_queue_msg_id(const struct tern_queue_msg *m) {
  return m ? m->env.id : NULL;
}

static void on_chunk(void *arg, int status);
static void do_commit(struct tern_queue_msg *m);

static void send_chunk(struct tern_queue_msg *m) {
  struct tern_queue_port *p = m->p;
  void *b = m->buf;
  size_t n = m->len;
  m->buf = NULL;
  m->len = m->cap = 0;
  m->inflight++;
  p->pending++;
  qstore_chunk(p->sink, m->env.id, m->seq++, b, n, on_chunk, m);
}

static void on_dropped(void *arg, int status) {
  struct tern_queue_msg *m = arg;
  (void)status;
  m->p->pending--;
  if (!m->aborted && m->done) {
    /* The failure that made the drop decides the reply. */
    struct tern_reply r = {451, "4.3.0", "Local error in processing (queue)"};
    if (m->err == TERN_ENOSPC)
      r = (struct tern_reply){452, "4.3.1", "Insufficient system storage"};
    m->done(m->darg, &r);
  }
  msg_free(m);
}

static void send_drop(struct tern_queue_msg *m) {
  m->commit_sent = true;
  m->p->pending++;
  qstore_drop(m->p->sink, m->env.id, on_dropped, m);
}

static void on_chunk(void *arg, int status) {
  struct tern_queue_msg *m = arg;
  m->inflight--;
  m->p->pending--;
  if (status != 0 && m->err == 0)
    m->err = status;
  if (m->inflight > 0 && !(m->wait_written && m->inflight < Q_WINDOW))
    return;
  if (m->aborted) {
    if (m->inflight == 0)
      send_drop(m);
  } else if (m->committing) {
    if (m->inflight == 0)
      do_commit(m);
  } else if (m->wait_written && m->inflight < Q_WINDOW) {
    m->wait_written = false;
    if (m->written)
      m->written(m->warg, m->err);
  }
}

int tern_queue_msg_write(struct tern_queue_msg *m, const char *buf, size_t len,
                         void (*written)(void *arg, int status), void *arg) {
  if (!m || (!buf && len))
    return TERN_EINVAL;
  if (m->committing || m->aborted || m->wait_written)
    return TERN_ESTATE;
  if (m->err)
    return m->err;
  while (len) {
    if (m->cap - m->len < len && m->cap < Q_CHUNK) {
      /* Grow towards one chunk: most messages are a few KiB, and a
       * server may hold hundreds open at once. */
      size_t cap = m->cap ? m->cap : 4096;
      while (cap - m->len < len && cap < Q_CHUNK)
        cap *= 2;
      char *b = realloc(m->buf, cap);
      if (!b) {
        m->err = TERN_ENOMEM;
        return m->err;
      }
      m->buf = b;
      m->cap = cap;
    }
    size_t n = m->cap - m->len;
    if (n > len)
      n = len;
    memcpy(m->buf + m->len, buf, n);
    m->len += n;
    m->size += n;
    buf += n;
    len -= n;
    if (m->len == Q_CHUNK)
      send_chunk(m);
  }
  if (m->inflight >= Q_WINDOW) {
    m->wait_written = true;
    m->written = written;
    m->warg = arg;
    return 1;
  }
  return 0;
}

/* The fields go to the store with the commit (qstore_commit's head): one
 * savepoint holds the message and them, and the chunk numbering of what
 * was already sent stays as it is. */
#define Q_PREPEND_MAX (64u * 1024)

int tern_queue_msg_prepend(struct tern_queue_msg *m, const char *buf,
                           size_t len) {
  if (!m || !buf)
    return TERN_EINVAL;
  if (m->committing || m->aborted || m->head)
    return TERN_ESTATE;
  if (len < 2 || len > Q_PREPEND_MAX || buf[len - 2] != '\r' ||
      buf[len - 1] != '\n')
    return TERN_EINVAL;
  char *h = malloc(len);
  if (!h)
    return TERN_ENOMEM;
  memcpy(h, buf, len);
  m->head = h;
  m->head_len = len;
  return 0;
}

static void on_committed(void *arg, int status) {
  struct tern_queue_msg *m = arg;
  m->p->pending--;
  if (status != 0) /* no home callback comes */
    atomic_fetch_sub(&m->p->q->homing, 1);
  if (!m->aborted && m->done) {
    struct tern_reply r = {250, "2.0.0", m->text};
    if (status == 0)
      snprintf(m->text, sizeof m->text, "Ok: queued as %s", m->env.id);
    else if (status == TERN_ENOSPC)
      r = (struct tern_reply){452, "4.3.1", "Insufficient system storage"};
    else
      r = (struct tern_reply){451, "4.3.0",
                              "Local error in processing (queue)"};
    m->done(m->darg, &r);
  }
  msg_free(m);
}

static void do_commit(struct tern_queue_msg *m) {
  if (m->err) {
    send_drop(m);
    return;
  }
  m->env.nchunks = m->seq + 1;
  m->env.size = m->size + m->head_len;
  void *last = m->buf;
  size_t len = m->len;
  void *head = m->head;
  size_t head_len = m->head_len;
  m->buf = NULL;
  m->len = m->cap = 0;
  m->head = NULL;
  m->head_len = 0;
  m->commit_sent = true;
  m->p->pending++;
  atomic_fetch_add(&m->p->q->homing, 1);
  qstore_commit(m->p->sink, &m->env, last, len, head, head_len, on_committed,
                m, m->p->q->home,
                q_on_home, m->p->q);
}

void tern_queue_msg_commit(struct tern_queue_msg *m,
                           void (*done)(void *arg, const struct tern_reply *r),
                           void *arg) {
  if (!m || m->committing || m->aborted)
    return;
  m->committing = true;
  m->wait_written = false;
  m->done = done;
  m->darg = arg;
  if (m->inflight == 0)
    do_commit(m);
}

void tern_queue_msg_abort(struct tern_queue_msg *m) {
  if (!m || m->aborted)
    return;
  m->aborted = true;
  m->wait_written = false;
  if (m->commit_sent || m->inflight > 0)
    return; /* freed when the store answers */
  free(m->buf);
  m->buf = NULL;
  m->len = m->cap = 0;
  if (m->seq == 0)
    msg_free(m); /* nothing of it reached the store */
  else
    send_drop(m);
}
