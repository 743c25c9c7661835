/*
 * The queue's store (store.h): one SQLite database in WAL mode, one
 * writer thread doing group commits, one reader thread for bodies, and a
 * third connection for the synchronous list/body calls.
 *
 * Why group commit: with synchronous=FULL every COMMIT costs an fsync of
 * the WAL. bench_queue_store (1 KiB messages) measured ~140-220 µs of CPU
 * per message when each is its own transaction, ~30-40 µs with 20
 * committers (groups of ~10), ~19 µs with 100 (groups of ~48): most of
 * a group's cost is per group, not per message. The writer therefore takes
 * every operation waiting when it wakes up, applies them in one
 * transaction and answers them all after the one COMMIT; whatever arrives
 * during that COMMIT waits for the next round.
 */
#define _GNU_SOURCE /* pthread_setname_np */
#include "store_int.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/time.h>
#include <unistd.h>

#include <sqlite3.h>

/* PRAGMA user_version of the schema this code writes. A newer database is
 * refused rather than misread. */
#define SCHEMA_VERSION 1

static const char schema_sql[] =
    "CREATE TABLE msg("
    " id TEXT PRIMARY KEY, arrival INTEGER NOT NULL, sender TEXT NOT NULL,"
    " size INTEGER NOT NULL, body INTEGER NOT NULL,"
    " smtputf8 INTEGER NOT NULL, requiretls INTEGER NOT NULL,"
    " ret INTEGER NOT NULL, envid TEXT, client TEXT,"
    " held INTEGER NOT NULL DEFAULT 0, is_bounce INTEGER NOT NULL DEFAULT 0,"
    " warned INTEGER NOT NULL DEFAULT 0, nchunks INTEGER NOT NULL)"
    " WITHOUT ROWID;"
    "CREATE TABLE rcpt("
    " msg TEXT NOT NULL, idx INTEGER NOT NULL, addr TEXT NOT NULL,"
    " orcpt TEXT, notify INTEGER NOT NULL, dest TEXT NOT NULL,"
    " state INTEGER NOT NULL, attempts INTEGER NOT NULL,"
    " next_try INTEGER NOT NULL, last_code INTEGER NOT NULL,"
    " last_reply TEXT, remote_mta TEXT, PRIMARY KEY (msg, idx))"
    " WITHOUT ROWID;"
    "CREATE TABLE chunk("
    " msg TEXT NOT NULL, seq INTEGER NOT NULL, data BLOB NOT NULL,"
    " PRIMARY KEY (msg, seq));";

static void opq_push(struct opq *q, struct op *o)
{
  o->next = NULL;
  if (q->tail)
    q->tail->next = o;
  else
    q->head = o;
  q->tail = o;
}

/* ---- small helpers ------------------------------------------------------- */

static char *xstrdup(const char *s)
{
  return s ? strdup(s) : NULL;
}

static void set_err(char *err, size_t cap, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void set_err(char *err, size_t cap, const char *fmt, ...)
{
  if (!err || !cap)
    return;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(err, cap, fmt, ap);
  va_end(ap);
}

static char *col_text(sqlite3_stmt *st, int i)
{
  const unsigned char *t = sqlite3_column_text(st, i);
  return t ? strdup((const char *)t) : NULL;
}

void qstore_msg_clear(struct qstore_msg *m)
{
  if (!m)
    return;
  free(m->from);
  free(m->envid);
  free(m->client);
  for (size_t i = 0; i < m->nrcpts; i++) {
    struct qstore_rcpt *r = &m->rcpts[i];
    free(r->addr);
    free(r->orcpt);
    free(r->dest);
    free(r->last_reply);
    free(r->remote_mta);
  }
  free(m->rcpts);
  memset(m, 0, sizeof *m);
}

/* Deep copy; on allocation failure dst is cleared and -1 returned. */
static int msg_copy(struct qstore_msg *dst, const struct qstore_msg *src)
{
  *dst = *src;
  dst->from = xstrdup(src->from ? src->from : "");
  dst->envid = xstrdup(src->envid);
  dst->client = xstrdup(src->client);
  dst->rcpts = NULL;
  dst->nrcpts = 0;
  bool ok = dst->from && (!src->envid || dst->envid) &&
            (!src->client || dst->client);
  if (ok && src->nrcpts) {
    dst->rcpts = calloc(src->nrcpts, sizeof *dst->rcpts);
    ok = dst->rcpts != NULL;
    if (ok)
      dst->nrcpts = src->nrcpts;
    for (size_t i = 0; ok && i < src->nrcpts; i++) {
      const struct qstore_rcpt *a = &src->rcpts[i];
      struct qstore_rcpt *b = &dst->rcpts[i];
      *b = *a;
      b->addr = xstrdup(a->addr ? a->addr : "");
      b->orcpt = xstrdup(a->orcpt);
      b->dest = xstrdup(a->dest ? a->dest : "");
      b->last_reply = xstrdup(a->last_reply);
      b->remote_mta = xstrdup(a->remote_mta);
      ok = b->addr && b->dest && (!a->orcpt || b->orcpt) &&
           (!a->last_reply || b->last_reply) &&
           (!a->remote_mta || b->remote_mta);
    }
  }
  if (!ok) {
    qstore_msg_clear(dst);
    return -1;
  }
  return 0;
}

static void upd_clear(struct upd *u)
{
  for (size_t i = 0; i < u->nrcpts; i++) {
    free((char *)u->rcpts[i].last_reply);
    free((char *)u->rcpts[i].remote_mta);
  }
  free(u->rcpts);
  qstore_msg_clear(&u->dsn);
  free(u->head);
  free(u->tail);
  memset(u, 0, sizeof *u);
}

static void op_free(struct op *o)
{
  free(o->data);
  free(o->head);
  qstore_msg_clear(&o->m);
  if (o->home_msg) {
    qstore_msg_clear(o->home_msg);
    free(o->home_msg);
  }
  upd_clear(&o->u);
  free(o);
}

/* ---- sinks ----------------------------------------------------------------- */

static void sink_async_cb(uv_async_t *a)
{
  struct qstore_sink *k = a->data;
  pthread_mutex_lock(&k->mu);
  struct op *o = k->done.head;
  k->done.head = k->done.tail = NULL;
  pthread_mutex_unlock(&k->mu);
  while (o) {
    struct op *next = o->next;
    switch (o->type) {
    case OP_READ:
      o->read_cb(o->arg, o->status, o->data, o->len);
      break;
    case OP_NOTE:
      o->note_cb(o->arg, o->status != 0, (uint64_t)o->len);
      break;
    case OP_HOME: {
      struct qstore_msg *m = o->home_msg;
      o->home_msg = NULL; /* the callee's now */
      o->home_cb(o->home_arg, m);
      break;
    }
    default:
      if (o->cb)
        o->cb(o->arg, o->status);
      break;
    }
    op_free(o);
    o = next;
  }
}

/* Hand o to its sink's loop. uv_async_send runs under the sink's mutex:
 * the loop cannot drain (and the owner cannot then free the sink) until
 * this thread is done with it. */
static void sink_post(struct qstore_sink *k, struct op *o)
{
  pthread_mutex_lock(&k->mu);
  opq_push(&k->done, o);
  uv_async_send(&k->async);
  pthread_mutex_unlock(&k->mu);
}

int qstore_sink_new(struct qstore *s, uv_loop_t *loop,
                    struct qstore_sink **out)
{
  *out = NULL;
  struct qstore_sink *k = calloc(1, sizeof *k);
  if (!k)
    return TERN_ENOMEM;
  k->s = s;
  if (pthread_mutex_init(&k->mu, NULL) != 0) {
    free(k);
    return TERN_ENOMEM;
  }
  if (uv_async_init(loop, &k->async, sink_async_cb) != 0) {
    pthread_mutex_destroy(&k->mu);
    free(k);
    return TERN_EIO;
  }
  k->async.data = k;
  *out = k;
  return 0;
}

static void sink_closed(uv_handle_t *h)
{
  struct qstore_sink *k = h->data;
  /* Completions that never ran (the owner broke the rule) are dropped
   * without their callbacks, but not leaked. */
  struct op *o = k->done.head;
  while (o) {
    struct op *next = o->next;
    op_free(o);
    o = next;
  }
  pthread_mutex_destroy(&k->mu);
  free(k);
}

void qstore_sink_free(struct qstore_sink *k)
{
  if (!k)
    return;
  uv_close((uv_handle_t *)&k->async, sink_closed);
}

/* ---- workers ----------------------------------------------------------------- */

static int worker_init(struct worker *w)
{
  memset(w, 0, sizeof *w);
  if (pthread_mutex_init(&w->mu, NULL) != 0)
    return -1;
  if (pthread_cond_init(&w->cv, NULL) != 0) {
    pthread_mutex_destroy(&w->mu);
    return -1;
  }
  return 0;
}

static void worker_push(struct worker *w, struct op *o)
{
  pthread_mutex_lock(&w->mu);
  opq_push(&w->q, o);
  pthread_cond_signal(&w->cv);
  pthread_mutex_unlock(&w->mu);
}

/* Everything waiting, or NULL once stopped and drained. */
static struct op *worker_take(struct worker *w)
{
  pthread_mutex_lock(&w->mu);
  while (!w->q.head && !w->stop)
    pthread_cond_wait(&w->cv, &w->mu);
  struct op *o = w->q.head;
  w->q.head = w->q.tail = NULL;
  pthread_mutex_unlock(&w->mu);
  return o;
}

static void worker_stop(struct worker *w)
{
  if (!w->started)
    return;
  pthread_mutex_lock(&w->mu);
  w->stop = true;
  pthread_cond_signal(&w->cv);
  pthread_mutex_unlock(&w->mu);
  pthread_join(w->thr, NULL);
  w->started = false;
}

static void worker_destroy(struct worker *w)
{
  pthread_cond_destroy(&w->cv);
  pthread_mutex_destroy(&w->mu);
}

/* A new operation for sink k, or NULL (out of memory). */
static struct op *op_new(struct qstore_sink *k, enum op_type t,
                         const char *id)
{
  struct op *o = calloc(1, sizeof *o);
  if (!o)
    return NULL;
  o->type = t;
  o->k = k;
  qstore__set_id(o->id, id);
  return o;
}

static void rollback(struct qstore *s)
{
  if (!sqlite3_get_autocommit(s->wdb))
    qstore__run(s->w.rollback);
}

/*
 * Disk full. SQLite cannot free anything at a full disk: a DELETE
 * appends to the WAL, a checkpoint may grow queue.db. So the spool keeps
 * a reserve, DIR/reserve (RESERVE_BYTES allocated), and when a group
 * fails with ENOSPC the writer removes it and enters "full" mode: new
 * messages (chunks, commits) are refused with TERN_ENOSPC before they
 * reach SQLite, while state changes, removals and DSNs go on in the room
 * the reserve left. After every group in that mode the pages freed by
 * removals are given back to the file system (incremental vacuum, WAL
 * truncated); once the reserve can be allocated again with as much room
 * again left beside it, new messages are accepted again (the margin
 * keeps the queue from flapping at the edge). The reserve covers a
 * checkpoint's growth of queue.db (the WAL is checkpointed every
 * WAL_PAGES pages) twice over.
 */
/* 4 KiB pages: a group of small messages dirties a few pages whatever
 * their size, so smaller pages write less (measured: fewer WAL frames
 * and ~40% less CPU per 1 KiB message than with 8 KiB pages). */
#define PAGE_SIZE 4096
#define WAL_BYTES (4 << 20)
#define WAL_PAGES (WAL_BYTES / PAGE_SIZE)
#define RESERVE_BYTES ((off_t)2 * WAL_BYTES)

/* Allocate the reserve. 0 or an errno value. */
static int reserve_make(struct qstore *s)
{
  int fd = open(s->reserve_path, O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
  if (fd < 0)
    return errno;
  int e = posix_fallocate(fd, 0, RESERVE_BYTES);
  if (e == 0 && s->fsync && fsync(fd) != 0)
    e = errno;
  close(fd);
  if (e)
    unlink(s->reserve_path);
  return e;
}

/* Room for the reserve and as much again: then full mode may end. */
static bool full_can_leave(struct qstore *s)
{
  struct statvfs sv;
  if (fstatvfs(s->lockfd, &sv) != 0)
    return false;
  uint64_t avail = (uint64_t)sv.f_bavail * sv.f_frsize;
  /* a reserve still there (a restart) counts as free room here */
  struct stat sb;
  if (stat(s->reserve_path, &sb) == 0 && sb.st_blocks > 0)
    avail += (uint64_t)sb.st_blocks * 512;
  if (avail < 2 * (uint64_t)RESERVE_BYTES)
    return false;
  return reserve_make(s) == 0;
}

/* Post the full-mode state to the listener (nmu held). */
static void note_post(struct qstore *s, bool full)
{
  if (!s->note_k)
    return;
  struct op *o = op_new(s->note_k, OP_NOTE, "");
  if (!o)
    return; /* only a notice lost */
  o->status = full;
  o->len = 2 * (size_t)RESERVE_BYTES;
  o->note_cb = s->note_cb;
  o->arg = s->note_arg;
  sink_post(s->note_k, o);
}

/* Enter or leave full mode; the application hears of each change. */
static void full_set(struct qstore *s, bool full)
{
  s->full = full;
  pthread_mutex_lock(&s->nmu);
  if (s->note_full != full) {
    s->note_full = full;
    note_post(s, full);
  }
  pthread_mutex_unlock(&s->nmu);
}

void qstore_set_notify(struct qstore *s, struct qstore_sink *k,
                       void (*cb)(void *arg, bool full, uint64_t need),
                       void *arg)
{
  pthread_mutex_lock(&s->nmu);
  s->note_k = cb ? k : NULL;
  s->note_cb = cb;
  s->note_arg = arg;
  if (s->note_full)
    note_post(s, true);
  pthread_mutex_unlock(&s->nmu);
}

static void full_enter(struct qstore *s)
{
  full_set(s, true);
  unlink(s->reserve_path);
}

static int int_row(void *arg, int n, char **v, char **names)
{
  (void)names;
  if (n > 0 && v[0])
    *(long long *)arg = atoll(v[0]);
  return 0;
}

/* Give freed pages back to the file system, a step at a time: a vacuum
 * moves pages through the WAL, and on a nearly full disk one vacuum of
 * every free page fails (SQLITE_FULL) and frees nothing. Steps of
 * VACUUM_STEP pages, the WAL truncated after each, need room for one
 * step only. */
#define VACUUM_STEP 256
#define STR_(x) #x
#define STR(x) STR_(x)
static void full_give_back(struct qstore *s)
{
  long long free_pages = 0;
  sqlite3_exec(s->wdb, "PRAGMA freelist_count", int_row, &free_pages, NULL);
  for (long long steps = free_pages / VACUUM_STEP + 1; steps >= 0; steps--) {
    int rc = SQLITE_OK;
    if (free_pages > 0)
      rc = sqlite3_exec(s->wdb,
                        "PRAGMA incremental_vacuum(" STR(VACUUM_STEP) ")",
                        NULL, NULL, NULL);
    sqlite3_exec(s->wdb, "PRAGMA wal_checkpoint(TRUNCATE)", NULL, NULL, NULL);
    if (rc != SQLITE_OK || free_pages == 0)
      break;
    free_pages = 0;
    sqlite3_exec(s->wdb, "PRAGMA freelist_count", int_row, &free_pages, NULL);
    if (free_pages == 0)
      break;
  }
}

/* Give freed pages back and try to take the reserve again; leave full
 * mode if it can be had. */
static void full_try_leave(struct qstore *s)
{
  full_give_back(s);
  if (full_can_leave(s))
    full_set(s, false);
}

/* In full mode, new data fails before the transaction. */
static void refuse_data(struct qstore *s, struct op *list)
{
  for (struct op *o = list; o; o = o->next) {
    if (o->type == OP_CHUNK) {
      o->refused = true;
      o->status = TERN_ENOSPC;
      qstore__idlist_add(&s->lost, o->id, TERN_ENOSPC);
    } else if (o->type == OP_COMMIT) {
      o->refused = true;
      o->status = TERN_ENOSPC;
      qstore__idlist_remove(&s->lost, o->id);
      qstore__idlist_add(&s->cleanup, o->id, 0);
    }
  }
}

static bool has_data(const struct op *list)
{
  for (; list; list = list->next)
    if (list->type == OP_CHUNK || list->type == OP_COMMIT)
      return true;
  return false;
}

static void writer_group(struct qstore *s, struct op *list)
{
  if (s->full && has_data(list)) {
    /* space may have been freed meanwhile, by us or someone else */
    full_try_leave(s);
    if (s->full)
      refuse_data(s, list);
  }
  int rc = qstore__run(s->w.begin);
  if (rc == SQLITE_OK)
    rc = qstore__delete_cleanup(s);
  for (struct op *o = list; o && rc == SQLITE_OK; o = o->next)
    rc = qstore__apply(s, o);
  if (rc == SQLITE_OK)
    rc = qstore__run(s->w.commit);
  if (rc == SQLITE_OK) {
    atomic_fetch_add(&s->commits, 1);
    qstore__idlist_free(&s->cleanup);
  } else {
    int st = qstore__map_rc(s->wdb, rc);
    rollback(s);
    if (st == TERN_ENOSPC)
      full_enter(s);
    for (struct op *o = list; o; o = o->next) {
      if (o->type == OP_READ || o->type == OP_HOME)
        continue;
      o->status = st;
      if (o->type == OP_CHUNK) {
        qstore__idlist_add(&s->lost, o->id, st);
      } else if (o->type == OP_COMMIT || o->type == OP_DROP) {
        qstore__idlist_remove(&s->lost, o->id);
        qstore__idlist_add(&s->cleanup, o->id, 0);
      }
    }
    if (s->cleanup) {
      rc = qstore__run(s->w.begin);
      if (rc == SQLITE_OK)
        rc = qstore__delete_cleanup(s);
      if (rc == SQLITE_OK)
        rc = qstore__run(s->w.commit);
      if (rc == SQLITE_OK)
        qstore__idlist_free(&s->cleanup);
      else
        rollback(s);
    }
  }
  while (list) {
    struct op *o = list;
    list = o->next;
    if (o->type == OP_COMMIT && o->status == 0 && o->home) {
      struct op *h = op_new(o->home, OP_HOME, o->id);
      struct qstore_msg *m = malloc(sizeof *m);
      if (h && m) {
        *m = o->m;
        memset(&o->m, 0, sizeof o->m);
        h->home_msg = m;
        h->home_cb = o->home_cb;
        h->home_arg = o->home_arg;
        sink_post(o->home, h);
      } else {
        free(h);
        free(m);
      }
    }
    sink_post(o->k, o);
  }
  /* Checkpoints after the answers, not inside COMMIT as SQLite's own
   * autocheckpoint would: the messages of this group do not wait for
   * queue.db's fsync, and what arrives meanwhile makes the next group
   * bigger. */
  if (s->full) {
    full_try_leave(s);
  } else if (s->wal_frames >= WAL_PAGES) {
    sqlite3_wal_checkpoint_v2(s->wdb, NULL, SQLITE_CHECKPOINT_PASSIVE, NULL,
                              NULL);
    s->wal_frames = 0;
  }
}

static void *writer_main(void *arg)
{
  struct qstore *s = arg;
  pthread_setname_np(pthread_self(), "tern-qwriter"); /* for top -H */
  struct op *list;
  while ((list = worker_take(&s->writer)) != NULL)
    writer_group(s, list);
  return NULL;
}

/* ---- the reader ------------------------------------------------------------ */

/* One chunk; for chunk 0 the prepended fields (chunk -1) in front of it,
 * in one buffer (the statement yields both rows, -1 first). */
static void reader_one(struct qstore *s, struct op *o)
{
  sqlite3_stmt *st = s->rd_chunk;
  sqlite3_bind_text(st, 1, o->id, -1, SQLITE_STATIC);
  sqlite3_bind_int64(st, 2, o->seq);
  int rc;
  size_t rows = 0;
  o->status = 0;
  while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
    size_t n = (size_t)sqlite3_column_bytes(st, 0);
    const void *p = sqlite3_column_blob(st, 0);
    char *d = realloc(o->data, o->len + n + 1);
    if (!d) {
      o->status = TERN_ENOMEM;
      break;
    }
    if (n)
      memcpy(d + o->len, p, n);
    o->data = d;
    o->len += n;
    rows++;
  }
  if (o->status == 0 && rc != SQLITE_DONE)
    o->status = qstore__map_rc(s->rdb, rc);
  else if (o->status == 0 && rows == 0)
    o->status = TERN_ENOENT;
  if (o->status != 0) {
    free(o->data);
    o->data = NULL;
    o->len = 0;
  }
  sqlite3_reset(st);
  sqlite3_clear_bindings(st);
}

static void *reader_main(void *arg)
{
  struct qstore *s = arg;
  pthread_setname_np(pthread_self(), "tern-qreader");
  struct op *list;
  while ((list = worker_take(&s->reader)) != NULL) {
    while (list) {
      struct op *o = list;
      list = o->next;
      reader_one(s, o);
      sink_post(o->k, o);
    }
  }
  return NULL;
}

/* ---- submitting ------------------------------------------------------------ */

/* An operation we could not allocate cannot be reported either: fail
 * loudly in the only way left, by not calling back. The caller's
 * allocation failure handling (a stuck session) then shows it; this only
 * happens when malloc of ~300 bytes fails. */

void qstore_chunk(struct qstore_sink *k, const char *id, uint32_t seq,
                  void *data, size_t len, qstore_done_fn cb, void *arg)
{
  struct op *o = op_new(k, OP_CHUNK, id);
  if (!o) {
    free(data);
    return;
  }
  o->seq = seq;
  o->data = data;
  o->len = len;
  o->cb = cb;
  o->arg = arg;
  worker_push(&k->s->writer, o);
}

void qstore_commit(struct qstore_sink *k, const struct qstore_msg *m,
                   void *last, size_t len, void *head, size_t head_len,
                   qstore_done_fn cb, void *arg,
                   struct qstore_sink *home,
                   void (*home_cb)(void *arg, struct qstore_msg *m),
                   void *home_arg)
{
  struct op *o = op_new(k, OP_COMMIT, m->id);
  if (!o) {
    free(last);
    free(head);
    return;
  }
  o->data = last;
  o->len = len;
  o->head = head;
  o->head_len = head ? head_len : 0;
  o->cb = cb;
  o->arg = arg;
  if (home_cb) {
    o->home = home;
    o->home_cb = home_cb;
    o->home_arg = home_arg;
  }
  if (msg_copy(&o->m, m) != 0) {
    o->status = TERN_ENOMEM;
    sink_post(k, o);
    return;
  }
  qstore__set_id(o->m.id, m->id);
  worker_push(&k->s->writer, o);
}

void qstore_drop(struct qstore_sink *k, const char *id, qstore_done_fn cb,
                 void *arg)
{
  struct op *o = op_new(k, OP_DROP, id);
  if (!o)
    return;
  o->cb = cb;
  o->arg = arg;
  worker_push(&k->s->writer, o);
}

static int upd_copy(struct upd *d, const struct qstore_update *u)
{
  d->held = u->held;
  d->warned = u->warned;
  d->remove = u->remove;
  d->copy = u->copy;
  if (u->nrcpts) {
    d->rcpts = calloc(u->nrcpts, sizeof *d->rcpts);
    if (!d->rcpts)
      return -1;
    d->nrcpts = u->nrcpts;
    for (size_t i = 0; i < u->nrcpts; i++) {
      d->rcpts[i] = u->rcpts[i];
      d->rcpts[i].last_reply = xstrdup(u->rcpts[i].last_reply);
      d->rcpts[i].remote_mta = xstrdup(u->rcpts[i].remote_mta);
      if ((u->rcpts[i].last_reply && !d->rcpts[i].last_reply) ||
          (u->rcpts[i].remote_mta && !d->rcpts[i].remote_mta))
        return -1;
    }
  }
  if (u->dsn) {
    if (msg_copy(&d->dsn, u->dsn) != 0)
      return -1;
    qstore__set_id(d->dsn.id, u->dsn->id);
    d->has_dsn = true;
  }
  return 0;
}

void qstore_update(struct qstore_sink *k, const struct qstore_update *u,
                   qstore_done_fn cb, void *arg)
{
  struct op *o = op_new(k, OP_UPDATE, u->id);
  if (!o) {
    free(u->head);
    free(u->tail);
    return;
  }
  o->cb = cb;
  o->arg = arg;
  /* head and tail are ours from here, whatever happens */
  if (u->dsn) {
    o->u.head = u->head;
    o->u.head_len = u->head_len;
    o->u.tail = u->tail;
    o->u.tail_len = u->tail_len;
  } else {
    free(u->head);
    free(u->tail);
  }
  if (upd_copy(&o->u, u) != 0) {
    o->status = TERN_ENOMEM;
    sink_post(k, o);
    return;
  }
  worker_push(&k->s->writer, o);
}

void qstore_read(struct qstore_sink *k, const char *id, uint32_t seq,
                 void (*cb)(void *arg, int status, const char *data,
                            size_t len),
                 void *arg)
{
  struct op *o = op_new(k, OP_READ, id);
  if (!o)
    return;
  o->seq = seq;
  o->read_cb = cb;
  o->arg = arg;
  worker_push(&k->s->reader, o);
}

/* ---- ids ------------------------------------------------------------------- */

static void b36(char *out, uint64_t v, int width)
{
  static const char digits[] = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ";
  for (int i = width - 1; i >= 0; i--) {
    out[i] = digits[v % 36];
    v /= 36;
  }
}

static uint64_t b36_decode(const char *s, int width, bool *ok)
{
  uint64_t v = 0;
  *ok = true;
  for (int i = 0; i < width; i++) {
    char c = s[i];
    int d;
    if (c >= '0' && c <= '9')
      d = c - '0';
    else if (c >= 'A' && c <= 'Z')
      d = c - 'A' + 10;
    else {
      *ok = false;
      return 0;
    }
    v = v * 36 + (uint64_t)d;
  }
  return v;
}

/* 11 base-36 digits of microseconds cover the years until ~6100; fixed
 * width so that ids sort by time as strings. */
#define ID_TIME_DIGITS 11
#define ID_COUNT_DIGITS 3

void qstore_new_id(struct qstore *s, char out[TERN_QUEUE_ID_MAX])
{
  struct timeval tv;
  gettimeofday(&tv, NULL);
  uint64_t now = (uint64_t)tv.tv_sec * 1000000u + (uint64_t)tv.tv_usec;
  /* Strictly increasing even if the clock steps back: never the same
   * time part twice in this spool (id_last is seeded from the newest id
   * stored at open). */
  pthread_mutex_lock(&s->idmu);
  if (now <= s->id_last)
    now = s->id_last + 1;
  s->id_last = now;
  pthread_mutex_unlock(&s->idmu);
  unsigned c = atomic_fetch_add(&s->id_counter, 1) % (36 * 36 * 36);
  b36(out, now, ID_TIME_DIGITS);
  b36(out + ID_TIME_DIGITS, c, ID_COUNT_DIGITS);
  out[ID_TIME_DIGITS + ID_COUNT_DIGITS] = '\0';
}

/* ---- list and body --------------------------------------------------------- */

#define MSG_COLS                                                            \
  "id, arrival, sender, size, body, smtputf8, requiretls, ret, envid, "     \
  "client, held, is_bounce, warned, nchunks"

static int read_msg(sqlite3 *db, sqlite3_stmt *st, sqlite3_stmt *rs,
                    struct qstore_msg *m)
{
  memset(m, 0, sizeof *m);
  const unsigned char *id = sqlite3_column_text(st, 0);
  qstore__set_id(m->id, id ? (const char *)id : "");
  m->arrival = sqlite3_column_int64(st, 1);
  m->from = col_text(st, 2);
  m->size = (uint64_t)sqlite3_column_int64(st, 3);
  m->body = sqlite3_column_int(st, 4);
  m->smtputf8 = sqlite3_column_int(st, 5) != 0;
  m->requiretls = sqlite3_column_int(st, 6) != 0;
  m->ret = sqlite3_column_int(st, 7);
  m->envid = col_text(st, 8);
  m->client = col_text(st, 9);
  m->held = sqlite3_column_int(st, 10) != 0;
  m->is_bounce = sqlite3_column_int(st, 11) != 0;
  m->warned = sqlite3_column_int(st, 12) != 0;
  m->nchunks = (uint32_t)sqlite3_column_int64(st, 13);
  if (!m->from)
    return TERN_ENOMEM;

  sqlite3_bind_text(rs, 1, m->id, -1, SQLITE_STATIC);
  size_t cap = 0;
  int rc, ret = 0;
  while ((rc = sqlite3_step(rs)) == SQLITE_ROW) {
    if (m->nrcpts == cap) {
      size_t ncap = cap ? cap * 2 : 4;
      struct qstore_rcpt *nr = realloc(m->rcpts, ncap * sizeof *nr);
      if (!nr) {
        ret = TERN_ENOMEM;
        break;
      }
      m->rcpts = nr;
      cap = ncap;
    }
    struct qstore_rcpt *r = &m->rcpts[m->nrcpts++];
    memset(r, 0, sizeof *r);
    r->idx = (uint32_t)sqlite3_column_int64(rs, 0);
    r->addr = col_text(rs, 1);
    r->orcpt = col_text(rs, 2);
    r->notify = (unsigned)sqlite3_column_int64(rs, 3);
    r->dest = col_text(rs, 4);
    r->state = sqlite3_column_int(rs, 5);
    r->attempts = (unsigned)sqlite3_column_int64(rs, 6);
    r->next_try = sqlite3_column_int64(rs, 7);
    r->last_code = sqlite3_column_int(rs, 8);
    r->last_reply = col_text(rs, 9);
    r->remote_mta = col_text(rs, 10);
    if (!r->addr || !r->dest) {
      ret = TERN_ENOMEM;
      break;
    }
  }
  if (!ret && rc != SQLITE_DONE)
    ret = qstore__map_rc(db, rc);
  sqlite3_reset(rs);
  sqlite3_clear_bindings(rs);
  return ret;
}

int qstore_list(struct qstore *s, const char *id,
                int (*fn)(const struct qstore_msg *m, void *arg), void *arg)
{
  pthread_mutex_lock(&s->lmu);
  sqlite3_stmt *st = NULL, *rs = NULL;
  int ret = 0, rc;
  bool found = false;
  /* One read transaction: a consistent snapshot of the whole queue. */
  rc = sqlite3_exec(s->ldb, "BEGIN", NULL, NULL, NULL);
  if (rc != SQLITE_OK) {
    ret = qstore__map_rc(s->ldb, rc);
    goto out;
  }
  rc = sqlite3_prepare_v2(
      s->ldb,
      id ? "SELECT " MSG_COLS " FROM msg WHERE id = ?"
         : "SELECT " MSG_COLS " FROM msg ORDER BY arrival, id",
      -1, &st, NULL);
  if (rc == SQLITE_OK)
    rc = sqlite3_prepare_v2(
        s->ldb,
        "SELECT idx, addr, orcpt, notify, dest, state, attempts, next_try,"
        " last_code, last_reply, remote_mta FROM rcpt WHERE msg = ?"
        " ORDER BY idx",
        -1, &rs, NULL);
  if (rc != SQLITE_OK) {
    ret = qstore__map_rc(s->ldb, rc);
    goto out;
  }
  if (id)
    sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
  while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
    struct qstore_msg m;
    found = true;
    ret = read_msg(s->ldb, st, rs, &m);
    int stop = ret ? 0 : fn(&m, arg);
    qstore_msg_clear(&m);
    if (ret || stop)
      break;
  }
  if (!ret && rc != SQLITE_ROW && rc != SQLITE_DONE)
    ret = qstore__map_rc(s->ldb, rc);
  if (!ret && id && !found)
    ret = TERN_ENOENT;
out:
  sqlite3_finalize(st);
  sqlite3_finalize(rs);
  if (!sqlite3_get_autocommit(s->ldb))
    sqlite3_exec(s->ldb, "COMMIT", NULL, NULL, NULL);
  pthread_mutex_unlock(&s->lmu);
  return ret;
}

int qstore_body(struct qstore *s, const char *id,
                int (*fn)(void *arg, const char *data, size_t len),
                void *arg)
{
  pthread_mutex_lock(&s->lmu);
  sqlite3_stmt *st = NULL;
  int ret = 0, rc;
  rc = sqlite3_exec(s->ldb, "BEGIN", NULL, NULL, NULL);
  if (rc == SQLITE_OK)
    rc = sqlite3_prepare_v2(s->ldb, "SELECT nchunks FROM msg WHERE id = ?",
                            -1, &st, NULL);
  if (rc != SQLITE_OK) {
    ret = qstore__map_rc(s->ldb, rc);
    goto out;
  }
  sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
  rc = sqlite3_step(st);
  if (rc != SQLITE_ROW) {
    ret = rc == SQLITE_DONE ? TERN_ENOENT : qstore__map_rc(s->ldb, rc);
    goto out;
  }
  sqlite3_finalize(st);
  st = NULL;
  rc = sqlite3_prepare_v2(
      s->ldb, "SELECT data FROM chunk WHERE msg = ? ORDER BY seq", -1, &st,
      NULL);
  if (rc != SQLITE_OK) {
    ret = qstore__map_rc(s->ldb, rc);
    goto out;
  }
  sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
  while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
    const char *p = sqlite3_column_blob(st, 0);
    size_t n = (size_t)sqlite3_column_bytes(st, 0);
    if (fn(arg, p ? p : "", n) != 0)
      break;
  }
  if (rc != SQLITE_ROW && rc != SQLITE_DONE)
    ret = qstore__map_rc(s->ldb, rc);
out:
  sqlite3_finalize(st);
  if (!sqlite3_get_autocommit(s->ldb))
    sqlite3_exec(s->ldb, "COMMIT", NULL, NULL, NULL);
  pthread_mutex_unlock(&s->lmu);
  return ret;
}

unsigned long qstore_test_commits(const struct qstore *s)
{
  return atomic_load(&((struct qstore *)s)->commits);
}

/* ---- open and close --------------------------------------------------------- */

static int open_db(struct qstore *s, sqlite3 **db, bool readonly, char *err,
                   size_t cap)
{
  int flags = readonly ? SQLITE_OPEN_READONLY
                       : SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE;
  /* Each connection is used by one thread at a time (ldb under lmu). */
  flags |= SQLITE_OPEN_NOMUTEX;
  if (!readonly) {
    /* SQLite would create queue.db 0644 less the umask; the queue holds
     * other people's mail: owner only. Its -wal and -shm take the
     * database file's mode (the unix VFS copies it), so they are 0600
     * too. A spool made 0644 by an older version is tightened. */
    int fd = open(s->path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    struct stat sb;
    if (fd < 0 || fstat(fd, &sb) != 0 ||
        ((sb.st_mode & 077) && fchmod(fd, sb.st_mode & 0700) != 0)) {
      int en = errno;
      set_err(err, cap, "%s: %s", s->path, strerror(en));
      if (fd >= 0)
        close(fd);
      return en == ENOSPC || en == EDQUOT ? TERN_ENOSPC : TERN_EIO;
    }
    close(fd);
  }
  int rc = sqlite3_open_v2(s->path, db, flags, NULL);
  if (rc != SQLITE_OK) {
    set_err(err, cap, "%s: %s", s->path,
            *db ? sqlite3_errmsg(*db) : sqlite3_errstr(rc));
    int e = *db ? qstore__map_rc(*db, rc) : TERN_EIO;
    sqlite3_close(*db);
    *db = NULL;
    return e;
  }
  sqlite3_extended_result_codes(*db, 1);
  sqlite3_busy_timeout(*db, 10000);
  char sql[128];
  snprintf(sql, sizeof sql, "PRAGMA synchronous=%s",
           s->fsync ? "FULL" : "OFF");
  rc = sqlite3_exec(*db, sql, NULL, NULL, NULL);
  if (rc != SQLITE_OK) {
    set_err(err, cap, "%s: %s", s->path, sqlite3_errmsg(*db));
    return qstore__map_rc(*db, rc);
  }
  return 0;
}

static int prep(struct qstore *s, sqlite3 *db, sqlite3_stmt **st,
                const char *sql, char *err, size_t cap)
{
  int rc = sqlite3_prepare_v3(db, sql, -1, SQLITE_PREPARE_PERSISTENT, st,
                              NULL);
  if (rc != SQLITE_OK) {
    set_err(err, cap, "%s: %s: %s", s->path, sql, sqlite3_errmsg(db));
    return qstore__map_rc(db, rc);
  }
  return 0;
}

/* After every commit on the writer's connection: how big the WAL is. */
static int wal_hook(void *arg, sqlite3 *db, const char *name, int frames)
{
  (void)db;
  (void)name;
  ((struct qstore *)arg)->wal_frames = frames;
  return SQLITE_OK;
}

static int prepare_writer(struct qstore *s, char *err, size_t cap)
{
  struct {
    sqlite3_stmt **st;
    const char *sql;
  } t[] = {
      {&s->w.begin, "BEGIN IMMEDIATE"},
      {&s->w.commit, "COMMIT"},
      {&s->w.rollback, "ROLLBACK"},
      {&s->w.sp, "SAVEPOINT op"},
      {&s->w.sp_rollback, "ROLLBACK TO op"},
      {&s->w.sp_release, "RELEASE op"},
      {&s->w.ins_chunk, "INSERT INTO chunk(msg, seq, data) VALUES (?, ?, ?)"},
      {&s->w.ins_msg,
       "INSERT INTO msg(" MSG_COLS ") VALUES "
       "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"},
      {&s->w.ins_rcpt,
       "INSERT INTO rcpt(msg, idx, addr, orcpt, notify, dest, state, "
       "attempts, next_try, last_code, last_reply, remote_mta) VALUES "
       "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"},
      {&s->w.count_chunks,
       "SELECT count(*), max(seq) FROM chunk WHERE msg = ? AND seq >= 0"},
      /* never a committed message's: a refused second commit of the
       * same id, a drop of the wrong id */
      {&s->w.del_chunks,
       "DELETE FROM chunk WHERE msg = ?1 AND NOT EXISTS "
       "(SELECT 1 FROM msg WHERE id = ?1)"},
      {&s->w.del_all_chunks, "DELETE FROM chunk WHERE msg = ?"},
      {&s->w.del_msg, "DELETE FROM msg WHERE id = ?"},
      {&s->w.del_rcpts, "DELETE FROM rcpt WHERE msg = ?"},
      {&s->w.get_msg, "SELECT nchunks FROM msg WHERE id = ?"},
      {&s->w.upd_rcpt,
       "UPDATE rcpt SET state = ?, attempts = ?, next_try = ?, "
       "last_code = ?, last_reply = ?, remote_mta = ? "
       "WHERE msg = ? AND idx = ?"},
      {&s->w.upd_held, "UPDATE msg SET held = ? WHERE id = ?"},
      {&s->w.upd_warned, "UPDATE msg SET warned = ? WHERE id = ?"},
      {&s->w.copy_chunks,
       "INSERT INTO chunk(msg, seq, data) "
       "SELECT ?1, row_number() OVER (ORDER BY seq), data FROM chunk"
       " WHERE msg = ?2 ORDER BY seq"},
      {&s->w.sel_chunks, "SELECT data FROM chunk WHERE msg = ? ORDER BY seq"},
  };
  for (size_t i = 0; i < sizeof t / sizeof t[0]; i++) {
    int e = prep(s, s->wdb, t[i].st, t[i].sql, err, cap);
    if (e)
      return e;
  }
  return 0;
}

static void finalize_writer(struct qstore *s)
{
  sqlite3_stmt **p = (sqlite3_stmt **)&s->w;
  for (size_t i = 0; i < sizeof s->w / sizeof *p; i++) {
    sqlite3_finalize(p[i]);
    p[i] = NULL;
  }
}

static int exec(struct qstore *s, sqlite3 *db, const char *sql, char *err,
                size_t cap)
{
  int rc = sqlite3_exec(db, sql, NULL, NULL, NULL);
  if (rc != SQLITE_OK) {
    set_err(err, cap, "%s: %s", s->path, sqlite3_errmsg(db));
    return qstore__map_rc(db, rc);
  }
  return 0;
}

static int get_int(sqlite3 *db, const char *sql, int64_t *v)
{
  sqlite3_stmt *st;
  int rc = sqlite3_prepare_v2(db, sql, -1, &st, NULL);
  if (rc != SQLITE_OK)
    return rc;
  rc = sqlite3_step(st);
  *v = rc == SQLITE_ROW ? sqlite3_column_int64(st, 0) : 0;
  if (rc == SQLITE_ROW || rc == SQLITE_DONE)
    rc = SQLITE_OK;
  sqlite3_finalize(st);
  return rc;
}

/* Create the schema in a new database, or check an existing one's
 * version. */
static int check_schema(struct qstore *s, sqlite3 *db, bool readonly,
                        char *err, size_t cap)
{
  int64_t v;
  int rc = get_int(db, "PRAGMA user_version", &v);
  if (rc != SQLITE_OK) {
    set_err(err, cap, "%s: %s", s->path, sqlite3_errmsg(db));
    return qstore__map_rc(db, rc);
  }
  if (v > SCHEMA_VERSION) {
    set_err(err, cap,
            "%s: schema version %lld is newer than this program's (%d): "
            "use the tern that wrote it",
            s->path, (long long)v, SCHEMA_VERSION);
    return TERN_ENOTSUP;
  }
  if (v == SCHEMA_VERSION)
    return 0;
  if (readonly) {
    set_err(err, cap, "%s: not a queue (no schema)", s->path);
    return TERN_ENOENT;
  }
  /* BEGIN IMMEDIATE, then look again: two processes never both create. */
  int e = exec(s, db, "BEGIN IMMEDIATE", err, cap);
  if (e)
    return e;
  rc = get_int(db, "PRAGMA user_version", &v);
  if (rc == SQLITE_OK && v == 0) {
    int64_t ntab = 0;
    rc = get_int(db, "SELECT count(*) FROM sqlite_schema", &ntab);
    if (rc == SQLITE_OK && ntab != 0) {
      sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
      set_err(err, cap, "%s: not a queue database (tables without a "
                        "schema version)", s->path);
      return TERN_EIO;
    }
    if (rc == SQLITE_OK)
      rc = sqlite3_exec(db, schema_sql, NULL, NULL, NULL);
    if (rc == SQLITE_OK) {
      char sql[64];
      snprintf(sql, sizeof sql, "PRAGMA user_version=%d", SCHEMA_VERSION);
      rc = sqlite3_exec(db, sql, NULL, NULL, NULL);
    }
  }
  if (rc == SQLITE_OK)
    rc = sqlite3_exec(db, "COMMIT", NULL, NULL, NULL);
  if (rc != SQLITE_OK) {
    set_err(err, cap, "%s: creating the schema: %s", s->path,
            sqlite3_errmsg(db));
    e = qstore__map_rc(db, rc);
    sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
    return e;
  }
  return 0;
}

/* WAL mode (persistent in the file). SQLite answers with the mode it is
 * in: a file system without shared memory for the -shm would leave the
 * database in another mode, which group commit and concurrent readers
 * rely on not being. */
static int set_wal(struct qstore *s, char *err, size_t cap)
{
  sqlite3_stmt *st;
  int rc = sqlite3_prepare_v2(s->wdb, "PRAGMA journal_mode=WAL", -1, &st,
                              NULL);
  if (rc == SQLITE_OK)
    rc = sqlite3_step(st);
  if (rc != SQLITE_ROW) {
    set_err(err, cap, "%s: journal_mode=WAL: %s", s->path,
            sqlite3_errmsg(s->wdb));
    int e = qstore__map_rc(s->wdb, rc);
    sqlite3_finalize(st);
    return e;
  }
  const char *mode = (const char *)sqlite3_column_text(st, 0);
  int e = 0;
  if (!mode || strcmp(mode, "wal") != 0) {
    set_err(err, cap, "%s: cannot use WAL mode here (journal_mode is %s)",
            s->path, mode ? mode : "unknown");
    e = TERN_ENOTSUP;
  }
  sqlite3_finalize(st);
  return e;
}

static int take_lock(struct qstore *s, char *err, size_t cap)
{
  size_t n = strlen(s->dir) + sizeof "/lock";
  char *p = malloc(n);
  if (!p)
    return TERN_ENOMEM;
  snprintf(p, n, "%s/lock", s->dir);
  s->lockfd = open(p, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (s->lockfd < 0) {
    int e = errno;
    set_err(err, cap, "%s: %s", p, strerror(e));
    free(p);
    return e == ENOSPC || e == EDQUOT ? TERN_ENOSPC : TERN_EIO;
  }
  free(p);
  if (flock(s->lockfd, LOCK_EX | LOCK_NB) != 0) {
    int e = errno;
    if (e == EWOULDBLOCK) {
      set_err(err, cap, "%s: in use by another process", s->dir);
      return TERN_EBUSY;
    }
    set_err(err, cap, "%s/lock: %s", s->dir, strerror(e));
    return TERN_EIO;
  }
  return 0;
}

/* The newest id stored, so that qstore_new_id never goes back even if
 * the clock did while we were stopped. */
static void seed_ids(struct qstore *s)
{
  sqlite3_stmt *st;
  if (sqlite3_prepare_v2(s->ldb, "SELECT max(id) FROM msg", -1, &st, NULL) !=
      SQLITE_OK)
    return;
  if (sqlite3_step(st) == SQLITE_ROW) {
    const char *id = (const char *)sqlite3_column_text(st, 0);
    bool ok;
    if (id && strlen(id) >= ID_TIME_DIGITS) {
      uint64_t t = b36_decode(id, ID_TIME_DIGITS, &ok);
      if (ok && t > s->id_last)
        s->id_last = t;
    }
  }
  sqlite3_finalize(st);
}

static int start_thread(struct worker *w, void *(*fn)(void *), void *arg)
{
  if (pthread_create(&w->thr, NULL, fn, arg) != 0)
    return TERN_ENOMEM;
  w->started = true;
  return 0;
}

int qstore_open(struct qstore **out, const char *dir, bool fsync,
                bool readonly, char *err, size_t cap)
{
  *out = NULL;
  set_err(err, cap, "%s", "");
  struct qstore *s = calloc(1, sizeof *s);
  if (!s)
    return TERN_ENOMEM;
  s->lockfd = -1;
  s->fsync = fsync;
  s->readonly = readonly;
  s->dir = strdup(dir);
  size_t plen = strlen(dir) + sizeof "/queue.db";
  s->path = malloc(plen);
  if (!s->dir || !s->path) {
    free(s->dir);
    free(s->path);
    free(s);
    return TERN_ENOMEM;
  }
  snprintf(s->path, plen, "%s/queue.db", dir);
  s->reserve_path = malloc(plen);
  if (!s->reserve_path) {
    free(s->dir);
    free(s->path);
    free(s);
    return TERN_ENOMEM;
  }
  snprintf(s->reserve_path, plen, "%s/reserve", dir);
  pthread_mutex_init(&s->lmu, NULL);
  pthread_mutex_init(&s->idmu, NULL);
  pthread_mutex_init(&s->nmu, NULL);
  worker_init(&s->writer);
  worker_init(&s->reader);

  int e = 0;
  if (readonly) {
    struct stat sb;
    if (stat(s->path, &sb) != 0) {
      int en = errno;
      set_err(err, cap, "%s: %s", s->path, strerror(en));
      e = en == ENOENT ? TERN_ENOENT : TERN_EIO;
      goto fail;
    }
    e = open_db(s, &s->ldb, true, err, cap);
    if (!e)
      e = check_schema(s, s->ldb, true, err, cap);
    if (e)
      goto fail;
    *out = s;
    return 0;
  }

  if (mkdir(dir, 0700) != 0 && errno != EEXIST) {
    int en = errno;
    set_err(err, cap, "%s: %s", dir, strerror(en));
    e = en == ENOSPC || en == EDQUOT ? TERN_ENOSPC : TERN_EIO;
    goto fail;
  }
  e = take_lock(s, err, cap);
  if (e)
    goto fail;
  e = open_db(s, &s->wdb, false, err, cap);
  if (e)
    goto fail;
  /* page_size only matters for a new database (before the first table);
   * WAL mode is persistent in the file. */
  char sql[64];
  snprintf(sql, sizeof sql, "PRAGMA page_size=%d", PAGE_SIZE);
  e = exec(s, s->wdb, sql, err, cap);
  /* Incremental: free pages can be given back to the file system when
   * the disk is full (see full_enter). Like page_size, only effective
   * before the first table. */
  if (!e)
    e = exec(s, s->wdb, "PRAGMA auto_vacuum=INCREMENTAL", err, cap);
  if (!e)
    e = set_wal(s, err, cap);
  if (!e)
    sqlite3_wal_hook(s->wdb, wal_hook, s); /* replaces autocheckpoint */
  if (!e)
    e = check_schema(s, s->wdb, false, err, cap);
  /* Chunks without a message: one still coming in when we stopped.
   * Through the (msg, seq) index, not the blobs. At a full disk they
   * stay until the next start rather than keep the queue from
   * starting. */
  if (!e) {
    e = exec(s, s->wdb,
             "DELETE FROM chunk WHERE msg IN (SELECT DISTINCT msg FROM chunk"
             " WHERE msg NOT IN (SELECT id FROM msg))",
             err, cap);
    if (e == TERN_ENOSPC)
      e = 0;
  }
  if (!e)
    e = prepare_writer(s, err, cap);
  if (!e)
    e = open_db(s, &s->rdb, false, err, cap);
  if (!e)
    e = prep(s, s->rdb, &s->rd_chunk,
             "SELECT data FROM chunk WHERE msg = ?1 AND seq BETWEEN"
             " (CASE WHEN ?2 = 0 THEN -1 ELSE ?2 END) AND ?2 ORDER BY seq",
             err, cap);
  if (!e)
    e = open_db(s, &s->ldb, false, err, cap);
  if (e)
    goto fail;
  seed_ids(s);
  /* Without room for the reserve we start as after a full disk. */
  if (!full_can_leave(s)) {
    s->full = s->note_full = true; /* told when someone listens */
    unlink(s->reserve_path);
  }
  e = start_thread(&s->writer, writer_main, s);
  if (!e)
    e = start_thread(&s->reader, reader_main, s);
  if (e) {
    set_err(err, cap, "%s: cannot start a thread", s->path);
    goto fail;
  }
  *out = s;
  return 0;
fail:
  qstore_close(s);
  return e;
}

void qstore_close(struct qstore *s)
{
  if (!s)
    return;
  worker_stop(&s->writer);
  worker_stop(&s->reader);
  worker_destroy(&s->writer);
  worker_destroy(&s->reader);
  finalize_writer(s);
  sqlite3_finalize(s->rd_chunk);
  sqlite3_close(s->rdb);
  sqlite3_close(s->ldb);
  /* The writer's connection last: closing the last connection
   * checkpoints the WAL into queue.db and removes the -wal and -shm. */
  sqlite3_close(s->wdb);
  qstore__idlist_free(&s->lost);
  qstore__idlist_free(&s->cleanup);
  if (s->lockfd >= 0)
    close(s->lockfd);
  pthread_mutex_destroy(&s->lmu);
  pthread_mutex_destroy(&s->idmu);
  pthread_mutex_destroy(&s->nmu);
  free(s->dir);
  free(s->path);
  free(s->reserve_path);
  free(s);
}
