/*
 * tern — AUTH (RFC 4954) through GNU SASL, for any event loop.
 *
 * The core's sessions do not decode SASL: the server session hands each
 * AUTH step to on_auth (server.h), the client session asks on_auth for
 * each response (client.h). This header is the glue between those
 * callbacks and GNU SASL, with no event loop in it: no I/O, no threads,
 * no libuv. The runtime (net.h) uses it; an application that drives the
 * sans-IO sessions from its own poll() loop uses it the same way.
 *
 * Mechanisms:
 *   PLAIN, LOGIN, CRAM-MD5, SCRAM-SHA-1, SCRAM-SHA-256   GNU SASL
 *   XOAUTH2, OAUTHBEARER (RFC 7628)                      framed by tern
 * Others GNU SASL has (DIGEST-MD5, the -PLUS variants, GSSAPI, ...) are
 * left out on purpose.
 *
 * Server side, inside the server session's on_auth callback:
 *
 *   const char *chal;
 *   int r = tern_sasl_step(sasl, &ex, s, mech, resp, len, has_resp, &chal);
 *   if (r == TERN_SASL_VERIFY) {        // PLAIN/LOGIN: a password to check
 *     tern_sasl_verify(ex);             // calls check_password (may block:
 *     r = tern_sasl_verify_done(ex);    //  run it on a thread if it hashes)
 *   }
 *   if (r == TERN_SASL_CONTINUE)        // 334 chal
 *   else if (r == TERN_SASL_OK)         // 235 2.7.0, tern_sasl_user(ex)
 *   else                                // see enum tern_sasl_result
 *   and tern_sasl_session_free(ex) once the exchange is over.
 *
 * Client side, inside the client session's on_auth_mechanism / on_auth:
 * tern_sasl_client_choose() picks the mechanism from what the server
 * offers, tern_sasl_client_new() starts it, tern_sasl_client_step()
 * answers each challenge.
 *
 * Threads: every object here is used by one thread at a time; nothing
 * is global, so objects on different threads do not interact. Secrets
 * (passwords, tokens, GNU SASL's copies of them) are wiped as soon as
 * the step that needed them is over, and on free. Nothing here logs.
 */
#ifndef TERN_SASL_H
#define TERN_SASL_H

#include <stdbool.h>
#include <stddef.h>

#include "client.h" /* TERN_CLIENT_AUTH_NO_IR */
#include "common.h"

#ifdef __cplusplus
extern "C" {
#endif

struct tern_server_session;

/* ==== server side ========================================================== */

/*
 * How the server checks credentials. PLAIN and LOGIN need
 * check_password; CRAM-MD5 and SCRAM-SHA-* need get_password (the
 * mechanism needs the clear secret); XOAUTH2 and OAUTHBEARER need
 * check_token. Return 0 to accept, TERN_EAUTH to refuse, any other
 * negative code for a temporary failure (454 4.7.0). `s` is the session
 * given to tern_sasl_step(); the strings are valid during the call.
 * check_password is called from tern_sasl_verify() (see there: it may
 * run on another thread); get_password and check_token from
 * tern_sasl_step(), so they must not block for long.
 */
struct tern_auth_callbacks {
  size_t size;
  int (*check_password)(struct tern_server_session *s, const char *authzid,
                        const char *user, const char *password, void *ud);
  /* Copy user's clear password into buf (NUL-terminated, < cap). */
  int (*get_password)(struct tern_server_session *s, const char *user,
                      char *buf, size_t cap, void *ud);
  int (*check_token)(struct tern_server_session *s, const char *user,
                     const char *token, void *ud);
};

static inline void tern_auth_callbacks_init(struct tern_auth_callbacks *a) {
  struct tern_auth_callbacks d = {0};
  d.size = sizeof d;
  *a = d;
}

/* A provider: a GNU SASL context with the callbacks. One per thread. */
struct tern_sasl;

/*
 * Create a provider. `cb` is copied (up to cb->size bytes: an older
 * caller's smaller struct is read safely); `ud` is handed to the
 * callbacks and stays the caller's. `mechs` is the wanted
 * space-separated list, any case (e.g. "PLAIN LOGIN SCRAM-SHA-256"):
 * each name is kept once, upper-cased, in the caller's order, if tern
 * knows it, GNU SASL can serve it and its callback is set; other names
 * are skipped. Returns 0, TERN_EINVAL (a NULL argument, cb->size 0, a
 * name longer than 20 characters), TERN_ENOMEM, TERN_EIO (GNU SASL
 * cannot start). On failure *out is NULL and nothing needs freeing.
 */
TERN_EXTERN int tern_sasl_new(struct tern_sasl **out,
                              const struct tern_auth_callbacks *cb, void *ud,
                              const char *mechs);

/* Free a provider. Every exchange made from it must be freed first.
 * NULL is a no-op. */
TERN_EXTERN void tern_sasl_free(struct tern_sasl *sasl);

/* The mechanisms offered, space-separated, upper case ("" if none): the
 * text for tern_server_config.auth_mechanisms. Owned by the provider. */
TERN_EXTERN const char *tern_sasl_mechanisms(const struct tern_sasl *sasl);

/* One AUTH exchange. */
struct tern_sasl_session;

/* What a step (or tern_sasl_verify_done()) says; negative codes are
 * failures, with the reply each one means. */
enum tern_sasl_result {
  TERN_SASL_VERIFY = 2,   /* PLAIN/LOGIN: the credentials are read; call
                             tern_sasl_verify(), then
                             tern_sasl_verify_done() for the result */
  TERN_SASL_CONTINUE = 1, /* reply "334 <challenge>" */
  TERN_SASL_OK = 0        /* reply "235 2.7.0"; tern_sasl_user() is set */
  /* TERN_EAUTH: 535 5.7.8. TERN_ETEMP, TERN_ENOMEM: 454 4.7.0.
   * TERN_ESYNTAX (bad base64, or "*" to cancel): 501 5.5.2.
   * TERN_ENOTSUP (mechanism not offered): 504 5.5.4. */
};

/*
 * Do one step of an exchange. *sess is NULL before the first step and
 * is created by it; free it with tern_sasl_session_free() when the
 * exchange is over (any result but CONTINUE and VERIFY). `s` is only
 * passed on to the callbacks (NULL is allowed). `mech` (any case) is
 * read on the first step only. `b64`/`len` is the client's base64 text
 * as sent: the initial response ("=" meaning empty) or a continuation
 * line; has_response is false when AUTH came without an initial
 * response. On CONTINUE *challenge is the base64 text to send after
 * "334 " (NUL-terminated, owned by the exchange, valid until its next
 * step or free). Returns an enum tern_sasl_result or a negative code as
 * listed there; also TERN_EINVAL (NULL arguments) and TERN_ESTATE (a
 * step after the exchange ended). A mechanism that is not offered
 * gives TERN_ENOTSUP and no exchange (*sess stays NULL).
 */
TERN_EXTERN int tern_sasl_step(struct tern_sasl *sasl,
                               struct tern_sasl_session **sess,
                               struct tern_server_session *s,
                               const char *mech, const char *b64, size_t len,
                               bool has_response, const char **challenge);

/* The authenticated user once the exchange returned TERN_SASL_OK, else
 * NULL. Owned by the exchange. */
TERN_EXTERN const char *
tern_sasl_user(const struct tern_sasl_session *sess);

/*
 * After a step returned TERN_SASL_VERIFY: tern_sasl_verify() calls
 * check_password with the credentials the step read and keeps the
 * answer. Checking a password hash (yescrypt, bcrypt) takes tens of
 * milliseconds, so an event loop may run this on a worker thread: it
 * touches only `sess` and the provider's read-only callbacks, and
 * nothing else may use `sess` meanwhile. Then, back on the session's
 * thread, tern_sasl_verify_done() wipes the credentials and returns
 * TERN_SASL_OK, TERN_EAUTH or TERN_ETEMP: the exchange is over. Both
 * return TERN_ESTATE when no check is waiting (verify: the check's
 * answer otherwise; a second verify for the same step is ESTATE too).
 * verify_done without verify is TERN_EAUTH: no login without a check.
 * Freeing the exchange without them wipes the credentials too.
 */
TERN_EXTERN int tern_sasl_verify(struct tern_sasl_session *sess);
TERN_EXTERN int tern_sasl_verify_done(struct tern_sasl_session *sess);

/* Free an exchange and wipe what it held. NULL is a no-op. */
TERN_EXTERN void tern_sasl_session_free(struct tern_sasl_session *sess);

/* ==== client side ========================================================== */

/* What the client authenticates with. Fill with
 * tern_sasl_client_params_init(); the strings are copied where kept. */
struct tern_sasl_client_params {
  size_t size;
  const char *user;     /* authentication identity (required) */
  const char *password; /* PLAIN, LOGIN, CRAM-MD5, SCRAM-* */
  const char *token;    /* XOAUTH2, OAUTHBEARER bearer token */
  const char *authzid;  /* authorization identity, or NULL */
  bool tls;             /* TLS is active on the connection now */
  bool insecure_ok;     /* PLAIN/LOGIN allowed without TLS */
};

static inline void
tern_sasl_client_params_init(struct tern_sasl_client_params *p) {
  struct tern_sasl_client_params d = {0};
  d.size = sizeof d;
  *p = d;
}

/* The default preference order (a token puts XOAUTH2 first). */
#define TERN_SASL_CLIENT_PREFS "SCRAM-SHA-256 CRAM-MD5 PLAIN LOGIN"

/*
 * Pick a mechanism: the first name in `prefs` (space-separated, any
 * case; NULL = TERN_SASL_CLIENT_PREFS, with "XOAUTH2 " in front when a
 * token is given) that the server offered (`offered`, space-separated,
 * as tern_client_session_auth_mechs()), that tern can do as a client,
 * for which `p` holds what it needs (a password, or a token for
 * XOAUTH2/OAUTHBEARER), and that the policy allows (PLAIN and LOGIN send
 * the password itself: only with p->tls or p->insecure_ok). Returns a
 * static upper-case name, or NULL when none fits (or an argument is
 * NULL or invalid).
 */
TERN_EXTERN const char *
tern_sasl_client_choose(const char *offered, const char *prefs,
                        const struct tern_sasl_client_params *p);

/* One client AUTH exchange. */
struct tern_sasl_client;

/*
 * Start `mech` (a name tern_sasl_client_choose() could return). The
 * params' strings are copied (and wiped on free). Returns 0, TERN_ENOTSUP
 * (unknown mechanism, or the secret it needs is missing), TERN_EINVAL,
 * TERN_ENOMEM, TERN_EIO (GNU SASL failed). On failure *out is NULL.
 */
TERN_EXTERN int tern_sasl_client_new(struct tern_sasl_client **out,
                                     const char *mech,
                                     const struct tern_sasl_client_params *p);

/*
 * One step, shaped like tern_client_callbacks.on_auth: `b64`/`len` is
 * the server's 334 text (has_challenge false for the first step, before
 * any 334). The base64 answer goes into out[0..cap) with a NUL; returns
 * its length (0 = an empty line), TERN_CLIENT_AUTH_NO_IR on the first
 * step of a server-first mechanism (CRAM-MD5), TERN_ENOSPACE (cap too
 * small), TERN_ESYNTAX (bad base64 from the server), TERN_EAUTH (GNU
 * SASL refused the exchange, e.g. a SCRAM server signature that does
 * not verify, or too many steps).
 */
TERN_EXTERN long tern_sasl_client_step(struct tern_sasl_client *c,
                                       const char *b64, size_t len,
                                       bool has_challenge, char *out,
                                       size_t cap);

/* Free an exchange and wipe its secrets. NULL is a no-op. */
TERN_EXTERN void tern_sasl_client_free(struct tern_sasl_client *c);

#ifdef __cplusplus
}
#endif
#endif /* TERN_SASL_H */
