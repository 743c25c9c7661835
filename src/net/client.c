/*
 * The client runtime: one tern_client_session driven on a libuv loop.
 *
 *   resolve (uv_getaddrinfo) -> connect (each address in turn, or a unix
 *   socket) -> [implicit TLS] -> session: greeting, EHLO, [STARTTLS ->
 *   TLS -> EHLO], [AUTH through GNU SASL] -> ready -> messages -> QUIT
 *
 *   socket --read--> [TLS decrypt] --> feed(session)
 *   session output --> [TLS encrypt] --> try_write / uv_write --> socket
 *
 * The transport (handle, TLS, held input, writes) is the tern__stream
 * of stream.c, shared with the server, reached through the adapter
 * below; its scratch buffers are shared by every client of the loop. As
 * in conn.c, pump() is the one place that moves things along: feed held
 * input, flush output, start TLS when the session asks, push the body of
 * tern_client_send_fd(), close when the session is done, and turn
 * reading on or off (a session that awaits no reply is not read for).
 * Memory is freed only once every handle is closed and every request
 * (getaddrinfo, connect, file read, write) has called back.
 *
 * STARTTLS policy from the URL (docs: "client runtime"). The level the
 * URL asks for is a floor: smtp:// = OPPORTUNISTIC, smtp+starttls:// =
 * REQUIRED, smtps:// = implicit TLS (STARTTLS off, tls_active), lmtp://
 * = OFF; a higher level in options.session->starttls wins (the runtime
 * never lowers what the application set). Verification is the same in
 * every TLS case: with tls_verify (default) a certificate that does not
 * verify (chain or host name) fails the connection with TERN_ETLS unless
 * the verify hook says to go on; with tls_verify false it is not checked.
 *
 * AUTH: when auth_user is set the runtime installs its own on_auth and
 * on_auth_mechanism; the mechanism is chosen from what the server
 * offered (after STARTTLS) by tern__sasl_client_choose(), and AUTH is
 * required (no usable mechanism fails the connection with TERN_EAUTH).
 *
 * Timeouts (RFC 5321 §4.5.3.2): connect_timeout_ms per address (30 s),
 * command_timeout_ms (5 min) for the greeting and every reply, a data
 * block (3 min, or command_timeout_ms when smaller) while body bytes are
 * being written, data_timeout_ms (10 min) for the reply after the end
 * of data. No timer runs while the session is idle (READY) or waits for
 * the application's body bytes.
 */
#include "internal.h"

#include <fcntl.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tern/net.h"
#include "tern/resolve.h"

#include "auth.h"
#include "mx.h"
#include "stream.h"
#include "tls.h"
#include "url.h"

#define CL_FILE_CHUNK 65536

#define DEF_CONNECT_MS 30000u
#define DEF_COMMAND_MS 300000u
#define DEF_BLOCK_MS 180000u
#define DEF_DATA_MS 600000u

enum cl_state {
  CS_NEW,        /* before tern_client_connect() */
  CS_RESOLVING,  /* uv_getaddrinfo */
  CS_CONNECTING, /* uv_tcp_connect / uv_pipe_connect */
  CS_SESSION,    /* connected: TLS and SMTP */
  CS_CLOSING,    /* handles closing */
  CS_CLOSED      /* on_close called */
};

enum cl_timer { TM_NONE, TM_CONNECT, TM_COMMAND, TM_BLOCK, TM_DATA };

struct tern_client {
  uv_loop_t *loop;
  struct tern_client_options opt; /* copy; strings point into `strs` */
  struct tern_client_config cfg;  /* opt.session's copy */
  struct tern_client_callbacks app; /* the application's callbacks */
  bool tls_trusted; /* TLS up and its certificate verified (or the verify
                     * hook accepted it): credentials may go over it */
  char *strs[16];                 /* owned copies of the option strings */
  struct tern__url url;
  const char *server_name;        /* for SNI / verification, or NULL */
  struct tern__tls_client_ctx *tls_ctx;
  enum tern_starttls starttls;    /* effective policy */

  struct tern__stream st;         /* socket, TLS, held input, writes */
  struct tern__scratch *sc;       /* this loop's scratch buffers */
  bool h_open;                    /* st.h initialised and not yet closed */
  uv_timer_t timer;
  bool timer_open;
  unsigned char tmode;            /* enum cl_timer */
  uv_getaddrinfo_t gai;
  bool gai_pending;
  struct addrinfo *ai_list, *ai_cur;
  uv_connect_t creq;
  bool creq_pending;
  unsigned attempt;               /* connect attempt number */
  char peer[300];                 /* "host:port" of the attempt */

  struct tern_client_session *s;
  struct tern__client_auth auth;  /* AUTH: credentials, exchange */

  enum cl_state state;
  bool reported;                  /* on_connect called */
  bool ready;                     /* first on_ready seen */
  bool quit_asked;
  bool in_data;                   /* 354 seen, final reply not yet */
  unsigned pending_cb;            /* fs reads, connect, handles etc. */
  unsigned in_cb;                 /* inside a session callback */
  bool close_pending;             /* cl_close() asked from a callback */

  /* tern_client_send_fd() */
  bool fd_active;
  int fd;
  bool fd_seekable;
  int64_t fd_off;
  bool fs_busy, fs_eof;
  unsigned fd_gen;  /* bumped by each send_fd() */
  unsigned fs_gen;  /* fd_gen of the read in flight */
  uv_fs_t fsreq;
  char *fbuf;
  size_t fb_off, fb_len;

  enum tern_client_cmd last_cmd;
  char last_reply[300];
  int err_code;
  char err[512];

  /* "mx:DOMAIN" (mx.c has the plan; see "mx: attempts" below) */
  bool is_mx;
  struct tern_resolver *own_res;  /* made here when options.resolver is
                                     NULL; freed with the client */
  struct tern__mx *mx;
  const struct tern__mx_target *tgt; /* the current attempt's */
  bool next_pending;  /* this attempt failed: the next once out of the
                         session's callbacks */
  bool why_recorded;  /* the plan was told why it failed */
  bool verify_failed; /* the failure is the certificate's, not TLS's */
  bool quit_first;    /* the session is sound: say QUIT before leaving */
  struct sockaddr_storage *self; /* options.self_addrs, copied */
  size_t nself;

  /* bind_addr / bind_addr6 */
  bool has_bind4, has_bind6;
  struct sockaddr_in bind4;
  struct sockaddr_in6 bind6;

  /* tern_client_conn_info(), tern_client_failure_reply() */
  struct tern_client_conn_info info;
  char info_host[256];
  char info_addr[64];
  char info_pf[600];
  bool has_failure;
  struct tern_reply failure;
  char fail_enh[16];
  char fail_text[640];
};

static void pump(struct tern_client *cl);
static void cl_close(struct tern_client *cl);
static void fail(struct tern_client *cl, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void restart_timer(struct tern_client *cl);
static void maybe_done(struct tern_client *cl);
static void on_attempt_closed(uv_handle_t *h);
static void attempt_fail(struct tern_client *cl, enum tern__mx_fail why,
                         bool handshake);
static void attempt_close(struct tern_client *cl);
static void attempt_reset(struct tern_client *cl);
static void mx_advance(struct tern_client *cl);

/* ---- small helpers -------------------------------------------------------- */

static void set_err(struct tern_client *cl, int code, const char *fmt,
                    va_list ap) __attribute__((format(printf, 3, 0)));
static void set_err(struct tern_client *cl, int code, const char *fmt,
                    va_list ap) {
  char tmp[sizeof cl->err]; /* the arguments may point into cl->err */
  cl->err_code = code;
  vsnprintf(tmp, sizeof tmp, fmt, ap);
  memcpy(cl->err, tmp, sizeof tmp);
}

static void set_errf(struct tern_client *cl, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void set_errf(struct tern_client *cl, int code, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  set_err(cl, code, fmt, ap);
  va_end(ap);
}

static void report(struct tern_client *cl, int status) {
  if (cl->reported)
    return;
  cl->reported = true;
  if (cl->opt.on_connect)
    cl->opt.on_connect(cl, status, cl->opt.ud);
}

/* A failure: remember why, tell on_connect (if not yet told), end a
 * message in progress (the session reports it), close. */
static void fail(struct tern_client *cl, int code, const char *fmt, ...) {
  if (cl->state >= CS_CLOSING)
    return;
  va_list ap;
  va_start(ap, fmt);
  set_err(cl, code, fmt, ap);
  va_end(ap);
  if (cl->is_mx && !cl->reported && cl->state == CS_SESSION &&
      code != TERN_ENOMEM) {
    /* this host failed before the session was ready: try the next */
    bool handshake = cl->st.tls && !cl->st.tls_ready;
    enum tern__mx_fail why = TERN__MXF_CONNECT;
    if (code == TERN_ETLS || handshake)
      why = TERN__MXF_TLS;
    else if (code == TERN_EPROTO)
      why = TERN__MXF_GREETING;
    attempt_fail(cl, why,
                 handshake || (code == TERN_ETLS && !cl->verify_failed));
    return;
  }
  report(cl, code);
  cl_close(cl);
}

static void reply_text(char *buf, size_t cap,
                       const struct tern_client_reply *r) {
  int n = snprintf(buf, cap, "%d", r->code);
  if (n < 0 || (size_t)n >= cap)
    return;
  if (r->enhanced && r->enhanced[0])
    n += snprintf(buf + n, cap - (size_t)n, " %s", r->enhanced);
  if ((size_t)n < cap && r->nlines > 0 && r->lines[0].len > 0) {
    int len = r->lines[0].len > 200 ? 200 : (int)r->lines[0].len;
    snprintf(buf + n, cap - (size_t)n, " %.*s", len, r->lines[0].ptr);
  }
}

static struct tern_client *client_of(struct tern_client_session *s) {
  return tern_client_session_notify_arg(s);
}

/* ---- the stream's adapter --------------------------------------------------- */

static void *c_session(void *arg) {
  return ((struct tern_client *)arg)->s;
}

static long c_feed(void *arg, const char *p, size_t n) {
  return tern_client_session_feed(((struct tern_client *)arg)->s, p, n);
}

/* The handshake is done: the certificate verdict, then SMTP goes on. */
static void mx_tls_ready(struct tern_client *cl);

static void c_tls_ready(void *arg) {
  struct tern_client *cl = arg;
  const char *why = NULL;
  bool ok = tern__tls_verify_result(cl->st.tls, &why);
  bool go = true;
  cl->info.tls_version = tern__tls_version(cl->st.tls);
  cl->info.tls_cipher = tern__tls_cipher(cl->st.tls);
  if (cl->is_mx) {
    mx_tls_ready(cl);
    return;
  }
  if (cl->opt.tls_verify) {
    if (cl->opt.verify)
      go = cl->opt.verify(cl, ok, ok ? NULL : why, cl->opt.ud);
    else
      go = ok;
  }
  if (!go) {
    fail(cl, TERN_ETLS, "TLS: certificate verify failed: %s", why);
    return;
  }
  cl->tls_trusted = cl->opt.tls_verify;
  cl->info.verified = cl->opt.tls_verify && ok ? "ca" : NULL;
  if (cl->url.scheme != TERN__SMTPS)
    tern_client_session_tls_started(cl->s); /* EHLO again */
}

static void c_written(void *arg, int status) {
  struct tern_client *cl = arg;
  if (cl->state >= CS_CLOSING) {
    maybe_done(cl);
    return;
  }
  if (cl->state != CS_SESSION)
    return; /* an mx: attempt being closed (its writes are cancelled) */
  if (status < 0) {
    fail(cl, TERN_ECLOSED, "write to %s: %s", cl->peer, uv_strerror(status));
    return;
  }
  if (cl->tmode == TM_BLOCK)
    restart_timer(cl);
  pump(cl);
}

static void c_fail(void *arg, enum tern__stream_err why, long code) {
  struct tern_client *cl = arg;
  switch (why) {
  case TERN__SE_WRITE:
    if (code)
      fail(cl, TERN_ECLOSED, "write to %s: %s", cl->peer,
           uv_strerror((int)code));
    else
      fail(cl, TERN_ECLOSED, "write to %s failed", cl->peer);
    break;
  case TERN__SE_FEED:
    fail(cl, code == TERN_ENOMEM ? TERN_ENOMEM : TERN_EPROTO,
         "protocol error from %s: %s", cl->peer, tern_strerror((int)code));
    break;
  case TERN__SE_FULL:
    fail(cl, TERN_EPROTO, "too much unread input from %s", cl->peer);
    break;
  case TERN__SE_TLS:
    if (code == TERN_ETLS) {
      fail(cl, TERN_ETLS, "TLS: %s", tern__tls_error(cl->st.tls));
      break;
    }
    /* fall through */
  case TERN__SE_NOMEM:
    fail(cl, TERN_ENOMEM, "out of memory");
    break;
  }
}

static void on_read(void *arg, ssize_t nread, const char *p);

static const struct tern__stream_ops client_ops = {
    .client = true,
    .session = c_session,
    .feed = c_feed,
    .feed_bits = TERN_CLIENT_WANT_READ,
    .read_bits = TERN_CLIENT_WANT_READ | TERN_CLIENT_READY, /* a 421 */
    .tls_bit = TERN_CLIENT_WANT_TLS,
    .close_bit = TERN_CLIENT_WANT_CLOSE,
    .write_bit = TERN_CLIENT_WANT_WRITE,
    .read = on_read,
    .tls_ready = c_tls_ready,
    .written = c_written,
    .fail = c_fail};



static int tls_start(struct tern_client *cl) {
  int rc;
  if (!cl->tls_ctx) {
    char e[256];
    rc = tern__tls_client_ctx_acquire(&cl->tls_ctx, cl->opt.ca_file,
                                      cl->opt.ca_dir, e, sizeof e);
    if (rc) {
      fail(cl, TERN_ETLS, "TLS: %s", e);
      return rc;
    }
  }
  struct tern__tls *t;
  rc = tern__tls_client_new(&t, cl->tls_ctx, cl->server_name);
  if (rc) {
    fail(cl, TERN_ETLS, "TLS: cannot start (%s)", tern_strerror(rc));
    return rc;
  }
  if (cl->is_mx && cl->tgt && cl->tgt->tls == TERN__MXT_DANE &&
      (rc = tern__tls_client_dane(t,
                                  cl->tgt->tlsa_base ? cl->tgt->tlsa_base
                                                     : cl->tgt->host,
                                  cl->tgt->tlsa,
                                  cl->tgt->ntlsa)) != 0) {
    tern__tls_free(t);
    cl->verify_failed = true;
    fail(cl, TERN_ETLS, "TLS: no usable TLSA record for %s",
         cl->tgt->host);
    return TERN_ETLS;
  }
  return tern__stream_tls_begin(&cl->st, t, true);
}

/* ---- timers ------------------------------------------------------------------- */

static unsigned ms_or(unsigned v, unsigned def) { return v ? v : def; }

static void on_timer(uv_timer_t *t) {
  struct tern_client *cl = t->data;
  const char *what = "a reply";
  switch (cl->tmode) {
  case TM_CONNECT:
    if (cl->state == CS_RESOLVING) {
      fail(cl, TERN_ETIMEDOUT, "resolve %s: timed out", cl->url.host);
      return;
    }
    if (cl->state == CS_CONNECTING) {
      set_errf(cl, TERN_ETIMEDOUT, "connect %s: timed out", cl->peer);
      /* next address: closing the handle cancels the connect */
      if (cl->h_open) { /* cancels the connect; then the next address */
        cl->h_open = false;
        cl->pending_cb++;
        uv_close(&cl->st.h.handle, on_attempt_closed);
      }
      return;
    }
    what = "the TLS handshake";
    break;
  case TM_BLOCK:
    what = "the server to take data";
    break;
  case TM_DATA:
    what = "the reply to the end of data";
    break;
  case TM_COMMAND:
    what = !cl->ready && cl->last_cmd == TERN_CMD_GREETING && !cl->st.tls_ready
               ? "the greeting or a reply"
               : "a reply";
    break;
  default:
    return;
  }
  cl->tmode = TM_NONE;
  fail(cl, TERN_ETIMEDOUT, "timed out waiting for %s from %s", what, cl->peer);
}

/* Pick the timer for the current phase and (re)start it. */
static void restart_timer(struct tern_client *cl) {
  unsigned ms = 0;
  enum cl_timer m = TM_NONE;
  if (!cl->timer_open || cl->state >= CS_CLOSING)
    return;
  if (cl->state == CS_RESOLVING && cl->is_mx) {
    m = TM_NONE; /* the resolver bounds its own queries */
  } else if (cl->state == CS_RESOLVING || cl->state == CS_CONNECTING) {
    m = TM_CONNECT;
    ms = ms_or(cl->opt.connect_timeout_ms, DEF_CONNECT_MS);
  } else if (cl->state == CS_SESSION && cl->s) {
    unsigned want = tern_client_session_want(cl->s);
    unsigned cmd = ms_or(cl->opt.command_timeout_ms, DEF_COMMAND_MS);
    if (cl->st.tls && !cl->st.tls_ready) {
      m = TM_COMMAND;
      ms = cmd;
    } else if (cl->st.writes && cl->in_data) {
      m = TM_BLOCK;
      ms = cmd < DEF_BLOCK_MS ? cmd : DEF_BLOCK_MS;
    } else if (cl->in_data && !(want & TERN_CLIENT_WANT_BODY) &&
               (want & TERN_CLIENT_WANT_READ)) {
      m = TM_DATA;
      ms = ms_or(cl->opt.data_timeout_ms, DEF_DATA_MS);
    } else if (cl->st.writes || ((want & TERN_CLIENT_WANT_READ) &&
                              !(want & TERN_CLIENT_WANT_BODY) &&
                              !(want & TERN_CLIENT_READY))) {
      m = TM_COMMAND;
      ms = cmd;
    }
  }
  /* A running timer of the same kind keeps running unless traffic
   * restarts it (callers that saw traffic set tmode = TM_NONE first). */
  if (m == cl->tmode && m != TM_NONE && uv_is_active((uv_handle_t *)&cl->timer))
    return;
  cl->tmode = (unsigned char)m;
  if (m == TM_NONE)
    uv_timer_stop(&cl->timer);
  else
    uv_timer_start(&cl->timer, on_timer, ms, 0);
}

/* Traffic moved: start the current phase's timer afresh. */
static void traffic(struct tern_client *cl) {
  if (cl->tmode != TM_CONNECT) {
    cl->tmode = TM_NONE;
    restart_timer(cl);
  }
}

/* ---- the body from a file descriptor -------------------------------------- */

static void fd_stop(struct tern_client *cl) {
  cl->fd_active = false;
  if (!cl->fs_busy) {
    free(cl->fbuf);
    cl->fbuf = NULL;
  }
}

static void fd_read_next(struct tern_client *cl);

static void on_fs_read(uv_fs_t *req) {
  struct tern_client *cl = req->data;
  ssize_t r = req->result;
  uv_fs_req_cleanup(req);
  cl->fs_busy = false;
  cl->pending_cb--;
  if (cl->fs_gen != cl->fd_gen && cl->state < CS_CLOSING && cl->fd_active) {
    /* a read for an earlier message: drop it, start the current one's */
    fd_read_next(cl);
    return;
  }
  if (cl->state >= CS_CLOSING || !cl->fd_active) {
    if (!cl->fd_active) {
      free(cl->fbuf);
      cl->fbuf = NULL;
    }
    maybe_done(cl);
    return;
  }
  if (r < 0) {
    fd_stop(cl);
    fail(cl, TERN_EIO, "reading the message: %s", uv_strerror((int)r));
    return;
  }
  if (r == 0) {
    cl->fs_eof = true;
  } else {
    cl->fb_off = 0;
    cl->fb_len = (size_t)r;
    if (cl->fd_seekable)
      cl->fd_off += r;
  }
  pump(cl);
}

static void fd_read_next(struct tern_client *cl) {
  uv_buf_t b = uv_buf_init(cl->fbuf, CL_FILE_CHUNK);
  cl->fsreq.data = cl;
  int r = uv_fs_read(cl->loop, &cl->fsreq, cl->fd, &b, 1,
                     cl->fd_seekable ? cl->fd_off : -1, on_fs_read);
  if (r < 0) {
    fd_stop(cl);
    fail(cl, TERN_EIO, "reading the message: %s", uv_strerror(r));
    return;
  }
  cl->fs_busy = true;
  cl->fs_gen = cl->fd_gen;
  cl->pending_cb++;
}

static void fd_pump(struct tern_client *cl) {
  if (!cl->fd_active || !cl->s || cl->state != CS_SESSION)
    return;
  unsigned want = tern_client_session_want(cl->s);
  while (cl->fb_off < cl->fb_len && (want & TERN_CLIENT_WANT_BODY)) {
    long n = tern_client_session_body(cl->s, cl->fbuf + cl->fb_off,
                                      cl->fb_len - cl->fb_off);
    if (n < 0) { /* the message failed: on_message_done has it */
      fd_stop(cl);
      return;
    }
    cl->fb_off += (size_t)n;
    want = tern_client_session_want(cl->s);
    if (n == 0)
      break;
  }
  if (cl->fb_off < cl->fb_len || cl->fs_busy)
    return;
  if (!cl->fs_eof) {
    fd_read_next(cl);
    return;
  }
  if (!(want & TERN_CLIENT_WANT_BODY))
    return; /* DATA not yet answered with 354 */
  fd_stop(cl);
  (void)tern_client_session_body_end(cl->s);
}

/* ---- the pump ------------------------------------------------------------------ */

static void update_reading(struct tern_client *cl);

static void pump(struct tern_client *cl) {
  if (!tern__stream_pump_begin(&cl->st))
    return;
  while (tern__stream_pump_turn(&cl->st)) {
    if (cl->next_pending && !cl->in_cb && cl->state == CS_SESSION) {
      attempt_close(cl);
      break;
    }
    if (cl->close_pending && !cl->in_cb) {
      cl->close_pending = false;
      cl_close(cl);
    }
    if (cl->state != CS_SESSION || !cl->s)
      break;
    if (tern__stream_step(&cl->st)) {
      tern__stream_pump_more(&cl->st); /* flushing made room for input */
      continue;
    }
    if (cl->state != CS_SESSION)
      break;
    unsigned want = tern_client_session_want(cl->s);
    if ((want & TERN_CLIENT_WANT_TLS) && !cl->st.tls &&
        !(want & TERN_CLIENT_WANT_WRITE)) {
      if (tls_start(cl) != 0)
        break;
    }
    fd_pump(cl);
    if (cl->state != CS_SESSION)
      break;
    if (tern__stream_session_over(&cl->st)) {
      if (!cl->reported)
        fail(cl, cl->err_code ? cl->err_code : TERN_ECLOSED, "%s",
             cl->err[0] ? cl->err : "connection closed");
      else
        cl_close(cl);
      break;
    }
  }
  if (cl->next_pending && !cl->in_cb && cl->state == CS_SESSION)
    attempt_close(cl);
  if (cl->close_pending && !cl->in_cb) {
    cl->close_pending = false;
    cl_close(cl);
  }
  if (cl->state == CS_SESSION) {
    update_reading(cl);
    restart_timer(cl);
  }
  tern__stream_pump_end(&cl->st);
}

static void update_reading(struct tern_client *cl) {
  tern__stream_set_reading(&cl->st, cl->state == CS_SESSION && !cl->st.eof &&
                                        cl->h_open && cl->s &&
                                        tern__stream_wants_read(&cl->st));
}

static void on_notify(struct tern_client_session *s, void *arg) {
  (void)s;
  pump(arg);
}

static void on_read(void *arg, ssize_t nread, const char *p) {
  struct tern_client *cl = arg;
  if (cl->state != CS_SESSION)
    return;
  if (nread < 0) {
    tern__stream_set_reading(&cl->st, false);
    cl->st.eof = true;
    if (nread != UV_EOF) {
      if (!cl->err[0] || cl->reported)
        set_errf(cl, TERN_ECLOSED, "read from %s: %s", cl->peer,
                 uv_strerror((int)nread));
    } else if (!cl->reported && !cl->err[0]) {
      set_errf(cl, TERN_ECLOSED, "%s closed the connection%s%s", cl->peer,
               cl->st.tls && !cl->st.tls_ready ? " during the TLS handshake"
                                               : "",
               cl->last_reply[0] ? " after: " : "");
      if (cl->last_reply[0]) {
        size_t used = strlen(cl->err);
        snprintf(cl->err + used, sizeof cl->err - used, "%s", cl->last_reply);
      }
    }
    if (cl->s)
      tern_client_session_eof(cl->s); /* a message in progress ends */
    pump(cl);
    /* nothing more can come from the server: close */
    if (cl->state == CS_SESSION) {
      if (!cl->reported)
        fail(cl, cl->err_code ? cl->err_code : TERN_ECLOSED, "%s", cl->err);
      else
        cl_close(cl);
    }
    return;
  }
  if (nread == 0)
    return;
  traffic(cl);
  tern__stream_received(&cl->st, p, (size_t)nread);
  pump(cl);
}

/* ---- session callbacks (the runtime's wrappers) --------------------------- */

static void w_on_reply(struct tern_client_session *c, enum tern_client_cmd cmd,
                       unsigned index, const struct tern_client_reply *r,
                       void *ud) {
  struct tern_client *cl = client_of(c);
  if (cl)
    cl->in_cb++;
  if (cl) {
    cl->last_cmd = cmd;
    reply_text(cl->last_reply, sizeof cl->last_reply, r);
    if (cmd == TERN_CMD_DATA && r->code == 354)
      cl->in_data = true;
    else if (cmd == TERN_CMD_BDAT)
      cl->in_data = true;
  }
  if (cl && cl->app.on_reply)
    cl->app.on_reply(c, cmd, index, r, ud);
  if (cl)
    cl->in_cb--;
}

static void w_on_ready(struct tern_client_session *c, void *ud) {
  struct tern_client *cl = client_of(c);
  if (cl)
    cl->in_cb++;
  bool first = cl && !cl->ready;
  if (first && cl->is_mx && cl->tgt && !cl->next_pending) {
    unsigned caps = tern_client_session_caps(c);
    if (cl->tgt->need_requiretls && !(caps & TERN_EXT_REQUIRETLS)) {
      /* RFC 8689 §4.2.1: QUIT and try another MX */
      set_errf(cl, TERN_ETLS, "%s does not offer REQUIRETLS", cl->peer);
      cl->quit_first = tern_client_session_quit(c) == 0;
      attempt_fail(cl, TERN__MXF_REQTLS, false);
    } else if (cl->tgt->sts_testing && !cl->st.tls && !cl->info_pf[0]) {
      snprintf(cl->info_pf, sizeof cl->info_pf, "%s",
               cl->tgt->clear ? "TLS handshake failed; sent in the clear"
                              : "STARTTLS not offered");
      cl->info.policy_failure = cl->info_pf;
    }
  }
  if (cl && cl->next_pending) {
    cl->in_cb--;
    return; /* this host will not do: not ready, the next is tried */
  }
  if (cl) {
    cl->ready = true;
    cl->in_data = false;
    tern__client_auth_end(&cl->auth);
  }
  if (cl && cl->app.on_ready)
    cl->app.on_ready(c, ud);
  if (first && cl->state == CS_SESSION)
    report(cl, 0);
  if (cl)
    cl->in_cb--;
}

static void w_on_message_done(struct tern_client_session *c,
                              const struct tern_client_outcome *o, void *ud) {
  struct tern_client *cl = client_of(c);
  if (cl)
    cl->in_cb++;
  if (cl) {
    cl->in_data = false;
    if (cl->fd_active)
      fd_stop(cl);
  }
  if (cl && cl->app.on_message_done)
    cl->app.on_message_done(c, o, ud);
  if (cl)
    cl->in_cb--;
}

static void w_on_error(struct tern_client_session *c, int err,
                       const struct tern_client_reply *r, void *ud) {
  struct tern_client *cl = client_of(c);
  if (cl)
    cl->in_cb++;
  char rt[300] = "";
  if (r)
    reply_text(rt, sizeof rt, r);
  if (cl) {
    switch (err) {
    case TERN_ETLS:
      if (r)
        set_errf(cl, err, "STARTTLS refused: %s", rt);
      else
        set_errf(cl, err, "server does not offer STARTTLS");
      break;
    case TERN_EAUTH:
      if (r && cl->auth.mech)
        set_errf(cl, err, "AUTH %s refused: %s", cl->auth.mech, rt);
      else if (r)
        set_errf(cl, err, "AUTH refused: %s", rt);
      else if (cl->opt.auth_user && !cl->auth.offered[0])
        set_errf(cl, err, "server does not offer AUTH");
      else if (cl->opt.auth_user && !cl->auth.mech)
        set_errf(cl, err,
                 "no usable AUTH mechanism (server offers \"%s\"%s)",
                 cl->auth.offered,
                 cl->tls_trusted || cl->opt.auth_insecure_ok
                     ? ""
                     : "; PLAIN and LOGIN need TLS");
      else
        set_errf(cl, err, "AUTH failed");
      break;
    case TERN_ECLOSED:
      if (r)
        set_errf(cl, err, "server closed the session: %s", rt);
      else if (!cl->err[0])
        set_errf(cl, err, "%s closed the connection", cl->peer);
      break;
    default:
      if (r) {
        const char *what = cl->last_cmd == TERN_CMD_GREETING ? "greeting"
                           : cl->last_cmd == TERN_CMD_EHLO   ? "EHLO"
                                                             : "reply";
        set_errf(cl, err, "%s refused: %s", what, rt);
      } else {
        set_errf(cl, err, "protocol error: %s", tern_strerror(err));
      }
    }
  }
  if (cl && cl->is_mx && !cl->reported && !cl->ready &&
      cl->state == CS_SESSION && err != TERN_ENOMEM) {
    /* before the session was ready: this host, not the connect, failed */
    enum tern__mx_fail why = TERN__MXF_GREETING;
    bool clear_ok = false;
    if (err == TERN_ETLS) {
      why = !r && cl->tgt && cl->tgt->need_requiretls ? TERN__MXF_REQTLS
                                                       : TERN__MXF_TLS;
      clear_ok = r != NULL; /* STARTTLS refused */
    } else if (err == TERN_ECLOSED && !r) {
      why = TERN__MXF_CONNECT;
    }
    if (cl->st.tls && !cl->st.tls_ready) { /* ended in the handshake */
      why = TERN__MXF_TLS;
      clear_ok = true;
    }
    attempt_fail(cl, why, clear_ok);
    cl->in_cb--;
    return;
  }
  if (cl && cl->app.on_error)
    cl->app.on_error(c, err, r, ud);
  if (cl && !cl->reported)
    report(cl, err); /* the session wants close now; pump closes */
  if (cl)
    cl->in_cb--;
}

static long w_on_auth(struct tern_client_session *c, struct tern_str challenge,
                      bool has_challenge, char *out, size_t cap, void *ud) {
  struct tern_client *cl = client_of(c);
  (void)ud;
  if (!cl)
    return TERN_EAUTH;
  return tern__client_auth_step(&cl->auth, cl->tls_trusted, challenge,
                                has_challenge, out, cap);
}

static const char *w_on_auth_mechanism(struct tern_client_session *c,
                                       const char *offered, bool tls,
                                       void *ud) {
  struct tern_client *cl = client_of(c);
  (void)ud;
  /* TLS whose certificate nobody checked is no safer than plaintext for
   * a password: it counts only when verified (tls_trusted). */
  return cl ? tern__client_auth_choose(&cl->auth, offered,
                                       tls && cl->tls_trusted)
            : NULL;
}

/* ---- connect ------------------------------------------------------------------ */

static void start_session(struct tern_client *cl) {
  struct tern_client_config cfg = cl->cfg;
  struct tern_client_callbacks cb = cl->app;
  cb.size = sizeof cb;
  cb.on_reply = w_on_reply;
  cb.on_ready = w_on_ready;
  cb.on_message_done = w_on_message_done;
  cb.on_error = w_on_error;
  if (cl->url.scheme == TERN__LMTP)
    cfg.lmtp = true;
  cfg.starttls = cl->starttls;
  if (cl->is_mx && cl->tgt) {
    switch (cl->tgt->tls) {
    case TERN__MXT_NONE:
      cfg.starttls = TERN_STARTTLS_OFF;
      break;
    case TERN__MXT_MAY:
      cfg.starttls = TERN_STARTTLS_OPPORTUNISTIC;
      break;
    case TERN__MXT_STS:
      cfg.starttls = cl->tgt->sts_testing ? TERN_STARTTLS_OPPORTUNISTIC
                                          : TERN_STARTTLS_REQUIRED;
      break;
    default: /* ENCRYPT, VERIFY, DANE: never in the clear */
      cfg.starttls = TERN_STARTTLS_REQUIRED;
      break;
    }
    if (cl->tgt->clear) /* MAY's retry after a failed handshake */
      cfg.starttls = TERN_STARTTLS_OFF;
  }
  if (cl->url.scheme == TERN__SMTPS) {
    cfg.tls_active = true;
    cfg.starttls = TERN_STARTTLS_OFF;
  }
  if (cl->opt.auth_user) {
    cfg.auth_required = true;
    cfg.auth_mechanism = NULL;
    cb.on_auth = w_on_auth;
    cb.on_auth_mechanism = w_on_auth_mechanism;
  }
  int rc = tern_client_session_new(&cl->s, &cfg, &cb, cl->opt.ud);
  if (rc) {
    cl->s = NULL;
    fail(cl, rc, "cannot create the session: %s", tern_strerror(rc));
    return;
  }
  tern_client_session_set_notify(cl->s, on_notify, cl);
  cl->state = CS_SESSION;
  cl->tmode = TM_NONE;
  if (cl->url.scheme == TERN__SMTPS && tls_start(cl) != 0)
    return;
  pump(cl);
}

static void try_next(struct tern_client *cl);
static void on_attempt_closed(uv_handle_t *h);

static void on_tcp_connect(uv_connect_t *req, int status) {
  struct tern_client *cl = req->data;
  cl->creq_pending = false;
  cl->pending_cb--;
  if (cl->state >= CS_CLOSING) {
    maybe_done(cl);
    return;
  }
  if (status == UV_ECANCELED)
    return; /* a timed-out attempt: on_attempt_closed goes on */
  if (status < 0) {
    set_errf(cl, TERN_ECONNECT, "connect %s: %s", cl->peer,
             uv_strerror(status));
    if (cl->h_open) { /* the next address once the handle is closed */
      cl->h_open = false;
      cl->pending_cb++;
      uv_close(&cl->st.h.handle, on_attempt_closed);
    }
    return;
  }
  if (!cl->url.is_unix)
    uv_tcp_nodelay(&cl->st.h.tcp, 1);
  if (cl->ai_list) {
    uv_freeaddrinfo(cl->ai_list);
    cl->ai_list = cl->ai_cur = NULL;
  }
  cl->err[0] = '\0';
  cl->err_code = 0;
  uv_timer_stop(&cl->timer);
  start_session(cl);
}

/* The previous attempt's handle is closed: try the next address. */
static void on_attempt_closed(uv_handle_t *h) {
  struct tern_client *cl = tern__stream_owner(h);
  cl->pending_cb--;
  if (cl->state >= CS_CLOSING) {
    maybe_done(cl);
    return;
  }
  if (cl->is_mx) {
    if (!cl->why_recorded) { /* the connect itself failed */
      char t[1100];
      snprintf(t, sizeof t, "%s[%s]: %s", cl->info_host, cl->info_addr,
               cl->err);
      tern__mx_failed(cl->mx, TERN__MXF_CONNECT, t);
    }
    attempt_reset(cl);
    mx_advance(cl);
    return;
  }
  if (cl->ai_cur)
    cl->ai_cur = cl->ai_cur->ai_next;
  try_next(cl);
}

/* Connect to `sa` (the host `host`), from the bind address of its
 * family; a failure goes on at on_attempt_closed. */
static void connect_addr(struct tern_client *cl, const struct sockaddr *sa,
                         const char *host) {
  char a[64] = "?";
  unsigned port = 0;
  if (sa->sa_family == AF_INET) {
    uv_ip4_name((const struct sockaddr_in *)sa, a, sizeof a);
    port = ntohs(((const struct sockaddr_in *)sa)->sin_port);
    snprintf(cl->peer, sizeof cl->peer, "%s:%u", a, port);
  } else {
    uv_ip6_name((const struct sockaddr_in6 *)sa, a, sizeof a);
    port = ntohs(((const struct sockaddr_in6 *)sa)->sin6_port);
    snprintf(cl->peer, sizeof cl->peer, "[%s]:%u", a, port);
  }
  cl->attempt++;
  snprintf(cl->info_host, sizeof cl->info_host, "%s", host);
  snprintf(cl->info_addr, sizeof cl->info_addr, "%s", a);
  memset(&cl->info, 0, sizeof cl->info);
  cl->info.host = cl->info_host;
  cl->info.addr = cl->info_addr;
  cl->info.port = port;
  cl->info.hosts_tried = cl->attempt;
  if (cl->is_mx && cl->tgt) {
    cl->info.policy = cl->tgt->policy;
    cl->info.hosts_tried = cl->tgt->tried;
    if (!cl->tgt->clear) /* the clear retry keeps the handshake's */
      snprintf(cl->info_pf, sizeof cl->info_pf, "%s",
               cl->tgt->policy_failure ? cl->tgt->policy_failure : "");
    cl->info.policy_failure = cl->info_pf[0] ? cl->info_pf : NULL;
  }
  if (uv_tcp_init(cl->loop, &cl->st.h.tcp) != 0) {
    fail(cl, TERN_ECONNECT, "connect %s: cannot create a socket", cl->peer);
    return;
  }
  cl->st.h.handle.data = &cl->st;
  cl->h_open = true;
  cl->creq.data = cl;
  const struct sockaddr *b = NULL;
  if (sa->sa_family == AF_INET && cl->has_bind4)
    b = (const struct sockaddr *)&cl->bind4;
  else if (sa->sa_family == AF_INET6 && cl->has_bind6)
    b = (const struct sockaddr *)&cl->bind6;
  int r = b ? uv_tcp_bind(&cl->st.h.tcp, b, 0) : 0;
  if (r != 0) {
    set_errf(cl, TERN_ECONNECT, "connect %s: bind to %s: %s", cl->peer,
             sa->sa_family == AF_INET ? cl->opt.bind_addr : cl->opt.bind_addr6,
             uv_strerror(r));
  } else {
    r = uv_tcp_connect(&cl->creq, &cl->st.h.tcp, sa, on_tcp_connect);
    if (r == 0) {
      cl->creq_pending = true;
      cl->pending_cb++;
      cl->tmode = TM_NONE;
      restart_timer(cl);
      return;
    }
    set_errf(cl, TERN_ECONNECT, "connect %s: %s", cl->peer, uv_strerror(r));
  }
  cl->h_open = false;
  cl->pending_cb++;
  uv_close(&cl->st.h.handle, on_attempt_closed);
}

static void try_next(struct tern_client *cl) {
  while (cl->ai_cur) {
    struct addrinfo *ai = cl->ai_cur;
    if (ai->ai_family != AF_INET && ai->ai_family != AF_INET6) {
      cl->ai_cur = ai->ai_next;
      continue;
    }
    connect_addr(cl, ai->ai_addr, cl->url.host);
    return;
  }
  fail(cl, cl->err_code ? cl->err_code : TERN_ECONNECT, "%s",
       cl->err[0] ? cl->err : "no address to connect to");
}

static void on_resolved(uv_getaddrinfo_t *req, int status,
                        struct addrinfo *res) {
  struct tern_client *cl = req->data;
  cl->gai_pending = false;
  cl->pending_cb--;
  if (cl->state >= CS_CLOSING) {
    if (res)
      uv_freeaddrinfo(res);
    maybe_done(cl);
    return;
  }
  if (status < 0 || !res) {
    if (res)
      uv_freeaddrinfo(res);
    fail(cl, TERN_ERESOLVE, "resolve %s: %s", cl->url.host,
         uv_strerror(status));
    return;
  }
  cl->ai_list = cl->ai_cur = res;
  cl->state = CS_CONNECTING;
  try_next(cl);
}

/* ---- mx: attempts --------------------------------------------------------------
 *
 * An "mx:DOMAIN" client makes one connection after another until one is
 * ready: the plan (mx.c) gives an address and its TLS; any failure
 * before the session is ready (connect, greeting, EHLO, STARTTLS, the
 * handshake, the certificate, REQUIRETLS not offered) is told to the
 * plan, the attempt's handle is closed, the session and stream are made
 * anew, and the plan gives the next address. on_connect is called once:
 * when a session is ready, or when no address is left (with
 * tern_client_failure_reply() set from the plan). After that the
 * client behaves as for any URL.
 */

static void set_failure(struct tern_client *cl, int code, const char *enh,
                        const char *text) {
  cl->has_failure = true;
  snprintf(cl->fail_enh, sizeof cl->fail_enh, "%s", enh ? enh : "");
  snprintf(cl->fail_text, sizeof cl->fail_text, "%s", text ? text : "");
  cl->failure.code = code;
  cl->failure.enhanced = cl->fail_enh[0] ? cl->fail_enh : NULL;
  cl->failure.text = cl->fail_text;
}

/* The current attempt failed (cl->err says how): tell the plan, then
 * close it, from outside the session's callbacks. `handshake`: TLS did
 * not come up (MAY and MTA-STS testing go on in the clear once). */
static void attempt_fail(struct tern_client *cl, enum tern__mx_fail why,
                         bool handshake) {
  if (cl->next_pending || cl->why_recorded)
    return;
  char t[1100];
  snprintf(t, sizeof t, "%s[%s]: %s", cl->info_host, cl->info_addr, cl->err);
  if (handshake && tern__mx_retry_clear(cl->mx, t)) {
    if (cl->tgt && cl->tgt->sts_testing)
      snprintf(cl->info_pf, sizeof cl->info_pf, "TLS failed: %s", cl->err);
  } else {
    tern__mx_failed(cl->mx, why, t);
  }
  cl->why_recorded = true;
  cl->next_pending = true;
  if (cl->in_cb || cl->st.in_pump) {
    tern__stream_pump_more(&cl->st);
    return;
  }
  attempt_close(cl);
}

static void attempt_close(struct tern_client *cl) {
  cl->next_pending = false;
  if (cl->quit_first) { /* best effort: what goes out now, no waiting */
    cl->quit_first = false;
    tern__stream_flush(&cl->st);
  }
  tern__stream_stop(&cl->st);
  cl->state = CS_CONNECTING;
  cl->tmode = TM_NONE;
  if (cl->timer_open)
    uv_timer_stop(&cl->timer);
  if (cl->h_open) {
    cl->h_open = false;
    cl->pending_cb++;
    uv_close(&cl->st.h.handle, on_attempt_closed);
  }
}

/* The attempt's handle is closed: a fresh session and stream. */
static void attempt_reset(struct tern_client *cl) {
  if (cl->s) {
    tern_client_session_set_notify(cl->s, NULL, NULL);
    tern_client_session_free(cl->s);
    cl->s = NULL;
  }
  tern__stream_free(&cl->st);
  tern__stream_init(&cl->st, &client_ops, cl, cl->sc);
  tern__client_auth_end(&cl->auth);
  cl->ready = cl->in_data = cl->tls_trusted = cl->quit_asked = false;
  cl->why_recorded = cl->verify_failed = cl->next_pending = false;
  cl->close_pending = false;
  cl->last_reply[0] = '\0';
  cl->last_cmd = TERN_CMD_GREETING;
}

static void mx_give_up(struct tern_client *cl) {
  struct tern_reply r;
  tern__mx_failure(cl->mx, &r);
  set_failure(cl, r.code, r.enhanced, r.text);
  const char *e = r.enhanced ? r.enhanced : "";
  int code = TERN_ECONNECT;
  if (!strcmp(e, "4.4.3") || !strncmp(e, "5.1.", 4))
    code = TERN_ERESOLVE;
  else if (!strncmp(e + 1, ".7.", 3))
    code = TERN_ETLS;
  else if (!strcmp(e, "4.4.2"))
    code = TERN_EPROTO;
  fail(cl, code, "%s", r.text);
}

static void mx_advance(struct tern_client *cl) {
  const struct tern__mx_target *t = NULL;
  int r = tern__mx_next(cl->mx, &t);
  if (r == 0) {
    cl->state = CS_RESOLVING;
    return; /* lookups: on_plan follows */
  }
  if (r < 0) {
    mx_give_up(cl);
    return;
  }
  cl->tgt = t;
  cl->server_name = t->host;
  cl->state = CS_CONNECTING;
  connect_addr(cl, (const struct sockaddr *)&t->addr, t->host);
}

static void on_plan(void *arg) {
  struct tern_client *cl = arg;
  if (cl->state == CS_RESOLVING)
    mx_advance(cl);
}

/* TLS is up with an MX host: the policy's verdict on its certificate. */
static void mx_tls_ready(struct tern_client *cl) {
  const char *v = NULL;
  char why[300];
  int r = tern__mx_tls_verdict(cl->tgt, cl->st.tls, &v, why, sizeof why);
  if (r < 0) { /* RFC 7672 §2.2, RFC 8461 §5: no plaintext fallback */
    cl->verify_failed = true;
    fail(cl, TERN_ETLS, "TLS: %s", why);
    return;
  }
  if (r > 0) { /* MTA-STS testing: reported, not fatal */
    snprintf(cl->info_pf, sizeof cl->info_pf, "%s", why);
    cl->info.policy_failure = cl->info_pf;
  }
  cl->info.verified = v;
  cl->tls_trusted = v != NULL;
  tern_client_session_tls_started(cl->s); /* EHLO again */
}

/* ---- close and free ----------------------------------------------------------- */

/* A handle of ours closed (the final close). */
static void on_handle_closed(uv_handle_t *h) {
  struct tern_client *cl = h->data;
  cl->pending_cb--;
  maybe_done(cl);
}

static void on_stream_closed(uv_handle_t *h) {
  struct tern_client *cl = tern__stream_owner(h);
  cl->pending_cb--;
  maybe_done(cl);
}

static void maybe_done(struct tern_client *cl) {
  if (cl->state != CS_CLOSING || cl->pending_cb || cl->st.writes)
    return;
  cl->state = CS_CLOSED;
  if (cl->opt.on_close)
    cl->opt.on_close(cl, cl->opt.ud); /* may free cl */
}

static void cl_close(struct tern_client *cl) {
  if (cl->state >= CS_CLOSING)
    return;
  if (cl->in_cb) { /* not from inside the session: pump() does it */
    cl->close_pending = true;
    tern__stream_pump_more(&cl->st);
    return;
  }
  if (cl->state == CS_NEW) {
    cl->state = CS_CLOSED;
    return;
  }
  if (cl->s && cl->state == CS_SESSION &&
      !(tern_client_session_want(cl->s) & TERN_CLIENT_WANT_CLOSE))
    tern_client_session_eof(cl->s); /* a message in progress ends */
  cl->state = CS_CLOSING;
  tern__stream_stop(&cl->st);
  tern__mx_cancel(cl->mx); /* no plan callback after this */
  if (cl->gai_pending)
    uv_cancel((uv_req_t *)&cl->gai);
  if (cl->fs_busy)
    uv_cancel((uv_req_t *)&cl->fsreq);
  if (cl->timer_open) {
    cl->timer_open = false;
    uv_timer_stop(&cl->timer);
    cl->pending_cb++;
    uv_close((uv_handle_t *)&cl->timer, on_handle_closed);
  }
  if (cl->h_open) {
    cl->h_open = false;
    cl->pending_cb++;
    uv_close(&cl->st.h.handle, on_stream_closed);
  }
  maybe_done(cl);
}

/* ---- public API --------------------------------------------------------------- */

static char *dup_opt(struct tern_client *cl, unsigned *k, const char *s,
                     bool *oom) {
  if (!s)
    return NULL;
  size_t n = strlen(s) + 1;
  char *d = malloc(n);
  if (!d) {
    *oom = true;
    return NULL;
  }
  memcpy(d, s, n);
  cl->strs[(*k)++] = d;
  return d;
}

/* Copy the options, their structs and strings into cl; no pointer in
 * cl is the caller's afterwards (tern_client_free() undoes a failure). */
static int copy_options(struct tern_client *cl,
                        const struct tern_client_options *o) {
  bool oom = false;
  unsigned k = 0;
  tern_client_options_init(&cl->opt);
  tern_client_config_init(&cl->cfg);
  tern_client_callbacks_init(&cl->app);
  if (tern__copy_sized(&cl->opt, sizeof cl->opt, o) != 0 ||
      (cl->opt.session &&
       tern__copy_sized(&cl->cfg, sizeof cl->cfg, cl->opt.session) != 0) ||
      (cl->opt.callbacks &&
       tern__copy_sized(&cl->app, sizeof cl->app, cl->opt.callbacks) != 0)) {
    memset(&cl->opt, 0, sizeof cl->opt); /* the caller's strings */
    return TERN_EINVAL;
  }
  cl->opt.session = NULL; /* cl->cfg */
  cl->opt.callbacks = NULL; /* cl->app */
  cl->opt.url = dup_opt(cl, &k, cl->opt.url, &oom);
  cl->opt.ca_file = dup_opt(cl, &k, cl->opt.ca_file, &oom);
  cl->opt.ca_dir = dup_opt(cl, &k, cl->opt.ca_dir, &oom);
  cl->opt.tls_server_name = dup_opt(cl, &k, cl->opt.tls_server_name, &oom);
  cl->opt.auth_user = dup_opt(cl, &k, cl->opt.auth_user, &oom);
  cl->opt.auth_password = dup_opt(cl, &k, cl->opt.auth_password, &oom);
  cl->opt.auth_token = dup_opt(cl, &k, cl->opt.auth_token, &oom);
  cl->opt.auth_authzid = dup_opt(cl, &k, cl->opt.auth_authzid, &oom);
  cl->opt.auth_mechanisms = dup_opt(cl, &k, cl->opt.auth_mechanisms, &oom);
  cl->cfg.ehlo_name = dup_opt(cl, &k, cl->cfg.ehlo_name, &oom);
  cl->opt.bind_addr = dup_opt(cl, &k, cl->opt.bind_addr, &oom);
  cl->opt.bind_addr6 = dup_opt(cl, &k, cl->opt.bind_addr6, &oom);
  if (cl->opt.nself_addrs) {
    size_t n = cl->opt.nself_addrs;
    if (!cl->opt.self_addrs || n > SIZE_MAX / sizeof *cl->self) {
      cl->opt.self_addrs = NULL;
      return TERN_EINVAL;
    }
    cl->self = malloc(n * sizeof *cl->self);
    if (cl->self) {
      memcpy(cl->self, cl->opt.self_addrs, n * sizeof *cl->self);
      cl->nself = n;
    } else {
      oom = true;
    }
  }
  cl->opt.self_addrs = cl->self; /* never the caller's */
  cl->opt.nself_addrs = cl->nself;
  cl->auth.p.user = cl->opt.auth_user;
  cl->auth.p.password = cl->opt.auth_password;
  cl->auth.p.token = cl->opt.auth_token;
  cl->auth.p.authzid = cl->opt.auth_authzid;
  cl->auth.p.insecure_ok = cl->opt.auth_insecure_ok;
  cl->auth.prefs = cl->opt.auth_mechanisms;
  return oom ? TERN_ENOMEM : 0;
}

/* Everything tern_client_new() does after allocating. */
static int client_setup(struct tern_client *cl,
                        const struct tern_client_options *o) {
  if (!cl->sc)
    return TERN_ENOMEM;
  int rc = copy_options(cl, o);
  if (rc)
    return rc;
  if (cl->opt.tls_policy < TERN_TLS_POLICY_AUTO ||
      cl->opt.tls_policy > TERN_TLS_POLICY_DANE || cl->opt.mx_port > 65535)
    return TERN_EINVAL;
  if (cl->opt.bind_addr) {
    if (uv_ip4_addr(cl->opt.bind_addr, 0, &cl->bind4) != 0)
      return TERN_EINVAL;
    cl->has_bind4 = true;
  }
  if (cl->opt.bind_addr6) {
    if (uv_ip6_addr(cl->opt.bind_addr6, 0, &cl->bind6) != 0)
      return TERN_EINVAL;
    cl->has_bind6 = true;
  }
  if (cl->opt.url && !strncmp(cl->opt.url, "mx:", 3)) {
    if (tern__mx_domain(cl->opt.url + 3, cl->url.host, sizeof cl->url.host) != 0)
      return TERN_EINVAL;
    cl->is_mx = true;
    cl->url.scheme = TERN__SMTP;
    cl->url.port = cl->opt.mx_port ? (int)cl->opt.mx_port : 25;
    snprintf(cl->peer, sizeof cl->peer, "%s", cl->opt.url);
    cl->starttls = TERN_STARTTLS_OPPORTUNISTIC; /* the policy decides */
    return 0; /* CA files: when TLS first starts (VERIFY, MTA-STS) */
  }
  if (!cl->opt.url || tern__url_parse(cl->opt.url, &cl->url) != 0 ||
      (!cl->url.is_unix && !strcmp(cl->url.host, "*")))
    return TERN_EINVAL;
  snprintf(cl->peer, sizeof cl->peer, "%s", cl->opt.url);

  /* the STARTTLS floor from the URL (see the top of the file) */
  enum tern_starttls floor = TERN_STARTTLS_OFF;
  if (cl->url.scheme == TERN__SMTP && !cl->url.is_unix)
    floor = TERN_STARTTLS_OPPORTUNISTIC;
  else if (cl->url.scheme == TERN__SMTP_STARTTLS)
    floor = TERN_STARTTLS_REQUIRED;
  cl->starttls = cl->cfg.starttls > floor ? cl->cfg.starttls : floor;

  if (cl->opt.tls_server_name)
    cl->server_name = cl->opt.tls_server_name;
  else if (!cl->url.is_unix)
    cl->server_name = cl->url.host;

  /* CA files the app named are read now, so a bad path fails here; the
   * system store is loaded (once per process) when TLS first starts. */
  if (cl->opt.ca_file || cl->opt.ca_dir) {
    char e[400];
    return tern__tls_client_ctx_acquire(&cl->tls_ctx, cl->opt.ca_file,
                                        cl->opt.ca_dir, e, sizeof e);
  }
  return 0;
}

int tern_client_new(struct tern_client **out, uv_loop_t *loop,
                    const struct tern_client_options *o) {
  if (out)
    *out = NULL;
  if (!out || !loop || !o)
    return TERN_EINVAL;
  struct tern_client *cl = calloc(1, sizeof *cl);
  if (!cl)
    return TERN_ENOMEM;
  cl->loop = loop;
  cl->sc = tern__scratch_acquire(loop);
  tern__stream_init(&cl->st, &client_ops, cl, cl->sc);
  int rc = client_setup(cl, o);
  if (rc) {
    tern_client_free(cl);
    return rc;
  }
  *out = cl;
  return 0;
}

/* Start an mx: client: the resolver (our own when none was given), the
 * plan, its lookups. */
static void mx_connect(struct tern_client *cl) {
  struct tern_resolver *r = cl->opt.resolver;
  int rc = 0;
  cl->state = CS_RESOLVING;
  if (!r) {
    struct tern_resolver_options ro;
    tern_resolver_options_init(&ro);
    rc = tern_resolver_new(&cl->own_res, cl->loop, &ro);
    if (rc) {
      char t[400];
      snprintf(t, sizeof t, "cannot make a resolver: %s",
               tern_resolver_last_error(NULL));
      set_failure(cl, 451, "4.4.3", t);
      fail(cl, TERN_ERESOLVE, "%s", t);
      return;
    }
    r = cl->own_res;
  }
  rc = tern__mx_new(&cl->mx, r, cl->url.host, cl->opt.tls_policy,
                    cl->opt.require_verified_tls, (unsigned)cl->url.port,
                    on_plan, cl);
  if (rc) {
    set_failure(cl, 451, "4.3.0", "out of memory");
    fail(cl, rc, "out of memory");
    return;
  }
  tern__mx_set_self(cl->mx, cl->self, cl->nself);
  if (tern__mx_start(cl->mx) != 0)
    mx_give_up(cl);
}

int tern_client_connect(struct tern_client *cl) {
  if (!cl || cl->state != CS_NEW)
    return TERN_ESTATE;
  if (uv_timer_init(cl->loop, &cl->timer) != 0)
    return TERN_EIO;
  cl->timer.data = cl;
  cl->timer_open = true;
  if (cl->is_mx) {
    mx_connect(cl);
    return 0;
  }
  if (cl->url.is_unix) {
    snprintf(cl->peer, sizeof cl->peer, "%s", cl->url.path);
    snprintf(cl->info_host, sizeof cl->info_host, "%s", cl->url.path);
    cl->info.host = cl->info_host;
    cl->info.hosts_tried = 1;
    if (uv_pipe_init(cl->loop, &cl->st.h.pipe, 0) != 0) {
      cl->state = CS_CONNECTING;
      fail(cl, TERN_ECONNECT, "connect %s: cannot create a socket", cl->peer);
      return 0;
    }
    cl->st.h.handle.data = &cl->st;
    cl->h_open = true;
    cl->creq.data = cl;
    cl->state = CS_CONNECTING;
    uv_pipe_connect(&cl->creq, &cl->st.h.pipe, cl->url.path, on_tcp_connect);
    cl->creq_pending = true;
    cl->pending_cb++;
    restart_timer(cl);
    return 0;
  }
  char port[8];
  struct addrinfo hints;
  memset(&hints, 0, sizeof hints);
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_protocol = IPPROTO_TCP;
  snprintf(port, sizeof port, "%d", cl->url.port);
  cl->gai.data = cl;
  cl->state = CS_RESOLVING;
  int r = uv_getaddrinfo(cl->loop, &cl->gai, on_resolved, cl->url.host, port,
                         &hints);
  if (r != 0) {
    fail(cl, TERN_ERESOLVE, "resolve %s: %s", cl->url.host, uv_strerror(r));
    return 0;
  }
  cl->gai_pending = true;
  cl->pending_cb++;
  restart_timer(cl);
  return 0;
}

struct tern_client_session *tern_client_get_session(struct tern_client *cl) {
  return cl ? cl->s : NULL;
}

int tern_client_send_fd(struct tern_client *cl, int fd) {
  if (!cl || !cl->s || cl->state != CS_SESSION || cl->fd_active || fd < 0)
    return TERN_ESTATE;
  unsigned want = tern_client_session_want(cl->s);
  if (want & (TERN_CLIENT_READY | TERN_CLIENT_WANT_CLOSE))
    return TERN_ESTATE; /* no message waiting for a body */
  if (!cl->fbuf && !(cl->fbuf = malloc(CL_FILE_CHUNK)))
    return TERN_ENOMEM;
  off_t pos = lseek(fd, 0, SEEK_CUR);
  cl->fd = fd;
  cl->fd_seekable = pos >= 0;
  cl->fd_off = pos >= 0 ? (int64_t)pos : 0;
  cl->fd_active = true;
  cl->fd_gen++;
  cl->fs_eof = false;
  cl->fb_off = cl->fb_len = 0;
  if (!cl->fs_busy)
    fd_read_next(cl);
  return 0;
}

void tern_client_close(struct tern_client *cl) {
  if (!cl || cl->state >= CS_CLOSING)
    return;
  if (cl->state == CS_NEW) {
    cl->state = CS_CLOSED;
    return;
  }
  if (cl->state == CS_SESSION && cl->s && cl->ready && !cl->quit_asked &&
      !(tern_client_session_want(cl->s) & TERN_CLIENT_WANT_CLOSE)) {
    cl->quit_asked = true;
    if (tern_client_session_quit(cl->s) == 0) {
      pump(cl);
      return;
    }
  }
  if (!cl->reported) {
    set_errf(cl, TERN_ECLOSED, "closed by the application");
    report(cl, TERN_ECLOSED);
  }
  cl_close(cl);
}

void tern_client_free(struct tern_client *cl) {
  if (!cl)
    return;
  if (cl->s) {
    tern_client_session_set_notify(cl->s, NULL, NULL);
    tern_client_session_free(cl->s);
  }
  tern__client_auth_end(&cl->auth);
  tern__stream_free(&cl->st);
  tern__scratch_release(cl->sc);
  tern__tls_client_ctx_release(cl->tls_ctx);
  if (cl->ai_list)
    uv_freeaddrinfo(cl->ai_list);
  tern__mx_free(cl->mx);
  free(cl->self);
  if (cl->own_res)
    tern_resolver_free(cl->own_res);
  free(cl->fbuf);
  for (size_t i = 0; i < sizeof cl->strs / sizeof cl->strs[0]; i++) {
    if (cl->strs[i]) {
      explicit_bzero(cl->strs[i], strlen(cl->strs[i]));
      free(cl->strs[i]);
    }
  }
  free(cl);
}

const char *tern_client_last_error(const struct tern_client *cl) {
  if (!cl)
    return "no client";
  return cl->err[0] ? cl->err : "no error";
}

const char *tern_client_tls_version(const struct tern_client *cl) {
  return cl && cl->st.tls && cl->st.tls_ready ? tern__tls_version(cl->st.tls)
                                              : NULL;
}

void *tern_client_userdata(const struct tern_client *cl) {
  return cl ? cl->opt.ud : NULL;
}

const struct tern_client_conn_info *
tern_client_conn_info(const struct tern_client *cl) {
  return cl ? &cl->info : NULL;
}

/* The reply for a failed connect to a URL naming one host. */
static void plain_failure(struct tern_client *cl) {
  int code;
  const char *enh = tern__mx_error_reply(cl->err_code, cl->s != NULL, &code);
  set_failure(cl, code, enh, cl->err[0] ? cl->err : "connection failed");
}

bool tern_client_failure_reply(const struct tern_client *cl,
                               struct tern_reply *out) {
  struct tern_client *c = (struct tern_client *)cl; /* its own buffers */
  if (!cl || !out)
    return false;
  if (!c->has_failure) {
    if (!c->err_code) {
      out->code = 0;
      out->enhanced = NULL;
      out->text = "";
      return false;
    }
    plain_failure(c);
  }
  *out = c->failure;
  return c->failure.code >= 500;
}
