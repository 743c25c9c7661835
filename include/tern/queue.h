/*
 * tern/queue.h — a durable mail queue (spool) for servers built on tern.
 *
 * A message is accepted once: its envelope and body go to stable storage
 * (shared fsyncs: concurrent messages commit together), and only then is
 * the sender told 250 with the queue id. From there the queue delivers
 * per recipient through the application's `deliver` callback, retries
 * what was deferred (4xx, no connection) on a back-off schedule until the
 * queue lifetime ends, and returns what failed (5xx, expiry) to the
 * envelope sender as an RFC 3464 delivery status notification, itself
 * queued and delivered like any other message.
 *
 * Storage: one directory, holding an SQLite database in WAL mode
 * (`queue.db`: messages, recipients with their state and last reply, and
 * the bodies in chunks). docs/decisions/0017-the-queue-store.md says why
 * and with which figures; docs/queue.md shows how to inspect and repair
 * it with sqlite3(1) and `tern queue`.
 *
 * Threads and loops. A queue belongs to the loop it was opened on (its
 * "home" loop): the scheduler, the deliver callback, the job functions
 * and the control functions (list, flush, delete, hold, release) run and
 * must be called there. Messages may be submitted from any loop through
 * a port (tern_queue_port_new on that loop): every submission callback
 * runs on the port's loop. The store works in threads of its own; no
 * call here blocks the loop, except tern_queue_open/_close and
 * tern_queue_scan (start-up, shutdown, offline tools).
 *
 * Errors are TERN_E* codes (tern/common.h) unless a function says
 * otherwise.
 */
#ifndef TERN_QUEUE_H
#define TERN_QUEUE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include <uv.h>

#include <tern/common.h>
#include <tern/reply.h>
#include <tern/server.h>

#ifdef __cplusplus
extern "C" {
#endif

struct tern_queue;      /* one spool directory, opened by one process */
struct tern_queue_port; /* a loop's door for submitting messages */
struct tern_queue_msg;  /* a message being submitted */
struct tern_queue_job;  /* one delivery attempt: a message, some rcpts */

/* A queue id: up to 23 characters [0-9A-Z], NUL-terminated. */
#define TERN_QUEUE_ID_MAX 24

/* ---- opening ---------------------------------------------------------- */

struct tern_queue_job_info;

/* Events for the application's log (each line names the queue id). */
enum tern_queue_event_type {
  TERN_QEV_QUEUED = 0,  /* a message was committed (after its 250) */
  TERN_QEV_DELIVERED,   /* a recipient: 2xx */
  TERN_QEV_DEFERRED,    /* a recipient: 4xx or no connection; retry at */
  TERN_QEV_FAILED,      /* a recipient: 5xx or expired */
  TERN_QEV_BOUNCE,      /* a DSN was queued (bounce_id names it) */
  TERN_QEV_NO_BOUNCE,   /* failed, but no DSN: NOTIFY said not, or the
                           sender is <> (a bounce is never bounced) */
  TERN_QEV_DELAYED,     /* a delay warning was queued */
  TERN_QEV_REMOVED,     /* every recipient is done: the message is gone */
  TERN_QEV_DELETED,     /* removed by tern_queue_delete */
  TERN_QEV_ERROR,       /* the store failed (detail says how); also
                           when the disk fills: detail "disk full: new
                           mail refused (452 4.3.1) until N MiB are free
                           in DIR", id "" */
  TERN_QEV_RESUMED      /* the disk has room again: new mail is
                           accepted (detail "disk space back: accepting
                           mail again", id "") */
};

struct tern_queue_event {
  enum tern_queue_event_type type;
  const char *id;          /* the message's queue id; "" for an event
                              about the whole queue (the disk) */
  const char *rcpt;        /* the recipient, or NULL */
  const struct tern_reply *reply; /* its reply (delivered, deferred,
                                     failed), or NULL */
  const char *remote_mta;  /* who answered, or NULL (local) */
  const char *bounce_id;   /* TERN_QEV_BOUNCE/_DELAYED: the DSN's id */
  time_t retry_at;         /* TERN_QEV_DEFERRED: the next attempt */
  /* Words, never NULL. TERN_QEV_FAILED: "failed" (a 5xx), or, when the
   * recipient's queue lifetime ended with a 4xx, "expired after 5 d in
   * the queue; last reply: 451 4.4.1 ..." (a detail that begins with
   * "expired" means expiry; `expired` says the same). TERN_QEV_DEFERRED:
   * "deferred", "deferred: destination suspended, not tried" (see
   * tern_queue_job_unreachable), or "too many recipients for one
   * transaction: retried at once". */
  const char *detail;
  bool expired;            /* TERN_QEV_FAILED: the lifetime ended */
};

struct tern_queue_options {
  size_t size;
  const char *dir;          /* the spool directory (created 0700) */
  const char *hostname;     /* our name: Reporting-MTA, the DSN's From
                               (MAILER-DAEMON@hostname), Message-ID */
  unsigned lifetime_s;      /* deferred this long: failed; default 5 d */
  unsigned retry_min_s;     /* first retry after; default 300 */
  unsigned retry_max_s;     /* the delay doubles up to this; default 3600 */
  unsigned delay_warning_s; /* warn the sender (NOTIFY=DELAY) once, after
                               this long deferred; 0 = never (default) */
  unsigned concurrency;     /* jobs at once per destination; default 20 */
  unsigned max_active;      /* jobs at once in all; default 200 */
  unsigned max_job_rcpts;   /* recipients per job; default 50 (Postfix's
                               smtp_destination_recipient_limit). A
                               recipient answered "452 4.5.3" (RFC 5321
                               §4.5.3.1.10; or 452 with "too many
                               recipients" and no enhanced code) while
                               the next hop took others of the job is
                               tried again at once in a new job, the
                               attempt not counted */
  bool fsync;               /* default true; false loses acknowledged mail
                               on a crash (benchmarks, tests) */
  /* Where a DSN about a message from <> goes (a double bounce), e.g.
   * "postmaster@example.org"; NULL: nowhere, the failed message is kept
   * in the queue on hold for the postmaster (`tern queue list` shows it,
   * `tern queue delete` removes it). */
  const char *postmaster;
  /*
   * Deliver a job: one message, one destination, some of its recipients
   * (info). Read the body with tern_queue_job_read(), hand it on, report
   * each recipient with tern_queue_job_result() and end with
   * tern_queue_job_done(). Runs on the home loop. Required.
   */
  void (*deliver)(struct tern_queue_job *job,
                  const struct tern_queue_job_info *info, void *ud);
  /* Log events (home loop; must not call back into the queue). NULL:
   * none. */
  void (*on_event)(const struct tern_queue_event *ev, void *ud);
  void *ud;
  /* Where tern_queue_open() writes why it failed, with a NUL. */
  char *error;
  size_t error_size;
  /* The destination of a DSN the queue makes (its one recipient is
   * `addr`: the original sender, or the postmaster), as the application
   * names destinations (tern_queue_rcpt.dest); called on the home loop
   * with opts.ud. The string must stay valid until the call returns.
   * NULL, or a NULL or "" answer: "local". */
  const char *(*route)(const char *addr, void *ud);
};

static inline void
tern_queue_options_init(struct tern_queue_options *o) {
  struct tern_queue_options d = {0};
  d.size = sizeof d;
  d.lifetime_s = 5u * 24 * 3600;
  d.retry_min_s = 300;
  d.retry_max_s = 3600;
  d.concurrency = 20;
  d.max_active = 200;
  d.max_job_rcpts = 50;
  d.fsync = true;
  *o = d;
}

/*
 * Open (or create) the queue in opts->dir on `loop` and load what it
 * holds: messages left half-received by a crash are dropped (they were
 * never acknowledged), every other recipient not done is scheduled (one
 * that was being delivered at the crash is delivered again: at worst a
 * duplicate, never a loss). Delivery starts at once. Synchronous.
 * Returns 0, TERN_EINVAL (bad options), TERN_EIO (the store cannot be
 * opened; opts->error says why), TERN_EBUSY (another process has it
 * open), TERN_ENOMEM. On failure *out is NULL.
 */
TERN_EXTERN int tern_queue_open(struct tern_queue **out, uv_loop_t *loop,
                                const struct tern_queue_options *opts);

/*
 * Stop: no new job starts; jobs in flight get until `timeout_ms` to end
 * (their results are committed), then they are cancelled (abort() of the
 * application's delivery is its business: a cancelled job's recipients
 * stay queued and are delivered again after a restart). `done` runs on
 * the home loop when everything is committed and closed, never inside
 * this call; then tern_queue_free() (inside `done` too). Ports must be
 * freed before. */
TERN_EXTERN void tern_queue_close(struct tern_queue *q, unsigned timeout_ms,
                                  void (*done)(void *arg), void *arg);
TERN_EXTERN void tern_queue_free(struct tern_queue *q);

/* Is the job cancelled (tern_queue_close timed out)? Its results will
 * not be recorded; the application should abort its delivery and still
 * end the job with tern_queue_job_done(), before tern_queue_free() (which
 * frees what is left of such jobs: the handle and its info). A read in
 * flight at cancellation ends with status TERN_ECLOSED. */
TERN_EXTERN bool tern_queue_job_cancelled(const struct tern_queue_job *job);

/* ---- submitting (any loop, through a port) ----------------------------- */

/* A port on `loop` (that loop's thread). Free it on that thread, with no
 * message of it open, before tern_queue_close. */
TERN_EXTERN int tern_queue_port_new(struct tern_queue *q, uv_loop_t *loop,
                                    struct tern_queue_port **out);
TERN_EXTERN void tern_queue_port_free(struct tern_queue_port *p);

/* One recipient of a message. */
struct tern_queue_rcpt {
  const char *addr;        /* the address (no <>) */
  const char *orcpt;       /* ORCPT as "type;address" (decoded), or NULL */
  unsigned notify;         /* TERN_NOTIFY_* bits, 0 = not given */
  /* Where it goes, as the application names destinations (the scheduler
   * limits concurrency per destination and gives one job the recipients
   * of a message that share one): "relay", "local", a domain... */
  const char *dest;
};

/* A message's envelope. Strings are copied. */
struct tern_queue_envelope {
  const char *from;        /* "" for <> */
  const struct tern_queue_rcpt *rcpts;
  size_t nrcpts;           /* >= 1 */
  enum tern_body body;
  bool smtputf8, requiretls;
  enum tern_dsn_ret ret;
  const char *envid;       /* ENVID (decoded), or NULL */
  const char *client;      /* for the DSN's Received-From-MTA: "dns;
                              name (addr)" style, or NULL */
};

/*
 * Begin a message. Its queue id is known at once
 * (tern_queue_msg_id), for the trace header and log lines. Returns 0,
 * TERN_EINVAL, TERN_ENOMEM, TERN_ECLOSED (the queue is closing).
 */
TERN_EXTERN int tern_queue_msg_begin(struct tern_queue_port *p,
                                     const struct tern_queue_envelope *env,
                                     struct tern_queue_msg **out);
TERN_EXTERN const char *tern_queue_msg_id(const struct tern_queue_msg *m);

/*
 * Body bytes (as they are to be delivered: CRLF lines, not
 * dot-stuffed). Copied. Returns 0 (taken: write more), 1 (taken, but
 * wait for `written(arg, status)` before the next write; status 0 or a
 * TERN_E* code), or a TERN_E* code (the message failed: its commit
 * will say so). Memory stays bounded whatever the message's size.
 */
TERN_EXTERN int tern_queue_msg_write(struct tern_queue_msg *m,
                                     const char *buf, size_t len,
                                     void (*written)(void *arg, int status),
                                     void *arg);

/*
 * Header fields to put in front of the message as it is delivered (and
 * shown by tern_queue_scan_body), e.g. the DKIM-Signature fields that
 * are known only once the whole message was seen (tern/dkim.h). Call
 * it after the last tern_queue_msg_write has been taken and before
 * commit; once per message. `buf` holds complete fields ending in CRLF
 * (at most 64 KiB) and is copied; it is stored in the same transaction
 * as the message. Returns 0, TERN_EINVAL (too long, or not ending in
 * CRLF), TERN_ESTATE (called twice, or after commit), TERN_ENOMEM.
 */
TERN_EXTERN int tern_queue_msg_prepend(struct tern_queue_msg *m,
                                       const char *buf, size_t len);

/*
 * The body is complete: make the message durable. `done(arg, reply)`
 * runs on the port's loop, never inside this call, once the message and
 * its envelope are on stable storage (250 2.0.0 "Ok: queued as ID") or
 * not (452 4.3.1 "insufficient system storage" on a full disk or quota,
 * 451 4.3.0 on another error; then nothing of it is left). The message
 * handle is freed after `done` returns.
 */
TERN_EXTERN void tern_queue_msg_commit(struct tern_queue_msg *m,
                                       void (*done)(void *arg,
                                                    const struct tern_reply *r),
                                       void *arg);

/* Give up on a message before commit (nothing of it stays), or after
 * commit only stop `done` from being called (it may still be queued: its
 * sender was never told 250, so at worst it comes twice). */
TERN_EXTERN void tern_queue_msg_abort(struct tern_queue_msg *m);

/* ---- delivering (the home loop) ---------------------------------------- */

struct tern_queue_job_rcpt {
  const char *addr;
  const char *orcpt;       /* "type;address" or NULL */
  unsigned notify;
};

struct tern_queue_job_info {
  const char *id;          /* queue id */
  const char *from;        /* "" for <> */
  const char *dest;
  const struct tern_queue_job_rcpt *rcpts;
  size_t nrcpts;
  uint64_t size;           /* body octets */
  enum tern_body body;
  bool smtputf8, requiretls;
  enum tern_dsn_ret ret;
  const char *envid;       /* or NULL */
  time_t arrival;
  unsigned attempt;        /* 1 for the first */
  bool is_bounce;          /* a DSN we made */
};

/*
 * Read the body's next chunk: `cb(arg, buf, len, status)` runs on the
 * home loop, never inside this call, with len > 0 (buf valid during the
 * call only), then once with len 0 at the end, or status < 0 on a store
 * error (then end the job, reporting no results: everything is
 * deferred). One read at a time. Returns 0 or TERN_EBUSY.
 */
TERN_EXTERN int tern_queue_job_read(struct tern_queue_job *job,
                                    void (*cb)(void *arg, const char *buf,
                                               size_t len, int status),
                                    void *arg);

/*
 * Recipient i's outcome: 2xx delivered, 4xx deferred (retry later), 5xx
 * failed (a DSN to the sender, as NOTIFY says). `remote_mta` names who
 * answered ("mx.example.org [192.0.2.1]"), NULL when the delivery was
 * local. Reporting a recipient twice keeps the first.
 */
TERN_EXTERN void tern_queue_job_result(struct tern_queue_job *job, size_t i,
                                       const struct tern_reply *r,
                                       const char *remote_mta);

/*
 * The job is over: recipients without a result are deferred with
 * `r` (NULL: 451 4.4.0 "delivery not finished"). The results are
 * committed in the background; the job handle is gone after this call.
 */
TERN_EXTERN void tern_queue_job_done(struct tern_queue_job *job,
                                     const struct tern_reply *r);

/*
 * The job's destination cannot be reached now (no connection, no
 * greeting, a 421 before MAIL): every recipient of the job without a
 * result is deferred with `r` (attempt counted), and the destination is
 * suspended, as Postfix's queue manager does with a dead destination:
 * the jobs of that destination waiting to start are deferred with the
 * same reply without being tried (attempt counted, back-off as usual;
 * event detail "deferred: destination suspended, not tried"), no job of
 * it starts until retry_min_s has passed, and then one at a time (a
 * probe) until a job of it ends with tern_queue_job_done again, which
 * lifts the suspension (full concurrency again). Mail for a suspended
 * destination that becomes due meanwhile (new mail, retries) waits,
 * queued and untried, for the probe: if that ends unreachable too, it is
 * deferred with the probe's reply; if it ends with done, it goes. Jobs
 * of the destination already running when it is suspended run on. Ends
 * the job like tern_queue_job_done (the handle is gone after this call).
 * r NULL (or not a 4xx: an unreachable hop is a temporary failure):
 * 451 4.4.1 "next hop unreachable".
 */
TERN_EXTERN void tern_queue_job_unreachable(struct tern_queue_job *job,
                                            const struct tern_reply *r);

/* ---- looking and steering (home loop; `tern queue`) -------------------- */

enum tern_queue_rcpt_state {
  TERN_QRS_QUEUED = 0,   /* waiting for its first attempt */
  TERN_QRS_DEFERRED,     /* waiting to be tried again */
  TERN_QRS_ACTIVE,       /* being delivered now */
  TERN_QRS_DELIVERED,
  TERN_QRS_FAILED
};

struct tern_queue_list_rcpt {
  const char *addr;
  const char *dest;
  enum tern_queue_rcpt_state state;
  unsigned attempts;
  time_t next_try;         /* 0: none */
  int last_code;           /* 0: never tried */
  const char *last_reply;  /* "451 4.4.1 connection refused" or "" */
};

struct tern_queue_list_msg {
  const char *id;
  time_t arrival;
  uint64_t size;
  const char *from;
  bool held;
  bool is_bounce;
  size_t nrcpts;
  const struct tern_queue_list_rcpt *rcpts;
};

/* Called once per message, oldest first; return non-zero to stop. The
 * strings live during the call. */
typedef int (*tern_queue_list_fn)(const struct tern_queue_list_msg *m,
                                  void *arg);

/* List the running queue (id NULL: every message; else that one). Runs
 * the callback inside the call (it reads the store's committed state,
 * and marks what is being delivered now ACTIVE). Returns 0, TERN_ENOENT
 * (no such id), TERN_EIO. */
TERN_EXTERN int tern_queue_list(struct tern_queue *q, const char *id,
                                tern_queue_list_fn fn, void *arg);

/* How many messages the running queue holds (committed, not yet
 * removed; held ones included). Constant time: for start-up and status
 * lines, where a full tern_queue_list would read every envelope again. */
TERN_EXTERN size_t tern_queue_count(const struct tern_queue *q);

/* The same, offline: open the spool in `dir` read-only (the daemon may be
 * stopped, or running) and list it. Synchronous. */
TERN_EXTERN int tern_queue_scan(const char *dir, const char *id,
                                tern_queue_list_fn fn, void *arg,
                                char *error, size_t error_size);

/* Retry now: one message (id) or all (NULL), held ones excepted.
 * Returns 0 or TERN_ENOENT. */
TERN_EXTERN int tern_queue_flush(struct tern_queue *q, const char *id);
/* Remove a message without a DSN (a job in flight for it ends
 * unrecorded). Returns 0 or TERN_ENOENT. */
TERN_EXTERN int tern_queue_delete(struct tern_queue *q, const char *id);
/* Hold (no delivery, no expiry) or release a message. 0 or TERN_ENOENT. */
TERN_EXTERN int tern_queue_hold(struct tern_queue *q, const char *id,
                                bool hold);

/* The body of a message, for `tern queue show` (offline too): cb gets
 * the chunks in order inside the call. 0, TERN_ENOENT, TERN_EIO. */
TERN_EXTERN int tern_queue_scan_body(const char *dir, const char *id,
                                     int (*cb)(void *arg, const char *buf,
                                               size_t len),
                                     void *arg, char *error,
                                     size_t error_size);

#ifdef __cplusplus
}
#endif

#endif /* TERN_QUEUE_H */
