/*
 * The envelope handed to on_data_end (struct tern_envelope, server.h),
 * at the edges the transcripts in tests/transcripts/server/envelope/ do
 * not reach: the message id's rules and lifetime, a pending on_data_end
 * (the envelope stays valid until the reply), 1000 recipients, the HELO
 * name's limit, the accessor's bounds, and a store that cannot grow
 * (452 4.3.1, the session goes on). Also the enhanced-code rule: NULL is
 * "none" on both sides.
 */
/* clang-format off: cmocka needs these first */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
/* clang-format on */

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <tern/tern.h>

struct app {
  const char *id;        /* set at MAIL when not NULL */
  bool pend;             /* on_data_end answers later */
  const struct tern_envelope *env; /* the last one seen */
  char from[300];
  char helo[300];
  char to[1000][40];
  size_t nto;
  uint64_t size;
  unsigned ends;
  /* allocator */
  unsigned long calls, fail_from; /* fail every call from this one on */
};

static void *a_malloc(size_t n, void *ud) {
  struct app *a = ud;
  if (a->fail_from && ++a->calls >= a->fail_from)
    return NULL;
  return malloc(n);
}
static void a_free(void *p, void *ud) {
  (void)ud;
  free(p);
}

static int on_mail(struct tern_server_session *s, const struct tern_path *f,
                   const struct tern_mail_params *p, struct tern_reply *r,
                   void *ud) {
  struct app *a = ud;
  (void)f, (void)p, (void)r;
  if (a->id)
    assert_int_equal(tern_server_session_set_message_id(s, a->id), 0);
  return TERN_REPLY_NOW;
}

static int on_data_end(struct tern_server_session *s,
                       const struct tern_envelope *env, struct tern_reply *r,
                       void *ud) {
  struct app *a = ud;
  (void)s, (void)r;
  a->env = env;
  a->ends++;
  a->size = env->size;
  snprintf(a->from, sizeof a->from, "%s", env->from.mailbox.ptr);
  assert_int_equal(strlen(env->helo.ptr), env->helo.len);
  snprintf(a->helo, sizeof a->helo, "%s", env->helo.ptr);
  a->nto = env->nrcpts;
  for (size_t i = 0; i < env->nrcpts && i < 1000; i++) {
    const struct tern_envelope_rcpt *rc = tern_envelope_rcpt(env, i);
    assert_non_null(rc);
    /* NUL-terminated copies; local part and domain inside the mailbox */
    assert_int_equal(strlen(rc->to.mailbox.ptr), rc->to.mailbox.len);
    snprintf(a->to[i], sizeof a->to[i], "%s", rc->to.mailbox.ptr);
  }
  assert_null(tern_envelope_rcpt(env, env->nrcpts));
  return a->pend ? TERN_PENDING : TERN_REPLY_NOW;
}

static struct tern_server_session *make(struct app *a, bool hooks) {
  static struct tern_mem mem;
  struct tern_server_config c;
  struct tern_server_callbacks cb;
  struct tern_server_session *s;
  tern_server_config_init(&c);
  tern_server_callbacks_init(&cb);
  cb.on_mail = on_mail;
  cb.on_data_end = on_data_end;
  mem = (struct tern_mem){a_malloc, NULL, a_free, a};
  if (hooks)
    c.mem = &mem;
  assert_int_equal(tern_server_session_new(&s, &c, &cb, a), 0);
  assert_int_equal(tern_server_session_start(s), 0);
  return s;
}

/* Feed text, drain the output, return the output (static). */
static const char *talk(struct tern_server_session *s, const char *text) {
  static char out[65536];
  size_t n = 0, off = 0, len = strlen(text);
  for (;;) { /* input stops while replies wait: drain and go on */
    long k = tern_server_session_feed(s, text + off, len - off);
    assert_true(k >= 0);
    off += (size_t)k;
    const char *p;
    size_t olen, drained = 0;
    while ((olen = tern_server_session_output(s, &p)) > 0) {
      if (n + olen < sizeof out) {
        memcpy(out + n, p, olen);
        n += olen;
      }
      tern_server_session_consume(s, olen);
      drained += olen;
    }
    if (off == len)
      break;
    assert_true(k > 0 || drained > 0);
  }
  out[n] = '\0';
  return out;
}

/* The HELO argument survives a trim (kept aside in a small block while
 * the store is away) and a second EHLO replaces it, trimmed or not. */
static void test_helo_across_trim(void **st) {
  (void)st;
  static struct app a;
  memset(&a, 0, sizeof a);
  struct tern_server_session *s = make(&a, false);
  static const char msg[] = "MAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>"
                            "\r\nDATA\r\nhi\r\n.\r\n";
  talk(s, "EHLO first.example\r\n");
  assert_int_equal(tern_server_session_trim(s), 1);
  talk(s, msg);
  assert_int_equal(a.ends, 1);
  assert_string_equal(a.helo, "first.example");
  assert_int_equal(tern_server_session_trim(s), 1);
  talk(s, "EHLO second.example\r\n"); /* while the store is away */
  assert_int_equal(tern_server_session_trim(s), 1);
  talk(s, msg);
  assert_int_equal(a.ends, 2);
  assert_string_equal(a.helo, "second.example");
  talk(s, "EHLO third.example\r\n"); /* with the store there */
  talk(s, msg);
  assert_string_equal(a.helo, "third.example");
  tern_server_session_free(s);
}

static void test_message_id(void **st) {
  (void)st;
  static struct app a;
  memset(&a, 0, sizeof a);
  struct tern_server_session *s = make(&a, false);
  talk(s, "EHLO c.example\r\n");
  /* the rules */
  char long_id[TERN_MESSAGE_ID_MAX + 2];
  memset(long_id, 'x', sizeof long_id - 1);
  long_id[sizeof long_id - 1] = '\0';
  assert_int_equal(tern_server_session_set_message_id(NULL, "a"),
                   TERN_EINVAL);
  assert_int_equal(tern_server_session_set_message_id(s, ""), TERN_EINVAL);
  assert_int_equal(tern_server_session_set_message_id(s, "a b"), TERN_EINVAL);
  assert_int_equal(tern_server_session_set_message_id(s, "a\r\n"),
                   TERN_EINVAL);
  assert_int_equal(tern_server_session_set_message_id(s, long_id),
                   TERN_EINVAL);
  long_id[TERN_MESSAGE_ID_MAX] = '\0';
  assert_int_equal(tern_server_session_set_message_id(s, long_id), 0);

  /* set before MAIL: MAIL forgets it, so no id */
  talk(s, "MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\n"
          "DATA\r\nhi\r\n.\r\n");
  assert_int_equal(a.ends, 1);
  assert_null(a.env->id);
  assert_string_equal(a.from, "a@example.org");

  /* set at MAIL: the envelope has it, copied */
  char id[16] = "ABC-1";
  a.id = id;
  talk(s, "MAIL FROM:<>\r\nRCPT TO:<b@example.net>\r\n");
  strcpy(id, "changed");
  talk(s, "DATA\r\nhi\r\n.\r\n");
  assert_int_equal(a.ends, 2);
  assert_string_equal(a.env->id, "ABC-1");
  assert_string_equal(a.from, "");
  assert_true(a.env->from.flags & TERN_PATHF_NULL);
  tern_server_session_free(s);
}

/* on_data_end returns TERN_PENDING: the envelope is still readable until
 * tern_server_session_reply(). */
static void test_pending(void **st) {
  (void)st;
  static struct app a;
  memset(&a, 0, sizeof a);
  a.pend = true;
  a.id = "P-1";
  struct tern_server_session *s = make(&a, false);
  talk(s, "EHLO c.example\r\nMAIL FROM:<a@example.org> ENVID=e1\r\n"
          "RCPT TO:<b@example.net> NOTIFY=NEVER\r\nDATA\r\n12345\r\n.\r\n");
  assert_int_equal(tern_server_session_pending(s), TERN_EV_DATA_END);
  const struct tern_envelope *env = a.env;
  assert_string_equal(env->id, "P-1");
  assert_int_equal(env->size, 7);
  assert_int_equal(env->nrcpts, 1);
  assert_int_equal(env->rcpt_index, 0);
  assert_memory_equal(env->mail.envid.ptr, "e1", 2);
  assert_int_equal(tern_envelope_rcpt(env, 0)->params.notify,
                   TERN_NOTIFY_NEVER);
  assert_int_equal(env->helo_verb, TERN_EHLO);
  assert_memory_equal(env->helo.ptr, "c.example", env->helo.len);
  assert_false(env->lmtp || env->tls || env->authenticated);
  assert_int_equal(tern_server_session_reply(s, NULL), 0);
  tern_server_session_free(s);
  assert_null(tern_envelope_rcpt(NULL, 0));
}

/* Every accepted recipient, in order, past the store's first size; a
 * HELO name over 255 octets is kept as empty. */
static void test_thousand(void **st) {
  (void)st;
  static struct app a;
  static char in[1000 * 40 + 512];
  memset(&a, 0, sizeof a);
  struct tern_server_session *s = make(&a, false);
  char helo[300 + 8] = "HELO ";
  memset(helo + 5, 'h', 300);
  memcpy(helo + 305, "\r\n", 3);
  talk(s, helo);
  size_t n = (size_t)sprintf(in, "MAIL FROM:<a@example.org>\r\n");
  for (int i = 0; i < 1000; i++)
    n += (size_t)sprintf(in + n, "RCPT TO:<r%d@example.net>\r\n", i);
  sprintf(in + n, "DATA\r\n.\r\n");
  talk(s, in);
  assert_int_equal(a.ends, 1);
  assert_int_equal(a.nto, 1000);
  for (int i = 0; i < 1000; i++) {
    char want[40];
    sprintf(want, "r%d@example.net", i);
    assert_string_equal(a.to[i], want);
  }
  assert_int_equal(a.env->helo_verb, TERN_HELO);
  assert_int_equal(a.env->helo.len, 0);
  tern_server_session_free(s);
}

/* The store cannot grow past its first recipients: 452 4.3.1 for that
 * RCPT, the others stay, the message goes through with them. */
static void test_store_full(void **st) {
  (void)st;
  static struct app a;
  memset(&a, 0, sizeof a);
  struct tern_server_session *s = make(&a, true);
  a.fail_from = 1; /* no allocation succeeds from now on */
  const char *out = talk(s, "EHLO c.example\r\nMAIL FROM:<a@example.org>\r\n"
                            "RCPT TO:<r1@x.example>\r\nRCPT TO:<r2@x.example>\r\n"
                            "RCPT TO:<r3@x.example>\r\nRCPT TO:<r4@x.example>\r\n"
                            "RCPT TO:<r5@x.example>\r\n");
  assert_non_null(strstr(out, "250 2.1.5 Ok\r\n452 4.3.1 Error: "
                              "insufficient system storage\r\n"));
  a.fail_from = 0;
  talk(s, "RCPT TO:<r6@x.example>\r\nDATA\r\n.\r\n");
  assert_int_equal(a.nto, 5);
  assert_string_equal(a.to[3], "r4@x.example");
  assert_string_equal(a.to[4], "r6@x.example");
  tern_server_session_free(s);
}

/* ---- enhanced codes: NULL is "none" on both sides ------------------------- */

static int refuse_with(struct tern_server_session *s, const struct tern_path *f,
                       const struct tern_mail_params *p, struct tern_reply *r,
                       void *ud) {
  (void)s, (void)f, (void)p;
  r->code = 550;
  r->enhanced = ud; /* NULL or "" */
  r->text = "no";
  return TERN_REPLY_NOW;
}

static void test_enhanced_null(void **st) {
  (void)st;
  struct tern_server_callbacks cb;
  struct tern_server_session *s;
  tern_server_callbacks_init(&cb);
  cb.on_mail = refuse_with;
  /* server: NULL = none given, the generic code goes out */
  assert_int_equal(tern_server_session_new(&s, NULL, &cb, NULL), 0);
  tern_server_session_start(s);
  talk(s, "EHLO c.example\r\n");
  assert_string_equal(talk(s, "MAIL FROM:<a@b.example>\r\n"),
                      "550 5.0.0 no\r\n");
  tern_server_session_free(s);
  /* "" is no code: refused by the check, so the session answers 451 */
  struct tern_reply empty = {550, "", "no"};
  assert_int_equal(tern_reply_check(&empty), TERN_EINVAL);
  assert_int_equal(tern_server_session_new(&s, NULL, &cb, (void *)""), 0);
  tern_server_session_start(s);
  talk(s, "EHLO c.example\r\n");
  assert_string_equal(talk(s, "MAIL FROM:<a@b.example>\r\n"),
                      "451 4.3.0 Error: internal error\r\n");
  tern_server_session_free(s);
}

struct seen {
  int n;
  bool null_enh[4];
  char enh[4][16];
};

static void cli_reply(struct tern_client_session *c, enum tern_client_cmd cmd,
                      unsigned index, const struct tern_client_reply *r,
                      void *ud) {
  struct seen *v = ud;
  (void)c, (void)cmd, (void)index;
  if (v->n < 4) {
    v->null_enh[v->n] = r->enhanced == NULL;
    snprintf(v->enh[v->n], 16, "%s", r->enhanced ? r->enhanced : "");
    v->n++;
  }
}

static void test_client_enhanced_null(void **st) {
  (void)st;
  struct tern_client_callbacks cb;
  struct tern_client_session *c;
  struct seen v = {0};
  tern_client_callbacks_init(&cb);
  cb.on_reply = cli_reply;
  assert_int_equal(tern_client_session_new(&c, NULL, &cb, &v), 0);
  const char *in = "220 mx ESMTP\r\n250 mx\r\n";
  assert_int_equal(tern_client_session_feed(c, in, strlen(in)),
                   (long)strlen(in));
  assert_int_equal(tern_client_session_noop(c), 0);
  in = "250 2.0.0 Ok\r\n";
  assert_int_equal(tern_client_session_feed(c, in, strlen(in)),
                   (long)strlen(in));
  assert_int_equal(v.n, 3);
  assert_true(v.null_enh[0]); /* greeting: none */
  assert_true(v.null_enh[1]); /* EHLO: none */
  assert_false(v.null_enh[2]);
  assert_string_equal(v.enh[2], "2.0.0");
  tern_client_session_free(c);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_message_id),
      cmocka_unit_test(test_helo_across_trim),
      cmocka_unit_test(test_pending),
      cmocka_unit_test(test_thousand),
      cmocka_unit_test(test_store_full),
      cmocka_unit_test(test_enhanced_null),
      cmocka_unit_test(test_client_enhanced_null),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
