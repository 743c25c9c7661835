/*
 * The queue's store (src/queue/store.c): an SQLite database in WAL mode
 * in the spool directory, written by one writer thread that commits
 * whatever is waiting in one transaction (group commit: one fsync for
 * every message and state change that arrived meanwhile), and read by
 * one reader thread. Nothing here runs the scheduler; queue.c does.
 *
 * Schema (docs/queue.md documents it for operators):
 *   msg(id TEXT PRIMARY KEY, arrival, sender, size, body, smtputf8,
 *       requiretls, ret, envid, client, held, is_bounce, warned, nchunks)
 *   rcpt(msg, idx, addr, orcpt, notify, dest, state, attempts, next_try,
 *        last_code, last_reply, remote_mta; PRIMARY KEY (msg, idx))
 *   chunk(msg, seq, data BLOB; PRIMARY KEY (msg, seq))
 * (msg and rcpt are WITHOUT ROWID tables; PRAGMA user_version is the
 * schema's version, 1.) Chunk seq -1, when there is one, is header
 * fields put in front of the body after it was written
 * (tern_queue_msg_prepend: DKIM-Signature); nchunks counts only the
 * chunks from 0. A msg row exists only for a committed message:
 * chunks without one are a message still coming in (or left by a crash:
 * removed at open).
 *
 * Files in the directory: queue.db (with -wal and -shm while open), lock
 * (flock()ed by the one writer), reserve (8 MiB kept allocated for a full
 * disk, see below).
 *
 * Disk full. SQLite needs room even to delete. When a group transaction
 * fails with ENOSPC the store removes DIR/reserve and refuses new
 * messages (qstore_chunk and qstore_commit complete with TERN_ENOSPC
 * without touching the database) while updates, removals and DSNs go on
 * in the room the reserve left; it accepts new messages again once the
 * reserve and as much again are free (removed messages' pages are given
 * back to the file system meanwhile). A message any of whose chunks
 * failed can no longer be committed: its qstore_commit gets that
 * failure (a body with a hole is never committed).
 *
 * Completions. Every asynchronous call names a sink: a loop's mailbox
 * (a uv_async). Its callback runs on that loop, never inside the call
 * that asked. Buffers handed in are owned by the store from the call on
 * (it frees them), whatever the outcome. Operations of one sink complete
 * in the order they were asked within their thread (writer or reader).
 * If the few hundred bytes an operation needs cannot be allocated, it
 * is dropped and its callback never runs (the only such case).
 *
 * Status values are 0 or a TERN_E* code: TERN_ENOSPC (disk full, quota:
 * SQLITE_FULL, ENOSPC, EDQUOT), TERN_EIO (any other failure), TERN_ENOENT.
 * A group transaction that fails fails every operation in it.
 */
#ifndef TERN_QUEUE_STORE_H
#define TERN_QUEUE_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include <tern/queue.h>

struct qstore;
struct qstore_sink;

/* Recipient states as stored (the same numbers as tern_queue_rcpt_state;
 * ACTIVE is never stored). */
enum { QS_QUEUED = 0, QS_DEFERRED = 1, QS_DELIVERED = 3, QS_FAILED = 4 };

struct qstore_rcpt {
  uint32_t idx;          /* its place in the message, from 0 */
  char *addr;
  char *orcpt;           /* "type;address" or NULL */
  unsigned notify;
  char *dest;
  int state;             /* QS_* */
  unsigned attempts;
  int64_t next_try;      /* unix seconds, 0 = now */
  int last_code;         /* 0: never tried */
  char *last_reply;      /* "451 4.4.1 text", or NULL */
  char *remote_mta;      /* or NULL */
};

struct qstore_msg {
  char id[TERN_QUEUE_ID_MAX];
  int64_t arrival;       /* unix seconds */
  char *from;            /* "" for <> */
  uint64_t size;
  int body;              /* enum tern_body */
  bool smtputf8, requiretls;
  int ret;               /* enum tern_dsn_ret */
  char *envid;           /* or NULL */
  char *client;          /* or NULL */
  bool held, is_bounce, warned;
  uint32_t nchunks;
  struct qstore_rcpt *rcpts;
  size_t nrcpts;
};

/* Free what a qstore_msg holds (not the struct itself). */
void qstore_msg_clear(struct qstore_msg *m);

/*
 * Open the store in `dir` (created 0700 unless readonly), create the
 * schema if new, and, unless readonly, take the spool's lock (a second
 * writer gets TERN_EBUSY, "DIR: in use by another process"), remove
 * chunks without a message, start the writer and reader threads.
 * Synchronous. Returns 0 or TERN_E* with err set ("DIR/queue.db: what"):
 * TERN_ENOTSUP for a database of a newer schema version, TERN_ENOENT
 * (readonly) when there is no queue.db. On failure *out is NULL.
 *
 * readonly (the offline `tern queue list`): no lock, no threads, only
 * qstore_list, qstore_body, qstore_close may be called. It works while a
 * writer has the store open and when none has (SQLite may then leave an
 * empty queue.db-wal and -shm behind, which the next writer uses).
 */
int qstore_open(struct qstore **out, const char *dir, bool fsync,
                bool readonly, char *err, size_t cap);
/* Finish every operation queued (their completions are still posted:
 * keep the sinks' loops running until they arrive, or free the sinks
 * first), stop the threads, close. Synchronous. */
void qstore_close(struct qstore *s);

/* A fresh queue id, unique in this spool even across restarts: 11
 * base-36 digits of the time in microseconds (strictly increasing, even
 * if the clock steps back, and above the newest id stored at open) and 3
 * of a counter, 14 characters [0-9A-Z] that sort by time. Thread-safe. */
void qstore_new_id(struct qstore *s, char out[TERN_QUEUE_ID_MAX]);

/* A mailbox on `loop` (that loop's thread). Free it on that thread when
 * no operation of it is pending (every callback of it has run; a sink
 * that never asked for anything may be freed at once). Its uv_async is
 * closed then, and the memory freed in the close callback: run the loop
 * once more. Freeing it with operations still pending is a bug: their
 * completions would be posted to freed memory. Returns 0, TERN_ENOMEM or
 * TERN_EIO (uv_async_init failed). */
int qstore_sink_new(struct qstore *s, uv_loop_t *loop,
                    struct qstore_sink **out);

/*
 * Tell cb(arg, full, need) on k's loop when the store enters full mode
 * (full true: new messages are refused until `need` bytes are free) and
 * when it leaves it (full false). If the store is in full mode already
 * (it opened on a full disk), cb hears of it at once (on k's loop,
 * never inside this call). The writer thread posts to k: call
 * qstore_set_notify(s, NULL, NULL, NULL) before freeing k; after that
 * call returns nothing new is posted (a notice already posted runs, or
 * is dropped with k).
 */
void qstore_set_notify(struct qstore *s, struct qstore_sink *k,
                       void (*cb)(void *arg, bool full, uint64_t need),
                       void *arg);
void qstore_sink_free(struct qstore_sink *k);

typedef void (*qstore_done_fn)(void *arg, int status);

/* Body chunk `seq` (from 0) of message id, not committed yet: it is
 * inserted in the next group transaction. `data` (malloc()ed) is the
 * store's. */
void qstore_chunk(struct qstore_sink *k, const char *id, uint32_t seq,
                  void *data, size_t len, qstore_done_fn cb, void *arg);

/* Commit message m: its chunks 0..m->nchunks-2 were sent with
 * qstore_chunk and `last` (malloc()ed, or NULL with len 0) is chunk
 * m->nchunks-1, the final one (it may be empty; m->nchunks >= 1). m is
 * copied. `head` (malloc()ed, or NULL with head_len 0) is header fields
 * to put in front of the body (tern_queue_msg_prepend): it is stored as
 * the message's chunk -1 in the commit's own savepoint, so the message
 * and its fields are durable together or not at all; every reader
 * (qstore_read of chunk 0, qstore_body, a DSN's copy) hands it out
 * first. m->size should count it. cb gets 0 once the
 * msg row, its rcpts and every chunk are durable (fsync), TERN_ENOSPC
 * or TERN_EIO when not (then nothing of the message is left). When
 * `home` is not NULL, home_cb(home_arg, m) also runs on home's loop
 * after a successful commit, with a copy the callee owns (free it with
 * qstore_msg_clear + free); until it has run, that operation is pending
 * on home too (home must not be freed). */
void qstore_commit(struct qstore_sink *k, const struct qstore_msg *m,
                   void *last, size_t len, void *head, size_t head_len,
                   qstore_done_fn cb, void *arg,
                   struct qstore_sink *home,
                   void (*home_cb)(void *arg, struct qstore_msg *m),
                   void *home_arg);

/* Forget a message not committed (its chunks; a committed message of that
 * id is never touched). cb may be NULL. */
void qstore_drop(struct qstore_sink *k, const char *id, qstore_done_fn cb,
                 void *arg);

/* A state change of one committed message, applied atomically. Each
 * listed recipient's fields are all replaced (last_reply and remote_mta
 * NULL store NULL). */
struct qstore_rcpt_update {
  uint32_t idx;
  int state;             /* QS_* */
  unsigned attempts;
  int64_t next_try;
  int last_code;
  const char *last_reply; /* or NULL */
  const char *remote_mta; /* or NULL */
};

enum qstore_copy { QSC_NONE = 0, QSC_HEADERS, QSC_FULL };

struct qstore_update {
  const char *id;
  const struct qstore_rcpt_update *rcpts;
  size_t nrcpts;
  int held;              /* -1 unchanged, else 0/1 */
  int warned;            /* -1 unchanged, else 0/1 */
  bool remove;           /* delete the message (every recipient done, or
                            tern_queue_delete) */
  /* A DSN queued in the same transaction, or dsn NULL: its envelope
   * (dsn->id from qstore_new_id; nchunks ignored; size 0: the store sets
   * it to the octets it writes), then its body: head,
   * the original's header (up to and including the first empty line) or
   * whole body as `copy` says, tail. head and tail (malloc()ed) are the
   * store's. */
  const struct qstore_msg *dsn;
  void *head;
  size_t head_len;
  enum qstore_copy copy;
  void *tail;
  size_t tail_len;
};

/* Apply u (copied) in the next group transaction. cb may be NULL. Status
 * 0; TERN_ENOENT when message u->id does not exist: nothing of it
 * changes, but u->dsn, if any, IS queued (head and tail only); or
 * TERN_ENOSPC/TERN_EIO: nothing of u happened. */
void qstore_update(struct qstore_sink *k, const struct qstore_update *u,
                   qstore_done_fn cb, void *arg);

/* Read chunk `seq` of a committed message in the reader thread:
 * cb(arg, status, data, len) on the sink's loop (data valid during the
 * call, freed after it; status TERN_ENOENT past the last chunk, or when
 * the message was removed meanwhile). Chunk 0 comes with the prepended
 * fields (chunk -1, see qstore_commit) in front of it, so a reader that
 * counts from 0 delivers them first without knowing of them. */
void qstore_read(struct qstore_sink *k, const char *id, uint32_t seq,
                 void (*cb)(void *arg, int status, const char *data,
                            size_t len),
                 void *arg);

/* Every committed message (id NULL) or one, oldest first, with all its
 * recipients, read synchronously on the caller's thread (its own read
 * connection, serialized with other such calls). fn returns non-zero to
 * stop. m is valid during the call; fn must not call qstore_list or
 * qstore_body (they share a mutex). The whole list is one snapshot (one
 * read transaction). Returns 0, TERN_ENOENT (id given, not found),
 * TERN_EIO, TERN_ENOMEM. */
int qstore_list(struct qstore *s, const char *id,
                int (*fn)(const struct qstore_msg *m, void *arg), void *arg);

/* The chunks of one committed message, in order, synchronously; fn
 * returns non-zero to stop. Returns 0, TERN_ENOENT (no such committed
 * message), TERN_EIO. */
int qstore_body(struct qstore *s, const char *id,
                int (*fn)(void *arg, const char *data, size_t len),
                void *arg);

/* TEST ONLY: the number of group transactions committed so far. */
unsigned long qstore_test_commits(const struct qstore *s);

#endif /* TERN_QUEUE_STORE_H */
