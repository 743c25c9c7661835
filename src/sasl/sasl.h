/*
 * The GNU SASL provider behind the server's AUTH command (gsasl.c) and
 * the client runtime's AUTH (gsasl_client.c). No I/O: the runtime hands
 * it the peer's base64 text and sends back what it builds.
 */
#ifndef TERN_SASL_H
#define TERN_SASL_H

#include <stdbool.h>
#include <stddef.h>

#include "tern/net.h"

/* One per worker thread: a Gsasl context with our callbacks. */
struct tern__sasl;

/*
 * `mechs` is the wanted space-separated list (e.g. "PLAIN LOGIN
 * CRAM-MD5 SCRAM-SHA-256 XOAUTH2 OAUTHBEARER"). Mechanisms the callbacks
 * cannot serve (PLAIN/LOGIN need check_password, CRAM-MD5/SCRAM-SHA-256
 * need get_password, XOAUTH2/OAUTHBEARER need check_token) or GNU SASL
 * does not have are left out, as are unknown names. Returns 0,
 * TERN_ENOMEM, TERN_EINVAL (NULL argument, cb->size 0, a name longer
 * than 20 characters), TERN_EIO (GNU SASL failed to start).
 */
int tern__sasl_new(struct tern__sasl **out, const struct tern_auth_callbacks *cb,
                   void *ud, const char *mechs);
void tern__sasl_free(struct tern__sasl *sasl);
/* The mechanisms actually offered, space-separated ("" if none). */
const char *tern__sasl_mechanisms(const struct tern__sasl *sasl);

/* One AUTH exchange. */
struct tern__sasl_session;

enum tern__sasl_result {
  TERN__SASL_VERIFY = 2,   /* PLAIN/LOGIN: the credentials are read; run
                              tern__sasl_verify() (off the event loop: it
                              calls check_password, which hashes), then
                              tern__sasl_verify_done() for the result */
  TERN__SASL_CONTINUE = 1, /* send "334 <challenge>" */
  TERN__SASL_OK = 0,       /* "235 2.7.0"; user is known */
  /* negative: TERN_EAUTH (535 5.7.8), TERN_ETEMP (454 4.7.0),
   * TERN_ESYNTAX (501 5.5.2: bad base64, or "*" cancel), TERN_ENOMEM */
};

/*
 * Do one step. *sess is created on the first call (step 0) and must be
 * freed with tern__sasl_session_free() when the exchange ends (any result
 * other than CONTINUE). `s` is passed to the app's callbacks. `b64` is
 * the client's base64 text (an initial response, "=" meaning empty, or a
 * continuation line); has_response false when AUTH had no initial
 * response. On CONTINUE, *challenge is a NUL-terminated base64 string
 * owned by the session (valid until the next step or free). `mech`
 * (any case) is read on the first call only; a mechanism that is not
 * offered gives TERN_ENOTSUP (504 5.5.4) and no session. Also
 * TERN_EINVAL (NULL arguments) and TERN_ESTATE (a step after OK).
 */
int tern__sasl_step(struct tern__sasl *sasl, struct tern__sasl_session **sess,
                    struct tern_server_session *s, const char *mech,
                    const char *b64, size_t len, bool has_response,
                    const char **challenge);
/* The authenticated user (after OK), else NULL. Owned by the session. */
const char *tern__sasl_user(const struct tern__sasl_session *sess);

/*
 * After a step returned TERN__SASL_VERIFY: tern__sasl_verify() calls the
 * app's check_password with the credentials the step read and keeps the
 * answer. It touches only `sess` (and the provider's read-only
 * callbacks), so the runtime runs it on a thread-pool thread while the
 * session waits; nothing else may use `sess` meanwhile. Then, back on
 * the session's thread, tern__sasl_verify_done() wipes the credentials
 * and returns TERN__SASL_OK, TERN_EAUTH or TERN_ETEMP; the exchange is
 * over. Both return TERN_ESTATE when no check is waiting. Freeing the
 * session without these wipes the credentials too.
 */
int tern__sasl_verify(struct tern__sasl_session *sess);
int tern__sasl_verify_done(struct tern__sasl_session *sess);
void tern__sasl_session_free(struct tern__sasl_session *sess);

/* ---- client side (gsasl_client.c) ---------------------------------------- */

/* What the client has to authenticate with. */
struct tern__sasl_client_params {
  const char *user;     /* authentication identity (required) */
  const char *password; /* PLAIN, LOGIN, CRAM-MD5, SCRAM-* */
  const char *token;    /* XOAUTH2, OAUTHBEARER bearer token */
  const char *authzid;  /* authorization identity, or NULL */
  bool tls;             /* TLS is active on the connection now */
  bool insecure_ok;     /* PLAIN/LOGIN allowed without TLS */
};

/* The default preference order (a token puts XOAUTH2 first). */
#define TERN__SASL_CLIENT_PREFS "SCRAM-SHA-256 CRAM-MD5 PLAIN LOGIN"

/*
 * Pick a mechanism: the first name in `prefs` (space-separated, any
 * case; NULL = the default above, with "XOAUTH2 " in front when a token
 * is given) that the server offered (`offered`, space-separated), that
 * tern can do as a client, for which the params hold what it needs
 * (a password, or a token for XOAUTH2/OAUTHBEARER), and that the policy
 * allows (PLAIN and LOGIN send the password itself: only with tls or
 * insecure_ok). Returns a static upper-case name, or NULL when none fits.
 */
const char *tern__sasl_client_choose(const char *offered, const char *prefs,
                                     const struct tern__sasl_client_params *p);

/* One client AUTH exchange. */
struct tern__sasl_client;

/* Start `mech` (a name tern__sasl_client_choose() could return). The
 * params' strings are copied (and wiped on free). Returns 0,
 * TERN_ENOTSUP (unknown mechanism or missing secret), TERN_EINVAL,
 * TERN_ENOMEM, TERN_EIO (GNU SASL failed). */
int tern__sasl_client_new(struct tern__sasl_client **out, const char *mech,
                          const struct tern__sasl_client_params *p);

/*
 * One step, shaped like tern_client_callbacks.on_auth: `b64` is the
 * server's 334 text (has_challenge false for the initial response). The
 * base64 answer goes into out[0..cap) with a NUL; returns its length
 * (0 = empty line), TERN_CLIENT_AUTH_NO_IR on the first step of a
 * server-first mechanism (CRAM-MD5), TERN_ENOSPACE (cap too small),
 * TERN_ESYNTAX (bad base64 from the server), TERN_EAUTH (GNU SASL
 * refused the exchange, e.g. a SCRAM server signature that does not
 * verify, or too many steps).
 */
long tern__sasl_client_step(struct tern__sasl_client *c, const char *b64,
                            size_t len, bool has_challenge, char *out,
                            size_t cap);
void tern__sasl_client_free(struct tern__sasl_client *c);

#endif
