/*
 * Client session, one message at a time: the envelope (MAIL, RCPT...,
 * DATA or BDAT, pipelined when the server offers PIPELINING), the body
 * (CRLF-normalised and dot-stuffed, or BDAT chunks), the end and its
 * replies, and the incremental transactions of tern_client_session_mail(),
 * _rcpt() and _data(). The session itself is in client.c.
 */
#include "csession.h"

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
        tern__cl_out_room(c) < CMD_MAX + KEEP || !tern__cl_below_high_water(c))
      return;
    struct inc_slot *s =
        &c->inc[(c->inc_head + c->inc_n - c->inc_unwritten) % INC_MAX];
    tern__cl_out_put(c, c->held, s->len);
    memmove(c->held, c->held + s->len, c->held_len - s->len);
    c->held_len -= s->len;
    c->inc_unwritten--;
    tern__cl_expect(c, (enum tern_client_cmd)s->cmd, s->index, 1);
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
    if (c->q_n == EXPECT_MAX || tern__cl_out_room(c) < CMD_MAX + KEEP ||
        !tern__cl_below_high_water(c))
      return;
    size_t n;
    if (!t->mail_written) {
      n = format_mail(c, line, sizeof line, t->m);
      t->mail_written = true;
      tern__cl_expect(c, TERN_CMD_MAIL, 0, 1);
    } else if (t->next_rcpt < t->m->nrcpts) {
      n = format_rcpt(c, line, sizeof line, &t->m->rcpts[t->next_rcpt]);
      tern__cl_expect(c, TERN_CMD_RCPT, (unsigned)t->next_rcpt, 1);
      t->next_rcpt++;
    } else {
      n = cats(line, sizeof line, 0, "DATA\r\n");
      t->data_written = true;
      tern__cl_expect(c, TERN_CMD_DATA, 0, 1);
    }
    tern__cl_out_put(c, line, n);
  }
}

/* The message failed: tell the application now; RSET follows once every
 * outstanding reply is in (RFC 5321 §4.1.1.5). */
static void fail_msg(struct tern_client_session *c, int code) {
  /* Only a refusal ends a message; a 2xx or 3xx here (250 to DATA, say)
   * is the server breaking the protocol: nothing was sent, so the
   * message fails with a local 451, never with the server's "success". */
  bool local = code < 400;
  if (local)
    code = 451;
  c->t.phase = PH_CLEANUP;
  tern__cl_inc_drain(c, code, NULL, "message failed");
  tern__cl_msg_done(c, code, local);
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
  if (tern__cl_out_room(c) < n + t->chunk_len + KEEP)
    return false;
  tern__cl_out_put(c, hdr, n);
  tern__cl_out_put(c, c->chunk, t->chunk_len);
  t->chunk_len = 0;
  if (last) {
    t->end_written = true;
    t->ends_left = data_replies(c);
    t->phase = PH_END;
    tern__cl_expect(c, TERN_CMD_DATA_END, 0, t->ends_left);
  } else {
    t->inflight++;
    tern__cl_expect(c, TERN_CMD_BDAT, 0, 1);
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
  char *d = tern__cl_out_reserve(c, 7);
  if (!d) /* DefensiveCoding: body() leaves KEEP free */
    return;
  /* The codec closes the last line and adds ".\r\n", so the end is
   * always "<CRLF>.<CRLF>" (RFC 5321 §4.1.1.4). */
  c->out_len += tern__stuff(&t->stuff, "", 0, true, true, d);
  t->end_written = true;
  t->ends_left = data_replies(c);
  t->phase = PH_END;
  tern__cl_expect(c, TERN_CMD_DATA_END, 0, t->ends_left);
}

/* Move the message on after a reply, a body call or consumed output. */
void tern__cl_txn_step(struct tern_client_session *c) {
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
    tern__cl_out_put(c, "RSET\r\n", 6);
    tern__cl_expect(c, TERN_CMD_RSET, 0, 1);
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
  tern__cl_msg_done(c, code, false);
  if (c->state == ST_TXN)
    tern__cl_become_ready(c);
}

void tern__cl_on_txn_reply(struct tern_client_session *c,
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
      tern__cl_out_put(c, ".\r\n", 3);
      tern__cl_expect(c, TERN_CMD_DATA_END, 0, 1);
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
    tern__cl_become_ready(c);
    return;
  default:
    break;
  }
  tern__cl_txn_step(c);
}

/* Tell the app when body() has room again (on the change only). */
void tern__cl_check_body_ready(struct tern_client_session *c) {
  bool room = tern__cl_body_room(c) > 0;
  bool rise = room && !c->body_ready;
  c->body_ready = room;
  if (rise && c->cb.on_body_ready)
    c->cb.on_body_ready(c, c->ud);
}

/* How much body() could take now (0 = none). */
size_t tern__cl_body_room(const struct tern_client_session *c) {
  const struct txn *t = &c->t;
  if (c->state != ST_TXN || t->phase != PH_BODY || t->end_requested)
    return 0;
  if (t->bdat) {
    size_t free = c->chunk_cap - t->chunk_len;
    if (t->binary)
      return free;
    return free > 8 ? (free - 7) / 2 : 0;
  }
  if (!tern__cl_below_high_water(c) || tern__cl_out_room(c) < KEEP + 9)
    return 0;
  return (tern__cl_out_room(c) - KEEP - 7) / 2;
}

/* ---- public API: messages ---------------------------------------------------- */

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
    tern__cl_msg_done(c, 552, true);
    tern__cl_fire_ready(c);
    tern__cl_notify(c);
    return 0;
  }
  c->state = ST_TXN;
  tern__cl_txn_step(c);
  tern__cl_notify(c);
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
void tern__cl_inc_drain(struct tern_client_session *c, int code,
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
  tern__cl_txn_step(c);
  tern__cl_notify(c);
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
  tern__cl_txn_step(c);
  tern__cl_notify(c);
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
  tern__cl_txn_step(c);
  tern__cl_notify(c);
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
    size_t room = tern__cl_body_room(c);
    if (t->bdat && !room && t->phase == PH_BODY && bdat_flush(c, false))
      room = tern__cl_body_room(c);
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
      char *d = tern__cl_out_reserve(c, 2 * n + 7);
      c->out_len += tern__stuff(&t->stuff, buf + taken, n, false, true, d);
    }
    taken += n;
  }
  c->body_ready = tern__cl_body_room(c) > 0; /* a later drain fires */
  tern__cl_notify(c);
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
  tern__cl_txn_step(c);
  tern__cl_notify(c);
  return 0;
}

