/*
 * Client session: the mirror image of server.c. Server replies are fed
 * in and parsed (creply.c); commands are queued in a bounded output
 * buffer; the session walks greeting -> EHLO -> STARTTLS -> AUTH -> ready
 * and then one message at a time.
 *
 * Which reply answers which command is kept in a small FIFO of
 * expectations: each entry is a command and a count, so a pipelined run
 * of 1000 RCPTs is one entry. A reply with nothing expected is a protocol
 * error (or, for 421, the server closing).
 *
 * Memory: one allocation at tern_client_session_new() holds the session,
 * its strings, the reply buffer (TERN__CREPLY_MAX), the output buffer
 * (output_high_water + OUT_RESERVE) and, when AUTH can happen, the AUTH
 * line buffer. The BDAT chunk buffer (at most CHUNK_MAX) is made by the
 * first message that uses BDAT and kept until _free().
 */
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

/* ---- output ---------------------------------------------------------------- */

static size_t out_pending(const struct tern_client_session *c) {
  return c->out_len - c->out_off;
}

static size_t out_room(const struct tern_client_session *c) {
  return c->out_cap - out_pending(c);
}

/* May an optional write (body, a pipelined command) go out now? Only
 * while less than the high-water mark is unsent, as for body(). */
static bool below_high_water(const struct tern_client_session *c) {
  return out_pending(c) == 0 || out_pending(c) < c->cfg.output_high_water;
}

/* Contiguous room for n octets at out + out_len, or NULL. */
static char *out_reserve(struct tern_client_session *c, size_t n) {
  if (out_room(c) < n)
    return NULL;
  if (c->out_cap - c->out_len < n) {
    memmove(c->out, c->out + c->out_off, out_pending(c));
    c->out_len -= c->out_off;
    c->out_off = 0;
  }
  return c->out + c->out_len;
}

static bool out_put(struct tern_client_session *c, const char *p, size_t n) {
  char *d = out_reserve(c, n);
  if (!d)
    return false;
  memcpy(d, p, n);
  c->out_len += n;
  return true;
}

/* Append str[0..len) to buf[0..cap) at n; truncates (callers size their
 * buffers so that it never happens). */
static size_t cat(char *buf, size_t cap, size_t n, const char *str,
                  size_t len) {
  if (n >= cap)
    return n;
  if (len > cap - n)
    len = cap - n;
  memcpy(buf + n, str, len);
  return n + len;
}

static size_t cats(char *buf, size_t cap, size_t n, const char *str) {
  return cat(buf, cap, n, str, strlen(str));
}

static size_t cat_u64(char *buf, size_t cap, size_t n, uint64_t v) {
  char d[24];
  size_t i = sizeof d;
  do {
    d[--i] = (char)('0' + v % 10);
    v /= 10;
  } while (v);
  return cat(buf, cap, n, d + i, sizeof d - i);
}

/* ---- expectations ------------------------------------------------------------ */

static void expect(struct tern_client_session *c, enum tern_client_cmd cmd,
                   unsigned index, unsigned count) {
  if (c->q_n) {
    struct expect *l = &c->q[(c->q_head + c->q_n - 1) % EXPECT_MAX];
    if (cmd == TERN_CMD_RCPT && l->cmd == cmd && l->index + l->count == index) {
      l->count += count;
      return;
    }
  }
  /* Never full: at most MAIL, RCPTs, DATA, ".", BDAT_INFLIGHT chunks,
   * the last chunk, RSET and QUIT are outstanding at once. */
  struct expect *e = &c->q[(c->q_head + c->q_n) % EXPECT_MAX];
  e->cmd = (unsigned char)cmd;
  e->index = index;
  e->count = count;
  c->q_n++;
}

static struct expect pop(struct tern_client_session *c) {
  struct expect *f = &c->q[c->q_head];
  struct expect e = *f;
  e.count = 1;
  f->index++;
  if (--f->count == 0) {
    c->q_head = (c->q_head + 1) % EXPECT_MAX;
    c->q_n--;
  }
  return e;
}

/* ---- callbacks and endings ------------------------------------------------- */

static void notify(struct tern_client_session *c) {
  if (c->notify)
    c->notify(c, c->notify_arg);
}

/* on_ready, never nested: a send() from on_ready that ends at once (SIZE
 * over the limit) asks for on_ready again, which runs when the outer one
 * has returned. */
static void fire_ready(struct tern_client_session *c) {
  if (c->in_ready) {
    c->ready_again = true;
    return;
  }
  do {
    c->ready_again = false;
    if (c->state != ST_READY || !c->cb.on_ready)
      return;
    c->in_ready = true;
    c->cb.on_ready(c, c->ud);
    c->in_ready = false;
  } while (c->ready_again);
}

static void msg_done(struct tern_client_session *c, int code, bool local) {
  struct txn *t = &c->t;
  if (t->done_fired)
    return;
  t->done_fired = true;
  struct tern_client_outcome o = {code, local, t->accepted, t->delivered};
  if (c->cb.on_message_done)
    c->cb.on_message_done(c, &o, c->ud);
}

/* Is the server reading message data (DATA accepted or maybe about to
 * be)? Then no command may be written: it would become content. */
static bool in_data_stream(const struct tern_client_session *c) {
  const struct txn *t = &c->t;
  return c->state == ST_TXN && !t->bdat && t->data_written &&
         !t->end_written && !t->dot_after_fail &&
         (t->data_code == 0 || t->data_code == 354);
}

static void write_quit(struct tern_client_session *c) {
  out_put(c, "QUIT\r\n", 6);
}

/*
 * The session fails: a message in progress ends with a local 4xx, then
 * on_error, then the session wants close. With `quit` a QUIT goes out
 * first when the connection is still usable (RFC 5321 §4.1.1.10).
 */
static void inc_drain(struct tern_client_session *c, int code,
                      const char *enh, const char *text);

static void die(struct tern_client_session *c, int err,
                const struct tern_client_reply *r, bool quit) {
  if (c->state == ST_CLOSED)
    return;
  bool msg = c->state == ST_TXN && !c->t.done_fired;
  if (quit && !in_data_stream(c) && c->state != ST_TLS_WAIT)
    write_quit(c);
  c->state = ST_CLOSED;
  c->q_n = 0;
  if (err == TERN_ECLOSED)
    inc_drain(c, 421, "4.4.2", "connection to the server lost");
  else
    inc_drain(c, 451, "4.4.2", "session with the server failed");
  if (msg)
    msg_done(c, err == TERN_ECLOSED ? 421 : 451, true);
  if (c->cb.on_error)
    c->cb.on_error(c, err, r, c->ud);
}

static void become_ready(struct tern_client_session *c) {
  c->state = ST_READY;
  fire_ready(c);
}

/* ---- greeting, EHLO, STARTTLS, AUTH ---------------------------------------- */

static bool write_line2(struct tern_client_session *c, const char *a,
                        const char *b) {
  char line[CMD_MAX];
  size_t n = cats(line, sizeof line, 0, a);
  n = cats(line, sizeof line, n, b);
  n = cat(line, sizeof line, n, "\r\n", 2);
  return out_put(c, line, n);
}

static void send_hello(struct tern_client_session *c, const char *verb,
                       enum state st) {
  write_line2(c, verb, c->cfg.ehlo_name);
  expect(c, TERN_CMD_EHLO, 0, 1);
  c->state = st;
}

static bool base64_ok(const char *p, size_t n) {
  for (size_t i = 0; i < n; i++) {
    unsigned char ch = (unsigned char)p[i];
    if (!tern__is_alnum(ch) && ch != '+' && ch != '/' && ch != '=')
      return false;
  }
  return true;
}

/* Send one AUTH response line from the AUTH buffer (RFC 4954 §4). */
static void auth_response(struct tern_client_session *c, size_t len) {
  char *d = out_reserve(c, len + 2);
  if (!d) { /* DefensiveCoding: the reserve holds two maximal lines */
    die(c, TERN_EAUTH, NULL, false);
    return;
  }
  memcpy(d, c->auth, len);
  memcpy(d + len, "\r\n", 2);
  c->out_len += len + 2;
  expect(c, TERN_CMD_AUTH, 0, 1);
}

/* Ask the application for an AUTH step. Returns the length, or -1 to
 * cancel; TERN_CLIENT_AUTH_NO_IR passes through at the first step. */
static long auth_step(struct tern_client_session *c, struct tern_str ch,
                      bool has) {
  long n = c->cb.on_auth(c, ch, has, c->auth, AUTH_LINE_MAX - 2, c->ud);
  if (!has && n == TERN_CLIENT_AUTH_NO_IR)
    return n;
  if (n < 0 || (size_t)n > AUTH_LINE_MAX - 2 ||
      !base64_ok(c->auth, (size_t)n))
    return -1;
  return n;
}

static void start_auth(struct tern_client_session *c) {
  const char *mech = c->cfg.auth_mechanism;
  if (c->cb.on_auth_mechanism)
    mech = c->cb.on_auth_mechanism(c, c->caps.mechs, c->tls, c->ud);
  if (c->state == ST_CLOSED || c->state == ST_QUIT)
    return;
  size_t ml = mech ? strlen(mech) : 0;
  if (!mech || !(c->caps.caps & TERN_EXT_AUTH) ||
      !tern__mech_listed(c->caps.mechs, mech, ml)) {
    /* Not offered (or none chosen): go on without AUTH unless it is
     * required. A configured mechanism alone does not require it. */
    if (c->cfg.auth_required && (mech || c->cb.on_auth_mechanism))
      die(c, TERN_EAUTH, NULL, true);
    else
      become_ready(c);
    return;
  }
  if (ml > 20 || !c->cb.on_auth || !c->auth) {
    die(c, TERN_EAUTH, NULL, true);
    return;
  }
  c->mech = mech;
  c->state = ST_AUTH;
  long n = auth_step(c, (struct tern_str){"", 0}, false);
  if (c->state != ST_AUTH)
    return;
  if (n == -1) { /* cancelled before anything was sent */
    die(c, TERN_EAUTH, NULL, true);
    return;
  }
  char line[64];
  size_t l = cats(line, sizeof line, 0, "AUTH ");
  l = cat(line, sizeof line, l, mech, ml);
  c->ir_pending = false;
  /* RFC 4954 §4: the initial response goes on the AUTH line unless that
   * would exceed the command line limit (512, RFC 5321 §4.5.3.1.4); an
   * empty one is sent as "=". Otherwise it answers the empty 334. */
  if (n >= 0 && l + 1 + (size_t)(n ? n : 1) + 2 <= 512) {
    line[l++] = ' ';
    if (!n)
      c->auth[n++] = '=';
    memmove(c->auth + l, c->auth, (size_t)n);
    memcpy(c->auth, line, l);
    auth_response(c, l + (size_t)n);
    return;
  }
  if (n >= 0) {
    c->ir_pending = true;
    c->ir_len = (size_t)n;
  }
  line[l++] = '\r';
  line[l++] = '\n';
  out_put(c, line, l);
  expect(c, TERN_CMD_AUTH, 0, 1);
}

static void after_hello(struct tern_client_session *c) {
  /* RFC 3207 §4: STARTTLS when offered (and wanted), never twice. */
  if (!c->tls && c->cfg.starttls != TERN_STARTTLS_OFF) {
    if (c->caps.caps & TERN_EXT_STARTTLS) {
      out_put(c, "STARTTLS\r\n", 10);
      expect(c, TERN_CMD_STARTTLS, 0, 1);
      c->state = ST_STARTTLS;
      return;
    }
    if (c->cfg.starttls == TERN_STARTTLS_REQUIRED) {
      die(c, TERN_ETLS, NULL, true);
      return;
    }
  }
  start_auth(c);
}

static void on_hello(struct tern_client_session *c,
                     const struct tern_client_reply *r) {
  int cls = r->code / 100;
  if (cls == 2) {
    if (c->state == ST_EHLO)
      tern__ehlo_caps(r, &c->caps);
    else
      memset(&c->caps, 0, sizeof c->caps); /* HELO: no extensions */
    after_hello(c);
  } else if (cls == 5 && c->state == ST_EHLO && !c->cfg.lmtp) {
    /* RFC 5321 §3.2: a server that does not know EHLO answers 5xx; the
     * client falls back to HELO (LMTP has no HELO, RFC 2033 §4.1). */
    send_hello(c, "HELO ", ST_HELO);
  } else {
    die(c, TERN_EPROTO, r, true);
  }
}

static void on_auth_reply(struct tern_client_session *c,
                          const struct tern_client_reply *r) {
  if (r->code == 334) {
    if (c->ir_pending) {
      c->ir_pending = false;
      auth_response(c, c->ir_len);
      return;
    }
    long n = auth_step(c, r->lines[0], true);
    if (c->state != ST_AUTH)
      return;
    if (n < 0) { /* RFC 4954 §4: "*" cancels; the server answers 501 */
      out_put(c, "*\r\n", 3);
      expect(c, TERN_CMD_AUTH, 0, 1);
      return;
    }
    auth_response(c, (size_t)n);
  } else if (r->code / 100 == 2) { /* 235 */
    become_ready(c);
  } else {
    die(c, TERN_EAUTH, r, true);
  }
}

/* ---- the message ----------------------------------------------------------- */

static bool pipelining(const struct tern_client_session *c) {
  return c->cfg.pipelining && (c->caps.caps & TERN_EXT_PIPELINING);
}

static size_t notify_list(char *buf, size_t cap, size_t n, unsigned v) {
  static const struct {
    unsigned bit;
    const char *name;
  } names[] = {{TERN_NOTIFY_SUCCESS, "SUCCESS"},
               {TERN_NOTIFY_FAILURE, "FAILURE"},
               {TERN_NOTIFY_DELAY, "DELAY"}};
  if (v & TERN_NOTIFY_NEVER)
    return cats(buf, cap, n, "NEVER");
  bool first = true;
  for (size_t i = 0; i < 3; i++) {
    if (!(v & names[i].bit))
      continue;
    if (!first)
      n = cat(buf, cap, n, ",", 1);
    n = cats(buf, cap, n, names[i].name);
    first = false;
  }
  return n;
}

static size_t cat_xtext(char *buf, size_t cap, size_t n, const char *s) {
  long x = tern__xtext_encode(buf + n, cap - n, s, strlen(s));
  return x < 0 ? cap : n + (size_t)x;
}

/* RFC 5321 §4.1.1.2 MAIL, with the parameters send() chose. */
static size_t format_mail(const struct tern_client_session *c, char *b,
                          size_t cap, const struct tern_client_message *m) {
  const struct txn *t = &c->t;
  size_t n = cats(b, cap, 0, "MAIL FROM:<");
  n = cats(b, cap, n, m->from);
  n = cat(b, cap, n, ">", 1);
  if (t->p_size) { /* RFC 1870 §6 */
    n = cats(b, cap, n, " SIZE=");
    n = cat_u64(b, cap, n, m->size);
  }
  if (t->p_body) {
    n = cats(b, cap, n, " BODY=");
    n = cats(b, cap, n, t->p_body);
  }
  if (t->p_utf8) /* RFC 6531 §3.4 */
    n = cats(b, cap, n, " SMTPUTF8");
  if (t->p_requiretls) /* RFC 8689 §4.1 */
    n = cats(b, cap, n, " REQUIRETLS");
  if (t->p_dsn && m->ret) /* RFC 3461 §4.3 */
    n = cats(b, cap, n, m->ret == TERN_RET_FULL ? " RET=FULL" : " RET=HDRS");
  if (t->p_dsn && m->envid) { /* RFC 3461 §4.4 */
    n = cats(b, cap, n, " ENVID=");
    n = cat_xtext(b, cap, n, m->envid);
  }
  return cat(b, cap, n, "\r\n", 2);
}

/* RFC 5321 §4.1.1.3 RCPT, with RFC 3461 §4.1/§4.2 NOTIFY and ORCPT. */
static size_t format_rcpt(const struct tern_client_session *c, char *b,
                          size_t cap, const struct tern_client_rcpt *r) {
  size_t n = cats(b, cap, 0, "RCPT TO:<");
  n = cats(b, cap, n, r->address);
  n = cat(b, cap, n, ">", 1);
  if (c->t.p_dsn && r->notify) {
    n = cats(b, cap, n, " NOTIFY=");
    n = notify_list(b, cap, n, r->notify);
  }
  if (c->t.p_dsn && r->orcpt) {
    n = cats(b, cap, n, " ORCPT=rfc822;");
    n = cat_xtext(b, cap, n, r->orcpt);
  }
  return cat(b, cap, n, "\r\n", 2);
}

/* Is there an envelope command left to write? */
static bool more_envelope(const struct tern_client_session *c) {
  const struct txn *t = &c->t;
  if (t->inc)
    return c->inc_unwritten > 0;
  if (!t->mail_written)
    return true;
  if (t->mail_replied && !t->mail_ok)
    return false; /* nothing more after a refused MAIL */
  if (t->next_rcpt < t->m->nrcpts)
    return true;
  if (t->bdat || t->data_written)
    return false;
  /* DATA, unless every recipient is known to be refused already. */
  return !(t->rcpt_replied == t->m->nrcpts && t->accepted == 0);
}

/*
 * Write what the envelope allows now: everything up to DATA in one group
 * with PIPELINING (RFC 2920 §3.1: DATA is the last command of a group),
 * else one command per reply. Commands are formatted only while the
 * output is below the high-water mark, so 1000 recipients never need
 * more than the output buffer; consume() resumes.
 */
static void write_envelope(struct tern_client_session *c) {
  struct txn *t = &c->t;
  bool pipe = pipelining(c);
  char line[CMD_MAX];

  while (t->inc && c->inc_unwritten) {
    if ((!pipe && c->q_n) || c->q_n == EXPECT_MAX ||
        out_room(c) < CMD_MAX + KEEP || !below_high_water(c))
      return;
    struct inc_slot *s =
        &c->inc[(c->inc_head + c->inc_n - c->inc_unwritten) % INC_MAX];
    out_put(c, c->held, s->len);
    memmove(c->held, c->held + s->len, c->held_len - s->len);
    c->held_len -= s->len;
    c->inc_unwritten--;
    expect(c, (enum tern_client_cmd)s->cmd, s->index, 1);
    if (s->cmd == TERN_CMD_MAIL)
      t->mail_written = true;
    else if (s->cmd == TERN_CMD_RCPT)
      t->next_rcpt++;
    else
      t->data_written = true;
  }
  while (!t->inc && more_envelope(c)) {
    if (!pipe && c->q_n)
      return;
    if (c->q_n == EXPECT_MAX || out_room(c) < CMD_MAX + KEEP ||
        !below_high_water(c))
      return;
    size_t n;
    if (!t->mail_written) {
      n = format_mail(c, line, sizeof line, t->m);
      t->mail_written = true;
      expect(c, TERN_CMD_MAIL, 0, 1);
    } else if (t->next_rcpt < t->m->nrcpts) {
      n = format_rcpt(c, line, sizeof line, &t->m->rcpts[t->next_rcpt]);
      expect(c, TERN_CMD_RCPT, (unsigned)t->next_rcpt, 1);
      t->next_rcpt++;
    } else {
      n = cats(line, sizeof line, 0, "DATA\r\n");
      t->data_written = true;
      expect(c, TERN_CMD_DATA, 0, 1);
    }
    out_put(c, line, n);
  }
}

/* The message failed: tell the application now; RSET follows once every
 * outstanding reply is in (RFC 5321 §4.1.1.5). */
static void fail_msg(struct tern_client_session *c, int code) {
  c->t.phase = PH_CLEANUP;
  inc_drain(c, code, NULL, "message failed");
  msg_done(c, code, false);
}

static unsigned data_replies(const struct tern_client_session *c) {
  /* RFC 2033 §4.2: one reply per accepted recipient after the data. */
  return c->cfg.lmtp ? (unsigned)c->t.accepted : 1;
}

/*
 * Emit the BDAT chunk held in the chunk buffer (RFC 3030 §2: "BDAT" SP
 * size [SP "LAST"], then exactly size octets). Without PIPELINING each
 * chunk waits for the previous one's reply.
 */
static bool bdat_flush(struct tern_client_session *c, bool last) {
  struct txn *t = &c->t;
  if ((!pipelining(c) && c->q_n) || c->q_n >= EXPECT_MAX - 2 ||
      (!last && t->inflight >= BDAT_INFLIGHT))
    return false;
  char hdr[40];
  size_t n = cats(hdr, sizeof hdr, 0, "BDAT ");
  n = cat_u64(hdr, sizeof hdr, n, t->chunk_len);
  if (last)
    n = cats(hdr, sizeof hdr, n, " LAST");
  n = cat(hdr, sizeof hdr, n, "\r\n", 2);
  if (out_room(c) < n + t->chunk_len + KEEP)
    return false;
  out_put(c, hdr, n);
  out_put(c, c->chunk, t->chunk_len);
  t->chunk_len = 0;
  if (last) {
    t->end_written = true;
    t->ends_left = data_replies(c);
    t->phase = PH_END;
    expect(c, TERN_CMD_DATA_END, 0, t->ends_left);
  } else {
    t->inflight++;
    expect(c, TERN_CMD_BDAT, 0, 1);
  }
  return true;
}

/* Write the end of the message when it was asked for and may go. */
static void write_end(struct tern_client_session *c) {
  struct txn *t = &c->t;
  if (!t->end_requested || t->end_written)
    return;
  if (t->bdat) {
    if (!t->binary) /* close the last line; never a stuffing dot */
      t->chunk_len += tern__stuff(&t->stuff, "", 0, true, false,
                                  c->chunk + t->chunk_len);
    bdat_flush(c, true);
    return;
  }
  char *d = out_reserve(c, 7);
  if (!d) /* DefensiveCoding: body() leaves KEEP free */
    return;
  /* The codec closes the last line and adds ".\r\n", so the end is
   * always "<CRLF>.<CRLF>" (RFC 5321 §4.1.1.4). */
  c->out_len += tern__stuff(&t->stuff, "", 0, true, true, d);
  t->end_written = true;
  t->ends_left = data_replies(c);
  t->phase = PH_END;
  expect(c, TERN_CMD_DATA_END, 0, t->ends_left);
}

/* Move the message on after a reply, a body call or consumed output. */
static void txn_step(struct tern_client_session *c) {
  struct txn *t = &c->t;
  /* From inside on_reply (a consume() or body_end() there) the reply at
   * hand is not counted yet: its handler steps on afterwards. */
  if (c->state != ST_TXN || c->in_reply)
    return;
  if (t->phase == PH_ENVELOPE) {
    write_envelope(c);
    if (more_envelope(c) || c->q_n)
      return;
    /* Incremental: a refused MAIL ends the message at once; otherwise
     * the application adds recipients until it asks for data(). */
    if (t->inc && !t->data_asked && (!t->mail_replied || t->mail_ok))
      return;
    if (!t->mail_ok)
      fail_msg(c, t->mail_code);
    else if (!t->accepted)
      fail_msg(c, t->rcpt_fail);
    else if (t->bdat || t->data_code == 354)
      t->phase = PH_BODY;
    else
      fail_msg(c, t->data_code);
    if (c->state != ST_TXN)
      return;
    if (t->phase == PH_BODY && t->bdat_fn) {
      /* BDAT has no go-ahead from the server: say so locally. */
      tern_client_reply_fn fn = t->bdat_fn;
      t->bdat_fn = NULL;
      struct tern_str l = {"go ahead with BDAT", 18};
      struct tern_client_reply r = {354, NULL, &l, 1};
      fn(c, &r, true, t->bdat_arg);
      if (c->state != ST_TXN)
        return;
    }
  }
  if (t->phase == PH_BODY) {
    if (t->bdat && !t->end_requested && c->chunk_cap - t->chunk_len < 16)
      bdat_flush(c, false);
    write_end(c);
  }
  if (t->phase == PH_CLEANUP && !c->q_n) {
    out_put(c, "RSET\r\n", 6);
    expect(c, TERN_CMD_RSET, 0, 1);
    t->phase = PH_RSET;
  }
}

/* The last data reply is in: the outcome, then ready. */
static void txn_finish(struct tern_client_session *c) {
  struct txn *t = &c->t;
  int code;
  if (c->cfg.lmtp) {
    code = t->end_fail ? t->end_fail : 250;
  } else {
    code = t->end_code;
    t->delivered = code / 100 == 2 ? t->accepted : 0;
  }
  msg_done(c, code, false);
  if (c->state == ST_TXN)
    become_ready(c);
}

static void on_txn_reply(struct tern_client_session *c,
                         enum tern_client_cmd cmd,
                         const struct tern_client_reply *r) {
  struct txn *t = &c->t;
  bool ok = r->code / 100 == 2;

  switch (cmd) {
  case TERN_CMD_MAIL:
    t->mail_replied = true;
    t->mail_ok = ok;
    t->mail_code = r->code;
    break;
  case TERN_CMD_RCPT:
    t->rcpt_replied++;
    if (ok)
      t->accepted++;
    else if (!t->rcpt_fail)
      t->rcpt_fail = r->code;
    break;
  case TERN_CMD_DATA:
    t->data_code = r->code;
    if (r->code == 354 && (!t->mail_ok || !t->accepted)) {
      /* RFC 2920 §3.1: a pipelining server may answer 354 although no
       * recipient was accepted; the client then sends the end of data
       * at once, an empty message the server will refuse. */
      out_put(c, ".\r\n", 3);
      expect(c, TERN_CMD_DATA_END, 0, 1);
      t->dot_after_fail = true;
    }
    break;
  case TERN_CMD_BDAT:
    if (t->inflight)
      t->inflight--;
    /* RFC 3030 §2: a chunk that is not accepted fails the transaction;
     * no further chunks are sent. */
    if (r->code != 250 && t->phase <= PH_END)
      fail_msg(c, r->code);
    break;
  case TERN_CMD_DATA_END:
    if (t->phase != PH_END)
      break; /* the "." after a failure, or a late reply after one */
    if (ok)
      t->delivered++;
    else if (!t->end_fail)
      t->end_fail = r->code;
    t->end_code = r->code;
    if (--t->ends_left == 0) {
      txn_finish(c);
      return;
    }
    break;
  case TERN_CMD_RSET:
    become_ready(c);
    return;
  default:
    break;
  }
  txn_step(c);
}

/* ---- replies ------------------------------------------------------------------ */

static void on_server_reply(struct tern_client_session *c) {
  struct tern_client_reply r;
  tern__creply_get(&c->rp, &r);

  if (!c->q_n) { /* nobody asked */
    if (c->state == ST_QUIT)
      c->state = ST_CLOSED;
    else
      die(c, r.code == 421 ? TERN_ECLOSED : TERN_EPROTO, &r, false);
    return;
  }
  struct expect e = pop(c);
  enum tern_client_cmd cmd = (enum tern_client_cmd)e.cmd;
  if (c->cb.on_reply) {
    c->in_reply = true;
    c->cb.on_reply(c, cmd, e.index, &r, c->ud);
    c->in_reply = false;
  }
  if (c->state == ST_TXN && c->t.inc && c->inc_n &&
      c->inc_n > c->inc_unwritten &&
      (cmd == TERN_CMD_MAIL || cmd == TERN_CMD_RCPT || cmd == TERN_CMD_DATA)) {
    /* The oldest written command of an incremental transaction: its own
     * callback, before the reply is applied (as on_reply). */
    struct inc_slot sl = c->inc[c->inc_head];
    c->inc_head = (c->inc_head + 1) % INC_MAX;
    c->inc_n--;
    c->in_reply = true;
    sl.fn(c, &r, false, sl.arg);
    c->in_reply = false;
  }
  if (c->state == ST_CLOSED)
    return;
  if (c->state == ST_QUIT) { /* replies before the QUIT's are dropped */
    if (cmd == TERN_CMD_QUIT || r.code == 421)
      c->state = ST_CLOSED;
    return;
  }
  if (cmd == TERN_CMD_GREETING) {
    /* RFC 5321 §3.1: 220 opens the session; 554 (or anything else)
     * means no service: the client should send QUIT. */
    if (r.code == 220)
      send_hello(c, c->cfg.lmtp ? "LHLO " : "EHLO ", ST_EHLO);
    else
      die(c, r.code == 421 || r.code == 554 ? TERN_ECLOSED : TERN_EPROTO,
          &r, true);
    return;
  }
  /* RFC 5321 §3.8: 421 at any time means the server is closing. */
  if (r.code == 421) {
    die(c, TERN_ECLOSED, &r, false);
    return;
  }
  switch (c->state) {
  case ST_EHLO:
  case ST_HELO:
    on_hello(c, &r);
    break;
  case ST_STARTTLS:
    if (r.code == 220)
      c->state = ST_TLS_WAIT;
    else if (c->cfg.starttls == TERN_STARTTLS_REQUIRED)
      die(c, TERN_ETLS, &r, true);
    else /* opportunistic: go on in the clear (RFC 3207 §4) */
      start_auth(c);
    break;
  case ST_AUTH:
    on_auth_reply(c, &r);
    break;
  case ST_CMD:
    become_ready(c);
    break;
  case ST_TXN:
    on_txn_reply(c, cmd, &r);
    break;
  default:
    break;
  }
}

/* ---- public API: lifecycle --------------------------------------------------- */

/* RFC 5321 §4.1.1.1: EHLO takes a Domain or an address-literal. */
static bool ehlo_name_ok(const char *s) {
  size_t n = strlen(s);
  if (n == 0 || n > TERN_DOMAIN_MAX)
    return false;
  if (s[0] == '[') {
    if (n < 3 || s[n - 1] != ']')
      return false;
    for (size_t i = 1; i + 1 < n; i++) {
      unsigned char ch = (unsigned char)s[i];
      /* dcontent = %d33-90 / %d94-126 (§4.1.3) */
      if (ch < 33 || ch > 126 || ch == '[' || ch == ']' || ch == '\\')
        return false;
    }
    return true;
  }
  size_t label = 0;
  for (size_t i = 0; i < n; i++) {
    unsigned char ch = (unsigned char)s[i];
    if (ch == '.') {
      if (!label || s[i - 1] == '-')
        return false;
      label = 0;
    } else if (tern__is_alnum(ch) || (ch == '-' && label)) {
      label++;
    } else {
      return false;
    }
  }
  return label && s[n - 1] != '-';
}

static bool mech_name_ok(const char *m) {
  size_t n = strlen(m);
  if (n < 1 || n > 20)
    return false;
  for (size_t i = 0; i < n; i++) {
    unsigned char ch = (unsigned char)m[i];
    if (!tern__is_alnum(ch) && ch != '-' && ch != '_')
      return false;
  }
  return true;
}

/*
 * tern_client_session_new() — see client.h. Checks the configuration
 * (EHLO name syntax, mechanism name per RFC 4422 §3.1, limits), then
 * makes the one block described at the top of this file.
 */
int tern_client_session_new(struct tern_client_session **out,
                            const struct tern_client_config *cfg_in,
                            const struct tern_client_callbacks *cb_in,
                            void *ud) {
  struct tern_client_config cfg;
  struct tern_client_callbacks cb;
  struct tern_mem mem = {0};

  if (!out)
    return TERN_EINVAL;
  *out = NULL;
  tern_client_config_init(&cfg);
  tern_client_callbacks_init(&cb);
  if (cfg_in && tern__copy_sized(&cfg, sizeof cfg, cfg_in))
    return TERN_EINVAL;
  if (cb_in && tern__copy_sized(&cb, sizeof cb, cb_in))
    return TERN_EINVAL;
  if (cfg.mem)
    mem = *cfg.mem;
  cfg.mem = NULL;
  if (!cfg.ehlo_name)
    cfg.ehlo_name = "localhost";
  if (!ehlo_name_ok(cfg.ehlo_name) ||
      (cfg.auth_mechanism && !mech_name_ok(cfg.auth_mechanism)) ||
      (unsigned)cfg.starttls > TERN_STARTTLS_REQUIRED ||
      cfg.max_recipients == 0 || cfg.output_high_water > (1u << 24))
    return TERN_EINVAL;

  size_t hlen = strlen(cfg.ehlo_name) + 1;
  size_t mlen = cfg.auth_mechanism ? strlen(cfg.auth_mechanism) + 1 : 0;
  size_t out_cap = cfg.output_high_water + OUT_RESERVE;
  size_t auth = cb.on_auth ? AUTH_LINE_MAX : 0;
  size_t total = sizeof(struct tern_client_session) + hlen + mlen +
                 TERN__CREPLY_MAX + out_cap + auth;
  struct tern_client_session *c = tern__malloc(&mem, total);
  if (!c)
    return TERN_ENOMEM;
  memset(c, 0, sizeof *c);

  char *p = (char *)(c + 1);
  memcpy(p, cfg.ehlo_name, hlen);
  cfg.ehlo_name = p;
  p += hlen;
  if (mlen) {
    memcpy(p, cfg.auth_mechanism, mlen);
    cfg.auth_mechanism = p;
    p += mlen;
  }
  tern__creply_init(&c->rp, p);
  p += TERN__CREPLY_MAX;
  c->out = p;
  c->out_cap = out_cap;
  p += out_cap;
  c->auth = auth ? p : NULL;

  c->cfg = cfg;
  c->cb = cb;
  c->mem = mem;
  c->ud = ud;
  c->tls = cfg.tls_active;
  c->state = ST_GREETING;
  expect(c, TERN_CMD_GREETING, 0, 1);
  *out = c;
  return 0;
}

void tern_client_session_free(struct tern_client_session *c) {
  if (!c)
    return;
  struct tern_mem mem = c->mem;
  tern__free(&mem, c->chunk);
  tern__free(&mem, c->held);
  tern__free(&mem, c);
}

/*
 * tern_client_session_feed() parses replies one at a time and acts on
 * each before the next is read, so that nothing after a STARTTLS 220 is
 * ever parsed (RFC 3207 §4.2) and a close stops at its reply.
 */
static size_t body_room(const struct tern_client_session *c);
static void check_body_ready(struct tern_client_session *c);

long tern_client_session_feed(struct tern_client_session *c, const void *in,
                              size_t len) {
  const char *buf = in;
  size_t pos = 0;

  if (!c || (!buf && len))
    return TERN_EINVAL;
  /* After the close, or while TLS starts, bytes are dropped unread. */
  if (c->state == ST_CLOSED || c->state == ST_TLS_WAIT)
    return (long)len;
  while (pos < len) {
    bool done;
    long n = tern__creply_feed(&c->rp, buf + pos, len - pos, &done);
    if (n < 0) {
      if (c->state == ST_QUIT)
        c->state = ST_CLOSED;
      else
        die(c, TERN_EPROTO, NULL, false);
      return (long)len;
    }
    pos += (size_t)n;
    if (done) {
      on_server_reply(c);
      tern__creply_reset(&c->rp);
    }
    if (c->state == ST_CLOSED || c->state == ST_TLS_WAIT)
      break;
  }
  check_body_ready(c);
  return (long)pos;
}

size_t tern_client_session_output(struct tern_client_session *c,
                                  const char **data) {
  if (!c) {
    if (data)
      *data = NULL;
    return 0;
  }
  if (data)
    *data = c->out + c->out_off;
  return out_pending(c);
}

/* Output went out: the envelope, a BDAT chunk or the end may follow. */
void tern_client_session_consume(struct tern_client_session *c, size_t n) {
  if (!c)
    return;
  if (n > out_pending(c))
    n = out_pending(c);
  c->out_off += n;
  if (c->out_off == c->out_len)
    c->out_off = c->out_len = 0;
  txn_step(c);
  check_body_ready(c);
}

/* Tell the app when body() has room again (on the change only). */
static void check_body_ready(struct tern_client_session *c) {
  bool room = body_room(c) > 0;
  bool rise = room && !c->body_ready;
  c->body_ready = room;
  if (rise && c->cb.on_body_ready)
    c->cb.on_body_ready(c, c->ud);
}

/* How much body() could take now (0 = none). */
static size_t body_room(const struct tern_client_session *c) {
  const struct txn *t = &c->t;
  if (c->state != ST_TXN || t->phase != PH_BODY || t->end_requested)
    return 0;
  if (t->bdat) {
    size_t free = c->chunk_cap - t->chunk_len;
    if (t->binary)
      return free;
    return free > 8 ? (free - 7) / 2 : 0;
  }
  if (!below_high_water(c) || out_room(c) < KEEP + 9)
    return 0;
  return (out_room(c) - KEEP - 7) / 2;
}

unsigned tern_client_session_want(const struct tern_client_session *c) {
  unsigned w = 0;
  if (!c)
    return 0;
  if (out_pending(c))
    w |= TERN_CLIENT_WANT_WRITE;
  if (c->state == ST_CLOSED)
    return w | TERN_CLIENT_WANT_CLOSE;
  if (c->state == ST_TLS_WAIT)
    return w | TERN_CLIENT_WANT_TLS;
  if (c->q_n)
    w |= TERN_CLIENT_WANT_READ;
  if (c->state == ST_READY)
    w |= TERN_CLIENT_READY;
  /* A full chunk that can go out once replies arrive still counts as
   * wanting body when it can be flushed now. */
  if (body_room(c))
    w |= TERN_CLIENT_WANT_BODY;
  return w;
}

/* RFC 3207 §4.2: "The client MUST discard any knowledge obtained from
 * the server ... which was not obtained from the TLS negotiation
 * itself", and any reply bytes that came before. Then EHLO again. */
int tern_client_session_tls_started(struct tern_client_session *c) {
  if (!c)
    return TERN_EINVAL;
  if (c->state != ST_TLS_WAIT)
    return TERN_ESTATE;
  c->tls = true;
  tern__creply_reset(&c->rp);
  memset(&c->caps, 0, sizeof c->caps);
  send_hello(c, c->cfg.lmtp ? "LHLO " : "EHLO ", ST_EHLO);
  return 0;
}

unsigned tern_client_session_caps(const struct tern_client_session *c) {
  return c ? c->caps.caps : 0;
}

uint64_t tern_client_session_max_size(const struct tern_client_session *c) {
  return c ? c->caps.max_size : 0;
}

const char *
tern_client_session_auth_mechs(const struct tern_client_session *c) {
  return c ? c->caps.mechs : "";
}

/* ---- public API: messages ---------------------------------------------------- */

/* strlen(s), looking at no more than max + 1 octets (then max + 1). */
static size_t bounded_len(const char *s, size_t max) {
  size_t n = 0;
  while (n <= max && s[n])
    n++;
  return n;
}

static bool has_ctl(const char *s) {
  for (; *s; s++)
    if (*s == '\r' || *s == '\n')
      return true;
  return false;
}

/* An address from the application, checked as the server would parse it
 * (RFC 5321 §4.1.2) and sent exactly as given. */
static int check_path(const char *addr, unsigned opts) {
  char b[TERN_PATH_MAX + 3];
  size_t n;
  if (!addr || (n = bounded_len(addr, TERN_PATH_MAX)) > TERN_PATH_MAX)
    return TERN_EINVAL;
  if (has_ctl(addr))
    return TERN_EINVAL;
  b[0] = '<';
  memcpy(b + 1, addr, n);
  b[n + 1] = '>';
  struct tern_path p;
  size_t used;
  if (tern_path_parse(b, n + 2, opts, &p, &used) != 0 || used != n + 2 ||
      (p.flags & TERN_PATHF_ROUTE))
    return TERN_EINVAL;
  return 0;
}

/* RFC 3461 §4.2/§4.4: ORCPT and ENVID carry printable US-ASCII. */
static bool dsn_text_ok(const char *s, size_t max) {
  size_t n = 0;
  for (; *s; s++, n++) {
    unsigned char ch = (unsigned char)*s;
    if (ch < 32 || ch > 126 || n >= max)
      return false;
  }
  return n > 0;
}

/* The sender and MAIL parameters (syntax only). */
static int check_sender(const struct tern_client_session *c,
                        const struct tern_client_message *m) {
  unsigned u = m->smtputf8 ? TERN_PATH_ALLOW_UTF8 : 0;
  (void)c;
  if (!m->from || (unsigned)m->body > TERN_BODY_BINARYMIME ||
      (unsigned)m->ret > TERN_RET_HDRS ||
      check_path(m->from, TERN_PATH_ALLOW_NULL | u) != 0 ||
      (m->envid && !dsn_text_ok(m->envid, 100)))
    return TERN_EINVAL;
  return 0;
}

static int check_rcpt(const struct tern_client_rcpt *r, bool utf8) {
  unsigned u = utf8 ? TERN_PATH_ALLOW_UTF8 : 0;
  unsigned all = TERN_NOTIFY_NEVER | TERN_NOTIFY_SUCCESS |
                 TERN_NOTIFY_FAILURE | TERN_NOTIFY_DELAY;
  if (!r || check_path(r->address, TERN_PATH_ALLOW_POSTMASTER | u) != 0 ||
      (r->notify & ~all) ||
      /* RFC 3461 §4.1: NEVER stands alone */
      ((r->notify & TERN_NOTIFY_NEVER) && r->notify != TERN_NOTIFY_NEVER) ||
      (r->orcpt && !dsn_text_ok(r->orcpt, 500)))
    return TERN_EINVAL;
  return 0;
}

/* What the server must offer for this message. */
static int check_caps(const struct tern_client_session *c,
                      const struct tern_client_message *m) {
  unsigned caps = c->caps.caps;
  if ((m->smtputf8 && !(caps & TERN_EXT_SMTPUTF8)) ||
      (m->body == TERN_BODY_BINARYMIME &&
       (caps & (TERN_EXT_BINARYMIME | TERN_EXT_CHUNKING)) !=
           (TERN_EXT_BINARYMIME | TERN_EXT_CHUNKING)) ||
      (m->requiretls && (!(caps & TERN_EXT_REQUIRETLS) || !c->tls)))
    return TERN_ENOTSUP;
  return 0;
}

static int check_message(const struct tern_client_session *c,
                         const struct tern_client_message *m) {
  if (check_sender(c, m) != 0 || !m->rcpts || !m->nrcpts ||
      m->nrcpts > c->cfg.max_recipients)
    return TERN_EINVAL;
  for (size_t i = 0; i < m->nrcpts; i++)
    if (check_rcpt(&m->rcpts[i], m->smtputf8) != 0)
      return TERN_EINVAL;
  return check_caps(c, m);
}

/* Make the BDAT chunk buffer when this message needs it. */
static int need_chunk(struct tern_client_session *c, bool bdat) {
  if (bdat && !c->chunk) {
    size_t cap = c->cfg.output_high_water;
    cap = cap < 4096 ? 4096 : cap > CHUNK_MAX ? CHUNK_MAX : cap;
    c->chunk = tern__malloc(&c->mem, cap);
    if (!c->chunk)
      return TERN_ENOMEM;
    c->chunk_cap = cap;
  }
  return 0;
}

/* Start the transaction state for m: BDAT or DATA, the MAIL parameters
 * the server's capabilities allow. Returns false when SIZE is over the
 * server's limit (RFC 1870 §6: a client SHOULD NOT send it). */
static bool txn_begin(struct tern_client_session *c,
                      const struct tern_client_message *m, bool bdat) {
  unsigned caps = c->caps.caps;
  memset(&c->t, 0, sizeof c->t);
  struct txn *t = &c->t;
  t->m = m;
  t->bdat = bdat;
  t->binary = m->body == TERN_BODY_BINARYMIME;
  if ((caps & TERN_EXT_SIZE) && m->size) {
    if (c->caps.max_size && m->size > c->caps.max_size)
      return false;
    t->p_size = true;
  }
  /* BODY= belongs to 8BITMIME (RFC 6152) and BINARYMIME (RFC 3030).
   * Without 8BITMIME an 8-bit body goes without BODY=: converting it to
   * 7 bits (RFC 6152 §3) is the application's business, not ours. */
  if (t->binary)
    t->p_body = "BINARYMIME";
  else if (m->body && (caps & TERN_EXT_8BITMIME))
    t->p_body = m->body == TERN_BODY_7BIT ? "7BIT" : "8BITMIME";
  t->p_utf8 = m->smtputf8;
  t->p_requiretls = m->requiretls;
  /* RFC 3461 §5.2: DSN parameters are not sent to a server that does
   * not offer DSN (the server itself then handles notifications). */
  t->p_dsn = (caps & TERN_EXT_DSN) != 0;
  return true;
}

int tern_client_session_send(struct tern_client_session *c,
                             const struct tern_client_message *m) {
  if (!c || !m)
    return TERN_EINVAL;
  if (c->state != ST_READY)
    return TERN_ESTATE;
  int rc = check_message(c, m);
  if (rc)
    return rc;
  bool binary = m->body == TERN_BODY_BINARYMIME;
  bool bdat = binary ||
              (c->cfg.chunking && (c->caps.caps & TERN_EXT_CHUNKING));
  if ((rc = need_chunk(c, bdat)) != 0)
    return rc;
  if (!txn_begin(c, m, bdat)) {
    /* SIZE over the server's limit: reported as a local 552. */
    msg_done(c, 552, true);
    fire_ready(c);
    notify(c);
    return 0;
  }
  c->state = ST_TXN;
  txn_step(c);
  notify(c);
  return 0;
}

/* ---- public API: incremental transactions ------------------------------------ */

/* Queue one command line of an incremental transaction with its
 * callback. The line waits in `held` until write_envelope() may send it. */
static int inc_push(struct tern_client_session *c, enum tern_client_cmd cmd,
                    unsigned index, tern_client_reply_fn fn, void *arg,
                    const char *line, size_t n) {
  if (c->inc_n == INC_MAX || HELD_MAX - c->held_len < n)
    return TERN_ENOSPACE;
  memcpy(c->held + c->held_len, line, n);
  c->held_len += n;
  struct inc_slot *s = &c->inc[(c->inc_head + c->inc_n) % INC_MAX];
  s->fn = fn;
  s->arg = arg;
  s->cmd = (unsigned char)cmd;
  s->index = index;
  s->len = n;
  c->inc_n++;
  c->inc_unwritten++;
  return 0;
}

/* Every incremental callback still owed gets a local reply (the session
 * failed, or the message ended before the command could be answered). */
static void inc_drain(struct tern_client_session *c, int code,
                      const char *enh, const char *text) {
  struct tern_str l = {text, strlen(text)};
  struct tern_client_reply r = {code, enh, &l, 1};
  while (c->inc_n) {
    struct inc_slot sl = c->inc[c->inc_head];
    c->inc_head = (c->inc_head + 1) % INC_MAX;
    c->inc_n--;
    if (c->inc_unwritten > c->inc_n)
      c->inc_unwritten = c->inc_n;
    sl.fn(c, &r, true, sl.arg);
  }
  c->inc_unwritten = 0;
  c->held_len = 0;
  if (c->t.bdat_fn) {
    tern_client_reply_fn fn = c->t.bdat_fn;
    c->t.bdat_fn = NULL;
    fn(c, &r, true, c->t.bdat_arg);
  }
}

/*
 * tern_client_session_mail() — see client.h. The MAIL line is formatted
 * now (the parameters depend only on the message and the capabilities),
 * so nothing of `m` is kept.
 */
int tern_client_session_mail(struct tern_client_session *c,
                             const struct tern_client_message *m,
                             tern_client_reply_fn fn, void *arg) {
  if (!c || !m || !fn)
    return TERN_EINVAL;
  if (c->state != ST_READY)
    return TERN_ESTATE;
  int rc = check_sender(c, m);
  if (!rc)
    rc = check_caps(c, m);
  if (rc)
    return rc;
  /* Incremental transactions use BDAT only for BINARYMIME, which needs
   * it (RFC 3030 §3); DATA gives the application a real go-ahead. */
  bool bdat = m->body == TERN_BODY_BINARYMIME;
  if ((rc = need_chunk(c, bdat)) != 0)
    return rc;
  if (!c->held && !(c->held = tern__malloc(&c->mem, HELD_MAX)))
    return TERN_ENOMEM;
  c->inc_head = c->inc_n = c->inc_unwritten = c->held_len = 0;
  if (!txn_begin(c, m, bdat)) {
    memset(&c->t, 0, sizeof c->t);
    return TERN_ERANGE;
  }
  struct txn *t = &c->t;
  t->m = NULL; /* nothing of m is kept */
  t->inc = true;
  char line[CMD_MAX];
  size_t n = format_mail(c, line, sizeof line, m);
  inc_push(c, TERN_CMD_MAIL, 0, fn, arg, line, n);
  c->state = ST_TXN;
  txn_step(c);
  notify(c);
  return 0;
}

/* May the application still add to this incremental envelope? */
static bool inc_open(const struct tern_client_session *c) {
  const struct txn *t = &c->t;
  return c->state == ST_TXN && t->inc && !t->data_asked && !t->done_fired;
}

int tern_client_session_rcpt(struct tern_client_session *c,
                             const struct tern_client_rcpt *r,
                             tern_client_reply_fn fn, void *arg) {
  if (!c || !r || !fn)
    return TERN_EINVAL;
  if (!inc_open(c))
    return TERN_ESTATE;
  struct txn *t = &c->t;
  if (check_rcpt(r, t->p_utf8) != 0)
    return TERN_EINVAL;
  if (t->inc_rcpts >= c->cfg.max_recipients)
    return TERN_ERANGE;
  char line[CMD_MAX];
  size_t n = format_rcpt(c, line, sizeof line, r);
  int rc = inc_push(c, TERN_CMD_RCPT, (unsigned)t->inc_rcpts, fn, arg, line,
                    n);
  if (rc)
    return rc;
  t->inc_rcpts++;
  txn_step(c);
  notify(c);
  return 0;
}

int tern_client_session_data(struct tern_client_session *c,
                             tern_client_reply_fn fn, void *arg) {
  if (!c || !fn)
    return TERN_EINVAL;
  if (!inc_open(c))
    return TERN_ESTATE;
  struct txn *t = &c->t;
  if (t->bdat) {
    t->bdat_fn = fn;
    t->bdat_arg = arg;
  } else {
    int rc = inc_push(c, TERN_CMD_DATA, 0, fn, arg, "DATA\r\n", 6);
    if (rc)
      return rc;
  }
  t->data_asked = true;
  txn_step(c);
  notify(c);
  return 0;
}

long tern_client_session_body(struct tern_client_session *c, const void *in,
                              size_t len) {
  const char *buf = in;
  struct txn *t;
  size_t taken = 0;

  if (!c || (!buf && len))
    return TERN_EINVAL;
  t = &c->t;
  if (c->state != ST_TXN || t->done_fired || t->end_requested)
    return TERN_ESTATE;
  while (taken < len) {
    size_t room = body_room(c);
    if (t->bdat && !room && t->phase == PH_BODY && bdat_flush(c, false))
      room = body_room(c);
    if (!room)
      break;
    size_t n = len - taken < room ? len - taken : room;
    if (t->bdat && t->binary) { /* RFC 3030 §3: BINARYMIME goes raw */
      memcpy(c->chunk + t->chunk_len, buf + taken, n);
      t->chunk_len += n;
    } else if (t->bdat) { /* CRLF-normalised, never dot-stuffed */
      t->chunk_len += tern__stuff(&t->stuff, buf + taken, n, false, false,
                                  c->chunk + t->chunk_len);
    } else {
      char *d = out_reserve(c, 2 * n + 7);
      c->out_len += tern__stuff(&t->stuff, buf + taken, n, false, true, d);
    }
    taken += n;
  }
  c->body_ready = body_room(c) > 0; /* a later drain fires */
  notify(c);
  return (long)taken;
}

int tern_client_session_body_end(struct tern_client_session *c) {
  if (!c)
    return TERN_EINVAL;
  struct txn *t = &c->t;
  if (c->state != ST_TXN || t->done_fired || t->end_requested)
    return TERN_ESTATE;
  /* May come before the 354 (or the MAIL/RCPT replies for BDAT): the end
   * is then written as soon as the body may go. */
  t->end_requested = true;
  txn_step(c);
  notify(c);
  return 0;
}

static int simple_cmd(struct tern_client_session *c, const char *verb,
                      const char *arg, enum tern_client_cmd cmd) {
  if (!c)
    return TERN_EINVAL;
  if (c->state != ST_READY)
    return TERN_ESTATE;
  if (!write_line2(c, verb, arg))
    return TERN_ENOSPACE;
  expect(c, cmd, 0, 1);
  c->state = ST_CMD;
  notify(c);
  return 0;
}

int tern_client_session_rset(struct tern_client_session *c) {
  return simple_cmd(c, "RSET", "", TERN_CMD_RSET);
}

int tern_client_session_noop(struct tern_client_session *c) {
  return simple_cmd(c, "NOOP", "", TERN_CMD_NOOP);
}

/* RFC 5321 §4.1.1.6: VRFY SP String; printable ASCII only here, and the
 * command stays within 512 octets. */
int tern_client_session_vrfy(struct tern_client_session *c, const char *arg) {
  if (!c || !arg || !arg[0] || bounded_len(arg, 512 - 7) > 512 - 7)
    return TERN_EINVAL;
  for (const char *p = arg; *p; p++)
    if ((unsigned char)*p < 32 || (unsigned char)*p > 126)
      return TERN_EINVAL;
  if (c->state != ST_READY)
    return TERN_ESTATE;
  return simple_cmd(c, "VRFY ", arg, TERN_CMD_VRFY);
}

/*
 * QUIT (RFC 5321 §4.1.1.10). A message in progress ends first (local
 * 421). Where a command cannot be written — inside DATA's content, or
 * between a STARTTLS 220 and the handshake — the session just closes.
 */
int tern_client_session_quit(struct tern_client_session *c) {
  if (!c)
    return TERN_EINVAL;
  if (c->state == ST_CLOSED || c->state == ST_QUIT)
    return TERN_ESTATE;
  bool msg = c->state == ST_TXN && !c->t.done_fired;
  if (in_data_stream(c) || c->state == ST_TLS_WAIT) {
    c->state = ST_CLOSED;
    c->q_n = 0;
  } else {
    write_quit(c);
    expect(c, TERN_CMD_QUIT, 0, 1);
    c->state = ST_QUIT;
  }
  inc_drain(c, 421, "4.4.2", "session ended by the client");
  if (msg)
    msg_done(c, 421, true);
  notify(c);
  return 0;
}

void tern_client_session_eof(struct tern_client_session *c) {
  if (!c || c->state == ST_CLOSED)
    return;
  if (c->state == ST_QUIT)
    c->state = ST_CLOSED;
  else
    die(c, TERN_ECLOSED, NULL, false);
}

void *tern_client_session_userdata(const struct tern_client_session *c) {
  return c ? c->ud : NULL;
}

void tern_client_session_set_notify(struct tern_client_session *c,
                                    tern_client_notify_fn fn, void *arg) {
  if (!c)
    return;
  c->notify = fn;
  c->notify_arg = fn ? arg : NULL;
}

void *tern_client_session_notify_arg(const struct tern_client_session *c) {
  return c ? c->notify_arg : NULL;
}
