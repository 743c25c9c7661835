/*
 * AUTH through GNU SASL for both runtimes (auth.c): the server side is
 * glued to a connection (conn.h), the client side is a small state the
 * client runtime embeds.
 */
#ifndef TERN_NET_AUTH_H
#define TERN_NET_AUTH_H

#include <stdbool.h>
#include <stddef.h>

#include "tern/server.h"

#include "sasl_internal.h"

struct tern__conn;

/* Server: offer AUTH (GNU SASL) and XCLIENT (to a trusted peer) in a new
 * session's configuration and callbacks. */
void tern__auth_setup(struct tern__conn *c, struct tern_server_config *cfg,
                      struct tern_server_callbacks *cb);
/* Server: a closing connection; a password check queued for it never
 * runs. */
void tern__auth_unqueue(struct tern__conn *c);

/* Client: the credentials (strings owned by the caller, who sets `p`
 * and `prefs` once) and the exchange in progress. */
struct tern__client_auth {
  struct tern__sasl_client_params p; /* p.tls is set per call */
  const char *prefs;                 /* preference order, or NULL */
  struct tern__sasl_client *sasl;    /* the exchange in progress */
  const char *mech;                  /* chosen (static name), or NULL */
  char offered[256];                 /* what the server offered */
};

/* on_auth_mechanism: remember what is offered, choose, end any exchange
 * in progress. Returns the mechanism or NULL. */
const char *tern__client_auth_choose(struct tern__client_auth *a,
                                     const char *offered, bool tls);
/* on_auth: one step of the chosen mechanism (see tern__sasl_client_step). */
long tern__client_auth_step(struct tern__client_auth *a, bool tls,
                            struct tern_str challenge, bool has_challenge,
                            char *out, size_t cap);
/* The exchange is over (or the client goes): free its state. */
void tern__client_auth_end(struct tern__client_auth *a);

#endif
