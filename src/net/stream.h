/*
 * One connected socket carrying a protocol session, for both runtimes
 * (conn.c: the server's connections; client.c: the client):
 *
 *   socket --read--> [TLS decrypt] --> ops->feed(session)
 *   ops->output(session) --> [TLS encrypt] --> try_write / uv_write
 *
 * The stream owns the libuv handle, the TLS engine, the input the
 * session did not take yet (held; reading stops meanwhile, so at most a
 * few reads' worth) and the write queue. The session behind it is
 * reached only through `ops`; what the owner decides (timers, limits,
 * when to start TLS, when to close) stays with the owner, which calls
 * tern__stream_step() from its own pump.
 */
#ifndef TERN_NET_STREAM_H
#define TERN_NET_STREAM_H

#include <stdbool.h>
#include <stddef.h>
#include <uv.h>

#include "tls.h"

#define TERN__READ_SIZE 65536         /* one read; one decrypt; one TLS flush */
#define TERN__WRITE_HIGH (256 * 1024) /* take no output above this */

/* Scratch for one event loop: a read, decrypted plaintext, ciphertext
 * out. Each is consumed before the function that fills it returns; the
 * plaintext buffer is the one a session callback may re-enter (another
 * stream's pump from inside a feed), so a nested use gets its own. */
struct tern__scratch {
  char rbuf[TERN__READ_SIZE];
  char pbuf[TERN__READ_SIZE];
  char wbuf[TERN__READ_SIZE];
  bool pbuf_busy;
};

/* A shared scratch for `loop` (refcounted, one per loop); NULL on
 * OutOfMemory. Release once per acquire, on the loop's thread or not. */
struct tern__scratch *tern__scratch_acquire(uv_loop_t *loop);
void tern__scratch_release(struct tern__scratch *sc);

/* Why the stream gave up (ops->fail; `code` as noted). */
enum tern__stream_err {
  TERN__SE_WRITE, /* socket write failed: libuv error, 0 = uv_write */
  TERN__SE_NOMEM, /* the write queue: code 0 */
  TERN__SE_FEED,  /* feed() returned the error `code` */
  TERN__SE_FULL,  /* too much input held: code 0 */
  TERN__SE_TLS    /* TERN_ETLS (tern__tls_error()) or TERN_ENOMEM */
};

/* The adapter: the session behind the stream and the owner's hooks.
 * `arg` is the owner (tern__stream.arg). session() gives the protocol
 * session (a client's when `client`, else a server's; NULL while there
 * is none): the stream takes its output and asks what it wants itself.
 * Its want bits are the session's own; the three masks say which of
 * them mean what. */
struct tern__stream_ops {
  bool client;                                      /* the session's kind */
  void *(*session)(void *arg);                      /* or NULL */
  long (*feed)(void *arg, const char *p, size_t n); /* bytes taken or < 0 */
  unsigned feed_bits;                               /* feed() takes input now */
  unsigned read_bits; /* read the socket when nothing is held */
  unsigned tls_bit;   /* discard input: TLS starts after the output */
  unsigned close_bit; /* the session is over once its output is sent */
  unsigned write_bit; /* it has output to send */
  void (*read)(void *arg, ssize_t nread, const char *buf); /* uv_read_cb */
  void (*tls_ready)(void *arg);                            /* handshake done */
  void (*written)(void *arg, int status); /* a queued write is done */
  void (*fail)(void *arg, enum tern__stream_err why, long code);
};

struct tern__stream {
  union {
    uv_tcp_t tcp;
    uv_pipe_t pipe;
    uv_handle_t handle;
    uv_stream_t stream;
  } h; /* h.handle.data is the stream */
  const struct tern__stream_ops *ops;
  void *arg;
  struct tern__scratch *sc;
  struct tern__tls *tls; /* NULL until TLS starts; freed with the stream */
  char *in;              /* plaintext the session did not take */
  size_t in_len, in_cap;
  unsigned writes; /* write requests in flight */
  size_t writing;  /* their bytes */
  bool reading;    /* uv_read_start active */
  bool eof;        /* the peer closed (socket or close_notify) */
  bool closed;     /* the owner closes: nothing more is sent */
  bool tls_ready;  /* handshake done */
  bool tls_closed; /* close_notify queued */
  bool client;     /* the TLS client side */
  bool in_pump;    /* the owner's pump runs */
  bool again;      /* it takes one more turn */
};

/*
 * The owner's pump is never nested: a callback that pumps from inside it
 * asks the running one for one more turn instead. The shape:
 *
 *   if (!tern__stream_pump_begin(st)) return;
 *   while (tern__stream_pump_turn(st)) { ... tern__stream_pump_more(st) ... }
 *   ...; tern__stream_pump_end(st);
 */
static inline bool tern__stream_pump_begin(struct tern__stream *st) {
  if (st->in_pump) {
    st->again = true;
    return false;
  }
  st->in_pump = st->again = true;
  return true;
}

/* True for the first turn and for each one asked since the last. */
static inline bool tern__stream_pump_turn(struct tern__stream *st) {
  bool turn = st->again;
  st->again = false;
  return turn;
}

static inline void tern__stream_pump_more(struct tern__stream *st) {
  st->again = true;
}

static inline void tern__stream_pump_end(struct tern__stream *st) {
  st->in_pump = false;
}

void tern__stream_init(struct tern__stream *st,
                       const struct tern__stream_ops *ops, void *arg,
                       struct tern__scratch *sc);
/* The owner of a handle's close callback. */
void *tern__stream_owner(uv_handle_t *h);
/* Free what the stream holds (not the handle: the owner closes it). */
void tern__stream_free(struct tern__stream *st);
/* No more output or input: stop reading (the owner closes the handle). */
void tern__stream_stop(struct tern__stream *st);

/* Send bytes in order (a direct write when nothing is queued, a copy of
 * the rest queued). */
void tern__stream_send(struct tern__stream *st, const char *p, size_t n);
/* Move the session's output to the socket (through TLS when on; nothing
 * while a handshake is under way) until TERN__WRITE_HIGH bytes are in
 * flight. */
void tern__stream_flush(struct tern__stream *st);
/* Bytes read from the socket: to TLS, or fed (held if not taken). */
void tern__stream_received(struct tern__stream *st, const char *p, size_t n);
/* Start TLS on the stream with engine `t` (the stream owns it now).
 * Input held from before is dropped (RFC 3207 §4.2). `hello`: the
 * client side, which speaks first; TERN_ETLS (ops->fail told) when its
 * ClientHello cannot be made. */
int tern__stream_tls_begin(struct tern__stream *st, struct tern__tls *t,
                           bool hello);

/* The common part of a pump: feed what was received (held input, then
 * what TLS already decrypted), flush output. True when the flush made
 * the session take input again: pump once more. */
bool tern__stream_step(struct tern__stream *st);
/* The session wants to close with its output written: send close_notify
 * (once); true when nothing is left in flight, so the owner may close. */
bool tern__stream_close_ready(struct tern__stream *st);
/* The end of a pump's turn: the peer's EOF reaches the session (once
 * it does not want to close already); then true when the session is
 * over (close_bit, nothing left to write) and tern__stream_close_ready():
 * the owner closes now. */
bool tern__stream_session_over(struct tern__stream *st);
/* Whether the socket should be read, from the stream's side: during a
 * TLS handshake, or when nothing is held and the session reads. */
bool tern__stream_wants_read(struct tern__stream *st);
/* Turn reading on or off; returns whether it is on. */
bool tern__stream_set_reading(struct tern__stream *st, bool on);

#endif
