/*
 * Unit tests for the client side of AUTH (src/sasl/gsasl_client.c): the
 * mechanism choice, and every mechanism run against our own server side
 * (tern__sasl_step from src/sasl/gsasl.c), the base64 texts passed
 * between them as an SMTP session would.
 */
/* clang-format off: cmocka needs these first */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
/* clang-format on */

#include <gsasl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "sasl_internal.h"
#include "sasl_step.h"

#define ALL_MECHS "PLAIN LOGIN CRAM-MD5 SCRAM-SHA-256 SCRAM-SHA-1 XOAUTH2 " \
                  "OAUTHBEARER"


/* ---- the server's application ------------------------------------------ */

static const char *USER = "alice";
static const char *PASS = "s3cret pass";
static const char *TOKEN = "ya29.tok-en";

static int check_password(struct tern_server_session *s, const char *authzid,
                          const char *user, const char *password, void *ud) {
  (void)s;
  (void)ud;
  if (authzid && *authzid && strcmp(authzid, "boss"))
    return TERN_EAUTH;
  return !strcmp(user, USER) && !strcmp(password, PASS) ? 0 : TERN_EAUTH;
}

static int get_password(struct tern_server_session *s, const char *user,
                        char *buf, size_t cap, void *ud) {
  (void)s;
  (void)ud;
  if (strcmp(user, USER))
    return TERN_EAUTH;
  snprintf(buf, cap, "%s", PASS);
  return 0;
}

static int check_token(struct tern_server_session *s, const char *user,
                       const char *token, void *ud) {
  (void)s;
  (void)ud;
  return !strcmp(user, USER) && !strcmp(token, TOKEN) ? 0 : TERN_EAUTH;
}

static struct tern__sasl *server(void) {
  struct tern_auth_callbacks cb;
  struct tern__sasl *sasl = NULL;
  tern_auth_callbacks_init(&cb);
  cb.check_password = check_password;
  cb.get_password = get_password;
  cb.check_token = check_token;
  assert_int_equal(tern__sasl_new(&sasl, &cb, NULL, ALL_MECHS), 0);
  return sasl;
}

/*
 * One AUTH exchange, as the session would run it: the client's first
 * step is the initial response (or none), then server challenge -> client
 * answer until the server decides. Returns the server's final result
 * (TERN__SASL_OK or an error) and the number of round trips in *rounds.
 */
static int exchange(const char *mech, const struct tern__sasl_client_params *p,
                    int *rounds, int *client_err) {
  struct tern__sasl *sasl = server();
  struct tern__sasl_session *ss = NULL;
  struct tern__sasl_client *c = NULL;
  char out[4096];
  const char *challenge = NULL;
  int rc;

  *client_err = 0;
  *rounds = 0;
  assert_int_equal(tern__sasl_client_new(&c, mech, p), 0);
  long n = tern__sasl_client_step(c, NULL, 0, false, out, sizeof out);
  if (n == TERN_CLIENT_AUTH_NO_IR) {
    rc = sstep(sasl, &ss, SESS, mech, NULL, 0, false, &challenge);
  } else {
    assert_true(n >= 0);
    /* RFC 4954: an empty initial response is "=" */
    rc = sstep(sasl, &ss, SESS, mech, n ? out : "=", n ? (size_t)n : 1,
               true, &challenge);
  }
  while (rc == TERN__SASL_CONTINUE && *rounds < 10) {
    (*rounds)++;
    n = tern__sasl_client_step(c, challenge, strlen(challenge), true, out,
                               sizeof out);
    if (n < 0) {
      *client_err = (int)n;
      /* the client cancels with "*" */
      rc = sstep(sasl, &ss, SESS, mech, "*", 1, true, &challenge);
      break;
    }
    rc = sstep(sasl, &ss, SESS, mech, out, (size_t)n, true,
               &challenge);
  }
  if (rc == TERN__SASL_OK)
    assert_string_equal(tern__sasl_user(ss), USER);
  tern__sasl_session_free(ss);
  tern__sasl_client_free(c);
  tern__sasl_free(sasl);
  return rc;
}

static struct tern__sasl_client_params params(void) {
  struct tern__sasl_client_params p = {0};
  p.user = USER;
  p.password = PASS;
  p.tls = true;
  return p;
}

static void run_ok(const char *mech, struct tern__sasl_client_params p) {
  int rounds, cerr;
  assert_int_equal(exchange(mech, &p, &rounds, &cerr), TERN__SASL_OK);
  assert_int_equal(cerr, 0);
}

static void run_refused(const char *mech, struct tern__sasl_client_params p) {
  int rounds, cerr;
  int rc = exchange(mech, &p, &rounds, &cerr);
  assert_true(rc < 0);
}

/* ---- tests ------------------------------------------------------------- */

static void test_plain(void **state) {
  (void)state;
  struct tern__sasl_client_params p = params();
  run_ok("PLAIN", p);
  p.authzid = "boss";
  run_ok("PLAIN", p);
  p.authzid = "intruder";
  run_refused("PLAIN", p);
  p = params();
  p.password = "wrong";
  run_refused("PLAIN", p);
}

static void test_login(void **state) {
  (void)state;
  struct tern__sasl_client_params p = params();
  run_ok("LOGIN", p);
  p.password = "wrong";
  run_refused("LOGIN", p);
}

static void test_cram_md5(void **state) {
  (void)state;
  struct tern__sasl_client_params p = params();
  struct tern__sasl_client *c = NULL;
  char out[256];
  /* server-first: no initial response */
  assert_int_equal(tern__sasl_client_new(&c, "CRAM-MD5", &p), 0);
  assert_int_equal(tern__sasl_client_step(c, NULL, 0, false, out, sizeof out),
                   TERN_CLIENT_AUTH_NO_IR);
  tern__sasl_client_free(c);
  run_ok("CRAM-MD5", p);
  p.password = "wrong";
  run_refused("CRAM-MD5", p);
}

static void test_scram_sha_256(void **state) {
  (void)state;
  int rounds, cerr;
  struct tern__sasl_client_params p = params();
  assert_int_equal(exchange("SCRAM-SHA-256", &p, &rounds, &cerr),
                   TERN__SASL_OK);
  assert_int_equal(rounds, 2); /* server-first, then server-final */
  run_ok("SCRAM-SHA-1", p);
  p.password = "wrong";
  run_refused("SCRAM-SHA-256", p);
}

static void test_xoauth2(void **state) {
  (void)state;
  struct tern__sasl_client_params p = params();
  struct tern__sasl_client *c = NULL;
  char out[512];
  p.password = NULL;
  p.token = TOKEN;
  run_ok("XOAUTH2", p);
  run_ok("OAUTHBEARER", p);

  /* the exact message */
  assert_int_equal(tern__sasl_client_new(&c, "XOAUTH2", &p), 0);
  long n = tern__sasl_client_step(c, NULL, 0, false, out, sizeof out);
  assert_true(n > 0);
  char *dec = NULL;
  size_t dlen = 0;
  assert_int_equal(gsasl_base64_from(out, (size_t)n, &dec, &dlen), 0);
  const char want[] = "user=alice\001auth=Bearer ya29.tok-en\001\001";
  assert_int_equal(dlen, sizeof want - 1);
  assert_memory_equal(dec, want, dlen);
  gsasl_free(dec);
  /* an error challenge is acknowledged with an empty line */
  assert_int_equal(tern__sasl_client_step(c, "e30=", 4, true, out, sizeof out),
                   0);
  tern__sasl_client_free(c);

  p.token = "bad";
  run_refused("XOAUTH2", p);
}

static void test_choose(void **state) {
  (void)state;
  struct tern__sasl_client_params p = params();
  const char *all = "PLAIN LOGIN CRAM-MD5 SCRAM-SHA-256 XOAUTH2";
  assert_string_equal(tern__sasl_client_choose(all, NULL, &p),
                      "SCRAM-SHA-256");
  assert_string_equal(tern__sasl_client_choose("login plain", NULL, &p),
                      "PLAIN");
  assert_string_equal(tern__sasl_client_choose(all, "plain cram-md5", &p),
                      "PLAIN");
  /* no TLS: PLAIN and LOGIN are out unless allowed */
  p.tls = false;
  assert_null(tern__sasl_client_choose("PLAIN LOGIN", NULL, &p));
  assert_string_equal(tern__sasl_client_choose(all, "PLAIN CRAM-MD5", &p),
                      "CRAM-MD5");
  p.insecure_ok = true;
  assert_string_equal(tern__sasl_client_choose("LOGIN", NULL, &p), "LOGIN");
  /* XOAUTH2 only with a token, and first by default then */
  p = params();
  assert_string_equal(tern__sasl_client_choose("XOAUTH2 PLAIN", NULL, &p),
                      "PLAIN");
  assert_null(tern__sasl_client_choose("XOAUTH2", NULL, &p));
  p.token = TOKEN;
  assert_string_equal(tern__sasl_client_choose("PLAIN XOAUTH2", NULL, &p),
                      "XOAUTH2");
  p.password = NULL;
  assert_null(tern__sasl_client_choose("PLAIN CRAM-MD5", NULL, &p));
  /* nothing offered, unknown names, prefix names */
  p = params();
  assert_null(tern__sasl_client_choose("", NULL, &p));
  assert_null(tern__sasl_client_choose("GSSAPI NTLM", NULL, &p));
  assert_null(tern__sasl_client_choose("PLAINX SCRAM-SHA-256-PLUS", NULL, &p));
  assert_null(tern__sasl_client_choose(all, "DIGEST-MD5", &p));
  p.user = NULL;
  assert_null(tern__sasl_client_choose(all, NULL, &p));
}

static void test_new_errors(void **state) {
  (void)state;
  struct tern__sasl_client *c = NULL;
  struct tern__sasl_client_params p = params();
  assert_int_equal(tern__sasl_client_new(&c, "GSSAPI", &p), TERN_ENOTSUP);
  assert_int_equal(tern__sasl_client_new(&c, "XOAUTH2", &p), TERN_ENOTSUP);
  assert_int_equal(tern__sasl_client_new(NULL, "PLAIN", &p), TERN_EINVAL);
  /* too small an output buffer */
  assert_int_equal(tern__sasl_client_new(&c, "PLAIN", &p), 0);
  char out[4];
  assert_int_equal(tern__sasl_client_step(c, NULL, 0, false, out, sizeof out),
                   TERN_ENOSPACE);
  tern__sasl_client_free(c);
  /* bad base64 from the server */
  assert_int_equal(tern__sasl_client_new(&c, "CRAM-MD5", &p), 0);
  char big[256];
  assert_int_equal(tern__sasl_client_step(c, NULL, 0, false, big, sizeof big),
                   TERN_CLIENT_AUTH_NO_IR);
  assert_true(tern__sasl_client_step(c, "!!!", 3, true, big, sizeof big) < 0);
  tern__sasl_client_free(c);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_plain),        cmocka_unit_test(test_login),
      cmocka_unit_test(test_cram_md5),     cmocka_unit_test(test_scram_sha_256),
      cmocka_unit_test(test_xoauth2),      cmocka_unit_test(test_choose),
      cmocka_unit_test(test_new_errors),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
