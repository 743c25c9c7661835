/*
 * Unit tests for the client session pieces: the reply parser and the
 * EHLO capability parser (creply.c), the body encoder tern_dot_stuff()
 * (dot.c), the xtext encoder (params.c), and session checks that are
 * awkward as transcripts (configuration refused at _new(), the notify
 * hook, allocation failure, a byte-exact pipelined group of 1000
 * recipients through a small output buffer). The protocol flows are
 * tested by the transcripts in tests/transcripts/client/.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

#include "dot.h"

/* ---- reply parser ------------------------------------------------------------ */

static char rbuf[TERN__CREPLY_MAX];

/* Feed s (whole, or one byte at a time); returns the result of the last
 * feed: 1 for a complete reply, 0 for incomplete, or the error. */
static int parse(struct tern__creply *p, const char *s, bool bytewise) {
  size_t n = strlen(s), off = 0;
  tern__creply_init(p, rbuf);
  while (off < n) {
    bool done;
    long k = tern__creply_feed(p, s + off, bytewise ? 1 : n - off, &done);
    if (k < 0)
      return (int)k;
    off += (size_t)k;
    if (done)
      return off == n ? 1 : 2;
  }
  return 0;
}

static void test_reply_good(void **state) {
  (void)state;
  for (int b = 0; b < 2; b++) {
    struct tern__creply p;
    struct tern_client_reply r;
    assert_int_equal(parse(&p, "250-2.1.5 first\r\n250-2.1.5\r\n250 last\r\n",
                           b),
                     1);
    tern__creply_get(&p, &r);
    assert_int_equal(r.code, 250);
    assert_string_equal(r.enhanced, "2.1.5");
    assert_int_equal(r.nlines, 3);
    assert_int_equal(r.lines[0].len, 5);
    assert_memory_equal(r.lines[0].ptr, "first", 5);
    assert_int_equal(r.lines[1].len, 0);
    assert_memory_equal(r.lines[2].ptr, "last", 4);

    assert_int_equal(parse(&p, "354\r\n", b), 1);
    tern__creply_get(&p, &r);
    assert_int_equal(r.code, 354);
    assert_null(r.enhanced);
    assert_int_equal(r.lines[0].len, 0);

    /* a bare LF ends a line too */
    assert_int_equal(parse(&p, "220 hi\n", b), 1);
    /* class must match the code; 3.x.x is no enhanced code */
    assert_int_equal(parse(&p, "550 2.1.1 text\r\n", b), 1);
    tern__creply_get(&p, &r);
    assert_null(r.enhanced);
    assert_int_equal(parse(&p, "334 3.1.1\r\n", b), 1);
    tern__creply_get(&p, &r);
    assert_null(r.enhanced);
    assert_int_equal(parse(&p, "451 4.3.0\r\n", b), 1);
    tern__creply_get(&p, &r);
    assert_string_equal(r.enhanced, "4.3.0");
    assert_int_equal(r.lines[0].len, 0);
    /* "5.1.10x" is not a code */
    assert_int_equal(parse(&p, "550 5.1.10x no\r\n", b), 1);
    tern__creply_get(&p, &r);
    assert_null(r.enhanced);
    /* incomplete */
    assert_int_equal(parse(&p, "250-a\r\n250 b", b), 0);
    /* stops after the reply */
    assert_int_equal(parse(&p, "250 a\r\n250 b\r\n", b), 2);
  }
}

static void test_reply_bad(void **state) {
  (void)state;
  static const char *const bad[] = {
      "25 x\r\n",        "2500 x\r\n",     "abc x\r\n",   "199 x\r\n",
      "600 x\r\n",       "250_x\r\n",      "250-a\r\n251 b\r\n",
      "250 a\rb\r\n",    "\r\n",           "250 a\0b\r\n",
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    struct tern__creply p;
    size_t n = strlen(bad[i]);
    if (i == 9)
      n = 11;
    bool done = false;
    tern__creply_init(&p, rbuf);
    size_t off = 0;
    long k = 0;
    while (off < n && !done) {
      k = tern__creply_feed(&p, bad[i] + off, n - off, &done);
      if (k < 0)
        break;
      off += (size_t)k;
    }
    assert_int_equal(k, TERN_EPROTO);
  }
}

static void test_reply_limits(void **state) {
  (void)state;
  struct tern__creply p;
  bool done;
  static char big[20000];
  /* a line of 2048 octets (CRLF included) is fine, 2049 is not */
  memset(big, 'x', sizeof big);
  memcpy(big, "250 ", 4);
  memcpy(big + 2046, "\r\n", 2);
  tern__creply_init(&p, rbuf);
  assert_int_equal(tern__creply_feed(&p, big, 2048, &done), 2048);
  assert_true(done);
  memcpy(big + 2046, "x\r\n", 3);
  tern__creply_init(&p, rbuf);
  assert_int_equal(tern__creply_feed(&p, big, 2049, &done), TERN_EPROTO);
  /* 101 lines */
  tern__creply_init(&p, rbuf);
  long k = 0;
  for (int i = 0; i < 101 && k >= 0; i++)
    k = tern__creply_feed(&p, "250-x\r\n", 7, &done);
  assert_int_equal(k, TERN_EPROTO);
  /* 16 KiB in total */
  tern__creply_init(&p, rbuf);
  char line[1003];
  memset(line, 'y', sizeof line);
  memcpy(line, "250-", 4);
  memcpy(line + 1001, "\r\n", 2);
  k = 0;
  for (int i = 0; i < 20 && k >= 0; i++)
    k = tern__creply_feed(&p, line, sizeof line, &done);
  assert_int_equal(k, TERN_EPROTO);
}

/* ---- capabilities ------------------------------------------------------------ */

static void test_caps(void **state) {
  (void)state;
  struct tern__creply p;
  struct tern_client_reply r;
  struct tern__caps c;
  assert_int_equal(parse(&p,
                         "250-mx.example.org hello\r\n"
                         "250-pipelining\r\n"
                         "250-SIZE 35882577\r\n"
                         "250-8BITMIME\r\n"
                         "250-AUTH=LOGIN\r\n"
                         "250-AUTH PLAIN login XOAUTH2 bad!mech "
                         "WAY-TOO-LONG-MECHANISM-NAME\r\n"
                         "250-STARTTLS\r\n"
                         "250-ENHANCEDSTATUSCODES\r\n"
                         "250-CHUNKING\r\n"
                         "250-BINARYMIME\r\n"
                         "250-DSN\r\n"
                         "250-SMTPUTF8\r\n"
                         "250-REQUIRETLS\r\n"
                         "250-LIMITS MAILMAX=5 RCPTMAX=42\r\n"
                         "250 X-FOO bar\r\n",
                         false),
                   1);
  tern__creply_get(&p, &r);
  tern__ehlo_caps(&r, &c);
  assert_int_equal(c.caps,
                   TERN_EXT_PIPELINING | TERN_EXT_SIZE | TERN_EXT_8BITMIME |
                       TERN_EXT_AUTH | TERN_EXT_STARTTLS |
                       TERN_EXT_ENHANCEDSTATUSCODES | TERN_EXT_CHUNKING |
                       TERN_EXT_BINARYMIME | TERN_EXT_DSN | TERN_EXT_SMTPUTF8 |
                       TERN_EXT_REQUIRETLS | TERN_EXT_LIMITS);
  assert_int_equal(c.max_size, 35882577);
  assert_int_equal(c.rcptmax, 42);
  assert_string_equal(c.mechs, "LOGIN PLAIN XOAUTH2");
  assert_true(tern__mech_listed(c.mechs, "plain", 5));
  assert_false(tern__mech_listed(c.mechs, "PLAI", 4));

  /* the greeting line is not a keyword; SIZE without a number */
  assert_int_equal(parse(&p, "250-PIPELINING\r\n250 SIZE\r\n", false), 1);
  tern__creply_get(&p, &r);
  tern__ehlo_caps(&r, &c);
  assert_int_equal(c.caps, TERN_EXT_SIZE);
  assert_int_equal(c.max_size, 0);
  assert_string_equal(c.mechs, "");
}

/* ---- tern_dot_stuff ----------------------------------------------------------- */

/* Stuff `in` split at `split` (or whole when split >= len), final. */
static size_t stuff(const char *in, size_t len, size_t split, char *out) {
  unsigned st = 0;
  size_t n = 0;
  if (split < len) {
    n += tern_dot_stuff(&st, in, split, false, out, 2 * split + 7);
    n += tern_dot_stuff(&st, in + split, len - split, true, out + n,
                        2 * (len - split) + 7);
  } else {
    n += tern_dot_stuff(&st, in, len, true, out, 2 * len + 7);
  }
  assert_int_equal(st, 0);
  return n;
}

static void check_stuff(const char *in, size_t len, const char *want) {
  char out[256];
  for (size_t k = 0; k <= len; k++) {
    size_t n = stuff(in, len, k, out);
    out[n] = '\0';
    if (n != strlen(want) || memcmp(out, want, n) != 0)
      fail_msg("stuff(%s) split %zu: got \"%s\"", in, k, out);
  }
}

static void test_dot_stuff(void **state) {
  (void)state;
  struct {
    const char *in, *out;
  } cases[] = {
      {"", ".\r\n"},
      {".", "..\r\n.\r\n"},
      {"\n.\n", "\r\n..\r\n.\r\n"},
      {"\r.\r\n", "\r\n..\r\n.\r\n"},
      {"a\r\n.\r\nb", "a\r\n..\r\nb\r\n.\r\n"},
      {"line\r", "line\r\n.\r\n"},
      {"no newline", "no newline\r\n.\r\n"},
      {"a\r\r\nb", "a\r\n\r\nb\r\n.\r\n"},
      {"..x\r\n", "...x\r\n.\r\n"},
      {"x.\r\n.y", "x.\r\n..y\r\n.\r\n"},
      {"\r\n", "\r\n.\r\n"},
      {"\n\n", "\r\n\r\n.\r\n"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
    check_stuff(cases[i].in, strlen(cases[i].in), cases[i].out);

  /* a CR held across calls: "\r" then "\n" is one CRLF */
  unsigned st = 0;
  char out[64];
  assert_int_equal(tern_dot_stuff(&st, "a\r", 2, false, out, 11), 1);
  assert_int_not_equal(st, 0);
  size_t n = tern_dot_stuff(&st, "\n.", 2, false, out, 11);
  assert_int_equal(n, 4);
  assert_memory_equal(out, "\r\n..", 4);
  /* too small a buffer: nothing happens */
  unsigned before = st;
  assert_int_equal(tern_dot_stuff(&st, "abc", 3, true, out, 12), 0);
  assert_int_equal(st, before);
  assert_int_equal(tern_dot_stuff(NULL, "a", 1, true, out, 64), 0);
  /* the worst case fits 2 * len + 7 exactly: held CR, ".", final */
  st = 0;
  tern_dot_stuff(&st, "\r", 1, false, out, 9);
  assert_int_equal(tern_dot_stuff(&st, ".", 1, true, out, 9), 9);
  assert_memory_equal(out, "\r\n..\r\n.\r\n", 9);
}

static void test_xtext_encode(void **state) {
  (void)state;
  char out[64];
  long n = tern__xtext_encode(out, sizeof out, "a+b=c d\x7f\x01~!", 11);
  assert_int_equal(n, 21);
  assert_memory_equal(out, "a+2Bb+3Dc+20d+7F+01~!", 21);
  assert_int_equal(tern__xtext_encode(out, 2, "+", 1), TERN_ENOSPACE);
  /* round trip through the server's decoder */
  char enc[64];
  n = tern__xtext_encode(enc, sizeof enc, "x+y=z", 5);
  assert_int_equal(tern__xtext_decode(enc, (size_t)n), 5);
  assert_memory_equal(enc, "x+y=z", 5);
}

/* ---- sessions ------------------------------------------------------------------ */

struct ctx {
  int notified;
  int ready;
  int done;
  struct tern_client_outcome last;
};

static void on_ready(struct tern_client_session *c, void *ud) {
  (void)c;
  ((struct ctx *)ud)->ready++;
}

static void on_done(struct tern_client_session *c,
                    const struct tern_client_outcome *o, void *ud) {
  (void)c;
  ((struct ctx *)ud)->done++;
  ((struct ctx *)ud)->last = *o;
}

static void on_notify(struct tern_client_session *c, void *arg) {
  (void)c;
  ((struct ctx *)arg)->notified++;
}

static struct tern_client_session *make(struct ctx *x,
                                        struct tern_client_config *cfg) {
  struct tern_client_callbacks cb;
  struct tern_client_session *s;
  tern_client_callbacks_init(&cb);
  cb.on_ready = on_ready;
  cb.on_message_done = on_done;
  assert_int_equal(tern_client_session_new(&s, cfg, &cb, x), 0);
  tern_client_session_set_notify(s, on_notify, x);
  return s;
}

static void feed(struct tern_client_session *s, const char *t) {
  assert_int_equal(tern_client_session_feed(s, t, strlen(t)),
                   (long)strlen(t));
}

static void test_new_refuses(void **state) {
  (void)state;
  static const char *const names[] = {"a\r\nMAIL FROM:<x>", "a b", "",
                                      "-a.example", "a..b", "[1.2.3.4",
                                      "a.example-", "[a]b]", "x_y"};
  struct tern_client_config cfg;
  struct tern_client_session *s;
  for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
    tern_client_config_init(&cfg);
    cfg.ehlo_name = names[i];
    assert_int_equal(tern_client_session_new(&s, &cfg, NULL, NULL),
                     TERN_EINVAL);
  }
  tern_client_config_init(&cfg);
  cfg.auth_mechanism = "PLAIN\r\nQUIT";
  assert_int_equal(tern_client_session_new(&s, &cfg, NULL, NULL),
                   TERN_EINVAL);
  tern_client_config_init(&cfg);
  cfg.ehlo_name = "[192.0.2.1]";
  assert_int_equal(tern_client_session_new(&s, &cfg, NULL, NULL), 0);
  assert_int_equal(tern_client_session_want(s), TERN_CLIENT_WANT_READ);
  assert_int_equal(tern_client_session_send(s, NULL), TERN_EINVAL);
  tern_client_session_free(s);
  assert_int_equal(tern_client_session_new(NULL, NULL, NULL, NULL),
                   TERN_EINVAL);
}

static void *no_malloc(size_t n, void *ud) {
  (void)n;
  (void)ud;
  return NULL;
}

static void test_nomem(void **state) {
  (void)state;
  struct tern_mem mem = {no_malloc, NULL, NULL, NULL};
  struct tern_client_config cfg;
  struct tern_client_session *s = (void *)1;
  tern_client_config_init(&cfg);
  cfg.mem = &mem;
  assert_int_equal(tern_client_session_new(&s, &cfg, NULL, NULL),
                   TERN_ENOMEM);
  assert_null(s);
}

/* 1000 pipelined recipients through a 1-octet high-water mark: the group
 * is formatted as the output drains and is byte-exact. */
static void test_thousand_rcpts(void **state) {
  (void)state;
  struct ctx x = {0};
  struct tern_client_config cfg;
  tern_client_config_init(&cfg);
  cfg.output_high_water = 1;
  struct tern_client_session *s = make(&x, &cfg);
  feed(s, "220 mx\r\n");
  feed(s, "250-mx\r\n250 PIPELINING\r\n");
  assert_int_equal(x.ready, 1);
  tern_client_session_consume(s, tern_client_session_output(s, NULL));

  static struct tern_client_rcpt r[1000];
  static char addr[1000][32];
  for (int i = 0; i < 1000; i++) {
    snprintf(addr[i], sizeof addr[i], "u%d@example.org", i);
    r[i].address = addr[i];
  }
  struct tern_client_message m = {0};
  m.from = "a@example.org";
  m.rcpts = r;
  m.nrcpts = 1000;
  x.notified = 0;
  assert_int_equal(tern_client_session_send(s, &m), 0);
  assert_int_equal(x.notified, 1);

  size_t cap = 64 * 1024, total = 0, max_pending = 0;
  char *all = malloc(cap);
  const char *d;
  size_t n;
  tern_client_session_consume(s, 0);
  while ((n = tern_client_session_output(s, &d)) != 0) {
    if (n > max_pending)
      max_pending = n;
    assert_true(total + n < cap);
    memcpy(all + total, d, n);
    total += n;
    tern_client_session_consume(s, n);
  }
  all[total] = '\0';
  assert_true(max_pending < 4096);
  char *want = malloc(cap);
  size_t w = (size_t)snprintf(want, cap, "MAIL FROM:<a@example.org>\r\n");
  for (int i = 0; i < 1000; i++)
    w += (size_t)snprintf(want + w, cap - w, "RCPT TO:<u%d@example.org>\r\n",
                          i);
  w += (size_t)snprintf(want + w, cap - w, "DATA\r\n");
  if (total != w || memcmp(all, want, w) != 0) {
    size_t i = 0;
    while (i < w && i < total && all[i] == want[i])
      i++;
    fail_msg("group differs at %zu: got \"%.60s\"", i, all + i);
  }

  /* the replies: MAIL, 1000 RCPT, 354 */
  feed(s, "250 ok\r\n");
  for (int i = 0; i < 1000; i++)
    feed(s, i % 2 ? "550 no\r\n" : "250 ok\r\n");
  feed(s, "354 go\r\n");
  assert_true(tern_client_session_want(s) & TERN_CLIENT_WANT_BODY);
  assert_int_equal(tern_client_session_body(s, "x", 1), 1);
  assert_int_equal(tern_client_session_body_end(s), 0);
  assert_int_equal(tern_client_session_body_end(s), TERN_ESTATE);
  feed(s, "250 queued\r\n");
  assert_int_equal(x.done, 1);
  assert_int_equal(x.last.code, 250);
  assert_int_equal(x.last.accepted, 500);
  assert_int_equal(x.last.delivered, 500);
  assert_int_equal(x.ready, 2);
  free(all);
  free(want);
  tern_client_session_free(s);
}

/* The notify hook fires after the calls that queue output. */
static void test_notify_and_getters(void **state) {
  (void)state;
  struct ctx x = {0};
  struct tern_client_config cfg;
  tern_client_config_init(&cfg);
  struct tern_client_session *s = make(&x, &cfg);
  assert_ptr_equal(tern_client_session_notify_arg(s), &x);
  assert_ptr_equal(tern_client_session_userdata(s), &x);
  feed(s, "220 mx\r\n");
  feed(s, "250-mx\r\n250-SIZE 100\r\n250 AUTH PLAIN LOGIN\r\n");
  assert_int_equal(tern_client_session_caps(s),
                   TERN_EXT_SIZE | TERN_EXT_AUTH);
  assert_int_equal(tern_client_session_max_size(s), 100);
  assert_string_equal(tern_client_session_auth_mechs(s), "PLAIN LOGIN");
  x.notified = 0;
  assert_int_equal(tern_client_session_noop(s), 0);
  assert_int_equal(x.notified, 1);
  assert_int_equal(tern_client_session_body(s, "x", 1), TERN_ESTATE);
  feed(s, "250 ok\r\n");
  assert_int_equal(tern_client_session_quit(s), 0);
  assert_int_equal(x.notified, 2);
  assert_true(tern_client_session_want(s) & TERN_CLIENT_WANT_WRITE);
  tern_client_session_eof(s);
  assert_true(tern_client_session_want(s) & TERN_CLIENT_WANT_CLOSE);
  assert_int_equal(tern_client_session_feed(s, "250 x\r\n", 7), 7);
  assert_int_equal(tern_client_session_quit(s), TERN_ESTATE);
  tern_client_session_free(s);
  tern_client_session_free(NULL);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_reply_good),
      cmocka_unit_test(test_reply_bad),
      cmocka_unit_test(test_reply_limits),
      cmocka_unit_test(test_caps),
      cmocka_unit_test(test_dot_stuff),
      cmocka_unit_test(test_xtext_encode),
      cmocka_unit_test(test_new_refuses),
      cmocka_unit_test(test_nomem),
      cmocka_unit_test(test_thousand_rcpts),
      cmocka_unit_test(test_notify_and_getters),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
