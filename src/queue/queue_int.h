/*
 * The queue's insides, shared by queue.c (open, close, control), submit.c
 * (ports and messages), sched.c (the in-memory model, the scheduler,
 * jobs and their outcomes) and bounce.c (DSN composition). Nothing here
 * is public; names are q_* / static.
 *
 * The model. Every committed message not removed lives in memory as a
 * struct qmsg: its envelope and, per recipient, the state the scheduler
 * needs (state, attempts, next_try). Last replies are not kept: they are
 * in the store, and `tern queue list` reads them from there. A message
 * with a recipient waiting sits in a min-heap keyed by its earliest
 * next_try; one uv_timer fires at the heap's top. A due message becomes
 * jobs (its due recipients grouped by destination), appended to their
 * destination's FIFO; the pump starts jobs while the destination and the
 * whole queue are under their limits.
 */
#ifndef TERN_QUEUE_INT_H
#define TERN_QUEUE_INT_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include <tern/queue.h>

#include "store.h"

/* Where a recipient is in the scheduler (not stored). */
enum { QB_IDLE = 0, QB_READY, QB_RUNNING };

struct qrcpt {
  const char *addr, *orcpt, *dest; /* in the message's string block */
  unsigned notify;
  uint32_t idx;
  uint8_t state; /* QS_* */
  uint8_t busy;  /* QB_* */
  unsigned attempts;
  int64_t next_try;
};

struct qmsg {
  char id[TERN_QUEUE_ID_MAX];
  int64_t arrival;
  const char *from, *envid, *client;
  uint64_t size;
  int body, ret;
  bool smtputf8, requiretls, held, is_bounce, warned;
  bool gone; /* removed or deleted: out of the table and heap,
                freed when the last job referring to it ends */
  uint32_t nchunks;
  unsigned njobs;     /* jobs (ready or running) that point here */
  size_t heap_i;      /* place in the heap, or Q_NOHEAP */
  int64_t due;        /* the heap's key */
  struct qmsg *hnext; /* the id table's chain */
  size_t nrcpts;
  struct qrcpt *rcpts; /* follows the struct, then the strings */
};

#define Q_NOHEAP SIZE_MAX

/* A destination: its ready jobs and how many run. */
struct q_upd;

struct qdest {
  char *name;
  struct tern_queue_job *head, *tail; /* ready FIFO */
  unsigned active;
  /* Suspended by tern_queue_job_unreachable: no job starts before
   * susp_until (unix seconds), then one at a time (a probe) until a job
   * ends with tern_queue_job_done. Jobs that become ready meanwhile wait
   * in the FIFO: the next unreachable outcome defers them with its
   * reply, a done one lets them go. */
  bool suspended;
  int64_t susp_until;
  int susp_code; /* the reply the waiting jobs are deferred with */
  char *susp_enhanced, *susp_text;
  bool runnable; /* in q->run ring */
  struct qdest *run_next;
  struct qdest *hnext;         /* q->dtab chain */
  struct qdest *sprev, *snext; /* q->susp: the suspended ones */
};

struct qres {
  bool set;
  int code;
  char *enhanced, *text, *remote;
};

struct tern_queue_job {
  struct tern_queue *q;
  struct qmsg *msg;
  struct qdest *dest;
  struct tern_queue_job *next;          /* ready FIFO */
  struct tern_queue_job *rprev, *rnext; /* running or cancelled list */
  bool running, cancelled, finished;
  bool reading;
  bool untried; /* deferred without being handed to deliver (its
                   destination is suspended) */
  uint32_t seq;
  void (*read_cb)(void *arg, const char *buf, size_t len, int status);
  void *read_arg;
  struct tern_queue_job_info info;
  size_t n;
  uint32_t *idx; /* the message's recipients */
  struct tern_queue_job_rcpt *jr;
  struct qres *res;
};

struct tern_queue {
  uv_loop_t *loop;
  struct tern_queue_options o;
  char *dir, *hostname, *postmaster;
  struct qstore *store;
  struct qstore_sink *home;
  atomic_bool closing;

  /* id → message */
  struct qmsg **table;
  size_t table_size, nmsgs;

  /* min-heap on due */
  struct qmsg **heap;
  size_t heap_len, heap_cap;
  uv_timer_t timer;
  uv_idle_t kick; /* a pump soon, outside the caller's stack */
  bool timer_armed;
  int64_t timer_at;

  /* name → destination (mx:DOMAIN makes them many); a destination
   * with nothing waiting, running or suspended is freed */
  struct qdest **dtab;
  size_t dtab_size, ndests;
  struct qdest *susp; /* suspended destinations (the timer's concern) */
  struct qdest *run_head, *run_tail; /* destinations that can start */
  unsigned active;                   /* running jobs */
  size_t ready;                      /* jobs waiting in FIFOs */
  struct tern_queue_job *running;    /* list of running jobs */
  struct tern_queue_job *cancelled;  /* cancelled, not done yet */
  bool pumping;

  unsigned pending;   /* store operations on the home sink not answered */
  struct q_upd *redo; /* failed removals waiting to be sent again */
  uv_timer_t redo_timer;
  uint64_t redo_at;
  /* Commits from ports whose home callback has not run yet (any thread
   * adds, the home loop or the port's failed commit takes away): the
   * home sink is not freed before they have come. */
  atomic_uint homing;
  uint64_t rng;

  /* closing */
  uv_timer_t close_timer;
  unsigned close_timeout_ms;
  int close_phase; /* 0 open, 1 waiting jobs, 2 waiting store, 3 handles */
  unsigned handles_open;
  void (*close_done)(void *arg);
  void *close_arg;
  bool free_when_closed;
};

/* ---- sched.c ------------------------------------------------------------- */

/* Copy a stored message into memory (one allocation). NULL: no memory. */
struct qmsg *q_msg_from_store(const struct qstore_msg *m);
/* Take a message into the model (table, heap) and schedule it. */
void q_msg_add(struct tern_queue *q, struct qmsg *m);
struct qmsg *q_msg_find(const struct tern_queue *q, const char *id);
/* Take a message out of the table and the heap; freed now or when its
 * last job ends. */
void q_msg_forget(struct tern_queue *q, struct qmsg *m);
/* Recompute the message's due time and its place in the heap; rearm. */
void q_msg_resched(struct tern_queue *q, struct qmsg *m);
/* Start what may start. Calls deliver: only from the loop (the timer,
 * the kick), never inside a call of the application's. */
void q_pump(struct tern_queue *q);
/* Pump on the next loop iteration. */
void q_kick(struct tern_queue *q);
/* Arm the timer for the heap's top (or stop it). */
void q_timer_arm(struct tern_queue *q);
/* A flush (tern_queue_flush) of mail for destination `name`: when it is
 * suspended (a dead next hop), its wait ends now -- one attempt (the
 * probe) may start at once, the rest following when it gets through, as
 * after any suspension. Without this, a flush made the mail due but the
 * destination kept it until susp_until. Unknown names: nothing. */
void q_dest_flush(struct tern_queue *q, const char *name);
/* Free every job (ready, running, cancelled) and message. */
void q_sched_free(struct tern_queue *q);
/* The running jobs become cancelled (tern_queue_close timed out). */
void q_cancel_running(struct tern_queue *q);
/* Close progress check (queue.c): a job ended or a completion came. */
void q_close_step(struct tern_queue *q);
/* Event helper: detail never NULL. */
void q_event(struct tern_queue *q, enum tern_queue_event_type type,
             const char *id, const char *rcpt, const struct tern_reply *r,
             const char *remote, const char *bounce_id, time_t retry_at,
             const char *detail);
/* The same with the event's `expired` flag (a recipient's lifetime
 * ended). */
void q_event_ex(struct tern_queue *q, enum tern_queue_event_type type,
                const char *id, const char *rcpt, const struct tern_reply *r,
                const char *remote, const char *detail, bool expired);
uint64_t q_rand(struct tern_queue *q);
/* Unix seconds, from the clock the timer compares with. */
int64_t q_now_s(void);
/* Load one message from the store by id into the model (after a DSN was
 * queued). */
void q_load_one(struct tern_queue *q, const char *id);

/* ---- update.c ------------------------------------------------------------ */

/* What to say once an update is durable. */
struct q_upd_events {
  char dsn_id[TERN_QUEUE_ID_MAX]; /* a DSN queued with it, or "" */
  bool failed_dsn, delayed_dsn;
  char bounce_detail[96];
  enum tern_queue_event_type type; /* then this event, when detail */
  const char *detail;              /* a static string, or NULL */
};

/*
 * Send u to the store (u->head/u->tail are taken, whatever happens). A
 * removal that fails is sent again later (update.c says why); events
 * follow once it is durable. 0 or TERN_ENOMEM (nothing sent).
 */
int q_update(struct tern_queue *q, const struct qstore_update *u,
             const struct q_upd_events *ev);
/* Drop the removals still waiting (closing). */
void q_redo_free(struct tern_queue *q);

/* ---- outcome.c / queue.c ----------------------------------------------- */

/* Record a finished job's results (states, retries, DSN, removal) in
 * memory and in one store update. */
void q_outcome(struct tern_queue *q, struct tern_queue_job *j,
               const struct tern_reply *r);
/* qstore_commit's home callback: a committed message joins the model. */
void q_on_home(void *arg, struct qstore_msg *m);

/* ---- bounce.c ------------------------------------------------------------ */

/* One recipient of a DSN being composed. */
struct qb_rcpt {
  const char *addr, *orcpt;
  const char *action; /* "failed", "delayed", "delivered" */
  int code;           /* the reply: code, enhanced (or NULL), text */
  const char *enhanced, *text;
  const char *remote;
};

/*
 * Compose a DSN about message m for `to` with recipients rs, into u
 * (u->dsn = *dsn with *dr its one recipient; head/tail malloc()ed; copy
 * as chosen). Strings of *dsn live in `strs` (freed by the caller with
 * free()). Returns 0 or TERN_E* (nothing to free then).
 */
int q_bounce_build(struct tern_queue *q, const struct qmsg *m, const char *to,
                   const struct qb_rcpt *rs, size_t n, enum qstore_copy copy,
                   int64_t now, struct qstore_msg *dsn, struct qstore_rcpt *dr,
                   struct qstore_update *u, char **strs);

/* "550 5.1.1 text" (enhanced left out when NULL) into a malloc()ed
 * string; NULL on no memory. */
char *q_reply_string(int code, const char *enhanced, const char *text);

/* RFC 5322 date of t (UTC) into buf (at least 40 bytes). */
void q_date(int64_t t, char *buf, size_t cap);

#endif /* TERN_QUEUE_INT_H */
