/*
 * fuzz_stuff_roundtrip — the client's body encoder against the server's
 * DATA decoder (STYLE.md rule 10).
 *
 * Input: bytes 0-1 seed the chunk sizes; the rest is a message body. It
 * goes through tern_dot_stuff() in random chunks (a CR may end one chunk
 * and its LF start the next), then the whole output through
 * tern__dot_feed() as a server would read it after "DATA\r\n". Checked:
 *   - the output holds no bare CR and no bare LF;
 *   - the decoder finds the end exactly at the output's last octet (so
 *     no "<CRLF>.<CRLF>" came earlier) and never sets `bare`;
 *   - the decoded content is the input CRLF-normalised (bare CR or LF ->
 *     CRLF), with a final CRLF added when the input did not end with one.
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

#include "dot.h"

#define CHECK(x)                                                           \
  do {                                                                     \
    if (!(x))                                                              \
      __builtin_trap();                                                    \
  } while (0)

struct sink {
  char *p;
  size_t n;
};

static bool emit(void *ctx, const char *p, size_t n) {
  struct sink *s = ctx;
  memcpy(s->p + s->n, p, n);
  s->n += n;
  return true;
}

/* The obvious normalisation, one octet at a time. */
static size_t reference(const unsigned char *in, size_t len, char *out) {
  size_t o = 0;
  for (size_t i = 0; i < len; i++) {
    if (in[i] == '\r') {
      out[o++] = '\r';
      out[o++] = '\n';
      if (i + 1 < len && in[i + 1] == '\n')
        i++;
    } else if (in[i] == '\n') {
      out[o++] = '\r';
      out[o++] = '\n';
    } else {
      out[o++] = (char)in[i];
    }
  }
  if (o && !(o >= 2 && out[o - 2] == '\r' && out[o - 1] == '\n')) {
    out[o++] = '\r';
    out[o++] = '\n';
  }
  return o;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 2)
    return 0;
  uint32_t seed = (uint32_t)data[0] << 8 | data[1];
  const unsigned char *body = data + 2;
  size_t len = size - 2;

  char *enc = malloc(2 * len + 64);
  char *ref = malloc(2 * len + 8);
  struct sink dec = {malloc(2 * len + 8), 0};
  unsigned st = 0;
  size_t e = 0, i = 0;
  while (i < len) {
    seed = seed * 1103515245u + 12345u;
    size_t n = 1 + (seed >> 16) % 17;
    if (seed & 0x8000)
      n = 1 + (seed >> 16) % 300;
    if (n > len - i)
      n = len - i;
    size_t w = tern_dot_stuff(&st, (const char *)body + i, n, false,
                              enc + e, 2 * n + 7);
    CHECK(w <= 2 * n + 7);
    e += w;
    i += n;
  }
  /* A too-small buffer is refused without any effect. */
  CHECK(tern_dot_stuff(&st, "x", 1, false, enc + e, 8) == 0);
  e += tern_dot_stuff(&st, NULL, 0, true, enc + e, 7);
  CHECK(st == 0);

  for (size_t k = 0; k < e; k++) {
    if (enc[k] == '\r')
      CHECK(k + 1 < e && enc[k + 1] == '\n');
    if (enc[k] == '\n')
      CHECK(k > 0 && enc[k - 1] == '\r');
  }
  CHECK(e >= 3 && memcmp(enc + e - 3, ".\r\n", 3) == 0);

  struct tern__dot d;
  bool done = false;
  tern__dot_init(&d, 0, true);
  size_t used = tern__dot_feed(&d, enc, e, emit, &dec, &done);
  CHECK(done);
  CHECK(used == e);
  CHECK(!d.bare);
  size_t rn = reference(body, len, ref);
  CHECK(rn == dec.n);
  CHECK(memcmp(ref, dec.p, rn) == 0);

  free(enc);
  free(ref);
  free(dec.p);
  return 0;
}
