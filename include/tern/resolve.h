/*
 * tern/resolve.h — DNS for mail to the world, on a libuv loop: MX
 * resolution (RFC 5321 §5.1, null MX RFC 7505), TLSA records for DANE
 * (RFC 7672) and MTA-STS policies (RFC 8461), with DNSSEC validation.
 *
 * Built on libunbound (docs/decisions/0019-resolver.md): its queries run
 * asynchronously, their file descriptor is polled by the loop, and it
 * validates DNSSEC itself from a trust anchor, which DANE needs (a
 * resolver that cannot validate cannot tell a forged TLSA record from a
 * real one). MTA-STS policies are fetched over HTTPS with libcurl's
 * multi interface on the loop (every fetch at once, each with its own
 * timeout) and cached per their max_age, in memory and optionally in a
 * file (mta_sts_cache_file).
 *
 *   struct tern_resolver_options o;
 *   tern_resolver_options_init(&o);
 *   o.forward = "127.0.0.53:53";          // default: /etc/resolv.conf
 *   o.trust_anchor_file = "/etc/tern/root.key";
 *   tern_resolver_new(&res, loop, &o);
 *   tern_resolve_mx(res, "example.org", on_mx, ctx, NULL);
 *
 * One thread: a resolver belongs to the loop it was made on; every call
 * and every callback is on that loop's thread. Callbacks are never called
 * from inside the call that started the query.
 */
#ifndef TERN_RESOLVE_H
#define TERN_RESOLVE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include <uv.h>

#include <tern/common.h>

#ifdef __cplusplus
extern "C" {
#endif

struct tern_resolver;
struct tern_dns_query;

struct tern_resolver_options {
  size_t size;
  /* Where queries go. NULL: the nameservers of `resolv_conf`. Else one
   * or more "ADDRESS[:PORT]" separated by spaces or commas ("[::1]:53"
   * for IPv6 with a port); these are asked to recurse (forwarders). */
  const char *forward;
  const char *resolv_conf;       /* NULL: "/etc/resolv.conf" */
  const char *hosts_file;        /* NULL: none (MX hosts come from DNS) */
  /* DNSSEC trust anchors: a file of DS or DNSKEY records in zone-file
   * format (unbound's root.key, or a test zone's keys). NULL: the first
   * of /usr/share/dns/root.key and /var/lib/unbound/root.key that
   * exists; none: nothing validates (every answer is insecure, so DANE
   * never applies; never bogus). */
  const char *trust_anchor_file;
  bool dnssec;                   /* validate (default true) */
  bool ipv4, ipv6;               /* address families looked up and used
                                    (default both) */
  unsigned timeout_ms;           /* one DNS question, all retries; default
                                    30 s (an MX lookup asks twice in a
                                    row: MX, then the hosts' addresses) */
  /* MTA-STS (RFC 8461) */
  bool mta_sts;                  /* look policies up (default true) */
  const char *mta_sts_ca_file;   /* PEM bundle for the policy host's
                                    certificate; NULL: the system's */
  unsigned mta_sts_timeout_ms;   /* the HTTPS fetch; default 10 s */
  unsigned mta_sts_port;         /* the policy host's port; default 443 */
  /* A file keeping the MTA-STS policy cache across restarts (RFC 8461
   * §5.1), e.g. QUEUE_DIR/mta-sts.cache. NULL: memory only. Read at
   * tern_resolver_new (missing: empty; lines that do not parse, and
   * expired policies, are skipped without a word: the cache only ever
   * adds protection); rewritten whole after each fetched policy, off the
   * loop (temporary file, fsync, rename), so a crash leaves the old or
   * the new file. A failed write shows in tern_resolver_last_error(r). */
  const char *mta_sts_cache_file;
};

static inline void
tern_resolver_options_init(struct tern_resolver_options *o) {
  struct tern_resolver_options d = {0};
  d.size = sizeof d;
  d.dnssec = true;
  d.ipv4 = true;
  d.ipv6 = true;
  d.mta_sts = true;
  *o = d;
}

/*
 * Make a resolver on `loop`. Options and strings are copied.
 * Returns 0; TERN_EINVAL (a bad forward address, or an options struct
 * from a newer tern with unknown fields set); TERN_EIO (resolv_conf,
 * hosts_file or trust_anchor_file unreadable or malformed:
 * tern_resolver_last_error() names the file); TERN_ENOMEM.
 */
TERN_EXTERN int tern_resolver_new(struct tern_resolver **out, uv_loop_t *loop,
                                  const struct tern_resolver_options *o);

/* Free it: queries still running are cancelled (their callbacks are not
 * called). May be called from a callback. */
TERN_EXTERN void tern_resolver_free(struct tern_resolver *r);

/* The last failure of new, in words (names the file). Never NULL.
 * A failed new leaves *out NULL: pass NULL to read why (kept per
 * thread, until the next failed new on that thread). */
TERN_EXTERN const char *tern_resolver_last_error(const struct tern_resolver *r);

/* Cancel one query: its callback is not called. `q` is invalid after.
 * Inside the query's own callback it does nothing. */
TERN_EXTERN void tern_dns_cancel(struct tern_dns_query *q);

/* What a lookup found. */
enum tern_dns_status {
  TERN_DNS_OK = 0,      /* answers (possibly several) */
  TERN_DNS_NODATA,      /* the name exists, no record of that type */
  TERN_DNS_NXDOMAIN,    /* no such name: permanent */
  TERN_DNS_NULLMX,      /* MX only: "0 ." (RFC 7505): takes no mail */
  TERN_DNS_TEMPFAIL,    /* SERVFAIL, timeout, no server answered */
  TERN_DNS_BOGUS        /* DNSSEC validation failed: treated as a
                           temporary failure, never as "no record" */
};

/* ---- MX ----------------------------------------------------------------- */

struct tern_mx_host {
  const char *name;      /* "mx1.example.org" (no trailing dot) */
  unsigned pref;         /* MX preference; 0 for an implicit MX */
  /* Its addresses in the order to try them (IPv6 first, then IPv4, each
   * as the answer gave them); none when the lookup failed (status). */
  const struct sockaddr_storage *addrs;
  size_t naddrs;
  int status;            /* enum tern_dns_status of the address lookup:
                            OK with addresses; else why there are none
                            (the worse family: BOGUS, TEMPFAIL,
                            NXDOMAIN, NODATA) */
  /* DNSSEC: every family that answered (addresses, or a NODATA or
   * NXDOMAIN denial) validated, and at least one answered. A family
   * whose lookup failed does not count here (so a forged or dropped
   * AAAA cannot make a host with a validated A look insecure): see
   * `failed`. RFC 7672 §2.1.1, §2.2. */
  bool secure;
  /* TERN_DNS_OK, or the status of a family whose lookup failed
   * (TERN_DNS_BOGUS before TERN_DNS_TEMPFAIL), even when the other
   * family gave addresses. With a secure MX answer such a host must not
   * be used for DANE (RFC 7672 §2.1.1): the failure may be an attack. */
  int failed;
  /* The addresses were reached through a CNAME chain: its last name
   * (lower case, no trailing dot), the "fully CNAME-expanded" name of
   * RFC 7672 §2.2.2, when the families that gave addresses agree on it;
   * NULL when there was no CNAME. Whether the chain validated is
   * `secure` (the whole answer, every CNAME in it included). */
  const char *canon;
};

struct tern_mx_result {
  int status;            /* enum tern_dns_status: OK (hosts below, at
                            least one with an address... or with a
                            failure status to report), NXDOMAIN,
                            NULLMX, TEMPFAIL, BOGUS; NODATA never (no MX
                            gives the implicit MX) */
  const char *why;       /* in words, for logs and DSNs; "" when OK */
  bool secure;           /* the MX answer validated (for an implicit MX:
                            the denial of MX and the address answers).
                            DANE needs it. */
  bool implicit;         /* no MX records: the domain itself (§5.1) */
  const struct tern_mx_host *hosts; /* by preference, random among
                            equal preferences; at most 10 */
  size_t nhosts;
};

/* The result and its strings are the resolver's until the callback
 * returns: copy what you keep. */
typedef void (*tern_mx_cb)(const struct tern_mx_result *r, void *ud);

/*
 * Look up where mail for `domain` goes: its MX records, then each
 * host's A and AAAA (in parallel). No MX (NODATA) means the domain is
 * its own mail host (implicit MX, RFC 5321 §5.1); "0 ." alone is a
 * null MX. A domain with an IP literal is the caller's business
 * (refused: TERN_EINVAL). With `q` non-NULL, *q is the query (valid
 * until its callback or tern_dns_cancel).
 * Returns 0 (cb follows, once), TERN_EINVAL (not a domain), TERN_ENOMEM.
 */
TERN_EXTERN int tern_resolve_mx(struct tern_resolver *r, const char *domain,
                                tern_mx_cb cb, void *ud,
                                struct tern_dns_query **q);

/* ---- TLSA (DANE) ----------------------------------------------------------- */

struct tern_tlsa {
  uint8_t usage;         /* 2 DANE-TA, 3 DANE-EE (0 and 1 are not used
                            for SMTP, RFC 7672 §3.1.3) */
  uint8_t selector;      /* 0 full certificate, 1 SubjectPublicKeyInfo */
  uint8_t mtype;         /* 0 full, 1 SHA-256, 2 SHA-512 */
  const uint8_t *data;
  size_t len;
};

struct tern_tlsa_result {
  int status;            /* enum tern_dns_status (never NULLMX) */
  const char *why;
  bool secure;           /* the answer (or the denial) validated */
  const struct tern_tlsa *recs; /* every record, usable or not */
  size_t n;
};

typedef void (*tern_tlsa_cb)(const struct tern_tlsa_result *r, void *ud);

/*
 * The TLSA records of `_PORT._tcp.HOST`. DANE applies only when the MX
 * lookup and the host's address lookup were secure (RFC 7672 §2.2); the
 * caller checks that before asking. Returns 0, TERN_EINVAL, TERN_ENOMEM.
 */
TERN_EXTERN int tern_resolve_tlsa(struct tern_resolver *r, const char *host,
                                  unsigned port, tern_tlsa_cb cb, void *ud,
                                  struct tern_dns_query **q);

/* ---- MTA-STS ------------------------------------------------------------------ */

enum tern_mtasts_mode {
  TERN_MTASTS_NONE = 0,  /* no policy (or mode "none") */
  TERN_MTASTS_TESTING,   /* deliver anyway; report failures */
  TERN_MTASTS_ENFORCE    /* verified TLS to a matching MX, or defer */
};

/* A policy (RFC 8461 §3.2). */
struct tern_mtasts_policy {
  enum tern_mtasts_mode mode;
  const char *const *mx;  /* patterns: "mx1.example.org", "*.example.net" */
  size_t nmx;
  uint32_t max_age;       /* seconds */
  const char *id;         /* the TXT record's id when it was fetched */
};

/* `p` is NULL when the domain has no usable policy (no _mta-sts record,
 * or none could be fetched and none is cached): deliver as without one.
 * `why` says what happened ("cached", "fetched", "no _mta-sts record",
 * "fetch failed: ..."), for logs. */
typedef void (*tern_mtasts_cb)(const struct tern_mtasts_policy *p,
                               const char *why, void *ud);

/*
 * The MTA-STS policy of `domain`: from the cache while its max_age
 * runs and the _mta-sts TXT id is unchanged, else fetched from
 * https://mta-sts.DOMAIN/.well-known/mta-sts.txt (certificate verified,
 * no redirects, 64 KiB at most, text/plain). At most one fetch per
 * domain at a time: concurrent asks wait for the same one; fetches for
 * different domains run side by side (up to 64 at once; one more waits
 * for a slot at most its own timeout, then fails "fetch failed: busy"). A failed fetch keeps a cached
 * policy in force (RFC 8461 §5.1). The cache holds up to 10,000
 * domains (and 32 MiB of policies); when full, expired entries go
 * first, then testing/none policies, enforce policies last, the least
 * recently used first within each. With mta_sts off, cb gets NULL.
 * Returns 0, TERN_EINVAL, TERN_ENOMEM.
 */
TERN_EXTERN int tern_resolve_mtasts(struct tern_resolver *r,
                                    const char *domain, tern_mtasts_cb cb,
                                    void *ud, struct tern_dns_query **q);

/* How many HTTPS policy fetches this resolver has started (for tests and
 * stats: a cached policy costs none). */
TERN_EXTERN uint64_t tern_resolver_mtasts_fetches(const struct tern_resolver *r);

#ifdef __cplusplus
}
#endif
#endif /* TERN_RESOLVE_H */
