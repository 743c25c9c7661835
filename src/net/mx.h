/*
 * Where mail for a domain goes and how each host's connection must be
 * protected: the plan behind a client's "mx:DOMAIN" URL (mx.c).
 *
 * The plan resolves the domain's MX hosts (tern/resolve.h), drops those
 * it must not use (an address literal as MX name, this server and worse
 * MX hosts), its MTA-STS policy (TLS policy AUTO only) and, host by
 * host, its TLSA records (when the MX and address answers were
 * DNSSEC-validated; at the CNAME-expanded name first after a
 * validated chain; a host whose address lookup failed while its other
 * family validated, under a validated MX, is skipped instead), then hands
 * the client one address at a time with the TLS it must use there. The
 * client reports how each attempt failed; when no address is left, the
 * plan says what to tell the sender (tern__mx_failure()).
 *
 * RFC 5321 §5.1 (order, implicit MX), RFC 7505 (null MX), RFC 7672
 * (DANE for SMTP), RFC 8461 (MTA-STS), RFC 8689 §4.2.1 (REQUIRETLS).
 */
#ifndef TERN_NET_MX_H
#define TERN_NET_MX_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/socket.h>

#include <tern/net.h>
#include <tern/resolve.h>

/* What an attempt must do about TLS. */
enum tern__mx_tls {
  TERN__MXT_NONE,    /* never STARTTLS */
  TERN__MXT_MAY,     /* STARTTLS when offered, not verified */
  TERN__MXT_ENCRYPT, /* STARTTLS required, not verified */
  TERN__MXT_VERIFY,  /* STARTTLS required, PKIX with name = the MX host */
  TERN__MXT_DANE,    /* STARTTLS required, verified by the TLSA records */
  TERN__MXT_STS      /* MTA-STS: PKIX with name = the MX host; required
                        (enforce) or only checked (testing) */
};

/* One address to try. The plan's until the next tern__mx_next(). */
struct tern__mx_target {
  const char *host;              /* the MX host's name */
  struct sockaddr_storage addr;  /* port set to the plan's */
  enum tern__mx_tls tls;
  bool sts_testing;              /* MXT_STS in testing mode: failures
                                    are recorded, not fatal */
  bool clear;                    /* MAY (or testing) retried in the
                                    clear after a failed handshake */
  bool need_requiretls;          /* the server must offer REQUIRETLS */
  const char *policy;            /* for tern_client_conn_info */
  const char *policy_failure;    /* a failure the policy let pass before
                                    the connection (testing: the host is
                                    not in the policy's mx list), or NULL */
  const struct tern_tlsa *tlsa;  /* MXT_DANE: the usable records */
  size_t ntlsa;
  unsigned tried;                /* addresses tried, this one included */
  /* MXT_DANE: a second name a DANE-TA certificate may carry, the MX
   * host's CNAME-expanded name after a validated chain (RFC 7672
   * §3.2.3), or NULL (only `host`) */
  const char *tlsa_base;
};

/* Why an attempt failed (picks the final reply). */
enum tern__mx_fail {
  TERN__MXF_CONNECT,  /* no connection, or it ended early */
  TERN__MXF_GREETING, /* greeting or EHLO refused */
  TERN__MXF_TLS,      /* TLS required and not available, or not verified */
  TERN__MXF_REQTLS,   /* REQUIRETLS cannot be met at this host */
  TERN__MXF_DNS       /* a lookup for this host failed */
};

struct tern__mx;

/* A plan for `domain` (lower case, no trailing dot; copied). `cb` is
 * called (never from inside a tern__mx_* call) when tern__mx_next()
 * has something new to say after it returned 0. Returns 0,
 * TERN_ENOMEM. */
int tern__mx_new(struct tern__mx **out, struct tern_resolver *r,
                 const char *domain, enum tern_tls_policy policy,
                 bool requiretls, unsigned port, void (*cb)(void *arg),
                 void *arg);
/* This server's own addresses (tern_client_options.self_addrs): MX
 * hosts with one of them, and every worse one, are not used; none left:
 * 554 5.4.6. `addrs` is the caller's and must outlive the plan. Before
 * tern__mx_start(). */
void tern__mx_set_self(struct tern__mx *mx,
                       const struct sockaddr_storage *addrs, size_t n);
/* Start the lookups. Returns 0, or a negative code (the lookups could
 * not start: the failure reply is set). */
int tern__mx_start(struct tern__mx *mx);
/* The next address: 1 and *t set; 0 while lookups run (cb follows);
 * -1 when none is left (tern__mx_failure() tells). */
int tern__mx_next(struct tern__mx *mx, const struct tern__mx_target **t);
/* The current attempt failed (`text` in words, copied). */
void tern__mx_failed(struct tern__mx *mx, enum tern__mx_fail why,
                     const char *text);
/* The handshake failed where the policy lets mail go in the clear (MAY,
 * MTA-STS testing): the next tern__mx_next() gives the same address
 * once more with `clear` set. False when that was the clear retry
 * already (then it counts as a failure). */
bool tern__mx_retry_clear(struct tern__mx *mx, const char *text);
/* What to tell the sender once tern__mx_next() returned -1. */
void tern__mx_failure(const struct tern__mx *mx, struct tern_reply *out);
/* Cancel the lookups still running (no callback after). */
void tern__mx_cancel(struct tern__mx *mx);
void tern__mx_free(struct tern__mx *mx);

/* The policy's verdict on a finished handshake with target `t`: 0 go
 * on (*verified: "dane-ee", "dane-ta", "mta-sts", "ca", or NULL when the
 * policy verifies nothing); -1 refuse (why[0..cap) says why); 1 go on
 * but report why (MTA-STS testing, RFC 8461 §5). */
struct tern__tls;
int tern__mx_tls_verdict(const struct tern__mx_target *t,
                         const struct tern__tls *tls, const char **verified,
                         char *why, size_t cap);

/* The domain of an "mx:" URL into out[0..cap), lower case, without a
 * trailing dot: LDH labels (and "_") of 1..63 octets, 253 in all, not
 * an address literal. 0 or TERN_EINVAL. */
int tern__mx_domain(const char *d, char *out, size_t cap);

/* The enhanced code (RFC 3463) and *code for a connect to one host that
 * failed with `err` (a TERN_E* code): 4.4.3 resolve, 4.4.1 no answer,
 * 4.4.2 (421) the session broke, 4.7.5 TLS, 4.7.0 AUTH, 4.3.0 else. */
const char *tern__mx_error_reply(int err, bool in_session, int *code);

#endif
