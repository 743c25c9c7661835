/*
 * Delivery targets for `tern serve`, and the one interface every target
 * implements (struct deliver_ops). A delivery is one message on its way
 * out: the session begins it at DATA, writes the body to it, commits it
 * at the end of data and answers each recipient with the outcome the
 * delivery reports, on the same loop. Maildir, pipe and the forwarding
 * targets implement it below; a durable queue is one more implementation.
 */
#ifndef TERN_CLI_DELIVER_H
#define TERN_CLI_DELIVER_H

#include <stdbool.h>
#include <stddef.h>
#include <time.h>
#include <uv.h>

#include <tern/tern.h>

struct tern_dkim_signer; /* tern/dkim.h */

/* The outcome of a delivery, as an SMTP reply (static strings or ones
 * owned by the delivery until it is freed). */
typedef void (*deliver_done_fn)(void *arg, const struct tern_reply *r,
                                const char *detail);

/* ---- the delivery interface ---------------------------------------------- */

/*
 * The contract, as a target (and Step 7's queue) implements it.
 *
 * Life of a delivery: begin, then any number of writes (one at a time),
 * then commit or abort; after commit, abort is still allowed until the
 * last result. Every callback runs on the loop of deliver_msg.loop,
 * never from inside the call that asked for it (write, commit), and
 * never after abort returns. A call that fails calls no callback for it.
 * The caller may abort from inside a callback (its session ended while
 * it answered a recipient): the delivery then reports nothing more.
 *
 * Ownership: begin copies what it keeps of deliver_msg (strings, header);
 * the caller may free it when begin returns. write() is finished with
 * `buf` when it returns: a target that needs the bytes later copies them,
 * so the caller may reuse its buffer at once (the runtime's read buffer
 * is reused after on_data returns). Chunks may be of any size.
 *
 * When a recipient may be answered 250: only from a result that says
 * 2xx for it, and a target says 2xx only when the message is as safe as
 * it will ever be on our side: Maildir once it is fsynced, renamed into
 * new/ and the directory fsynced; pipe once the command exited 0; a
 * forwarding target once the next hop said 2xx; a queue once the
 * message and its envelope are fsynced in the queue. An error before
 * commit (ENOSPC...) is remembered and becomes the commit's result.
 *
 * Abort means: nobody will be told the outcome. Before commit, nothing
 * of the message is left behind (temporary files removed, commands
 * stopped, the next hop's transaction dropped); after commit it only
 * detaches the caller (what is in flight may still land: its sender was
 * never told 250, so at worst the message comes again). The delivery
 * frees itself, at once or when what it has in flight ends.
 */

/* What begin gets: the message as the session knows it at DATA. */
struct deliver_msg {
  uv_loop_t *loop;
  const char *from;                /* the sender, "" for <> */
  const char *const *rcpts;        /* accepted recipients, RCPT order */
  size_t nrcpts;                   /* at least 1 */
  const char *header;              /* trace fields, written before the body */
  size_t hlen;
  /* A target that answers the envelope itself (forwarding: the next hop
   * answered MAIL and RCPT; the queue: the message queue_msg_open()
   * opened) hands over here what it opened then; it belongs to the
   * delivery once begin is called, whatever it returns. */
  void *envelope;
  /* The rest of the envelope, for a target that keeps it (the queue;
   * the others ignore it). NULL arrays: no NOTIFY / ORCPT given. */
  const unsigned *notify;          /* per recipient: TERN_NOTIFY_* bits */
  const char *const *orcpt;        /* per recipient: "type;addr" or NULL */
  const struct deliver_mail *mail; /* the MAIL parameters, or NULL */
};

/* MAIL's parameters (and who sent it), as the queue keeps them. */
struct deliver_mail {
  enum tern_body body;
  bool smtputf8, requiretls;
  enum tern_dsn_ret ret;
  const char *envid;               /* decoded, or NULL */
  const char *client;              /* "dns; helo (addr)" or NULL */
  /* The queue target signs the message with this (DKIM-Signature fields
   * put in front through tern_queue_msg_prepend) when not NULL: the
   * session sets it for mail it originates (authenticated) only. The
   * outcome is the DELIVER_ALL detail, for serve_dkim_log(). */
  struct tern_dkim_signer *dkim;
};

/* Where the session wants the delivery's news. `arg` is given to each. */
struct deliver_cbs {
  /* A write that returned DELIVER_LATER is done: the next one may come.
   * status 0 or -errno (remembered; commit reports it). */
  void (*written)(void *arg, int status);
  /*
   * After commit: recipient `rcpt`'s outcome (index into deliver_msg's
   * rcpts), or with rcpt == DELIVER_ALL the outcome of every recipient
   * not reported on its own. DELIVER_ALL comes once and last (r NULL when
   * every recipient had its own); the delivery frees itself after it
   * returns. `detail` is for the log (a file name, a command's output).
   */
  void (*result)(void *arg, size_t rcpt, const struct tern_reply *r,
                 const char *detail);
};

#define DELIVER_ALL ((size_t)-1)
#define DELIVER_LATER 1 /* write: cb->written will say when */

/* One delivery in flight (each target's own type behind it). */
struct delivery;

/* A configured target: its operations and what they deliver to. */
struct deliver_target {
  const struct deliver_ops *ops;
  const char *spec;         /* maildir: path or template (%u %d %a);
                               pipe: command line (%s %r %u %d %a) */
  struct maildir_ctx *md;   /* maildir: the context of this loop */
  unsigned time_limit_ms;   /* pipe: pipe_set_time_limit(); 0 none */
};

struct deliver_ops {
  /* True when the target is the final delivery (RFC 5321 §4.4:
   * Return-Path is added, the reply says "delivered"). */
  bool final;
  /* Start a delivery: 0 (write the body now; *refusal untouched), or
   * -errno with *refusal set to the reply to give (nothing to abort).
   * Never waits: what must be opened is opened in the background, and a
   * failure there is reported by commit. `cb` must live until the
   * delivery ends. */
  int (*begin)(const struct deliver_target *t, const struct deliver_msg *m,
               const struct deliver_cbs *cb, void *arg, struct delivery **out,
               struct tern_reply *refusal);
  /* Body bytes. Returns 0 (taken: write the next), DELIVER_LATER
   * (cb->written tells when the next may come), or -errno (the delivery
   * failed and keeps the error for commit: drop the rest, then commit). */
  int (*write)(struct delivery *d, const char *buf, size_t len);
  /* The body is complete: make it durable (or hand it on) and report
   * through cb->result. Call it with no write outstanding. */
  void (*commit)(struct delivery *d);
  /* Give up (see "Abort means" above). */
  void (*abort)(struct delivery *d);
};

extern const struct deliver_ops maildir_ops;
extern const struct deliver_ops pipe_ops;
extern const struct deliver_ops forward_ops;
extern const struct deliver_ops queue_ops;

/* ---- maildir ------------------------------------------------------------- */

/* Per-loop state: the directory-fsync batcher (group commit).
 * fsync=false skips every fsync (file and directories): for benchmarks and
 * tests only, as a crash may then lose acknowledged mail.
 * maildir_ctx_free may be called with deliveries still running (the last
 * one frees the context); start no new ones after it. */
struct maildir_ctx;

int maildir_ctx_new(struct maildir_ctx **out, uv_loop_t *loop, bool fsync);
void maildir_ctx_free(struct maildir_ctx *ctx);

/* mkdir -p DIR, DIR/{tmp,new,cur} (mode 0700); with clean_tmp remove every
 * regular file in DIR/tmp (start-up: left by a crash, never acknowledged).
 * Synchronous (start-up only). Returns 0 or -errno. */
int maildir_prepare(const char *dir, bool clean_tmp);

struct maildir_delivery;

/*
 * Start writing a message to DIRS[0]/tmp, or SPOOL/tmp when spool is not
 * NULL (unique name: SECONDS.M<usec>P<pid>Q<seq>.<host>), with `header`
 * (Return-Path, Received; copied) written first. The message will be
 * linked into every DIRS[i]/new (repeated DIRS are delivered once).
 * Missing maildirs are created in the thread pool: the spool (or
 * DIRS[0]) when the file is opened, the DIRS at commit, so with a spool
 * no recipient's maildir is made for a message that is aborted. The open
 * happens in the thread pool; writes may be issued at once. Nothing here
 * blocks the loop. Returns 0 or -errno.
 */
int maildir_begin(struct maildir_ctx *ctx, const char *spool,
                  const char *const *dirs, size_t ndirs, const char *header,
                  size_t hlen, struct maildir_delivery **out);

/*
 * Add a chunk (copied: the caller may reuse buf at once). Chunks are
 * gathered and written in blocks of 128 KiB in the libuv thread pool.
 * Returns 1 when the chunk was only buffered (cb is not called: write
 * the next one), 0 when a block is being written (`cb(arg, status)` runs
 * on the loop when it is, status 0 or -errno; wait for it), or -errno.
 * One block at a time (-EBUSY otherwise). An error (ENOSPC...) is
 * remembered; later writes return it at once (and, like any failed
 * call, never call cb); commit then fails with 452 4.3.1 or 451 4.3.0
 * and removes the file.
 */
int maildir_write(struct maildir_delivery *d, const char *buf, size_t len,
                  void (*cb)(void *arg, int status), void *arg);

/*
 * Make it durable, then give it its names: the file's data on stable
 * storage, the file linked into DIRS[1..]/new (a copy when on another
 * file system) and renamed into DIRS[0]/new, those names on stable
 * storage, then `done` with 250 2.0.0 (detail = file name) or 452 4.3.1
 * / 451 4.3.0 (nothing left in any new/). With fsync, both steps are
 * shared with the context's other deliveries: one syncfs(2) per file
 * system and cycle (deliver_maildir.c explains it; it flushes whatever
 * else is dirty on that file system too). Call it with no write in
 * flight. `done` is always called, never from inside maildir_commit; the
 * delivery frees itself after `done` returns. Aborting after commit does
 * not stop the commit; it only means `done` is not called.
 */
void maildir_commit(struct maildir_delivery *d, deliver_done_fn done,
                    void *arg);

/* Give up: before commit, close and unlink the temporary file and free
 * the delivery (asynchronously, if a write is in flight: its cb is not
 * called); after commit, only detach `done` (the caller is gone). */
void maildir_abort(struct maildir_delivery *d);

/* TEST ONLY: the number of barriers (cycles that ran syncfs) this
 * context has finished, to check group commit in tests/deliver. Not for
 * the daemon's use. */
unsigned long maildir_ctx_test_barriers(const struct maildir_ctx *ctx);

/* ---- pipe ---------------------------------------------------------------- */

struct pipe_delivery;

/* Run argv (argv[0] a path, no shell) with the message on stdin; sender
 * and recipient in the environment (SENDER, RECIPIENT, ORIGINAL_RECIPIENT:
 * the caller builds env; NULL inherits ours). Its stdout and stderr go to
 * one pipe of which the first 1 KiB is kept for the detail text. SIGPIPE
 * is set to ignored in this process if it was SIG_DFL (children get the
 * default back). Returns 0 or -errno (-ENOENT: no such command). */
int pipe_begin(uv_loop_t *loop, char *const *argv, char *const *env,
               const char *header, size_t hlen, struct pipe_delivery **out);
/* As maildir_write (uv_write; cb when written, backpressure by waiting
 * for it). A command that exits without reading makes writes fail
 * (-EPIPE); commit then still maps its exit status. */
int pipe_write(struct pipe_delivery *d, const char *buf, size_t len,
               void (*cb)(void *arg, int status), void *arg);
/* Close stdin, wait for the exit: 0 → 250 2.0.0; sysexits map as Postfix
 * does (75 EX_TEMPFAIL → 451 4.3.0, 67 EX_NOUSER → 550 5.1.1, ...; the
 * table is in deliver_pipe.c). `done` is never called from inside
 * pipe_commit; the delivery frees itself after `done` returns. */
void pipe_commit(struct pipe_delivery *d, deliver_done_fn done, void *arg);
/* The time limit of every pipe command from now on (0: none): a command
 * that takes none of its input and does not exit for `ms` (at any point:
 * while it is fed, or after its stdin is closed) is killed with its
 * whole process group (it runs in a session of its own) and answered
 * 451 4.3.0 "command time limit exceeded". tern serve sets it below the
 * inbound data timeout, so the client hears a true answer in time. */
void pipe_set_time_limit(unsigned ms);

/* Give up, also after commit (a command that never exits): close stdin,
 * SIGTERM the command (SIGKILL 5 s later), no callback is called again;
 * the delivery frees itself once the command is reaped. */
void pipe_abort(struct pipe_delivery *d);

/* ---- pipe, one command per recipient ------------------------------------ */

/*
 * N commands fed the same message, one per recipient, each with its own
 * argv, environment and exit status (the pipe target: every recipient's
 * reply is what its own command did).
 */
struct pipe_group;

/* Recipient i's outcome, as pipe_commit maps it. */
typedef void (*pipe_each_fn)(void *arg, size_t i, const struct tern_reply *r,
                             const char *detail);

/* A group of n members, none started. `header` (the trace lines) must
 * live until the last pipe_group_start. Returns 0 or -errno. Free it with
 * pipe_group_abort (or let commit finish it). */
int pipe_group_new(struct pipe_group **out, size_t n, const char *header,
                   size_t hlen);
/* Start member i's command (pipe_begin; argv NULL: the caller could not
 * build it, -E2BIG). On failure the error is
 * returned and, if the group is committed anyway, member i's outcome is
 * 451 4.3.0 ("cannot start command"). */
int pipe_group_start(struct pipe_group *g, uv_loop_t *loop, size_t i,
                     char *const *argv, char *const *env);
/* Write to every member still reading (copied: the caller may reuse buf
 * at once). Returns 0 when cb(arg, 0) will run once every member took it,
 * 1 when no member takes input any more (cb is not called; go on, the
 * exit statuses decide), or -errno (-EBUSY: a write is in flight). */
int pipe_group_write(struct pipe_group *g, const char *buf, size_t len,
                     void (*cb)(void *arg, int status), void *arg);
/* Close every stdin and wait: `each(arg, i, reply, detail)` once per
 * member, in the order the commands finish, never from inside this call.
 * At least one member must have started. The group frees itself after
 * the last `each` returns (pipe_group_abort must not be called then). */
void pipe_group_commit(struct pipe_group *g, pipe_each_fn each, void *arg);
/* Give up (also after commit, also from inside `each`): every command
 * still running is stopped as by pipe_abort; `each` is not called again. */
void pipe_group_abort(struct pipe_group *g);

/* ---- lmtp / smtp forwarding ------------------------------------------------ */

struct forward_opts {
  const char *url;     /* lmtp:///path, lmtp://host:24, smtp://host:25 */
  const char *ehlo;    /* our name */
  bool verify;         /* verify the certificate when TLS is required
                          (smtp+starttls://, smtps://); smtp:// is
                          opportunistic and never verified */
  const char *ca_file; /* or NULL for the system store */
  const char *auth_user;     /* next-hop AUTH, or NULL */
  const char *auth_password;
  unsigned timeout_ms; /* connect, each reply, the final reply */
};

/* The inbound MAIL, as the next hop gets it (strings copied). */
struct forward_mail {
  const char *from;    /* "" for <> */
  uint64_t size;       /* SIZE=, 0 = none */
  enum tern_body body;
  bool smtputf8, requiretls;
  enum tern_dsn_ret ret;
  const char *envid;   /* decoded, or NULL */
};

enum forward_step { FWD_MAIL = 0, FWD_RCPT, FWD_DATA };

struct forward_delivery;

/*
 * Connect to the next hop and send MAIL. `cb(arg, reply, text)` runs
 * once, never from inside this call: the next hop's answer to MAIL, or
 * a refusal made here (what the next hop does not offer: 554 5.6.1
 * BINARYMIME, 553 5.6.7 SMTPUTF8, 550 5.6.3 8BITMIME, 550 5.7.30
 * REQUIRETLS, 552 5.3.4 SIZE; 451 4.4.x when it cannot be reached or
 * fails). A connection that fails at once makes it return -EHOSTUNREACH
 * instead. Returns 0 or -errno.
 */
int forward_open(uv_loop_t *loop, const struct forward_opts *o,
                 const struct forward_mail *m, deliver_done_fn cb,
                 void *arg, struct forward_delivery **out);
/* One recipient: `cb` gets the next hop's answer to its RCPT (or 451
 * 4.4.2 when the next hop failed first). When the answer is known
 * inside the call it is written to *now and 1 is returned (cb is not
 * called); else 0. One step at a time: -EBUSY while one is waiting;
 * -EINVAL (address not sendable), -EIO. */
int forward_rcpt(struct forward_delivery *d, const char *addr,
                 unsigned notify, const char *orcpt, deliver_done_fn cb,
                 void *arg, struct tern_reply *now);
/* DATA: `cb` gets the next hop's 354 or refusal (with BDAT, a local
 * go-ahead: then 1 and *now, as forward_rcpt). `header` (our Received
 * line; copied) goes first. */
int forward_data(struct forward_delivery *d, const char *header, size_t hlen,
                 deliver_done_fn cb, void *arg, struct tern_reply *now);
/* Body bytes (copied; any length). Returns 1 when all were taken at
 * once, 0 when cb(arg, 0) will run once they are, or -errno. */
int forward_write(struct forward_delivery *d, const char *buf, size_t len,
                  void (*cb)(void *arg, int status), void *arg);
/* End the body; `done` gets the next hop's verdict (an SMTP next hop:
 * its one reply; LMTP: the first recipient's, the others through
 * forward_result()), or 451 4.4.2 with detail "unknown" when the next
 * hop failed or fell silent after the end of data. Never from inside
 * this call. When the outcome is known already (the next hop failed
 * during the body) it is written to *now and 1 is returned instead. */
int forward_commit(struct forward_delivery *d, deliver_done_fn done,
                   void *arg, struct tern_reply *now);
/* Accepted recipient i's own outcome after commit (i counts the
 * recipients the next hop accepted, in order). */
void forward_result(const struct forward_delivery *d, size_t i,
                    struct tern_reply *r);
/* Does the next hop speak LMTP? How many recipients has it accepted? */
bool forward_is_lmtp(const struct forward_delivery *d);
size_t forward_accepted(const struct forward_delivery *d);
/* The MAIL part of a client message from fm (every field; pointers are
 * copied as they are, so fm's strings must outlive m). The one mapping
 * of an envelope to the next hop's MAIL, for the forwarding targets and
 * the queue's relay. Recipients are the caller's. */
void forward_message_set(struct tern_client_message *m,
                         const struct forward_mail *fm);

/* What a next hop with these capabilities (tern_client_session_caps),
 * SIZE limit (0: none) and TLS state cannot take of message m, as the
 * RFCs answer it: BINARYMIME without CHUNKING 554 5.6.1, SMTPUTF8 553
 * 5.6.7, 8BITMIME 550 5.6.3, REQUIRETLS 550 5.7.30, SIZE 552 5.3.4.
 * Returns true with *r set (static strings), or false: it can go. The
 * one rule for the forwarding targets and the queue's relay. */
bool forward_refusal(const struct tern_client_message *m, unsigned caps,
                     uint64_t max_size, bool tls, struct tern_reply *r);

/* The caller is done with it (after done, or to abort). */
void forward_release(struct forward_delivery *d);

/* ---- the queue: submission (deliver_queue.c) ------------------------------ */

struct tern_queue_port;
struct tern_queue_msg;

/*
 * Open a queued message for `m` (sender, recipients with their NOTIFY
 * and ORCPT, MAIL parameters; m->header is not used) on port `p` (of
 * m->loop), recipient i to destination dests[i] ("local", "mx:DOMAIN",
 * "url:URL", "smarthost": cfg_route_dest in config.h); dests NULL, or
 * a NULL dests[i], means "local". The strings are copied.
 * Its queue id is known at once (tern_queue_msg_id) so that the trace
 * header can name it; hand the message to queue_ops.begin through
 * m->envelope (begin writes m->header first), or tern_queue_msg_abort
 * it. Returns 0 or -errno (-ESHUTDOWN: the queue is closing).
 */
int queue_msg_open(struct tern_queue_port *p, const struct deliver_msg *m,
                   const char *const *dests, struct tern_queue_msg **out);

/* ---- the queue: delivery of its jobs (queue_deliver.c) --------------------- */

struct tern_queue;
struct tern_queue_job;
struct tern_queue_job_info;
struct qdeliver;

/*
 * The queue's deliverer: runs each job through the configured target
 * (policy_get() at each job, so a reload's [delivery] applies to the
 * next attempt): maildir and pipe through their deliver_ops with a
 * Return-Path header; lmtp and smtp over client connections to the
 * forward URL that are kept open and reused (at most `concurrency`
 * idle ones, closed after 10 s unused). All on the queue's home loop.
 */
int qdeliver_new(struct qdeliver **out, uv_loop_t *loop,
                 unsigned concurrency);
/* The tern_queue_options.deliver callback (ud = the qdeliver). */
void qdeliver_job(struct tern_queue_job *job,
                  const struct tern_queue_job_info *info, void *ud);
/* Shutting down: close idle connections now; a delivery still running
 * is aborted (its job is not touched again: call this once the queue is
 * closed). The qdeliver frees itself when its last connection is
 * closed. */
void qdeliver_free(struct qdeliver *qd);
/* The arrival of message `id` while its job's results are being handed
 * to the queue (the queue's recipient events come from inside that
 * call), else 0. For the delay= of the log lines. */
time_t qdeliver_arrival(const char *id);
/* When message `id` has a job running now (the queue's shutdown cancels
 * running jobs and says so in events before qdeliver_free), *remote is
 * set to the next hop it was going to ("" for a local target) and
 * *arrival to the message's arrival; returns true. Home loop. */
bool qdeliver_running(const char *id, const char **remote, time_t *arrival);

struct tern_resolver;
struct log_line;
struct cfg;
/* A resolver on `loop` from c's [outbound] (resolver: the forwarders,
 * else /etc/resolv.conf; trust_anchor, dnssec, mta_sts,
 * mta_sts_ca_file). Returns 0 with *out, or -1 with *out NULL and err
 * set ("[outbound] resolver: ..."). */
int qdeliver_resolver_make(uv_loop_t *loop, const struct cfg *c,
                           struct tern_resolver **out, char *err, size_t cap);
/* The resolver new mx: connections use from now on (NULL: none, each
 * client makes its own from the system's configuration). The qdeliver
 * takes `r` over; the one it replaces is freed when the last connection
 * made with it is gone. Home loop. */
void qdeliver_set_resolver(struct qdeliver *qd, struct tern_resolver *r);
struct sockaddr_storage;
/* This server's own addresses (daemon.c, from its listeners), given to
 * every mx: client from now on (tern_client_options.self_addrs: an MX
 * host that is this server is never connected to; when the best one is,
 * the mail bounces with 5.4.6). Copied; n = 0 clears them. Returns 0 or
 * -1 (no memory: the old ones stay). Home loop. */
int qdeliver_set_self_addrs(struct qdeliver *qd,
                            const struct sockaddr_storage *a, size_t n);
/* While message `id`'s job hands its results back (as qdeliver_arrival),
 * or while it runs: its destination name ("local", "mx:example.org"...),
 * else NULL. Home loop. */
const char *qdeliver_dest(const char *id);
/* While message `id`'s job hands its results back: add to l what its
 * delivery line says of the destination and the connection: dest=
 * (other than local), mx= addr= (who took it), tls= (version or none),
 * cipher=, verified= (dane-ee, dane-ta, mta-sts, ca or no), policy=,
 * tls_failure= (what MTA-STS testing let pass). Nothing else. */
void qdeliver_log_fields(const char *id, struct log_line *l);

#endif
