/*
 * The GNU SASL provider (gsasl.c, gsasl_client.c) is public API:
 * <tern/sasl.h> documents it. New code calls the tern_sasl_* functions
 * from there.
 *
 * The tern__sasl_* names below are what src/net called before the
 * header was public; they stay as aliases (no code of their own) until
 * src/net is moved to the public names, so the two can change apart.
 */
#ifndef TERN_SASL_INTERNAL_H
#define TERN_SASL_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>

#include "tern/sasl.h"

/* server side */
#define tern__sasl tern_sasl
#define tern__sasl_session tern_sasl_session
#define tern__sasl_new tern_sasl_new
#define tern__sasl_free tern_sasl_free
#define tern__sasl_mechanisms tern_sasl_mechanisms
#define tern__sasl_step tern_sasl_step
#define tern__sasl_user tern_sasl_user
#define tern__sasl_verify tern_sasl_verify
#define tern__sasl_verify_done tern_sasl_verify_done
#define tern__sasl_session_free tern_sasl_session_free
#define TERN__SASL_VERIFY TERN_SASL_VERIFY
#define TERN__SASL_CONTINUE TERN_SASL_CONTINUE
#define TERN__SASL_OK TERN_SASL_OK

/* client side */
#define tern__sasl_client tern_sasl_client
#define tern__sasl_client_step tern_sasl_client_step
#define tern__sasl_client_free tern_sasl_client_free
#define TERN__SASL_CLIENT_PREFS TERN_SASL_CLIENT_PREFS

/* The client params without the size tag, as src/net fills them with
 * designated initializers; the two calls that take them convert. */
struct tern__sasl_client_params {
  const char *user;
  const char *password;
  const char *token;
  const char *authzid;
  bool tls;
  bool insecure_ok;
};

static inline struct tern_sasl_client_params
tern__sasl_client_params_public(const struct tern__sasl_client_params *p) {
  struct tern_sasl_client_params q;
  tern_sasl_client_params_init(&q);
  q.user = p->user;
  q.password = p->password;
  q.token = p->token;
  q.authzid = p->authzid;
  q.tls = p->tls;
  q.insecure_ok = p->insecure_ok;
  return q;
}

static inline const char *
tern__sasl_client_choose(const char *offered, const char *prefs,
                         const struct tern__sasl_client_params *p) {
  struct tern_sasl_client_params q;
  if (!p)
    return NULL;
  q = tern__sasl_client_params_public(p);
  return tern_sasl_client_choose(offered, prefs, &q);
}

static inline int
tern__sasl_client_new(struct tern__sasl_client **out, const char *mech,
                      const struct tern__sasl_client_params *p) {
  struct tern_sasl_client_params q;
  if (!p)
    return TERN_EINVAL;
  q = tern__sasl_client_params_public(p);
  return tern_sasl_client_new(out, mech, &q);
}

#endif
