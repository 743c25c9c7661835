/*
 * Allocation tests for the server session, through a counting allocator
 * passed in struct tern_server_config.mem:
 *
 *  - an ordinary transaction (DATA or BDAT, pipelined whole or fed one
 *    byte at a time) allocates nothing after tern_server_session_new();
 *  - failing the N-th allocation, for every N, gives TERN_ENOMEM (or, for
 *    the AUTH line buffer, a 500 reply) and leaks nothing;
 *  - the AUTH line buffer, the one later allocation, is freed by the next
 *    command or by tern_server_session_free().
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tern/server.h"

/* ---- the counting allocator ------------------------------------------------ */

struct counter {
  unsigned long calls;  /* allocation attempts (malloc and realloc) */
  unsigned long allocs; /* successful ones */
  unsigned long frees;
  unsigned long fail_at; /* fail the attempt with this number (1-based) */
  size_t live;           /* bytes allocated and not freed */
};

/* A header in front of each block remembers its size, so that live bytes
 * can be counted; 16 keeps the caller's memory aligned for anything. */
#define HDR 16

static void *c_malloc(size_t n, void *ud) {
  struct counter *c = ud;
  if (++c->calls == c->fail_at)
    return NULL;
  unsigned char *p = malloc(HDR + n);
  if (!p)
    return NULL;
  memcpy(p, &n, sizeof n);
  c->allocs++;
  c->live += n;
  return p + HDR;
}

static void c_free(void *q, void *ud) {
  struct counter *c = ud;
  size_t n;
  if (!q)
    return;
  unsigned char *p = (unsigned char *)q - HDR;
  memcpy(&n, p, sizeof n);
  assert_true(c->live >= n);
  c->live -= n;
  c->frees++;
  free(p);
}

static void *c_realloc(void *q, size_t n, void *ud) {
  struct counter *c = ud;
  if (++c->calls == c->fail_at)
    return NULL;
  size_t old = 0;
  unsigned char *p = q ? (unsigned char *)q - HDR : NULL;
  if (p)
    memcpy(&old, p, sizeof old);
  unsigned char *np = realloc(p, HDR + n);
  if (!np)
    return NULL;
  memcpy(np, &n, sizeof n);
  if (!q)
    c->allocs++;
  c->live = c->live - old + n;
  return np + HDR;
}

/* ---- a client and an application ------------------------------------------- */

struct app {
  struct counter c;
  struct tern_mem mem;
  char data[4096];   /* what on_data saw */
  size_t data_len;
  uint64_t end_size; /* on_data_end's size */
  unsigned ends;
  int codes[64];     /* final reply line codes, in order */
  size_t ncodes;
  char partial[8];   /* start of the reply line being read */
  size_t plen;
  size_t auth_resp_len; /* on_auth's response length, last call */
  unsigned auth_calls;
};

static int on_data(struct tern_server_session *s, const char *buf, size_t len,
                   void *ud) {
  struct app *a = ud;
  (void)s;
  assert_true(a->data_len + len <= sizeof a->data);
  memcpy(a->data + a->data_len, buf, len);
  a->data_len += len;
  return 0;
}

static int on_data_end(struct tern_server_session *s,
                       const struct tern_envelope *env,
                       struct tern_reply *r, void *ud) {
  struct app *a = ud;
  (void)s;
  (void)r;
  a->end_size = env->size;
  a->ends++;
  return TERN_REPLY_NOW;
}

/* PLAIN: one step with the initial response (or a 334 first without). */
static int on_auth(struct tern_server_session *s, struct tern_str mech,
                   struct tern_str resp, bool has, unsigned step,
                   struct tern_reply *r, void *ud) {
  struct app *a = ud;
  (void)s;
  assert_int_equal(mech.len, 5);
  assert_memory_equal(mech.ptr, "PLAIN", 5);
  a->auth_calls++;
  a->auth_resp_len = has ? resp.len : 0;
  if (!has && step == 0) {
    *r = (struct tern_reply){334, NULL, ""};
    return TERN_REPLY_NOW;
  }
  *r = (struct tern_reply){235, "2.7.0", "Authentication successful"};
  return TERN_REPLY_NOW;
}

/* Read all queued output, keeping the code of each final reply line. */
static void drain(struct tern_server_session *s, struct app *a) {
  const char *p;
  size_t n = tern_server_session_output(s, &p);
  for (size_t i = 0; i < n; i++) {
    if (a->plen < sizeof a->partial)
      a->partial[a->plen++] = p[i];
    if (p[i] != '\n')
      continue;
    assert_true(a->plen >= 4);
    if (a->partial[3] == ' ') {
      assert_true(a->ncodes < sizeof a->codes / sizeof a->codes[0]);
      a->codes[a->ncodes++] = atoi((char[4]){a->partial[0], a->partial[1],
                                             a->partial[2], 0});
    }
    a->plen = 0;
  }
  tern_server_session_consume(s, n);
}

/* Feed in[0..len) `step` bytes at a time (0: all at once), reading the
 * replies after every feed. Every byte must be taken. */
static void feed(struct tern_server_session *s, struct app *a, const char *in,
                 size_t len, size_t step) {
  size_t pos = 0;
  while (pos < len) {
    size_t n = step && step < len - pos ? step : len - pos;
    long got = tern_server_session_feed(s, in + pos, n);
    assert_true(got > 0);
    assert_true((size_t)got <= n);
    pos += (size_t)got;
    drain(s, a);
  }
}

static void app_init(struct app *a) {
  memset(a, 0, sizeof *a);
  a->mem.malloc = c_malloc;
  a->mem.realloc = c_realloc;
  a->mem.free = c_free;
  a->mem.ud = &a->c;
}

static struct tern_server_session *new_session(struct app *a, bool auth) {
  struct tern_server_config cfg;
  struct tern_server_callbacks cb;
  struct tern_server_session *s = NULL;

  tern_server_config_init(&cfg);
  cfg.hostname = "mx.example.org";
  cfg.mem = &a->mem;
  if (auth) {
    cfg.extensions |= TERN_EXT_AUTH;
    cfg.auth_insecure_ok = true;
    cfg.auth_mechanisms = "PLAIN";
  }
  tern_server_callbacks_init(&cb);
  cb.on_data = on_data;
  cb.on_data_end = on_data_end;
  if (auth)
    cb.on_auth = on_auth;
  int rc = tern_server_session_new(&s, &cfg, &cb, a);
  if (rc == 0)
    assert_non_null(s);
  else
    assert_null(s);
  return rc == 0 ? s : NULL;
}

static void expect_codes(const struct app *a, const int *want, size_t n) {
  for (size_t i = 0; i < a->ncodes && i < n; i++)
    if (a->codes[i] != want[i])
      print_error("reply %zu: got %d, want %d\n", i, a->codes[i], want[i]);
  assert_int_equal(a->ncodes, n);
  for (size_t i = 0; i < n; i++)
    assert_int_equal(a->codes[i], want[i]);
}

/* ---- the message ----------------------------------------------------------------- */

static char body[1024];     /* what the application must see */
static char wire[1200];     /* the same, dot-stuffed, as the client sends */
static size_t wire_len;

/* 1 KiB of CRLF lines, one of them starting with "." (so stuffed on the
 * wire), the last one ending in the CRLF that "\r\n.\r\n" supplies. */
static void make_body(void) {
  size_t n = 0, line = 0;
  while (n < sizeof body) {
    char l[80];
    int k = snprintf(l, sizeof l, "%sLine %zu of the test message body, "
                                  "padded to a realistic length.",
                     line == 3 ? "." : "", line);
    size_t len = (size_t)k;
    if (n + len + 2 > sizeof body)
      len = sizeof body - n - 2; /* the last line fills it exactly */
    memcpy(body + n, l, len);
    n += len;
    memcpy(body + n, "\r\n", 2);
    n += 2;
    line++;
  }
  assert_int_equal(n, sizeof body);
  assert_true(memcmp(body, ".", 1) != 0);
  /* stuff: every line starting with "." gets one more */
  wire_len = 0;
  for (size_t i = 0; i < sizeof body; i++) {
    if (body[i] == '.' && (i == 0 || body[i - 1] == '\n'))
      wire[wire_len++] = '.';
    wire[wire_len++] = body[i];
  }
  assert_true(wire_len > sizeof body); /* a stuffed line is there */
  /* the body's final CRLF is the start of "\r\n.\r\n": drop it */
  wire_len -= 2;
}

static const char head[] = "EHLO client.example\r\n"
                           "MAIL FROM:<a@example.org> SIZE=2000\r\n"
                           "RCPT TO:<b@example.net>\r\n"
                           "RCPT TO:<c@example.net>\r\n";

static size_t build_data(char *buf) {
  size_t n = 0;
  memcpy(buf, head, sizeof head - 1);
  n += sizeof head - 1;
  memcpy(buf + n, "DATA\r\n", 6);
  n += 6;
  memcpy(buf + n, wire, wire_len);
  n += wire_len;
  memcpy(buf + n, "\r\n.\r\nQUIT\r\n", 11);
  return n + 11;
}

static size_t build_bdat(char *buf, bool two_chunks) {
  size_t n = 0;
  memcpy(buf, head, sizeof head - 1);
  n += sizeof head - 1;
  if (two_chunks) {
    n += (size_t)sprintf(buf + n, "BDAT 500\r\n");
    memcpy(buf + n, body, 500);
    n += 500;
    n += (size_t)sprintf(buf + n, "BDAT %zu LAST\r\n", sizeof body - 500);
    memcpy(buf + n, body + 500, sizeof body - 500);
    n += sizeof body - 500;
  } else {
    n += (size_t)sprintf(buf + n, "BDAT %zu LAST\r\n", sizeof body);
    memcpy(buf + n, body, sizeof body);
    n += sizeof body;
  }
  memcpy(buf + n, "QUIT\r\n", 6);
  return n + 6;
}

/* ---- (a) no allocation in an ordinary transaction ----------------------------- */

static void run_transaction(const char *in, size_t len, size_t step,
                            const int *codes, size_t ncodes) {
  static struct app a;
  app_init(&a);
  struct tern_server_session *s = new_session(&a, false);
  assert_non_null(s);
  unsigned long allocs = a.c.allocs, calls = a.c.calls;
  size_t live = a.c.live;
  /* its state, its I/O buffers, its envelope store (server.h) */
  assert_int_equal(allocs, 3);

  assert_int_equal(tern_server_session_start(s), 0);
  drain(s, &a);
  feed(s, &a, in, len, step);

  /* not one allocation, reallocation or free since _new() */
  assert_int_equal(a.c.calls, calls);
  assert_int_equal(a.c.allocs, allocs);
  assert_int_equal(a.c.frees, 0);
  assert_int_equal(a.c.live, live);

  expect_codes(&a, codes, ncodes);
  assert_int_equal(a.data_len, sizeof body);
  assert_memory_equal(a.data, body, sizeof body);
  assert_int_equal(a.ends, 1);
  assert_int_equal(a.end_size, sizeof body);
  assert_true(tern_server_session_want(s) & TERN_WANT_CLOSE);

  tern_server_session_free(s);
  assert_int_equal(a.c.frees, a.c.allocs);
  assert_int_equal(a.c.live, 0);
}

/* After tern_server_session_trim() an idle session holds only its state
 * (and its HELO argument, in a block of that size); the next command
 * makes the I/O buffers again, the next MAIL the envelope store, once
 * each, and the HELO moves back into the store. */
static void test_trim(void **state) {
  static struct app a;
  (void)state;
  app_init(&a);
  struct tern_server_session *s = new_session(&a, false);
  size_t full = a.c.live;
  assert_int_equal(tern_server_session_start(s), 0);
  assert_int_equal(tern_server_session_trim(s), 0); /* greeting unsent */
  drain(s, &a);
  assert_int_equal(tern_server_session_trim(s), 1);
  assert_true(a.c.live < full);
  assert_true(a.c.live < 1024); /* an idle session is small */
  assert_int_equal(tern_server_session_trim(s), 0); /* already */
  unsigned long allocs = a.c.allocs;
  static const char in[] = "EHLO client.example\r\n";
  feed(s, &a, in, sizeof in - 1, sizeof in - 1);
  assert_int_equal(a.c.allocs, allocs + 2); /* I/O buffers, the HELO */
  assert_true(a.c.live < full);
  drain(s, &a);
  assert_int_equal(tern_server_session_trim(s), 1);
  assert_true(a.c.live < 1024); /* still small, the HELO kept */
  allocs = a.c.allocs;
  static const char mail[] = "MAIL FROM:<a@example.org>\r\n";
  feed(s, &a, mail, sizeof mail - 1, sizeof mail - 1);
  assert_int_equal(a.c.allocs, allocs + 2); /* I/O buffers, the store */
  assert_int_equal(a.c.live, full);         /* the HELO's block is gone */
  drain(s, &a);
  assert_int_equal(tern_server_session_trim(s), 1);
  assert_true(a.c.live > 1024); /* the open transaction keeps its store */
  tern_server_session_free(s);
  assert_int_equal(a.c.live, 0);
}

static void test_data_no_alloc(void **state) {
  (void)state;
  static const int codes[] = {220, 250, 250, 250, 250, 354, 250, 221};
  static char in[2048];
  size_t len = build_data(in);
  run_transaction(in, len, 0, codes, 8);  /* pipelined in one buffer */
  run_transaction(in, len, 1, codes, 8);  /* one byte at a time */
  run_transaction(in, len, 13, codes, 8); /* odd chunks */
}

static void test_bdat_no_alloc(void **state) {
  (void)state;
  static const int one[] = {220, 250, 250, 250, 250, 250, 221};
  static const int two[] = {220, 250, 250, 250, 250, 250, 250, 221};
  static char in[2048];
  size_t len = build_bdat(in, false);
  run_transaction(in, len, 0, one, 7);
  run_transaction(in, len, 1, one, 7);
  len = build_bdat(in, true);
  run_transaction(in, len, 0, two, 8);
  run_transaction(in, len, 1, two, 8);
}

/* ---- (b) failing allocations ------------------------------------------------------- */

static void test_new_fails_cleanly(void **state) {
  (void)state;
  static struct app a;
  unsigned long n;
  for (n = 1;; n++) {
    app_init(&a);
    a.c.fail_at = n;
    struct tern_server_config cfg;
    struct tern_server_session *s = (struct tern_server_session *)&a;
    tern_server_config_init(&cfg);
    cfg.mem = &a.mem;
    int rc = tern_server_session_new(&s, &cfg, NULL, NULL);
    if (rc == 0) {
      assert_non_null(s);
      tern_server_session_free(s);
      assert_int_equal(a.c.frees, a.c.allocs);
      assert_int_equal(a.c.live, 0);
      break;
    }
    assert_int_equal(rc, TERN_ENOMEM);
    assert_null(s); /* *out cleared on failure */
    assert_int_equal(a.c.frees, a.c.allocs);
    assert_int_equal(a.c.live, 0);
    assert_true(n < 100);
  }
  assert_true(n >= 2); /* the first allocation did fail */
}

/* A whole session with AUTH (the one later allocation), failing each
 * allocation in turn: the session stays usable, nothing leaks. */
static void test_session_allocs_fail_in_turn(void **state) {
  (void)state;
  static struct app a;
  static char in[12000];
  size_t n = 0;
  n += (size_t)sprintf(in, "EHLO c.example\r\nAUTH PLAIN ");
  memset(in + n, 'A', 4000);
  n += 4000;
  n += (size_t)sprintf(in + n, "\r\nNOOP\r\nAUTH PLAIN\r\n");
  memset(in + n, 'B', 4000);
  n += 4000;
  n += (size_t)sprintf(in + n, "\r\n");
  size_t len = build_data(in + n); /* EHLO again, then a transaction */
  n += len;

  unsigned long total = 0;
  for (unsigned long fail = 1;; fail++) {
    app_init(&a);
    a.c.fail_at = fail;
    struct tern_server_session *s = new_session(&a, true);
    if (!s) {
      assert_int_equal(a.c.live, 0);
      continue;
    }
    assert_int_equal(tern_server_session_start(s), 0);
    drain(s, &a);
    feed(s, &a, in, n, fail % 2 ? 0 : 1);
    assert_int_equal(a.data_len, sizeof body);
    tern_server_session_free(s);
    assert_int_equal(a.c.frees, a.c.allocs);
    assert_int_equal(a.c.live, 0);
    if (a.c.calls < fail) { /* nothing failed: every point was tried */
      total = a.c.calls;
      break;
    }
    assert_true(fail < 100);
  }
  assert_true(total >= 2); /* the session and at least one AUTH line */
}

/* ---- (c) the AUTH line buffer ---------------------------------------------------------- */

static void auth_case(size_t step, bool continuation, bool free_early) {
  static struct app a;
  static char in[8192];
  size_t n = 0;

  app_init(&a);
  struct tern_server_session *s = new_session(&a, true);
  assert_non_null(s);
  size_t own = a.c.live;
  assert_int_equal(tern_server_session_start(s), 0);
  drain(s, &a);

  n += (size_t)sprintf(in, "EHLO c.example\r\n");
  n += (size_t)sprintf(in + n, continuation ? "AUTH PLAIN\r\n" : "AUTH PLAIN ");
  for (size_t i = 0; i < 4000; i++)
    in[n++] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
        [i % 64];
  in[n++] = '\r';
  in[n++] = '\n';
  feed(s, &a, in, n, step);

  assert_int_equal(a.auth_calls, continuation ? 2 : 1);
  assert_int_equal(a.auth_resp_len, 4000);
  assert_true(tern_server_session_is_authenticated(s));
  if (continuation) {
    static const int codes[] = {220, 250, 334, 235};
    expect_codes(&a, codes, 4);
  } else {
    static const int codes[] = {220, 250, 235};
    expect_codes(&a, codes, 3);
  }
  assert_true(a.c.live > own); /* the long line needed the AUTH buffer */

  if (free_early) {
    tern_server_session_free(s);
    assert_int_equal(a.c.frees, a.c.allocs);
    assert_int_equal(a.c.live, 0);
    return;
  }
  /* the next command gives it back */
  feed(s, &a, "MAIL FROM:<a@example.org>\r\n", 27, step);
  assert_int_equal(a.c.live, own);
  assert_int_equal(a.codes[a.ncodes - 1], 250);
  unsigned long allocs = a.c.allocs;
  /* and an ordinary transaction after it allocates nothing */
  static const char rest[] = "RCPT TO:<b@example.net>\r\nDATA\r\nhi\r\n.\r\n";
  feed(s, &a, rest, sizeof rest - 1, step);
  assert_int_equal(a.c.allocs, allocs);
  assert_int_equal(a.codes[a.ncodes - 1], 250);
  tern_server_session_free(s);
  assert_int_equal(a.c.frees, a.c.allocs);
  assert_int_equal(a.c.live, 0);
}

static void test_auth_line_freed(void **state) {
  (void)state;
  for (int cont = 0; cont < 2; cont++)
    for (int early = 0; early < 2; early++) {
      auth_case(0, cont, early);
      auth_case(1, cont, early);
      auth_case(97, cont, early);
    }
}

static int setup(void **state) {
  (void)state;
  make_body();
  return 0;
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_data_no_alloc),
      cmocka_unit_test(test_trim),
      cmocka_unit_test(test_bdat_no_alloc),
      cmocka_unit_test(test_new_fails_cleanly),
      cmocka_unit_test(test_session_allocs_fail_in_turn),
      cmocka_unit_test(test_auth_line_freed),
  };
  return cmocka_run_group_tests(tests, setup, NULL);
}
