#define _GNU_SOURCE /* memmem */
/*
 * The server session's public API at its edges: argument checks, state
 * errors, struct-size compatibility, the runtime hook, reply validation,
 * and the output queue's compaction. Transcripts cover the protocol;
 * this covers the contract of each function.
 */
/* clang-format off: cmocka needs these first */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
/* clang-format on */

#include <stdlib.h>
#include <string.h>

#include <tern/tern.h>

static struct tern_server_session *make(const struct tern_server_config *c,
                                        const struct tern_server_callbacks *cb,
                                        void *ud) {
  struct tern_server_session *s = NULL;
  assert_int_equal(tern_server_session_new(&s, c, cb, ud), 0);
  assert_non_null(s);
  return s;
}

/* Everything queued so far, as a string (consumed). */
static char *drain(struct tern_server_session *s) {
  static char buf[8192];
  const char *p;
  size_t n = tern_server_session_output(s, &p);
  assert_true(n < sizeof buf);
  memcpy(buf, p, n);
  buf[n] = '\0';
  tern_server_session_consume(s, n);
  return buf;
}

static long feed(struct tern_server_session *s, const char *text) {
  return tern_server_session_feed(s, text, strlen(text));
}

static void test_errors_table(void **st) {
  (void)st;
  assert_string_equal(tern_err_name(TERN_ENOMEM), "TERN_ENOMEM");
  assert_string_equal(tern_strerror(TERN_EINVAL), "invalid argument");
  assert_non_null(tern_strerror(-12345));
  assert_non_null(tern_err_name(-12345));
}

static void test_null_arguments(void **st) {
  struct tern_server_config c;
  const char *p = (const char *)1;
  (void)st;
  assert_int_equal(tern_server_session_new(NULL, NULL, NULL, NULL),
                   TERN_EINVAL);
  assert_int_equal(tern_server_session_start(NULL), TERN_EINVAL);
  assert_int_equal(tern_server_session_feed(NULL, "x", 1), TERN_EINVAL);
  assert_int_equal(tern_server_session_output(NULL, &p), 0);
  assert_null(p);
  tern_server_session_consume(NULL, 1);
  assert_int_equal(tern_server_session_want(NULL), 0);
  assert_int_equal(tern_server_session_reply(NULL, NULL), TERN_EINVAL);
  assert_int_equal(tern_server_session_pending(NULL), TERN_EV_NONE);
  assert_int_equal(tern_server_session_resume(NULL), TERN_EINVAL);
  assert_int_equal(tern_server_session_tls_started(NULL), TERN_EINVAL);
  tern_server_session_eof(NULL);
  tern_server_session_timeout(NULL);
  assert_int_equal(tern_server_session_timeout_ms(NULL), 0);
  tern_server_session_close(NULL, NULL);
  tern_server_session_set_xclient_trusted(NULL, true);
  tern_server_session_set_notify(NULL, NULL, NULL);
  assert_null(tern_server_session_notify_arg(NULL));
  assert_false(tern_server_session_in_transaction(NULL));
  assert_false(tern_server_session_is_tls(NULL));
  assert_false(tern_server_session_is_authenticated(NULL));
  assert_null(tern_server_session_userdata(NULL));
  tern_server_session_set_userdata(NULL, NULL);
  tern_server_session_free(NULL);

  struct tern_server_session *s = make(NULL, NULL, NULL);
  assert_int_equal(tern_server_session_feed(s, NULL, 1), TERN_EINVAL);
  tern_server_session_free(s);

  tern_server_config_init(&c);
  c.hostname = "bad host";
  assert_int_equal(tern_server_session_new(&s, &c, NULL, NULL), TERN_EINVAL);
  c.hostname = "";
  assert_int_equal(tern_server_session_new(&s, &c, NULL, NULL), TERN_EINVAL);
  tern_server_config_init(&c);
  c.max_line = 100;
  assert_int_equal(tern_server_session_new(&s, &c, NULL, NULL), TERN_EINVAL);
  tern_server_config_init(&c);
  c.banner = "tab\tbanner";
  assert_int_equal(tern_server_session_new(&s, &c, NULL, NULL), TERN_EINVAL);
}

static void test_state_errors(void **st) {
  (void)st;
  struct tern_server_session *s = make(NULL, NULL, NULL);
  assert_int_equal(feed(s, "EHLO x\r\n"), TERN_ESTATE); /* not started */
  assert_int_equal(tern_server_session_start(s), 0);
  assert_int_equal(tern_server_session_start(s), TERN_ESTATE);
  assert_int_equal(tern_server_session_reply(s, NULL), TERN_ESTATE);
  assert_int_equal(tern_server_session_resume(s), TERN_ESTATE);
  assert_int_equal(tern_server_session_tls_started(s), TERN_ESTATE);
  assert_string_equal(drain(s), "220 localhost ESMTP tern\r\n");
  tern_server_session_free(s);
}

/* An older caller passes a shorter struct; a newer one a longer struct
 * whose unknown tail must be zero. */
static void test_struct_sizes(void **st) {
  struct {
    struct tern_server_config c;
    unsigned char extra[16];
  } big;
  struct tern_server_config small;
  struct tern_server_session *s;
  (void)st;

  tern_server_config_init(&small);
  small.size = offsetof(struct tern_server_config, extensions);
  small.hostname = "old.example";
  s = make(&small, NULL, NULL); /* the rest are defaults */
  tern_server_session_start(s);
  assert_string_equal(drain(s), "220 old.example ESMTP tern\r\n");
  tern_server_session_free(s);

  memset(&big, 0, sizeof big);
  tern_server_config_init(&big.c);
  big.c.size = sizeof big;
  s = make(&big.c, NULL, NULL);
  tern_server_session_free(s);
  big.extra[3] = 1;
  assert_int_equal(tern_server_session_new(&s, &big.c, NULL, NULL),
                   TERN_EINVAL);
  big.c.size = 1; /* nonsense */
  assert_int_equal(tern_server_session_new(&s, &big.c, NULL, NULL),
                   TERN_EINVAL);
}

static void test_reply_check(void **st) {
  (void)st;
  struct tern_reply ok = {550, "5.7.1", "no"};
  assert_int_equal(tern_reply_check(&ok), 0);
  struct tern_reply cases[] = {
      {199, NULL, "x"},        {600, NULL, "x"},
      {550, "4.7.1", "x"},     {550, "5.7", "x"},
      {550, "5.07.1", "x"},    {550, "5.7.1000", "x"},
      {550, "5.7.1x", "x"},    {250, "2.0.0", "a\rb"},
      {250, NULL, "a\x01"},    {250, NULL, "del\x7f"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
    assert_int_equal(tern_reply_check(&cases[i]), TERN_EINVAL);
  assert_int_equal(tern_reply_check(NULL), TERN_EINVAL);
  struct tern_reply notext = {250, "2.0.0", NULL};
  assert_int_equal(tern_reply_check(&notext), 0);
  char longline[600];
  memset(longline, 'a', sizeof longline - 1);
  longline[sizeof longline - 1] = '\0';
  struct tern_reply toolong = {250, NULL, longline};
  assert_int_equal(tern_reply_check(&toolong), TERN_EINVAL);
  struct tern_reply zero = {550, "5.0.0", "x"};
  assert_int_equal(tern_reply_check(&zero), 0);
}

struct hook {
  int calls;
  struct tern_server_session *seen;
};

static void on_notify(struct tern_server_session *s, void *arg) {
  struct hook *h = arg;
  h->calls++;
  h->seen = s;
}

static int rcpt_pending(struct tern_server_session *s, const struct tern_path *to,
                        const struct tern_rcpt_params *p, struct tern_reply *r,
                        void *ud) {
  (void)s, (void)to, (void)p, (void)r, (void)ud;
  return TERN_PENDING;
}

static int data_pause(struct tern_server_session *s, const char *b, size_t n,
                      void *ud) {
  (void)s, (void)b, (void)n, (void)ud;
  return TERN_PENDING;
}

/* The runtime hook fires on reply(), resume() and close(); the helpers
 * report the transaction state and user data. */
static void test_notify_and_facts(void **st) {
  struct tern_server_callbacks cb;
  struct hook h = {0, NULL};
  int mine = 7;
  (void)st;
  tern_server_callbacks_init(&cb);
  cb.on_rcpt = rcpt_pending;
  cb.on_data = data_pause;
  struct tern_server_session *s = make(NULL, &cb, &mine);
  assert_ptr_equal(tern_server_session_userdata(s), &mine);
  tern_server_session_set_userdata(s, &h);
  assert_ptr_equal(tern_server_session_userdata(s), &h);
  tern_server_session_set_notify(s, on_notify, &h);
  assert_ptr_equal(tern_server_session_notify_arg(s), &h);
  tern_server_session_start(s);
  drain(s);
  assert_int_equal(tern_server_session_timeout_ms(s), 5 * 60 * 1000);

  const char *in = "EHLO c\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<d@e.f>\r\n";
  assert_int_equal(feed(s, in), (long)strlen(in));
  assert_true(tern_server_session_in_transaction(s));
  assert_int_equal(tern_server_session_pending(s), TERN_EV_RCPT);
  assert_false(tern_server_session_want(s) & TERN_WANT_READ);
  struct tern_reply bad = {250, "4.0.0", "x"};
  assert_int_equal(tern_server_session_reply(s, &bad), TERN_EINVAL);
  assert_int_equal(tern_server_session_reply(s, NULL), 0);
  assert_int_equal(h.calls, 1);
  assert_ptr_equal(h.seen, s);

  in = "DATA\r\nhello\r\n";
  assert_int_equal(feed(s, in), (long)strlen(in) - 0);
  assert_int_equal(tern_server_session_timeout_ms(s), 5 * 60 * 1000);
  assert_false(tern_server_session_want(s) & TERN_WANT_READ);
  assert_int_equal(tern_server_session_resume(s), 0);
  assert_int_equal(h.calls, 2);
  tern_server_session_close(s, NULL);
  assert_int_equal(h.calls, 3);
  char *out = drain(s);
  assert_non_null(strstr(out, "421 4.3.2 localhost Service shutting down"));
  assert_true(tern_server_session_want(s) & TERN_WANT_CLOSE);
  assert_false(tern_server_session_is_tls(s));
  assert_false(tern_server_session_is_authenticated(s));
  tern_server_session_set_notify(s, NULL, &h);
  assert_null(tern_server_session_notify_arg(s));
  tern_server_session_free(s);
}

/* A reply written in parts: the queue keeps the order and compacts. */
static void test_output_partial_consume(void **st) {
  (void)st;
  struct tern_server_config c;
  tern_server_config_init(&c);
  c.output_high_water = 600;
  struct tern_server_session *s = make(&c, NULL, NULL);
  tern_server_session_start(s);
  const char *p;
  size_t n = tern_server_session_output(s, &p);
  tern_server_session_consume(s, 5); /* "220 l" */
  assert_int_equal(tern_server_session_output(s, &p), n - 5);
  assert_memory_equal(p, "ocalhost", 8);
  /* Pipelined NOOPs go past the high-water mark: input stops there. */
  char in[4000];
  size_t len = 0;
  for (int i = 0; i < 200; i++) {
    memcpy(in + len, "NOOP\r\n", 6);
    len += 6;
  }
  long took = tern_server_session_feed(s, in, len);
  assert_true(took > 0 && (size_t)took < len);
  assert_false(tern_server_session_want(s) & TERN_WANT_READ);
  n = tern_server_session_output(s, &p);
  assert_true(n <= 600 + 2 * 2048);
  tern_server_session_consume(s, n - 3); /* leave a partial line */
  took += tern_server_session_feed(s, in + took, len - (size_t)took);
  n = tern_server_session_output(s, &p);
  assert_memory_equal(p, "k\r\n", 3); /* the tail of "250 2.0.0 Ok" */
  tern_server_session_consume(s, 1000000); /* clamped */
  assert_int_equal(tern_server_session_output(s, &p), 0);
  tern_server_session_free(s);
}

/* tern_server_session_line_pending(): true only while a command line is
 * partly received (the runtime's per-line deadline), never in DATA. */
static void test_line_pending(void **st) {
  (void)st;
  struct tern_server_session *s = make(NULL, NULL, NULL);
  assert_false(tern_server_session_line_pending(NULL));
  tern_server_session_start(s);
  drain(s);
  assert_false(tern_server_session_line_pending(s));
  assert_int_equal(feed(s, "NO"), 2);
  assert_true(tern_server_session_line_pending(s));
  assert_int_equal(feed(s, "OP\r\n"), 4);
  assert_false(tern_server_session_line_pending(s));
  assert_int_equal(feed(s, "EHLO c\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<d@e.f>"
                           "\r\nDATA\r\npart of a line"),
                   64);
  assert_false(tern_server_session_line_pending(s)); /* message content */
  assert_int_equal(feed(s, "\r\n.\r\n"), 5);
  assert_false(tern_server_session_line_pending(s));
  drain(s);
  assert_int_equal(feed(s, "RS"), 2);
  assert_true(tern_server_session_line_pending(s));
  tern_server_session_free(s);
}

/* Counts for test_close_from_on_data. */
struct closer {
  int closes, data_ends, mails, after_close;
};

static int cl_data(struct tern_server_session *s, const char *b, size_t n,
                   void *ud) {
  struct closer *k = ud;
  if (k->closes)
    k->after_close++;
  if (memmem(b, n, "XCLOSE", 6))
    tern_server_session_close(s, NULL);
  return 0;
}

static int cl_data_end(struct tern_server_session *s,
                       const struct tern_envelope *env,
                       struct tern_reply *r, void *ud) {
  struct closer *k = ud;
  (void)s, (void)env, (void)r;
  k->data_ends++;
  k->after_close += k->closes;
  return 0;
}

static int cl_mail(struct tern_server_session *s, const struct tern_path *from,
                   const struct tern_mail_params *p, struct tern_reply *r,
                   void *ud) {
  struct closer *k = ud;
  (void)s, (void)from, (void)p, (void)r;
  k->mails++;
  k->after_close += k->closes;
  return 0;
}

static void cl_close(struct tern_server_session *s, void *ud) {
  (void)s;
  ((struct closer *)ud)->closes++;
}

/* tern_server_session_close() from inside on_data ends the session there:
 * on_close once, and nothing after it (no on_data_end for the message,
 * no command pipelined behind the dot), for DATA and for BDAT. */
static void test_close_from_on_data(void **st) {
  (void)st;
  static const char *const tail[] = {
      "DATA\r\nXCLOSE\r\n.\r\nMAIL FROM:<e@f>\r\n",
      "BDAT 8 LAST\r\nXCLOSE\r\nMAIL FROM:<e@f>\r\n",
      "BDAT 8\r\nXCLOSE\r\nBDAT 0 LAST\r\nMAIL FROM:<e@f>\r\n",
  };
  for (size_t i = 0; i < sizeof tail / sizeof *tail; i++) {
    struct tern_server_config c;
    struct tern_server_callbacks cb;
    struct closer k = {0};
    tern_server_config_init(&c);
    tern_server_callbacks_init(&cb);
    cb.on_data = cl_data;
    cb.on_data_end = cl_data_end;
    cb.on_mail = cl_mail;
    cb.on_close = cl_close;
    struct tern_server_session *s = make(&c, &cb, &k);
    tern_server_session_start(s);
    feed(s, "EHLO c.example\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\n");
    assert_int_equal(k.mails, 1);
    feed(s, tail[i]);
    assert_int_equal(k.closes, 1);
    assert_int_equal(k.data_ends, 0);
    assert_int_equal(k.mails, 1);
    assert_int_equal(k.after_close, 0);
    assert_true(tern_server_session_want(s) & TERN_WANT_CLOSE);
    tern_server_session_free(s);
    assert_int_equal(k.closes, 1); /* free does not fire it again */
  }
}

/* A QUIT-closed session ignores later input; timeout after close is a
 * no-op; the XCLIENT switch is honoured. */
static void test_after_close(void **st) {
  (void)st;
  struct tern_server_config c;
  tern_server_config_init(&c);
  c.extensions |= TERN_EXT_XCLIENT;
  struct tern_server_session *s = make(&c, NULL, NULL);
  tern_server_session_start(s);
  drain(s);
  assert_int_equal(feed(s, "XCLIENT ADDR=192.0.2.1\r\n"), 24);
  assert_string_equal(drain(s),
                      "550 5.7.0 Error: insufficient authorization\r\n");
  tern_server_session_set_xclient_trusted(s, true);
  assert_int_equal(feed(s, "XCLIENT ADDR=192.0.2.1\r\n"), 24);
  assert_string_equal(drain(s), "220 localhost ESMTP tern\r\n");
  assert_int_equal(feed(s, "QUIT\r\nNOOP\r\n"), 12);
  assert_string_equal(drain(s), "221 2.0.0 Bye\r\n");
  tern_server_session_timeout(s);
  tern_server_session_close(s, NULL);
  assert_int_equal(tern_server_session_output(s, NULL), 0);
  assert_int_equal(tern_server_session_reply(s, NULL), TERN_ESTATE);
  tern_server_session_free(s);
}

/*
 * Issue 8 item 27: a kept connection is never cut for the commands that
 * move mail. With the defaults, 3,500 messages (MAIL, RCPT, DATA: 10,500
 * commands, past the old cap of 10,000) plus one RSET per message (junk,
 * counted afresh after each accepted message) all get 250, and the
 * session is still open at the end. Each message also carries a
 * 5,000-octet line (item 26: accepted by default, as Postfix does).
 */
static void test_many_messages_one_session(void **st) {
  (void)st;
  static char line[5003];
  memset(line, 'x', 5000);
  memcpy(line + 5000, "\r\n", 3);
  struct tern_server_session *s = make(NULL, NULL, NULL);
  tern_server_session_start(s);
  drain(s);
  assert_int_equal(feed(s, "EHLO client.example\r\n"), 21);
  drain(s);
  for (int i = 0; i < 3500; i++) {
    const char *cmds[] = {"RSET\r\n", "MAIL FROM:<a@example.org>\r\n",
                          "RCPT TO:<b@example.net>\r\n", "DATA\r\n",
                          line, "hello\r\n.\r\n"};
    const char *want[] = {"250 2.0.0 Ok\r\n", "250 2.1.0 Ok\r\n",
                          "250 2.1.5 Ok\r\n",
                          "354 End data with <CR><LF>.<CR><LF>\r\n", "",
                          "250 2.0.0 Ok\r\n"};
    for (size_t k = 0; k < sizeof cmds / sizeof cmds[0]; k++) {
      assert_int_equal(feed(s, cmds[k]), (long)strlen(cmds[k]));
      const char *got = drain(s);
      if (strcmp(got, want[k]) != 0)
        fail_msg("message %d, step %zu: got \"%s\"", i, k, got);
    }
  }
  assert_true(tern_server_session_want(s) & TERN_WANT_READ);
  assert_int_equal(feed(s, "QUIT\r\n"), 6);
  assert_string_equal(drain(s), "221 2.0.0 Bye\r\n");
  tern_server_session_free(s);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_errors_table),
      cmocka_unit_test(test_null_arguments),
      cmocka_unit_test(test_state_errors),
      cmocka_unit_test(test_struct_sizes),
      cmocka_unit_test(test_reply_check),
      cmocka_unit_test(test_notify_and_facts),
      cmocka_unit_test(test_output_partial_consume),
      cmocka_unit_test(test_after_close),
      cmocka_unit_test(test_close_from_on_data),
      cmocka_unit_test(test_many_messages_one_session),
      cmocka_unit_test(test_line_pending),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
