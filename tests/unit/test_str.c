/*
 * Unit tests for the locale-free helpers (src/core/str.c: ASCII, numbers,
 * UTF-8, bounded string building, SASL texts), the allocator
 * wrappers (src/core/mem.c) and the error tables (src/core/errors.c).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <locale.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

/* ---- tern__str_ieq ------------------------------------------------------- */

static void test_str_ieq(void **state) {
  (void)state;
  assert_true(tern__str_ieq("size", 4, "SIZE"));
  assert_true(tern__str_ieq("SiZe", 4, "SIZE"));
  assert_true(tern__str_ieq("SIZE", 4, "SIZE"));
  assert_true(tern__str_ieq("8bitmime", 8, "8BITMIME"));
  assert_true(tern__str_ieq("", 0, ""));
  assert_true(tern__str_ieq(NULL, 0, ""));
  assert_true(tern__str_ieq("sizex", 4, "SIZE")); /* length bounds a */
  assert_false(tern__str_ieq("siz", 3, "SIZE"));
  assert_false(tern__str_ieq("sizes", 5, "SIZE"));
  assert_false(tern__str_ieq("sixe", 4, "SIZE"));
  assert_false(tern__str_ieq("", 0, "X"));
  assert_false(tern__str_ieq("x", 1, ""));
  /* no locale folding: only ASCII letters fold */
  assert_false(tern__str_ieq("\xc4\xb1", 2, "I"));
  assert_false(tern__str_ieq("\xe9", 1, "\xc9"));
  assert_true(tern__str_ieq("\xe9", 1, "\xe9"));
  /* '@' (0x40) and '`' (0x60) are not case pairs of anything */
  assert_false(tern__str_ieq("`", 1, "@"));
  assert_false(tern__str_ieq("[", 1, "{"));
  /* an embedded NUL in a is compared, not a terminator */
  assert_false(tern__str_ieq("A\0", 2, "A"));
}

static void test_str_ieq_locale(void **state) {
  (void)state;
  /* Whatever locale the process picks, results do not change. */
  setlocale(LC_ALL, "");
  assert_true(tern__str_ieq("mail", 4, "MAIL"));
  assert_true(tern__str_ieq("quit", 4, "QUIT"));
  setlocale(LC_ALL, "C");
}

static void test_ascii_helpers(void **state) {
  (void)state;
  for (int c = 0; c < 256; c++) {
    unsigned char u = (unsigned char)c;
    assert_int_equal(tern__is_digit(u), c >= '0' && c <= '9');
    assert_int_equal(tern__is_alpha(u),
                     (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'));
    assert_int_equal(tern__upper(u),
                     (c >= 'a' && c <= 'z') ? c - 32 : c);
    assert_int_equal(tern__is_hex_upper(u),
                     (c >= '0' && c <= '9') || (c >= 'A' && c <= 'F'));
  }
}

/* ---- tern__parse_u64 ----------------------------------------------------- */

struct u64_case {
  const char *in;
  uint64_t max;
  int rc;
  uint64_t want;
};

static const struct u64_case u64_cases[] = {
    {"0", UINT64_MAX, 0, 0},
    {"7", UINT64_MAX, 0, 7},
    {"00042", UINT64_MAX, 0, 42},
    {"1000000", UINT64_MAX, 0, 1000000},
    {"18446744073709551615", UINT64_MAX, 0, UINT64_MAX},
    {"018446744073709551615", UINT64_MAX, 0, UINT64_MAX},
    {"18446744073709551616", UINT64_MAX, TERN_ERANGE, 0},
    {"18446744073709551620", UINT64_MAX, TERN_ERANGE, 0},
    {"99999999999999999999", UINT64_MAX, TERN_ERANGE, 0},
    {"184467440737095516150", UINT64_MAX, TERN_ERANGE, 0},
    {"100", 100, 0, 100},
    {"101", 100, TERN_ERANGE, 0},
    {"1000", 100, TERN_ERANGE, 0},
    {"5", 5, 0, 5},
    {"6", 5, TERN_ERANGE, 0},
    {"9", 5, TERN_ERANGE, 0},
    {"0", 0, 0, 0},
    {"1", 0, TERN_ERANGE, 0},
    {"", UINT64_MAX, TERN_ESYNTAX, 0},
    {"-1", UINT64_MAX, TERN_ESYNTAX, 0},
    {"+1", UINT64_MAX, TERN_ESYNTAX, 0},
    {" 1", UINT64_MAX, TERN_ESYNTAX, 0},
    {"1 ", UINT64_MAX, TERN_ESYNTAX, 0},
    {"0x10", UINT64_MAX, TERN_ESYNTAX, 0},
    {"1e3", UINT64_MAX, TERN_ESYNTAX, 0},
    {"12a", UINT64_MAX, TERN_ESYNTAX, 0},
    {"1.0", UINT64_MAX, TERN_ESYNTAX, 0},
    {"\xd9\xa3", UINT64_MAX, TERN_ESYNTAX, 0}, /* ARABIC-INDIC DIGIT THREE */
    /* syntax wins over range */
    {"99999999999999999999x", UINT64_MAX, TERN_ESYNTAX, 0},
};

static void test_parse_u64(void **state) {
  (void)state;
  for (size_t i = 0; i < sizeof u64_cases / sizeof u64_cases[0]; i++) {
    const struct u64_case *tc = &u64_cases[i];
    uint64_t v = 0xdeadbeef;
    int rc = tern__parse_u64(tc->in, strlen(tc->in), tc->max, &v);
    if (rc != tc->rc)
      print_error("case %zu \"%s\": rc %d\n", i, tc->in, rc);
    assert_int_equal(rc, tc->rc);
    if (rc == 0)
      assert_true(v == tc->want);
    else
      assert_true(v == 0xdeadbeef);
  }
}

static void test_parse_u64_bounds(void **state) {
  uint64_t v;
  (void)state;
  /* the length, not a NUL, ends the number */
  assert_int_equal(tern__parse_u64("12345", 2, UINT64_MAX, &v), 0);
  assert_true(v == 12);
  assert_int_equal(tern__parse_u64("1\0", 2, UINT64_MAX, &v), TERN_ESYNTAX);
  assert_int_equal(tern__parse_u64(NULL, 0, UINT64_MAX, &v), TERN_ESYNTAX);
  assert_int_equal(tern__parse_u64("1", 1, UINT64_MAX, NULL), 0);
}

/* ---- tern__utf8_valid ---------------------------------------------------- */

struct utf8_case {
  const char *in;
  size_t len; /* 0: strlen */
  bool valid;
};

static const struct utf8_case utf8_cases[] = {
    {"", 0, true},
    {"plain ascii", 0, true},
    {"\x7f", 0, true},
    {"\0", 1, true},
    {"\xc2\x80", 0, true},             /* U+0080, smallest 2-byte */
    {"\xc3\xa9", 0, true},             /* é */
    {"\xdf\xbf", 0, true},             /* U+07FF */
    {"\xe0\xa0\x80", 0, true},         /* U+0800, smallest 3-byte */
    {"\xe2\x82\xac", 0, true},         /* € */
    {"\xed\x9f\xbf", 0, true},         /* U+D7FF, just below surrogates */
    {"\xee\x80\x80", 0, true},         /* U+E000, just above */
    {"\xef\xbf\xbf", 0, true},         /* U+FFFF */
    {"\xef\xbb\xbf", 0, true},         /* BOM is a valid character */
    {"\xf0\x90\x80\x80", 0, true},     /* U+10000, smallest 4-byte */
    {"\xf0\x9f\x98\x80", 0, true},     /* emoji */
    {"\xf4\x8f\xbf\xbf", 0, true},     /* U+10FFFF, the largest */
    {"a\xc3\xa9z\xe2\x82\xac!", 0, true},
    /* bad lead bytes */
    {"\x80", 0, false},
    {"\xbf", 0, false},
    {"\xc0\x80", 0, false},            /* overlong NUL */
    {"\xc0\xaf", 0, false},            /* overlong '/' */
    {"\xc1\xbf", 0, false},            /* overlong U+007F */
    {"\xf5\x80\x80\x80", 0, false},
    {"\xf8\x88\x80\x80\x80", 0, false}, /* old 5-byte form */
    {"\xfc\x84\x80\x80\x80\x80", 0, false},
    {"\xfe", 0, false},
    {"\xff", 0, false},
    /* overlong 3- and 4-byte forms */
    {"\xe0\x80\x80", 0, false},
    {"\xe0\x9f\xbf", 0, false},        /* overlong U+07FF */
    {"\xf0\x80\x80\x80", 0, false},
    {"\xf0\x8f\xbf\xbf", 0, false},    /* overlong U+FFFF */
    /* surrogates */
    {"\xed\xa0\x80", 0, false},        /* U+D800 */
    {"\xed\xad\xbf", 0, false},
    {"\xed\xbf\xbf", 0, false},        /* U+DFFF */
    {"\xed\xa0\xbd\xed\xb8\x80", 0, false}, /* CESU-8 pair */
    /* beyond U+10FFFF */
    {"\xf4\x90\x80\x80", 0, false},
    {"\xf4\xbf\xbf\xbf", 0, false},
    /* truncated */
    {"\xc3", 0, false},
    {"\xe2\x82", 0, false},
    {"\xe2", 0, false},
    {"\xf0\x9f\x98", 0, false},
    {"a\xc3", 0, false},
    /* bad continuation bytes */
    {"\xc3\x28", 0, false},
    {"\xc3\xc3\xa9", 0, false},
    {"\xe2\x28\xa1", 0, false},
    {"\xe2\x82\x28", 0, false},
    {"\xf0\x9f\x28\x80", 0, false},
    {"\xf0\x9f\x98\x28", 0, false},
    {"\xf0\x9f\x98\xc0", 0, false},
};

static void test_utf8(void **state) {
  (void)state;
  for (size_t i = 0; i < sizeof utf8_cases / sizeof utf8_cases[0]; i++) {
    const struct utf8_case *tc = &utf8_cases[i];
    size_t len = tc->len ? tc->len : strlen(tc->in);
    /* exact-size heap copy: any overread shows under ASan */
    unsigned char *buf = malloc(len ? len : 1);
    bool got;
    assert_non_null(buf);
    memcpy(buf, tc->in, len);
    got = tern__utf8_valid(buf, len);
    free(buf);
    if (got != tc->valid)
      print_error("utf8 case %zu: got %d\n", i, got);
    assert_int_equal(got, tc->valid);
  }
  assert_true(tern__utf8_valid(NULL, 0));
}

/* The length bounds the check: a sequence cut by len is invalid even if
 * the following bytes would complete it. */
static void test_utf8_len_bound(void **state) {
  const unsigned char euro[] = {0xe2, 0x82, 0xac};
  (void)state;
  assert_true(tern__utf8_valid(euro, 3));
  assert_false(tern__utf8_valid(euro, 2));
  assert_false(tern__utf8_valid(euro, 1));
  assert_true(tern__utf8_valid(euro, 0));
}

/* Every code point encodes to something the validator accepts, except
 * surrogates; every 2-byte pair matches a reference rule. */
static void test_utf8_exhaustive(void **state) {
  (void)state;
  for (uint32_t cp = 0x80; cp <= 0x10FFFF; cp++) {
    unsigned char b[4];
    size_t n;
    if (cp < 0x800) {
      b[0] = (unsigned char)(0xC0 | (cp >> 6));
      b[1] = (unsigned char)(0x80 | (cp & 0x3F));
      n = 2;
    } else if (cp < 0x10000) {
      b[0] = (unsigned char)(0xE0 | (cp >> 12));
      b[1] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
      b[2] = (unsigned char)(0x80 | (cp & 0x3F));
      n = 3;
    } else {
      b[0] = (unsigned char)(0xF0 | (cp >> 18));
      b[1] = (unsigned char)(0x80 | ((cp >> 12) & 0x3F));
      b[2] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
      b[3] = (unsigned char)(0x80 | (cp & 0x3F));
      n = 4;
    }
    assert_int_equal(tern__utf8_valid(b, n), !(cp >= 0xD800 && cp <= 0xDFFF));
  }
  for (unsigned a = 0; a < 256; a++) {
    for (unsigned c = 0; c < 256; c++) {
      unsigned char b[2] = {(unsigned char)a, (unsigned char)c};
      bool want = (a < 0x80 && c < 0x80) ||
                  (a >= 0xC2 && a <= 0xDF && c >= 0x80 && c <= 0xBF);
      assert_int_equal(tern__utf8_valid(b, 2), want);
    }
  }
}

/* ---- mem.c ------------------------------------------------------------ */

struct counting {
  int mallocs, frees;
  bool fail;
};

static void *cm_malloc(size_t n, void *ud) {
  struct counting *c = ud;
  c->mallocs++;
  return c->fail ? NULL : malloc(n);
}

static void cm_free(void *p, void *ud) {
  struct counting *c = ud;
  c->frees++;
  free(p);
}

static void test_mem_hooks(void **state) {
  struct counting c = {0, 0, false};
  struct tern_mem m = {cm_malloc, NULL, cm_free, &c};
  unsigned char *p;
  (void)state;

  p = tern__malloc(&m, 16);
  assert_non_null(p);
  assert_int_equal(c.mallocs, 1);
  tern__free(&m, p);
  assert_int_equal(c.frees, 1);
  tern__free(&m, NULL); /* no-op, hook not called */
  assert_int_equal(c.frees, 1);

  p = tern__calloc_array(&m, 10, 4);
  assert_non_null(p);
  for (int i = 0; i < 40; i++)
    assert_int_equal(p[i], 0);
  tern__free(&m, p);

  c.fail = true;
  assert_null(tern__malloc(&m, 8));
  assert_null(tern__calloc_array(&m, 2, 2));
  c.fail = false;

  /* overflow is refused before the hook is called */
  c.mallocs = 0;
  assert_null(tern__calloc_array(&m, SIZE_MAX / 2 + 1, 2));
  assert_null(tern__calloc_array(&m, 2, SIZE_MAX));
  assert_null(tern__calloc_array(&m, SIZE_MAX, SIZE_MAX));
  assert_int_equal(c.mallocs, 0);

  /* zero sizes still give a block, so NULL always means failure */
  p = tern__calloc_array(&m, 0, 8);
  assert_non_null(p);
  tern__free(&m, p);
  p = tern__malloc(&m, 0);
  assert_non_null(p);
  tern__free(&m, p);
}

static void test_mem_libc(void **state) {
  struct tern_mem empty = {NULL, NULL, NULL, NULL};
  char *p;
  (void)state;

  p = tern__malloc(NULL, 32);
  assert_non_null(p);
  memset(p, 'x', 32);
  tern__free(NULL, p);
  p = tern__calloc_array(NULL, 3, 5);
  assert_non_null(p);
  for (int i = 0; i < 15; i++)
    assert_int_equal(p[i], 0);
  tern__free(NULL, p);
  p = tern__malloc(&empty, 4);
  assert_non_null(p);
  tern__free(&empty, p);
  tern__free(NULL, NULL);
  assert_null(tern__calloc_array(NULL, SIZE_MAX, 2));
}

/* ---- bounded string building --------------------------------------------- */

static void test_cat(void **state) {
  (void)state;
  char b[8];
  size_t n = tern__cats(b, sizeof b, 0, "ab");
  assert_int_equal(n, 2);
  assert_string_equal(b, "ab");
  n = tern__cat_u64(b, sizeof b, n, 0);
  assert_string_equal(b, "ab0");
  n = tern__cat(b, sizeof b, n, "xyz!", 3);
  assert_int_equal(n, 6);
  assert_string_equal(b, "ab0xyz");
  /* cut at cap - 1, always NUL-terminated */
  n = tern__cats(b, sizeof b, n, "123");
  assert_int_equal(n, 7);
  assert_string_equal(b, "ab0xyz1");
  assert_int_equal(tern__cats(b, sizeof b, n, "more"), 7);
  assert_int_equal(tern__cats(b, sizeof b, 9, "x"), 9); /* n >= cap */
  char u[24];
  tern__cat_u64(u, sizeof u, 0, UINT64_MAX);
  assert_string_equal(u, "18446744073709551615");
}

/* ---- SASL texts ------------------------------------------------------------- */

static void test_mech_name(void **state) {
  (void)state;
  assert_true(tern__mech_name_ok("PLAIN", 5));
  assert_true(tern__mech_name_ok("scram-sha-256", 13));
  assert_true(tern__mech_name_ok("X_Y", 3));
  assert_true(tern__mech_name_ok("ABCDEFGHIJKLMNOPQRST", 20));
  assert_false(tern__mech_name_ok("ABCDEFGHIJKLMNOPQRSTU", 21));
  assert_false(tern__mech_name_ok("", 0));
  assert_false(tern__mech_name_ok("BAD!MECH", 8));
  assert_false(tern__mech_name_ok("A B", 3));
}

static void test_mech_listed(void **state) {
  (void)state;
  const char *l = "  PLAIN  LOGIN CRAM-MD5 ";
  assert_true(tern__mech_listed(l, "plain", 5));
  assert_true(tern__mech_listed(l, "CRAM-MD5", 8));
  assert_true(tern__mech_listed(l, "LOGINX", 5)); /* m[0..len) only */
  assert_false(tern__mech_listed(l, "LOG", 3));
  assert_false(tern__mech_listed(l, "CRAM-MD5X", 9));
  assert_false(tern__mech_listed(l, "", 0));
  assert_false(tern__mech_listed("", "PLAIN", 5));
}

static bool b64(const char *s) { return tern__base64_ok(s, strlen(s)); }

/* One rule for both sides: RFC 4648 §4 with padding required, plus the
 * empty responses of RFC 4954 §4 ("" and "="). */
static void test_base64(void **state) {
  (void)state;
  assert_true(b64(""));  /* empty continuation response */
  assert_true(b64("=")); /* empty initial response */
  assert_true(b64("AGFsaWNlAHNlY3JldA=="));
  assert_true(b64("YWxpY2U="));
  assert_true(b64("c2VjcmV0"));
  assert_true(b64("+/+/"));
  assert_false(b64("YWxpY2U"));   /* padding missing */
  assert_false(b64("YQ"));        /* padding missing */
  assert_false(b64("Y==="));      /* three pad characters */
  assert_false(b64("===="));
  assert_false(b64("=="));
  assert_false(b64("YQ==YQ=="));  /* padding in the middle */
  assert_false(b64("YW=j"));
  assert_false(b64("YWxp Y2U=")); /* space */
  assert_false(b64("YWxp\r\n"));
  assert_false(b64("YW-_"));      /* base64url is another alphabet */
  assert_false(b64("*"));         /* cancel is not a response */
  assert_false(tern__base64_ok("YQ\0=", 4));
}

/* ---- errors.c ------------------------------------------------------ */

static void test_errors(void **state) {
  (void)state;
  assert_string_equal(tern_strerror(TERN_ENOMEM), "out of memory");
  assert_string_equal(tern_err_name(TERN_ENOMEM), "TERN_ENOMEM");
  assert_string_equal(tern_err_name(TERN_EINVAL), "TERN_EINVAL");
  assert_string_equal(tern_err_name(TERN_ECLOSED), "TERN_ECLOSED");
  assert_string_equal(tern_strerror(TERN_ECLOSED), "session is closed");
  assert_string_equal(tern_strerror(0), "unknown error");
  assert_string_equal(tern_strerror(1), "unknown error");
  assert_string_equal(tern_strerror(-99), "unknown error");
  assert_string_equal(tern_err_name(-99), "TERN_E?");
  assert_string_equal(tern_err_name(0), "TERN_E?");
  /* every listed code has its own name and message */
#define CHECK(name, val, msg)                                              \
  assert_string_equal(tern_err_name(val), "TERN_" #name);                  \
  assert_string_equal(tern_strerror(val), msg);                            \
  assert_true((val) < 0);
  TERN_ERRORS(CHECK)
#undef CHECK
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_str_ieq),
      cmocka_unit_test(test_str_ieq_locale),
      cmocka_unit_test(test_ascii_helpers),
      cmocka_unit_test(test_parse_u64),
      cmocka_unit_test(test_parse_u64_bounds),
      cmocka_unit_test(test_utf8),
      cmocka_unit_test(test_utf8_len_bound),
      cmocka_unit_test(test_utf8_exhaustive),
      cmocka_unit_test(test_mem_hooks),
      cmocka_unit_test(test_mem_libc),
      cmocka_unit_test(test_errors),
      cmocka_unit_test(test_cat),
      cmocka_unit_test(test_mech_name),
      cmocka_unit_test(test_mech_listed),
      cmocka_unit_test(test_base64),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
