/*
 * One client connection: the only place where a session's bytes meet a
 * socket.
 *
 *   socket --read--> [TLS decrypt] --> [PROXY header] --> feed(session)
 *   session output --> [TLS encrypt] --> try_write / uv_write --> socket
 *
 * The transport (handle, TLS, held input, writes) is a tern__stream
 * (stream.c) that reaches the session through the adapter below; this
 * file keeps accept, the PROXY header, timers, deadlines and limits.
 * pump() is the single place that moves things along: it feeds held
 * input, flushes output, starts TLS, closes, and turns reading on or off
 * (backpressure: a session that does not want input is not read for).
 * AUTH and XCLIENT are auth.c's.
 */
#include "internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "conn.h"

enum tmode { TM_NONE, TM_TIMEOUT, TM_GREET, TM_AUTH_DELAY };

static void pump(struct tern__conn *c);
static void conn_close(struct tern__conn *c);
static void arm_dl(struct tern__conn *c);
static void write_clock(struct tern__conn *c, bool progress);
static void on_read(void *arg, ssize_t nread, const char *p);
static void on_timer(uv_timer_t *t);
static void restart_timer(struct tern__conn *c);

struct tern__conn *tern__conn_next(struct tern__conn *c) {
  return c->next;
}

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

/* ---- the stream's adapter
 * ----------------------------------------------------------- */

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

static long s_feed(void *arg, const char *p, size_t n) {
  struct tern__conn *c = arg;
  bool partial = tern_server_session_line_pending(c->s);
  long r = tern_server_session_feed(c->s, p, n);
  if (r >= 0)
    line_clock(c, partial, p, (size_t)r);
  return r;
}

static void *s_session(void *arg) {
  return ((struct tern__conn *)arg)->s;
}

static void s_tls_ready(void *arg) {
  struct tern__conn *c = arg;
  c->dl_tls = 0;
  arm_dl(c);
  c->info.tls = true;
  c->info.tls_version = tern__tls_version(c->st.tls);
  c->info.tls_cipher = tern__tls_cipher(c->st.tls);
  c->info.tls_sni = tern__tls_sni(c->st.tls);
  if (c->l->implicit_tls)
    tern_server_session_start(c->s); /* greeting inside TLS */
  else
    tern_server_session_tls_started(c->s);
  c->phase = PH_SMTP;
}

static void s_written(void *arg, int status) {
  struct tern__conn *c = arg;
  if (status < 0) {
    conn_close(c);
    return;
  }
  write_clock(c, true); /* the client took bytes: progress */
  pump(c);
}

static void s_fail(void *arg, enum tern__stream_err why, long code) {
  struct tern__conn *c = arg;
  (void)code;
  if (why == TERN__SE_TLS && !c->st.tls_ready)
    emit(c, TERN_NET_TLS_FAILED, 0, NULL, tern__tls_error(c->st.tls));
  conn_close(c);
}

static const struct tern__stream_ops conn_ops = {.client = false,
                                                 .session = s_session,
                                                 .feed = s_feed,
                                                 .feed_bits = TERN_WANT_READ,
                                                 .read_bits = TERN_WANT_READ,
                                                 .tls_bit = TERN_WANT_TLS,
                                                 .close_bit = TERN_WANT_CLOSE,
                                                 .write_bit = TERN_WANT_WRITE,
                                                 .read = on_read,
                                                 .tls_ready = s_tls_ready,
                                                 .written = s_written,
                                                 .fail = s_fail};

/* A reply without a session (limits, early talkers), then close; the
 * application hears of it through on_event. */
static void refuse(struct tern__conn *c, enum tern_net_event_type type,
                   unsigned code, const char *enhanced, const char *why) {
  char t[512];
  emit(c, type, code, enhanced, why);
  int n = snprintf(t, sizeof t, "%u %s %s %s\r\n", code, enhanced,
                   TERN__LIVE(c->w->srv->session.hostname), why);
  if (n > 0 && (size_t)n < sizeof t)
    tern__stream_send(&c->st, t, (size_t)n);
  conn_close(c);
}

static void start_tls(struct tern__conn *c) {
  struct tern_server *srv = c->w->srv;
  struct tern__tls *t;
  if (!srv->tls || tern__tls_new(&t, srv->tls) != 0) {
    conn_close(c);
    return;
  }
  tern__stream_tls_begin(&c->st, t, false);
  c->phase = PH_TLS_WAIT;
  c->dl_tls =
      uv_now(c->w->loop) + TERN__LIVE(srv->opt.tls_handshake_timeout_ms);
  arm_dl(c);
}

/* ---- the pump
 * ---------------------------------------------------------------- */

static void update_reading(struct tern__conn *c) {
  bool want = false;
  if (!c->closing && !c->st.eof) {
    if (c->phase != PH_SMTP)
      want = true; /* PROXY header, early talkers, TLS handshake */
    else if (c->s)
      want = tern__stream_wants_read(&c->st);
    /* A password check waiting in the AUTH queue: read on (input is
     * held, bounded) so that a client that has gone is noticed and its
     * check never runs, instead of holding a queue slot. */
    if (c->auth_queued)
      want = true;
  }
  tern__stream_set_reading(&c->st, want);
}

static void pump(struct tern__conn *c) {
  if (!tern__stream_pump_begin(&c->st))
    return;
  while (tern__stream_pump_turn(&c->st)) {
    if (c->closing || !c->s)
      break;
    if (tern__stream_step(&c->st)) {
      tern__stream_pump_more(&c->st);
      continue;
    }
    if (c->closing)
      break;
    unsigned want = tern_server_session_want(c->s);
    if ((want & TERN_WANT_TLS) && !c->st.tls && !(want & TERN_WANT_WRITE))
      start_tls(c);
    if (c->drain && !(want & TERN_WANT_CLOSE) &&
        !tern_server_session_in_transaction(c->s) &&
        tern_server_session_pending(c->s) == TERN_EV_NONE) {
      struct tern_reply r = {421, "4.3.2", "Service shutting down"};
      tern_server_session_close(c->s, &r);
      tern__stream_pump_more(&c->st);
      continue;
    }
    if (tern__stream_session_over(&c->st)) {
      conn_close(c);
      break;
    }
  }
  if (!c->closing) {
    write_clock(c, false);
    update_reading(c);
    /* Quiet now: give the session's buffers back (idle connections). */
    if (c->s && !c->st.in_len && !c->st.writes && c->st.reading)
      tern_server_session_trim(c->s);
  }
  tern__stream_pump_end(&c->st);
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
    if (c->st.tls && !c->st.tls_ready) { /* no 421 inside a handshake */
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

void tern__conn_auth_delay(struct tern__conn *c, uint64_t ms) {
  c->tmode = TM_AUTH_DELAY;
  uv_timer_start(&c->timer, on_timer, ms, 0);
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
  bool pending = c->st.writes ||
                 (c->s && (tern_server_session_want(c->s) & TERN_WANT_WRITE));
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
  tern__auth_setup(c, &cfg, &cb);
  if (tern_server_session_new(&c->s, &cfg, &cb, srv->opt.ud) != 0) {
    conn_close(c);
    return;
  }
  tern_server_session_set_notify(c->s, on_notify, c);

  if (l->implicit_tls) {
    tern_server_session_tls_started(c->s); /* TLS from the first byte */
    c->tmode = TM_TIMEOUT;
    restart_timer(c);
    start_tls(c);
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

static void on_read(void *arg, ssize_t nread, const char *p) {
  struct tern__conn *c = arg;
  size_t n = nread > 0 ? (size_t)nread : 0;

  if (nread < 0) {
    c->st.eof = true;
    if (c->s)
      tern_server_session_eof(c->s); /* aborts a message in progress */
    if (!c->s || nread != UV_EOF) {
      conn_close(c);
      return;
    }
    tern__stream_set_reading(&c->st, false);
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
  tern__stream_received(&c->st, p, n);
  pump(c);
}

/* ---- lifecycle
 * ---------------------------------------------------------------- */

static void on_closed(uv_handle_t *h) {
  struct tern__conn *c = h->data;
  if (--c->handles) /* the other handles, or a password check (AUTH) */
    return;
  tern__conn_free(c);
}

static void on_stream_closed(uv_handle_t *h) {
  struct tern__conn *c = tern__stream_owner(h);
  if (--c->handles)
    return;
  tern__conn_free(c);
}

/* Everything a connection owns, once its handles are closed and no
 * password check uses it. */
void tern__conn_free(struct tern__conn *c) {
  struct tern__worker *w = c->w;
  if (c->s) {
    tern_server_session_set_notify(c->s, NULL, NULL);
    tern_server_session_free(c->s);
  }
  tern__sasl_session_free(c->sasl);
  tern__stream_free(&c->st);
  if (c->prev)
    c->prev->next = c->next;
  else
    w->conns = c->next;
  if (c->next)
    c->next->prev = c->prev;
  w->nconns--;
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
  tern__auth_unqueue(c); /* a check not started yet never runs */
  /* The slot is free once the socket is: a new client may have it now. */
  if (c->ip_counted)
    tern__ip_release(srv, (struct sockaddr *)&c->counted);
  c->ip_counted = false;
  atomic_fetch_sub(&srv->total_conns, 1);
  if (c->s)
    tern_server_session_eof(c->s);
  tern__stream_stop(&c->st);
  uv_timer_stop(&c->timer);
  uv_close((uv_handle_t *)&c->timer, on_closed);
  uv_close((uv_handle_t *)&c->dl, on_closed);
  /* Output still queued means the client is not taking it (a write
   * deadline, a forced shutdown, an error): drop it and reset, so neither
   * the socket nor the kernel's copy of the output lingers behind a zero
   * window (a plain close would queue the FIN behind that output). */
  if (c->st.writes && !c->l->is_unix &&
      uv_tcp_close_reset(&c->st.h.tcp, on_stream_closed) == 0)
    return;
  uv_close(&c->st.h.handle, on_stream_closed);
}

struct tern__conn *tern__conn_of(const struct tern_server_session *s) {
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
  tern__stream_init(&c->st, &conn_ops, c, &w->scratch);
  if (lh->l->is_unix)
    r = uv_pipe_init(w->loop, &c->st.h.pipe, 0);
  else
    r = uv_tcp_init(w->loop, &c->st.h.tcp);
  if (r) {
    free(c);
    return;
  }
  uv_timer_init(w->loop, &c->timer);
  uv_timer_init(w->loop, &c->dl);
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

  if (uv_accept(&lh->h.stream, &c->st.h.stream) != 0) {
    conn_close(c);
    return;
  }
  if (lh->l->is_unix) {
    c->peer.ss_family = AF_UNIX;
    snprintf(c->local_addr, sizeof c->local_addr, "unix");
  } else {
    int len = sizeof c->peer;
    struct sockaddr_storage local;
    uv_tcp_getpeername(&c->st.h.tcp, (struct sockaddr *)&c->peer, &len);
    len = sizeof local;
    uv_tcp_getsockname(&c->st.h.tcp, (struct sockaddr *)&local, &len);
    addr_text(&local, c->local_addr, sizeof c->local_addr, &c->info.local_port);
    uv_tcp_nodelay(&c->st.h.tcp, 1);
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
  if (!tern__stream_set_reading(&c->st, true)) {
    conn_close(c);
    return;
  }
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
  struct tern__conn *c = tern__conn_of(s);
  return c ? &c->info : NULL;
}

uv_loop_t *tern_session_loop(const struct tern_server_session *s) {
  struct tern__conn *c = tern__conn_of(s);
  return c ? c->w->loop : NULL;
}
