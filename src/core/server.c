/*
 * Server session: lifecycle, line framing, output queue, decisions and
 * message data (DATA and BDAT). The verbs, each with its check and its
 * apply, are in command.c; they use only the interface in session.h, and
 * this file reaches them only through tern__command().
 *
 * Memory: one allocation at tern_server_session_new() holds the session,
 * its strings, the command-line buffer (max_line) and the output queue
 * (output_high_water + two maximal replies). The only later allocation is
 * the AUTH line buffer (max_auth_line), made when an AUTH exchange needs
 * a line longer than max_line and freed at the next command.
 */
#include "session.h"

/* ---- small helpers ------------------------------------------------------- */

static size_t out_pending(const struct tern_server_session *s) {
  return s->out_len - s->out_off;
}

static bool over_high_water(const struct tern_server_session *s) {
  return out_pending(s) > s->cfg.output_high_water;
}

unsigned tern__ext(const struct tern_server_session *s) {
  unsigned e = s->cfg.extensions;
  if (!(e & TERN_EXT_CHUNKING))
    e &= ~(unsigned)TERN_EXT_BINARYMIME;
  if (!s->tls)
    e &= ~(unsigned)TERN_EXT_REQUIRETLS;
  if (!tern__auth_offered(s))
    e &= ~(unsigned)TERN_EXT_AUTH;
  if (!s->xclient_trusted)
    e &= ~(unsigned)TERN_EXT_XCLIENT;
  return e;
}

bool tern__auth_offered(const struct tern_server_session *s) {
  /* RFC 4954 §4 / DESIGN §3: no AUTH in the clear unless allowed. */
  return (s->cfg.extensions & TERN_EXT_AUTH) && s->cb.on_auth &&
         s->cfg.auth_mechanisms[0] && (s->tls || s->cfg.auth_insecure_ok);
}

/* ---- buffers ------------------------------------------------------------- */

/*
 * The command-line buffer (max_line) and the output queue (high water +
 * two maximal replies) share one block, made with the session. A runtime
 * may hand it back while the session is idle (tern_server_session_trim);
 * it is made again when the next byte or reply needs it.
 */
static bool io_alloc(struct tern_server_session *s) {
  if (s->io)
    return true;
  size_t out_cap = s->cfg.output_high_water + 2 * TERN__REPLY_MAX;
  s->io = tern__malloc(&s->mem, s->cfg.max_line + out_cap);
  if (!s->io)
    return false;
  s->small_line = s->line = s->io; /* trim() only runs between lines */
  s->line_cap = s->cfg.max_line;
  s->out = s->io + s->cfg.max_line;
  s->out_cap = out_cap;
  return true;
}

/* ---- close ------------------------------------------------------------------ */

static void abort_msg(struct tern_server_session *s, const char *why) {
  if (!s->msg_open)
    return;
  s->msg_open = false;
  if (s->cb.on_data_abort)
    s->cb.on_data_abort(s, why, s->ud);
}

/*
 * The one close path: every way a session ends (QUIT, a 421, eof, a
 * timeout, close(), an output buffer that cannot be made, free()) comes
 * here, so on_close fires exactly once and the application can always
 * release what it keeps for the session.
 */
void tern__close(struct tern_server_session *s, const char *why) {
  if (s->close_fired)
    return;
  abort_msg(s, why);
  s->state = ST_CLOSED;
  s->pending = TERN_EV_NONE;
  s->paused = false;
  s->close_fired = true;
  if (s->cb.on_close)
    s->cb.on_close(s, s->ud);
}

/* ---- output ---------------------------------------------------------------- */

/*
 * Queue one reply. `enh` NULL leaves the enhanced code out; with
 * ENHANCEDSTATUSCODES off it is always left out. The queue always has
 * room: input stops above the high-water mark and the reserve holds two
 * maximal replies. Should that ever fail, the session closes rather than
 * drop a reply silently.
 */
void tern__emit(struct tern_server_session *s, int code, const char *enh,
                const char *text) {
  if (s->state == ST_CLOSED)
    return;
  if (!io_alloc(s)) { /* OutOfMemory after a trim: nothing can be said */
    tern__close(s, "closed");
    return;
  }
  if (!(s->cfg.extensions & TERN_EXT_ENHANCEDSTATUSCODES))
    enh = NULL;
  if (s->out_off && s->out_cap - s->out_len < TERN__REPLY_MAX) {
    memmove(s->out, s->out + s->out_off, out_pending(s));
    s->out_len -= s->out_off;
    s->out_off = 0;
  }
  long n = tern__reply_format(s->out + s->out_len, s->out_cap - s->out_len,
                              code, enh, text);
  if (n < 0) { /* DefensiveCoding: replies are checked before this */
    tern__close(s, "closed");
    return;
  }
  if (s->cb.on_reply) {
    struct tern_str b = {s->out + s->out_len, (size_t)n};
    s->cb.on_reply(s, b, s->ud);
  }
  s->out_len += (size_t)n;
}

/* Tell the runtime that want() may have changed outside feed(). */
static void notify(struct tern_server_session *s) {
  if (s->notify)
    s->notify(s, s->notify_arg);
}

/* ---- transaction and close ----------------------------------------------- */

void tern__txn_reset(struct tern_server_session *s, bool notify) {
  bool had = s->in_txn;
  abort_msg(s, "reset");
  s->in_txn = s->txn_utf8 = s->txn_binary = s->bdat_used = false;
  s->rcpt_count = 0;
  s->msg_size = 0;
  s->end = END_OK;
  if (had && notify && s->cb.on_reset)
    s->cb.on_reset(s, s->ud);
}

/* "421 <enh> <hostname> <why>", then close. */
static void close_421(struct tern_server_session *s, const char *enh,
                      const char *why) {
  char t[TERN__REPLY_LINE_MAX];
  size_t n = tern__cat(t, sizeof t, 0, s->cfg.hostname,
                       strlen(s->cfg.hostname));
  n = tern__cat(t, sizeof t, n, " ", 1);
  tern__cat(t, sizeof t, n, why, strlen(why));
  abort_msg(s, "closed");
  tern__emit(s, 421, enh, t);
  tern__close(s, "closed");
}

/*
 * Count the current command as junk: a command that moves no mail (see
 * max_junk_commands). Once per command, however many times it is called
 * for it. Past the limit the session answers 421 4.7.0 and closes;
 * returns true then. The count starts over when a message is accepted,
 * as Postfix's junk_cmds does, so only sessions that deliver nothing
 * are cut, however many messages a session carries.
 */
bool tern__junk(struct tern_server_session *s) {
  if (s->cmd_junk || s->state == ST_CLOSED)
    return false;
  s->cmd_junk = true;
  if (!s->cfg.max_junk_commands || ++s->junk <= s->cfg.max_junk_commands)
    return false;
  close_421(s, "4.7.0", "Error: too many junk commands");
  return true;
}

bool tern__count_error(struct tern_server_session *s) {
  if (!s->cfg.max_errors || ++s->errors < s->cfg.max_errors)
    return false;
  close_421(s, "4.7.0", "Error: too many errors");
  return true;
}

void tern__fail(struct tern_server_session *s, int code, const char *enh,
                const char *text) {
  tern__emit(s, code, enh, text);
  if (!tern__count_error(s))
    tern__junk(s);
}

/* ---- message data -------------------------------------------------------- */

/* Content sink for DATA and BDAT: size limit, then on_data. */
static bool sink(void *ctx, const char *p, size_t n) {
  struct tern_server_session *s = ctx;
  if (s->end != END_OK || !n)
    return true;
  uint64_t max = s->cfg.max_message_size;
  if (max && (s->msg_size > max || n > max - s->msg_size)) {
    s->end = END_TOO_BIG; /* read on to the end, deliver nothing more */
    return true;
  }
  s->msg_size += n;
  if (!s->cb.on_data)
    return true;
  int rc = s->cb.on_data(s, p, n, s->ud);
  if (s->state == ST_CLOSED) /* on_data closed the session: stop here */
    return false;
  if (rc == TERN_PENDING) {
    s->paused = true;
    return false;
  }
  if (rc < 0)
    s->end = END_APP_ERROR;
  return true;
}

static void advance(struct tern_server_session *s);

/* The whole message has been read: settle how it ended, then produce the
 * end-of-data replies (one, or one per recipient in LMTP). */
static void data_done(struct tern_server_session *s, bool was_data) {
  static const char *const why[] = {"", "size", "error", "line-length",
                                    "bare-lf"};
  if (s->state == ST_CLOSED) /* closed from on_data: nothing comes after */
    return;
  /* A last BDAT line without its CRLF counts as if it had one. */
  if (!was_data && s->cfg.max_line_length && !s->txn_binary &&
      s->bdat_line && s->bdat_line + 2 > s->cfg.max_line_length)
    s->dot.long_line = true;
  if (s->end == END_OK) {
    if (s->dot.long_line)
      s->end = END_LONG_LINE;
    else if (was_data && s->dot.bare &&
             s->cfg.bare_lf == TERN_BARE_LF_REJECT)
      s->end = END_BARE;
  }
  if (s->end != END_OK)
    abort_msg(s, why[s->end]);
  s->msg_open = false;
  s->msg_accepted = false;
  s->end_next = 0;
  s->end_count = s->cfg.lmtp ? s->rcpt_count : 1;
  s->state = ST_DATA_END;
  advance(s);
}

static size_t data_feed(struct tern_server_session *s, const char *buf,
                        size_t len) {
  bool done;
  size_t n = tern__dot_feed(&s->dot, buf, len, sink, s, &done);
  if (done)
    data_done(s, true);
  return n;
}

static void bdat_chunk_done(struct tern_server_session *s) {
  if (s->state == ST_CLOSED)
    return;
  if (s->bdat_discard) {
    s->state = ST_CMD;
  } else if (s->bdat_last) {
    data_done(s, false);
  } else {
    char t[64];
    size_t n = tern__cat_u64(t, sizeof t, 0, s->bdat_size);
    tern__cat(t, sizeof t, n, " octets received", 16);
    s->state = ST_CMD;
    tern__emit(s, 250, "2.0.0", t);
  }
}

void tern__msg_begin(struct tern_server_session *s, bool bdat) {
  s->msg_open = true;
  s->msg_size = 0;
  s->end = END_OK;
  if (bdat) {
    s->bdat_used = true;
    /* the line-length state of the whole message (bdat_lines) */
    tern__dot_init(&s->dot, s->cfg.max_line_length, true);
    s->bdat_line = 0;
  } else {
    s->state = ST_DATA;
    tern__dot_init(&s->dot, s->cfg.max_line_length, s->last_line_crlf);
  }
}

void tern__bdat_begin(struct tern_server_session *s) {
  s->state = ST_BDAT;
  if (!s->bdat_left)
    bdat_chunk_done(s);
}

/*
 * max_line_length for BDAT, so that DATA and BDAT agree: the octets of
 * each line up to and including its LF, counted across chunks without
 * holding any of them. BINARYMIME content has no lines (RFC 3030 §3).
 */
static void bdat_lines(struct tern_server_session *s, const char *p,
                       size_t n) {
  size_t max = s->cfg.max_line_length;
  if (!max || s->txn_binary || s->dot.long_line)
    return;
  while (n) {
    const char *lf = memchr(p, '\n', n);
    size_t k = lf ? (size_t)(lf - p) + 1 : n;
    s->bdat_line += k;
    if (s->bdat_line > max)
      s->dot.long_line = true;
    if (lf)
      s->bdat_line = 0;
    p += k;
    n -= k;
  }
}

/* RFC 3030 §2: the chunk is exactly bdat_size octets, no unstuffing. */
static size_t bdat_feed(struct tern_server_session *s, const char *buf,
                        size_t len) {
  size_t n = len;
  if (s->bdat_left < n)
    n = (size_t)s->bdat_left;
  s->bdat_left -= n;
  if (!s->bdat_discard) {
    bdat_lines(s, buf, n);
    sink(s, buf, n);
  }
  if (!s->bdat_left) {
    if (s->paused) /* the app is still busy with the chunk */
      s->bdat_done_pending = true;
    else
      bdat_chunk_done(s);
  }
  return n;
}

/* One end-of-data verdict (one per recipient in LMTP). */
static void apply_data_end(struct tern_server_session *s, int code,
                           const char *enh, const char *text) {
  tern__emit(s, code, enh, text);
  if (code / 100 == 2)
    s->msg_accepted = true;
  s->end_next++;
}

/* End-of-data replies, one at a time so each may be pending and the
 * output queue never runs over (LMTP can owe 1000 of them). */
static void advance(struct tern_server_session *s) {
  static const struct {
    int code;
    const char *enh, *text;
  } fails[] = {
      {0, NULL, NULL},
      {552, "5.3.4", "Message size exceeds fixed limit"},
      {451, "4.3.0", "Error: internal error"},
      {500, "5.5.6", "Error: message line too long"},
      {550, "5.6.0", "Error: bare CR or LF in message"},
  };
  while (s->state == ST_DATA_END && s->pending == TERN_EV_NONE) {
    if (s->end_next >= s->end_count) {
      s->transactions++;
      if (s->msg_accepted) /* mail moved: forgive, as Postfix does */
        s->errors = s->junk = 0;
      tern__txn_reset(s, false);
      s->state = ST_CMD;
      return;
    }
    if (over_high_water(s))
      return;
    if (s->end != END_OK) {
      tern__emit(s, fails[s->end].code, fails[s->end].enh,
                 fails[s->end].text);
      s->end_next++;
      continue;
    }
    struct tern_reply r = {250, "2.0.0", "Ok"};
    int rc = TERN_REPLY_NOW;
    s->pend_default = r;
    if (s->cb.on_data_end)
      rc = s->cb.on_data_end(s, tern__env_view(s, s->end_next), &r, s->ud);
    tern__decide(s, TERN_EV_DATA_END, apply_data_end, rc, &r);
  }
}

/* ---- decisions --------------------------------------------------------------- */

/* The enhanced code to send with an application's reply. */
static const char *app_enh(const struct tern_reply *r,
                           enum tern_server_event ev) {
  static const char *const generic[] = {"2.0.0", "4.0.0", "5.0.0"};
  /* RFC 2034 §3: not on the greeting or the HELO/EHLO reply; 334 and 354
   * are not completion replies. */
  if (r->code == 220 || r->code == 334 || r->code == 354 ||
      (ev == TERN_EV_HELO && r->code / 100 == 2) || r->code / 100 == 3)
    return NULL;
  if (r->enhanced)
    return r->enhanced;
  return r->code / 100 == 2 ? generic[0]
                            : r->code / 100 == 4 ? generic[1] : generic[2];
}

/* The greeting's verdict (RFC 5321 §3.1): 2xx opens the session; 5xx
 * leaves it open for QUIT only (503 to the rest); anything else ends it. */
static void apply_connect(struct tern_server_session *s, int code,
                          const char *enh, const char *text) {
  tern__emit(s, code, enh, text);
  if (tern__closed(s))
    return;
  if (code / 100 == 2) {
    s->state = ST_CMD;
  } else if (code / 100 == 5) {
    s->rejected = true;
    s->state = ST_CMD;
  } else {
    tern__close(s, "closed");
  }
}

/* Apply a verdict: its apply, then what any reply means. */
static void finish(struct tern_server_session *s, enum tern_server_event ev,
                   tern__apply_fn apply, const struct tern_reply *r) {
  int cls = r->code / 100;
  apply(s, r->code, app_enh(r, ev), r->text ? r->text : "");
  /* RFC 5321 §3.8: 421 means the service is closing the channel. */
  if (r->code == 421) {
    tern__close(s, "closed");
    return;
  }
  /* A refused command moved no mail (the end of data is not a command;
   * a 334 is not a refusal). */
  if ((cls == 4 || cls == 5) && ev != TERN_EV_DATA_END &&
      ev != TERN_EV_CONNECT)
    tern__junk(s);
}

void tern__decide(struct tern_server_session *s, enum tern_server_event ev,
                  tern__apply_fn apply, int rc, struct tern_reply *r) {
  static const struct tern_reply internal = {451, "4.3.0",
                                             "Error: internal error"};
  if (s->state == ST_CLOSED) /* the callback closed the session */
    return;
  if (rc == TERN_PENDING) {
    s->pending = ev;
    s->pend_apply = apply;
    return;
  }
  if (rc < 0 || tern_reply_check(r) != 0)
    r = (struct tern_reply *)&internal;
  finish(s, ev, apply, r);
}

/* ---- line framing --------------------------------------------------------- */

/* May the line being read grow to max_auth_line? (RFC 4954 §4) */
static bool auth_line_ok(const struct tern_server_session *s) {
  if (s->cfg.max_auth_line <= s->cfg.max_line || !tern__auth_offered(s))
    return false;
  return s->state == ST_AUTH ||
         (s->line_len >= 5 && tern__str_ieq(s->line, 5, "AUTH "));
}

static bool grow_line(struct tern_server_session *s) {
  if (!s->auth_line) {
    s->auth_line = tern__malloc(&s->mem, s->cfg.max_auth_line);
    if (!s->auth_line)
      return false;
  }
  memcpy(s->auth_line, s->line, s->line_len);
  s->line = s->auth_line;
  s->line_cap = s->cfg.max_auth_line;
  return true;
}

static void line_done(struct tern_server_session *s) {
  char *line = s->line;
  size_t n = s->line_len;
  bool crlf = n && line[n - 1] == '\r';
  bool was_auth = s->state == ST_AUTH;

  s->line_len = 0;
  if (s->line_overflow) {
    s->line_overflow = false;
    if (was_auth)
      s->state = ST_CMD;
    tern__fail(s, 500, "5.5.6",
               was_auth ? "Error: authentication line too long"
                        : "Error: line too long");
    return;
  }
  if (crlf)
    n--;
  s->last_line_crlf = crlf;
  if (!crlf && s->cfg.bare_lf == TERN_BARE_LF_REJECT) {
    if (was_auth)
      s->state = ST_CMD;
    tern__fail(s, 500, "5.5.2", "Error: bare LF received");
    return;
  }
  tern__command(s, line, n);
}

/*
 * Read one command line: bytes up to and including a LF are gathered in
 * the line buffer, then handled. A line over the limit is read to its end
 * and answered 500 5.5.6 (RFC 5321 §4.5.3.1.4); the session goes on.
 */
static size_t line_feed(struct tern_server_session *s, const char *buf,
                        size_t len) {
  const char *nl = memchr(buf, '\n', len);
  size_t take = nl ? (size_t)(nl - buf) + 1 : len;
  size_t body = nl ? take - 1 : take;

  if (!s->line_len && s->line != s->small_line && s->state != ST_AUTH) {
    s->line = s->small_line; /* an AUTH exchange is over: shrink back */
    s->line_cap = s->cfg.max_line;
    tern__free(&s->mem, s->auth_line);
    s->auth_line = NULL;
  }
  if (!s->line_overflow) {
    /* The LF takes one octet of the limit too. */
    size_t need = s->line_len + body + (nl ? 1 : 0);
    if (need > s->line_cap && s->line == s->small_line) {
      size_t fit = s->line_cap - s->line_len;
      if (fit > body)
        fit = body;
      memcpy(s->line + s->line_len, buf, fit); /* enough to see "AUTH " */
      s->line_len += fit;
      buf += fit;
      body -= fit;
      need = s->line_len + body + (nl ? 1 : 0);
      if (auth_line_ok(s) && !grow_line(s)) {
        s->line_overflow = true; /* OutOfMemory: refuse the line */
      }
    }
    if (!s->line_overflow && need > s->line_cap) {
      s->line_overflow = true;
      s->line_len = 0;
    } else if (!s->line_overflow) {
      memcpy(s->line + s->line_len, buf, body);
      s->line_len += body;
    }
  }
  if (nl)
    line_done(s);
  return take;
}

/* ---- public API ------------------------------------------------------------ */

static bool printable(const char *p, bool allow_space) {
  for (; *p; p++) {
    unsigned char c = (unsigned char)*p;
    if (c < 0x21 || c > 0x7e) {
      if (!(allow_space && c == ' '))
        return false;
    }
  }
  return true;
}

/* What tern_server_session_new() takes from its caller. */
struct args {
  struct tern_server_config cfg; /* its strings are still the caller's */
  struct tern_server_callbacks cb;
  struct tern_mem mem;
};

/* Copy the caller's config and callbacks over the defaults, fill in the
 * banner and mechanisms, and check the limits server.h lists. */
static int take_args(struct args *a, const struct tern_server_config *cfg_in,
                     const struct tern_server_callbacks *cb_in) {
  struct tern_server_config *cfg = &a->cfg;
  tern_server_config_init(cfg);
  tern_server_callbacks_init(&a->cb);
  if (tern__copy_args(cfg, sizeof *cfg, cfg_in, &a->cb, sizeof a->cb, cb_in,
                      &cfg->mem, &a->mem))
    return TERN_EINVAL;
  if (!cfg->banner)
    cfg->banner = cfg->lmtp ? "LMTP tern" : "ESMTP tern";
  if (!cfg->auth_mechanisms)
    cfg->auth_mechanisms = "";
  if (!cfg->hostname || !cfg->hostname[0] ||
      !printable(cfg->hostname, false) ||
      strlen(cfg->hostname) > TERN_DOMAIN_MAX ||
      !printable(cfg->banner, true) || strlen(cfg->banner) > 200 ||
      !printable(cfg->auth_mechanisms, true) ||
      strlen(cfg->auth_mechanisms) > 400 || cfg->max_line < 512 ||
      cfg->max_line > 65536 || cfg->max_auth_line > 65536 ||
      cfg->output_high_water > (1u << 20))
    return TERN_EINVAL;
  if (cfg->max_auth_line < cfg->max_line)
    cfg->max_auth_line = cfg->max_line;
  return 0;
}

/*
 * The session and its strings in one block: the hostname, the greeting
 * ("<hostname> <banner>", the banner pointing into it) and the
 * mechanisms; cfg's string fields are pointed at the copies.
 */
static struct tern_server_session *
session_alloc(struct tern_server_config *cfg, const struct tern_mem *mem) {
  size_t hlen = strlen(cfg->hostname), blen = strlen(cfg->banner),
         mlen = strlen(cfg->auth_mechanisms);
  size_t total = sizeof(struct tern_server_session) + (hlen + 1) +
                 (hlen + 1 + blen + 1) + (mlen + 1);
  struct tern_server_session *s = tern__malloc(mem, total);
  if (!s)
    return NULL;
  memset(s, 0, sizeof *s);

  char *p = (char *)(s + 1);
  memcpy(p, cfg->hostname, hlen + 1);
  cfg->hostname = p;
  p += hlen + 1;
  memcpy(p, cfg->hostname, hlen);
  p[hlen] = ' ';
  memcpy(p + hlen + 1, cfg->banner, blen + 1);
  s->greeting = p;
  cfg->banner = p + hlen + 1;
  p += hlen + 1 + blen + 1;
  memcpy(p, cfg->auth_mechanisms, mlen + 1);
  cfg->auth_mechanisms = p;
  return s;
}

int tern_server_session_new(struct tern_server_session **out,
                            const struct tern_server_config *cfg_in,
                            const struct tern_server_callbacks *cb_in,
                            void *ud) {
  struct args a;
  if (!out)
    return TERN_EINVAL;
  *out = NULL;
  int rc = take_args(&a, cfg_in, cb_in);
  if (rc)
    return rc;
  struct tern_server_session *s = session_alloc(&a.cfg, &a.mem);
  if (!s)
    return TERN_ENOMEM;
  s->cfg = a.cfg;
  s->cb = a.cb;
  s->mem = a.mem;
  s->ud = ud;
  if (!io_alloc(s) || tern__env_reserve(s)) {
    tern__free(&a.mem, s->io);
    tern__free(&a.mem, s);
    return TERN_ENOMEM;
  }
  s->state = ST_NEW;
  s->xclient_trusted = a.cfg.xclient_trusted;
  s->last_line_crlf = true;
  *out = s;
  return 0;
}

void tern_server_session_free(struct tern_server_session *s) {
  if (!s)
    return;
  tern__close(s, "closed"); /* on_close, if nothing else ended it */
  struct tern_mem mem = s->mem;
  tern__free(&mem, s->auth_line);
  tern__free(&mem, s->io);
  tern__env_free(s);
  tern__free(&mem, s);
}

int tern_server_session_start(struct tern_server_session *s) {
  if (!s)
    return TERN_EINVAL;
  if (s->started)
    return TERN_ESTATE;
  s->started = true;
  if (s->state == ST_CLOSED)
    return 0;
  struct tern_reply r = {220, NULL, s->greeting};
  int rc = TERN_REPLY_NOW;
  s->pend_default = r;
  if (s->cb.on_connect)
    rc = s->cb.on_connect(s, &r, s->ud);
  tern__decide(s, TERN_EV_CONNECT, apply_connect, rc, &r);
  return 0;
}

long tern_server_session_feed(struct tern_server_session *s, const void *in,
                              size_t len) {
  const char *buf = in;
  if (!s || (!buf && len))
    return TERN_EINVAL;
  if (!s->started)
    return TERN_ESTATE;
  if (len && !io_alloc(s))
    return TERN_ENOMEM;
  advance(s);
  size_t pos = 0;
  while (pos < len) {
    if (s->state == ST_CLOSED || s->state == ST_TLS_WAIT) {
      /* RFC 3207 §4.2 / CVE-2011-0411: nothing sent before the TLS
       * handshake may be read as a command after it. */
      pos = len;
      break;
    }
    if (s->pending != TERN_EV_NONE || s->paused || over_high_water(s) ||
        s->state == ST_DATA_END || s->state == ST_NEW)
      break;
    switch (s->state) {
    case ST_DATA:
      pos += data_feed(s, buf + pos, len - pos);
      break;
    case ST_BDAT:
      pos += bdat_feed(s, buf + pos, len - pos);
      break;
    default:
      pos += line_feed(s, buf + pos, len - pos);
      break;
    }
  }
  return (long)pos;
}

size_t tern_server_session_output(struct tern_server_session *s,
                                  const char **data) {
  if (data) /* "" while the buffers are trimmed away */
    *data = !s ? NULL : s->out ? s->out + s->out_off : "";
  return s ? out_pending(s) : 0;
}

int tern_server_session_trim(struct tern_server_session *s) {
  if (!s)
    return TERN_EINVAL;
  /* Event strings point into the line buffer while a decision waits. */
  if (!s->io || s->line_len || s->line_overflow || out_pending(s) ||
      s->pending != TERN_EV_NONE || s->line != s->small_line)
    return 0;
  tern__free(&s->mem, s->io);
  tern__free(&s->mem, s->auth_line);
  s->io = s->small_line = s->line = s->out = s->auth_line = NULL;
  s->out_off = s->out_len = s->out_cap = s->line_cap = 0;
  tern__env_trim(s);
  return 1;
}

void tern_server_session_consume(struct tern_server_session *s, size_t n) {
  if (!s)
    return;
  tern__out_consume(&s->out_off, &s->out_len, n);
  advance(s);
}

unsigned tern_server_session_want(const struct tern_server_session *s) {
  if (!s)
    return 0;
  unsigned w = out_pending(s) ? TERN_WANT_WRITE : 0;
  if (s->state == ST_CLOSED)
    w |= TERN_WANT_CLOSE;
  else if (s->state == ST_TLS_WAIT)
    w |= TERN_WANT_TLS;
  else if (s->started && s->state != ST_NEW && s->state != ST_DATA_END &&
           s->pending == TERN_EV_NONE && !s->paused && !over_high_water(s))
    w |= TERN_WANT_READ;
  return w;
}

int tern_server_session_reply(struct tern_server_session *s,
                              const struct tern_reply *r) {
  if (!s)
    return TERN_EINVAL;
  if (s->pending == TERN_EV_NONE || s->state == ST_CLOSED)
    return TERN_ESTATE;
  if (!r)
    r = &s->pend_default;
  if (tern_reply_check(r) != 0)
    return TERN_EINVAL;
  enum tern_server_event ev = s->pending;
  s->pending = TERN_EV_NONE;
  finish(s, ev, s->pend_apply, r);
  advance(s);
  notify(s);
  return 0;
}

enum tern_server_event
tern_server_session_pending(const struct tern_server_session *s) {
  return s ? s->pending : TERN_EV_NONE;
}

int tern_server_session_resume(struct tern_server_session *s) {
  if (!s)
    return TERN_EINVAL;
  if (!s->paused)
    return TERN_ESTATE;
  s->paused = false;
  if (s->bdat_done_pending) { /* the chunk ended during the pause */
    s->bdat_done_pending = false;
    bdat_chunk_done(s);
  }
  notify(s);
  return 0;
}

int tern_server_session_tls_started(struct tern_server_session *s) {
  if (!s)
    return TERN_EINVAL;
  if (s->tls || (s->state != ST_TLS_WAIT && s->state != ST_NEW))
    return TERN_ESTATE;
  s->tls = true;
  /* RFC 3207 §4.2: discard all knowledge obtained from the client. */
  tern__txn_reset(s, false);
  s->helo_seen = s->esmtp = s->authenticated = false;
  s->line_len = 0;
  s->line_overflow = false;
  if (s->state == ST_TLS_WAIT)
    s->state = ST_CMD;
  return 0;
}

void tern_server_session_eof(struct tern_server_session *s) {
  if (s)
    tern__close(s, "disconnect");
}

void tern_server_session_timeout(struct tern_server_session *s) {
  if (!s || s->state == ST_CLOSED)
    return;
  abort_msg(s, "timeout");
  close_421(s, "4.4.2", "Error: timeout exceeded");
}

unsigned tern_server_session_timeout_ms(const struct tern_server_session *s) {
  if (!s)
    return 0;
  return s->state == ST_DATA || s->state == ST_BDAT ? s->cfg.timeout_data_ms
                                                     : s->cfg.timeout_command_ms;
}

void tern_server_session_close(struct tern_server_session *s,
                               const struct tern_reply *r) {
  if (!s || s->state == ST_CLOSED)
    return;
  abort_msg(s, "closed");
  if (r && tern_reply_check(r) == 0)
    tern__emit(s, r->code, app_enh(r, TERN_EV_NONE), r->text ? r->text : "");
  else
    close_421(s, "4.3.2", "Service shutting down");
  tern__close(s, "closed");
  notify(s);
}

void tern_server_session_set_notify(struct tern_server_session *s,
                                    tern_server_notify_fn fn, void *arg) {
  if (s) {
    s->notify = fn;
    s->notify_arg = fn ? arg : NULL;
  }
}

void *tern_server_session_notify_arg(const struct tern_server_session *s) {
  return s ? s->notify_arg : NULL;
}

tern_server_notify_fn
tern__server_session_notify_fn(const struct tern_server_session *s) {
  return s ? s->notify : NULL;
}

void tern_server_session_set_xclient_trusted(struct tern_server_session *s,
                                             bool trusted) {
  if (s)
    s->xclient_trusted = trusted;
}

bool tern_server_session_in_transaction(const struct tern_server_session *s) {
  return s && (s->in_txn || s->state == ST_DATA || s->state == ST_BDAT ||
               s->state == ST_DATA_END);
}

bool tern_server_session_line_pending(const struct tern_server_session *s) {
  return s && (s->state == ST_CMD || s->state == ST_AUTH) &&
         (s->line_len || s->line_overflow);
}

bool tern_server_session_is_tls(const struct tern_server_session *s) {
  return s && s->tls;
}

bool tern_server_session_is_authenticated(const struct tern_server_session *s) {
  return s && s->authenticated;
}

void *tern_server_session_userdata(const struct tern_server_session *s) {
  return s ? s->ud : NULL;
}

void tern_server_session_set_userdata(struct tern_server_session *s,
                                      void *ud) {
  if (s)
    s->ud = ud;
}
