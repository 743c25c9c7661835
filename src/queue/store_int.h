/*
 * The store's insides (store.c, store_apply.c): the operations, the
 * threads' queues and the store object. Nothing outside src/queue/store*.c
 * includes this.
 */
#ifndef TERN_QUEUE_STORE_INT_H
#define TERN_QUEUE_STORE_INT_H

#include <pthread.h>
#include <stdatomic.h>
#include <string.h>

#include <sqlite3.h>

#include "store.h"

/* ---- operations ---------------------------------------------------------- */

enum op_type {
  OP_CHUNK,
  OP_COMMIT,
  OP_DROP,
  OP_UPDATE,
  OP_READ,
  OP_HOME,
  OP_NOTE /* full mode entered (status 1) or left (0): qstore_set_notify */
};

/* A deep copy of a qstore_update. */
struct upd {
  struct qstore_rcpt_update *rcpts;
  size_t nrcpts;
  int held, warned;
  bool remove;
  bool has_dsn;
  struct qstore_msg dsn;
  void *head, *tail;
  size_t head_len, tail_len;
  enum qstore_copy copy;
};

struct op {
  struct op *next;
  enum op_type type;
  struct qstore_sink *k;
  char id[TERN_QUEUE_ID_MAX];
  int64_t seq; /* -1: the prepended fields */
  void *data; /* chunk, commit's last chunk, read result */
  size_t len;
  int status;
  bool refused; /* failed before the transaction (disk full mode) */
  qstore_done_fn cb;
  void *arg;
  void (*read_cb)(void *arg, int status, const char *data, size_t len);
  /* commit */
  struct qstore_msg m;
  void *head; /* prepended fields (chunk -1), or NULL */
  size_t head_len;
  struct qstore_sink *home;
  void (*home_cb)(void *arg, struct qstore_msg *m);
  void *home_arg;
  struct qstore_msg *home_msg; /* OP_HOME: handed to home_cb */
  void (*note_cb)(void *arg, bool full, uint64_t need); /* OP_NOTE */
  /* update */
  struct upd u;
};

struct opq {
  struct op *head, *tail;
};

struct qstore_sink {
  struct qstore *s;
  uv_async_t async;
  pthread_mutex_t mu;
  struct opq done;
};

/* An id whose chunks went down with a failed group (or must be deleted
 * once the disk lets us): the writer's own bookkeeping. */
struct idnode {
  struct idnode *next;
  char id[TERN_QUEUE_ID_MAX];
  int status;
};

struct wstmts {
  sqlite3_stmt *begin, *commit, *rollback;
  sqlite3_stmt *sp, *sp_rollback, *sp_release;
  sqlite3_stmt *ins_chunk, *ins_msg, *ins_rcpt;
  sqlite3_stmt *count_chunks, *del_chunks, *del_all_chunks, *del_msg, *del_rcpts;
  sqlite3_stmt *get_msg, *upd_rcpt, *upd_held, *upd_warned;
  sqlite3_stmt *copy_chunks, *sel_chunks;
};

struct worker {
  pthread_t thr;
  bool started;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  struct opq q;
  bool stop;
};

struct qstore {
  char *dir;
  char *path;
  bool readonly, fsync;
  int lockfd;

  sqlite3 *wdb; /* writer thread */
  sqlite3 *rdb; /* reader thread */
  sqlite3 *ldb; /* qstore_list/qstore_body, under lmu */
  pthread_mutex_t lmu;
  struct wstmts w;
  sqlite3_stmt *rd_chunk;

  struct worker writer, reader;
  struct idnode *lost;    /* writer only */
  struct idnode *cleanup; /* writer only */
  char *reserve_path;     /* DIR/reserve */
  bool full;              /* writer only: refusing new data */
  /* Who hears of full mode (qstore_set_notify), under nmu; note_full is
   * the state last told (or to be told once someone listens). */
  pthread_mutex_t nmu;
  struct qstore_sink *note_k;
  void (*note_cb)(void *arg, bool full, uint64_t need);
  void *note_arg;
  bool note_full;
  int wal_frames;         /* writer only: in the WAL after the last commit */

  pthread_mutex_t idmu;
  uint64_t id_last;
  atomic_uint id_counter;

  atomic_ulong commits;
};

/* Copy an id, cut to TERN_QUEUE_ID_MAX - 1 characters. */
static inline void qstore__set_id(char dst[TERN_QUEUE_ID_MAX], const char *id)
{
  size_t n = id ? strnlen(id, TERN_QUEUE_ID_MAX - 1) : 0;
  memcpy(dst, id, n);
  dst[n] = '\0';
}

/* ---- store_apply.c: the writer's work inside a group transaction ---- */

/* The TERN_E* code for an SQLite failure on db: TERN_ENOSPC for a full
 * disk or quota (SQLITE_FULL, or an I/O error with errno ENOSPC/EDQUOT),
 * TERN_ENOMEM, else TERN_EIO. */
int qstore__map_rc(sqlite3 *db, int rc);
/* Step st to its end (rows ignored), reset it and clear its bindings.
 * SQLITE_OK or the error. */
int qstore__run(sqlite3_stmt *st);

/* The writer's per-id lists (lost chunks, chunks to delete). */
struct idnode *qstore__idlist_find(struct idnode *l, const char *id);
/* Add id (or update its status); on allocation failure nothing. */
void qstore__idlist_add(struct idnode **l, const char *id, int status);
void qstore__idlist_remove(struct idnode **l, const char *id);
void qstore__idlist_free(struct idnode **l);

/* Apply one operation inside the open group transaction: SQLITE_OK with
 * o->status set (its own outcome; a refusal is undone by its savepoint),
 * or an SQLite error that fails the whole group. */
int qstore__apply(struct qstore *s, struct op *o);
/* Delete the chunks of every id in s->cleanup (in the open
 * transaction). */
int qstore__delete_cleanup(struct qstore *s);

#endif /* TERN_QUEUE_STORE_INT_H */
