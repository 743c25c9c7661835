/*
 * Sending state changes to the store, and what happens when one fails.
 *
 * The scheduler's memory runs ahead of the store: a job's outcome is
 * applied in memory at once and committed in the background. When the
 * commit fails (a full disk, an I/O error) two cases differ:
 * - An update that removes the message (every recipient done, or
 *   tern_queue_delete) is kept and sent again, whole (states, DSN,
 *   removal), after 5 s doubling to 60 s, until it is recorded or the
 *   queue closes. The message is already gone from memory, so nothing
 *   newer about it can race the retry; and without the retry a delivered
 *   message would stay in the store, taking room from a full disk, and
 *   be delivered again after a restart.
 * - Any other update is not retried: the store keeps the older state,
 *   which is the safe side (a recipient is tried again: at worst a
 *   duplicate, never a loss), and a later update of the message may
 *   record newer states anyway.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "queue_int.h"

#define REDO_MIN_MS 5000
#define REDO_MAX_MS 60000

struct q_upd {
  struct tern_queue *q;
  struct q_upd *next; /* the redo list */
  char id[TERN_QUEUE_ID_MAX];
  struct q_upd_events ev;
  unsigned tries;
  /* The whole update, owned, for a redo (removals only). */
  struct qstore_update u;
  struct qstore_rcpt_update *rcpts;
  char **strs;
  struct qstore_msg dsn;
  struct qstore_rcpt dr;
  char *dsn_strs;
};

static char *dup_s(const char *s, bool *ok) {
  if (!s)
    return NULL;
  char *d = strdup(s);
  if (!d)
    *ok = false;
  return d;
}

static void *dup_b(const void *p, size_t n, bool *ok) {
  if (!p)
    return NULL;
  void *d = malloc(n ? n : 1);
  if (!d) {
    *ok = false;
    return NULL;
  }
  memcpy(d, p, n);
  return d;
}

static void upd_free(struct q_upd *c) {
  if (c->strs)
    for (size_t i = 0; i < 2 * c->u.nrcpts; i++)
      free(c->strs[i]);
  free(c->strs);
  free(c->rcpts);
  free(c->dsn_strs);
  free(c->u.head);
  free(c->u.tail);
  free(c);
}

/* Keep a copy of u good for sending again. false: no memory. */
static bool keep(struct q_upd *c, const struct qstore_update *u) {
  bool ok = true;
  c->u = *u;
  c->u.id = c->id;
  c->u.head = c->u.tail = NULL;
  c->u.dsn = NULL;
  c->rcpts = u->nrcpts ? calloc(u->nrcpts, sizeof *c->rcpts) : NULL;
  c->strs = u->nrcpts ? calloc(2 * u->nrcpts, sizeof *c->strs) : NULL;
  if (u->nrcpts && (!c->rcpts || !c->strs))
    return false;
  for (size_t i = 0; i < u->nrcpts; i++) {
    c->rcpts[i] = u->rcpts[i];
    c->rcpts[i].last_reply = c->strs[2 * i] =
        dup_s(u->rcpts[i].last_reply, &ok);
    c->rcpts[i].remote_mta = c->strs[2 * i + 1] =
        dup_s(u->rcpts[i].remote_mta, &ok);
  }
  c->u.rcpts = c->rcpts;
  if (u->dsn) {
    /* The DSN's envelope: one recipient, its strings in one block. */
    const struct qstore_msg *d = u->dsn;
    size_t al = strlen(d->rcpts[0].addr) + 1, dl = strlen(d->rcpts[0].dest) + 1;
    c->dsn_strs = malloc(al + dl + 1);
    if (!c->dsn_strs)
      return false;
    memcpy(c->dsn_strs, d->rcpts[0].addr, al);
    memcpy(c->dsn_strs + al, d->rcpts[0].dest, dl);
    c->dsn_strs[al + dl] = '\0';
    c->dsn = *d;
    c->dsn.from = c->dsn_strs + al + dl;
    c->dsn.envid = c->dsn.client = NULL;
    c->dr = d->rcpts[0];
    c->dr.addr = c->dsn_strs;
    c->dr.dest = c->dsn_strs + al;
    c->dr.orcpt = c->dr.last_reply = c->dr.remote_mta = NULL;
    c->dsn.rcpts = &c->dr;
    c->dsn.nrcpts = 1;
    c->u.dsn = &c->dsn;
    c->u.head = dup_b(u->head, u->head_len, &ok);
    c->u.tail = dup_b(u->tail, u->tail_len, &ok);
  }
  return ok;
}

static void on_updated(void *arg, int status);

static void send_upd(struct q_upd *c) {
  struct tern_queue *q = c->q;
  struct qstore_update u = c->u;
  bool ok = true;
  /* head and tail become the store's: it gets copies, we keep ours */
  q->pending++;
  if (u.dsn) {
    u.head = dup_b(c->u.head, c->u.head_len, &ok);
    u.tail = dup_b(c->u.tail, c->u.tail_len, &ok);
    if (!ok) {
      free(u.head);
      free(u.tail);
      on_updated(c, TERN_ENOMEM);
      return;
    }
  }
  qstore_update(q->home, &u, on_updated, c);
}

/* Waiting redos are not counted in q->pending: closing does not wait
 * for them (they are dropped, and redone by redelivery after a restart).
 * They go one at a time, the next as soon as one is recorded: at a full
 * disk a group of many removals may not fit where one does, and each
 * one recorded gives room back. */
static void on_redo(uv_timer_t *t) {
  struct tern_queue *q = t->data;
  struct q_upd *c = q->redo;
  if (!c)
    return;
  q->redo = c->next;
  c->next = NULL;
  send_upd(c);
}

static void redo_later(struct q_upd *c, int status) {
  struct tern_queue *q = c->q;
  unsigned ms = REDO_MIN_MS;
  for (unsigned i = 0; i < c->tries && ms < REDO_MAX_MS; i++)
    ms *= 2;
  if (ms > REDO_MAX_MS)
    ms = REDO_MAX_MS;
  c->tries++;
  char d[160];
  snprintf(d, sizeof d, "store update failed (%s): tried again in %u s",
           tern_err_name(status), ms / 1000);
  q_event(q, TERN_QEV_ERROR, c->id, NULL, NULL, NULL, NULL, 0, d);
  c->next = NULL; /* at the end: the others have waited longer */
  struct q_upd **pp = &q->redo;
  while (*pp)
    pp = &(*pp)->next;
  *pp = c;
  /* one timer for every waiting redo: the earliest wait wins */
  uint64_t due = uv_now(q->loop) + ms;
  if (!uv_is_active((uv_handle_t *)&q->redo_timer) || due < q->redo_at) {
    uv_timer_start(&q->redo_timer, on_redo, ms, 0);
    q->redo_at = due;
  }
}

static void on_updated(void *arg, int status) {
  struct q_upd *c = arg;
  struct tern_queue *q = c->q;
  q->pending--;
  if (status != 0) {
    if (c->u.remove && !q->close_phase) {
      redo_later(c, status);
      return;
    }
    char d[160];
    snprintf(d, sizeof d, "store update failed (%s): %s", tern_err_name(status),
             c->u.remove ? "redone after restart"
                         : "the older state stays (tried again)");
    q_event(q, TERN_QEV_ERROR, c->id, NULL, NULL, NULL, NULL, 0, d);
  } else {
    if (c->tries && q->redo && !q->close_phase) {
      uv_timer_start(&q->redo_timer, on_redo, 0, 0); /* the next one */
      q->redo_at = uv_now(q->loop);
    }
    const struct q_upd_events *e = &c->ev;
    if (e->dsn_id[0]) {
      q_load_one(q, e->dsn_id);
      if (e->failed_dsn || !e->delayed_dsn)
        q_event(q, TERN_QEV_BOUNCE, c->id, NULL, NULL, NULL, e->dsn_id, 0,
                e->bounce_detail);
      if (e->delayed_dsn)
        q_event(q, TERN_QEV_DELAYED, c->id, NULL, NULL, NULL, e->dsn_id, 0,
                "delay warning queued");
    }
    if (e->detail)
      q_event(q, e->type, c->id, NULL, NULL, NULL, NULL, 0, e->detail);
  }
  upd_free(c);
  q_close_step(q);
}

int q_update(struct tern_queue *q, const struct qstore_update *u,
             const struct q_upd_events *ev) {
  struct q_upd *c = calloc(1, sizeof *c);
  if (!c) {
    free(u->head);
    free(u->tail);
    return TERN_ENOMEM;
  }
  c->q = q;
  snprintf(c->id, sizeof c->id, "%s", u->id);
  if (ev)
    c->ev = *ev;
  if (u->remove) {
    if (!keep(c, u)) {
      /* Sent once all the same; only its redo is lost. */
      upd_free(c);
      c = calloc(1, sizeof *c);
      if (!c) {
        free(u->head);
        free(u->tail);
        return TERN_ENOMEM;
      }
      c->q = q;
      snprintf(c->id, sizeof c->id, "%s", u->id);
      if (ev)
        c->ev = *ev;
    } else {
      free(u->head);
      free(u->tail);
      send_upd(c);
      return 0;
    }
  }
  /* Sent as it is, not kept: head and tail go to the store. */
  c->u = *u;
  c->u.id = c->id;
  c->u.remove = false; /* a failure is not redone (see above) */
  struct qstore_update s = *u;
  s.id = c->id;
  c->u.head = c->u.tail = NULL;
  c->u.rcpts = NULL;
  c->u.nrcpts = 0;
  c->u.dsn = NULL;
  q->pending++;
  qstore_update(q->home, &s, on_updated, c);
  return 0;
}

void q_redo_free(struct tern_queue *q) {
  while (q->redo) {
    struct q_upd *c = q->redo;
    q->redo = c->next;
    q_event(q, TERN_QEV_ERROR, c->id, NULL, NULL, NULL, NULL, 0,
            "store update not recorded at shutdown: redone after restart");
    upd_free(c);
  }
}
