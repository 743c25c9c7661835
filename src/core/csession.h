/*
 * The client session's state, shared by client.c (output, replies, the
 * greeting, EHLO, STARTTLS and AUTH, the session's life) and cmsg.c (a
 * message: the envelope, the body, the end, incremental transactions).
 * Nothing here is public API.
 */
#ifndef TERN_CORE_CSESSION_H
#define TERN_CORE_CSESSION_H

#include "internal.h"

/* Longest command this session formats (MAIL/RCPT with every DSN
 * parameter xtext-encoded stays below 1,900 octets). */
#define CMD_MAX 2048
/* RFC 4954 §4: a client response line may be 12288 octets. */
#define AUTH_LINE_MAX 12288
/* Room kept free above the body for commands that must go out at once
 * (RSET, QUIT, ".", AUTH responses); optional writes leave KEEP free. */
#define KEEP (2 * CMD_MAX)
#define OUT_RESERVE (2 * (AUTH_LINE_MAX + 16) + KEEP)
#define CHUNK_MAX 65536 /* BDAT chunks are coalesced up to this */
#define BDAT_INFLIGHT 4 /* unanswered BDAT chunks while pipelining */
#define EXPECT_MAX 16
/* Incremental transactions (tern_client_session_mail/rcpt/data): how
 * many commands may wait for their reply, and how many octets of them
 * may wait unwritten (a server without PIPELINING takes one at a time). */
#define INC_MAX 32
#define HELD_MAX (4 * CMD_MAX)

enum state {
  ST_GREETING = 0, /* waiting for the 220 */
  ST_EHLO,         /* EHLO/LHLO sent */
  ST_HELO,         /* HELO sent after EHLO was refused */
  ST_STARTTLS,     /* STARTTLS sent */
  ST_TLS_WAIT,     /* 220 to STARTTLS: the runtime starts TLS */
  ST_AUTH,         /* an AUTH step is out */
  ST_READY,        /* idle */
  ST_TXN,          /* a message */
  ST_CMD,          /* RSET, NOOP or VRFY from the application */
  ST_QUIT,         /* QUIT sent */
  ST_CLOSED
};

enum phase {
  PH_ENVELOPE = 0, /* MAIL, RCPT..., DATA and their replies */
  PH_BODY,         /* the body goes out */
  PH_END,          /* the end is out; the data replies are awaited */
  PH_CLEANUP,      /* failed (on_message_done called): RSET goes next */
  PH_RSET          /* RSET is out; its reply makes the session ready */
};

struct expect {
  unsigned char cmd; /* enum tern_client_cmd */
  unsigned index;    /* of the next reply */
  unsigned count;    /* replies still to come for this entry */
};

struct txn {
  const struct tern_client_message *m;
  enum phase phase;
  bool bdat, binary;
  bool mail_written, mail_replied, mail_ok, data_written;
  bool end_requested, end_written, done_fired;
  bool dot_after_fail; /* "." sent after a 354 nobody could use */
  int mail_code, rcpt_fail, data_code, end_code, end_fail;
  size_t next_rcpt, rcpt_replied, accepted, delivered;
  unsigned ends_left; /* data replies still expected */
  unsigned inflight;  /* unanswered BDAT chunks */
  unsigned stuff;     /* body codec state */
  size_t chunk_len;
  /* Parameters decided by send() from the server's capabilities. */
  bool p_size, p_utf8, p_requiretls, p_dsn;
  const char *p_body; /* BODY= value or NULL */
  /* Incremental transaction: commands come one call at a time. */
  bool inc, data_asked;
  size_t inc_rcpts;              /* rcpt() calls taken */
  tern_client_reply_fn bdat_fn;  /* data() with BDAT: no server reply */
  void *bdat_arg;
};

/* One command of an incremental transaction, in order: written (waiting
 * for its reply) or still held (its line is in `held`). */
struct inc_slot {
  tern_client_reply_fn fn;
  void *arg;
  unsigned char cmd;
  unsigned index;
  size_t len;
};

struct tern_client_session {
  struct tern_client_config cfg;
  struct tern_client_callbacks cb;
  struct tern_mem mem;
  void *ud;
  bool body_ready;             /* body() had room when last looked */
  tern_client_notify_fn notify;
  void *notify_arg;

  enum state state;
  bool tls;
  const char *mech; /* the AUTH mechanism in use */
  bool ir_pending;  /* initial response waits for the first 334 */
  size_t ir_len;
  bool in_ready, ready_again;
  bool in_reply; /* on_reply runs: the reply is not applied yet */

  struct tern__caps caps;
  struct tern__creply rp;

  char *out;
  size_t out_off, out_len, out_cap;
  char *auth; /* AUTH_LINE_MAX, or NULL without on_auth */
  char *chunk;
  size_t chunk_cap;

  struct expect q[EXPECT_MAX];
  size_t q_head, q_n;

  struct txn t;

  struct inc_slot inc[INC_MAX];
  size_t inc_head, inc_n, inc_unwritten;
  char *held; /* HELD_MAX, made by the first mail() */
  size_t held_len;
};

/* ---- string building (commands are formatted into fixed buffers) ----- */

/* The core's one bounded string builder (str.c, internal.h), by the
 * short names the client's formatting code uses. */
static inline size_t cat(char *buf, size_t cap, size_t n, const char *str,
                         size_t len) {
  return tern__cat(buf, cap, n, str, len);
}

static inline size_t cats(char *buf, size_t cap, size_t n, const char *str) {
  return tern__cats(buf, cap, n, str);
}

static inline size_t cat_u64(char *buf, size_t cap, size_t n, uint64_t v) {
  return tern__cat_u64(buf, cap, n, v);
}

/* strlen(s), looking at no more than max + 1 octets (then max + 1). */
static inline size_t bounded_len(const char *s, size_t max) {
  size_t n = 0;
  while (n <= max && s[n])
    n++;
  return n;
}

/* ---- client.c, for cmsg.c ------------------------------------------------ */

/* Output: room left, may an optional write go now, contiguous room for n
 * octets (or NULL), append n octets (false when they do not fit). */
size_t tern__cl_out_room(const struct tern_client_session *c);
bool tern__cl_below_high_water(const struct tern_client_session *c);
char *tern__cl_out_reserve(struct tern_client_session *c, size_t n);
bool tern__cl_out_put(struct tern_client_session *c, const char *p, size_t n);
/* `count` replies to `cmd` are expected, the first numbered `index`. */
void tern__cl_expect(struct tern_client_session *c, enum tern_client_cmd cmd,
                     unsigned index, unsigned count);
/* The runtime hook; on_ready (never nested); on_message_done (once per
 * message); the session is idle: READY and on_ready. */
void tern__cl_notify(struct tern_client_session *c);
void tern__cl_fire_ready(struct tern_client_session *c);
void tern__cl_msg_done(struct tern_client_session *c, int code, bool local);
void tern__cl_become_ready(struct tern_client_session *c);

/* ---- cmsg.c, for client.c ------------------------------------------------ */

/* Move the message on after a reply, a body call or consumed output. */
void tern__cl_txn_step(struct tern_client_session *c);
/* A reply to a command of the message (MAIL ... the end, RSET). */
void tern__cl_on_txn_reply(struct tern_client_session *c,
                           enum tern_client_cmd cmd,
                           const struct tern_client_reply *r);
/* Every incremental callback still owed gets a local reply. */
void tern__cl_inc_drain(struct tern_client_session *c, int code,
                        const char *enh, const char *text);
/* How much body() could take now; on_body_ready on the rise. */
size_t tern__cl_body_room(const struct tern_client_session *c);
void tern__cl_check_body_ready(struct tern_client_session *c);

#endif /* TERN_CORE_CSESSION_H */
