/*
 * Unit tests for the ESMTP parameter parsers and xtext decoding
 * (src/core/params.c). Table-driven: each case gives the argument text,
 * the extension mask, the expected result, and either the expected
 * parsed values or the token that *bad must name.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "internal.h"

#define ALL                                                                \
  (TERN_EXT_DEFAULT | TERN_EXT_AUTH | TERN_EXT_REQUIRETLS)
#define NO(x) (ALL & ~(unsigned)(x))

struct mail_case {
  const char *in;
  unsigned ext;
  int rc;
  const char *bad; /* errors: the token *bad names */
  /* successes: */
  bool has_size;
  uint64_t size;
  enum tern_body body;
  bool smtputf8, requiretls;
  enum tern_dsn_ret ret;
  const char *envid; /* NULL: absent */
  const char *auth;
};

#define OK 0
#define E(rc, bad) rc, bad

/* clang-format off */
static const struct mail_case mail_cases[] = {
  /* ---- empty / spacing ----------------------------------------------- */
  {"", ALL, OK, NULL, false, 0, 0, false, false, 0, NULL, NULL},
  {"   ", ALL, OK, NULL, false, 0, 0, false, false, 0, NULL, NULL},
  {" SIZE=10", ALL, OK, NULL, true, 10, 0, false, false, 0, NULL, NULL},
  {"SIZE=10   BODY=7BIT  ", ALL, OK, NULL, true, 10, TERN_BODY_7BIT, false, false, 0, NULL, NULL},
  {"SIZE=10\tBODY=7BIT", ALL, E(TERN_ESYNTAX, "SIZE=10\tBODY=7BIT"), false, 0, 0, false, false, 0, NULL, NULL},

  /* ---- SIZE (RFC 1870) ---------------------------------------------- */
  {"SIZE=0", ALL, OK, NULL, true, 0, 0, false, false, 0, NULL, NULL},
  {"size=12345", ALL, OK, NULL, true, 12345, 0, false, false, 0, NULL, NULL},
  {"SIZE=18446744073709551615", ALL, OK, NULL, true, UINT64_MAX, 0, false, false, 0, NULL, NULL},
  {"SIZE=18446744073709551616", ALL, E(TERN_ERANGE, "SIZE=18446744073709551616"), false, 0, 0, false, false, 0, NULL, NULL},
  {"SIZE=99999999999999999999999", ALL, E(TERN_ERANGE, "SIZE=99999999999999999999999"), false, 0, 0, false, false, 0, NULL, NULL},
  {"SIZE=", ALL, E(TERN_ESYNTAX, "SIZE="), false, 0, 0, false, false, 0, NULL, NULL},
  {"SIZE", ALL, E(TERN_ESYNTAX, "SIZE"), false, 0, 0, false, false, 0, NULL, NULL},
  {"SIZE=-1", ALL, E(TERN_ESYNTAX, "SIZE=-1"), false, 0, 0, false, false, 0, NULL, NULL},
  {"SIZE=1k", ALL, E(TERN_ESYNTAX, "SIZE=1k"), false, 0, 0, false, false, 0, NULL, NULL},
  {"SIZE=10 SIZE=20", ALL, E(TERN_EDUPLICATE, "SIZE=20"), false, 0, 0, false, false, 0, NULL, NULL},
  {"SIZE=10 size=x", ALL, E(TERN_EDUPLICATE, "size=x"), false, 0, 0, false, false, 0, NULL, NULL},
  {"SIZE=10", NO(TERN_EXT_SIZE), E(TERN_EUNKNOWN, "SIZE=10"), false, 0, 0, false, false, 0, NULL, NULL},

  /* ---- BODY (RFC 6152, RFC 3030) ------------------------------------ */
  {"BODY=7BIT", ALL, OK, NULL, false, 0, TERN_BODY_7BIT, false, false, 0, NULL, NULL},
  {"BODY=8BITMIME", ALL, OK, NULL, false, 0, TERN_BODY_8BITMIME, false, false, 0, NULL, NULL},
  {"body=8bitmime", ALL, OK, NULL, false, 0, TERN_BODY_8BITMIME, false, false, 0, NULL, NULL},
  {"BODY=BINARYMIME", ALL, OK, NULL, false, 0, TERN_BODY_BINARYMIME, false, false, 0, NULL, NULL},
  {"BODY=BINARYMIME", NO(TERN_EXT_CHUNKING), E(TERN_EUNKNOWN, "BODY=BINARYMIME"), false, 0, 0, false, false, 0, NULL, NULL},
  {"BODY=BINARYMIME", NO(TERN_EXT_BINARYMIME), E(TERN_EUNKNOWN, "BODY=BINARYMIME"), false, 0, 0, false, false, 0, NULL, NULL},
  {"BODY=8BITMIME", NO(TERN_EXT_8BITMIME), E(TERN_EUNKNOWN, "BODY=8BITMIME"), false, 0, 0, false, false, 0, NULL, NULL},
  {"BODY=7BIT", NO(TERN_EXT_8BITMIME), OK, NULL, false, 0, TERN_BODY_7BIT, false, false, 0, NULL, NULL},
  {"BODY=7BIT", NO(TERN_EXT_8BITMIME | TERN_EXT_BINARYMIME), E(TERN_EUNKNOWN, "BODY=7BIT"), false, 0, 0, false, false, 0, NULL, NULL},
  {"BODY=9BIT", ALL, E(TERN_ESYNTAX, "BODY=9BIT"), false, 0, 0, false, false, 0, NULL, NULL},
  {"BODY=7BITS", ALL, E(TERN_ESYNTAX, "BODY=7BITS"), false, 0, 0, false, false, 0, NULL, NULL},
  {"BODY", ALL, E(TERN_ESYNTAX, "BODY"), false, 0, 0, false, false, 0, NULL, NULL},
  {"BODY=7BIT BODY=7BIT", ALL, E(TERN_EDUPLICATE, "BODY=7BIT"), false, 0, 0, false, false, 0, NULL, NULL},

  /* ---- SMTPUTF8, REQUIRETLS --------------------------------------- */
  {"SMTPUTF8", ALL, OK, NULL, false, 0, 0, true, false, 0, NULL, NULL},
  {"smtputf8 BODY=8BITMIME", ALL, OK, NULL, false, 0, TERN_BODY_8BITMIME, true, false, 0, NULL, NULL},
  {"SMTPUTF8=yes", ALL, E(TERN_ESYNTAX, "SMTPUTF8=yes"), false, 0, 0, false, false, 0, NULL, NULL},
  {"SMTPUTF8", NO(TERN_EXT_SMTPUTF8), E(TERN_EUNKNOWN, "SMTPUTF8"), false, 0, 0, false, false, 0, NULL, NULL},
  {"SMTPUTF8 SMTPUTF8", ALL, E(TERN_EDUPLICATE, "SMTPUTF8"), false, 0, 0, false, false, 0, NULL, NULL},
  {"REQUIRETLS", ALL, OK, NULL, false, 0, 0, false, true, 0, NULL, NULL},
  {"REQUIRETLS", TERN_EXT_DEFAULT, E(TERN_EUNKNOWN, "REQUIRETLS"), false, 0, 0, false, false, 0, NULL, NULL},
  {"REQUIRETLS REQUIRETLS", ALL, E(TERN_EDUPLICATE, "REQUIRETLS"), false, 0, 0, false, false, 0, NULL, NULL},
  {"REQUIRETLS=1", ALL, E(TERN_ESYNTAX, "REQUIRETLS=1"), false, 0, 0, false, false, 0, NULL, NULL},

  /* ---- RET, ENVID (RFC 3461) ------------------------------------------ */
  {"RET=FULL", ALL, OK, NULL, false, 0, 0, false, false, TERN_RET_FULL, NULL, NULL},
  {"ret=hdrs", ALL, OK, NULL, false, 0, 0, false, false, TERN_RET_HDRS, NULL, NULL},
  {"RET=ALL", ALL, E(TERN_ESYNTAX, "RET=ALL"), false, 0, 0, false, false, 0, NULL, NULL},
  {"RET=FULL RET=HDRS", ALL, E(TERN_EDUPLICATE, "RET=HDRS"), false, 0, 0, false, false, 0, NULL, NULL},
  {"RET", ALL, E(TERN_ESYNTAX, "RET"), false, 0, 0, false, false, 0, NULL, NULL},
  {"RET=FULL", NO(TERN_EXT_DSN), E(TERN_EUNKNOWN, "RET=FULL"), false, 0, 0, false, false, 0, NULL, NULL},
  {"ENVID=abc123", ALL, OK, NULL, false, 0, 0, false, false, 0, "abc123", NULL},
  {"ENVID=a+2Bb+3Dc+20d", ALL, OK, NULL, false, 0, 0, false, false, 0, "a+b=c d", NULL},
  {"ENVID=+41+42", ALL, OK, NULL, false, 0, 0, false, false, 0, "AB", NULL},
  {"ENVID=a+2b", ALL, E(TERN_ESYNTAX, "ENVID=a+2b"), false, 0, 0, false, false, 0, NULL, NULL},
  {"ENVID=a+", ALL, E(TERN_ESYNTAX, "ENVID=a+"), false, 0, 0, false, false, 0, NULL, NULL},
  {"ENVID=a+4", ALL, E(TERN_ESYNTAX, "ENVID=a+4"), false, 0, 0, false, false, 0, NULL, NULL},
  {"ENVID=a+G0", ALL, E(TERN_ESYNTAX, "ENVID=a+G0"), false, 0, 0, false, false, 0, NULL, NULL},
  {"ENVID=a+0A", ALL, E(TERN_ESYNTAX, "ENVID=a+0A"), false, 0, 0, false, false, 0, NULL, NULL},
  {"ENVID=a+00", ALL, E(TERN_ESYNTAX, "ENVID=a+00"), false, 0, 0, false, false, 0, NULL, NULL},
  {"ENVID=a+C3+A9", ALL, E(TERN_ESYNTAX, "ENVID=a+C3+A9"), false, 0, 0, false, false, 0, NULL, NULL},
  {"ENVID=a=b", ALL, E(TERN_ESYNTAX, "ENVID=a=b"), false, 0, 0, false, false, 0, NULL, NULL},
  {"ENVID=", ALL, E(TERN_ESYNTAX, "ENVID="), false, 0, 0, false, false, 0, NULL, NULL},
  {"ENVID", ALL, E(TERN_ESYNTAX, "ENVID"), false, 0, 0, false, false, 0, NULL, NULL},
  {"ENVID=x", NO(TERN_EXT_DSN), E(TERN_EUNKNOWN, "ENVID=x"), false, 0, 0, false, false, 0, NULL, NULL},
  {"ENVID=a ENVID=a", ALL, E(TERN_EDUPLICATE, "ENVID=a"), false, 0, 0, false, false, 0, NULL, NULL},
  {"ENVID=\xc3\xa9", ALL, E(TERN_ESYNTAX, "ENVID=\xc3\xa9"), false, 0, 0, false, false, 0, NULL, NULL},

  /* ---- AUTH (RFC 4954 §5) ----------------------------------------------- */
  {"AUTH=<>", ALL, OK, NULL, false, 0, 0, false, false, 0, NULL, "<>"},
  {"AUTH=user+2Bx@example.com", ALL, OK, NULL, false, 0, 0, false, false, 0, NULL, "user+x@example.com"},
  {"AUTH=e+3Dmc2", ALL, OK, NULL, false, 0, 0, false, false, 0, NULL, "e=mc2"},
  {"AUTH=<>", TERN_EXT_DEFAULT, E(TERN_EUNKNOWN, "AUTH=<>"), false, 0, 0, false, false, 0, NULL, NULL},
  {"AUTH", ALL, E(TERN_ESYNTAX, "AUTH"), false, 0, 0, false, false, 0, NULL, NULL},
  {"AUTH=a+zz", ALL, E(TERN_ESYNTAX, "AUTH=a+zz"), false, 0, 0, false, false, 0, NULL, NULL},
  {"AUTH=<> AUTH=<>", ALL, E(TERN_EDUPLICATE, "AUTH=<>"), false, 0, 0, false, false, 0, NULL, NULL},

  /* ---- generic syntax and unknown keywords --------------------------- */
  {"FOO", ALL, E(TERN_EUNKNOWN, "FOO"), false, 0, 0, false, false, 0, NULL, NULL},
  {"X-FOO=bar", ALL, E(TERN_EUNKNOWN, "X-FOO=bar"), false, 0, 0, false, false, 0, NULL, NULL},
  {"NOTIFY=NEVER", ALL, E(TERN_EUNKNOWN, "NOTIFY=NEVER"), false, 0, 0, false, false, 0, NULL, NULL},
  {"SIZE=1 FOO", ALL, E(TERN_EUNKNOWN, "FOO"), false, 0, 0, false, false, 0, NULL, NULL},
  {"-FOO", ALL, E(TERN_ESYNTAX, "-FOO"), false, 0, 0, false, false, 0, NULL, NULL},
  {"=1", ALL, E(TERN_ESYNTAX, "=1"), false, 0, 0, false, false, 0, NULL, NULL},
  {"F_O", ALL, E(TERN_ESYNTAX, "F_O"), false, 0, 0, false, false, 0, NULL, NULL},
  {"FOO=a=b", ALL, E(TERN_ESYNTAX, "FOO=a=b"), false, 0, 0, false, false, 0, NULL, NULL},
  {"FOO=\x7f", ALL, E(TERN_ESYNTAX, "FOO=\x7f"), false, 0, 0, false, false, 0, NULL, NULL},
  {"SIZE=1\r\n", ALL, E(TERN_ESYNTAX, "SIZE=1\r\n"), false, 0, 0, false, false, 0, NULL, NULL},
  /* UTF-8 in a value: SMTPUTF8 on and well-formed only (RFC 6531 §3.3) */
  {"X-T=\xc3\xa9", ALL, E(TERN_EUNKNOWN, "X-T=\xc3\xa9"), false, 0, 0, false, false, 0, NULL, NULL},
  {"X-T=\xc3\xa9", NO(TERN_EXT_SMTPUTF8), E(TERN_ESYNTAX, "X-T=\xc3\xa9"), false, 0, 0, false, false, 0, NULL, NULL},
  {"X-T=\xc3", ALL, E(TERN_ESYNTAX, "X-T=\xc3"), false, 0, 0, false, false, 0, NULL, NULL},
  {"X-T=\xed\xa0\x80", ALL, E(TERN_ESYNTAX, "X-T=\xed\xa0\x80"), false, 0, 0, false, false, 0, NULL, NULL},
  {"\xc3\xa9=1", ALL, E(TERN_ESYNTAX, "\xc3\xa9=1"), false, 0, 0, false, false, 0, NULL, NULL},

  /* ---- everything together ------------------------------------------ */
  {"SIZE=1000 BODY=8BITMIME SMTPUTF8 RET=HDRS ENVID=QQ314159 AUTH=<> REQUIRETLS", ALL, OK, NULL,
   true, 1000, TERN_BODY_8BITMIME, true, true, TERN_RET_HDRS, "QQ314159", "<>"},
  {"SIZE=1 body=binarymime Ret=Full", ALL, OK, NULL, true, 1, TERN_BODY_BINARYMIME, false, false, TERN_RET_FULL, NULL, NULL},
};

struct rcpt_case {
  const char *in;
  unsigned ext;
  int rc;
  const char *bad;
  unsigned notify;
  const char *orcpt_type; /* NULL: absent */
  const char *orcpt;
};

static const struct rcpt_case rcpt_cases[] = {
  {"", ALL, OK, NULL, 0, NULL, NULL},
  {"  ", ALL, OK, NULL, 0, NULL, NULL},
  /* NOTIFY (RFC 3461 §4.1) */
  {"NOTIFY=NEVER", ALL, OK, NULL, TERN_NOTIFY_NEVER, NULL, NULL},
  {"notify=never", ALL, OK, NULL, TERN_NOTIFY_NEVER, NULL, NULL},
  {"NOTIFY=SUCCESS", ALL, OK, NULL, TERN_NOTIFY_SUCCESS, NULL, NULL},
  {"NOTIFY=SUCCESS,FAILURE", ALL, OK, NULL, TERN_NOTIFY_SUCCESS | TERN_NOTIFY_FAILURE, NULL, NULL},
  {"NOTIFY=delay,Failure,SUCCESS", ALL, OK, NULL,
   TERN_NOTIFY_SUCCESS | TERN_NOTIFY_FAILURE | TERN_NOTIFY_DELAY, NULL, NULL},
  {"NOTIFY=NEVER,SUCCESS", ALL, E(TERN_ESYNTAX, "NOTIFY=NEVER,SUCCESS"), 0, NULL, NULL},
  {"NOTIFY=DELAY,NEVER", ALL, E(TERN_ESYNTAX, "NOTIFY=DELAY,NEVER"), 0, NULL, NULL},
  {"NOTIFY=NEVER,NEVER", ALL, E(TERN_ESYNTAX, "NOTIFY=NEVER,NEVER"), 0, NULL, NULL},
  {"NOTIFY=SUCCESS,SUCCESS", ALL, E(TERN_ESYNTAX, "NOTIFY=SUCCESS,SUCCESS"), 0, NULL, NULL},
  {"NOTIFY=SUCCESS,", ALL, E(TERN_ESYNTAX, "NOTIFY=SUCCESS,"), 0, NULL, NULL},
  {"NOTIFY=,SUCCESS", ALL, E(TERN_ESYNTAX, "NOTIFY=,SUCCESS"), 0, NULL, NULL},
  {"NOTIFY=SUCCESS,,DELAY", ALL, E(TERN_ESYNTAX, "NOTIFY=SUCCESS,,DELAY"), 0, NULL, NULL},
  {"NOTIFY=ALWAYS", ALL, E(TERN_ESYNTAX, "NOTIFY=ALWAYS"), 0, NULL, NULL},
  {"NOTIFY=", ALL, E(TERN_ESYNTAX, "NOTIFY="), 0, NULL, NULL},
  {"NOTIFY", ALL, E(TERN_ESYNTAX, "NOTIFY"), 0, NULL, NULL},
  {"NOTIFY=NEVER NOTIFY=NEVER", ALL, E(TERN_EDUPLICATE, "NOTIFY=NEVER"), 0, NULL, NULL},
  {"NOTIFY=NEVER", NO(TERN_EXT_DSN), E(TERN_EUNKNOWN, "NOTIFY=NEVER"), 0, NULL, NULL},
  /* ORCPT (RFC 3461 §4.2) */
  {"ORCPT=rfc822;user@example.com", ALL, OK, NULL, 0, "rfc822", "user@example.com"},
  {"ORCPT=RFC822;a+2Bb@c", ALL, OK, NULL, 0, "RFC822", "a+b@c"},
  {"ORCPT=rfc822;+22a+20b+22@c", ALL, OK, NULL, 0, "rfc822", "\"a b\"@c"},
  {"ORCPT=x-local;bob", ALL, OK, NULL, 0, "x-local", "bob"},
  {"ORCPT=rfc822;a;b", ALL, OK, NULL, 0, "rfc822", "a;b"},
  {"ORCPT=rfc822", ALL, E(TERN_ESYNTAX, "ORCPT=rfc822"), 0, NULL, NULL},
  {"ORCPT=rfc822;", ALL, E(TERN_ESYNTAX, "ORCPT=rfc822;"), 0, NULL, NULL},
  {"ORCPT=;a@b", ALL, E(TERN_ESYNTAX, "ORCPT=;a@b"), 0, NULL, NULL},
  {"ORCPT=rf(c;a@b", ALL, E(TERN_ESYNTAX, "ORCPT=rf(c;a@b"), 0, NULL, NULL},
  {"ORCPT=rfc822;a+4", ALL, E(TERN_ESYNTAX, "ORCPT=rfc822;a+4"), 0, NULL, NULL},
  {"ORCPT=rfc822;a+0D+0A", ALL, E(TERN_ESYNTAX, "ORCPT=rfc822;a+0D+0A"), 0, NULL, NULL},
  {"ORCPT=rfc822;a=b", ALL, E(TERN_ESYNTAX, "ORCPT=rfc822;a=b"), 0, NULL, NULL},
  {"ORCPT", ALL, E(TERN_ESYNTAX, "ORCPT"), 0, NULL, NULL},
  {"ORCPT=rfc822;a ORCPT=rfc822;b", ALL, E(TERN_EDUPLICATE, "ORCPT=rfc822;b"), 0, NULL, NULL},
  {"ORCPT=rfc822;a", NO(TERN_EXT_DSN), E(TERN_EUNKNOWN, "ORCPT=rfc822;a"), 0, NULL, NULL},
  /* both, and unknowns */
  {"NOTIFY=FAILURE,DELAY ORCPT=rfc822;x@y", ALL, OK, NULL,
   TERN_NOTIFY_FAILURE | TERN_NOTIFY_DELAY, "rfc822", "x@y"},
  {"  ORCPT=rfc822;x@y   NOTIFY=NEVER  ", ALL, OK, NULL, TERN_NOTIFY_NEVER, "rfc822", "x@y"},
  {"SIZE=10", ALL, E(TERN_EUNKNOWN, "SIZE=10"), 0, NULL, NULL},
  {"BODY=8BITMIME", ALL, E(TERN_EUNKNOWN, "BODY=8BITMIME"), 0, NULL, NULL},
  {"NOTIFY=NEVER X", ALL, E(TERN_EUNKNOWN, "X"), 0, NULL, NULL},
  {"NOTIFY=NEVER x_", ALL, E(TERN_ESYNTAX, "x_"), 0, NULL, NULL},
};
/* clang-format on */

/* Copy into an exact-size heap buffer (writable, overreads trapped). */
static char *dup_exact(const char *s, size_t len) {
  char *b = malloc(len ? len : 1);
  assert_non_null(b);
  memcpy(b, s, len);
  return b;
}

static void check_str(struct tern_str got, const char *want, const char *buf,
                      size_t len) {
  if (want == NULL) {
    assert_int_equal(got.len, 0);
    return;
  }
  assert_int_equal(got.len, strlen(want));
  assert_memory_equal(got.ptr, want, got.len);
  /* decoded in place: inside the caller's buffer */
  assert_true(got.ptr >= buf && got.ptr + got.len <= buf + len);
}

static void check_bad(struct tern_str bad, const char *want, const char *buf,
                      size_t len) {
  assert_non_null(bad.ptr);
  assert_true(bad.ptr >= buf && bad.ptr + bad.len <= buf + len);
  if (bad.len != strlen(want) || memcmp(bad.ptr, want, bad.len) != 0)
    print_error("bad token \"%.*s\", want \"%s\"\n", (int)bad.len, bad.ptr,
                want);
  assert_int_equal(bad.len, strlen(want));
  assert_memory_equal(bad.ptr, want, bad.len);
}

static void test_mail_table(void **state) {
  (void)state;
  for (size_t i = 0; i < sizeof mail_cases / sizeof mail_cases[0]; i++) {
    const struct mail_case *tc = &mail_cases[i];
    size_t len = strlen(tc->in);
    char *buf = dup_exact(tc->in, len);
    struct tern_mail_params p;
    struct tern_str bad = {"sentinel", 8};
    int rc;

    memset(&p, 0xA5, sizeof p);
    rc = tern__mail_params_parse(buf, len, tc->ext, &p, &bad);
    if (rc != tc->rc)
      print_error("mail case %zu \"%s\": got %s want %s\n", i, tc->in,
                  tern_err_name(rc), tern_err_name(tc->rc));
    assert_int_equal(rc, tc->rc);
    if (rc == 0) {
      assert_null(bad.ptr);
      assert_int_equal(bad.len, 0);
      assert_int_equal(p.has_size, tc->has_size);
      assert_true(p.size == tc->size);
      assert_int_equal(p.body, tc->body);
      assert_int_equal(p.smtputf8, tc->smtputf8);
      assert_int_equal(p.requiretls, tc->requiretls);
      assert_int_equal(p.ret, tc->ret);
      check_str(p.envid, tc->envid, buf, len);
      check_str(p.auth, tc->auth, buf, len);
    } else {
      check_bad(bad, tc->bad, buf, len);
    }
    free(buf);
  }
}

static void test_rcpt_table(void **state) {
  (void)state;
  for (size_t i = 0; i < sizeof rcpt_cases / sizeof rcpt_cases[0]; i++) {
    const struct rcpt_case *tc = &rcpt_cases[i];
    size_t len = strlen(tc->in);
    char *buf = dup_exact(tc->in, len);
    struct tern_rcpt_params p;
    struct tern_str bad = {"sentinel", 8};
    int rc;

    memset(&p, 0xA5, sizeof p);
    rc = tern__rcpt_params_parse(buf, len, tc->ext, &p, &bad);
    if (rc != tc->rc)
      print_error("rcpt case %zu \"%s\": got %s want %s\n", i, tc->in,
                  tern_err_name(rc), tern_err_name(tc->rc));
    assert_int_equal(rc, tc->rc);
    if (rc == 0) {
      assert_null(bad.ptr);
      assert_int_equal(p.notify, tc->notify);
      check_str(p.orcpt_type, tc->orcpt_type, buf, len);
      check_str(p.orcpt, tc->orcpt, buf, len);
    } else {
      check_bad(bad, tc->bad, buf, len);
    }
    free(buf);
  }
}

/* RFC 3461 §4.4: ENVID at most 100 characters, after decoding. */
static void test_envid_limit(void **state) {
  char buf[400];
  struct tern_mail_params p;
  struct tern_str bad;
  size_t n;
  (void)state;

  memcpy(buf, "ENVID=", 6);
  memset(buf + 6, 'e', 100);
  assert_int_equal(tern__mail_params_parse(buf, 106, ALL, &p, &bad), 0);
  assert_int_equal(p.envid.len, 100);
  memset(buf + 6, 'e', 101);
  assert_int_equal(tern__mail_params_parse(buf, 107, ALL, &p, &bad),
                   TERN_ESYNTAX);
  assert_int_equal(bad.len, 107);
  /* 100 decoded from 300 encoded octets is fine, 101 is not */
  n = 6;
  for (int i = 0; i < 100; i++) {
    memcpy(buf + n, "+2B", 3);
    n += 3;
  }
  assert_int_equal(tern__mail_params_parse(buf, n, ALL, &p, &bad), 0);
  assert_int_equal(p.envid.len, 100);
  assert_ptr_equal(p.envid.ptr, buf + 6);
  for (int i = 0; i < 100; i++)
    assert_int_equal(p.envid.ptr[i], '+');
  n = 6;
  for (int i = 0; i < 100; i++) {
    memcpy(buf + n, "+2B", 3);
    n += 3;
  }
  buf[n++] = 'x';
  assert_int_equal(tern__mail_params_parse(buf, n, ALL, &p, &bad),
                   TERN_ESYNTAX);
  /* the bad token is left as sent, not half-decoded */
  assert_int_equal(bad.len, n);
  assert_memory_equal(bad.ptr + 6, "+2B+2B", 6);
}

/* RFC 3461 §4.2: original recipient at most 500 characters. */
static void test_orcpt_limit(void **state) {
  char buf[600];
  struct tern_rcpt_params p;
  struct tern_str bad;
  (void)state;

  memcpy(buf, "ORCPT=rfc822;", 13);
  memset(buf + 13, 'o', 500);
  assert_int_equal(tern__rcpt_params_parse(buf, 513, ALL, &p, &bad), 0);
  assert_int_equal(p.orcpt.len, 500);
  memset(buf + 13, 'o', 501);
  assert_int_equal(tern__rcpt_params_parse(buf, 514, ALL, &p, &bad),
                   TERN_ESYNTAX);
}

struct xtext_case {
  const char *in;
  long rc; /* decoded length or error */
  const char *out;
};

static const struct xtext_case xtext_cases[] = {
    {"", 0, ""},
    {"abc", 3, "abc"},
    {"+2B", 1, "+"},
    {"+3D", 1, "="},
    {"a+20b", 3, "a b"},
    {"+00", 1, "\0"},
    {"+FF", 1, "\xff"},
    {"+41+42+43", 3, "ABC"},
    {"!~<>\"", 5, "!~<>\""},
    {"+2b", TERN_ESYNTAX, NULL},
    {"+", TERN_ESYNTAX, NULL},
    {"+4", TERN_ESYNTAX, NULL},
    {"a+", TERN_ESYNTAX, NULL},
    {"+GG", TERN_ESYNTAX, NULL},
    {"a=b", TERN_ESYNTAX, NULL},
    {"a b", TERN_ESYNTAX, NULL},
    {"\x7f", TERN_ESYNTAX, NULL},
    {"\xc3\xa9", TERN_ESYNTAX, NULL},
    {"a\tb", TERN_ESYNTAX, NULL},
};

static void test_xtext(void **state) {
  (void)state;
  for (size_t i = 0; i < sizeof xtext_cases / sizeof xtext_cases[0]; i++) {
    const struct xtext_case *tc = &xtext_cases[i];
    size_t len = strlen(tc->in);
    char *buf = dup_exact(tc->in, len);
    long rc = tern__xtext_decode(buf, len);
    if (rc != tc->rc)
      print_error("xtext case %zu \"%s\": got %ld\n", i, tc->in, rc);
    assert_int_equal(rc, tc->rc);
    if (rc >= 0)
      assert_memory_equal(buf, tc->out, (size_t)rc);
    else
      assert_memory_equal(buf, tc->in, len); /* untouched on error */
    free(buf);
  }
  assert_int_equal(tern__xtext_decode(NULL, 0), 0);
}

static void test_args(void **state) {
  struct tern_mail_params mp;
  struct tern_rcpt_params rp;
  struct tern_str bad;
  char s[] = "SIZE=1";
  (void)state;

  assert_int_equal(tern__mail_params_parse(NULL, 0, ALL, &mp, &bad), 0);
  assert_int_equal(tern__mail_params_parse(NULL, 3, ALL, &mp, &bad),
                   TERN_EINVAL);
  assert_int_equal(tern__mail_params_parse(s, 6, ALL, NULL, &bad),
                   TERN_EINVAL);
  assert_int_equal(tern__rcpt_params_parse(NULL, 0, ALL, &rp, &bad), 0);
  assert_int_equal(tern__rcpt_params_parse(s, 6, ALL, NULL, &bad),
                   TERN_EINVAL);
  /* bad may be NULL */
  assert_int_equal(tern__mail_params_parse(s, 6, ALL, &mp, NULL), 0);
  assert_true(mp.has_size && mp.size == 1);
  assert_int_equal(tern__rcpt_params_parse(s, 6, ALL, &rp, NULL),
                   TERN_EUNKNOWN);
  /* the length bounds the input: "SIZE=1" cut to "SIZE=" */
  assert_int_equal(tern__mail_params_parse(s, 5, ALL, &mp, &bad),
                   TERN_ESYNTAX);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_mail_table),  cmocka_unit_test(test_rcpt_table),
      cmocka_unit_test(test_envid_limit), cmocka_unit_test(test_orcpt_limit),
      cmocka_unit_test(test_xtext),       cmocka_unit_test(test_args),
  };
  print_message("params: %zu MAIL + %zu RCPT + %zu xtext cases\n",
                sizeof mail_cases / sizeof mail_cases[0],
                sizeof rcpt_cases / sizeof rcpt_cases[0],
                sizeof xtext_cases / sizeof xtext_cases[0]);
  return cmocka_run_group_tests(tests, NULL, NULL);
}
