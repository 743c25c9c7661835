/*
 * Unit tests for the SASL provider (src/sasl/gsasl.c). Each GNU SASL
 * mechanism is driven from the client side by GNU SASL itself (a second
 * Gsasl context with its own callback); XOAUTH2 and OAUTHBEARER, which
 * GNU SASL does not have, by hand-built messages.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <gsasl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "sasl_internal.h"
#include "sasl_step.h"

#define ALL_MECHS                                                              \
  "PLAIN LOGIN CRAM-MD5 SCRAM-SHA-256 SCRAM-SHA-1 XOAUTH2 OAUTHBEARER"


/* ---- the application ----------------------------------------------------- */

struct app {
  const char *user;
  const char *password;
  const char *token;
  int force_rc;         /* nonzero: every callback returns it */
  bool password_no_nul; /* get_password fills the buffer without a NUL */
  int calls;
  bool saw_authzid;
  char authzid[64];
  char seen_user[64];
  struct tern_server_session *seen_s;
};

static void note(struct app *a, struct tern_server_session *s,
                 const char *user) {
  a->calls++;
  a->seen_s = s;
  snprintf(a->seen_user, sizeof a->seen_user, "%s", user ? user : "(null)");
}

static int app_check_password(struct tern_server_session *s,
                              const char *authzid, const char *user,
                              const char *password, void *ud) {
  struct app *a = ud;
  note(a, s, user);
  a->saw_authzid = authzid != NULL;
  snprintf(a->authzid, sizeof a->authzid, "%s", authzid ? authzid : "");
  if (a->force_rc)
    return a->force_rc;
  return strcmp(user, a->user) == 0 && strcmp(password, a->password) == 0
             ? 0
             : TERN_EAUTH;
}

static int app_get_password(struct tern_server_session *s, const char *user,
                            char *buf, size_t cap, void *ud) {
  struct app *a = ud;
  note(a, s, user);
  if (a->force_rc)
    return a->force_rc;
  if (a->password_no_nul) {
    memset(buf, 'x', cap);
    return 0;
  }
  if (strcmp(user, a->user) != 0)
    return TERN_EAUTH;
  snprintf(buf, cap, "%s", a->password);
  return 0;
}

static int app_check_token(struct tern_server_session *s, const char *user,
                           const char *token, void *ud) {
  struct app *a = ud;
  note(a, s, user);
  if (a->force_rc)
    return a->force_rc;
  return strcmp(user, a->user) == 0 && strcmp(token, a->token) == 0
             ? 0
             : TERN_EAUTH;
}

static struct app APP;

static struct tern__sasl *make(bool pw, bool getpw, bool tok,
                               const char *mechs) {
  struct tern_auth_callbacks cb;
  tern_auth_callbacks_init(&cb);
  if (pw)
    cb.check_password = app_check_password;
  if (getpw)
    cb.get_password = app_get_password;
  if (tok)
    cb.check_token = app_check_token;
  struct tern__sasl *sasl = NULL;
  assert_int_equal(tern__sasl_new(&sasl, &cb, &APP, mechs), 0);
  assert_non_null(sasl);
  return sasl;
}

static int setup(void **state) {
  (void)state;
  memset(&APP, 0, sizeof APP);
  APP.user = "alice";
  APP.password = "s3cret p\xc3\xa4ss";
  APP.token = "ya29.vF9dft4qmTc2Nvb3RlckBhdHRhdmlzdGEuY29tCg";
  return 0;
}

/* ---- the client: GNU SASL ------------------------------------------------ */

struct creds {
  const char *authid;
  const char *password;
  const char *authzid;
};

static int client_cb(Gsasl *ctx, Gsasl_session *cs, Gsasl_property prop) {
  (void)ctx;
  const struct creds *c = gsasl_session_hook_get(cs);
  const char *v = NULL;
  switch (prop) {
  case GSASL_AUTHID:
    v = c->authid;
    break;
  case GSASL_PASSWORD:
    v = c->password;
    break;
  case GSASL_AUTHZID:
    v = c->authzid;
    break;
  default:
    break;
  }
  if (v == NULL)
    return GSASL_NO_CALLBACK;
  return gsasl_property_set(cs, prop, v);
}

/*
 * Run a whole exchange: GNU SASL's client against tern__sasl_step.
 * `initial`: the client's first message goes with AUTH (an empty one as
 * "="). Returns the server's final result; *user gets a copy of
 * tern__sasl_user() on OK; *nsteps the number of server steps.
 */
static int exchange(struct tern__sasl *sasl, const char *mech,
                    const struct creds *c, bool initial, char *user,
                    size_t usercap, int *nsteps) {
  Gsasl *cctx;
  Gsasl_session *cs;
  assert_int_equal(gsasl_init(&cctx), GSASL_OK);
  gsasl_callback_set(cctx, client_cb);
  assert_int_equal(gsasl_client_start(cctx, mech, &cs), GSASL_OK);
  gsasl_session_hook_set(cs, (void *)(uintptr_t)c);

  struct tern__sasl_session *ss = NULL;
  const char *chal = NULL;
  char *out = NULL;
  int rc, crc = GSASL_NEEDS_MORE, steps = 0;

  if (initial) {
    crc = gsasl_step64(cs, "", &out);
    assert_true(crc == GSASL_OK || crc == GSASL_NEEDS_MORE);
    const char *r = out[0] ? out : "=";
    rc = sstep(sasl, &ss, SESS, mech, r, strlen(r), true, &chal);
    gsasl_free(out);
  } else {
    rc = sstep(sasl, &ss, SESS, mech, NULL, 0, false, &chal);
  }
  steps++;
  while (rc == TERN__SASL_CONTINUE && steps < 20) {
    assert_non_null(chal);
    crc = gsasl_step64(cs, chal, &out);
    if (crc != GSASL_OK && crc != GSASL_NEEDS_MORE) {
      /* the client gave up (e.g. a bad server signature) */
      rc = -1000 - crc;
      break;
    }
    rc = sstep(sasl, &ss, SESS, NULL, out, strlen(out), true, &chal);
    gsasl_free(out);
    steps++;
  }
  if (rc == TERN__SASL_OK) {
    assert_int_equal(crc, GSASL_OK); /* the client agrees */
    assert_non_null(tern__sasl_user(ss));
    if (user)
      snprintf(user, usercap, "%s", tern__sasl_user(ss));
  } else if (rc != TERN__SASL_CONTINUE) {
    assert_null(tern__sasl_user(ss));
  }
  tern__sasl_session_free(ss);
  gsasl_finish(cs);
  gsasl_done(cctx);
  if (nsteps)
    *nsteps = steps;
  return rc;
}

/* One step with a literal text (step 0 when *ss is NULL). */
static int step(struct tern__sasl *sasl, struct tern__sasl_session **ss,
                const char *mech, const char *b64, const char **chal) {
  return sstep(sasl, ss, SESS, mech, b64, b64 ? strlen(b64) : 0,
               b64 != NULL, chal);
}

/* base64 of raw bytes, freed by the caller with gsasl_free(). */
static char *b64(const char *raw, size_t len) {
  char *out = NULL;
  assert_int_equal(gsasl_base64_to(raw, len, &out, NULL), GSASL_OK);
  return out;
}

/* Decode a challenge into buf (NUL-terminated). */
static void unb64(const char *in, char *buf, size_t cap) {
  char *out = NULL;
  size_t n = 0;
  assert_int_equal(gsasl_base64_from(in, strlen(in), &out, &n), GSASL_OK);
  assert_true(n < cap);
  if (n)
    memcpy(buf, out, n);
  buf[n] = '\0';
  gsasl_free(out);
}

/* ---- mechanism list ------------------------------------------------------ */

static void test_mechs_all(void **state) {
  (void)state;
  struct tern__sasl *sasl = make(true, true, true, ALL_MECHS);
  assert_string_equal(tern__sasl_mechanisms(sasl), ALL_MECHS);
  tern__sasl_free(sasl);
}

static void test_mechs_order_case_dups_unknown(void **state) {
  (void)state;
  struct tern__sasl *sasl =
      make(true, true, true,
           "  oauthbearer GSSAPI login  DIGEST-MD5 Plain SCRAM-SHA-256-PLUS "
           "plain ANONYMOUS cram-md5 FOO-BAR xoauth2 ");
  assert_string_equal(tern__sasl_mechanisms(sasl),
                      "OAUTHBEARER LOGIN PLAIN CRAM-MD5 XOAUTH2");
  tern__sasl_free(sasl);
}

static void test_mechs_filtered_by_callbacks(void **state) {
  (void)state;
  struct tern__sasl *sasl = make(true, false, false, ALL_MECHS);
  assert_string_equal(tern__sasl_mechanisms(sasl), "PLAIN LOGIN");
  /* a mechanism not offered cannot be started */
  const char *chal;
  struct tern__sasl_session *ss = NULL;
  assert_int_equal(step(sasl, &ss, "CRAM-MD5", NULL, &chal), TERN_ENOTSUP);
  assert_null(ss);
  assert_int_equal(step(sasl, &ss, "SCRAM-SHA-256", NULL, &chal), TERN_ENOTSUP);
  assert_int_equal(step(sasl, &ss, "XOAUTH2", NULL, &chal), TERN_ENOTSUP);
  assert_int_equal(step(sasl, &ss, "NOPE", NULL, &chal), TERN_ENOTSUP);
  assert_null(ss);
  tern__sasl_free(sasl);

  sasl = make(false, true, false, ALL_MECHS);
  assert_string_equal(tern__sasl_mechanisms(sasl),
                      "CRAM-MD5 SCRAM-SHA-256 SCRAM-SHA-1");
  tern__sasl_free(sasl);

  sasl = make(false, false, true, ALL_MECHS);
  assert_string_equal(tern__sasl_mechanisms(sasl), "XOAUTH2 OAUTHBEARER");
  tern__sasl_free(sasl);

  sasl = make(false, false, false, ALL_MECHS);
  assert_string_equal(tern__sasl_mechanisms(sasl), "");
  tern__sasl_free(sasl);

  sasl = make(true, true, true, "");
  assert_string_equal(tern__sasl_mechanisms(sasl), "");
  tern__sasl_free(sasl);
}

static void test_new_invalid(void **state) {
  (void)state;
  struct tern_auth_callbacks cb;
  tern_auth_callbacks_init(&cb);
  struct tern__sasl *sasl = NULL;
  assert_int_equal(tern__sasl_new(NULL, &cb, NULL, "PLAIN"), TERN_EINVAL);
  assert_int_equal(tern__sasl_new(&sasl, NULL, NULL, "PLAIN"), TERN_EINVAL);
  assert_int_equal(tern__sasl_new(&sasl, &cb, NULL, NULL), TERN_EINVAL);
  assert_int_equal(
      tern__sasl_new(&sasl, &cb, NULL, "PLAIN ABCDEFGHIJKLMNOPQRSTU"),
      TERN_EINVAL);
  cb.size = 0;
  assert_int_equal(tern__sasl_new(&sasl, &cb, NULL, "PLAIN"), TERN_EINVAL);
  assert_null(sasl);
}

static void test_new_older_struct(void **state) {
  (void)state;
  /* A caller built against a struct with only check_password: the
   * fields past its size must not be read (they are garbage here). */
  struct tern_auth_callbacks cb;
  memset(&cb, 0xa5, sizeof cb);
  cb.size = offsetof(struct tern_auth_callbacks, get_password);
  cb.check_password = app_check_password;
  struct tern__sasl *sasl = NULL;
  assert_int_equal(tern__sasl_new(&sasl, &cb, &APP, ALL_MECHS), 0);
  assert_string_equal(tern__sasl_mechanisms(sasl), "PLAIN LOGIN");
  tern__sasl_free(sasl);
  tern__sasl_free(NULL);
  tern__sasl_session_free(NULL);
}

/* ---- PLAIN --------------------------------------------------------------- */

/*
 * Issue 8 item 13: PLAIN's step only reads the credentials; the password
 * check (check_password, a hash) runs when tern__sasl_verify() is called,
 * which the runtime does off the event loop. Until verify_done there is
 * no user; a refusal and a temporary failure come out of verify_done;
 * freeing with a check still waiting wipes and frees the credentials.
 */
static void test_plain_verify_deferred(void **state) {
  (void)state;
  struct tern__sasl *sasl = make(true, false, false, "PLAIN");
  struct tern__sasl_session *ss = NULL;
  const char *chal = NULL;
  /* "\0alice\0s3cret p\xc3\xa4ss" */
  const char *ok = "AGFsaWNlAHMzY3JldCBww6Rzcw==";
  assert_int_equal(tern__sasl_verify(NULL), TERN_ESTATE);
  assert_int_equal(tern__sasl_verify_done(NULL), TERN_ESTATE);
  assert_int_equal(tern__sasl_step(sasl, &ss, SESS, "PLAIN", ok, strlen(ok),
                                   true, &chal),
                   TERN__SASL_VERIFY);
  assert_int_equal(APP.calls, 0); /* nothing hashed on this thread */
  assert_null(tern__sasl_user(ss));
  assert_int_equal(tern__sasl_step(sasl, &ss, SESS, NULL, "", 0, true, &chal),
                   TERN_ESTATE);
  assert_int_equal(tern__sasl_verify(ss), 0);
  assert_int_equal(APP.calls, 1);
  assert_ptr_equal(APP.seen_s, SESS);
  assert_int_equal(tern__sasl_verify_done(ss), TERN__SASL_OK);
  assert_string_equal(tern__sasl_user(ss), "alice");
  assert_int_equal(tern__sasl_verify_done(ss), TERN_ESTATE);
  tern__sasl_session_free(ss);

  /* wrong password: EAUTH; a temporary failure: ETEMP */
  const char *bad = "AGFsaWNlAHdyb25n"; /* "\0alice\0wrong" */
  ss = NULL;
  assert_int_equal(tern__sasl_step(sasl, &ss, SESS, "PLAIN", bad, strlen(bad),
                                   true, &chal),
                   TERN__SASL_VERIFY);
  assert_int_equal(tern__sasl_verify(ss), TERN_EAUTH);
  assert_int_equal(tern__sasl_verify_done(ss), TERN_EAUTH);
  assert_null(tern__sasl_user(ss));
  tern__sasl_session_free(ss);
  APP.force_rc = TERN_EIO;
  ss = NULL;
  assert_int_equal(tern__sasl_step(sasl, &ss, SESS, "PLAIN", ok, strlen(ok),
                                   true, &chal),
                   TERN__SASL_VERIFY);
  tern__sasl_verify(ss);
  assert_int_equal(tern__sasl_verify_done(ss), TERN_ETEMP);
  tern__sasl_session_free(ss);
  /* freed while the check still waits: no leak (ASan), nothing called */
  APP.force_rc = 0;
  APP.calls = 0;
  ss = NULL;
  assert_int_equal(tern__sasl_step(sasl, &ss, SESS, "PLAIN", ok, strlen(ok),
                                   true, &chal),
                   TERN__SASL_VERIFY);
  tern__sasl_session_free(ss);
  assert_int_equal(APP.calls, 0);
  tern__sasl_free(sasl);
}

static void test_plain_initial_ok(void **state) {
  (void)state;
  struct tern__sasl *sasl = make(true, true, true, ALL_MECHS);
  struct creds c = {"alice", APP.password, NULL};
  char user[64];
  int n;
  assert_int_equal(exchange(sasl, "PLAIN", &c, true, user, sizeof user, &n),
                   TERN__SASL_OK);
  assert_string_equal(user, "alice");
  assert_int_equal(n, 1);
  assert_int_equal(APP.calls, 1);
  assert_ptr_equal(APP.seen_s, SESS);
  assert_false(APP.saw_authzid);
  tern__sasl_free(sasl);
}

static void test_plain_lowercase_mech(void **state) {
  (void)state;
  struct tern__sasl *sasl = make(true, false, false, "PLAIN");
  char *m = b64("\0alice\0s3cret p\xc3\xa4ss", 19);
  const char *chal = NULL;
  struct tern__sasl_session *ss = NULL;
  assert_int_equal(step(sasl, &ss, "plain", m, &chal), TERN__SASL_OK);
  assert_null(chal);
  assert_string_equal(tern__sasl_user(ss), "alice");
  /* a step after OK is a caller bug */
  assert_int_equal(step(sasl, &ss, NULL, m, &chal), TERN_ESTATE);
  tern__sasl_session_free(ss);
  gsasl_free(m);
  tern__sasl_free(sasl);
}

static void test_plain_no_initial(void **state) {
  (void)state;
  struct tern__sasl *sasl = make(true, false, false, "PLAIN");
  struct creds c = {"alice", APP.password, NULL};
  char user[64];
  int n;
  assert_int_equal(exchange(sasl, "PLAIN", &c, false, user, sizeof user, &n),
                   TERN__SASL_OK);
  assert_string_equal(user, "alice");
  assert_int_equal(n, 2);

  /* the first challenge is empty: "334 " */
  const char *chal = NULL;
  struct tern__sasl_session *ss = NULL;
  assert_int_equal(step(sasl, &ss, "PLAIN", NULL, &chal), TERN__SASL_CONTINUE);
  assert_string_equal(chal, "");
  tern__sasl_session_free(ss);

  /* "=" is an empty initial response: still asked for the message */
  ss = NULL;
  assert_int_equal(step(sasl, &ss, "PLAIN", "=", &chal), TERN__SASL_CONTINUE);
  assert_string_equal(chal, "");
  tern__sasl_session_free(ss);
  tern__sasl_free(sasl);
}

static void test_plain_wrong_password(void **state) {
  (void)state;
  struct tern__sasl *sasl = make(true, false, false, "PLAIN");
  struct creds c = {"alice", "wrong", NULL};
  assert_int_equal(exchange(sasl, "PLAIN", &c, true, NULL, 0, NULL),
                   TERN_EAUTH);
  struct creds c2 = {"bob", APP.password, NULL};
  assert_int_equal(exchange(sasl, "PLAIN", &c2, false, NULL, 0, NULL),
                   TERN_EAUTH);
  tern__sasl_free(sasl);
}

static void test_plain_authzid(void **state) {
  (void)state;
  struct tern__sasl *sasl = make(true, false, false, "PLAIN");
  struct creds c = {"alice", APP.password, "postmaster"};
  char user[64];
  assert_int_equal(exchange(sasl, "PLAIN", &c, true, user, sizeof user, NULL),
                   TERN__SASL_OK);
  assert_true(APP.saw_authzid);
  assert_string_equal(APP.authzid, "postmaster");
  assert_string_equal(user, "alice"); /* the authenticated identity */
  /* asking to act as oneself is the same as not asking */
  struct creds self = {"alice", APP.password, "alice"};
  assert_int_equal(exchange(sasl, "PLAIN", &self, true, NULL, 0, NULL),
                   TERN__SASL_OK);
  assert_false(APP.saw_authzid);
  /* the app may refuse the identity asked for */
  struct creds other = {"alice", APP.password, "root"};
  APP.force_rc = TERN_EAUTH;
  assert_int_equal(exchange(sasl, "PLAIN", &other, true, NULL, 0, NULL),
                   TERN_EAUTH);
  assert_string_equal(APP.authzid, "root");
  tern__sasl_free(sasl);
}

static void test_plain_temp_failure(void **state) {
  (void)state;
  struct tern__sasl *sasl = make(true, false, false, "PLAIN LOGIN");
  struct creds c = {"alice", APP.password, NULL};
  APP.force_rc = TERN_EIO;
  assert_int_equal(exchange(sasl, "PLAIN", &c, true, NULL, 0, NULL),
                   TERN_ETEMP);
  APP.force_rc = TERN_ENOMEM;
  assert_int_equal(exchange(sasl, "LOGIN", &c, false, NULL, 0, NULL),
                   TERN_ETEMP);
  APP.force_rc = TERN_EAUTH;
  assert_int_equal(exchange(sasl, "PLAIN", &c, true, NULL, 0, NULL),
                   TERN_EAUTH);
  tern__sasl_free(sasl);
}

static void test_plain_malformed(void **state) {
  (void)state;
  struct tern__sasl *sasl = make(true, false, false, "PLAIN");
  char *m = b64("no-nuls-here", 12);
  const char *chal;
  struct tern__sasl_session *ss = NULL;
  assert_int_equal(step(sasl, &ss, "PLAIN", m, &chal), TERN_EAUTH);
  assert_null(tern__sasl_user(ss));
  tern__sasl_session_free(ss);
  gsasl_free(m);
  assert_int_equal(APP.calls, 0);
  tern__sasl_free(sasl);
}

/* ---- base64 and limits --------------------------------------------------- */

static void test_bad_base64(void **state) {
  (void)state;
  struct tern__sasl *sasl = make(true, false, false, "PLAIN");
  static const char *const bad[] = {
      "*",                                   /* cancel (RFC 4954 §4) */
      "!!!!",     "AGFsaWNl!", "AGFsaWNlAA", /* no padding */
      "QQ=A",     "Q===",      "QR==",       /* non-zero pad bits */
      "QUI=QUI=", "AGFs aWNl", "AGFsaWNl\r\n",
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    const char *chal;
    struct tern__sasl_session *ss = NULL;
    assert_int_equal(step(sasl, &ss, "PLAIN", bad[i], &chal), TERN_ESYNTAX);
    tern__sasl_session_free(ss);
    /* and on a continuation line */
    ss = NULL;
    assert_int_equal(step(sasl, &ss, "PLAIN", NULL, &chal),
                     TERN__SASL_CONTINUE);
    assert_int_equal(step(sasl, &ss, NULL, bad[i], &chal), TERN_ESYNTAX);
    tern__sasl_session_free(ss);
  }
  /* "=" is only the empty *initial* response */
  const char *chal;
  struct tern__sasl_session *ss = NULL;
  assert_int_equal(step(sasl, &ss, "PLAIN", NULL, &chal), TERN__SASL_CONTINUE);
  assert_int_equal(step(sasl, &ss, NULL, "=", &chal), TERN_ESYNTAX);
  tern__sasl_session_free(ss);
  assert_int_equal(APP.calls, 0);
  tern__sasl_free(sasl);
}

static void test_too_long(void **state) {
  (void)state;
  struct tern__sasl *sasl = make(true, false, false, "PLAIN");
  size_t n = 12288 + 4;
  char *big = malloc(n + 1);
  assert_non_null(big);
  memset(big, 'A', n);
  big[n] = '\0';
  const char *chal;
  struct tern__sasl_session *ss = NULL;
  assert_int_equal(step(sasl, &ss, "PLAIN", big, &chal), TERN_ESYNTAX);
  tern__sasl_session_free(ss);
  /* exactly at the limit it is decoded (and is a bad PLAIN message) */
  big[12288] = '\0';
  ss = NULL;
  assert_int_equal(step(sasl, &ss, "PLAIN", big, &chal), TERN_EAUTH);
  tern__sasl_session_free(ss);
  free(big);
  tern__sasl_free(sasl);
}

static void test_step_cap(void **state) {
  (void)state;
  /* PLAIN keeps asking while the client sends empty lines: bounded. */
  struct tern__sasl *sasl = make(true, false, false, "PLAIN");
  const char *chal;
  struct tern__sasl_session *ss = NULL;
  int rc = step(sasl, &ss, "PLAIN", NULL, &chal);
  int i = 0;
  while (rc == TERN__SASL_CONTINUE && i++ < 100)
    rc = step(sasl, &ss, NULL, "", &chal);
  assert_int_equal(rc, TERN_EAUTH);
  assert_true(i < 10);
  tern__sasl_session_free(ss);
  tern__sasl_free(sasl);
}

/* ---- LOGIN --------------------------------------------------------------- */

static void test_login_two_steps(void **state) {
  (void)state;
  struct tern__sasl *sasl = make(true, false, false, "LOGIN");
  const char *chal;
  char buf[64];
  struct tern__sasl_session *ss = NULL;
  assert_int_equal(step(sasl, &ss, "LOGIN", NULL, &chal), TERN__SASL_CONTINUE);
  unb64(chal, buf, sizeof buf);
  assert_string_equal(buf, "User Name");
  char *u = b64("alice", 5);
  assert_int_equal(step(sasl, &ss, NULL, u, &chal), TERN__SASL_CONTINUE);
  unb64(chal, buf, sizeof buf);
  assert_string_equal(buf, "Password");
  char *p = b64(APP.password, strlen(APP.password));
  assert_int_equal(step(sasl, &ss, NULL, p, &chal), TERN__SASL_OK);
  assert_string_equal(tern__sasl_user(ss), "alice");
  tern__sasl_session_free(ss);

  /* the user name as an initial response skips the first challenge */
  ss = NULL;
  assert_int_equal(step(sasl, &ss, "LOGIN", u, &chal), TERN__SASL_CONTINUE);
  unb64(chal, buf, sizeof buf);
  assert_string_equal(buf, "Password");
  assert_int_equal(step(sasl, &ss, NULL, p, &chal), TERN__SASL_OK);
  assert_string_equal(tern__sasl_user(ss), "alice");
  tern__sasl_session_free(ss);
  gsasl_free(u);
  gsasl_free(p);

  /* and with GNU SASL's client */
  struct creds c = {"alice", APP.password, NULL};
  int n;
  assert_int_equal(exchange(sasl, "LOGIN", &c, false, buf, sizeof buf, &n),
                   TERN__SASL_OK);
  assert_int_equal(n, 3);
  struct creds bad = {"alice", "nope", NULL};
  assert_int_equal(exchange(sasl, "LOGIN", &bad, false, NULL, 0, NULL),
                   TERN_EAUTH);
  tern__sasl_free(sasl);
}

/* ---- CRAM-MD5 ------------------------------------------------------------ */

static void test_cram_md5(void **state) {
  (void)state;
  struct tern__sasl *sasl = make(false, true, false, "CRAM-MD5");
  struct creds c = {"alice", APP.password, NULL};
  char user[64];
  int n;
  assert_int_equal(exchange(sasl, "CRAM-MD5", &c, false, user, sizeof user, &n),
                   TERN__SASL_OK);
  assert_string_equal(user, "alice");
  assert_int_equal(n, 2);
  assert_string_equal(APP.seen_user, "alice");
  assert_ptr_equal(APP.seen_s, SESS);

  struct creds bad = {"alice", "wrong", NULL};
  assert_int_equal(exchange(sasl, "CRAM-MD5", &bad, false, NULL, 0, NULL),
                   TERN_EAUTH);
  struct creds nouser = {"mallory", APP.password, NULL};
  assert_int_equal(exchange(sasl, "CRAM-MD5", &nouser, false, NULL, 0, NULL),
                   TERN_EAUTH);

  /* an initial response is not part of CRAM-MD5 */
  const char *chal;
  struct tern__sasl_session *ss = NULL;
  assert_int_equal(step(sasl, &ss, "CRAM-MD5", "YWxpY2U=", &chal), TERN_EAUTH);
  tern__sasl_session_free(ss);
  tern__sasl_free(sasl);
}

static void test_cram_md5_temp_failure(void **state) {
  (void)state;
  struct tern__sasl *sasl = make(false, true, false, "CRAM-MD5 SCRAM-SHA-256");
  struct creds c = {"alice", APP.password, NULL};
  APP.force_rc = TERN_EIO;
  assert_int_equal(exchange(sasl, "CRAM-MD5", &c, false, NULL, 0, NULL),
                   TERN_ETEMP);
  assert_int_equal(exchange(sasl, "SCRAM-SHA-256", &c, true, NULL, 0, NULL),
                   TERN_ETEMP);
  APP.force_rc = 0;
  /* a buffer the app did not terminate is its bug, not the user's */
  APP.password_no_nul = true;
  assert_int_equal(exchange(sasl, "CRAM-MD5", &c, false, NULL, 0, NULL),
                   TERN_ETEMP);
  tern__sasl_free(sasl);
}

/* ---- SCRAM --------------------------------------------------------------- */

static void test_scram_sha256(void **state) {
  (void)state;
  struct tern__sasl *sasl = make(false, true, false, "SCRAM-SHA-256");
  struct creds c = {"alice", APP.password, NULL};
  char user[64];
  int n;
  assert_int_equal(
      exchange(sasl, "SCRAM-SHA-256", &c, true, user, sizeof user, &n),
      TERN__SASL_OK);
  assert_string_equal(user, "alice");
  /* client-first, client-final, then the empty answer to server-final */
  assert_int_equal(n, 3);

  /* without an initial response: an empty challenge first */
  assert_int_equal(
      exchange(sasl, "SCRAM-SHA-256", &c, false, user, sizeof user, &n),
      TERN__SASL_OK);
  assert_int_equal(n, 4);

  struct creds bad = {"alice", "wrong", NULL};
  assert_int_equal(exchange(sasl, "SCRAM-SHA-256", &bad, true, NULL, 0, NULL),
                   TERN_EAUTH);
  struct creds nouser = {"mallory", APP.password, NULL};
  assert_int_equal(
      exchange(sasl, "SCRAM-SHA-256", &nouser, true, NULL, 0, NULL),
      TERN_EAUTH);
  tern__sasl_free(sasl);
}

static void test_scram_sha1(void **state) {
  (void)state;
  struct tern__sasl *sasl = make(false, true, false, "SCRAM-SHA-1");
  struct creds c = {"alice", APP.password, NULL};
  char user[64];
  assert_int_equal(
      exchange(sasl, "SCRAM-SHA-1", &c, true, user, sizeof user, NULL),
      TERN__SASL_OK);
  assert_string_equal(user, "alice");
  tern__sasl_free(sasl);
}

static void test_scram_authzid(void **state) {
  (void)state;
  struct tern__sasl *sasl = make(false, true, false, "SCRAM-SHA-256");
  /* another identity: the app never agreed to it */
  struct creds other = {"alice", APP.password, "root"};
  assert_int_equal(exchange(sasl, "SCRAM-SHA-256", &other, true, NULL, 0, NULL),
                   TERN_EAUTH);
  /* the same identity is harmless */
  struct creds same = {"alice", APP.password, "alice"};
  assert_int_equal(exchange(sasl, "SCRAM-SHA-256", &same, true, NULL, 0, NULL),
                   TERN__SASL_OK);
  tern__sasl_free(sasl);
}

static void test_scram_final_must_be_empty(void **state) {
  (void)state;
  /* After server-final the client must answer with an empty line. */
  struct tern__sasl *sasl = make(false, true, false, "SCRAM-SHA-256");
  struct creds c = {"alice", APP.password, NULL};
  Gsasl *cctx;
  Gsasl_session *cs;
  assert_int_equal(gsasl_init(&cctx), GSASL_OK);
  gsasl_callback_set(cctx, client_cb);
  assert_int_equal(gsasl_client_start(cctx, "SCRAM-SHA-256", &cs), GSASL_OK);
  gsasl_session_hook_set(cs, &c);
  char *out;
  const char *chal;
  struct tern__sasl_session *ss = NULL;
  assert_int_equal(gsasl_step64(cs, "", &out), GSASL_NEEDS_MORE);
  assert_int_equal(step(sasl, &ss, "SCRAM-SHA-256", out, &chal),
                   TERN__SASL_CONTINUE);
  gsasl_free(out);
  assert_int_equal(gsasl_step64(cs, chal, &out), GSASL_NEEDS_MORE);
  assert_int_equal(step(sasl, &ss, NULL, out, &chal), TERN__SASL_CONTINUE);
  gsasl_free(out);
  char buf[256];
  unb64(chal, buf, sizeof buf);
  assert_memory_equal(buf, "v=", 2);
  assert_null(tern__sasl_user(ss)); /* not yet */
  assert_int_equal(step(sasl, &ss, NULL, "eA==", &chal), TERN_EAUTH);
  assert_null(tern__sasl_user(ss));
  tern__sasl_session_free(ss);
  gsasl_finish(cs);
  gsasl_done(cctx);
  tern__sasl_free(sasl);
}

/* ---- XOAUTH2 ------------------------------------------------------------- */

static char *xoauth2_msg(const char *user, const char *token) {
  char raw[512];
  int n = snprintf(raw, sizeof raw,
                   "user=%s\x01"
                   "auth=Bearer %s\x01\x01",
                   user, token);
  return b64(raw, (size_t)n);
}

static void test_xoauth2(void **state) {
  (void)state;
  struct tern__sasl *sasl = make(false, false, true, "XOAUTH2");
  const char *chal;
  char buf[256];

  /* good token, initial response */
  char *m = xoauth2_msg("alice", APP.token);
  struct tern__sasl_session *ss = NULL;
  assert_int_equal(step(sasl, &ss, "XOAUTH2", m, &chal), TERN__SASL_OK);
  assert_string_equal(tern__sasl_user(ss), "alice");
  assert_string_equal(APP.seen_user, "alice");
  assert_ptr_equal(APP.seen_s, SESS);
  tern__sasl_session_free(ss);

  /* without initial response: empty challenge, then the message */
  ss = NULL;
  assert_int_equal(step(sasl, &ss, "xoauth2", NULL, &chal),
                   TERN__SASL_CONTINUE);
  assert_string_equal(chal, "");
  assert_int_equal(step(sasl, &ss, NULL, m, &chal), TERN__SASL_OK);
  assert_string_equal(tern__sasl_user(ss), "alice");
  tern__sasl_session_free(ss);
  gsasl_free(m);

  /* bad token: an error challenge, the client's empty answer, 535 */
  m = xoauth2_msg("alice", "bad.token");
  ss = NULL;
  assert_int_equal(step(sasl, &ss, "XOAUTH2", m, &chal), TERN__SASL_CONTINUE);
  unb64(chal, buf, sizeof buf);
  assert_non_null(strstr(buf, "\"status\""));
  assert_null(tern__sasl_user(ss));
  assert_int_equal(step(sasl, &ss, NULL, "", &chal), TERN_EAUTH);
  assert_null(tern__sasl_user(ss));
  tern__sasl_session_free(ss);
  gsasl_free(m);

  /* right token, wrong user */
  m = xoauth2_msg("bob", APP.token);
  ss = NULL;
  assert_int_equal(step(sasl, &ss, "XOAUTH2", m, &chal), TERN__SASL_CONTINUE);
  assert_int_equal(step(sasl, &ss, NULL, "", &chal), TERN_EAUTH);
  tern__sasl_session_free(ss);
  gsasl_free(m);

  /* temporary failure */
  APP.force_rc = TERN_EIO;
  m = xoauth2_msg("alice", APP.token);
  ss = NULL;
  assert_int_equal(step(sasl, &ss, "XOAUTH2", m, &chal), TERN_ETEMP);
  tern__sasl_session_free(ss);
  gsasl_free(m);
  APP.force_rc = 0;
  tern__sasl_free(sasl);
}

static void test_xoauth2_malformed(void **state) {
  (void)state;
  struct tern__sasl *sasl = make(false, false, true, "XOAUTH2");
  static const struct {
    const char *raw;
    size_t len;
  } bad[] = {
#define R(s) {s, sizeof s - 1}
      R(""),
      R("user=alice\x01"
        "auth=Bearer tok\x01"), /* no final ^A */
      R("user=alice\x01"
        "auth=Bearer tok\x01\x01x"), /* trailing */
      R("auth=Bearer tok\x01\x01"),  /* no user */
      R("user=\x01"
        "auth=Bearer tok\x01\x01"), /* empty user */
      R("user=alice\x01\x01"),      /* no auth */
      R("user=alice\x01"
        "auth=Basic tok\x01\x01"), /* not Bearer */
      R("user=alice\x01"
        "auth=Bearer \x01\x01"), /* no token */
      R("user=alice\x01"
        "auth=Bearer to ken\x01\x01"), /* bad token */
      R("user=alice\x01"
        "auth=Bearertok\x01\x01"),
      R("user=alice\x01"
        "auth=Be\x01\x01"),
      R("user=alice\x01"
        "=x\x01"
        "auth=Bearer tok\x01\x01"),
      R("user=alice\x01"
        "junk\x01"
        "auth=Bearer tok\x01\x01"),
      R("user=al\0ice\x01"
        "auth=Bearer tok\x01\x01"), /* NUL */
#undef R
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    char *m = bad[i].len ? b64(bad[i].raw, bad[i].len) : NULL;
    const char *chal;
    struct tern__sasl_session *ss = NULL;
    const char *t = m ? m : "=";
    assert_int_equal(step(sasl, &ss, "XOAUTH2", t, &chal), TERN_EAUTH);
    assert_null(tern__sasl_user(ss));
    tern__sasl_session_free(ss);
    gsasl_free(m);
  }
  assert_int_equal(APP.calls, 0);
  tern__sasl_free(sasl);
}

/* ---- OAUTHBEARER --------------------------------------------------------- */

static void test_oauthbearer(void **state) {
  (void)state;
  struct tern__sasl *sasl = make(false, false, true, "OAUTHBEARER");
  const char *chal;
  char buf[256];
  char raw[512];

  /* RFC 7628 §4.1 shape */
  int n = snprintf(raw, sizeof raw,
                   "n,a=alice,\x01"
                   "host=server.example.com\x01"
                   "port=587\x01"
                   "auth=Bearer %s\x01\x01",
                   APP.token);
  char *m = b64(raw, (size_t)n);
  struct tern__sasl_session *ss = NULL;
  assert_int_equal(step(sasl, &ss, "OAUTHBEARER", m, &chal), TERN__SASL_OK);
  assert_string_equal(tern__sasl_user(ss), "alice");
  tern__sasl_session_free(ss);
  gsasl_free(m);

  /* escaped saslname, "y" flag, scheme in another case, no initial
   * response */
  APP.user = "a,b=c";
  n = snprintf(raw, sizeof raw,
               "y,a=a=2Cb=3Dc,\x01"
               "auth=bearer %s\x01\x01",
               APP.token);
  m = b64(raw, (size_t)n);
  ss = NULL;
  assert_int_equal(step(sasl, &ss, "OAUTHBEARER", NULL, &chal),
                   TERN__SASL_CONTINUE);
  assert_string_equal(chal, "");
  assert_int_equal(step(sasl, &ss, NULL, m, &chal), TERN__SASL_OK);
  assert_string_equal(tern__sasl_user(ss), "a,b=c");
  tern__sasl_session_free(ss);
  gsasl_free(m);
  APP.user = "alice";

  /* bad token: RFC 7628 §3.2.2 error, the client's ^A, then failure */
  n = snprintf(raw, sizeof raw,
               "n,a=alice,\x01"
               "auth=Bearer nope\x01\x01");
  m = b64(raw, (size_t)n);
  ss = NULL;
  assert_int_equal(step(sasl, &ss, "OAUTHBEARER", m, &chal),
                   TERN__SASL_CONTINUE);
  unb64(chal, buf, sizeof buf);
  assert_non_null(strstr(buf, "invalid_token"));
  assert_int_equal(step(sasl, &ss, NULL, "AQ==", &chal), TERN_EAUTH);
  assert_null(tern__sasl_user(ss));
  tern__sasl_session_free(ss);
  gsasl_free(m);

  /* temporary failure */
  APP.force_rc = TERN_ENOMEM;
  n = snprintf(raw, sizeof raw,
               "n,a=alice,\x01"
               "auth=Bearer %s\x01\x01",
               APP.token);
  m = b64(raw, (size_t)n);
  ss = NULL;
  assert_int_equal(step(sasl, &ss, "OAUTHBEARER", m, &chal), TERN_ETEMP);
  tern__sasl_session_free(ss);
  gsasl_free(m);
  APP.force_rc = 0;
  tern__sasl_free(sasl);
}

static void test_oauthbearer_malformed(void **state) {
  (void)state;
  struct tern__sasl *sasl = make(false, false, true, "OAUTHBEARER");
  static const struct {
    const char *raw;
    size_t len;
  } bad[] = {
#define R(s) {s, sizeof s - 1}
      R("\x01"), /* error ack */
      R("n,,\x01"
        "auth=Bearer tok\x01\x01"), /* no a= */
      R("p=tls-unique,a=alice,\x01"
        "auth=Bearer tok\x01\x01"),
      R("x,a=alice,\x01"
        "auth=Bearer tok\x01\x01"),
      R("n,a=alice\x01"
        "auth=Bearer tok\x01\x01"), /* no comma */
      R("n,a=al=2Xice,\x01"
        "auth=Bearer tok\x01\x01"), /* bad escape */
      R("n,a=alice=,\x01"
        "auth=Bearer tok\x01\x01"),
      R("n,a=alice,\x01"
        "auth=Bearer tok\x01"), /* no final */
      R("n,a=alice,\x01\x01"),  /* no auth */
      R("n,a=alice,x\x01"
        "auth=Bearer tok\x01\x01"),
      R("n,a=,\x01"
        "auth=Bearer tok\x01\x01"), /* empty a= */
      R("n,a=alice,"),
      R("n,"),
#undef R
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    char *m = b64(bad[i].raw, bad[i].len);
    const char *chal;
    struct tern__sasl_session *ss = NULL;
    assert_int_equal(step(sasl, &ss, "OAUTHBEARER", m, &chal), TERN_EAUTH);
    tern__sasl_session_free(ss);
    gsasl_free(m);
  }
  assert_int_equal(APP.calls, 0);
  tern__sasl_free(sasl);
}

/* ---- one provider, many sessions at once --------------------------------- */

static void test_interleaved_sessions(void **state) {
  (void)state;
  struct tern__sasl *sasl = make(true, true, true, ALL_MECHS);
  const char *c1, *c2;
  struct tern__sasl_session *a = NULL, *b = NULL;
  assert_int_equal(step(sasl, &a, "LOGIN", NULL, &c1), TERN__SASL_CONTINUE);
  assert_int_equal(step(sasl, &b, "PLAIN", NULL, &c2), TERN__SASL_CONTINUE);
  char *u = b64("alice", 5);
  assert_int_equal(step(sasl, &a, NULL, u, &c1), TERN__SASL_CONTINUE);
  char *pl = b64("\0alice\0s3cret p\xc3\xa4ss", 19);
  assert_int_equal(step(sasl, &b, NULL, pl, &c2), TERN__SASL_OK);
  char *p = b64(APP.password, strlen(APP.password));
  assert_int_equal(step(sasl, &a, NULL, p, &c1), TERN__SASL_OK);
  assert_string_equal(tern__sasl_user(a), "alice");
  assert_string_equal(tern__sasl_user(b), "alice");
  gsasl_free(u);
  gsasl_free(p);
  gsasl_free(pl);
  tern__sasl_session_free(a);
  tern__sasl_session_free(b);
  tern__sasl_free(sasl);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup(test_mechs_all, setup),
      cmocka_unit_test_setup(test_mechs_order_case_dups_unknown, setup),
      cmocka_unit_test_setup(test_mechs_filtered_by_callbacks, setup),
      cmocka_unit_test_setup(test_new_invalid, setup),
      cmocka_unit_test_setup(test_new_older_struct, setup),
      cmocka_unit_test_setup(test_plain_verify_deferred, setup),
      cmocka_unit_test_setup(test_plain_initial_ok, setup),
      cmocka_unit_test_setup(test_plain_lowercase_mech, setup),
      cmocka_unit_test_setup(test_plain_no_initial, setup),
      cmocka_unit_test_setup(test_plain_wrong_password, setup),
      cmocka_unit_test_setup(test_plain_authzid, setup),
      cmocka_unit_test_setup(test_plain_temp_failure, setup),
      cmocka_unit_test_setup(test_plain_malformed, setup),
      cmocka_unit_test_setup(test_bad_base64, setup),
      cmocka_unit_test_setup(test_too_long, setup),
      cmocka_unit_test_setup(test_step_cap, setup),
      cmocka_unit_test_setup(test_login_two_steps, setup),
      cmocka_unit_test_setup(test_cram_md5, setup),
      cmocka_unit_test_setup(test_cram_md5_temp_failure, setup),
      cmocka_unit_test_setup(test_scram_sha256, setup),
      cmocka_unit_test_setup(test_scram_sha1, setup),
      cmocka_unit_test_setup(test_scram_authzid, setup),
      cmocka_unit_test_setup(test_scram_final_must_be_empty, setup),
      cmocka_unit_test_setup(test_xoauth2, setup),
      cmocka_unit_test_setup(test_xoauth2_malformed, setup),
      cmocka_unit_test_setup(test_oauthbearer, setup),
      cmocka_unit_test_setup(test_oauthbearer_malformed, setup),
      cmocka_unit_test_setup(test_interleaved_sessions, setup),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
