/*
 * tern/dkim.h's contract, apart from the signatures' validity (dkimpy
 * checks those: tests/dkim): loading errors (each naming the file),
 * which From: domains a signer covers, which messages are not signed and
 * why, the 1 MiB header bound, a large body streamed through, argument
 * checks. Keys are made here with OpenSSL into a temporary directory.
 */
#define _GNU_SOURCE /* memmem */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/pem.h>

#include <tern/dkim.h>

static char dir[64];
static char rsa_path[128], ed_path[128], small_path[128], ec_path[128],
    junk_path[128], missing_path[128];

static void write_key(const char *path, EVP_PKEY *k) {
  assert_non_null(k);
  FILE *f = fopen(path, "w");
  assert_non_null(f);
  assert_int_equal(PEM_write_PrivateKey(f, k, NULL, NULL, 0, NULL, NULL), 1);
  fclose(f);
  EVP_PKEY_free(k);
}

static int setup(void **state) {
  (void)state;
  snprintf(dir, sizeof dir, "/tmp/tern-dkim-unit-XXXXXX");
  assert_non_null(mkdtemp(dir));
  snprintf(rsa_path, sizeof rsa_path, "%s/rsa.pem", dir);
  snprintf(ed_path, sizeof ed_path, "%s/ed.pem", dir);
  snprintf(small_path, sizeof small_path, "%s/rsa512.pem", dir);
  snprintf(ec_path, sizeof ec_path, "%s/ec.pem", dir);
  snprintf(junk_path, sizeof junk_path, "%s/junk.pem", dir);
  snprintf(missing_path, sizeof missing_path, "%s/missing.pem", dir);
  write_key(rsa_path, EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)1024));
  write_key(ed_path, EVP_PKEY_Q_keygen(NULL, NULL, "ED25519"));
  write_key(small_path, EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)768));
  write_key(ec_path, EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256"));
  FILE *f = fopen(junk_path, "w");
  assert_non_null(f);
  fputs("-----BEGIN PRIVATE KEY-----\nnot base64 at all\n"
        "-----END PRIVATE KEY-----\n",
        f);
  fclose(f);
  return 0;
}

static int teardown(void **state) {
  (void)state;
  char cmd[128];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
  assert_int_equal(system(cmd), 0);
  return 0;
}

/* Load one key; returns the code, err in e. */
static int load1(const char *domain, const char *sel, const char *file,
                 const char *hdrs, char *e, size_t cap) {
  struct tern_dkim_key k = {domain, sel, file, hdrs};
  struct tern_dkim_signer *s = (struct tern_dkim_signer *)1;
  int rc = tern_dkim_signer_new(&s, &k, 1, e, cap);
  if (rc == 0)
    tern_dkim_signer_free(s);
  else
    assert_null(s); /* on failure *out is NULL */
  return rc;
}

static void test_load_errors(void **state) {
  (void)state;
  char e[512];
  assert_int_equal(load1("example.org", "s1", rsa_path, NULL, e, sizeof e), 0);
  assert_int_equal(load1("example.org", "s1", ed_path, NULL, e, sizeof e), 0);
  assert_int_equal(load1(".example.org", "s1", ed_path, NULL, e, sizeof e), 0);

  assert_int_equal(load1("example.org", "s1", small_path, NULL, e, sizeof e),
                   TERN_EINVAL);
  assert_non_null(strstr(e, small_path));
  assert_non_null(strstr(e, "1024"));
  assert_int_equal(load1("example.org", "s1", ec_path, NULL, e, sizeof e),
                   TERN_EINVAL);
  assert_non_null(strstr(e, ec_path));
  assert_int_equal(load1("example.org", "s1", junk_path, NULL, e, sizeof e),
                   TERN_EINVAL);
  assert_non_null(strstr(e, junk_path));
  assert_int_equal(load1("example.org", "s1", missing_path, NULL, e, sizeof e),
                   TERN_EIO);
  assert_non_null(strstr(e, missing_path));
  assert_int_equal(load1("example.org", "s1", dir, NULL, e, sizeof e),
                   TERN_EIO); /* a directory */
  assert_non_null(strstr(e, dir));

  assert_int_equal(load1("exa mple.org", "s1", rsa_path, NULL, e, sizeof e),
                   TERN_EINVAL);
  assert_int_equal(load1("example..org", "s1", rsa_path, NULL, e, sizeof e),
                   TERN_EINVAL);
  assert_int_equal(load1("-x.org", "s1", rsa_path, NULL, e, sizeof e),
                   TERN_EINVAL);
  assert_int_equal(load1("example.org", "s;1", rsa_path, NULL, e, sizeof e),
                   TERN_EINVAL);
  assert_int_equal(load1("example.org", "", rsa_path, NULL, e, sizeof e),
                   TERN_EINVAL);
  assert_int_equal(load1(NULL, "s1", rsa_path, NULL, e, sizeof e), TERN_EINVAL);
  assert_int_equal(load1("example.org", "s1", NULL, NULL, e, sizeof e),
                   TERN_EINVAL);
  assert_int_equal(
      load1("example.org", "s1", rsa_path, "from::to", e, sizeof e),
      TERN_EINVAL);
  assert_non_null(strstr(e, "header list"));
  assert_int_equal(
      load1("example.org", "s1", rsa_path, "from:to :subject", e, sizeof e), 0);

  struct tern_dkim_signer *s;
  assert_int_equal(tern_dkim_signer_new(&s, NULL, 0, e, sizeof e), TERN_EINVAL);
  assert_null(s);
  assert_int_equal(tern_dkim_signer_new(NULL, NULL, 0, NULL, 0), TERN_EINVAL);
  /* one bad key of two: nothing loads */
  struct tern_dkim_key two[2] = {{"example.org", "s1", rsa_path, NULL},
                                 {"example.org", "s2", missing_path, NULL}};
  assert_int_equal(tern_dkim_signer_new(&s, two, 2, e, sizeof e), TERN_EIO);
  assert_null(s);
  tern_dkim_signer_free(NULL);
}

static void test_covers(void **state) {
  (void)state;
  struct tern_dkim_key k[2] = {{"example.org", "s1", rsa_path, NULL},
                               {".Example.NET", "e1", ed_path, NULL}};
  struct tern_dkim_signer *s;
  assert_int_equal(tern_dkim_signer_new(&s, k, 2, NULL, 0), 0);
  assert_true(tern_dkim_signer_covers(s, "example.org"));
  assert_true(tern_dkim_signer_covers(s, "EXAMPLE.org."));
  assert_false(tern_dkim_signer_covers(s, "mail.example.org"));
  assert_false(tern_dkim_signer_covers(s, "xexample.org"));
  assert_true(tern_dkim_signer_covers(s, "example.net"));
  assert_true(tern_dkim_signer_covers(s, "a.b.example.net"));
  assert_false(tern_dkim_signer_covers(s, "notexample.net"));
  assert_false(tern_dkim_signer_covers(s, "net"));
  assert_false(tern_dkim_signer_covers(s, ""));
  assert_false(tern_dkim_signer_covers(s, NULL));
  assert_false(tern_dkim_signer_covers(NULL, "example.org"));
  tern_dkim_signer_free(s);
}

/* Sign msg in pieces of `piece`; returns the fields (caller frees), why
 * in *why. */
static char *sign(struct tern_dkim_signer *s, const char *msg, size_t len,
                  size_t piece, const char **why) {
  struct tern_dkim_sign *c;
  assert_int_equal(tern_dkim_sign_new(s, &c), 0);
  for (size_t off = 0; off < len; off += piece)
    assert_int_equal(tern_dkim_sign_write(
                         c, msg + off, len - off < piece ? len - off : piece),
                     0);
  char *f = NULL;
  assert_int_equal(tern_dkim_sign_end(c, &f, why), 0);
  assert_non_null(f);
  return f;
}

struct from_case {
  const char *header;
  const char *why; /* NULL: signed */
};

static void test_which_messages(void **state) {
  (void)state;
  struct tern_dkim_key k = {"example.org", "s1", rsa_path, NULL};
  struct tern_dkim_signer *s;
  assert_int_equal(tern_dkim_signer_new(&s, &k, 1, NULL, 0), 0);
  static const struct from_case cases[] = {
      {"From: a@example.org\r\n", NULL},
      {"FROM : A <a@Example.Org>\r\n", NULL},
      {"From: \"x@evil.com, y\" <a@example.org>\r\n", NULL},
      {"From: (a@evil.com) a@example.org (comment, with comma)\r\n", NULL},
      {"From: \"a@b.com\"@example.org\r\n", NULL},
      {"From:\r\n\tAlice\r\n <a@example.org>\r\n", NULL},
      {"From: a@example.org.\r\n", NULL},
      {"From: a@evil.com\r\n", "no key for the From domain"},
      {"From: a@mail.example.org\r\n", "no key for the From domain"},
      {"To: b@example.org\r\n", "no From field"},
      {"From: a@example.org\r\nFrom: b@example.org\r\n", "several From fields"},
      {"From: a@example.org, b@example.org\r\n",
       "several mailboxes in the From field"},
      {"From: <a@example.org> <b@example.org>\r\n",
       "several mailboxes in the From field"},
      {"From: undisclosed:;\r\n", "a group in the From field"},
      {"From: a@[192.0.2.1]\r\n", "no usable domain in the From field"},
      {"From: nobody\r\n", "no domain in the From field"},
      {"From: \"unterminated <a@example.org>\r\n",
       "a From field that cannot be parsed"},
      {"Fromage: a@example.org\r\n", "no From field"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    char msg[512];
    int n = snprintf(msg, sizeof msg, "%sSubject: t\r\n\r\nbody\r\n",
                     cases[i].header);
    const char *why = "unset";
    char *f = sign(s, msg, (size_t)n, (size_t)n, &why);
    if (cases[i].why) {
      if (f[0] || !why || strcmp(why, cases[i].why) != 0)
        fail_msg("case %zu (%s): fields %s, why %s", i, cases[i].header, f,
                 why ? why : "NULL");
    } else {
      if (strncmp(f, "DKIM-Signature: ", 16) != 0)
        fail_msg("case %zu (%s) not signed: %s", i, cases[i].header,
                 why ? why : "NULL");
    }
    free(f);
  }
  /* a message that is all header, and an empty one */
  const char *why;
  char *f = sign(s, "From: a@example.org\r\n", 21, 5, &why);
  assert_non_null(strstr(f, "d=example.org"));
  free(f);
  f = sign(s, "", 0, 1, &why);
  assert_string_equal(f, "");
  assert_string_equal(why, "no From field");
  free(f);
  tern_dkim_signer_free(s);
}

/* The fields' form: each line within 78 columns (h= may pass), CRLF,
 * folded with a tab, two signatures for two keys. */
static void test_fields_form(void **state) {
  (void)state;
  struct tern_dkim_key k[2] = {{"example.org", "s1", rsa_path, NULL},
                               {".example.org", "e1", ed_path, NULL}};
  struct tern_dkim_signer *s;
  assert_int_equal(tern_dkim_signer_new(&s, k, 2, NULL, 0), 0);
  const char *msg = "From: a@example.org\r\nTo: b@example.net\r\n"
                    "Subject: s\r\n\r\nbody\r\n";
  const char *why;
  char *f = sign(s, msg, strlen(msg), 7, &why);
  size_t nsig = 0;
  for (const char *p = f; (p = strstr(p, "DKIM-Signature: ")); p++)
    nsig++;
  assert_int_equal(nsig, 2);
  assert_non_null(strstr(f, "a=rsa-sha256"));
  assert_non_null(strstr(f, "a=ed25519-sha256"));
  assert_non_null(strstr(f, "c=relaxed/relaxed"));
  assert_non_null(strstr(f, "h=From:To:Subject:from;"));
  size_t len = strlen(f);
  assert_true(len >= 2 && f[len - 2] == '\r' && f[len - 1] == '\n');
  for (const char *line = f; *line;) {
    const char *e = strstr(line, "\r\n");
    assert_non_null(e);
    size_t n = (size_t)(e - line);
    if (!memmem(line, n, " h=", 3) && !memmem(line, n, "\th=", 3))
      assert_true(n <= 78);
    if (strncmp(line, "DKIM-Signature: ", 16) != 0)
      assert_int_equal(line[0], '\t');
    assert_null(memchr(line, '\n', n));
    line = e + 2;
  }
  free(f);
  tern_dkim_signer_free(s);
}

/* Over 1 MiB of header: not signed; a 4 MiB body streams through. */
static void test_bounds(void **state) {
  (void)state;
  struct tern_dkim_key k = {"example.org", "s1", rsa_path, NULL};
  struct tern_dkim_signer *s;
  assert_int_equal(tern_dkim_signer_new(&s, &k, 1, NULL, 0), 0);
  char line[1001];
  memcpy(line, "X-Pad: ", 7);
  memset(line + 7, 'x', 991);
  memcpy(line + 998, "\r\n", 3);

  struct tern_dkim_sign *c;
  assert_int_equal(tern_dkim_sign_new(s, &c), 0);
  assert_int_equal(tern_dkim_sign_write(c, "From: a@example.org\r\n", 21), 0);
  for (int i = 0; i < 1100; i++)
    assert_int_equal(tern_dkim_sign_write(c, line, 1000), 0);
  assert_int_equal(tern_dkim_sign_write(c, "\r\nbody\r\n", 8), 0);
  char *f;
  const char *why;
  assert_int_equal(tern_dkim_sign_end(c, &f, &why), 0);
  assert_string_equal(f, "");
  assert_string_equal(why, "a header section over 1 MiB");
  free(f);

  assert_int_equal(tern_dkim_sign_new(s, &c), 0);
  assert_int_equal(tern_dkim_sign_write(c, "From: a@example.org\r\n\r\n", 23),
                   0);
  for (int i = 0; i < 4096; i++)
    assert_int_equal(tern_dkim_sign_write(c, line, 1000), 0);
  assert_int_equal(tern_dkim_sign_end(c, &f, &why), 0);
  assert_non_null(strstr(f, "DKIM-Signature: "));
  free(f);

  /* abort mid-body, and the argument checks */
  assert_int_equal(tern_dkim_sign_new(s, &c), 0);
  assert_int_equal(tern_dkim_sign_write(c, "From: a@example.org\r\n\r\nx", 24),
                   0);
  assert_int_equal(tern_dkim_sign_write(c, NULL, 3), TERN_EINVAL);
  assert_int_equal(tern_dkim_sign_write(c, NULL, 0), 0);
  tern_dkim_sign_abort(c);
  tern_dkim_sign_abort(NULL);
  assert_int_equal(tern_dkim_sign_new(s, &c), 0);
  assert_int_equal(tern_dkim_sign_end(c, NULL, &why), TERN_EINVAL);
  assert_int_equal(tern_dkim_sign_new(s, NULL), TERN_EINVAL);
  assert_int_equal(tern_dkim_sign_new(NULL, &c), TERN_EINVAL);
  assert_null(c);
  tern_dkim_signer_free(s);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_load_errors),    cmocka_unit_test(test_covers),
      cmocka_unit_test(test_which_messages), cmocka_unit_test(test_fields_form),
      cmocka_unit_test(test_bounds),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
