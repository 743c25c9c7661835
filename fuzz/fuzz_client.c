/*
 * fuzz_client — a whole client session against arbitrary server bytes,
 * driven as a runtime would drive it, with a message to send.
 *
 * Input: byte 0 config (bit 0 LMTP, 1 PIPELINING on, 2 CHUNKING on, 3-4
 * STARTTLS off/opportunistic/required, 5 AUTH PLAIN, 6 auth_required, 7
 * TLS from the start); byte 1 (bits 0-1 recipients 1..4, 2-3 body
 * 7BIT/8BITMIME/none/BINARYMIME, 4-5 high water 0/512/4096/65536, 6 a
 * second message, 7 quit after the first); byte 2 chunk-size seed; the
 * rest: what the server says. Output is drained after every call, and
 * partly left queued now and then.
 *
 * Invariants: no crash or leak; feed() returns 0..len; without
 * BINARYMIME every CR the client writes is followed by LF and every LF
 * preceded by CR; queued output stays under high water + 128 KiB; no
 * callback after on_error; on_message_done once per message.
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <tern/tern.h>

#define CHECK(x)                                                           \
  do {                                                                     \
    if (!(x))                                                              \
      __builtin_trap();                                                    \
  } while (0)

struct h {
  struct tern_client_session *s;
  struct tern_client_message msg;
  struct tern_client_rcpt rcpts[4];
  bool binary;
  bool second, quit_after;
  int sent, done;
  bool errored;
  bool last_cr; /* the previous output octet was a CR */
  size_t hw;
  const char *body;
  size_t body_off;
  bool ended;
};

static void on_reply(struct tern_client_session *c, enum tern_client_cmd cmd,
                     unsigned index, const struct tern_client_reply *r,
                     void *ud) {
  struct h *h = ud;
  (void)c;
  (void)cmd;
  (void)index;
  CHECK(!h->errored);
  CHECK(r->code >= 200 && r->code <= 599 && r->nlines >= 1);
}

static void start(struct h *h) {
  if (h->sent >= (h->second ? 2 : 1))
    return;
  h->sent++; /* on_message_done may come from inside send() */
  h->body_off = 0;
  h->ended = false;
  if (tern_client_session_send(h->s, &h->msg) != 0)
    h->sent--;
}

static void on_ready(struct tern_client_session *c, void *ud) {
  struct h *h = ud;
  CHECK(!h->errored);
  if (h->sent && h->quit_after) {
    tern_client_session_quit(c);
    return;
  }
  start(h);
}

static long on_auth(struct tern_client_session *c, struct tern_str ch,
                    bool has, char *out, size_t cap, void *ud) {
  (void)c;
  (void)ud;
  if (has && ch.len && ch.ptr[0] == 'X')
    return -1;
  if (has && ch.len && ch.ptr[0] == 'N')
    return 0;
  const char *r = "AGFsaWNlAHNlY3JldA==";
  if (cap < strlen(r))
    return -1;
  memcpy(out, r, strlen(r));
  return (long)strlen(r);
}

static void on_done(struct tern_client_session *c,
                    const struct tern_client_outcome *o, void *ud) {
  struct h *h = ud;
  (void)c;
  CHECK(!h->errored);
  CHECK(o->code >= 200 && o->code <= 599);
  CHECK(o->delivered <= o->accepted);
  h->done++;
  CHECK(h->done <= h->sent);
}

static void on_error(struct tern_client_session *c, int err,
                     const struct tern_client_reply *r, void *ud) {
  struct h *h = ud;
  (void)c;
  (void)r;
  CHECK(err < 0);
  CHECK(!h->errored);
  h->errored = true;
}

static void drain(struct h *h, size_t max) {
  const char *d;
  size_t n = tern_client_session_output(h->s, &d);
  CHECK(n <= h->hw + 128 * 1024);
  if (n > max)
    n = max;
  if (!h->binary) {
    for (size_t i = 0; i < n; i++) {
      if (h->last_cr)
        CHECK(d[i] == '\n');
      else
        CHECK(d[i] != '\n');
      h->last_cr = d[i] == '\r';
    }
  }
  tern_client_session_consume(h->s, n);
}

static void pump(struct h *h) {
  for (int guard = 0; guard < 64; guard++) {
    unsigned w = tern_client_session_want(h->s);
    if (w & TERN_CLIENT_WANT_TLS) {
      CHECK(tern_client_session_tls_started(h->s) == 0);
      continue;
    }
    if ((w & TERN_CLIENT_WANT_BODY) && !h->ended) {
      size_t left = strlen(h->body) - h->body_off;
      if (left) {
        long n = tern_client_session_body(h->s, h->body + h->body_off, left);
        CHECK(n >= 0 && (size_t)n <= left);
        h->body_off += (size_t)n;
        drain(h, SIZE_MAX);
        if (n)
          continue;
      } else {
        CHECK(tern_client_session_body_end(h->s) == 0);
        h->ended = true;
        drain(h, SIZE_MAX);
        continue;
      }
    }
    break;
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static const char *const bodies[] = {
      "Subject: x\r\n\r\nhello\r\n", "a\n.\nb\r.\r\nc\r\n.\r\nd\r", "",
      "line\r\n..\r\n.\r\n"};
  static const size_t hws[] = {0, 512, 4096, 65536};
  if (size < 3)
    return 0;
  struct h h;
  memset(&h, 0, sizeof h);
  struct tern_client_config cfg;
  struct tern_client_callbacks cb;
  tern_client_config_init(&cfg);
  tern_client_callbacks_init(&cb);
  cfg.lmtp = data[0] & 1;
  cfg.pipelining = (data[0] >> 1) & 1;
  cfg.chunking = (data[0] >> 2) & 1;
  cfg.starttls = (enum tern_starttls)(((data[0] >> 3) & 3) % 3);
  if (data[0] & 0x20)
    cfg.auth_mechanism = "PLAIN";
  cfg.auth_required = (data[0] >> 6) & 1;
  cfg.tls_active = (data[0] >> 7) & 1;
  cfg.output_high_water = h.hw = hws[(data[1] >> 4) & 3];
  cb.on_reply = on_reply;
  cb.on_ready = on_ready;
  cb.on_auth = on_auth;
  cb.on_message_done = on_done;
  cb.on_error = on_error;

  static const char *const addrs[] = {"a@example.org", "b@example.org",
                                      "Postmaster", "d@[192.0.2.1]"};
  size_t nr = 1 + (data[1] & 3);
  for (size_t i = 0; i < nr; i++) {
    h.rcpts[i].address = addrs[i];
    h.rcpts[i].notify = i == 1 ? TERN_NOTIFY_SUCCESS | TERN_NOTIFY_FAILURE : 0;
    h.rcpts[i].orcpt = i == 2 ? "x+y=z@example.org" : NULL;
  }
  h.msg.from = (data[1] & 0x40) ? "" : "s@example.org";
  h.msg.rcpts = h.rcpts;
  h.msg.nrcpts = nr;
  h.msg.size = 100;
  static const enum tern_body b[] = {TERN_BODY_7BIT, TERN_BODY_8BITMIME,
                                     TERN_BODY_UNSPECIFIED,
                                     TERN_BODY_BINARYMIME};
  h.msg.body = b[(data[1] >> 2) & 3];
  h.binary = h.msg.body == TERN_BODY_BINARYMIME;
  h.msg.envid = "id 1";
  h.msg.ret = TERN_RET_HDRS;
  h.second = (data[1] >> 6) & 1;
  h.quit_after = (data[1] >> 7) & 1;
  h.body = bodies[data[2] & 3];

  if (tern_client_session_new(&h.s, &cfg, &cb, &h) != 0)
    return 0;
  uint32_t seed = data[2];
  size_t pos = 3;
  while (pos < size) {
    seed = seed * 1103515245u + 12345u;
    size_t n = 1 + (seed >> 16) % 97;
    if (n > size - pos)
      n = size - pos;
    long k = tern_client_session_feed(h.s, data + pos, n);
    CHECK(k >= 0 && (size_t)k <= n);
    unsigned w = tern_client_session_want(h.s);
    if ((size_t)k < n)
      CHECK(w & (TERN_CLIENT_WANT_TLS | TERN_CLIENT_WANT_CLOSE));
    pos += n; /* a runtime drops what the session did not take */
    drain(&h, (seed & 0x100) ? 7 : SIZE_MAX);
    pump(&h);
    if (w & TERN_CLIENT_WANT_CLOSE)
      break;
  }
  drain(&h, SIZE_MAX);
  tern_client_session_eof(h.s);
  CHECK(tern_client_session_want(h.s) & TERN_CLIENT_WANT_CLOSE);
  CHECK(h.done == h.sent);
  tern_client_session_free(h.s);
  return 0;
}
