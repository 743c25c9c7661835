/*
 * The plan behind an "mx:DOMAIN" client (mx.h): MX hosts, MTA-STS, TLSA,
 * one address at a time, and the reply for the sender when none took
 * the connection.
 *
 *   start: MX lookup  [+ MTA-STS policy, TLS policy AUTO only]
 *   both done -> hosts in preference order; for each host:
 *     AUTO/DANE with a DNSSEC-validated MX and address answer: TLSA
 *     lookup first (RFC 7672 §2.2), then the host's TLS is decided:
 *       usable secure TLSA records       -> DANE
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

#include "mx.h"
#include "tls.h"

#define MAX_TRIES 10 /* addresses per connect (net.h says so) */
#define MAX_HOSTS 10

struct host {
  char *name;
  struct sockaddr_storage *addrs;
  size_t naddrs;
  int status;
  bool secure;
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

static unsigned char lower(unsigned char c) {
  return (c >= 'A' && c <= 'Z') ? (unsigned char)(c + 32) : c;
}

static bool ieq(const char *a, const char *b) {
  for (; *a && *b; a++, b++)
    if (lower((unsigned char)*a) != lower((unsigned char)*b))
      return false;
  return *a == *b;
}

bool tern__mx_sts_match(const char *pattern, const char *host) {
  if (!pattern || !host)
    return false;
  size_t hl = strlen(host);
  if (hl && host[hl - 1] == '.')
    hl--; /* compare without a trailing dot */
  char h[256];
  if (hl >= sizeof h)
    return false;
  memcpy(h, host, hl);
  h[hl] = '\0';
  if (pattern[0] == '*' && pattern[1] == '.') {
    /* RFC 8461 §4.1: the wildcard stands for exactly one label */
    const char *dot = strchr(h, '.');
    return dot && dot != h && ieq(dot + 1, pattern + 2);
  }
  return ieq(pattern, h);
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
    mx->mx_secure = r->secure;
    for (size_t i = 0; i < r->nhosts && mx->nhosts < MAX_HOSTS; i++) {
      const struct tern_mx_host *s = &r->hosts[i];
      struct host *h = &mx->hosts[mx->nhosts];
      h->name = dupstr(s->name ? s->name : "");
      if (!h->name)
        break;
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
      mx->nhosts++;
    }
    if (mx->nhosts == 0)
      set_fail(mx, 451, "4.4.3", "no mail host found for %s%s", mx->domain,
               "");
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

static void on_tlsa(const struct tern_tlsa_result *r, void *ud) {
  struct tern__mx *mx = ud;
  struct host *h = &mx->hosts[mx->hi];
  mx->q_tlsa = NULL;
  mx->tlsa_busy = false;
  h->decided = true;
  if (r->status == TERN_DNS_OK && r->secure) {
    size_t n = 0;
    for (size_t i = 0; i < r->n; i++)
      if ((r->recs[i].usage == 2 || r->recs[i].usage == 3) &&
          r->recs[i].mtype <= 2 && r->recs[i].selector <= 1)
        n++;
    if (n) {
      h->tlsa = calloc(n, sizeof *h->tlsa);
      h->tlsa_data = calloc(n, sizeof *h->tlsa_data);
      if (!h->tlsa || !h->tlsa_data) {
        host_fail(mx, h, TERN__MXF_DNS, "%s: out of memory", h->name);
      } else {
        for (size_t i = 0; i < r->n; i++) {
          const struct tern_tlsa *t = &r->recs[i];
          if (!((t->usage == 2 || t->usage == 3) && t->mtype <= 2 &&
                t->selector <= 1))
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
    if (tern__mx_sts_match(mx->sts_mx[i], host))
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
        if (tern_resolve_tlsa(mx->res, h->name, mx->port, on_tlsa, mx,
                              &mx->q_tlsa) == 0) {
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
  for (size_t i = 0; i < mx->nhosts; i++) {
    struct host *h = &mx->hosts[i];
    free(h->name);
    free(h->addrs);
    for (size_t k = 0; k < h->ntlsa; k++)
      free(h->tlsa_data[k]);
    free(h->tlsa_data);
    free(h->tlsa);
  }
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
      *verified = t->tls == TERN__MXT_STS ? "mta-sts" : "ca";
      return 0;
    }
    snprintf(why, cap, "%s: certificate verify failed: %s", t->host, reason);
    return t->tls == TERN__MXT_STS && t->sts_testing ? 1 : -1;
  default: /* NONE, MAY, ENCRYPT: encryption only, nothing checked */
    return 0;
  }
}
