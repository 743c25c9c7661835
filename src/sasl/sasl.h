/*
 * The GNU SASL provider behind the server's AUTH command. No I/O: the
 * runtime hands it the client's base64 text and sends back the reply it
 * builds.
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
void tern__sasl_session_free(struct tern__sasl_session *sess);

#endif
