/*
 * <tern/sasl.h> as a poll() embedder uses it: public headers only, no
 * libuv. A sans-IO server session and a sans-IO client session are
 * wired to each other in memory; the server's on_auth steps GNU SASL
 * with tern_sasl_step() (and checks a PLAIN password right there,
 * tern_sasl_verify()), the client's on_auth_mechanism / on_auth use
 * tern_sasl_client_choose() / _new() / _step(). PLAIN, LOGIN,
 * CRAM-MD5 and SCRAM-SHA-256 succeed; a wrong password is refused;
 * constructors leave *out NULL on failure.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include <tern/client.h>
#include <tern/sasl.h>
#include <tern/server.h>

#ifdef UV_VERSION_MAJOR
#error "<tern/sasl.h> must not pull in libuv"
#endif

struct app {
  /* server side */
  struct tern_sasl *sasl;
  struct tern_sasl_session *ex;
  char user[64];
  /* client side */
  const char *prefs;
  const char *password;
  const char *mech;
  struct tern_sasl_client *cx;
  int client_err;
  bool ready;
};

/* ---- the server's credentials ------------------------------------------- */

static int check_password(struct tern_server_session *s, const char *authzid,
                          const char *user, const char *password, void *ud) {
  (void)s;
  (void)authzid;
  (void)ud;
  return !strcmp(user, "alice") && !strcmp(password, "secret") ? 0
                                                                : TERN_EAUTH;
}

static int get_password(struct tern_server_session *s, const char *user,
                        char *buf, size_t cap, void *ud) {
  (void)s;
  (void)ud;
  if (strcmp(user, "alice"))
    return TERN_EAUTH;
  snprintf(buf, cap, "secret");
  return 0;
}

/* ---- the server session's on_auth: the glue an embedder writes ---------- */

static int srv_auth(struct tern_server_session *s, struct tern_str mech,
                    struct tern_str resp, bool has_resp, unsigned step,
                    struct tern_reply *reply, void *ud) {
  struct app *a = ud;
  char m[32];
  const char *chal = NULL;
  if (step == 0) {
    tern_sasl_session_free(a->ex);
    a->ex = NULL;
  }
  snprintf(m, sizeof m, "%.*s", (int)mech.len, mech.ptr);
  int r = tern_sasl_step(a->sasl, &a->ex, s, m, resp.ptr, resp.len, has_resp,
                         &chal);
  if (r == TERN_SASL_VERIFY) { /* a poll() loop may check it right here */
    tern_sasl_verify(a->ex);   /* calls check_password */
    r = tern_sasl_verify_done(a->ex);
  }
  if (r == TERN_SASL_CONTINUE) {
    reply->code = 334;
    reply->enhanced = NULL;
    reply->text = chal;
    return TERN_REPLY_NOW;
  }
  if (r == TERN_SASL_OK) {
    snprintf(a->user, sizeof a->user, "%s", tern_sasl_user(a->ex));
    reply->code = 235;
    reply->enhanced = "2.7.0";
    reply->text = "Authentication successful";
  } /* else the pre-filled 535 5.7.8 */
  tern_sasl_session_free(a->ex);
  a->ex = NULL;
  return TERN_REPLY_NOW;
}

/* ---- the client session's side ------------------------------------------ */

static struct tern_sasl_client_params params(const struct app *a, bool tls) {
  struct tern_sasl_client_params p;
  tern_sasl_client_params_init(&p);
  p.user = "alice";
  p.password = a->password;
  p.tls = tls;
  p.insecure_ok = true; /* memory "connection": PLAIN and LOGIN allowed */
  return p;
}

static const char *cl_mech(struct tern_client_session *c, const char *offered,
                           bool tls, void *ud) {
  struct app *a = ud;
  struct tern_sasl_client_params p = params(a, tls);
  (void)c;
  a->mech = tern_sasl_client_choose(offered, a->prefs, &p);
  return a->mech;
}

static long cl_auth(struct tern_client_session *c, struct tern_str chal,
                    bool has_chal, char *out, size_t cap, void *ud) {
  struct app *a = ud;
  (void)c;
  if (!has_chal && !a->cx) {
    struct tern_sasl_client_params p = params(a, false);
    int rc = tern_sasl_client_new(&a->cx, a->mech, &p);
    if (rc)
      return rc;
  }
  return tern_sasl_client_step(a->cx, chal.ptr, chal.len, has_chal, out, cap);
}

static void cl_ready(struct tern_client_session *c, void *ud) {
  (void)c;
  ((struct app *)ud)->ready = true;
}

static void cl_error(struct tern_client_session *c, int err,
                     const struct tern_client_reply *r, void *ud) {
  (void)c;
  (void)r;
  ((struct app *)ud)->client_err = err;
}

/* Move bytes both ways until neither side has anything to say. */
static void pump(struct tern_server_session *srv,
                 struct tern_client_session *cl) {
  for (int moved = 1, turns = 0; moved && turns < 100; turns++) {
    const char *d;
    size_t n;
    moved = 0;
    if ((n = tern_server_session_output(srv, &d)) > 0) {
      assert_int_equal(tern_client_session_feed(cl, d, n), (long)n);
      tern_server_session_consume(srv, n);
      moved = 1;
    }
    if ((n = tern_client_session_output(cl, &d)) > 0) {
      assert_int_equal(tern_server_session_feed(srv, d, n), (long)n);
      tern_client_session_consume(cl, n);
      moved = 1;
    }
  }
}

/* One AUTH between the two sessions; returns the client's error (0). */
static int login(const char *prefs, const char *password, struct app *a) {
  struct tern_auth_callbacks acb;
  struct tern_server_callbacks scb;
  struct tern_server_config scfg;
  struct tern_client_callbacks ccb;
  struct tern_client_config ccfg;
  struct tern_server_session *srv = NULL;
  struct tern_client_session *cl = NULL;

  memset(a, 0, sizeof *a);
  a->prefs = prefs;
  a->password = password;
  tern_auth_callbacks_init(&acb);
  acb.check_password = check_password;
  acb.get_password = get_password;
  assert_int_equal(tern_sasl_new(&a->sasl, &acb, NULL,
                                 "PLAIN LOGIN CRAM-MD5 SCRAM-SHA-256"),
                   0);

  tern_server_callbacks_init(&scb);
  scb.on_auth = srv_auth;
  tern_server_config_init(&scfg);
  scfg.extensions |= TERN_EXT_AUTH;
  scfg.auth_insecure_ok = true;
  scfg.auth_mechanisms = tern_sasl_mechanisms(a->sasl);
  assert_int_equal(tern_server_session_new(&srv, &scfg, &scb, a), 0);

  tern_client_callbacks_init(&ccb);
  ccb.on_auth_mechanism = cl_mech;
  ccb.on_auth = cl_auth;
  ccb.on_ready = cl_ready;
  ccb.on_error = cl_error;
  tern_client_config_init(&ccfg);
  ccfg.auth_required = true;
  assert_int_equal(tern_client_session_new(&cl, &ccfg, &ccb, a), 0);

  assert_int_equal(tern_server_session_start(srv), 0);
  pump(srv, cl);
  if (!a->client_err) {
    assert_true(a->ready);
    assert_true(tern_server_session_is_authenticated(srv));
  }
  tern_client_session_free(cl);
  tern_server_session_free(srv);
  tern_sasl_client_free(a->cx);
  tern_sasl_session_free(a->ex);
  tern_sasl_free(a->sasl);
  return a->client_err;
}

static void test_mechanisms(void **state) {
  (void)state;
  struct app a;
  const char *mechs[] = {"PLAIN", "LOGIN", "CRAM-MD5", "SCRAM-SHA-256"};
  for (size_t i = 0; i < sizeof mechs / sizeof mechs[0]; i++) {
    assert_int_equal(login(mechs[i], "secret", &a), 0);
    assert_string_equal(a.mech, mechs[i]);
    assert_string_equal(a.user, "alice");
  }
  /* the default preference: the strongest one offered */
  assert_int_equal(login(NULL, "secret", &a), 0);
  assert_string_equal(a.mech, "SCRAM-SHA-256");
}

static void test_wrong_password(void **state) {
  (void)state;
  struct app a;
  assert_int_equal(login("PLAIN", "guess", &a), TERN_EAUTH);
  assert_string_equal(a.user, "");
  assert_int_equal(login("SCRAM-SHA-256", "guess", &a), TERN_EAUTH);
}

/* base64 of "\0alice\0" + password */
static const char *plain(const char *password) {
  return !strcmp(password, "guess") ? "AGFsaWNlAGd1ZXNz" : "AGFsaWNlAHNlY3JldA==";
}

/* An exchange that ended takes no more steps: a refused PLAIN cannot be
 * followed by a good password on the same exchange, the check runs once,
 * and verify_done without a check is a refusal, never a login. */
static void test_exchange_over(void **state) {
  (void)state;
  struct tern_auth_callbacks acb;
  struct tern_sasl *sasl;
  struct tern_sasl_session *ex = NULL;
  const char *chal;
  tern_auth_callbacks_init(&acb);
  acb.check_password = check_password;
  assert_int_equal(tern_sasl_new(&sasl, &acb, NULL, "PLAIN"), 0);

  const char *bad = plain("guess"), *good = plain("secret");
  assert_int_equal(tern_sasl_step(sasl, &ex, NULL, "PLAIN", bad, strlen(bad),
                                  true, &chal),
                   TERN_SASL_VERIFY);
  assert_int_equal(tern_sasl_verify(ex), TERN_EAUTH);
  assert_int_equal(tern_sasl_verify(ex), TERN_ESTATE); /* checked once */
  assert_int_equal(tern_sasl_verify_done(ex), TERN_EAUTH);
  assert_int_equal(tern_sasl_step(sasl, &ex, NULL, "PLAIN", good,
                                  strlen(good), true, &chal),
                   TERN_ESTATE);
  assert_null(tern_sasl_user(ex));
  tern_sasl_session_free(ex);

  ex = NULL; /* a good password, but verify_done without verify */
  assert_int_equal(tern_sasl_step(sasl, &ex, NULL, "PLAIN", good,
                                  strlen(good), true, &chal),
                   TERN_SASL_VERIFY);
  assert_int_equal(tern_sasl_verify_done(ex), TERN_EAUTH);
  assert_null(tern_sasl_user(ex));
  tern_sasl_session_free(ex);

  ex = NULL; /* a syntax error ends the exchange too */
  assert_int_equal(tern_sasl_step(sasl, &ex, NULL, "PLAIN", "!!", 2, true,
                                  &chal),
                   TERN_ESYNTAX);
  assert_int_equal(tern_sasl_step(sasl, &ex, NULL, "PLAIN", good,
                                  strlen(good), true, &chal),
                   TERN_ESTATE);
  tern_sasl_session_free(ex);
  tern_sasl_free(sasl);
}

static void test_out_null_on_failure(void **state) {
  (void)state;
  struct tern_auth_callbacks acb;
  struct tern_sasl *sasl = (struct tern_sasl *)&acb; /* not NULL */
  struct tern_sasl_client *c = (struct tern_sasl_client *)&acb;
  struct tern_sasl_client_params p;

  tern_auth_callbacks_init(&acb);
  acb.size = 0;
  assert_int_equal(tern_sasl_new(&sasl, &acb, NULL, "PLAIN"), TERN_EINVAL);
  assert_null(sasl);

  tern_sasl_client_params_init(&p);
  p.user = "alice";
  assert_int_equal(tern_sasl_client_new(&c, "PLAIN", &p), TERN_ENOTSUP);
  assert_null(c); /* no password */
  p.password = "secret";
  p.size = 0;
  c = (struct tern_sasl_client *)&acb;
  assert_int_equal(tern_sasl_client_new(&c, "PLAIN", &p), TERN_EINVAL);
  assert_null(c);
  assert_null(tern_sasl_client_choose("PLAIN", NULL, &p));
  tern_sasl_free(NULL);
  tern_sasl_session_free(NULL);
  tern_sasl_client_free(NULL);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_mechanisms),
      cmocka_unit_test(test_wrong_password),
      cmocka_unit_test(test_exchange_over),
      cmocka_unit_test(test_out_null_on_failure),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
