/*
 * The plan behind an "mx:DOMAIN" client (mx.h): MX hosts, MTA-STS, TLSA,
 * one address at a time, and the reply for the sender when none took
 * the connection.
 *
 *   start: MX lookup  [+ MTA-STS policy, TLS policy AUTO only]
 *   both done -> hosts in preference order, less
 *     - MX names that are addresses in text ("192.0.2.1": RFC 5321 §5.1
 *       wants a host name; Postfix ignores them too): none left -> 451
 *       4.4.3 "MX points at an address literal";
 *     - with self_addrs: the first host with one of our addresses and
 *       every host of the same or a worse preference (a backup MX hands
 *       mail only to better ones): none left -> 554 5.4.6 "mail for
 *       DOMAIN loops back to myself" (an implicit MX at us too);
 *   for each host:
 *     AUTO/DANE with a DNSSEC-validated MX: a host one of whose address
 *     lookups failed (BOGUS, TEMPFAIL) while the other validated is
 *     skipped (RFC 7672 §2.1.1: a forged or dropped AAAA must not turn
 *     DANE off; a host whose answer is insecure is used, DANE cannot
 *     apply to it); else, when every family that answered validated,
 *     TLSA lookup first (§2.2; reached through a CNAME chain, which
 *     then validated too: at the expanded name first, at the MX host
 *     name after a validated denial there, §2.2.2), then the host's
 *     TLS is decided:
 *       usable secure TLSA records       -> DANE
 *       secure TLSA records, none usable -> ENCRYPT, policy "dane-unusable"
 *         (§2.2, §3.1.3: TLS stays mandatory, nothing to authenticate
 *         with), unless MTA-STS enforce applies (it verifies)
 *       secure NXDOMAIN/NODATA, insecure -> MTA-STS or MAY (AUTO)
 *       a failed TLSA lookup             -> the host is skipped (§2.2:
 *                                           it could be an attack)
 *     then each of its addresses, at most MAX_TRIES in all.
 *
 * REQUIRETLS (RFC 8689 §4.2.1): a host is usable only with DANE, an
 * MTA-STS enforce policy that lists it, or a DNSSEC-validated MX answer
 * (then PKIX with the MX host's name); the server must also offer
 * REQUIRETLS (the client checks). When every host fails for that reason
 * alone, the failure is permanent (550 5.7.30): retrying will not help.
 */
#include "internal.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <netinet/in.h>

#include <tern/mtasts.h>

#include "mx.h"
#include "tls.h"

#define MAX_TRIES 10 /* addresses per connect (net.h says so) */
#define MAX_HOSTS 10

struct host {
  char *name;
  unsigned pref;
  struct sockaddr_storage *addrs;
  size_t naddrs;
  int status;
  bool secure;
  int failed;                   /* a family's lookup failed (resolve.h) */
  char *canon;                  /* CNAME-expanded name (resolve.h), or NULL */
  bool tlsa_canon;              /* the TLSA lookup running is canon's */
  bool tlsa_orig;               /* canon's was a secure denial: ask name */
  bool dane_unusable;           /* secure TLSA records, none usable */
  bool decided;                 /* TLS level chosen (TLSA looked up) */
  bool unusable;                /* skip it */
  struct tern_tlsa *tlsa;       /* usable records (usage 2, 3) */
  uint8_t **tlsa_data;
  size_t ntlsa;
};

struct tern__mx {
  struct tern_resolver *res;
  char *domain;
  enum tern_tls_policy policy;
  bool requiretls;
  unsigned port;
  void (*cb)(void *arg);
  void *arg;
  const struct sockaddr_storage *self; /* our addresses (the caller's) */
  size_t nself;

  struct tern_dns_query *q_mx, *q_sts, *q_tlsa;
  bool mx_done, sts_done, tlsa_busy;
  bool mx_secure;
  /* the MTA-STS policy (AUTO) */
  enum tern_mtasts_mode sts_mode;
  char **sts_mx;
  size_t sts_nmx;

  struct host hosts[MAX_HOSTS];
  size_t nhosts;
  size_t hi, ai;        /* next host, next address in it */
  bool started_addr;    /* hosts[hi] addresses are being tried */
  unsigned tried;
  bool retry_clear;     /* give the current address once more in clear */
  bool have_cur;
  struct tern__mx_target cur;

  /* failures, for the final reply */
  bool resolved_fail;   /* the MX lookup itself failed: reply below */
  struct tern_reply fail_reply;
  char fail_enh[16];
  char fail_text[512];
  unsigned n_connect, n_greeting, n_tls, n_reqtls, n_dns;
  char last_text[400];
  char why_text[5][400]; /* the last failure of each kind */
  char *last_host;
};

static char *dupstr(const char *s) {
  size_t n = strlen(s) + 1;
  char *d = malloc(n);
  if (d)
    memcpy(d, s, n);
  return d;
}

/* An MX name that is an address in text: all digits and dots (IPv4),
 * or with a ':' (IPv6), or in brackets. */
static bool addr_literal(const char *name) {
  bool dots_digits = name[0] != '\0';
  for (const char *p = name; *p; p++) {
    if (*p == ':' || *p == '[')
      return true;
    if (!(*p == '.' || (*p >= '0' && *p <= '9')))
      dots_digits = false;
  }
  return dots_digits;
}

/* The family and address bytes of `a` for comparing (the port does
 * not count; an IPv4-mapped IPv6 address is its IPv4 address); *bytes
 * NULL for other families. */
static void addr_key(const struct sockaddr_storage *a, int *fam,
                     const uint8_t **bytes) {
  *fam = a->ss_family;
  *bytes = NULL;
  if (a->ss_family == AF_INET) {
    *bytes = (const uint8_t *)&((const struct sockaddr_in *)a)->sin_addr;
  } else if (a->ss_family == AF_INET6) {
    const uint8_t *b =
        (const uint8_t *)&((const struct sockaddr_in6 *)a)->sin6_addr;
    static const uint8_t mapped[12] = {0, 0, 0, 0, 0,    0,
                                       0, 0, 0, 0, 0xff, 0xff};
    if (!memcmp(b, mapped, sizeof mapped)) {
      *fam = AF_INET;
      *bytes = b + 12;
    } else {
      *bytes = b;
    }
  }
}

static unsigned addr_port(const struct sockaddr_storage *a) {
  if (a->ss_family == AF_INET)
    return ntohs(((const struct sockaddr_in *)a)->sin_port);
  if (a->ss_family == AF_INET6)
    return ntohs(((const struct sockaddr_in6 *)a)->sin6_port);
  return 0;
}

/* Is `a` one of our own addresses (net.h self_addrs)? Besides the
 * addresses themselves: the unspecified address (0.0.0.0, ::; a
 * connection to it reaches this machine), and every 127.0.0.0/8
 * address when 127.0.0.1 is ours at the port mail goes to (or port 0):
 * that is what a wildcard listener contributes (lo's 127.0.0.1/8), and
 * Linux delivers the whole /8 to it. A listener on another 127.0.0.x
 * alone takes only its own address (tests run many hosts on 127/8). */
static bool is_self(const struct tern__mx *mx,
                    const struct sockaddr_storage *a) {
  int fa;
  const uint8_t *ba;
  static const uint8_t zero[16];
  addr_key(a, &fa, &ba);
  if (!ba || mx->nself == 0)
    return false;
  if (!memcmp(ba, zero, fa == AF_INET ? 4 : 16))
    return true;
  for (size_t i = 0; i < mx->nself; i++) {
    int fs;
    const uint8_t *bs;
    addr_key(&mx->self[i], &fs, &bs);
    if (!bs || fs != fa)
      continue;
    if (!memcmp(ba, bs, fa == AF_INET ? 4 : 16))
      return true;
    unsigned p = addr_port(&mx->self[i]);
    if (fa == AF_INET && ba[0] == 127 && bs[0] == 127 && bs[1] == 0 &&
        bs[2] == 0 && bs[3] == 1 && (p == 0 || p == mx->port))
      return true;
  }
  return false;
}

int tern__mx_new(struct tern__mx **out, struct tern_resolver *r,
                 const char *domain, enum tern_tls_policy policy,
                 bool requiretls, unsigned port, void (*cb)(void *arg),
                 void *arg) {
  *out = NULL;
  struct tern__mx *mx = calloc(1, sizeof *mx);
  if (!mx)
    return TERN_ENOMEM;
  mx->domain = dupstr(domain);
  if (!mx->domain) {
    free(mx);
    return TERN_ENOMEM;
  }
  mx->res = r;
  mx->policy = policy;
  mx->requiretls = requiretls;
  mx->port = port ? port : 25;
  mx->cb = cb;
  mx->arg = arg;
  *out = mx;
  return 0;
}

void tern__mx_set_self(struct tern__mx *mx,
                       const struct sockaddr_storage *addrs, size_t n) {
  mx->self = n ? addrs : NULL;
  mx->nself = addrs ? n : 0;
}

static void host_free(struct host *h) {
  free(h->name);
  free(h->canon);
  free(h->addrs);
  for (size_t k = 0; k < h->ntlsa; k++)
    free(h->tlsa_data[k]);
  free(h->tlsa_data);
  free(h->tlsa);
  memset(h, 0, sizeof *h);
}

/* Drop the hosts from `cut` (a preference) on: they are ourselves or
 * worse than us (the list is in preference order). */
static void drop_from_pref(struct tern__mx *mx, unsigned cut) {
  size_t keep = 0;
  for (size_t i = 0; i < mx->nhosts; i++) {
    if (mx->hosts[i].pref >= cut)
      host_free(&mx->hosts[i]);
    else
      mx->hosts[keep++] = mx->hosts[i];
  }
  for (size_t i = keep; i < mx->nhosts; i++) /* moved or freed */
    memset(&mx->hosts[i], 0, sizeof mx->hosts[i]);
  mx->nhosts = keep;
}

static void set_fail(struct tern__mx *mx, int code, const char *enh,
                     const char *fmt, ...) __attribute__((format(printf, 4, 5)));
static void set_fail(struct tern__mx *mx, int code, const char *enh,
                     const char *fmt, ...) {
  va_list ap;
  mx->resolved_fail = true;
  snprintf(mx->fail_enh, sizeof mx->fail_enh, "%s", enh);
  va_start(ap, fmt);
  vsnprintf(mx->fail_text, sizeof mx->fail_text, fmt, ap);
  va_end(ap);
  mx->fail_reply.code = code;
  mx->fail_reply.enhanced = mx->fail_enh;
  mx->fail_reply.text = mx->fail_text;
}

/* ---- lookups --------------------------------------------------------------- */

static void both_done(struct tern__mx *mx) {
  if (mx->mx_done && mx->sts_done)
    mx->cb(mx->arg);
}

static void on_mx(const struct tern_mx_result *r, void *ud) {
  struct tern__mx *mx = ud;
  mx->q_mx = NULL;
  mx->mx_done = true;
  const char *why = r->why && r->why[0] ? r->why : "";
  switch (r->status) {
  case TERN_DNS_OK:
    break;
  case TERN_DNS_NULLMX:
    /* RFC 7505 §4.2 */
    set_fail(mx, 550, "5.1.10", "%s does not accept mail (null MX)%s",
             mx->domain, "");
    break;
  case TERN_DNS_NXDOMAIN:
    set_fail(mx, 550, "5.1.2", "domain %s does not exist%s", mx->domain, "");
    break;
  default: /* TEMPFAIL, BOGUS: never "no record" */
    set_fail(mx, 451, "4.4.3", "cannot resolve the MX of %s: %s", mx->domain,
             why[0] ? why
             : r->status == TERN_DNS_BOGUS ? "DNSSEC validation failed"
                                           : "DNS failure");
    break;
  }
  if (r->status == TERN_DNS_OK) {
    const char *literal = NULL;
    char literal_name[256] = "";
    mx->mx_secure = r->secure;
    for (size_t i = 0; i < r->nhosts && mx->nhosts < MAX_HOSTS; i++) {
      const struct tern_mx_host *s = &r->hosts[i];
      struct host *h = &mx->hosts[mx->nhosts];
      if (s->name && addr_literal(s->name)) {
        /* RFC 5321 §5.1: an MX names a host; an address there is a
         * mistake (or a trick): not used, as Postfix does */
        if (!literal) {
          snprintf(literal_name, sizeof literal_name, "%s", s->name);
          literal = literal_name;
        }
        continue;
      }
      h->name = dupstr(s->name ? s->name : "");
      if (!h->name)
        break;
      h->pref = s->pref;
      if (s->naddrs) {
        h->addrs = calloc(s->naddrs, sizeof *h->addrs);
        if (!h->addrs) {
          free(h->name);
          h->name = NULL;
          break;
        }
        memcpy(h->addrs, s->addrs, s->naddrs * sizeof *h->addrs);
        h->naddrs = s->naddrs;
        for (size_t k = 0; k < h->naddrs; k++) {
          struct sockaddr_storage *a = &h->addrs[k];
          if (a->ss_family == AF_INET)
            ((struct sockaddr_in *)a)->sin_port = htons((uint16_t)mx->port);
          else if (a->ss_family == AF_INET6)
            ((struct sockaddr_in6 *)a)->sin6_port = htons((uint16_t)mx->port);
        }
      }
      h->status = s->status;
      h->secure = s->secure;
      h->failed = s->failed;
      if (s->canon && s->canon[0])
        h->canon = dupstr(s->canon); /* NULL (no memory): as no CNAME */
      mx->nhosts++;
    }
    /* A host with one of our addresses is this server: it and every
     * host of the same or a worse preference are dropped (net.h). */
    bool loops = false;
    unsigned cut = 0;
    for (size_t i = 0; i < mx->nhosts; i++)
      for (size_t k = 0; k < mx->hosts[i].naddrs; k++)
        if (is_self(mx, &mx->hosts[i].addrs[k]) &&
            (!loops || mx->hosts[i].pref < cut)) {
          loops = true;
          cut = mx->hosts[i].pref;
        }
    if (loops)
      drop_from_pref(mx, cut);
    if (mx->nhosts == 0 && loops)
      set_fail(mx, 554, "5.4.6", "mail for %s loops back to myself",
               mx->domain);
    else if (mx->nhosts == 0 && literal)
      set_fail(mx, 451, "4.4.3",
               "%s: MX points at an address literal (%s), not a host name",
               mx->domain, literal);
    else if (mx->nhosts == 0)
      set_fail(mx, 451, "4.4.3", "no mail host found for %s%s", mx->domain,
               "");
    else if (literal) {
      char t[400];
      snprintf(t, sizeof t, "%s: MX %s is an address literal, not used",
               mx->domain, literal);
      tern__mx_failed(mx, TERN__MXF_DNS, t);
    }
  }
  both_done(mx);
}

static void on_sts(const struct tern_mtasts_policy *p, const char *why,
                   void *ud) {
  struct tern__mx *mx = ud;
  (void)why;
  mx->q_sts = NULL;
  mx->sts_done = true;
  if (p && p->mode != TERN_MTASTS_NONE) {
    mx->sts_mx = calloc(p->nmx ? p->nmx : 1, sizeof *mx->sts_mx);
    if (mx->sts_mx) {
      for (size_t i = 0; i < p->nmx; i++)
        if ((mx->sts_mx[mx->sts_nmx] = dupstr(p->mx[i])) != NULL)
          mx->sts_nmx++;
      mx->sts_mode = p->mode;
    } else if (p->mode == TERN_MTASTS_ENFORCE) {
      /* cannot keep the list: no host can be shown to match */
      mx->sts_mode = TERN_MTASTS_ENFORCE;
    }
  }
  both_done(mx);
}

int tern__mx_start(struct tern__mx *mx) {
  int rc = tern_resolve_mx(mx->res, mx->domain, on_mx, mx, &mx->q_mx);
  if (rc) {
    mx->q_mx = NULL;
    if (rc == TERN_EINVAL)
      set_fail(mx, 550, "5.1.2", "%s is not a mail domain%s", mx->domain, "");
    else
      set_fail(mx, 451, "4.4.3", "cannot resolve %s: %s", mx->domain,
               tern_strerror(rc));
    return rc;
  }
  mx->sts_done = true;
  if (mx->policy == TERN_TLS_POLICY_AUTO) {
    mx->sts_done = false;
    if (tern_resolve_mtasts(mx->res, mx->domain, on_sts, mx, &mx->q_sts) !=
        0) {
      mx->q_sts = NULL;
      mx->sts_done = true; /* as without a policy */
    }
  }
  return 0;
}

static void host_fail(struct tern__mx *mx, struct host *h,
                      enum tern__mx_fail why, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void host_fail(struct tern__mx *mx, struct host *h,
                      enum tern__mx_fail why, const char *fmt, ...) {
  char t[400];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(t, sizeof t, fmt, ap);
  va_end(ap);
  h->unusable = true;
  mx->have_cur = false;
  free(mx->last_host);
  mx->last_host = dupstr(h->name);
  tern__mx_failed(mx, why, t);
}

/* A TLSA record SMTP can use (RFC 7672 §3.1.3, RFC 7671 §4): DANE-TA
 * or DANE-EE, a known selector and matching type, a digest of its
 * length. */
static bool tlsa_usable(const struct tern_tlsa *t) {
  if (!(t->usage == 2 || t->usage == 3) || t->selector > 1)
    return false;
  switch (t->mtype) {
  case 0:
    return t->len > 0;
  case 1:
    return t->len == 32;
  case 2:
    return t->len == 64;
  default:
    return false;
  }
}

static void on_tlsa(const struct tern_tlsa_result *r, void *ud) {
  struct tern__mx *mx = ud;
  struct host *h = &mx->hosts[mx->hi];
  mx->q_tlsa = NULL;
  mx->tlsa_busy = false;
  if (h->tlsa_canon && r->secure &&
      (r->status == TERN_DNS_NXDOMAIN || r->status == TERN_DNS_NODATA)) {
    /* RFC 7672 §2.2.2: nothing at the CNAME-expanded name (a validated
     * denial): the original MX host name is asked next */
    h->tlsa_canon = false;
    h->tlsa_orig = true;
    mx->cb(mx->arg);
    return;
  }
  h->decided = true;
  if (r->status == TERN_DNS_OK && r->secure) {
    size_t n = 0;
    for (size_t i = 0; i < r->n; i++)
      if (tlsa_usable(&r->recs[i]))
        n++;
    /* RFC 7672 §2.2, §3.1.3: records published, none usable (PKIX
     * usages, unknown selector or matching type): TLS stays mandatory,
     * authentication is not possible */
    h->dane_unusable = n == 0 && r->n > 0;
    if (n) {
      h->tlsa = calloc(n, sizeof *h->tlsa);
      h->tlsa_data = calloc(n, sizeof *h->tlsa_data);
      if (!h->tlsa || !h->tlsa_data) {
        host_fail(mx, h, TERN__MXF_DNS, "%s: out of memory", h->name);
      } else {
        for (size_t i = 0; i < r->n; i++) {
          const struct tern_tlsa *t = &r->recs[i];
          if (!tlsa_usable(t))
            continue;
          uint8_t *d = malloc(t->len ? t->len : 1);
          if (!d)
            break;
          memcpy(d, t->data, t->len);
          h->tlsa_data[h->ntlsa] = d;
          h->tlsa[h->ntlsa] = *t;
          h->tlsa[h->ntlsa].data = d;
          h->ntlsa++;
        }
      }
    }
  } else if (r->status == TERN_DNS_TEMPFAIL || r->status == TERN_DNS_BOGUS) {
    /* RFC 7672 §2.2: a TLSA lookup that fails (not a validated denial)
     * makes the host unusable: an attacker could be hiding the records */
    host_fail(mx, h, TERN__MXF_DNS, "TLSA lookup for %s failed", h->name);
  }
  /* secure or insecure NXDOMAIN/NODATA, insecure answers: no DANE */
  mx->cb(mx->arg);
}

/* ---- choosing ---------------------------------------------------------------- */

static bool sts_lists(const struct tern__mx *mx, const char *host) {
  for (size_t i = 0; i < mx->sts_nmx; i++)
    if (tern_mtasts_mx_match(mx->sts_mx[i], host))
      return true;
  return false;
}

/* The TLS of host `h` (decided: TLSA known when it applies). Returns
 * false when the host cannot be used (recorded). */
static bool choose_tls(struct tern__mx *mx, struct host *h,
                       struct tern__mx_target *t) {
  t->sts_testing = false;
  t->policy_failure = NULL;
  t->tlsa = NULL;
  t->ntlsa = 0;
  t->tlsa_base = NULL;
  bool dane = h->ntlsa > 0;
  switch (mx->policy) {
  case TERN_TLS_POLICY_NONE:
    t->tls = TERN__MXT_NONE;
    t->policy = "none";
    break;
  case TERN_TLS_POLICY_MAY:
    t->tls = TERN__MXT_MAY;
    t->policy = "may";
    break;
  case TERN_TLS_POLICY_ENCRYPT:
    t->tls = TERN__MXT_ENCRYPT;
    t->policy = "encrypt";
    break;
  case TERN_TLS_POLICY_VERIFY:
    t->tls = TERN__MXT_VERIFY;
    t->policy = "verify";
    break;
  case TERN_TLS_POLICY_DANE:
    if (!dane) {
      host_fail(mx, h, TERN__MXF_TLS,
                "%s: no usable DNSSEC-validated TLSA records (DANE required)",
                h->name);
      return false;
    }
    t->tls = TERN__MXT_DANE;
    t->policy = "dane";
    break;
  default: /* AUTO */
    if (dane) {
      t->tls = TERN__MXT_DANE;
      t->policy = "dane";
    } else if (mx->sts_mode == TERN_MTASTS_ENFORCE) {
      if (!sts_lists(mx, h->name)) {
        host_fail(mx, h, TERN__MXF_TLS,
                  "%s is not an mx of the domain's MTA-STS policy", h->name);
        return false;
      }
      t->tls = TERN__MXT_STS;
      t->policy = "mta-sts";
    } else if (h->dane_unusable) {
      t->tls = TERN__MXT_ENCRYPT; /* RFC 7672 §2.2: never in the clear */
      t->policy = "dane-unusable";
    } else if (mx->sts_mode == TERN_MTASTS_TESTING) {
      t->tls = TERN__MXT_STS;
      t->sts_testing = true;
      t->policy = "mta-sts-testing";
      if (!sts_lists(mx, h->name))
        t->policy_failure = "MX host not listed in the MTA-STS policy";
    } else {
      t->tls = TERN__MXT_MAY;
      t->policy = "may";
    }
    break;
  }
  if (t->tls == TERN__MXT_DANE) {
    t->tlsa = h->tlsa;
    t->ntlsa = h->ntlsa;
    /* RFC 7672 §3.2.3: after a validated CNAME chain the expanded name
     * is a reference identifier too (next to the MX host name) */
    t->tlsa_base = h->secure && h->canon ? h->canon : NULL;
  }
  t->need_requiretls = mx->requiretls;
  if (mx->requiretls) {
    /* RFC 8689 §4.2.1: the MX answer DNSSEC-validated or an MTA-STS
     * policy (enforce) names the host; then verified TLS to it */
    bool ok = t->tls == TERN__MXT_DANE ||
              (t->tls == TERN__MXT_STS && !t->sts_testing);
    if (!ok && mx->mx_secure && t->tls != TERN__MXT_NONE) {
      t->tls = TERN__MXT_VERIFY;
      t->sts_testing = false;
      t->policy_failure = NULL;
      t->policy = "requiretls-verify"; /* what applies, for the logs */
      ok = true;
    }
    if (!ok) {
      host_fail(mx, h, TERN__MXF_REQTLS,
                t->tls == TERN__MXT_NONE
                    ? "%s: REQUIRETLS needs TLS (policy none)"
                    : "%s: REQUIRETLS needs DANE, MTA-STS or a "
                      "DNSSEC-validated MX",
                h->name);
      return false;
    }
  }
  return true;
}

int tern__mx_next(struct tern__mx *mx, const struct tern__mx_target **out) {
  *out = NULL;
  if (!mx->mx_done || !mx->sts_done || mx->tlsa_busy)
    return 0;
  if (mx->resolved_fail)
    return -1;
  if (mx->retry_clear && mx->have_cur) {
    mx->retry_clear = false;
    mx->cur.clear = true;
    mx->cur.tried = ++mx->tried;
    *out = &mx->cur;
    return 1;
  }
  while (mx->hi < mx->nhosts) {
    if (mx->tried >= MAX_TRIES)
      break;
    struct host *h = &mx->hosts[mx->hi];
    bool dane_policy = mx->policy == TERN_TLS_POLICY_AUTO ||
                       mx->policy == TERN_TLS_POLICY_DANE;
    if (!h->unusable && h->status == TERN_DNS_OK && h->naddrs &&
        h->failed != TERN_DNS_OK && mx->mx_secure && h->secure &&
        dane_policy) {
      /* RFC 7672 §2.1.1: with a validated MX, a host whose address
       * lookup failed is not used: a forged or dropped AAAA (or A)
       * must not turn DANE off. Only when the family that answered
       * validated: an insecure answer (a host in an unsigned zone)
       * means DANE can never apply there, nothing to protect */
      host_fail(mx, h, TERN__MXF_DNS, "%s: %s", h->name,
                h->failed == TERN_DNS_BOGUS
                    ? "DNSSEC validation of an address lookup failed"
                    : "an address lookup failed");
      mx->hi++;
      mx->ai = 0;
      mx->started_addr = false;
      continue;
    }
    if (h->unusable || h->status != TERN_DNS_OK || h->naddrs == 0) {
      if (!h->unusable && (h->status != TERN_DNS_OK || h->naddrs == 0)) {
        h->unusable = true;
        free(mx->last_host);
        mx->last_host = dupstr(h->name);
        char t[400];
        snprintf(t, sizeof t, "%s: %s", h->name,
                 h->status == TERN_DNS_NXDOMAIN ? "no such host"
                 : h->status == TERN_DNS_NODATA ? "no address"
                 : h->status == TERN_DNS_BOGUS
                     ? "DNSSEC validation of its address failed"
                     : "address lookup failed");
        tern__mx_failed(mx, TERN__MXF_DNS, t);
      }
      mx->hi++;
      mx->ai = 0;
      mx->started_addr = false;
      continue;
    }
    if (!mx->started_addr) {
      bool want_tlsa =
          (mx->policy == TERN_TLS_POLICY_AUTO ||
           mx->policy == TERN_TLS_POLICY_DANE) &&
          mx->mx_secure && h->secure;
      if (want_tlsa && !h->decided) {
        /* RFC 7672 §2.2.2: reached through a validated CNAME chain (the
         * address answers are secure only when every CNAME in them
         * validated): the expanded name first, then the original */
        h->tlsa_canon = h->canon && !h->tlsa_orig;
        if (tern_resolve_tlsa(mx->res, h->tlsa_canon ? h->canon : h->name,
                              mx->port, on_tlsa, mx, &mx->q_tlsa) == 0) {
          mx->tlsa_busy = true;
          return 0;
        }
        mx->q_tlsa = NULL;
        host_fail(mx, h, TERN__MXF_DNS, "TLSA lookup for %s failed",
                  h->name);
        continue;
      }
      h->decided = true;
      memset(&mx->cur, 0, sizeof mx->cur);
      if (!choose_tls(mx, h, &mx->cur))
        continue; /* unusable now */
      mx->started_addr = true;
      mx->ai = 0;
    }
    if (mx->ai >= h->naddrs) {
      mx->hi++;
      mx->started_addr = false;
      continue;
    }
    mx->cur.host = h->name;
    mx->cur.addr = h->addrs[mx->ai++];
    mx->cur.clear = false;
    mx->cur.tried = ++mx->tried;
    mx->have_cur = true;
    *out = &mx->cur;
    return 1;
  }
  return -1;
}

void tern__mx_failed(struct tern__mx *mx, enum tern__mx_fail why,
                     const char *text) {
  switch (why) {
  case TERN__MXF_CONNECT:
    mx->n_connect++;
    break;
  case TERN__MXF_GREETING:
    mx->n_greeting++;
    break;
  case TERN__MXF_TLS:
    mx->n_tls++;
    break;
  case TERN__MXF_REQTLS:
    mx->n_reqtls++;
    break;
  case TERN__MXF_DNS:
    mx->n_dns++;
    break;
  }
  if (mx->have_cur && why == TERN__MXF_REQTLS) {
    /* this host cannot do REQUIRETLS: its other addresses will not */
    if (mx->hi < mx->nhosts) {
      mx->hosts[mx->hi].unusable = true;
      mx->started_addr = false;
    }
  }
  snprintf(mx->last_text, sizeof mx->last_text, "%s", text ? text : "");
  snprintf(mx->why_text[why], sizeof mx->why_text[why], "%s",
           text ? text : "");
}

bool tern__mx_retry_clear(struct tern__mx *mx, const char *text) {
  if (!mx->have_cur || mx->cur.clear ||
      !(mx->cur.tls == TERN__MXT_MAY ||
        (mx->cur.tls == TERN__MXT_STS && mx->cur.sts_testing)))
    return false;
  snprintf(mx->last_text, sizeof mx->last_text, "%s", text ? text : "");
  mx->retry_clear = true;
  return true;
}

void tern__mx_failure(const struct tern__mx *mx, struct tern_reply *out) {
  struct tern__mx *m = (struct tern__mx *)mx; /* the reply's storage */
  if (mx->resolved_fail) {
    *out = mx->fail_reply;
    return;
  }
  const char *enh;
  int code;
  const char *what;
  const char *detail = mx->last_text;
  unsigned temp = mx->n_connect + mx->n_greeting + mx->n_tls + mx->n_dns;
  if (mx->n_reqtls && !temp) {
    code = 550, enh = "5.7.30", what = "REQUIRETLS cannot be met";
    detail = mx->why_text[TERN__MXF_REQTLS];
  } else if (mx->n_tls) {
    code = 451, enh = "4.7.5", what = "TLS failed";
    detail = mx->why_text[TERN__MXF_TLS];
  } else if (mx->n_greeting) {
    code = 421, enh = "4.4.2", what = "refused by every host";
    detail = mx->why_text[TERN__MXF_GREETING];
  } else if (mx->n_connect) {
    code = 451, enh = "4.4.1", what = "no host answered";
  } else if (mx->n_dns) {
    code = 451, enh = "4.4.3", what = "cannot resolve the mail hosts";
  } else {
    code = 451, enh = "4.4.1", what = "no mail host to try";
  }
  snprintf(m->fail_enh, sizeof m->fail_enh, "%s", enh);
  snprintf(m->fail_text, sizeof m->fail_text, "%s: %s (%u of at most %d "
           "addresses tried)%s%s",
           mx->domain, what, mx->tried, MAX_TRIES,
           detail[0] ? "; " : "", detail);
  out->code = code;
  out->enhanced = m->fail_enh;
  out->text = m->fail_text;
}

void tern__mx_cancel(struct tern__mx *mx) {
  if (!mx)
    return;
  if (mx->q_mx)
    tern_dns_cancel(mx->q_mx);
  if (mx->q_sts)
    tern_dns_cancel(mx->q_sts);
  if (mx->q_tlsa)
    tern_dns_cancel(mx->q_tlsa);
  mx->q_mx = mx->q_sts = mx->q_tlsa = NULL;
}

void tern__mx_free(struct tern__mx *mx) {
  if (!mx)
    return;
  tern__mx_cancel(mx);
  for (size_t i = 0; i < mx->nhosts; i++)
    host_free(&mx->hosts[i]);
  for (size_t i = 0; i < mx->sts_nmx; i++)
    free(mx->sts_mx[i]);
  free(mx->sts_mx);
  free(mx->last_host);
  free(mx->domain);
  free(mx);
}

/* See mx.h. */
int tern__mx_domain(const char *d, char *out, size_t cap) {
  size_t n = strlen(d);
  if (n && d[n - 1] == '.')
    n--;
  if (n == 0 || n > 253 || n >= cap)
    return TERN_EINVAL;
  size_t label = 0;
  bool alpha = false;
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)d[i];
    if (c >= 'A' && c <= 'Z')
      c = (unsigned char)(c + 32);
    if (c == '.') {
      if (label == 0 || d[i - 1] == '-')
        return TERN_EINVAL;
      label = 0;
    } else if ((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
               c == '-' || c == '_') {
      if ((c == '-' && label == 0) || ++label > 63)
        return TERN_EINVAL;
      if (!(c >= '0' && c <= '9') && c != '-')
        alpha = true;
    } else {
      return TERN_EINVAL;
    }
    out[i] = (char)c;
  }
  out[n] = '\0';
  if (label == 0 || out[n - 1] == '-' || !alpha)
    return TERN_EINVAL; /* "1.2.3.4" is no domain */
  return 0;
}

/* See mx.h. */
const char *tern__mx_error_reply(int err, bool in_session, int *code) {
  *code = 451;
  switch (err) {
  case TERN_ERESOLVE:
    return "4.4.3"; /* directory server failure */
  case TERN_ETLS:
    return "4.7.5"; /* cryptographic failure */
  case TERN_EPROTO:
  case TERN_ECLOSED:
    *code = 421;
    return "4.4.2"; /* bad connection */
  case TERN_ETIMEDOUT:
    return in_session ? "4.4.2" : "4.4.1";
  case TERN_EAUTH:
    return "4.7.0";
  case TERN_ECONNECT:
    return "4.4.1"; /* no answer from host */
  default:
    return "4.3.0";
  }
}

/* See mx.h. */
int tern__mx_tls_verdict(const struct tern__mx_target *t,
                         const struct tern__tls *tls, const char **verified,
                         char *why, size_t cap) {
  const char *reason = NULL;
  bool ok = tern__tls_verify_result(tls, &reason);
  *verified = NULL;
  why[0] = '\0';
  switch (t->tls) {
  case TERN__MXT_DANE:
    *verified = tern__tls_dane_match(tls);
    if (!*verified) {
      snprintf(why, cap, "%s: no TLSA record matches the certificate (%s)",
               t->host, reason);
      return -1;
    }
    return 0;
  case TERN__MXT_VERIFY:
  case TERN__MXT_STS:
    if (ok) {
      /* MTA-STS testing with the host not in the policy: the chain and
       * name verified, the policy did not hold: say "ca", not "mta-sts" */
      *verified =
          t->tls == TERN__MXT_STS && !t->policy_failure ? "mta-sts" : "ca";
      return 0;
    }
    snprintf(why, cap, "%s: certificate verify failed: %s", t->host, reason);
    return t->tls == TERN__MXT_STS && t->sts_testing ? 1 : -1;
  default: /* NONE, MAY, ENCRYPT: encryption only, nothing checked */
    return 0;
  }
}
