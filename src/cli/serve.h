/*
 * tern serve, inside: what its files share. serve.c holds the sessions
 * (the server callbacks and the message's way to its delivery),
 * serve_forward.c the envelope steps of the forwarding targets,
 * serve_rcheck.c the [delivery] recipient_check, serve_log.c the
 * rejection and runtime-event log lines, daemon.c the start-up, signals
 * and reload, privdrop.c the privilege drop and socket activation.
 */
#ifndef TERN_CLI_SERVE_H
#define TERN_CLI_SERVE_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <tern/net.h>
#include <tern/queue.h>
#include <tern/tern.h>

#include "config.h"
#include "deliver.h"

/* ---- the policy: what a reload replaces (daemon.c) ------------------------ */

/* Sessions hold a reference to the policy they started with, so a reload
 * never changes the rules under a transaction. */
struct serve_dkim;
struct policy {
  atomic_int refs;
  struct cfg cfg;
  struct users *users;   /* NULL without AUTH */
  struct rcptset *known; /* [delivery] recipients, or NULL */
  struct serve_dkim *dkim; /* [dkim NAME] keys, or NULL (serve_dkim.h) */
};

/* The current policy, with a reference (policy_put it). Thread-safe. */
struct policy *policy_get(void);
/* Drop a reference (NULL is ignored); the last one frees the policy. */
void policy_put(struct policy *p);

/* ---- a session (serve.c) ------------------------------------------------- */

struct rcheck;

/* Counting the Received: fields of a message's header as it streams in
 * (serve.c, hopcount_feed): a field name at the start of a line,
 * compared without case; the header ends at the first empty line, and
 * nothing after it is looked at. Constant work per octet, state kept
 * across chunks of any size. */
struct hopcount {
  unsigned n;      /* Received: fields seen */
  unsigned char st; /* where in the line (serve.c) */
  unsigned char at; /* octets of "received:" matched so far */
};

/* Mail with more Received: fields than this is refused at the end of
 * data with 554 5.4.6 (a loop; Postfix's hopcount_limit, RFC 5321
 * §6.3): docs/configuration.md "Mail loops". */
#define SERVE_MAX_HOPS 50

/* Feed a chunk of the incoming message (as on_data gets it). */
void hopcount_feed(struct hopcount *h, const char *buf, size_t len);

/* One recipient's outcome of the message being delivered. */
struct rcpt_result {
  bool known;
  int code;
  char enh[16];
  char text[256];
};

struct sess {
  struct tern_server_session *s;
  struct policy *pol;
  const struct tern_session_info *info;
  char helo[256];
  char *from;                 /* current sender ("" for <>) */
  bool utf8;                  /* MAIL said SMTPUTF8 (the Received "with") */
  char **rcpts;               /* accepted recipients */
  unsigned *notify;           /* their NOTIFY bits (rcap of each) */
  char **orcpt;               /* their ORCPT, "type;addr" or NULL */
  char **dests;               /* their destinations (cfg_route_dest):
                                 "local", "mx:DOMAIN", "url:URL",
                                 "smarthost"; the queue's rcpt dest */
  size_t nrcpts, rcap;
  unsigned cur_notify;        /* the RCPT being decided: its params */
  char *cur_orcpt;
  char *cur_dest;             /* and its destination */
  struct deliver_mail mail;   /* MAIL's parameters (envid owned) */
  char client[400];           /* "dns; helo (addr)" for the queue */
  bool queued;                /* this message goes into the queue */
  struct tern_queue_port *port; /* the session's door to the queue */
  struct rcheck *rcheck;      /* [delivery] recipient_check running */
  struct forward_delivery *fd; /* forwarding: the next hop's transaction */
  char *fwd_rcpt;             /* the RCPT waiting for the next hop */
  /* the message being delivered (deliver_ops) */
  const struct deliver_ops *ops;
  struct delivery *dlv;       /* NULL: none, or it has ended */
  struct rcpt_result *res;    /* each recipient's outcome */
  long wait;                  /* on_data_end waiting for this one, or -1 */
  bool committed;
  bool done;                  /* every outcome known */
  int code;                   /* the message's outcome (its log line) */
  char enh[16];
  char text[256];
  char file[512];             /* where it went (log) */
  char hdr[2048];             /* trace header */
  size_t hlen;
  uint64_t size;
  unsigned messages;          /* per session, for the log */
  unsigned txns;              /* messages begun: numbers message ids */
  char msgid[48];             /* this message's id (message_id()) */
  bool msgid_used;            /* a DATA/BDAT of this transaction has it */
  char cmd[200];              /* last command line (AUTH redacted), raw */
  struct hopcount hops;       /* Received: fields of the incoming header */
};

/* End the message's delivery and the next hop's transaction, if any:
 * aborted, no callback of theirs comes. */
void sess_drop_delivery(struct sess *x);
/* Room for one more recipient in x->rcpts. Returns 0 or -1 (no memory). */
int sess_rcpt_room(struct sess *x);
/* Add an accepted recipient (addr is taken over; room made before),
 * with the NOTIFY and ORCPT of the RCPT being decided. */
void sess_push_rcpt(struct sess *x, char *addr);

/* The queue of the daemon (daemon.c sets it before the server starts,
 * clears it once the server is down), or NULL: direct delivery. */
void serve_set_queue(struct tern_queue *q);
/* Does this session's new message go into the queue? */
bool sess_uses_queue(const struct sess *x);
/* The maildir context of `loop` (group commit per loop). */
struct maildir_ctx *serve_maildir_ctx(uv_loop_t *loop);

/* The session callbacks of tern serve (serve.c). */
void serve_callbacks(struct tern_server_callbacks *cb,
                     struct tern_auth_callbacks *auth);
/* Per-loop delivery state: fsync as [delivery] fsync says; freed by
 * serve_loops_free() after the loops have stopped. */
void serve_loops_init(bool fsync);
void serve_loops_free(void);

/* ---- forwarding targets (serve_forward.c) ------------------------------- */

bool is_forward(const struct cfg *c);
/* The next hop's timeouts, well inside the inbound session's. */
unsigned forward_timeout(const struct cfg *c);
void log_forward(struct sess *x, const char *step, const struct tern_reply *r,
                 const char *what);
/* MAIL, RCPT and DATA answered by the next hop (TERN_PENDING or
 * TERN_REPLY_NOW with *r set, as the server callbacks return). */
int forward_mail_step(struct sess *x, const struct tern_mail_params *p,
                      struct tern_reply *r);
int forward_rcpt_step(struct sess *x, const struct tern_path *to,
                      const struct tern_rcpt_params *p, struct tern_reply *r);
int forward_data_step(struct sess *x, struct tern_reply *r);

/* ---- [delivery] recipient_check (serve_rcheck.c) ---------------------------- */

/* Ask the command about `to`: TERN_PENDING (the RCPT is answered when it
 * is known) or TERN_REPLY_NOW with *r set. */
int rcheck_start(struct sess *x, const struct tern_path *to,
                 struct tern_reply *r);
/* The session goes away: the check runs out alone and answers no one. */
void rcheck_cancel(struct sess *x);

/* ---- log lines of rejections and runtime events (serve_log.c) ------------ */

void serve_on_command(struct tern_server_session *s, struct tern_str line,
                      void *ud);
void serve_on_reply(struct tern_server_session *s, struct tern_str bytes,
                    void *ud);
void serve_on_net_event(const struct tern_net_event *ev, void *ud);
/* The queue's events as log lines (tern_queue_options.on_event). */
void serve_queue_event(const struct tern_queue_event *ev, void *ud);

/* ---- privileges and socket activation (privdrop.c) --------------------- */

/* Drop to [server] user/group after binding, each step checked. Returns
 * 0 or -1 with err set. */
int drop_privileges(const struct cfg *c, char *err, size_t cap);
/* Warn about files a reload will need and this user cannot read. */
void check_reloadable(const char *path, const struct cfg *c);
/* systemd socket activation: fd_of[i] is listener i's socket or -1.
 * Returns 0 or -1 with err set. */
int activation_fds(const struct cfg *c, int fd_of[], char *err, size_t cap);

#endif /* TERN_CLI_SERVE_H */
