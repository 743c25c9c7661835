/*
 * The queue store's writer, inside a group transaction (store_int.h):
 * what each operation does to queue.db. store.c runs the transaction
 * around it.
 */
#include "store_int.h"

#include <errno.h>
#include <stdlib.h>

/* The TERN_E* code for an SQLite failure on db: a full disk or quota is
 * TERN_ENOSPC (SQLite says SQLITE_FULL, or an I/O error whose errno is
 * ENOSPC/EDQUOT), anything else TERN_EIO. */
int qstore__map_rc(sqlite3 *db, int rc)
{
  if ((rc & 0xff) == SQLITE_FULL)
    return TERN_ENOSPC;
  if ((rc & 0xff) == SQLITE_IOERR) {
    int e = sqlite3_system_errno(db);
    if (e == ENOSPC || e == EDQUOT)
      return TERN_ENOSPC;
  }
  if (rc == SQLITE_NOMEM)
    return TERN_ENOMEM;
  return TERN_EIO;
}

/* Failures that concern one operation only (a duplicate id, a chunk sent
 * twice): the statement was undone by SQLite, the transaction stands. */
static bool op_only_error(int rc)
{
  switch (rc & 0xff) {
  case SQLITE_CONSTRAINT:
  case SQLITE_TOOBIG:
  case SQLITE_MISMATCH:
  case SQLITE_RANGE:
    return true;
  default:
    return false;
  }
}

/* Step a statement that returns no row (or whose rows we ignore) and
 * reset it. Returns SQLITE_OK or the error. */
int qstore__run(sqlite3_stmt *st)
{
  int rc;
  while ((rc = sqlite3_step(st)) == SQLITE_ROW)
    ;
  int rc2 = sqlite3_reset(st);
  sqlite3_clear_bindings(st);
  if (rc == SQLITE_DONE)
    return SQLITE_OK;
  return rc2 != SQLITE_OK ? rc2 : rc;
}

static void bind_text(sqlite3_stmt *st, int i, const char *s)
{
  if (s)
    sqlite3_bind_text(st, i, s, -1, SQLITE_STATIC);
  else
    sqlite3_bind_null(st, i);
}

/* ---- the writer ------------------------------------------------------------ */

struct idnode *qstore__idlist_find(struct idnode *l, const char *id)
{
  for (; l; l = l->next)
    if (strcmp(l->id, id) == 0)
      return l;
  return NULL;
}

void qstore__idlist_add(struct idnode **l, const char *id, int status)
{
  struct idnode *n = qstore__idlist_find(*l, id);
  if (n) {
    n->status = status;
    return;
  }
  n = calloc(1, sizeof *n);
  if (!n)
    return; /* then a later commit is refused by the chunk count */
  qstore__set_id(n->id, id);
  n->status = status;
  n->next = *l;
  *l = n;
}

void qstore__idlist_remove(struct idnode **l, const char *id)
{
  for (struct idnode **p = l; *p; p = &(*p)->next)
    if (strcmp((*p)->id, id) == 0) {
      struct idnode *n = *p;
      *p = n->next;
      free(n);
      return;
    }
}

void qstore__idlist_free(struct idnode **l)
{
  while (*l) {
    struct idnode *n = *l;
    *l = n->next;
    free(n);
  }
}

static int del_chunks(struct qstore *s, const char *id)
{
  sqlite3_bind_text(s->w.del_chunks, 1, id, -1, SQLITE_STATIC);
  return qstore__run(s->w.del_chunks);
}

static int ins_chunk(struct qstore *s, const char *id, int64_t seq,
                     const void *data, size_t len)
{
  sqlite3_stmt *st = s->w.ins_chunk;
  sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
  sqlite3_bind_int64(st, 2, seq);
  sqlite3_bind_blob64(st, 3, data ? data : "", len, SQLITE_STATIC);
  return qstore__run(st);
}

/* Insert a message's envelope (msg and rcpt rows) with nchunks. */
static int ins_envelope(struct qstore *s, const struct qstore_msg *m,
                        uint32_t nchunks)
{
  sqlite3_stmt *st = s->w.ins_msg;
  sqlite3_bind_text(st, 1, m->id, -1, SQLITE_STATIC);
  sqlite3_bind_int64(st, 2, m->arrival);
  sqlite3_bind_text(st, 3, m->from ? m->from : "", -1, SQLITE_STATIC);
  sqlite3_bind_int64(st, 4, (sqlite3_int64)m->size);
  sqlite3_bind_int(st, 5, m->body);
  sqlite3_bind_int(st, 6, m->smtputf8);
  sqlite3_bind_int(st, 7, m->requiretls);
  sqlite3_bind_int(st, 8, m->ret);
  bind_text(st, 9, m->envid);
  bind_text(st, 10, m->client);
  sqlite3_bind_int(st, 11, m->held);
  sqlite3_bind_int(st, 12, m->is_bounce);
  sqlite3_bind_int(st, 13, m->warned);
  sqlite3_bind_int64(st, 14, nchunks);
  int rc = qstore__run(st);
  for (size_t i = 0; rc == SQLITE_OK && i < m->nrcpts; i++) {
    const struct qstore_rcpt *r = &m->rcpts[i];
    st = s->w.ins_rcpt;
    sqlite3_bind_text(st, 1, m->id, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, r->idx);
    sqlite3_bind_text(st, 3, r->addr ? r->addr : "", -1, SQLITE_STATIC);
    bind_text(st, 4, r->orcpt);
    sqlite3_bind_int64(st, 5, r->notify);
    sqlite3_bind_text(st, 6, r->dest ? r->dest : "", -1, SQLITE_STATIC);
    sqlite3_bind_int(st, 7, r->state);
    sqlite3_bind_int64(st, 8, r->attempts);
    sqlite3_bind_int64(st, 9, r->next_try);
    sqlite3_bind_int(st, 10, r->last_code);
    bind_text(st, 11, r->last_reply);
    bind_text(st, 12, r->remote_mta);
    rc = qstore__run(st);
  }
  return rc;
}

/* Undo what the current operation did (its savepoint) and end the
 * savepoint. The apply_* functions return as qstore__apply does. */
static int sp_undo(struct qstore *s)
{
  int rc = qstore__run(s->w.sp_rollback);
  if (rc == SQLITE_OK)
    rc = qstore__run(s->w.sp_release);
  return rc;
}

static int apply_chunk(struct qstore *s, struct op *o)
{
  struct idnode *lost = qstore__idlist_find(s->lost, o->id);
  if (lost) {
    o->status = lost->status;
    return SQLITE_OK;
  }
  int rc = ins_chunk(s, o->id, o->seq, o->data, o->len);
  if (rc != SQLITE_OK && op_only_error(rc)) {
    o->status = TERN_EIO;
    return SQLITE_OK;
  }
  return rc;
}

static int apply_commit(struct qstore *s, struct op *o)
{
  struct idnode *lost = qstore__idlist_find(s->lost, o->id);
  if (lost) {
    /* An earlier chunk went down with a failed group: committing would
     * leave a hole in the body. */
    o->status = lost->status;
    qstore__idlist_remove(&s->lost, o->id);
    return del_chunks(s, o->id);
  }
  uint32_t n = o->m.nchunks;
  int rc = qstore__run(s->w.sp);
  if (rc != SQLITE_OK)
    return rc;
  bool bad = n < 1;
  if (!bad)
    rc = ins_chunk(s, o->id, (int64_t)n - 1, o->data, o->len);
  if (!bad && rc == SQLITE_OK) {
    sqlite3_stmt *st = s->w.count_chunks;
    sqlite3_bind_text(st, 1, o->id, -1, SQLITE_STATIC);
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
      bad = (uint64_t)sqlite3_column_int64(st, 0) != n ||
            sqlite3_column_int64(st, 1) != (int64_t)n - 1;
      rc = SQLITE_OK;
    }
    int rc2 = sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    if (rc == SQLITE_DONE)
      rc = SQLITE_OK;
    if (rc == SQLITE_OK)
      rc = rc2;
  }
  if (!bad && rc == SQLITE_OK && o->head)
    rc = ins_chunk(s, o->id, -1, o->head, o->head_len);
  if (!bad && rc == SQLITE_OK)
    rc = ins_envelope(s, &o->m, n);
  if (rc != SQLITE_OK && !op_only_error(rc))
    return rc;
  if (bad || rc != SQLITE_OK) {
    /* Refused: nothing of the message stays, not even its chunks. */
    o->status = TERN_EIO;
    rc = sp_undo(s);
    if (rc == SQLITE_OK)
      rc = del_chunks(s, o->id);
    return rc;
  }
  o->status = 0;
  return qstore__run(s->w.sp_release);
}

static int apply_drop(struct qstore *s, struct op *o)
{
  qstore__idlist_remove(&s->lost, o->id);
  o->status = 0;
  return del_chunks(s, o->id);
}

/* The original's header section (up to and including the first empty
 * line, CRLF CRLF or LF LF, wherever the chunks split it), stored as
 * chunks of the DSN from seq on. *count gets how many. */
static int copy_headers(struct qstore *s, const char *dsn_id,
                        const char *orig, int64_t seq, int64_t *count)
{
  sqlite3_stmt *st = s->w.sel_chunks;
  sqlite3_bind_text(st, 1, orig, -1, SQLITE_STATIC);
  /* 1: at a line's start; 2: there and after a CR; 0: inside a line */
  int state = 1;
  bool done = false;
  int rc;
  *count = 0;
  while (!done && (rc = sqlite3_step(st)) == SQLITE_ROW) {
    const unsigned char *p = sqlite3_column_blob(st, 0);
    size_t n = (size_t)sqlite3_column_bytes(st, 0), i;
    for (i = 0; i < n && !done; i++) {
      unsigned char c = p[i];
      if (c == '\n') {
        if (state != 0)
          done = true;
        state = 1;
      } else if (c == '\r') {
        state = state == 1 ? 2 : 0;
      } else {
        state = 0;
      }
    }
    /* ins_chunk binds SQLITE_STATIC: p stays valid while st is on this
     * row, and the insert is a different statement. */
    int rc2 = ins_chunk(s, dsn_id, seq + *count, p, i);
    if (rc2 != SQLITE_OK) {
      sqlite3_reset(st);
      sqlite3_clear_bindings(st);
      return rc2;
    }
    (*count)++;
  }
  if (done)
    rc = SQLITE_DONE;
  int rc2 = sqlite3_reset(st);
  sqlite3_clear_bindings(st);
  return rc == SQLITE_DONE ? rc2 : rc;
}

static int apply_dsn(struct qstore *s, struct op *o, bool have_orig)
{
  struct upd *u = &o->u;
  const char *id = u->dsn.id;
  int rc = ins_chunk(s, id, 0, u->head, u->head_len);
  int64_t copied = 0;
  if (rc == SQLITE_OK && have_orig && u->copy == QSC_FULL) {
    sqlite3_stmt *st = s->w.copy_chunks;
    sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, o->id, -1, SQLITE_STATIC);
    rc = qstore__run(st);
    copied = sqlite3_changes(s->wdb);
  } else if (rc == SQLITE_OK && have_orig && u->copy == QSC_HEADERS) {
    rc = copy_headers(s, id, o->id, 1, &copied);
  }
  if (rc == SQLITE_OK)
    rc = ins_chunk(s, id, 1 + copied, u->tail, u->tail_len);
  if (rc == SQLITE_OK && u->dsn.size == 0) {
    /* The size is what was just written: the queue cannot know how long
     * a copied header is. DSNs are rare: an unprepared statement will do. */
    sqlite3_stmt *sz;
    rc = sqlite3_prepare_v2(s->wdb,
                            "SELECT coalesce(sum(length(data)), 0) FROM chunk"
                            " WHERE msg = ?1",
                            -1, &sz, NULL);
    if (rc == SQLITE_OK) {
      sqlite3_bind_text(sz, 1, id, -1, SQLITE_STATIC);
      if (sqlite3_step(sz) == SQLITE_ROW)
        u->dsn.size = (uint64_t)sqlite3_column_int64(sz, 0);
      rc = sqlite3_finalize(sz);
    }
  }
  if (rc == SQLITE_OK)
    rc = ins_envelope(s, &u->dsn, (uint32_t)(copied + 2));
  return rc;
}

static int apply_update(struct qstore *s, struct op *o)
{
  struct upd *u = &o->u;
  int rc = qstore__run(s->w.sp);
  if (rc != SQLITE_OK)
    return rc;
  sqlite3_stmt *st = s->w.get_msg;
  sqlite3_bind_text(st, 1, o->id, -1, SQLITE_STATIC);
  rc = sqlite3_step(st);
  bool have = rc == SQLITE_ROW;
  int rc2 = sqlite3_reset(st);
  sqlite3_clear_bindings(st);
  if (rc != SQLITE_ROW && rc != SQLITE_DONE)
    return rc;
  if (rc2 != SQLITE_OK)
    return rc2;
  rc = SQLITE_OK;
  for (size_t i = 0; have && rc == SQLITE_OK && i < u->nrcpts; i++) {
    const struct qstore_rcpt_update *r = &u->rcpts[i];
    st = s->w.upd_rcpt;
    sqlite3_bind_int(st, 1, r->state);
    sqlite3_bind_int64(st, 2, r->attempts);
    sqlite3_bind_int64(st, 3, r->next_try);
    sqlite3_bind_int(st, 4, r->last_code);
    bind_text(st, 5, r->last_reply);
    bind_text(st, 6, r->remote_mta);
    sqlite3_bind_text(st, 7, o->id, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 8, r->idx);
    rc = qstore__run(st);
  }
  if (have && rc == SQLITE_OK && u->held >= 0) {
    sqlite3_bind_int(s->w.upd_held, 1, u->held);
    sqlite3_bind_text(s->w.upd_held, 2, o->id, -1, SQLITE_STATIC);
    rc = qstore__run(s->w.upd_held);
  }
  if (have && rc == SQLITE_OK && u->warned >= 0) {
    sqlite3_bind_int(s->w.upd_warned, 1, u->warned);
    sqlite3_bind_text(s->w.upd_warned, 2, o->id, -1, SQLITE_STATIC);
    rc = qstore__run(s->w.upd_warned);
  }
  /* The DSN before the removal: it copies from the original. */
  if (rc == SQLITE_OK && u->has_dsn)
    rc = apply_dsn(s, o, have);
  if (have && rc == SQLITE_OK && u->remove) {
    sqlite3_bind_text(s->w.del_msg, 1, o->id, -1, SQLITE_STATIC);
    rc = qstore__run(s->w.del_msg);
    if (rc == SQLITE_OK) {
      sqlite3_bind_text(s->w.del_rcpts, 1, o->id, -1, SQLITE_STATIC);
      rc = qstore__run(s->w.del_rcpts);
    }
    if (rc == SQLITE_OK) {
      sqlite3_bind_text(s->w.del_all_chunks, 1, o->id, -1, SQLITE_STATIC);
      rc = qstore__run(s->w.del_all_chunks);
    }
  }
  if (rc != SQLITE_OK && !op_only_error(rc))
    return rc;
  if (rc != SQLITE_OK) {
    o->status = TERN_EIO;
    return sp_undo(s);
  }
  o->status = have ? 0 : TERN_ENOENT;
  return qstore__run(s->w.sp_release);
}

int qstore__apply(struct qstore *s, struct op *o)
{
  if (o->refused)
    return SQLITE_OK;
  switch (o->type) {
  case OP_CHUNK:
    return apply_chunk(s, o);
  case OP_COMMIT:
    return apply_commit(s, o);
  case OP_DROP:
    return apply_drop(s, o);
  case OP_UPDATE:
    return apply_update(s, o);
  default:
    o->status = TERN_EINVAL;
    return SQLITE_OK;
  }
}

/* Chunks of failed commits and drops are deleted in a transaction of
 * their own right after the failure; if that fails too (the disk is still
 * full), at the start of every later group until one commits. */
int qstore__delete_cleanup(struct qstore *s)
{
  int rc = SQLITE_OK;
  for (struct idnode *n = s->cleanup; n && rc == SQLITE_OK; n = n->next)
    rc = del_chunks(s, n->id);
  return rc;
}

