/*
 * The resolver's internal state (tern/resolve.h), shared by resolve.c
 * (libunbound on the loop, MX, TLSA) and mtasts_fetch.c (MTA-STS: the
 * _mta-sts TXT lookup, the HTTPS fetch with libcurl's multi interface on
 * the loop, the policy cache).
 *
 * Every DNS question is a `struct tern__sub`: one ub_resolve_async()
 * query with a deadline. Its handler gets the answer, a libunbound error,
 * or TERN__SUB_TIMEOUT when the deadline passed first (then the
 * libunbound query is cancelled). One uv timer per resolver watches the
 * earliest deadline. A sub that could not even start fails through the
 * same timer at once, so no handler, and no user callback, ever runs
 * inside the call that started it.
 *
 * Freeing from a callback: every entry point from the loop (poll, timer,
 * work done) raises r->depth; tern_resolver_free() with depth > 0 cancels
 * every query at once (no callback after free) and leaves the teardown
 * of the libunbound context and the handles to the outermost entry point.
 */
#ifndef TERN_NET_RESOLVE_INTERNAL_H
#define TERN_NET_RESOLVE_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include <unbound.h>
#include <uv.h>

#include "tern/mtasts.h"
#include "tern/resolve.h"

#define TERN__DNS_NAME_MAX 254 /* 253 octets and the NUL */
#define TERN__MX_HOSTS_MAX 10
#define TERN__ADDRS_PER_FAMILY 16 /* addresses kept per host and family */
#define TERN__WHY_MAX 256
#define TERN__STS_CACHE_MAX 10000 /* domains with a cached policy */
/* and the memory their policies take (entries, mx patterns) */
#define TERN__STS_CACHE_BYTES (32u * 1024u * 1024u)
#define TERN__STS_ID_MAX 33 /* 32 alphanumerics and the NUL */
/* HTTPS fetches in flight at once, per resolver. They run on the loop
 * (curl's multi interface), each bounded by its own timeout, so a slow
 * policy host delays nobody else; one more than this waits for a slot,
 * at most its own timeout, then fails "busy" (a cached policy stays). */
#define TERN__STS_FETCH_MAX 64

/* Handler errors besides libunbound's own (which are negative, small). */
#define TERN__SUB_TIMEOUT (-1000) /* the deadline passed */
#define TERN__SUB_NOW (-1001)     /* no query: a deferred step */

struct tern__sub;
typedef void (*tern__sub_fn)(struct tern__sub *s, int err,
                             struct ub_result *res);

struct tern__sub {
  struct tern_resolver *r;
  struct tern__sub *prev, *next; /* r->subs */
  int async_id;
  bool running;      /* async_id names a libunbound query */
  int fail;          /* could not start: this error, at once */
  uint64_t deadline; /* uv_now() ms */
  tern__sub_fn fn;
  void *owner; /* a query or an MTA-STS fetch */
  int idx;     /* the owner's use: host index */
  int rrtype;
};

struct tern__sts_entry;
struct tern__sts_fetch;
struct tern__sts_multi;
struct tern__sts_store;

enum { TERN__Q_MX = 1, TERN__Q_TLSA, TERN__Q_MTASTS };

struct tern__mx_state {
  char name[TERN__DNS_NAME_MAX];
  unsigned pref;
  uint8_t a4[TERN__ADDRS_PER_FAMILY][4];
  uint8_t a6[TERN__ADDRS_PER_FAMILY][16];
  size_t n4, n6;
  int st4, st6; /* enum tern_dns_status per family; -1 not asked */
  bool sec4, sec6;
  /* the name the addresses were found at, per family (libunbound's
   * canonname, normalised): differs from `name` after a CNAME chain;
   * "" when that family gave no addresses */
  char canon4[TERN__DNS_NAME_MAX], canon6[TERN__DNS_NAME_MAX];
};

struct tern_dns_query {
  struct tern_resolver *r;
  struct tern_dns_query *prev, *next; /* r->queries */
  int kind;
  bool in_cb;
  void *ud;
  tern_mx_cb mx_cb;
  tern_tlsa_cb tlsa_cb;
  tern_mtasts_cb sts_cb;
  char name[TERN__DNS_NAME_MAX];
  unsigned port;
  char why[TERN__WHY_MAX];
  /* MX */
  struct tern__mx_state *hosts;
  size_t nhosts;
  int pending;
  bool mx_secure, implicit;
  /* MTA-STS: waiting for a fetch */
  struct tern__sts_fetch *fetch;
  struct tern_dns_query *wprev, *wnext; /* the fetch's waiters */
};

struct tern_resolver {
  uv_loop_t *loop;
  struct ub_ctx *ctx;
  uv_poll_t poll;
  uv_timer_t timer;
  int closing;    /* handles still to close */
  unsigned depth; /* entry points on the stack */
  bool dying;     /* freed from inside a callback */
  bool torn;      /* teardown done */
  struct tern__sub *subs;
  struct tern_dns_query *queries;
  uint64_t rng;
  /* options (strings copied) */
  bool ipv4, ipv6, mta_sts;
  unsigned timeout_ms, sts_timeout_ms, sts_port;
  char *sts_ca_file;
  /* MTA-STS */
  struct tern__sts_entry *sts; /* the cache */
  size_t nsts;
  size_t sts_bytes;                  /* memory the cache takes */
  char *sts_cache_file;              /* NULL: memory only */
  struct tern__sts_store *sts_store; /* the file being written */
  bool sts_dirty;                    /* changed since that write began */
  uint64_t fetches;
  struct tern__sts_multi *stsm; /* curl multi on the loop; NULL until the
                                   first fetch */
  char err[TERN__WHY_MAX];
};

/* resolve.c */
struct tern__sub *tern__sub_start(struct tern_resolver *r, const char *name,
                                  int rrtype, tern__sub_fn fn, void *owner,
                                  int idx);
void tern__sub_cancel_owner(struct tern_resolver *r, const void *owner);
/* Status of an answer (enum tern_dns_status); `why` gets words for a
 * failure. */
int tern__sub_status(int err, const struct ub_result *res, char *why,
                     size_t cap);
/* Lower-cased copy of a host name without the trailing dot, checked
 * (labels of letters, digits, "-", "_"). 0 or TERN_EINVAL. */
int tern__dns_name(const char *in, char *out, size_t cap);
void tern__query_unlink(struct tern_dns_query *q);
void tern__enter(struct tern_resolver *r);
void tern__leave(struct tern_resolver *r);

/* mtasts_fetch.c */
/* Start an MTA-STS query (its _mta-sts TXT lookup, or a deferred answer
 * when MTA-STS is off). 0 or TERN_ENOMEM (nothing started). */
int tern__sts_start(struct tern_dns_query *q);
void tern__sts_cancel(struct tern_dns_query *q); /* leave a fetch's waiters */
void tern__sts_free_all(struct tern_resolver *r);
/* Load r->sts_cache_file into the cache (at tern_resolver_new; a missing
 * or malformed file loads nothing, or what parses). */
void tern__sts_load(struct tern_resolver *r);

#endif /* TERN_NET_RESOLVE_INTERNAL_H */
