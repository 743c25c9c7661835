/*
 * Unit tests for the sans-IO MTA-STS parts (src/core/mtasts.c,
 * tern/mtasts.h): the _mta-sts TXT record (RFC 8461 §3.1), the policy
 * file (§3.2) and MX pattern matching (§4.1).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
/* cmocka needs the four above first */
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

#include "tern/mtasts.h"

static int txt(const char *s, char *id, size_t cap) {
  return tern_mtasts_txt_parse(s, strlen(s), id, cap);
}

/* ---- TXT ------------------------------------------------------------------
 */

static void test_txt_good(void **state) {
  char id[33];
  (void)state;
  assert_int_equal(txt("v=STSv1; id=20160831085700Z;", id, sizeof id), 0);
  assert_string_equal(id, "20160831085700Z");
  assert_int_equal(txt("v=STSv1;id=abc", id, sizeof id), 0);
  assert_string_equal(id, "abc");
  /* whitespace around separators, unknown fields ignored */
  assert_int_equal(
      txt("v=STSv1 ;\tid=X1 ; ext_a-b.c=some!value ;", id, sizeof id), 0);
  assert_string_equal(id, "X1");
  assert_int_equal(txt("v=STSv1; foo=bar; id=Z9", id, sizeof id), 0);
  assert_string_equal(id, "Z9");
  /* 32 alphanumerics is the longest id */
  assert_int_equal(
      txt("v=STSv1; id=0123456789abcdef0123456789ABCDEF", id, sizeof id), 0);
  assert_int_equal(strlen(id), 32);
}

static void test_txt_bad(void **state) {
  char id[33];
  static const char *bad[] = {
      "",
      "v=STSv1",          /* no id */
      "v=STSv1;",         /* no field */
      "v=STSv1; foo=bar", /* no id */
      "v=STSv2; id=1",    /* version */
      "V=STSv1; id=1",    /* %s: case-sensitive */
      "v=stsv1; id=1",
      " v=STSv1; id=1", /* must start the record */
      "id=1; v=STSv1",
      "v=STSv1; id=",    /* empty id */
      "v=STSv1; id=a-b", /* id: alphanumerics only */
      "v=STSv1; id=a b",
      "v=STSv1; id=0123456789abcdef0123456789ABCDEFX", /* 33 */
      "v=STSv1; id=1; id=2",                           /* twice */
      "v=STSv1 id=1",                                  /* no separator */
      "v=STSv1; id=1;; x=y",                           /* empty field */
      "v=STSv1; =x; id=1",                             /* no name */
      "v=STSv1; -x=y; id=1", /* name must start alphanumeric */
      "v=STSv1; x; id=1",    /* no value */
      "v=STSv1; x=; id=1",
      "v=STSv1; id=1\x01",
      "v=STSv1x; id=1",
      "v=STSv1; a!b=c; id=1", /* bad character in a name */
      "v=STSv1; abcdefghijabcdefghijabcdefghijabc=1; id=1", /* name of 33 */
  };
  size_t i;
  (void)state;
  for (i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    if (txt(bad[i], id, sizeof id) != TERN_ESYNTAX)
      fail_msg("accepted: \"%s\"", bad[i]);
  }
  /* an embedded NUL is not a character of the record */
  assert_int_equal(tern_mtasts_txt_parse("v=STSv1; id=1\0x", 15, id, sizeof id),
                   TERN_ESYNTAX);
  assert_int_equal(tern_mtasts_txt_parse(NULL, 0, id, sizeof id), TERN_ESYNTAX);
}

static void test_txt_space(void **state) {
  char id[4];
  (void)state;
  assert_int_equal(txt("v=STSv1; id=abcd", id, sizeof id), TERN_ENOSPACE);
  assert_int_equal(txt("v=STSv1; id=abc", id, sizeof id), 0);
  assert_string_equal(id, "abc");
  assert_int_equal(txt("v=STSv1; id=abc", NULL, 0), TERN_ENOSPACE);
}

/* ---- policy
 * ------------------------------------------------------------------ */

static int pol(const char *s, struct tern_mtasts_parsed *p) {
  return tern_mtasts_policy_parse(s, strlen(s), p);
}

static void test_policy_good(void **state) {
  struct tern_mtasts_parsed p;
  (void)state;
  assert_int_equal(
      pol("version: STSv1\r\nmode: enforce\r\nmx: mail.example.com\r\n"
          "mx: *.Example.NET\r\nmx: backupmx.example.com\r\n"
          "max_age: 604800\r\n",
          &p),
      0);
  assert_int_equal(p.mode, 2);
  assert_int_equal(p.max_age, 604800);
  assert_int_equal(p.nmx, 3);
  assert_string_equal(p.mx[0], "mail.example.com");
  assert_string_equal(p.mx[1], "*.example.net");
  assert_string_equal(p.mx[2], "backupmx.example.com");
  tern_mtasts_parsed_free(&p);
  assert_null(p.mx);
  assert_int_equal(p.nmx, 0);

  /* LF only, no final line end, any order, spaces after the colon and at
   * the end, unknown keys */
  assert_int_equal(
      pol("mode:testing\nmax_age:\t86400  \nfoo_bar: whatever it is\n"
          "version: STSv1\nmx: mx.example.org",
          &p),
      0);
  assert_int_equal(p.mode, 1);
  assert_int_equal(p.max_age, 86400);
  assert_int_equal(p.nmx, 1);
  assert_string_equal(p.mx[0], "mx.example.org");
  tern_mtasts_parsed_free(&p);

  /* mode none needs no mx */
  assert_int_equal(pol("version: STSv1\nmode: none\nmax_age: 0\n", &p), 0);
  assert_int_equal(p.mode, 0);
  assert_int_equal(p.max_age, 0);
  assert_int_equal(p.nmx, 0);
  tern_mtasts_parsed_free(&p);

  /* blank lines and mixed line ends are tolerated */
  assert_int_equal(
      pol("version: STSv1\r\n\r\nmode: enforce\nmx: a.b\r\nmax_age: 1\n\n", &p),
      0);
  tern_mtasts_parsed_free(&p);
  tern_mtasts_parsed_free(NULL);
}

static void test_policy_max_age(void **state) {
  struct tern_mtasts_parsed p;
  (void)state;
  assert_int_equal(pol("version: STSv1\nmode: none\nmax_age: 31557600\n", &p),
                   0);
  assert_int_equal(p.max_age, 31557600);
  tern_mtasts_parsed_free(&p);
  /* above the maximum: cut to it, the policy stays (failing open would
   * drop an enforce policy) */
  assert_int_equal(pol("version: STSv1\nmode: none\nmax_age: 31557601\n", &p),
                   0);
  assert_int_equal(p.max_age, 31557600);
  tern_mtasts_parsed_free(&p);
  assert_int_equal(pol("version: STSv1\nmode: none\nmax_age: 9999999999\n", &p),
                   0);
  assert_int_equal(p.max_age, 31557600);
  tern_mtasts_parsed_free(&p);
  /* 1*10DIGIT */
  assert_int_equal(
      pol("version: STSv1\nmode: none\nmax_age: 00000000001\n", &p),
      TERN_ESYNTAX);
  assert_int_equal(pol("version: STSv1\nmode: none\nmax_age: -1\n", &p),
                   TERN_ESYNTAX);
  assert_int_equal(pol("version: STSv1\nmode: none\nmax_age: 1 2\n", &p),
                   TERN_ESYNTAX);
  assert_int_equal(pol("version: STSv1\nmode: none\nmax_age:\n", &p),
                   TERN_ESYNTAX);
  assert_int_equal(pol("version: STSv1\nmode: none\nmax_age: 0x10\n", &p),
                   TERN_ESYNTAX);
}

static void test_policy_bad(void **state) {
  struct tern_mtasts_parsed p;
  static const char *bad[] = {
      "",
      "mode: enforce\nmx: a.b\nmax_age: 1\n",        /* no version */
      "version: STSv1\nmx: a.b\nmax_age: 1\n",       /* no mode */
      "version: STSv1\nmode: enforce\nmx: a.b\n",    /* no max_age */
      "version: STSv1\nmode: enforce\nmax_age: 1\n", /* no mx */
      "version: STSv1\nmode: testing\nmax_age: 1\n",
      "version: STSv2\nmode: enforce\nmx: a.b\nmax_age: 1\n",
      "Version: STSv1\nmode: enforce\nmx: a.b\nmax_age: 1\n", /* case */
      "version: STSv1\nmode: Enforce\nmx: a.b\nmax_age: 1\n",
      "version: STSv1\nmode: reject\nmx: a.b\nmax_age: 1\n",
      "version: STSv1\nversion: STSv1\nmode: none\nmax_age: 1\n", /* twice */
      "version: STSv1\nmode: none\nmode: none\nmax_age: 1\n",
      "version: STSv1\nmode: none\nmax_age: 1\nmax_age: 1\n",
      "version: STSv1\nmode: enforce\nmx a.b\nmax_age: 1\n",   /* no colon */
      "version: STSv1\nmode: enforce\nmx: a..b\nmax_age: 1\n", /* bad mx */
      "version: STSv1\nmode: enforce\nmx: -a.b\nmax_age: 1\n",
      "version: STSv1\nmode: enforce\nmx: a-.b\nmax_age: 1\n",
      "version: STSv1\nmode: enforce\nmx: a.b.\nmax_age: 1\n",
      "version: STSv1\nmode: enforce\nmx: *\nmax_age: 1\n",
      "version: STSv1\nmode: enforce\nmx: *.\nmax_age: 1\n",
      "version: STSv1\nmode: enforce\nmx: a.*.b\nmax_age: 1\n",
      "version: STSv1\nmode: enforce\nmx: **.b\nmax_age: 1\n",
      "version: STSv1\nmode: enforce\nmx: a_b.c\nmax_age: 1\n",
      "version: STSv1\nmode: enforce\nmx: a b\nmax_age: 1\n",
      "version: STSv1\nmode: enforce\nmx:\nmax_age: 1\n",
      "version: STSv1\rmode: none\rmax_age: 1\r",          /* CR alone */
      "version: STSv1\nmode: none\nmax_age: 1\n-bad: x\n", /* bad key */
      ": x\nversion: STSv1\nmode: none\nmax_age: 1\n",
      "version: STSv1\nmode: none\nmax_age: 1\nfo\ro: x\n",   /* CR in a key */
      "version: STSv1\nmode: none\nmax_age: 1\nfoo: x\x7f\n", /* DEL */
      "version: STSv1\nmode: enforce\nmax_age: 1\nmx: "
      "a234567890123456789012345678901234567890123456789012345678901234.b\n",
  };
  size_t i;
  (void)state;
  for (i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    int rc = pol(bad[i], &p);
    if (rc != TERN_ESYNTAX)
      fail_msg("case %zu: rc %d for \"%s\"", i, rc, bad[i]);
    assert_null(p.mx);
  }
  /* a NUL inside */
  assert_int_equal(tern_mtasts_policy_parse(
                       "version: STSv1\0\nmode: none\nmax_age: 1\n", 39, &p),
                   TERN_ESYNTAX);
  assert_int_equal(tern_mtasts_policy_parse("x", 1, NULL), TERN_EINVAL);
  assert_int_equal(tern_mtasts_policy_parse(NULL, 1, &p), TERN_EINVAL);
  /* a label of 63 is fine */
  assert_int_equal(
      pol("version: STSv1\nmode: enforce\nmax_age: 1\nmx: "
          "a23456789012345678901234567890123456789012345678901234567890123.b\n",
          &p),
      0);
  tern_mtasts_parsed_free(&p);
}

static void test_policy_limits(void **state) {
  struct tern_mtasts_parsed p;
  size_t cap = 70 * 1024, n = 0, i;
  char *buf = malloc(cap);
  (void)state;
  assert_non_null(buf);
  n += (size_t)snprintf(buf + n, cap - n,
                        "version: STSv1\nmode: enforce\nmax_age: 1\n");
  for (i = 0; i < 1000; i++)
    n += (size_t)snprintf(buf + n, cap - n, "mx: m%zu.example.org\n", i);
  assert_int_equal(tern_mtasts_policy_parse(buf, n, &p), 0);
  assert_int_equal(p.nmx, 1000);
  assert_string_equal(p.mx[999], "m999.example.org");
  tern_mtasts_parsed_free(&p);
  n += (size_t)snprintf(buf + n, cap - n, "mx: one.too.many\n");
  assert_int_equal(tern_mtasts_policy_parse(buf, n, &p), TERN_ETOOLONG);
  /* 64 KiB at most */
  memset(buf, '\n', cap);
  memcpy(buf, "version: STSv1\nmode: none\nmax_age: 1\n", 37);
  assert_int_equal(tern_mtasts_policy_parse(buf, 64 * 1024, &p), 0);
  tern_mtasts_parsed_free(&p);
  assert_int_equal(tern_mtasts_policy_parse(buf, 64 * 1024 + 1, &p),
                   TERN_ETOOLONG);
  free(buf);
}

/* ---- MX matching
 * ------------------------------------------------------------------ */

static void test_mx_match(void **state) {
  (void)state;
  assert_true(tern_mtasts_mx_match("mail.example.com", "mail.example.com"));
  assert_true(tern_mtasts_mx_match("mail.example.com", "MAIL.Example.COM"));
  assert_true(tern_mtasts_mx_match("mail.example.com", "mail.example.com."));
  assert_false(tern_mtasts_mx_match("mail.example.com", "mail2.example.com"));
  assert_false(tern_mtasts_mx_match("mail.example.com", "example.com"));
  assert_false(tern_mtasts_mx_match("mail.example.com", "x.mail.example.com"));
  /* §4.1: a wildcard is one whole leftmost label */
  assert_true(tern_mtasts_mx_match("*.example.com", "mail.example.com"));
  assert_true(tern_mtasts_mx_match("*.example.com.", "mail.example.com"));
  assert_true(tern_mtasts_mx_match("*.example.com", "MX-1.EXAMPLE.com"));
  assert_false(tern_mtasts_mx_match("*.example.com", "example.com"));
  assert_false(tern_mtasts_mx_match("*.example.com", "foo.bar.example.com"));
  assert_false(tern_mtasts_mx_match("*.example.com", ".example.com"));
  assert_false(tern_mtasts_mx_match("*.example.com", "mailexample.com"));
  assert_false(tern_mtasts_mx_match("*.example.com", "mail.example.org"));
  assert_false(tern_mtasts_mx_match("*.example.com", "mail.xexample.com"));
  /* a '*' in the host is only a character */
  assert_false(tern_mtasts_mx_match("mail.example.com", "*.example.com"));
  assert_false(tern_mtasts_mx_match("*", "a"));
  assert_false(tern_mtasts_mx_match("", ""));
  assert_false(tern_mtasts_mx_match(NULL, "a"));
  assert_false(tern_mtasts_mx_match("a", NULL));
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_txt_good),       cmocka_unit_test(test_txt_bad),
      cmocka_unit_test(test_txt_space),      cmocka_unit_test(test_policy_good),
      cmocka_unit_test(test_policy_max_age), cmocka_unit_test(test_policy_bad),
      cmocka_unit_test(test_policy_limits),  cmocka_unit_test(test_mx_match),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
