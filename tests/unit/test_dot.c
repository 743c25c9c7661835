/*
 * Unit tests for the DATA codec (src/core/dot.c): end-of-data detection,
 * dot-unstuffing, bare CR/LF normalisation, the long-line flag and
 * backpressure, driven through tern__dot_init()/tern__dot_feed() directly.
 *
 * Every case is fed whole, one byte at a time, split in two at every
 * point, and with an emit callback that refuses every call (backpressure);
 * all four must give the same content, end position and flags.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dot.h"

/*
 * Known core deviations, reproduced by the tests below. Set to 0 once
 * src/core/dot.c is fixed; the tests then run instead of being skipped.
 *
 * STUFFED_LINE_LEN: RFC 5321 §4.5.3.1.6 caps a text line at 1000 octets
 * "not counting the leading dot duplicated for transparency", but dot.c
 * counts that dot: "." + 998 octets + CRLF (1001 octets on the wire, 998
 * of text) sets long_line with max_line 1000.
 *
 * EMIT_AFTER_FALSE: after emit returns false for the pending run, a bare
 * LF still emits its "\r\n" in the same call (dot.c, D_MID branch), so
 * the server's on_data is called again after it returned TERN_PENDING.
 */
#ifndef KNOWN_BUG_STUFFED_LINE_LEN
#define KNOWN_BUG_STUFFED_LINE_LEN 0
#endif
#ifndef KNOWN_BUG_EMIT_AFTER_FALSE
#define KNOWN_BUG_EMIT_AFTER_FALSE 0
#endif

/* ---- a decoder run ------------------------------------------------------- */

struct result {
  char out[8192];
  size_t out_len;
  size_t consumed; /* total bytes consumed until done or the input ended */
  bool done;
  bool bare;
  bool long_line;
};

struct sink {
  struct result *r;
  bool refuse;        /* return false from every call */
  unsigned calls;     /* in the current tern__dot_feed() call */
  unsigned after_no;  /* calls made after a refusal in the same feed */
  bool refused;       /* a call in the current feed returned false */
};

static bool emit(void *ctx, const char *p, size_t n) {
  struct sink *k = ctx;
  assert_true(n > 0);
  assert_true(k->r->out_len + n <= sizeof k->r->out);
  memcpy(k->r->out + k->r->out_len, p, n);
  k->r->out_len += n;
  k->calls++;
  if (k->refused)
    k->after_no++;
  if (k->refuse) {
    k->refused = true;
    return false;
  }
  return true;
}

/* Feed in[0..len) in pieces: `step` bytes at a time (0 = whole), with an
 * optional first piece of `first` bytes (SIZE_MAX = none). */
static void run(struct result *r, const char *in, size_t len, bool after_crlf,
                size_t max_line, size_t first, size_t step, bool refuse,
                unsigned *after_no) {
  struct tern__dot d;
  struct sink k = {r, refuse, 0, 0, false};
  size_t pos = 0;
  unsigned feeds = 0;

  memset(r, 0, sizeof *r);
  tern__dot_init(&d, max_line, after_crlf);
  while (pos < len && !r->done) {
    size_t n = len - pos;
    if (first != SIZE_MAX && feeds == 0)
      n = first; /* may be 0: an empty feed must be harmless */
    else if (step && n > step)
      n = step;
    if (n > len - pos)
      n = len - pos;
    bool done = false;
    k.calls = 0;
    k.refused = false;
    size_t got = tern__dot_feed(&d, in + pos, n, emit, &k, &done);
    assert_true(got <= n);
    if (done) {
      assert_true(got > 0);
      /* the final "\n" is the last byte consumed */
      assert_int_equal(in[pos + got - 1], '\n');
    } else if (got < n) {
      /* only a refusal may leave input unread */
      assert_true(k.refused);
    }
    r->done = done;
    pos += got;
    assert_true(++feeds < 4 * len + 16); /* no livelock */
  }
  r->consumed = pos;
  r->bare = d.bare;
  r->long_line = d.long_line;
  if (after_no)
    *after_no += k.after_no;
}

static void same(const struct result *a, const struct result *b) {
  assert_int_equal(a->out_len, b->out_len);
  assert_memory_equal(a->out, b->out, a->out_len);
  assert_int_equal(a->consumed, b->consumed);
  assert_int_equal(a->done, b->done);
  assert_int_equal(a->bare, b->bare);
  assert_int_equal(a->long_line, b->long_line);
}

/*
 * Decode `in` every way and check that all agree; returns the whole-feed
 * result in *r. Emit calls made after a refusal are added to *after_no.
 */
static void decode_all(struct result *r, const char *in, size_t len,
                       bool after_crlf, size_t max_line, unsigned *after_no) {
  static struct result o; /* large: keep it off the stack */

  run(r, in, len, after_crlf, max_line, SIZE_MAX, 0, false, NULL);
  run(&o, in, len, after_crlf, max_line, SIZE_MAX, 1, false, NULL);
  same(r, &o);
  for (size_t k = 0; k <= len; k++) {
    run(&o, in, len, after_crlf, max_line, k, 0, false, NULL);
    same(r, &o);
  }
  run(&o, in, len, after_crlf, max_line, SIZE_MAX, 0, true, after_no);
  same(r, &o);
  run(&o, in, len, after_crlf, max_line, SIZE_MAX, 1, true, after_no);
  same(r, &o);
  for (size_t k = 0; k <= len; k++) {
    run(&o, in, len, after_crlf, max_line, k, 0, true, after_no);
    same(r, &o);
  }
}

/* Decode a NUL-free literal and check content, end and bare flag. */
static void check(const char *in, bool after_crlf, const char *want,
                  bool done, size_t consumed, bool bare) {
  struct result r;
  decode_all(&r, in, strlen(in), after_crlf, 0, NULL);
  if (r.out_len != strlen(want) || memcmp(r.out, want, r.out_len) != 0) {
    print_error("input %zu bytes: content mismatch (%zu vs %zu bytes)\n",
                strlen(in), r.out_len, strlen(want));
  }
  assert_int_equal(r.out_len, strlen(want));
  assert_memory_equal(r.out, want, r.out_len);
  assert_int_equal(r.done, done);
  assert_int_equal(r.consumed, consumed);
  assert_int_equal(r.bare, bare);
}

/* ---- smuggling: nothing but <CRLF>.<CRLF> ends the data ------------------- */

struct smuggle {
  const char *body;
  size_t body_len;
  const char *content; /* what the body becomes, normalised */
  size_t content_len;
  bool bare;
};

#define S(b, c, bare) {b, sizeof b - 1, c, sizeof c - 1, bare}
static const struct smuggle smuggles[] = {
    S("\n.\n", "\r\n.\r\n", true),
    S("\n.\r\n", "\r\n.\r\n", true),
    S("\r\n.\n", "\r\n.\r\n", true),
    S("\r.\r\n", "\r\n.\r\n", true),
    S("\r\n.\rX", "\r\n.\r\nX", true),
    S("\r\n\x00.\r\n", "\r\n\x00.\r\n", false),
    /* more of the family */
    S("\n.\r", "\r\n.\r\n", true),
    S("\r.\r", "\r\n.\r\n", true),
    S("\r\n.\r\r\n", "\r\n.\r\n\r\n", true),
    S("\r\n.\n.\n", "\r\n.\r\n.\r\n", true),
    S("\r\n..\r\n", "\r\n.\r\n", false), /* stuffed, not the end */
};
#undef S

static void test_smuggling_does_not_end(void **state) {
  (void)state;
  static const char *const prefixes[] = {"", "a", "a\r\n"};
  static const char term[] = "\r\n.\r\n";
  static struct result r, part;
  char in[256], want[256];

  for (size_t i = 0; i < sizeof smuggles / sizeof smuggles[0]; i++) {
    const struct smuggle *c = &smuggles[i];
    for (size_t p = 0; p < 3; p++) {
      size_t pl = strlen(prefixes[p]);
      /* prefix + body alone: no end, everything consumed */
      memcpy(in, prefixes[p], pl);
      memcpy(in + pl, c->body, c->body_len);
      decode_all(&part, in, pl + c->body_len, true, 0, NULL);
      assert_false(part.done);
      assert_int_equal(part.consumed, pl + c->body_len);
      assert_int_equal(part.bare, c->bare);

      /* prefix + body + terminator: ends exactly at the terminator */
      memcpy(in + pl + c->body_len, term, sizeof term - 1);
      size_t len = pl + c->body_len + sizeof term - 1;
      decode_all(&r, in, len, true, 0, NULL);
      assert_true(r.done);
      assert_int_equal(r.consumed, len);
      assert_int_equal(r.bare, c->bare);
      memcpy(want, prefixes[p], pl);
      memcpy(want + pl, c->content, c->content_len);
      size_t wl = pl + c->content_len;
      /* the terminator's CRLF ends the body's last line (or an empty
       * one) and is content; ".\r\n" is the end */
      memcpy(want + wl, "\r\n", 2);
      wl += 2;
      assert_int_equal(r.out_len, wl);
      assert_memory_equal(r.out, want, wl);
      /* what was emitted before the terminator is a prefix of the end */
      assert_true(part.out_len <= r.out_len);
      assert_memory_equal(part.out, r.out, part.out_len);
    }
  }
}

static void test_crlf_dot_crlf_ends(void **state) {
  (void)state;
  check("\r\n.\r\n", true, "\r\n", true, 5, false);
  check("a\r\n.\r\n", true, "a\r\n", true, 6, false);
  /* bytes after the end are left to the caller */
  check("a\r\n.\r\nQUIT\r\n", true, "a\r\n", true, 6, false);
  check("a\r\n.\r\n.\r\n", true, "a\r\n", true, 6, false);
  /* a space line, then the end: the whitespace line is content */
  check("\r\n \r\n.\r\n", true, "\r\n \r\n", true, 8, false);
  /* a real CRLF after normalised lines re-arms the end */
  check("a\nb\r\n.\r\n", true, "a\r\nb\r\n", true, 8, true);
  check("a\rb\r\n.\r\n", true, "a\r\nb\r\n", true, 8, true);
}

/* ---- dot-unstuffing (RFC 5321 §4.5.2) -------------------------------------- */

static void test_unstuffing(void **state) {
  (void)state;
  check("..x\r\n.\r\n", true, ".x\r\n", true, 8, false);
  check("a\r\n..x\r\n.\r\n", true, "a\r\n.x\r\n", true, 11, false);
  check("a\r\n.x\r\n.\r\n", true, "a\r\nx\r\n", true, 10, false);
  check("a\r\n...\r\n.\r\n", true, "a\r\n..\r\n", true, 11, false);
  check("a\r\n..\r\n.\r\n", true, "a\r\n.\r\n", true, 10, false);
  check("a\r\n. \r\n.\r\n", true, "a\r\n \r\n", true, 10, false);
  /* a dot in the middle or at the end of a line stays */
  check("a.b.\r\n.\r\n", true, "a.b.\r\n", true, 9, false);
  /* the stuffing dot is dropped after a soft (normalised) BOL too */
  check("a\n..x\r\n.\r\n", true, "a\r\n.x\r\n", true, 10, true);
  /* "." alone ends the data only after a real CRLF: elsewhere it is a
   * one-character line and keeps its dot */
  check("a\n.\r\n.\r\n", true, "a\r\n.\r\n", true, 8, true);
  check(".\r\n.\r\n", false, ".\r\n", true, 6, false);
  /* held dot at the end of the input emits nothing yet */
  check("a\r\n.", true, "a\r\n", false, 4, false);
  check("a\r\n.\r", true, "a\r\n", false, 5, false);
  check("a\r\n..", true, "a\r\n.", false, 5, false);
}

static void test_empty_message(void **state) {
  (void)state;
  /* DATA ended with a real CRLF: "." first line is the end at once */
  check(".\r\n", true, "", true, 3, false);
  check(".\r\nMAIL FROM:<>\r\n", true, "", true, 3, false);
  /* after a bare LF ended DATA it is only content */
  check(".\r\n", false, ".\r\n", false, 3, false);
  check(".\n", true, ".\r\n", false, 2, true);
}

/* ---- flags ------------------------------------------------------------------- */

static void test_bare_flag(void **state) {
  (void)state;
  check("a\r\nb\r\n.\r\n", true, "a\r\nb\r\n", true, 9, false);
  check("a\x7f\xff\r\n.\r\n", true, "a\x7f\xff\r\n", true, 8, false);
  check("a\nb", true, "a\r\nb", false, 3, true);
  check("a\rb", true, "a\r\nb", false, 3, true);
  check("a\r", true, "a", false, 2, false); /* CR held: not yet bare */
  check("\n", true, "\r\n", false, 1, true);
  check("\r\r\n", true, "\r\n\r\n", false, 3, true);
}

static void long_line_case(size_t content, const char *term, bool stuffed,
                           bool want_long) {
  static char in[1200];
  static struct result r;
  size_t n = 0;
  if (stuffed)
    in[n++] = '.';
  memset(in + n, 'x', content);
  n += content;
  memcpy(in + n, term, strlen(term));
  n += strlen(term);
  memcpy(in + n, ".\r\n", 3); /* after a real CRLF this ends the data */
  n += 3;
  run(&r, in, n, true, 1000, SIZE_MAX, 0, false, NULL);
  assert_int_equal(r.long_line, want_long);
  /* and the flag is the same in every split */
  static struct result o;
  run(&o, in, n, true, 1000, SIZE_MAX, 1, false, NULL);
  same(&r, &o);
  for (size_t k = 990; k <= n; k++) {
    run(&o, in, n, true, 1000, k, 0, false, NULL);
    same(&r, &o);
  }
}

static void test_long_line(void **state) {
  (void)state;
  long_line_case(998, "\r\n", false, false); /* 1000 with CRLF: fine */
  long_line_case(999, "\r\n", false, true);
  long_line_case(998, "\n", false, false); /* counted as if CRLF */
  long_line_case(999, "\n", false, true);
  long_line_case(997, "\r\n", true, false);
  /* max_line 0: no limit */
  static char big[5000];
  static struct result r;
  memset(big, 'y', sizeof big);
  run(&r, big, sizeof big, true, 0, SIZE_MAX, 0, false, NULL);
  assert_false(r.long_line);
  /* the flag sticks once set */
  struct tern__dot d;
  bool done;
  struct sink k = {&r, false, 0, 0, false};
  memset(&r, 0, sizeof r);
  tern__dot_init(&d, 10, true);
  tern__dot_feed(&d, "0123456789\r\nab\r\n", 16, emit, &k, &done);
  assert_true(d.long_line);
  assert_false(done);
}

/* RFC 5321 §4.5.3.1.6: the stuffing dot does not count. */
static void test_long_line_stuffing_dot(void **state) {
  (void)state;
  if (KNOWN_BUG_STUFFED_LINE_LEN)
    skip(); /* see KNOWN_BUG_STUFFED_LINE_LEN at the top */
  long_line_case(998, "\r\n", true, false);
  long_line_case(999, "\r\n", true, true);
}

/* ---- backpressure ------------------------------------------------------------- */

static void test_backpressure(void **state) {
  (void)state;
  static const char in[] =
      "Subject: x\r\n..stuffed\r\nbare\nlf\rcr\r\n.\r\nQUIT\r\n";
  size_t len = sizeof in - 1;
  static struct result whole, slow;
  run(&whole, in, len, true, 0, SIZE_MAX, 0, false, NULL);
  assert_true(whole.done);
  static const char want[] = "Subject: x\r\n.stuffed\r\nbare\r\nlf\r\ncr\r\n";
  assert_int_equal(whole.out_len, sizeof want - 1);
  assert_memory_equal(whole.out, want, sizeof want - 1);

  /* refuse every call: each feed stops after the byte it is working on,
   * so every feed emits something or makes progress, and feeding the rest
   * resumes where it stopped */
  struct tern__dot d;
  struct sink k = {&slow, true, 0, 0, false};
  size_t pos = 0, feeds = 0;
  bool done = false;
  memset(&slow, 0, sizeof slow);
  tern__dot_init(&d, 0, true);
  while (!done) {
    size_t before = slow.out_len;
    k.refused = false;
    size_t got = tern__dot_feed(&d, in + pos, len - pos, emit, &k, &done);
    if (!done)
      assert_true(k.refused); /* stopped only because of the refusal */
    assert_true(got > 0 || slow.out_len > before);
    pos += got;
    assert_true(++feeds < 2 * len);
  }
  assert_int_equal(pos, whole.consumed);
  assert_int_equal(slow.out_len, whole.out_len);
  assert_memory_equal(slow.out, whole.out, whole.out_len);
  assert_true(feeds > 5); /* it really did stop along the way */

  /* refusing at one point only: a feed that stops early leaves exactly
   * the rest, and all content emitted so far ends a prefix */
  for (size_t stop_at = 1; stop_at < 12; stop_at++) {
    unsigned calls = 0;
    memset(&slow, 0, sizeof slow);
    tern__dot_init(&d, 0, true);
    pos = 0;
    done = false;
    while (!done) {
      k.refuse = ++calls == stop_at;
      k.refused = false;
      size_t got = tern__dot_feed(&d, in + pos, len - pos, emit, &k, &done);
      pos += got;
      assert_true(calls < 100);
    }
    assert_int_equal(pos, whole.consumed);
    assert_int_equal(slow.out_len, whole.out_len);
    assert_memory_equal(slow.out, whole.out, whole.out_len);
  }
}

/* dot.h: "Return false to make tern__dot_feed() stop after the byte it is
 * working on". The server relies on this for on_data's TERN_PENDING. */
static void test_no_emit_after_refusal(void **state) {
  (void)state;
  if (KNOWN_BUG_EMIT_AFTER_FALSE)
    skip(); /* see KNOWN_BUG_EMIT_AFTER_FALSE at the top */
  static struct result r;
  unsigned after_no = 0;
  run(&r, "ab\ncd", 5, true, 0, SIZE_MAX, 0, true, &after_no);
  assert_int_equal(after_no, 0);
}

/* Every smuggling body, also with after_crlf false and a line limit. */
static void test_all_ways_agree(void **state) {
  (void)state;
  static struct result r;
  unsigned after_no = 0;
  for (size_t i = 0; i < sizeof smuggles / sizeof smuggles[0]; i++) {
    decode_all(&r, smuggles[i].body, smuggles[i].body_len, false, 3,
               &after_no);
    decode_all(&r, smuggles[i].body, smuggles[i].body_len, true, 2,
               &after_no);
  }
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_smuggling_does_not_end),
      cmocka_unit_test(test_crlf_dot_crlf_ends),
      cmocka_unit_test(test_unstuffing),
      cmocka_unit_test(test_empty_message),
      cmocka_unit_test(test_bare_flag),
      cmocka_unit_test(test_long_line),
      cmocka_unit_test(test_long_line_stuffing_dot),
      cmocka_unit_test(test_backpressure),
      cmocka_unit_test(test_no_emit_after_refusal),
      cmocka_unit_test(test_all_ways_agree),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
