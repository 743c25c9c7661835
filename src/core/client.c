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

#include "csession.h"

/* ---- output ---------------------------------------------------------------- */

static size_t out_pending(const struct tern_client_session *c) {
  return c->out_len - c->out_off;
}

size_t tern__cl_out_room(const struct tern_client_session *c) {
  return c->out_cap - out_pending(c);
}

/* May an optional write (body, a pipelined command) go out now? Only
 * while less than the high-water mark is unsent, as for body(). */
bool tern__cl_below_high_water(const struct tern_client_session *c) {
  return out_pending(c) == 0 || out_pending(c) < c->cfg.output_high_water;
}

/* Contiguous room for n octets at out + out_len, or NULL. */
char *tern__cl_out_reserve(struct tern_client_session *c, size_t n) {
  if (tern__cl_out_room(c) < n)
    return NULL;
  if (c->out_cap - c->out_len < n) {
    memmove(c->out, c->out + c->out_off, out_pending(c));
    c->out_len -= c->out_off;
    c->out_off = 0;
  }
  return c->out + c->out_len;
}

bool tern__cl_out_put(struct tern_client_session *c, const char *p, size_t n) {
  char *d = tern__cl_out_reserve(c, n);
  if (!d)
    return false;
  memcpy(d, p, n);
  c->out_len += n;
  return true;
}

/* ---- expectations ------------------------------------------------------------ */

void tern__cl_expect(struct tern_client_session *c, enum tern_client_cmd cmd,
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

void tern__cl_notify(struct tern_client_session *c) {
  if (c->notify)
    c->notify(c, c->notify_arg);
}

/* on_ready, never nested: a send() from on_ready that ends at once (SIZE
 * over the limit) asks for on_ready again, which runs when the outer one
 * has returned. */
void tern__cl_fire_ready(struct tern_client_session *c) {
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

void tern__cl_msg_done(struct tern_client_session *c, int code, bool local) {
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
  tern__cl_out_put(c, "QUIT\r\n", 6);
}

/*
 * The session fails: a message in progress ends with a local 4xx, then
 * on_error, then the session wants close. With `quit` a QUIT goes out
 * first when the connection is still usable (RFC 5321 §4.1.1.10).
 */
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
    tern__cl_inc_drain(c, 421, "4.4.2", "connection to the server lost");
  else
    tern__cl_inc_drain(c, 451, "4.4.2", "session with the server failed");
  if (msg)
    tern__cl_msg_done(c, err == TERN_ECLOSED ? 421 : 451, true);
  if (c->cb.on_error)
    c->cb.on_error(c, err, r, c->ud);
}

void tern__cl_become_ready(struct tern_client_session *c) {
  c->state = ST_READY;
  tern__cl_fire_ready(c);
}

/* ---- greeting, EHLO, STARTTLS, AUTH ---------------------------------------- */

static bool write_line2(struct tern_client_session *c, const char *a,
                        const char *b) {
  char line[CMD_MAX];
  size_t n = cats(line, sizeof line, 0, a);
  n = cats(line, sizeof line, n, b);
  n = cat(line, sizeof line, n, "\r\n", 2);
  return tern__cl_out_put(c, line, n);
}

static void send_hello(struct tern_client_session *c, const char *verb,
                       enum state st) {
  write_line2(c, verb, c->cfg.ehlo_name);
  tern__cl_expect(c, TERN_CMD_EHLO, 0, 1);
  c->state = st;
}

/* Send one AUTH response line from the AUTH buffer (RFC 4954 §4). */
static void auth_response(struct tern_client_session *c, size_t len) {
  char *d = tern__cl_out_reserve(c, len + 2);
  if (!d) { /* DefensiveCoding: the reserve holds two maximal lines */
    die(c, TERN_EAUTH, NULL, false);
    return;
  }
  memcpy(d, c->auth, len);
  memcpy(d + len, "\r\n", 2);
  c->out_len += len + 2;
  tern__cl_expect(c, TERN_CMD_AUTH, 0, 1);
}

/* Ask the application for an AUTH step. Returns the length, or -1 to
 * cancel; TERN_CLIENT_AUTH_NO_IR passes through at the first step. */
static long auth_step(struct tern_client_session *c, struct tern_str ch,
                      bool has) {
  long n = c->cb.on_auth(c, ch, has, c->auth, AUTH_LINE_MAX - 2, c->ud);
  if (!has && n == TERN_CLIENT_AUTH_NO_IR)
    return n;
  if (n < 0 || (size_t)n > AUTH_LINE_MAX - 2 ||
      !tern__base64_ok(c->auth, (size_t)n))
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
      tern__cl_become_ready(c);
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
  tern__cl_out_put(c, line, l);
  tern__cl_expect(c, TERN_CMD_AUTH, 0, 1);
}

static void after_hello(struct tern_client_session *c) {
  /* RFC 3207 §4: STARTTLS when offered (and wanted), never twice. */
  if (!c->tls && c->cfg.starttls != TERN_STARTTLS_OFF) {
    if (c->caps.caps & TERN_EXT_STARTTLS) {
      tern__cl_out_put(c, "STARTTLS\r\n", 10);
      tern__cl_expect(c, TERN_CMD_STARTTLS, 0, 1);
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
      tern__cl_out_put(c, "*\r\n", 3);
      tern__cl_expect(c, TERN_CMD_AUTH, 0, 1);
      return;
    }
    auth_response(c, (size_t)n);
  } else if (r->code / 100 == 2) { /* 235 */
    tern__cl_become_ready(c);
  } else {
    die(c, TERN_EAUTH, r, true);
  }
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
    tern__cl_become_ready(c);
    break;
  case ST_TXN:
    tern__cl_on_txn_reply(c, cmd, &r);
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
  struct tern_mem mem;

  if (!out)
    return TERN_EINVAL;
  *out = NULL;
  tern_client_config_init(&cfg);
  tern_client_callbacks_init(&cb);
  if (tern__copy_args(&cfg, sizeof cfg, cfg_in, &cb, sizeof cb, cb_in,
                      &cfg.mem, &mem))
    return TERN_EINVAL;
  if (!cfg.ehlo_name)
    cfg.ehlo_name = "localhost";
  if (!ehlo_name_ok(cfg.ehlo_name) ||
      (cfg.auth_mechanism && !tern__mech_name_ok(cfg.auth_mechanism,
                                               strlen(cfg.auth_mechanism))) ||
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
  tern__cl_expect(c, TERN_CMD_GREETING, 0, 1);
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
  tern__cl_check_body_ready(c);
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
  tern__out_consume(&c->out_off, &c->out_len, n);
  tern__cl_txn_step(c);
  tern__cl_check_body_ready(c);
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
  if (tern__cl_body_room(c))
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

static int simple_cmd(struct tern_client_session *c, const char *verb,
                      const char *arg, enum tern_client_cmd cmd) {
  if (!c)
    return TERN_EINVAL;
  if (c->state != ST_READY)
    return TERN_ESTATE;
  if (!write_line2(c, verb, arg))
    return TERN_ENOSPACE;
  tern__cl_expect(c, cmd, 0, 1);
  c->state = ST_CMD;
  tern__cl_notify(c);
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
    tern__cl_expect(c, TERN_CMD_QUIT, 0, 1);
    c->state = ST_QUIT;
  }
  tern__cl_inc_drain(c, 421, "4.4.2", "session ended by the client");
  if (msg)
    tern__cl_msg_done(c, 421, true);
  tern__cl_notify(c);
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
