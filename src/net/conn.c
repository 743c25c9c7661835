/*
 * One client connection: the only place where a session's bytes meet a
 * socket.
 *
 *   socket --read--> [TLS decrypt] --> [PROXY header] --> feed(session)
 *   session output --> [TLS encrypt] --> try_write / uv_write --> socket
 *
 * pump() is the single place that moves things along: it feeds held
 * input, flushes output, starts TLS, closes, and turns reading on or off
 * (backpressure: a session that does not want input is not read for).
 * Memory: a connection holds no buffer while idle; reads land in the
 * worker's scratch buffer and only what the session could not take yet
 * is copied into a per-connection buffer (at most one read's worth,
 * because reading stops while anything is held).
 */
#include "internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "runtime.h"

#define HELD_MAX (4 * TERN__READ_SIZE) /* held plaintext ceiling */
#define WRITE_HIGH (256 * 1024)        /* stop taking output above this */

enum phase { PH_PROXY, PH_GREET_WAIT, PH_TLS_WAIT, PH_SMTP };
enum tmode { TM_NONE, TM_TIMEOUT, TM_GREET, TM_AUTH_DELAY };

struct tern__conn {
  struct tern__worker *w;   /* owner thread */
  struct tern__listener *l; /* accepted on */
  union {
    uv_tcp_t tcp;
    uv_pipe_t pipe;
    uv_handle_t handle;
    uv_stream_t stream;
  } h;
  uv_timer_t timer;               /* idle timeouts, greeting, AUTH delay */
  uv_timer_t dl;                  /* total deadlines, below */
  int handles;                    /* open libuv handles */
  struct tern__conn *prev, *next; /* worker's list */

  struct tern_server_session *s;   /* NULL before the PROXY header */
  struct tern__tls *tls;           /* NULL until TLS starts */
  struct tern__sasl_session *sasl; /* an AUTH exchange in progress */
  struct tern_session_info info;   /* tern_session_info() */
  struct sockaddr_storage peer;    /* client (after PROXY) */
  struct sockaddr_storage counted; /* address counted for max_per_ip */
  bool ip_counted;
  char id[32];
  char peer_addr[64];
  char local_addr[64];
  char *auth_user; /* after AUTH, owned */

  char *in; /* plaintext the session did not take */
  size_t in_len, in_cap;
  char *proxy; /* PROXY header so far (PH_PROXY) */
  size_t proxy_len;

  unsigned char phase;          /* enum phase */
  unsigned char tmode;          /* enum tmode */
  bool reading;                 /* uv_read_start active */
  bool in_pump, again;          /* pump() reentrancy */
  bool eof;                     /* peer closed its side */
  bool closing;                 /* conn_close() was called */
  bool tls_ready;               /* handshake done */
  bool tls_closed;              /* close_notify queued */
  bool drain;                   /* shutdown: close when idle */
  unsigned writes;              /* write requests in flight */
  size_t writing;               /* their bytes */
  unsigned auth_failures;       /* for the growing delay */
  uv_work_t auth_work;          /* a password check on the pool */
  bool auth_busy;               /* auth_work submitted, not done */
  bool auth_queued;             /* in the worker's auth queue */
  struct tern__conn *auth_next; /* that queue */

  /* Total deadlines (uv_now() times, 0 = off); `dl` runs to the earliest.
   * Unlike the idle timer, traffic does not move them. */
  uint64_t dl_proxy; /* whole PROXY header */
  uint64_t dl_tls;   /* whole TLS handshake */
  uint64_t dl_line;  /* one command line, from its first byte */
  uint64_t dl_write; /* output pending: next progress due */
};

struct wreq {
  uv_write_t req;
  struct tern__conn *c;
  size_t len;
  char data[];
};

static void pump(struct tern__conn *c);
static void conn_close(struct tern__conn *c);
static void arm_dl(struct tern__conn *c);
static void write_clock(struct tern__conn *c, bool progress);
static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf);
static void on_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf);

struct tern__conn *tern__conn_next(struct tern__conn *c) {
  return c->next;
}

static struct tern__conn *conn_of(const struct tern_server_session *s);

/* Tell the application what the runtime did on its own (for its log). */
static void emit(struct tern__conn *c, enum tern_net_event_type type,
                 unsigned code, const char *enhanced, const char *detail) {
  struct tern_server *srv = c->w->srv;
  if (!srv->opt.on_event)
    return;
  struct tern_net_event ev = {sizeof ev, type,     &c->info,
                              code,      enhanced, detail ? detail : ""};
  srv->opt.on_event(&ev, srv->opt.ud);
}

/* ---- writing
 * ------------------------------------------------------------------ */

static void on_write(uv_write_t *req, int status) {
  struct wreq *r = (struct wreq *)req;
  struct tern__conn *c = r->c;
  c->writes--;
  c->writing -= r->len;
  free(r);
  if (status < 0) {
    conn_close(c);
    return;
  }
  write_clock(c, true); /* the client took bytes: progress */
  pump(c);
}

/* Send bytes in order: try a direct write when nothing is queued, queue a
 * copy of the rest. */
static void send_raw(struct tern__conn *c, const char *p, size_t n) {
  if (c->closing || !n)
    return;
  if (!c->writes) {
    uv_buf_t b = uv_buf_init((char *)p, (unsigned)n);
    int r = uv_try_write(&c->h.stream, &b, 1);
    if (r == (int)n)
      return;
    if (r > 0) {
      p += r;
      n -= (size_t)r;
    } else if (r != UV_EAGAIN) {
      conn_close(c);
      return;
    }
  }
  struct wreq *q = malloc(sizeof *q + n);
  if (!q) {
    conn_close(c);
    return;
  }
  q->c = c;
  q->len = n;
  memcpy(q->data, p, n);
  uv_buf_t b = uv_buf_init(q->data, (unsigned)n);
  if (uv_write(&q->req, &c->h.stream, &b, 1, on_write) != 0) {
    free(q);
    conn_close(c);
    return;
  }
  c->writes++;
  c->writing += n;
  write_clock(c, false);
}

/* Ciphertext the TLS engine produced (handshake or records). */
static void tls_flush(struct tern__conn *c) {
  size_t n;
  while (c->tls && !c->closing &&
         (n = tern__tls_output(c->tls, c->w->wbuf, sizeof c->w->wbuf)) > 0)
    send_raw(c, c->w->wbuf, n);
}

/* Move the session's output to the socket (through TLS when on). */
static void flush_session(struct tern__conn *c) {
  const char *p;
  size_t n;
  while (c->s && !c->closing && c->writing < WRITE_HIGH &&
         (n = tern_server_session_output(c->s, &p)) > 0) {
    if (c->tls && c->tls_ready) {
      long t = tern__tls_write(c->tls, p, n);
      if (t < 0) {
        conn_close(c);
        return;
      }
      tern_server_session_consume(c->s, (size_t)t);
      tls_flush(c);
      if (!t)
        break;
    } else {
      send_raw(c, p, n);
      tern_server_session_consume(c->s, n);
    }
  }
}

/* A reply without a session (limits, early talkers), then close; the
 * application hears of it through on_event. */
static void refuse(struct tern__conn *c, enum tern_net_event_type type,
                   unsigned code, const char *enhanced, const char *why) {
  char t[512];
  emit(c, type, code, enhanced, why);
  int n = snprintf(t, sizeof t, "%u %s %s %s\r\n", code, enhanced,
                   TERN__LIVE(c->w->srv->opt.session.hostname), why);
  if (n > 0 && (size_t)n < sizeof t)
    send_raw(c, t, (size_t)n);
  conn_close(c);
}

/* ---- reading
 * ------------------------------------------------------------------ */

/* Keep bytes the session did not take (reading stops meanwhile). */
static bool hold(struct tern__conn *c, const char *p, size_t n) {
  if (c->in_len + n > HELD_MAX)
    return false;
  if (c->in_len + n > c->in_cap) {
    size_t cap =
        c->in_len + n < TERN__READ_SIZE ? TERN__READ_SIZE : c->in_len + n;
    char *b = realloc(c->in, cap);
    if (!b)
      return false;
    c->in = b;
    c->in_cap = cap;
  }
  memmove(c->in + c->in_len, p, n);
  c->in_len += n;
  return true;
}

/*
 * One command line gets timeout_command from its first byte, however the
 * bytes trickle in (the idle timer alone let a byte every few seconds
 * keep a line open for ever). Called after each feed of p[0..n) with
 * whether a line was partly received before it: the deadline starts
 * when a line starts (none before, or a LF ended the old one in these
 * bytes) and stops when no line is partly received.
 */
static void line_clock(struct tern__conn *c, bool partial_before, const char *p,
                       size_t n) {
  uint64_t due = c->dl_line;
  if (!c->s || !tern_server_session_line_pending(c->s))
    due = 0;
  else if (!due || !partial_before || memchr(p, '\n', n))
    due = uv_now(c->w->loop) + tern_server_session_timeout_ms(c->s);
  if (due != c->dl_line) {
    c->dl_line = due;
    arm_dl(c);
  }
}

/* Feed p[0..n) while the session takes it; hold the rest. */
static void input(struct tern__conn *c, const char *p, size_t n) {
  if (c->in_len) { /* keep order behind what is held */
    if (!hold(c, p, n))
      conn_close(c);
    return;
  }
  while (n && c->s && !c->closing &&
         (tern_server_session_want(c->s) & TERN_WANT_READ)) {
    bool partial = tern_server_session_line_pending(c->s);
    long r = tern_server_session_feed(c->s, p, n);
    if (r < 0) {
      conn_close(c);
      return;
    }
    line_clock(c, partial, p, (size_t)r);
    p += r;
    n -= (size_t)r;
    flush_session(c);
    if (!r)
      break;
  }
  if (c->s && (tern_server_session_want(c->s) & TERN_WANT_TLS))
    return; /* the session discards until TLS; nothing to hold */
  if (n && !c->closing && !hold(c, p, n))
    conn_close(c);
}

/* Feed what was held back, now that the session may want it. */
static void feed_held(struct tern__conn *c) {
  while (c->in_len && c->s && !c->closing &&
         (tern_server_session_want(c->s) & TERN_WANT_READ)) {
    bool partial = tern_server_session_line_pending(c->s);
    long r = tern_server_session_feed(c->s, c->in, c->in_len);
    if (r < 0) {
      conn_close(c);
      return;
    }
    line_clock(c, partial, c->in, (size_t)r);
    memmove(c->in, c->in + r, c->in_len - (size_t)r);
    c->in_len -= (size_t)r;
    flush_session(c);
    if (!r)
      break;
  }
  if (!c->in_len && c->in) { /* idle connections hold no buffer */
    free(c->in);
    c->in = NULL;
    c->in_cap = 0;
  }
}

static void fill_tls_info(struct tern__conn *c) {
  c->info.tls = true;
  c->info.tls_version = tern__tls_version(c->tls);
  c->info.tls_cipher = tern__tls_cipher(c->tls);
  c->info.tls_sni = tern__tls_sni(c->tls);
}

static void restart_timer(struct tern__conn *c);

/* Decrypt what the TLS engine can give while the session wants it. */
static void tls_pull(struct tern__conn *c) {
  while (c->tls && !c->closing && !c->in_len) {
    long r = tern__tls_read(c->tls, c->w->pbuf, sizeof c->w->pbuf);
    if (!c->tls_ready && tern__tls_handshake_done(c->tls)) {
      c->tls_ready = true;
      c->dl_tls = 0;
      arm_dl(c);
      fill_tls_info(c);
      if (c->l->implicit_tls) {
        tern_server_session_start(c->s); /* greeting inside TLS */
      } else {
        tern_server_session_tls_started(c->s);
      }
      c->phase = PH_SMTP;
      flush_session(c);
    }
    tls_flush(c);
    if (r > 0) {
      input(c, c->w->pbuf, (size_t)r);
      continue;
    }
    if (r == TERN_ECLOSED) {
      c->eof = true;
    } else if (r < 0) {
      if (!c->tls_ready)
        emit(c, TERN_NET_TLS_FAILED, 0, NULL, tern__tls_error(c->tls));
      conn_close(c);
    }
    return;
  }
}

/*
 * Feed everything already received before the socket is read again: what
 * was held back first (order), then what the TLS engine holds. The engine
 * is the trap: records it has buffered raise no read event of their own,
 * so a session that wants input while they sit there waits for bytes that
 * arrived long ago (a client that sent its whole message and waits for
 * the reply never sends more). Invariant on return: either the session
 * does not want input, or nothing is held and the engine has no complete
 * record left, so waiting for the socket is right.
 */
static void feed_input(struct tern__conn *c) {
  for (;;) {
    feed_held(c);
    if (c->in_len || c->closing || !c->s || !c->tls || !c->tls_ready)
      return;
    tls_pull(c); /* to the session, holding what it does not take */
    if (!c->in_len || c->closing || !c->s ||
        !(tern_server_session_want(c->s) & TERN_WANT_READ))
      return; /* drained, or paused: a reply or resume pumps again */
  }
}

static void start_tls(struct tern__conn *c) {
  struct tern_server *srv = c->w->srv;
  if (!srv->tls || tern__tls_new(&c->tls, srv->tls) != 0) {
    conn_close(c);
    return;
  }
  /* RFC 3207 §4.2: nothing read before the handshake may count. */
  c->in_len = 0;
  c->phase = PH_TLS_WAIT;
  c->dl_tls =
      uv_now(c->w->loop) + TERN__LIVE(srv->opt.tls_handshake_timeout_ms);
  arm_dl(c);
}

/* ---- the pump
 * ---------------------------------------------------------------- */

static void update_reading(struct tern__conn *c) {
  bool want = false;
  if (!c->closing && !c->eof) {
    if (c->phase != PH_SMTP)
      want = true; /* PROXY header, early talkers, TLS handshake */
    else if (!c->in_len && c->s)
      want = (tern_server_session_want(c->s) & TERN_WANT_READ) != 0;
    /* A password check waiting in the AUTH queue: read on (input is
     * held, bounded) so that a client that has gone is noticed and its
     * check never runs, instead of holding a queue slot. */
    if (c->auth_queued)
      want = true;
  }
  if (want && !c->reading) {
    c->reading = uv_read_start(&c->h.stream, on_alloc, on_read) == 0;
  } else if (!want && c->reading) {
    uv_read_stop(&c->h.stream);
    c->reading = false;
  }
}

static void pump(struct tern__conn *c) {
  if (c->in_pump) {
    c->again = true;
    return;
  }
  c->in_pump = true;
  do {
    c->again = false;
    if (c->closing || !c->s)
      break;
    feed_input(c);
    bool blocked =
        c->in_len && !(tern_server_session_want(c->s) & TERN_WANT_READ);
    flush_session(c);
    if (c->closing)
      break;
    unsigned want = tern_server_session_want(c->s);
    if (blocked && (want & TERN_WANT_READ)) {
      /* Flushing took the session's output below its high-water mark:
       * it takes input again, and consume() does not notify. */
      c->again = true;
      continue;
    }
    if ((want & TERN_WANT_TLS) && !c->tls && !(want & TERN_WANT_WRITE))
      start_tls(c);
    if (c->drain && !(want & TERN_WANT_CLOSE) &&
        !tern_server_session_in_transaction(c->s) &&
        tern_server_session_pending(c->s) == TERN_EV_NONE) {
      struct tern_reply r = {421, "4.3.2", "Service shutting down"};
      tern_server_session_close(c->s, &r);
      c->again = true;
      continue;
    }
    if (c->eof && !(want & TERN_WANT_CLOSE))
      tern_server_session_eof(c->s);
    want = tern_server_session_want(c->s);
    if ((want & TERN_WANT_CLOSE) && !(want & TERN_WANT_WRITE)) {
      /* RFC 8446 §6.1: say close_notify, then close once it is out. */
      if (c->tls && c->tls_ready && !c->tls_closed) {
        c->tls_closed = true;
        tern__tls_shutdown(c->tls);
        tls_flush(c);
      }
      if (!c->writes) {
        conn_close(c);
        break;
      }
    }
  } while (c->again);
  if (!c->closing) {
    write_clock(c, false);
    update_reading(c);
    /* Quiet now: give the session's buffers back (idle connections). */
    if (c->s && !c->in_len && !c->writes && c->reading)
      tern_server_session_trim(c->s);
  }
  c->in_pump = false;
}

/* The session's runtime hook: reply(), resume() or close() was called. */
static void on_notify(struct tern_server_session *s, void *arg) {
  (void)s;
  pump(arg);
}

/* ---- timers
 * ------------------------------------------------------------------- */

static void on_timer(uv_timer_t *t) {
  struct tern__conn *c = t->data;
  switch (c->tmode) {
  case TM_GREET:
    c->phase = PH_SMTP;
    c->tmode = TM_TIMEOUT;
    tern_server_session_start(c->s);
    restart_timer(c);
    break;
  case TM_AUTH_DELAY: {
    struct tern_reply r = {535, "5.7.8", "Error: authentication failed"};
    c->tmode = TM_TIMEOUT;
    restart_timer(c);
    tern_server_session_reply(c->s, &r); /* notifies: pumps */
    return;
  }
  case TM_TIMEOUT:
    if (c->tls && !c->tls_ready) { /* no plaintext 421 inside a handshake */
      emit(c, TERN_NET_TLS_TIMEOUT, 0, NULL, "TLS handshake idle");
      conn_close(c);
      return;
    }
    tern_server_session_timeout(c->s);
    break;
  default:
    return;
  }
  pump(c);
}

static void restart_timer(struct tern__conn *c) {
  unsigned ms = 0;
  switch (c->tmode) {
  case TM_TIMEOUT:
    ms = c->s ? tern_server_session_timeout_ms(c->s) : 0;
    break;
  default:
    return; /* greeting and AUTH delays are not restarted by traffic */
  }
  if (ms)
    uv_timer_start(&c->timer, on_timer, ms, 0);
  else
    uv_timer_stop(&c->timer);
}

/* ---- total deadlines
 * --------------------------------------------------------- */

/* Output is pending: the next progress is due write_timeout_ms after the
 * last (`progress`: the client just took bytes). Nothing pending: off.
 * A client that stops reading is closed when it runs out, whatever the
 * session is doing (in a transaction, closing with a 421 queued...). */
static void write_clock(struct tern__conn *c, bool progress) {
  if (c->closing)
    return;
  bool pending =
      c->writes || (c->s && (tern_server_session_want(c->s) & TERN_WANT_WRITE));
  uint64_t due = 0;
  if (pending)
    due = progress || !c->dl_write
              ? uv_now(c->w->loop) + TERN__LIVE(c->w->srv->opt.write_timeout_ms)
              : c->dl_write;
  if (due != c->dl_write) {
    c->dl_write = due;
    arm_dl(c);
  }
}

static void on_dl(uv_timer_t *t) {
  struct tern__conn *c = t->data;
  uint64_t now = uv_now(c->w->loop);
  if (c->closing)
    return;
  if (c->dl_write && now >= c->dl_write) {
    emit(c, TERN_NET_WRITE_TIMEOUT, 0, NULL, "client stopped reading");
    conn_close(c); /* unsent output is dropped: nobody reads it */
    return;
  }
  if (c->dl_proxy && now >= c->dl_proxy) {
    emit(c, TERN_NET_PROXY_TIMEOUT, 0, NULL, "PROXY header not complete");
    conn_close(c);
    return;
  }
  if (c->dl_tls && now >= c->dl_tls) {
    emit(c, TERN_NET_TLS_TIMEOUT, 0, NULL, "TLS handshake not complete");
    conn_close(c); /* no plaintext 421 inside a handshake */
    return;
  }
  if (c->dl_line && now >= c->dl_line) {
    c->dl_line = 0;
    emit(c, TERN_NET_LINE_TIMEOUT, 421, "4.4.2",
         "command line not complete in time");
    tern_server_session_timeout(c->s); /* 421 4.4.2, then close */
    pump(c);
    if (c->closing)
      return;
  }
  arm_dl(c);
}

/* Run `dl` to the earliest deadline set. */
static void arm_dl(struct tern__conn *c) {
  uint64_t d[4] = {c->dl_proxy, c->dl_tls, c->dl_line, c->dl_write};
  uint64_t first = 0;
  if (c->closing)
    return;
  for (size_t i = 0; i < 4; i++)
    if (d[i] && (!first || d[i] < first))
      first = d[i];
  if (!first) {
    uv_timer_stop(&c->dl);
    return;
  }
  uint64_t now = uv_now(c->w->loop);
  uv_timer_start(&c->dl, on_dl, first > now ? first - now : 0, 0);
}

/* ---- AUTH through GNU SASL ----------------------------------------------- */

/*
 * The reply for an exchange that is over (any result but CONTINUE and
 * VERIFY); frees the SASL session. A failed password waits, longer each
 * time (guessing gets slow): then the timer answers and this returns
 * TERN_PENDING.
 */
static int auth_result(struct tern__conn *c, int r, struct tern_reply *reply) {
  if (r == TERN__SASL_OK) {
    const char *user = tern__sasl_user(c->sasl);
    free(c->auth_user);
    c->auth_user = user ? strdup(user) : NULL;
    c->info.auth_user = c->auth_user;
    c->auth_failures = 0;
    reply->code = 235;
    reply->enhanced = "2.7.0";
    reply->text = "Authentication successful";
  }
  tern__sasl_session_free(c->sasl);
  c->sasl = NULL;
  if (r == TERN__SASL_OK)
    return TERN_REPLY_NOW;
  if (r == TERN_ETEMP || r == TERN_ENOMEM) {
    reply->code = 454;
    reply->enhanced = "4.7.0";
    reply->text = "Temporary authentication failure";
    return TERN_REPLY_NOW;
  }
  if (r == TERN_ENOTSUP) {
    reply->code = 504;
    reply->enhanced = "5.5.4";
    reply->text = "Unrecognized authentication type";
    return TERN_REPLY_NOW;
  }
  if (r == TERN_ESYNTAX) {
    reply->code = 501;
    reply->enhanced = "5.5.2";
    reply->text = "Error: cannot decode AUTH response";
    return TERN_REPLY_NOW;
  }
  unsigned delay = TERN__LIVE(c->w->srv->opt.auth_fail_delay_ms);
  unsigned shift = c->auth_failures < 3 ? c->auth_failures : 3;
  c->auth_failures++;
  reply->code = 535;
  reply->enhanced = "5.7.8";
  reply->text = "Error: authentication failed";
  if (!delay)
    return TERN_REPLY_NOW;
  c->tmode = TM_AUTH_DELAY;
  uv_timer_start(&c->timer, on_timer, (uint64_t)delay << shift, 0);
  return TERN_PENDING;
}

/*
 * Password checks (issue 8 item 13). check_password hashes (yescrypt:
 * tens of milliseconds), so it runs on libuv's thread pool while the
 * session's AUTH decision is pending; the loop goes on serving everyone
 * else. At most auth_max_concurrent checks of a worker run at once (the
 * pool's four threads also do the file I/O of deliveries); up to
 * auth_max_queued more wait in FIFO order; past that AUTH gets 454 4.7.0
 * at once. A connection with a check on the pool counts it as a handle,
 * so it is freed only after the check is done.
 */
static void auth_work_cb(uv_work_t *req) {
  struct tern__conn *c = req->data;
  tern__sasl_verify(c->sasl); /* only c->sasl is touched off the loop */
}

static void auth_after_cb(uv_work_t *req, int status);

static unsigned auth_max_running(const struct tern__conn *c) {
  unsigned n = c->w->srv->opt.auth_max_concurrent;
  return n ? n : 1;
}

static int auth_submit(struct tern__conn *c) {
  c->auth_work.data = c;
  if (uv_queue_work(c->w->loop, &c->auth_work, auth_work_cb, auth_after_cb))
    return -1;
  c->w->auth_running++;
  c->auth_busy = true;
  c->handles++;
  return 0;
}

/* End a check that cannot run: 454, the session goes on. */
static void auth_cannot_run(struct tern__conn *c) {
  struct tern_reply r;
  tern__sasl_verify_done(c->sasl); /* wipes the credentials */
  auth_result(c, TERN_ETEMP, &r);
  tern_server_session_reply(c->s, &r);
}

/* Start waiting checks while there is room. */
static void auth_start_waiting(struct tern__worker *w) {
  while (w->auth_head && w->auth_running < auth_max_running(w->auth_head)) {
    struct tern__conn *c = w->auth_head;
    w->auth_head = c->auth_next;
    if (!w->auth_head)
      w->auth_tail = NULL;
    c->auth_next = NULL;
    c->auth_queued = false;
    w->auth_waiting--;
    if (auth_submit(c) != 0)
      auth_cannot_run(c);
  }
}

static void auth_unqueue(struct tern__conn *c) {
  struct tern__worker *w = c->w;
  struct tern__conn **pp = &w->auth_head, *prev = NULL;
  if (!c->auth_queued)
    return;
  while (*pp && *pp != c) {
    prev = *pp;
    pp = &(*pp)->auth_next;
  }
  if (*pp) {
    *pp = c->auth_next;
    if (w->auth_tail == c)
      w->auth_tail = prev;
    w->auth_waiting--;
  }
  c->auth_next = NULL;
  c->auth_queued = false;
}

/* The step read the credentials: check them off the loop. */
static int auth_verify_start(struct tern__conn *c, struct tern_reply *reply) {
  struct tern__worker *w = c->w;
  if (w->auth_running < auth_max_running(c)) {
    if (auth_submit(c) == 0)
      return TERN_PENDING;
  } else if (w->auth_waiting < w->srv->opt.auth_max_queued) {
    c->auth_queued = true;
    c->auth_next = NULL;
    if (w->auth_tail)
      w->auth_tail->auth_next = c;
    else
      w->auth_head = c;
    w->auth_tail = c;
    w->auth_waiting++;
    return TERN_PENDING;
  }
  /* Too many checks waiting: a temporary failure, the client retries. */
  tern__sasl_verify_done(c->sasl);
  return auth_result(c, TERN_ETEMP, reply);
}

static void conn_free(struct tern__conn *c);

static void auth_after_cb(uv_work_t *req, int status) {
  struct tern__conn *c = req->data;
  struct tern__worker *w = c->w;
  int r = tern__sasl_verify_done(c->sasl); /* wipes the credentials */
  if (status != 0)
    r = TERN_ETEMP; /* the check did not run */
  w->auth_running--;
  c->auth_busy = false;
  bool gone = c->closing || !c->s;
  if (--c->handles == 0) { /* closed meanwhile; its handles are gone */
    auth_start_waiting(w);
    conn_free(c);
    return;
  }
  auth_start_waiting(w);
  if (gone)
    return;
  struct tern_reply rep;
  if (auth_result(c, r, &rep) == TERN_REPLY_NOW)
    tern_server_session_reply(c->s, &rep); /* notifies: pumps */
}

static int on_auth(struct tern_server_session *s, struct tern_str mech,
                   struct tern_str resp, bool has_resp, unsigned step,
                   struct tern_reply *reply, void *ud) {
  struct tern__conn *c = conn_of(s);
  const char *challenge = NULL;
  (void)ud;
  if (!c)
    return TERN_EINVAL;
  if (step == 0 && c->sasl) {
    tern__sasl_session_free(c->sasl);
    c->sasl = NULL;
  }
  int r = tern__sasl_step(c->w->sasl, &c->sasl, s, mech.ptr, resp.ptr, resp.len,
                          has_resp, &challenge);
  if (r == TERN__SASL_CONTINUE) {
    reply->code = 334;
    reply->enhanced = NULL;
    reply->text = challenge;
    return TERN_REPLY_NOW; /* the core copies the text at once */
  }
  if (r == TERN__SASL_VERIFY)
    return auth_verify_start(c, reply);
  return auth_result(c, r, reply);
}

/* XCLIENT from a trusted peer: the session now speaks for ADDR/PORT. */
static int on_xclient(struct tern_server_session *s,
                      const struct tern_xclient *x, struct tern_reply *reply,
                      void *ud) {
  struct tern__conn *c = conn_of(s);
  int rc = TERN_REPLY_NOW;
  if (c && c->w->srv->cb.on_xclient)
    rc = c->w->srv->cb.on_xclient(s, x, reply, ud);
  if (c && rc == TERN_REPLY_NOW && reply->code / 100 == 2 && x->addr.len &&
      x->addr.len < sizeof c->peer_addr) {
    memcpy(c->peer_addr, x->addr.ptr, x->addr.len);
    c->peer_addr[x->addr.len] = '\0';
    c->info.peer_port = 0;
    for (size_t i = 0; i < x->port.len && x->port.ptr[i] >= '0' &&
                       x->port.ptr[i] <= '9' && i < 5;
         i++)
      c->info.peer_port =
          c->info.peer_port * 10 + (unsigned)(x->port.ptr[i] - '0');
  }
  return rc;
}

/* ---- session set-up
 * ------------------------------------------------------------- */

static void addr_text(const struct sockaddr_storage *ss, char *buf, size_t cap,
                      unsigned *port) {
  *port = 0;
  if (ss->ss_family == AF_INET) {
    const struct sockaddr_in *a = (const struct sockaddr_in *)ss;
    uv_ip4_name(a, buf, cap);
    *port = ntohs(a->sin_port);
  } else if (ss->ss_family == AF_INET6) {
    const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)ss;
    uv_ip6_name(a, buf, cap);
    *port = ntohs(a->sin6_port);
  } else {
    snprintf(buf, cap, "unix");
  }
}

static void start_session(struct tern__conn *c) {
  struct tern_server *srv = c->w->srv;
  struct tern__listener *l = c->l;
  struct tern_server_config cfg;
  tern__server_template(srv, &cfg);
  struct tern_server_callbacks cb = srv->cb;
  bool trusted = false;

  addr_text(&c->peer, c->peer_addr, sizeof c->peer_addr, &c->info.peer_port);
  c->info.peer_addr = c->peer_addr;
  c->info.peer =
      c->peer.ss_family == AF_UNIX ? NULL : (const struct sockaddr *)&c->peer;

  cfg.lmtp = l->lmtp;
  cfg.auth_required = l->lo.auth_required;
  cfg.auth_insecure_ok = l->lo.auth_insecure_ok || l->is_unix;
  cfg.extensions &= ~(unsigned)(TERN_EXT_STARTTLS | TERN_EXT_XCLIENT);
  if (l->lo.starttls && srv->tls && !l->implicit_tls)
    cfg.extensions |= TERN_EXT_STARTTLS;
  if (srv->opt.auth && c->w->sasl && !l->lo.no_auth &&
      tern__sasl_mechanisms(c->w->sasl)[0]) {
    cfg.extensions |= TERN_EXT_AUTH;
    cfg.auth_mechanisms = tern__sasl_mechanisms(c->w->sasl);
    cb.on_auth = on_auth;
  }
  if (l->lo.xclient && srv->xclient_nets && c->info.peer &&
      tern__cidr_match(srv->xclient_nets, c->info.peer)) {
    cfg.extensions |= TERN_EXT_XCLIENT;
    trusted = true;
    cb.on_xclient = on_xclient;
  }
  if (l->lo.no_auth)
    cfg.extensions &= ~(unsigned)TERN_EXT_AUTH;
  cfg.xclient_trusted = trusted;
  if (tern_server_session_new(&c->s, &cfg, &cb, srv->opt.ud) != 0) {
    conn_close(c);
    return;
  }
  tern_server_session_set_notify(c->s, on_notify, c);

  if (l->implicit_tls) {
    tern_server_session_tls_started(c->s); /* TLS from the first byte */
    if (!srv->tls || tern__tls_new(&c->tls, srv->tls) != 0) {
      conn_close(c);
      return;
    }
    c->phase = PH_TLS_WAIT;
    c->tmode = TM_TIMEOUT;
    restart_timer(c);
    c->dl_tls =
        uv_now(c->w->loop) + TERN__LIVE(srv->opt.tls_handshake_timeout_ms);
    arm_dl(c);
    return;
  }
  unsigned greet = TERN__LIVE(srv->opt.greeting_delay_ms);
  if (greet) {
    c->phase = PH_GREET_WAIT;
    c->tmode = TM_GREET;
    uv_timer_start(&c->timer, on_timer, greet, 0);
    return;
  }
  c->phase = PH_SMTP;
  c->tmode = TM_TIMEOUT;
  tern_server_session_start(c->s);
  restart_timer(c);
}

/* The PROXY header is complete: the session speaks for its client. */
static void proxy_done(struct tern__conn *c, const struct tern__proxy *p) {
  struct tern_server *srv = c->w->srv;
  if (!p->local) {
    if (c->ip_counted) {
      tern__ip_release(srv, (struct sockaddr *)&c->counted);
      c->ip_counted = false;
    }
    c->peer = p->src;
    if (!tern__ip_acquire(srv, (struct sockaddr *)&c->peer)) {
      addr_text(&c->peer, c->peer_addr, sizeof c->peer_addr,
                &c->info.peer_port);
      refuse(c, TERN_NET_IP_LIMIT, 421, "4.7.0",
             "Error: too many connections from your address");
      return;
    }
    c->counted = c->peer;
    c->ip_counted = true;
  }
  start_session(c);
}

/* ---- reads ------------------------------------------------------------------
 */

static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf) {
  struct tern__conn *c = h->data;
  (void)hint;
  *buf = uv_buf_init(c->w->rbuf, sizeof c->w->rbuf);
}

static void on_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf) {
  struct tern__conn *c = st->data;
  const char *p = buf->base;
  size_t n = nread > 0 ? (size_t)nread : 0;

  if (nread < 0) {
    c->eof = true;
    if (c->s)
      tern_server_session_eof(c->s); /* aborts a message in progress */
    if (!c->s || nread != UV_EOF) {
      conn_close(c);
      return;
    }
    uv_read_stop(st);
    c->reading = false;
    pump(c);
    return;
  }
  if (!n || c->closing)
    return;
  if (c->tmode == TM_TIMEOUT) /* idle timer; deadlines do not move */
    restart_timer(c);

  if (c->phase == PH_PROXY) {
    if (!c->proxy && !(c->proxy = malloc(TERN__PROXY_MAX))) {
      conn_close(c);
      return;
    }
    size_t take = TERN__PROXY_MAX - c->proxy_len;
    if (take > n)
      take = n;
    memcpy(c->proxy + c->proxy_len, p, take);
    c->proxy_len += take;
    struct tern__proxy px;
    long r = tern__proxy_parse(c->proxy, c->proxy_len, &px);
    if (r < 0 || (r == 0 && c->proxy_len == TERN__PROXY_MAX)) {
      emit(c, TERN_NET_PROXY_FAILED, 0, NULL, "not a valid PROXY header");
      conn_close(c); /* a PROXY listener speaks only to its proxy */
      return;
    }
    if (r == 0)
      return;
    c->dl_proxy = 0;
    arm_dl(c);
    /* What followed the header (same read) is SMTP (or TLS) input. */
    size_t used_now = take - (c->proxy_len - (size_t)r);
    free(c->proxy);
    c->proxy = NULL;
    proxy_done(c, &px);
    if (c->closing || !c->s)
      return;
    p += used_now;
    n -= used_now;
    if (!n) {
      pump(c);
      return;
    }
  }
  if (c->phase == PH_GREET_WAIT) { /* spoke before the greeting */
    refuse(c, TERN_NET_PREGREET, 554, "5.5.1", "Error: talking too early");
    return;
  }
  if (c->tls) {
    if (tern__tls_feed(c->tls, p, n) != 0) {
      if (!c->tls_ready)
        emit(c, TERN_NET_TLS_FAILED, 0, NULL, tern__tls_error(c->tls));
      conn_close(c);
      return;
    }
    if (!c->tls_ready)
      tls_pull(c); /* handshake */
  } else {
    input(c, p, n);
  }
  pump(c);
}

/* ---- lifecycle
 * ---------------------------------------------------------------- */

static void on_closed(uv_handle_t *h) {
  struct tern__conn *c = h->data;
  if (--c->handles) /* the other handle, or a password check (AUTH) */
    return;
  conn_free(c);
}

/* Everything a connection owns, once its handles are closed and no
 * password check uses it. */
static void conn_free(struct tern__conn *c) {
  struct tern__worker *w = c->w;
  if (c->s) {
    tern_server_session_set_notify(c->s, NULL, NULL);
    tern_server_session_free(c->s);
  }
  tern__sasl_session_free(c->sasl);
  tern__tls_free(c->tls);
  if (c->prev)
    c->prev->next = c->next;
  else
    w->conns = c->next;
  if (c->next)
    c->next->prev = c->prev;
  w->nconns--;
  free(c->in);
  free(c->proxy);
  free(c->auth_user);
  free(c);
  tern__worker_maybe_done(w);
}

/* Close now; the session (if any) sees eof first, so on_close fires and
 * a message in progress is aborted. Memory goes in on_closed(). */
static void conn_close(struct tern__conn *c) {
  struct tern_server *srv = c->w->srv;
  if (c->closing)
    return;
  c->closing = true;
  auth_unqueue(c); /* a check not started yet never runs */
  /* The slot is free once the socket is: a new client may have it now. */
  if (c->ip_counted)
    tern__ip_release(srv, (struct sockaddr *)&c->counted);
  c->ip_counted = false;
  atomic_fetch_sub(&srv->total_conns, 1);
  if (c->s)
    tern_server_session_eof(c->s);
  if (c->reading)
    uv_read_stop(&c->h.stream);
  c->reading = false;
  uv_timer_stop(&c->timer);
  uv_close((uv_handle_t *)&c->timer, on_closed);
  uv_close((uv_handle_t *)&c->dl, on_closed);
  /* Output still queued means the client is not taking it (a write
   * deadline, a forced shutdown, an error): drop it and reset, so neither
   * the socket nor the kernel's copy of the output lingers behind a zero
   * window (a plain close would queue the FIN behind that output). */
  if (c->writes && !c->l->is_unix &&
      uv_tcp_close_reset(&c->h.tcp, on_closed) == 0)
    return;
  uv_close(&c->h.handle, on_closed);
}

static struct tern__conn *conn_of(const struct tern_server_session *s) {
  if (tern__server_session_notify_fn(s) != on_notify)
    return NULL;
  return tern_server_session_notify_arg(s);
}

void tern__conn_accept(struct tern__lhandle *lh) {
  struct tern__worker *w = lh->w;
  struct tern_server *srv = w->srv;
  struct tern__conn *c = calloc(1, sizeof *c);
  int r;

  if (!c)
    return;
  c->w = w;
  c->l = lh->l;
  if (lh->l->is_unix)
    r = uv_pipe_init(w->loop, &c->h.pipe, 0);
  else
    r = uv_tcp_init(w->loop, &c->h.tcp);
  if (r) {
    free(c);
    return;
  }
  uv_timer_init(w->loop, &c->timer);
  uv_timer_init(w->loop, &c->dl);
  c->h.handle.data = c;
  c->timer.data = c;
  c->dl.data = c;
  c->handles = 3;
  c->next = w->conns;
  if (w->conns)
    w->conns->prev = c;
  w->conns = c;
  w->nconns++;
  atomic_fetch_add(&srv->total_conns, 1);

  unsigned long id = atomic_fetch_add(&srv->next_id, 1);
  /* time, process and counter: unique across instances behind one
   * balancer, too */
  snprintf(c->id, sizeof c->id, "%08lx%05x%06lx", srv->id_base & 0xffffffffUL,
           (unsigned)getpid() & 0xfffffu, id & 0xffffffUL);
  c->info.id = c->id;
  c->info.listener = lh->l->url;
  c->info.worker = w->index;
  c->info.lmtp = lh->l->lmtp;
  c->info.local_addr = c->local_addr;
  c->info.peer_addr = c->peer_addr;

  if (uv_accept(&lh->h.stream, &c->h.stream) != 0) {
    conn_close(c);
    return;
  }
  if (lh->l->is_unix) {
    c->peer.ss_family = AF_UNIX;
    snprintf(c->local_addr, sizeof c->local_addr, "unix");
  } else {
    int len = sizeof c->peer;
    struct sockaddr_storage local;
    uv_tcp_getpeername(&c->h.tcp, (struct sockaddr *)&c->peer, &len);
    len = sizeof local;
    uv_tcp_getsockname(&c->h.tcp, (struct sockaddr *)&local, &len);
    addr_text(&local, c->local_addr, sizeof c->local_addr, &c->info.local_port);
    uv_tcp_nodelay(&c->h.tcp, 1);
  }
  addr_text(&c->peer, c->peer_addr, sizeof c->peer_addr, &c->info.peer_port);

  if (srv->shutting_down) {
    conn_close(c);
    return;
  }
  unsigned maxc = TERN__LIVE(srv->opt.max_connections);
  if (maxc && atomic_load(&srv->total_conns) > maxc) {
    refuse(c, TERN_NET_CONN_LIMIT, 421, "4.7.0", "Error: too many connections");
    return;
  }
  if (!lh->l->is_unix && !lh->l->lo.proxy_protocol) {
    if (!tern__ip_acquire(srv, (struct sockaddr *)&c->peer)) {
      refuse(c, TERN_NET_IP_LIMIT, 421, "4.7.0",
             "Error: too many connections from your address");
      return;
    }
    c->counted = c->peer;
    c->ip_counted = true;
  }
  if (uv_read_start(&c->h.stream, on_alloc, on_read) != 0) {
    conn_close(c);
    return;
  }
  c->reading = true;
  if (lh->l->lo.proxy_protocol) {
    c->phase = PH_PROXY;
    c->dl_proxy = uv_now(w->loop) + TERN__LIVE(srv->opt.proxy_timeout_ms);
    arm_dl(c);
    return;
  }
  start_session(c);
  pump(c);
}

void tern__conn_drain(struct tern__conn *c, bool force) {
  if (c->closing)
    return;
  if (!c->s || c->phase != PH_SMTP) {
    conn_close(c);
    return;
  }
  c->drain = true;
  if (force) {
    /* The deadline: say 421 if the socket takes it at once, then close
     * whatever is still unsent (a client that does not read must not
     * hold the shutdown). */
    struct tern_reply r = {421, "4.3.2", "Service shutting down"};
    tern_server_session_close(c->s, &r); /* notifies: pumps */
    if (!c->closing)
      conn_close(c);
    return;
  }
  pump(c);
}

const struct tern_session_info *
tern_session_info(const struct tern_server_session *s) {
  struct tern__conn *c = conn_of(s);
  return c ? &c->info : NULL;
}

uv_loop_t *tern_session_loop(const struct tern_server_session *s) {
  struct tern__conn *c = conn_of(s);
  return c ? c->w->loop : NULL;
}
