/*
 * The transport both runtimes share (stream.h): handle, TLS through
 * memory BIOs, held input, the write queue, the common part of the pump.
 * Memory: a stream holds no buffer while idle; reads land in the loop's
 * scratch and only what the session could not take yet is copied into
 * `in` (at most HELD_MAX, because reading stops while anything is held).
 */
#include "internal.h"

#include <stdlib.h>
#include <string.h>

#include "stream.h"

#include <tern/client.h>
#include <tern/server.h>

#define HELD_MAX (4 * TERN__READ_SIZE) /* held plaintext ceiling */

/* ---- scratch per loop ---------------------------------------------------- */

struct scratch_ref {
  uv_loop_t *loop;
  unsigned refs;
  struct scratch_ref *next;
  struct tern__scratch sc;
};
static uv_once_t sc_once = UV_ONCE_INIT;
static uv_mutex_t sc_lock;
static struct scratch_ref *sc_list;

static void sc_lock_init(void) { uv_mutex_init(&sc_lock); }

struct tern__scratch *tern__scratch_acquire(uv_loop_t *loop) {
  struct scratch_ref *e;
  uv_once(&sc_once, sc_lock_init);
  uv_mutex_lock(&sc_lock);
  for (e = sc_list; e && e->loop != loop; e = e->next)
    ;
  if (!e && (e = malloc(sizeof *e)) != NULL) {
    e->loop = loop;
    e->refs = 0;
    e->sc.pbuf_busy = false;
    e->next = sc_list;
    sc_list = e;
  }
  if (e)
    e->refs++;
  uv_mutex_unlock(&sc_lock);
  return e ? &e->sc : NULL;
}

void tern__scratch_release(struct tern__scratch *sc) {
  if (!sc)
    return;
  uv_mutex_lock(&sc_lock);
  for (struct scratch_ref **pp = &sc_list; *pp; pp = &(*pp)->next) {
    struct scratch_ref *e = *pp;
    if (&e->sc != sc)
      continue;
    if (--e->refs == 0) {
      *pp = e->next;
      free(e);
    }
    break;
  }
  uv_mutex_unlock(&sc_lock);
}

/* ---- life ---------------------------------------------------------------- */

void tern__stream_init(struct tern__stream *st,
                       const struct tern__stream_ops *ops, void *arg,
                       struct tern__scratch *sc) {
  memset(st, 0, sizeof *st);
  st->ops = ops;
  st->arg = arg;
  st->sc = sc;
  st->h.handle.data = st;
}

void *tern__stream_owner(uv_handle_t *h) {
  return ((struct tern__stream *)h->data)->arg;
}

void tern__stream_free(struct tern__stream *st) {
  tern__tls_free(st->tls);
  st->tls = NULL;
  free(st->in);
  st->in = NULL;
  st->in_len = st->in_cap = 0;
}

void tern__stream_stop(struct tern__stream *st) {
  st->closed = true;
  tern__stream_set_reading(st, false);
}

/* ---- writing ------------------------------------------------------------- */

struct wreq {
  uv_write_t req;
  struct tern__stream *st;
  size_t len;
  char data[];
};

static void on_write(uv_write_t *req, int status) {
  struct wreq *r = (struct wreq *)req;
  struct tern__stream *st = r->st;
  st->writes--;
  st->writing -= r->len;
  free(r);
  st->ops->written(st->arg, status);
}

void tern__stream_send(struct tern__stream *st, const char *p, size_t n) {
  if (st->closed || !n)
    return;
  if (!st->writes) {
    uv_buf_t b = uv_buf_init((char *)p, (unsigned)n);
    int r = uv_try_write(&st->h.stream, &b, 1);
    if (r == (int)n)
      return;
    if (r > 0) {
      p += r;
      n -= (size_t)r;
    } else if (r != UV_EAGAIN) {
      st->ops->fail(st->arg, TERN__SE_WRITE, r);
      return;
    }
  }
  struct wreq *q = malloc(sizeof *q + n);
  if (!q) {
    st->ops->fail(st->arg, TERN__SE_NOMEM, 0);
    return;
  }
  q->st = st;
  q->len = n;
  memcpy(q->data, p, n);
  uv_buf_t b = uv_buf_init(q->data, (unsigned)n);
  if (uv_write(&q->req, &st->h.stream, &b, 1, on_write) != 0) {
    free(q);
    st->ops->fail(st->arg, TERN__SE_WRITE, 0);
    return;
  }
  st->writes++;
  st->writing += n;
}

/* Ciphertext the TLS engine produced (handshake or records). */
static void tls_flush(struct tern__stream *st) {
  size_t n;
  while (st->tls && !st->closed &&
         (n = tern__tls_output(st->tls, st->sc->wbuf, sizeof st->sc->wbuf)) > 0)
    tern__stream_send(st, st->sc->wbuf, n);
}

/* ---- the session behind the stream ---------------------------------------- */

static size_t sess_output(struct tern__stream *st, const char **p) {
  void *s = st->ops->session(st->arg);
  if (!s)
    return 0;
  return st->ops->client ? tern_client_session_output(s, p)
                         : tern_server_session_output(s, p);
}

static void sess_consume(struct tern__stream *st, size_t n) {
  void *s = st->ops->session(st->arg);
  if (s && st->ops->client)
    tern_client_session_consume(s, n);
  else if (s)
    tern_server_session_consume(s, n);
}

static unsigned sess_want(struct tern__stream *st) {
  void *s = st->ops->session(st->arg);
  if (!s)
    return 0;
  return st->ops->client ? tern_client_session_want(s)
                         : tern_server_session_want(s);
}

void tern__stream_flush(struct tern__stream *st) {
  const char *p;
  size_t n;
  /* Nothing goes out in the clear once TLS is asked for, nor before the
   * handshake is done. */
  if (st->tls && !st->tls_ready)
    return;
  while (!st->closed && st->writing < TERN__WRITE_HIGH &&
         (n = sess_output(st, &p)) > 0) {
    if (!st->tls) {
      tern__stream_send(st, p, n);
      sess_consume(st, n);
      continue;
    }
    long t = tern__tls_write(st->tls, p, n);
    if (t < 0) {
      st->ops->fail(st->arg, TERN__SE_TLS, TERN_ETLS);
      return;
    }
    sess_consume(st, (size_t)t);
    tls_flush(st);
    if (!t)
      break;
  }
}

/* ---- reading ------------------------------------------------------------- */

/* Keep bytes the session did not take (reading stops meanwhile). */
static bool hold(struct tern__stream *st, const char *p, size_t n) {
  if (st->in_len + n > HELD_MAX)
    return false;
  if (st->in_len + n > st->in_cap) {
    size_t cap =
        st->in_len + n < TERN__READ_SIZE ? TERN__READ_SIZE : st->in_len + n;
    char *b = realloc(st->in, cap);
    if (!b)
      return false;
    st->in = b;
    st->in_cap = cap;
  }
  memmove(st->in + st->in_len, p, n);
  st->in_len += n;
  return true;
}

static bool wants(struct tern__stream *st, unsigned bits) {
  return (sess_want(st) & bits) != 0;
}

/* Feed p[0..n) while the session takes it; hold the rest. */
static void input(struct tern__stream *st, const char *p, size_t n) {
  if (st->in_len) { /* keep order behind what is held */
    if (!hold(st, p, n))
      st->ops->fail(st->arg, TERN__SE_FULL, 0);
    return;
  }
  while (n && !st->closed && wants(st, st->ops->feed_bits)) {
    long r = st->ops->feed(st->arg, p, n);
    if (r < 0) {
      st->ops->fail(st->arg, TERN__SE_FEED, r);
      return;
    }
    p += r;
    n -= (size_t)r;
    tern__stream_flush(st);
    if (!r)
      break;
  }
  if (wants(st, st->ops->tls_bit))
    return; /* RFC 3207 §4.2: plaintext before TLS is discarded */
  if (n && !st->closed && !hold(st, p, n))
    st->ops->fail(st->arg, TERN__SE_FULL, 0);
}

/* Feed what was held back, now that the session may want it. */
static void feed_held(struct tern__stream *st) {
  while (st->in_len && !st->closed && wants(st, st->ops->feed_bits)) {
    long r = st->ops->feed(st->arg, st->in, st->in_len);
    if (r < 0) {
      st->ops->fail(st->arg, TERN__SE_FEED, r);
      return;
    }
    memmove(st->in, st->in + r, st->in_len - (size_t)r);
    st->in_len -= (size_t)r;
    tern__stream_flush(st);
    if (!r)
      break;
  }
  if (st->in_len && wants(st, st->ops->tls_bit))
    st->in_len = 0;            /* RFC 3207 §4.2 */
  if (!st->in_len && st->in) { /* idle streams hold no buffer */
    free(st->in);
    st->in = NULL;
    st->in_cap = 0;
  }
}

/* Decrypt what the TLS engine can give while nothing is held. */
static void tls_pull(struct tern__stream *st) {
  struct tern__scratch *sc = st->sc;
  char *buf = sc->pbuf;
  if (sc->pbuf_busy && !(buf = malloc(TERN__READ_SIZE))) {
    st->ops->fail(st->arg, TERN__SE_TLS, TERN_ENOMEM);
    return;
  }
  if (buf == sc->pbuf)
    sc->pbuf_busy = true;
  while (st->tls && !st->closed && !st->in_len) {
    long r = tern__tls_read(st->tls, buf, TERN__READ_SIZE);
    if (st->client)
      tls_flush(st); /* its Finished goes out before its verdict */
    if (!st->tls_ready && tern__tls_handshake_done(st->tls)) {
      st->tls_ready = true;
      st->ops->tls_ready(st->arg);
      if (st->closed)
        break;
      tern__stream_flush(st); /* with the server's last handshake bytes */
    }
    tls_flush(st);
    if (r > 0) {
      input(st, buf, (size_t)r);
      continue;
    }
    if (r == TERN_ECLOSED)
      st->eof = true;
    else if (r < 0)
      st->ops->fail(st->arg, TERN__SE_TLS, TERN_ETLS);
    break;
  }
  if (buf == sc->pbuf)
    sc->pbuf_busy = false;
  else
    free(buf);
}

/*
 * Feed everything already received before the socket is read again: what
 * was held back first (order), then what the TLS engine holds. The engine
 * is the trap: records it has buffered raise no read event of their own,
 * so a session that wants input while they sit there waits for bytes that
 * arrived long ago (a peer that sent everything and waits for the reply
 * never sends more). Invariant on return: either the session does not
 * want input, or nothing is held and the engine has no complete record
 * left, so waiting for the socket is right.
 */
static void feed_input(struct tern__stream *st) {
  for (;;) {
    feed_held(st);
    if (st->in_len || st->closed || !st->tls || !st->tls_ready)
      return;
    tls_pull(st); /* to the session, holding what it does not take */
    if (!st->in_len || st->closed || !wants(st, st->ops->feed_bits))
      return; /* drained, or paused: a reply or resume pumps again */
  }
}

void tern__stream_received(struct tern__stream *st, const char *p, size_t n) {
  if (!st->tls) {
    input(st, p, n);
    return;
  }
  int r = tern__tls_feed(st->tls, p, n);
  if (r != 0) {
    st->ops->fail(st->arg, TERN__SE_TLS, r);
    return;
  }
  if (!st->tls_ready)
    tls_pull(st); /* handshake */
}

int tern__stream_tls_begin(struct tern__stream *st, struct tern__tls *t,
                           bool hello) {
  st->tls = t;
  st->client = hello;
  st->in_len = 0; /* RFC 3207 §4.2: nothing read before counts */
  if (!hello)
    return 0;
  if (tern__tls_read(t, st->sc->pbuf, 0) < 0) { /* ClientHello */
    st->ops->fail(st->arg, TERN__SE_TLS, TERN_ETLS);
    return TERN_ETLS;
  }
  tls_flush(st);
  return 0;
}

/* ---- the pump's common part ------------------------------------------- */

bool tern__stream_step(struct tern__stream *st) {
  feed_input(st);
  bool blocked = st->in_len && !wants(st, st->ops->feed_bits);
  tern__stream_flush(st);
  /* Flushing took the session's output below its high-water mark: it
   * takes input again, and consume() does not notify. */
  return !st->closed && blocked && wants(st, st->ops->feed_bits);
}

bool tern__stream_close_ready(struct tern__stream *st) {
  /* RFC 8446 §6.1: say close_notify, then close once it is out. */
  if (st->tls && st->tls_ready && !st->tls_closed) {
    st->tls_closed = true;
    tern__tls_shutdown(st->tls);
    tls_flush(st);
  }
  return !st->writes;
}

bool tern__stream_session_over(struct tern__stream *st) {
  void *s = st->ops->session(st->arg);
  if (!s)
    return false;
  unsigned want = sess_want(st);
  if (st->eof && !(want & st->ops->close_bit)) {
    if (st->ops->client)
      tern_client_session_eof(s);
    else
      tern_server_session_eof(s);
    want = sess_want(st);
  }
  return (want & st->ops->close_bit) && !(want & st->ops->write_bit) &&
         tern__stream_close_ready(st);
}

bool tern__stream_wants_read(struct tern__stream *st) {
  if (st->tls && !st->tls_ready)
    return true;
  return !st->in_len && wants(st, st->ops->read_bits);
}

static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf) {
  struct tern__stream *st = h->data;
  (void)hint;
  *buf = uv_buf_init(st->sc->rbuf, sizeof st->sc->rbuf);
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf) {
  struct tern__stream *st = s->data;
  st->ops->read(st->arg, nread, buf->base);
}

bool tern__stream_set_reading(struct tern__stream *st, bool on) {
  if (on && !st->reading) {
    st->reading = uv_read_start(&st->h.stream, on_alloc, on_read) == 0;
  } else if (!on && st->reading) {
    uv_read_stop(&st->h.stream);
    st->reading = false;
  }
  return st->reading;
}
