/*
 * The server session's state, shared by server.c (lifecycle, framing,
 * output, decisions, message data) and command.c (the command table:
 * each verb's check and apply), and the small interface server.c gives
 * the verbs.
 */
#ifndef TERN_CORE_SESSION_H
#define TERN_CORE_SESSION_H

#include "internal.h"

#include "dot.h"

enum tern__state {
  ST_NEW = 0,   /* before start() */
  ST_CMD,       /* reading command lines */
  ST_AUTH,      /* reading an AUTH continuation line */
  ST_DATA,      /* reading DATA content */
  ST_BDAT,      /* reading a BDAT chunk (or discarding one) */
  ST_DATA_END,  /* message read; end-of-data replies being produced */
  ST_TLS_WAIT,  /* STARTTLS accepted; input discarded until tls_started */
  ST_CLOSED     /* QUIT, 421 or eof: input dropped */
};

/* How a message ended, which decides its end-of-data reply. */
enum tern__end {
  END_OK = 0,    /* ask the application (on_data_end) */
  END_TOO_BIG,   /* 552 5.3.4 */
  END_APP_ERROR, /* on_data failed: 451 4.3.0 */
  END_LONG_LINE, /* 500 5.5.6 */
  END_BARE       /* 550 5.6.0 (policy reject) */
};

struct tern_server_session {
  struct tern_server_config cfg;     /* copy; strings point below */
  struct tern_server_callbacks cb;   /* copy */
  struct tern_mem mem;               /* allocator hooks (zero = libc) */
  void *ud;                          /* handed to callbacks */
  tern_server_notify_fn notify;      /* runtime hook, or NULL */
  void *notify_arg;                  /* its argument */
  const char *greeting;              /* "<hostname> <banner>" */

  char *io;             /* line buffer + output queue, or NULL (trimmed) */
  char *line;           /* current command line buffer (small or auth) */
  size_t line_len;      /* bytes in it */
  size_t line_cap;      /* its size */
  char *small_line;     /* the max_line buffer inside io */
  char *auth_line;      /* lazily allocated max_auth_line buffer, or NULL */
  bool line_overflow;   /* discarding the rest of a too-long line */
  bool last_line_crlf;  /* the last command line ended in CRLF */

  char *out;            /* queued reply bytes */
  size_t out_off;       /* first unsent byte */
  size_t out_len;       /* end of queued bytes */
  size_t out_cap;       /* high water + room for two replies */

  unsigned char state;            /* enum tern__state */
  enum tern_server_event pending; /* decision waiting for reply() */
  struct tern_reply pend_default; /* its default reply */
  bool started;         /* start() was called */
  bool close_fired;     /* on_close was called */
  bool paused;          /* on_data asked for a pause */
  bool tls;             /* TLS is active */
  bool authenticated;   /* AUTH succeeded */
  bool helo_seen;       /* HELO/EHLO/LHLO accepted */
  bool esmtp;           /* ... and it was EHLO/LHLO */
  bool rejected;        /* greeting was 5xx: only QUIT works */
  bool xclient_trusted; /* peer may use XCLIENT */

  /* transaction */
  bool in_txn;          /* MAIL accepted */
  bool txn_utf8;        /* MAIL had SMTPUTF8 */
  bool txn_binary;      /* MAIL had BODY=BINARYMIME */
  bool bdat_used;       /* a BDAT chunk was accepted in this transaction */
  bool msg_open;        /* content is flowing to on_data */
  bool start_is_bdat;   /* the pending DATA_START came from BDAT */
  unsigned rcpt_count;  /* accepted recipients */
  uint64_t msg_size;    /* octets passed to on_data */
  unsigned char end;    /* enum tern__end */
  struct tern__dot dot; /* DATA decoder */
  uint64_t bdat_size;   /* size of the current chunk */
  uint64_t bdat_left;   /* octets of it still to read */
  bool bdat_last;       /* it was BDAT ... LAST */
  bool bdat_discard;    /* read it but throw it away */
  bool bdat_done_pending; /* chunk read while paused: finish on resume */
  unsigned end_next;    /* next end-of-data reply to produce */
  unsigned end_count;   /* 1, or the recipients in LMTP */

  /* pending-decision context */
  void (*pend_apply)(struct tern_server_session *, int, const char *,
                     const char *); /* tern__apply_fn of the decision */
  bool pend_utf8, pend_binary;   /* MAIL's check, for MAIL's apply */

  /* AUTH */
  char mech[24];        /* current mechanism, upper case */
  unsigned auth_step;   /* continuation counter */

  /* counters */
  unsigned errors;       /* protocol errors since the last message */
  unsigned junk;         /* junk commands since the last message */
  bool cmd_junk;         /* the current command was counted as junk */
  bool msg_accepted;     /* the message being ended was accepted */
  uint64_t bdat_line;    /* octets of the current BDAT text line */
  unsigned transactions; /* messages ended (delivered or not) */

  /* envelope (envelope.c) */
  struct tern__env *env;     /* sender and recipients, or NULL (trimmed) */
  char *helo_spare;        /* the HELO argument while the store is
                            * trimmed away (a block of its own size) */
  unsigned short helo_len; /* 0 also when it was too long to keep */
  unsigned char helo_verb; /* enum tern_helo_verb */
};

/*
 * How a decision's verdict is applied: queue the reply (code, enhanced
 * code already chosen, text) and change the state it means. Each verb's
 * apply is in command.c next to its check; the greeting's and the end of
 * data's are in server.c.
 */
typedef void (*tern__apply_fn)(struct tern_server_session *s, int code,
                               const char *enh, const char *text);

/*
 * ---- The session's interface for the verbs (server.c) --------------------
 *
 * Dependencies go one way: command.c uses only these; server.c calls
 * command.c only through tern__command(), the table's dispatcher.
 */

/* Has the session ended (on_close fired or firing)? Nothing more is said
 * or changed then; an apply checks it after each reply it queues. */
static inline bool tern__closed(const struct tern_server_session *s) {
  return s->state == ST_CLOSED;
}

/* Queue one reply ("enh" NULL: none; with ENHANCEDSTATUSCODES off never).
 * Should the output buffer be missing and not come back (out of memory)
 * the session closes (on_close fires) instead. */
void tern__emit(struct tern_server_session *s, int code, const char *enh,
                const char *text);

/* A protocol error: tern__emit(), then count it against max_errors and as
 * junk; either limit may close the session with a 421. */
void tern__fail(struct tern_server_session *s, int code, const char *enh,
                const char *text);

/* Count the current command as junk (once per command); true when the
 * limit closed the session with a 421. */
bool tern__junk(struct tern_server_session *s);

/* Count an error against max_errors; true when that closed the session. */
bool tern__count_error(struct tern_server_session *s);

/* End the session: abort a message in progress (on_data_abort with
 * `why`), then on_close, exactly once whatever calls it how often. */
void tern__close(struct tern_server_session *s, const char *why);

/*
 * Take a decision callback's return for event `ev`: TERN_PENDING (the
 * application answers later; `apply` waits in the session), an error
 * (451 4.3.0) or a reply, checked, then applied by `apply`. A 421 then
 * closes; any other refusal of a command counts as junk. The default
 * reply for a later NULL reply() must already be in s->pend_default.
 */
void tern__decide(struct tern_server_session *s, enum tern_server_event ev,
                  tern__apply_fn apply, int rc, struct tern_reply *r);

/* RFC 5321 §4.1.1.5: forget the transaction; `notify` fires on_reset if
 * there was one. */
void tern__txn_reset(struct tern_server_session *s, bool notify);

/* The message's content starts: DATA (after the 354) or the first
 * accepted BDAT chunk. */
void tern__msg_begin(struct tern_server_session *s, bool bdat);

/* Read the chunk the current BDAT command announced (s->bdat_*). */
void tern__bdat_begin(struct tern_server_session *s);

/* Is AUTH offered now (configured, a callback, and TLS or insecure_ok)? */
bool tern__auth_offered(const struct tern_server_session *s);

/* The extensions in effect now (TERN_EXT_*): the configured ones less
 * those the session's state rules out. */
unsigned tern__ext(const struct tern_server_session *s);

/* ---- The envelope kept for on_data_end (envelope.c) ------------------------ */

int tern__env_reserve(struct tern_server_session *s);
void tern__env_free(struct tern_server_session *s);
void tern__env_trim(struct tern_server_session *s);
void tern__env_helo(struct tern_server_session *s, enum tern_helo_verb verb,
                    const char *arg, size_t len);
int tern__env_mail(struct tern_server_session *s, const struct tern_path *from,
                   const struct tern_mail_params *mp);
int tern__env_rcpt(struct tern_server_session *s, const struct tern_path *to,
                   const struct tern_rcpt_params *rp);
const struct tern_envelope *tern__env_view(struct tern_server_session *s,
                                           unsigned rcpt_index);

/* ---- The command table (command.c), for server.c --------------------------- */

/* One complete command line (CRLF removed) in ST_CMD or ST_AUTH. */
void tern__command(struct tern_server_session *s, char *line, size_t len);

#endif
