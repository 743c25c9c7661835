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
 * As in conn.c, pump() is the one place that moves things along: feed
 * held input, flush output, start TLS when the session asks, push the
 * body of tern_client_send_fd(), close when the session is done, and
 * turn reading on or off (a session that awaits no reply is not read
 * for). Memory is freed only once every handle is closed and every
 * request (getaddrinfo, connect, file read, write) has called back.
 *
 * STARTTLS policy from the URL (docs: "client runtime"). The level the
 * URL asks for is a floor: smtp:// = OPPORTUNISTIC, smtp+starttls:// =
 * REQUIRED, smtps:// = implicit TLS (STARTTLS off, tls_active), lmtp://
 * = OFF; a higher level in options.session.starttls wins (the runtime
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
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tern/net.h"

#include "sasl_internal.h"
#include "tls.h"
#include "url.h"

#define CL_READ_SIZE 65536
#define CL_HELD_MAX (4 * CL_READ_SIZE)
#define CL_WRITE_HIGH (256 * 1024)
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

/* Scratch buffers for reads, decrypted plaintext and ciphertext out:
 * one set per thread (all calls for a client run on its loop's thread;
 * the data is consumed before the function returns). */
static _Thread_local char t_rbuf[CL_READ_SIZE];
static _Thread_local char t_pbuf[CL_READ_SIZE];
static _Thread_local char t_wbuf[CL_READ_SIZE];

struct tern_client {
  uv_loop_t *loop;
  struct tern_client_options opt; /* copy; strings point into `strs` */
  struct tern_client_callbacks app; /* the application's callbacks */
  char *strs[16];                 /* owned copies of the option strings */
  struct tern__url url;
  const char *server_name;        /* for SNI / verification, or NULL */
  struct tern__tls_client_ctx *tls_ctx;
  enum tern_starttls starttls;    /* effective policy */

  union {
    uv_tcp_t tcp;
    uv_pipe_t pipe;
    uv_handle_t handle;
    uv_stream_t stream;
  } h;
  bool h_open;                    /* h initialised and not yet closed */
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
  struct tern__tls *tls;
  bool tls_ready, tls_closed;
  struct tern__sasl_client *sasl;
  const char *auth_mech;          /* chosen (static name) */
  bool auth_none;                 /* on_auth_mechanism found none */
  char offered[256];              /* mechanisms the server offered */

  enum cl_state state;
  bool reported;                  /* on_connect called */
  bool ready;                     /* first on_ready seen */
  bool reading, in_pump, again, eof;
  bool quit_asked;
  bool in_data;                   /* 354 seen, final reply not yet */
  unsigned writes;                /* uv_write requests in flight */
  size_t writing;
  unsigned pending_cb;            /* writes + fs reads + connect etc. */
  unsigned in_cb;                 /* inside a session callback */
  bool close_pending;             /* cl_close() asked from a callback */

  char *in;                       /* plaintext the session did not take */
  size_t in_len, in_cap;

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
};

struct cl_wreq {
  uv_write_t req;
  struct tern_client *cl;
  size_t len;
  char data[];
};

static void pump(struct tern_client *cl);
static void cl_close(struct tern_client *cl);
static void fail(struct tern_client *cl, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void restart_timer(struct tern_client *cl);
static void maybe_done(struct tern_client *cl);
static void on_attempt_closed(uv_handle_t *h);

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

/* ---- writing ---------------------------------------------------------------- */

static void on_write(uv_write_t *req, int status) {
  struct cl_wreq *r = (struct cl_wreq *)req;
  struct tern_client *cl = r->cl;
  cl->writes--;
  cl->writing -= r->len;
  cl->pending_cb--;
  free(r);
  if (cl->state >= CS_CLOSING) {
    maybe_done(cl);
    return;
  }
  if (status < 0) {
    fail(cl, TERN_ECLOSED, "write to %s: %s", cl->peer, uv_strerror(status));
    return;
  }
  if (cl->tmode == TM_BLOCK)
    restart_timer(cl);
  pump(cl);
}

static void send_raw(struct tern_client *cl, const char *p, size_t n) {
  if (cl->state != CS_SESSION || n == 0)
    return;
  if (!cl->writes) {
    uv_buf_t b = uv_buf_init((char *)p, (unsigned)n);
    int r = uv_try_write(&cl->h.stream, &b, 1);
    if (r == (int)n)
      return;
    if (r > 0) {
      p += r;
      n -= (size_t)r;
    } else if (r != UV_EAGAIN) {
      fail(cl, TERN_ECLOSED, "write to %s: %s", cl->peer, uv_strerror(r));
      return;
    }
  }
  struct cl_wreq *q = malloc(sizeof *q + n);
  if (!q) {
    fail(cl, TERN_ENOMEM, "out of memory");
    return;
  }
  q->cl = cl;
  q->len = n;
  memcpy(q->data, p, n);
  uv_buf_t b = uv_buf_init(q->data, (unsigned)n);
  if (uv_write(&q->req, &cl->h.stream, &b, 1, on_write) != 0) {
    free(q);
    fail(cl, TERN_ECLOSED, "write to %s failed", cl->peer);
    return;
  }
  cl->writes++;
  cl->writing += n;
  cl->pending_cb++;
}

static void tls_flush(struct tern_client *cl) {
  size_t n;
  while (cl->tls && cl->state == CS_SESSION &&
         (n = tern__tls_output(cl->tls, t_wbuf, sizeof t_wbuf)) > 0)
    send_raw(cl, t_wbuf, n);
}

static void flush_session(struct tern_client *cl) {
  const char *p;
  size_t n;
  /* Nothing goes out in the clear once TLS is asked for, nor before an
   * implicit-TLS handshake (and its verification) is done. */
  if (cl->tls && !cl->tls_ready)
    return;
  while (cl->s && cl->state == CS_SESSION && cl->writing < CL_WRITE_HIGH &&
         (n = tern_client_session_output(cl->s, &p)) > 0) {
    if (cl->tls) {
      long t = tern__tls_write(cl->tls, p, n);
      if (t < 0) {
        fail(cl, TERN_ETLS, "TLS: %s", tern__tls_error(cl->tls));
        return;
      }
      tern_client_session_consume(cl->s, (size_t)t);
      tls_flush(cl);
      if (!t)
        break;
    } else {
      send_raw(cl, p, n);
      tern_client_session_consume(cl->s, n);
    }
  }
}

/* ---- reading ---------------------------------------------------------------- */

static bool hold(struct tern_client *cl, const char *p, size_t n) {
  if (cl->in_len + n > CL_HELD_MAX)
    return false;
  if (cl->in_len + n > cl->in_cap) {
    size_t cap = cl->in_len + n < CL_READ_SIZE ? CL_READ_SIZE : cl->in_len + n;
    char *b = realloc(cl->in, cap);
    if (!b)
      return false;
    cl->in = b;
    cl->in_cap = cap;
  }
  memmove(cl->in + cl->in_len, p, n);
  cl->in_len += n;
  return true;
}

static void feed_err(struct tern_client *cl, long r) {
  fail(cl, r == TERN_ENOMEM ? TERN_ENOMEM : TERN_EPROTO,
       "protocol error from %s: %s", cl->peer, tern_strerror((int)r));
}

static void input(struct tern_client *cl, const char *p, size_t n) {
  if (cl->in_len) {
    if (!hold(cl, p, n))
      fail(cl, TERN_EPROTO, "too much unread input from %s", cl->peer);
    return;
  }
  while (n && cl->s && cl->state == CS_SESSION &&
         (tern_client_session_want(cl->s) & TERN_CLIENT_WANT_READ)) {
    long r = tern_client_session_feed(cl->s, p, n);
    if (r < 0) {
      feed_err(cl, r);
      return;
    }
    p += r;
    n -= (size_t)r;
    flush_session(cl);
    if (!r)
      break;
  }
  if (cl->s && (tern_client_session_want(cl->s) & TERN_CLIENT_WANT_TLS))
    return; /* RFC 3207 §4.2: plaintext after the 220 is discarded */
  if (n && cl->state == CS_SESSION && !hold(cl, p, n))
    fail(cl, TERN_EPROTO, "too much unread input from %s", cl->peer);
}

static void feed_held(struct tern_client *cl) {
  while (cl->in_len && cl->s && cl->state == CS_SESSION &&
         (tern_client_session_want(cl->s) & TERN_CLIENT_WANT_READ)) {
    long r = tern_client_session_feed(cl->s, cl->in, cl->in_len);
    if (r < 0) {
      feed_err(cl, r);
      return;
    }
    memmove(cl->in, cl->in + r, cl->in_len - (size_t)r);
    cl->in_len -= (size_t)r;
    flush_session(cl);
    if (!r)
      break;
  }
  if (cl->s && (tern_client_session_want(cl->s) & TERN_CLIENT_WANT_TLS))
    cl->in_len = 0;
  if (!cl->in_len && cl->in) {
    free(cl->in);
    cl->in = NULL;
    cl->in_cap = 0;
  }
}

/* The handshake is done: the certificate verdict, then SMTP goes on. */
static void tls_up(struct tern_client *cl) {
  const char *why = NULL;
  bool ok = tern__tls_verify_result(cl->tls, &why);
  bool go = true;
  cl->tls_ready = true;
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
  if (cl->url.scheme != TERN__SMTPS)
    tern_client_session_tls_started(cl->s); /* EHLO again */
}

static void tls_pull(struct tern_client *cl) {
  while (cl->tls && cl->state == CS_SESSION && !cl->in_len) {
    long r = tern__tls_read(cl->tls, t_pbuf, sizeof t_pbuf);
    tls_flush(cl);
    if (!cl->tls_ready && tern__tls_handshake_done(cl->tls)) {
      tls_up(cl);
      if (cl->state != CS_SESSION)
        return;
      flush_session(cl);
    }
    if (r > 0) {
      input(cl, t_pbuf, (size_t)r);
      continue;
    }
    if (r == TERN_ECLOSED) {
      cl->eof = true;
    } else if (r < 0) {
      fail(cl, TERN_ETLS, "TLS: %s", tern__tls_error(cl->tls));
    }
    return;
  }
}

/* Everything already received goes to the session before the socket is
 * read again: held input first, then the records the TLS engine holds
 * (they raise no read event of their own; see conn.c feed_input()). */
static void feed_input(struct tern_client *cl) {
  for (;;) {
    feed_held(cl);
    if (cl->in_len || cl->state != CS_SESSION || !cl->s || !cl->tls ||
        !cl->tls_ready)
      return;
    tls_pull(cl);
    if (!cl->in_len || cl->state != CS_SESSION || !cl->s ||
        !(tern_client_session_want(cl->s) & TERN_CLIENT_WANT_READ))
      return;
  }
}

/*
 * Client TLS contexts are shared by every connection with the same CA
 * settings: loading the system CA store costs tens of milliseconds, far
 * too much per connection. SSL_CTX is safe to share between threads.
 */
struct shared_ctx {
  char *ca_file, *ca_dir;           /* the key (NULL = system store) */
  struct tern__tls_client_ctx *ctx;
  unsigned refs;
  struct shared_ctx *next;
};
static uv_once_t ctx_once = UV_ONCE_INIT;
static uv_mutex_t ctx_lock;
static struct shared_ctx *ctx_list;

static void ctx_lock_init(void) { uv_mutex_init(&ctx_lock); }

static bool same(const char *a, const char *b) {
  return a == b || (a && b && !strcmp(a, b));
}

static int ctx_acquire(const char *ca_file, const char *ca_dir,
                       struct tern__tls_client_ctx **out, char *err,
                       size_t cap) {
  struct shared_ctx *e;
  int rc = 0;
  uv_once(&ctx_once, ctx_lock_init);
  uv_mutex_lock(&ctx_lock);
  for (e = ctx_list; e; e = e->next)
    if (same(e->ca_file, ca_file) && same(e->ca_dir, ca_dir))
      break;
  if (!e && (e = calloc(1, sizeof *e)) != NULL) {
    e->ca_file = ca_file ? strdup(ca_file) : NULL;
    e->ca_dir = ca_dir ? strdup(ca_dir) : NULL;
    rc = tern__tls_client_ctx_new(&e->ctx, ca_file, ca_dir, err, cap);
    if (rc || (ca_file && !e->ca_file) || (ca_dir && !e->ca_dir)) {
      tern__tls_client_ctx_free(e->ctx);
      free(e->ca_file);
      free(e->ca_dir);
      free(e);
      e = NULL;
      if (!rc) {
        snprintf(err, cap, "out of memory");
        rc = TERN_ENOMEM;
      }
    } else {
      e->next = ctx_list;
      ctx_list = e;
    }
  } else if (!e) {
    snprintf(err, cap, "out of memory");
    rc = TERN_ENOMEM;
  }
  if (e) {
    e->refs++;
    *out = e->ctx;
  }
  uv_mutex_unlock(&ctx_lock);
  return rc;
}

static void ctx_release(struct tern__tls_client_ctx *ctx) {
  if (!ctx)
    return;
  uv_mutex_lock(&ctx_lock);
  for (struct shared_ctx **pp = &ctx_list; *pp; pp = &(*pp)->next) {
    struct shared_ctx *e = *pp;
    if (e->ctx != ctx)
      continue;
    if (--e->refs == 0) {
      *pp = e->next;
      tern__tls_client_ctx_free(e->ctx);
      free(e->ca_file);
      free(e->ca_dir);
      free(e);
    }
    break;
  }
  uv_mutex_unlock(&ctx_lock);
}

static int tls_start(struct tern_client *cl) {
  int rc;
  if (!cl->tls_ctx) {
    char e[256];
    rc = ctx_acquire(cl->opt.ca_file, cl->opt.ca_dir, &cl->tls_ctx, e,
                     sizeof e);
    if (rc) {
      fail(cl, TERN_ETLS, "TLS: %s", e);
      return rc;
    }
  }
  rc = tern__tls_client_new(&cl->tls, cl->tls_ctx, cl->server_name);
  if (rc) {
    fail(cl, TERN_ETLS, "TLS: cannot start (%s)", tern_strerror(rc));
    return rc;
  }
  cl->in_len = 0; /* RFC 3207 §4.2 */
  long r = tern__tls_read(cl->tls, t_pbuf, 0); /* ClientHello */
  if (r < 0) {
    fail(cl, TERN_ETLS, "TLS: %s", tern__tls_error(cl->tls));
    return TERN_ETLS;
  }
  tls_flush(cl);
  return 0;
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
        uv_close(&cl->h.handle, on_attempt_closed);
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
    what = !cl->ready && cl->last_cmd == TERN_CMD_GREETING && !cl->tls_ready
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
  if (cl->state == CS_RESOLVING || cl->state == CS_CONNECTING) {
    m = TM_CONNECT;
    ms = ms_or(cl->opt.connect_timeout_ms, DEF_CONNECT_MS);
  } else if (cl->state == CS_SESSION && cl->s) {
    unsigned want = tern_client_session_want(cl->s);
    unsigned cmd = ms_or(cl->opt.command_timeout_ms, DEF_COMMAND_MS);
    if (cl->tls && !cl->tls_ready) {
      m = TM_COMMAND;
      ms = cmd;
    } else if (cl->writes && cl->in_data) {
      m = TM_BLOCK;
      ms = cmd < DEF_BLOCK_MS ? cmd : DEF_BLOCK_MS;
    } else if (cl->in_data && !(want & TERN_CLIENT_WANT_BODY) &&
               (want & TERN_CLIENT_WANT_READ)) {
      m = TM_DATA;
      ms = ms_or(cl->opt.data_timeout_ms, DEF_DATA_MS);
    } else if (cl->writes || ((want & TERN_CLIENT_WANT_READ) &&
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
static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf);
static void on_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf);

static void pump(struct tern_client *cl) {
  if (cl->in_pump) {
    cl->again = true;
    return;
  }
  cl->in_pump = true;
  do {
    cl->again = false;
    if (cl->close_pending && !cl->in_cb) {
      cl->close_pending = false;
      cl_close(cl);
    }
    if (cl->state != CS_SESSION || !cl->s)
      break;
    feed_input(cl);
    bool blocked = cl->in_len && !(tern_client_session_want(cl->s) &
                                   TERN_CLIENT_WANT_READ);
    flush_session(cl);
    if (cl->state != CS_SESSION)
      break;
    unsigned want = tern_client_session_want(cl->s);
    if (blocked && (want & TERN_CLIENT_WANT_READ)) {
      cl->again = true; /* flushing made room for the held input */
      continue;
    }
    if ((want & TERN_CLIENT_WANT_TLS) && !cl->tls &&
        !(want & TERN_CLIENT_WANT_WRITE)) {
      if (tls_start(cl) != 0)
        break;
    }
    fd_pump(cl);
    if (cl->state != CS_SESSION)
      break;
    if (cl->eof && !(want & TERN_CLIENT_WANT_CLOSE))
      tern_client_session_eof(cl->s);
    want = tern_client_session_want(cl->s);
    if ((want & TERN_CLIENT_WANT_CLOSE) && !(want & TERN_CLIENT_WANT_WRITE)) {
      if (cl->tls && cl->tls_ready && !cl->tls_closed) {
        cl->tls_closed = true;
        tern__tls_shutdown(cl->tls);
        tls_flush(cl);
      }
      if (!cl->writes) {
        if (!cl->reported)
          fail(cl, cl->err_code ? cl->err_code : TERN_ECLOSED, "%s",
               cl->err[0] ? cl->err : "connection closed");
        else
          cl_close(cl);
        break;
      }
    }
  } while (cl->again);
  if (cl->close_pending && !cl->in_cb) {
    cl->close_pending = false;
    cl_close(cl);
  }
  if (cl->state == CS_SESSION) {
    update_reading(cl);
    restart_timer(cl);
  }
  cl->in_pump = false;
}

static void update_reading(struct tern_client *cl) {
  bool want = false;
  if (cl->state == CS_SESSION && !cl->eof && cl->h_open) {
    if (cl->tls && !cl->tls_ready)
      want = true;
    else if (!cl->in_len && cl->s)
      want = (tern_client_session_want(cl->s) &
              (TERN_CLIENT_WANT_READ | TERN_CLIENT_READY)) != 0;
  }
  if (want && !cl->reading) {
    cl->reading = uv_read_start(&cl->h.stream, on_alloc, on_read) == 0;
  } else if (!want && cl->reading) {
    uv_read_stop(&cl->h.stream);
    cl->reading = false;
  }
}

static void on_notify(struct tern_client_session *s, void *arg) {
  (void)s;
  pump(arg);
}

static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf) {
  (void)h;
  (void)hint;
  *buf = uv_buf_init(t_rbuf, sizeof t_rbuf);
}

static void on_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf) {
  struct tern_client *cl = st->data;
  if (cl->state != CS_SESSION)
    return;
  if (nread < 0) {
    uv_read_stop(st);
    cl->reading = false;
    cl->eof = true;
    if (nread != UV_EOF) {
      if (!cl->err[0] || cl->reported)
        set_errf(cl, TERN_ECLOSED, "read from %s: %s", cl->peer,
                 uv_strerror((int)nread));
    } else if (!cl->reported && !cl->err[0]) {
      set_errf(cl, TERN_ECLOSED, "%s closed the connection%s%s", cl->peer,
               cl->tls && !cl->tls_ready ? " during the TLS handshake" : "",
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
  if (cl->tls) {
    if (tern__tls_feed(cl->tls, buf->base, (size_t)nread) != 0) {
      fail(cl, TERN_ENOMEM, "out of memory");
      return;
    }
    if (!cl->tls_ready)
      tls_pull(cl);
  } else {
    input(cl, buf->base, (size_t)nread);
  }
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
  if (cl) {
    cl->ready = true;
    cl->in_data = false;
    tern__sasl_client_free(cl->sasl);
    cl->sasl = NULL;
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
      if (r && cl->auth_mech)
        set_errf(cl, err, "AUTH %s refused: %s", cl->auth_mech, rt);
      else if (r)
        set_errf(cl, err, "AUTH refused: %s", rt);
      else if (cl->opt.auth_user && !cl->offered[0])
        set_errf(cl, err, "server does not offer AUTH");
      else if (cl->opt.auth_user && !cl->auth_mech)
        set_errf(cl, err,
                 "no usable AUTH mechanism (server offers \"%s\"%s)",
                 cl->offered,
                 cl->tls_ready || cl->opt.auth_insecure_ok
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
  if (!cl || !cl->auth_mech)
    return TERN_EAUTH;
  if (!has_challenge && !cl->sasl) {
    struct tern__sasl_client_params p = {
        .user = cl->opt.auth_user,
        .password = cl->opt.auth_password,
        .token = cl->opt.auth_token,
        .authzid = cl->opt.auth_authzid,
        .tls = cl->tls_ready,
        .insecure_ok = cl->opt.auth_insecure_ok,
    };
    int rc = tern__sasl_client_new(&cl->sasl, cl->auth_mech, &p);
    if (rc)
      return rc;
  }
  if (!cl->sasl)
    return TERN_EAUTH;
  return tern__sasl_client_step(cl->sasl, challenge.ptr, challenge.len,
                                has_challenge, out, cap);
}

static const char *w_on_auth_mechanism(struct tern_client_session *c,
                                       const char *offered, bool tls,
                                       void *ud) {
  struct tern_client *cl = client_of(c);
  (void)ud;
  if (!cl)
    return NULL;
  snprintf(cl->offered, sizeof cl->offered, "%s", offered ? offered : "");
  struct tern__sasl_client_params p = {
      .user = cl->opt.auth_user,
      .password = cl->opt.auth_password,
      .token = cl->opt.auth_token,
      .authzid = cl->opt.auth_authzid,
      .tls = tls,
      .insecure_ok = cl->opt.auth_insecure_ok,
  };
  tern__sasl_client_free(cl->sasl);
  cl->sasl = NULL;
  cl->auth_mech = tern__sasl_client_choose(cl->offered,
                                           cl->opt.auth_mechanisms, &p);
  return cl->auth_mech;
}

/* ---- connect ------------------------------------------------------------------ */

static void start_session(struct tern_client *cl) {
  struct tern_client_config cfg = cl->opt.session;
  struct tern_client_callbacks cb = cl->app;
  cb.size = sizeof cb;
  cb.on_reply = w_on_reply;
  cb.on_ready = w_on_ready;
  cb.on_message_done = w_on_message_done;
  cb.on_error = w_on_error;
  if (cl->url.scheme == TERN__LMTP)
    cfg.lmtp = true;
  cfg.starttls = cl->starttls;
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
      uv_close(&cl->h.handle, on_attempt_closed);
    }
    return;
  }
  if (!cl->url.is_unix)
    uv_tcp_nodelay(&cl->h.tcp, 1);
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
  struct tern_client *cl = h->data;
  cl->pending_cb--;
  if (cl->state >= CS_CLOSING) {
    maybe_done(cl);
    return;
  }
  if (cl->ai_cur)
    cl->ai_cur = cl->ai_cur->ai_next;
  try_next(cl);
}

static void try_next(struct tern_client *cl) {
  while (cl->ai_cur) {
    struct addrinfo *ai = cl->ai_cur;
    char host[64] = "?";
    unsigned port = 0;
    if (ai->ai_family == AF_INET) {
      uv_ip4_name((struct sockaddr_in *)ai->ai_addr, host, sizeof host);
      port = ntohs(((struct sockaddr_in *)ai->ai_addr)->sin_port);
      snprintf(cl->peer, sizeof cl->peer, "%s:%u", host, port);
    } else if (ai->ai_family == AF_INET6) {
      uv_ip6_name((struct sockaddr_in6 *)ai->ai_addr, host, sizeof host);
      port = ntohs(((struct sockaddr_in6 *)ai->ai_addr)->sin6_port);
      snprintf(cl->peer, sizeof cl->peer, "[%s]:%u", host, port);
    } else {
      cl->ai_cur = ai->ai_next;
      continue;
    }
    if (uv_tcp_init(cl->loop, &cl->h.tcp) != 0) {
      fail(cl, TERN_ECONNECT, "connect %s: cannot create a socket", cl->peer);
      return;
    }
    cl->h.handle.data = cl;
    cl->h_open = true;
    cl->creq.data = cl;
    int r = uv_tcp_connect(&cl->creq, &cl->h.tcp, ai->ai_addr, on_tcp_connect);
    if (r == 0) {
      cl->creq_pending = true;
      cl->pending_cb++;
      cl->tmode = TM_NONE;
      restart_timer(cl);
      return;
    }
    set_errf(cl, TERN_ECONNECT, "connect %s: %s", cl->peer, uv_strerror(r));
    cl->h_open = false;
    cl->pending_cb++;
    uv_close(&cl->h.handle, on_attempt_closed);
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

/* ---- close and free ----------------------------------------------------------- */

/* A handle of ours closed (the final close). */
static void on_handle_closed(uv_handle_t *h) {
  struct tern_client *cl = h->data;
  cl->pending_cb--;
  maybe_done(cl);
}

static void maybe_done(struct tern_client *cl) {
  if (cl->state != CS_CLOSING || cl->pending_cb)
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
    cl->again = true;
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
  if (cl->reading)
    uv_read_stop(&cl->h.stream);
  cl->reading = false;
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
    uv_close(&cl->h.handle, on_handle_closed);
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

int tern_client_new(struct tern_client **out, uv_loop_t *loop,
                    const struct tern_client_options *o) {
  struct tern_client *cl;
  bool oom = false;
  unsigned k = 0;

  if (!out || !loop || !o || !o->size || !o->url)
    return TERN_EINVAL;
  cl = calloc(1, sizeof *cl);
  if (!cl)
    return TERN_ENOMEM;
  cl->loop = loop;
  tern_client_options_init(&cl->opt);
  memcpy(&cl->opt, o, o->size < sizeof cl->opt ? o->size : sizeof cl->opt);
  cl->opt.size = sizeof cl->opt;
  if (cl->opt.session.size > 0 &&
      cl->opt.session.size < sizeof cl->opt.session) {
    struct tern_client_config c;
    tern_client_config_init(&c);
    memcpy(&c, &o->session, o->session.size);
    c.size = sizeof c;
    cl->opt.session = c;
  }
  if (cl->opt.callbacks) {
    size_t n = cl->opt.callbacks->size;
    tern_client_callbacks_init(&cl->app);
    memcpy(&cl->app, cl->opt.callbacks, n < sizeof cl->app ? n : sizeof cl->app);
    cl->app.size = sizeof cl->app;
  } else {
    tern_client_callbacks_init(&cl->app);
  }
  cl->opt.callbacks = NULL;

  cl->opt.url = dup_opt(cl, &k, o->url, &oom);
  cl->opt.ca_file = dup_opt(cl, &k, cl->opt.ca_file, &oom);
  cl->opt.ca_dir = dup_opt(cl, &k, cl->opt.ca_dir, &oom);
  cl->opt.tls_server_name = dup_opt(cl, &k, cl->opt.tls_server_name, &oom);
  cl->opt.auth_user = dup_opt(cl, &k, cl->opt.auth_user, &oom);
  cl->opt.auth_password = dup_opt(cl, &k, cl->opt.auth_password, &oom);
  cl->opt.auth_token = dup_opt(cl, &k, cl->opt.auth_token, &oom);
  cl->opt.auth_authzid = dup_opt(cl, &k, cl->opt.auth_authzid, &oom);
  cl->opt.auth_mechanisms = dup_opt(cl, &k, cl->opt.auth_mechanisms, &oom);
  cl->opt.session.ehlo_name = dup_opt(cl, &k, cl->opt.session.ehlo_name, &oom);
  if (oom) {
    tern_client_free(cl);
    return TERN_ENOMEM;
  }
  if (tern__url_parse(cl->opt.url, &cl->url) != 0 ||
      (!cl->url.is_unix && !strcmp(cl->url.host, "*"))) {
    tern_client_free(cl);
    return TERN_EINVAL;
  }
  snprintf(cl->peer, sizeof cl->peer, "%s", cl->opt.url);

  /* the STARTTLS floor from the URL (see the top of the file) */
  enum tern_starttls floor = TERN_STARTTLS_OFF;
  if (cl->url.scheme == TERN__SMTP && !cl->url.is_unix)
    floor = TERN_STARTTLS_OPPORTUNISTIC;
  else if (cl->url.scheme == TERN__SMTP_STARTTLS)
    floor = TERN_STARTTLS_REQUIRED;
  cl->starttls = cl->opt.session.starttls > floor ? cl->opt.session.starttls
                                                  : floor;

  if (cl->opt.tls_server_name)
    cl->server_name = cl->opt.tls_server_name;
  else if (!cl->url.is_unix)
    cl->server_name = cl->url.host;

  /* CA files the app named are read now, so a bad path fails here; the
   * system store is loaded (once per process) when TLS first starts. */
  if (cl->opt.ca_file || cl->opt.ca_dir) {
    char e[400];
    int rc = ctx_acquire(cl->opt.ca_file, cl->opt.ca_dir, &cl->tls_ctx, e,
                         sizeof e);
    if (rc) {
      snprintf(cl->err, sizeof cl->err, "TLS: %s", e);
      /* keep the text for the caller? the object is gone: print nothing */
      tern_client_free(cl);
      return rc;
    }
  }
  snprintf(cl->err, sizeof cl->err, "no error");
  cl->err_code = 0;
  cl->err[0] = '\0';
  *out = cl;
  return 0;
}

int tern_client_connect(struct tern_client *cl) {
  if (!cl || cl->state != CS_NEW)
    return TERN_ESTATE;
  if (uv_timer_init(cl->loop, &cl->timer) != 0)
    return TERN_EIO;
  cl->timer.data = cl;
  cl->timer_open = true;
  if (cl->url.is_unix) {
    snprintf(cl->peer, sizeof cl->peer, "%s", cl->url.path);
    if (uv_pipe_init(cl->loop, &cl->h.pipe, 0) != 0) {
      cl->state = CS_CONNECTING;
      fail(cl, TERN_ECONNECT, "connect %s: cannot create a socket", cl->peer);
      return 0;
    }
    cl->h.handle.data = cl;
    cl->h_open = true;
    cl->creq.data = cl;
    cl->state = CS_CONNECTING;
    uv_pipe_connect(&cl->creq, &cl->h.pipe, cl->url.path, on_tcp_connect);
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
  tern__sasl_client_free(cl->sasl);
  tern__tls_free(cl->tls);
  ctx_release(cl->tls_ctx);
  if (cl->ai_list)
    uv_freeaddrinfo(cl->ai_list);
  free(cl->in);
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
  return cl && cl->tls && cl->tls_ready ? tern__tls_version(cl->tls) : NULL;
}

void *tern_client_userdata(const struct tern_client *cl) {
  return cl ? cl->opt.ud : NULL;
}
