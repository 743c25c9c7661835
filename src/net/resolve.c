/*
 * tern — DNS for mail to the world (tern/resolve.h): libunbound on the
 * libuv loop, MX and TLSA lookups. MTA-STS is in mtasts_fetch.c; the
 * shared state and the rules of the game in resolve_internal.h, the
 * reasons in docs/decisions/0019-resolver.md.
 *
 * libunbound runs its queries in a thread of its own (ub_ctx_async(ctx,
 * 1)) and signals answers on a pipe: ub_fd() is polled with a uv_poll_t
 * and ub_process() runs the callbacks of the answers that arrived, on the
 * loop's thread. Nothing here blocks the loop.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "internal.h"

#include "resolve_internal.h"

#define RR_A 1
#define RR_MX 15
#define RR_AAAA 28
#define RR_TLSA 52

static _Thread_local char new_error[TERN__WHY_MAX];

/* ---- entry points, teardown -------------------------------------------- */

static void on_closed(uv_handle_t *h) {
  struct tern_resolver *r = h->data;
  if (--r->closing == 0) {
    free(r->sts_ca_file);
    free(r);
  }
}

static void cancel_all(struct tern_resolver *r) {
  while (r->queries != NULL)
    tern_dns_cancel(r->queries);
  while (r->subs != NULL)
    tern__sub_cancel_owner(r, r->subs->owner);
}

static void teardown(struct tern_resolver *r) {
  if (r->torn)
    return;
  r->torn = true;
  cancel_all(r);
  /* The policy cache, and fetches in flight (their transfers leave
   * curl at once; a cache-file write on the pool finishes on its own).
   * Not in cancel_all: a fetch may be handing out its result up the
   * stack. */
  tern__sts_free_all(r);
  uv_poll_stop(&r->poll);
  uv_timer_stop(&r->timer);
  /* Joins libunbound's thread; its queries are gone with it. */
  ub_ctx_delete(r->ctx);
  r->ctx = NULL;
  r->closing = 2;
  uv_close((uv_handle_t *)&r->poll, on_closed);
  uv_close((uv_handle_t *)&r->timer, on_closed);
}

void tern__enter(struct tern_resolver *r) { r->depth++; }

void tern__leave(struct tern_resolver *r) {
  if (--r->depth == 0 && r->dying)
    teardown(r);
}

/* ---- subs: one libunbound query each, with a deadline ----------------------
 */

static void on_timer(uv_timer_t *t);

static void timer_update(struct tern_resolver *r) {
  uint64_t now = uv_now(r->loop), min = UINT64_MAX;
  struct tern__sub *s;

  if (r->torn)
    return;
  for (s = r->subs; s != NULL; s = s->next)
    if (s->deadline < min)
      min = s->deadline;
  if (min == UINT64_MAX)
    uv_timer_stop(&r->timer);
  else
    uv_timer_start(&r->timer, on_timer, min > now ? min - now : 0, 0);
}

static void sub_unlink(struct tern__sub *s) {
  struct tern_resolver *r = s->r;
  if (s->prev)
    s->prev->next = s->next;
  else
    r->subs = s->next;
  if (s->next)
    s->next->prev = s->prev;
  s->prev = s->next = NULL;
}

/* A handler runs with the sub already out of the list, so it may cancel
 * anything else; the sub is freed after it. */
static void sub_finish(struct tern__sub *s, int err, struct ub_result *res) {
  sub_unlink(s);
  s->fn(s, err, res);
  free(s);
}

static void on_answer(void *my, int err, struct ub_result *res) {
  struct tern__sub *s = my;
  s->running = false;
  sub_finish(s, err, res);
  if (res != NULL)
    ub_resolve_free(res);
}

static void on_timer(uv_timer_t *t) {
  struct tern_resolver *r = t->data;
  tern__enter(r);
  for (;;) {
    uint64_t now = uv_now(r->loop);
    struct tern__sub *s;
    for (s = r->subs; s != NULL; s = s->next)
      if (s->deadline <= now)
        break;
    if (s == NULL || r->dying)
      break;
    if (s->running) {
      ub_cancel(r->ctx, s->async_id);
      s->running = false;
    }
    sub_finish(s, s->fail ? s->fail : TERN__SUB_TIMEOUT, NULL);
  }
  timer_update(r);
  tern__leave(r);
}

static void on_poll(uv_poll_t *p, int status, int events) {
  struct tern_resolver *r = p->data;
  (void)events;
  tern__enter(r);
  if (status == 0 && !r->dying)
    ub_process(r->ctx);
  if (!r->dying)
    timer_update(r);
  tern__leave(r);
}

struct tern__sub *tern__sub_start(struct tern_resolver *r, const char *name,
                                  int rrtype, tern__sub_fn fn, void *owner,
                                  int idx) {
  struct tern__sub *s = calloc(1, sizeof *s);
  int rc;

  if (s == NULL)
    return NULL;
  s->r = r;
  s->fn = fn;
  s->owner = owner;
  s->idx = idx;
  s->rrtype = rrtype;
  s->deadline = uv_now(r->loop) + r->timeout_ms;
  if (name == NULL) {
    s->fail = TERN__SUB_NOW;
    s->deadline = 0;
  } else {
    rc = ub_resolve_async(r->ctx, name, rrtype, 1 /* IN */, s, on_answer,
                          &s->async_id);
    if (rc != 0) {
      s->fail = rc;
      s->deadline = 0;
    } else {
      s->running = true;
    }
  }
  s->next = r->subs;
  if (r->subs)
    r->subs->prev = s;
  r->subs = s;
  timer_update(r);
  return s;
}

void tern__sub_cancel_owner(struct tern_resolver *r, const void *owner) {
  struct tern__sub *s = r->subs, *next;
  for (; s != NULL; s = next) {
    next = s->next;
    if (s->owner != owner)
      continue;
    if (s->running && r->ctx != NULL)
      ub_cancel(r->ctx, s->async_id);
    sub_unlink(s);
    free(s);
  }
}

int tern__sub_status(int err, const struct ub_result *res, char *why,
                     size_t cap) {
  if (err == TERN__SUB_TIMEOUT) {
    snprintf(why, cap, "DNS query timed out");
    return TERN_DNS_TEMPFAIL;
  }
  if (err != 0 || res == NULL) {
    snprintf(why, cap, "DNS resolver error: %s",
             err == TERN__SUB_NOW ? "no query" : ub_strerror(err));
    return TERN_DNS_TEMPFAIL;
  }
  if (res->bogus) {
    snprintf(why, cap, "DNSSEC validation failed: %s",
             res->why_bogus ? res->why_bogus : "bogus answer");
    return TERN_DNS_BOGUS;
  }
  if (res->rcode == 3 || res->nxdomain) {
    snprintf(why, cap, "no such domain (NXDOMAIN)");
    return TERN_DNS_NXDOMAIN;
  }
  if (res->rcode != 0) {
    snprintf(why, cap, "DNS server failure (rcode %d)", res->rcode);
    return TERN_DNS_TEMPFAIL;
  }
  if (!res->havedata) {
    snprintf(why, cap, "no record of that type (NODATA)");
    return TERN_DNS_NODATA;
  }
  if (cap)
    why[0] = '\0';
  return TERN_DNS_OK;
}

/* ---- names
 * ------------------------------------------------------------------------------
 */

static unsigned char lc(unsigned char c) {
  return (c >= 'A' && c <= 'Z') ? (unsigned char)(c + 32) : c;
}

static bool label_char(unsigned char c) {
  return tern__is_alnum(c) || c == '-' || c == '_';
}

int tern__dns_name(const char *in, char *out, size_t cap) {
  size_t n, i, lab = 0;

  if (in == NULL)
    return TERN_EINVAL;
  n = strlen(in);
  if (n > 0 && in[n - 1] == '.')
    n--;
  if (n == 0 || n > 253 || n >= cap)
    return TERN_EINVAL;
  for (i = 0; i < n; i++) {
    unsigned char c = (unsigned char)in[i];
    if (c == '.') {
      if (lab == 0)
        return TERN_EINVAL;
      lab = 0;
    } else if (label_char(c)) {
      if (++lab > 63)
        return TERN_EINVAL;
    } else {
      return TERN_EINVAL;
    }
    out[i] = (char)lc(c);
  }
  if (lab == 0)
    return TERN_EINVAL;
  out[n] = '\0';
  return 0;
}

/* An uncompressed wire name (libunbound's rdata) to text. Returns its
 * wire length, 0 for a malformed or unusable name; out "" for the root. */
static size_t wire_name(const uint8_t *p, size_t len, char *out, size_t cap) {
  size_t i = 0, o = 0;
  while (i < len) {
    size_t l = p[i++], k;
    if (l == 0) {
      out[o] = '\0';
      return i;
    }
    if (l > 63 || i + l > len || o + l + 2 > cap)
      return 0;
    if (o > 0)
      out[o++] = '.';
    for (k = 0; k < l; k++) {
      if (!label_char(p[i + k]))
        return 0;
      out[o++] = (char)lc(p[i + k]);
    }
    i += l;
  }
  return 0;
}

/* ---- queries
 * ------------------------------------------------------------------------------
 */

static struct tern_dns_query *query_new(struct tern_resolver *r, int kind,
                                        void *ud) {
  struct tern_dns_query *q = calloc(1, sizeof *q);
  if (q == NULL)
    return NULL;
  q->r = r;
  q->kind = kind;
  q->ud = ud;
  q->next = r->queries;
  if (r->queries)
    r->queries->prev = q;
  r->queries = q;
  return q;
}

void tern__query_unlink(struct tern_dns_query *q) {
  struct tern_resolver *r = q->r;
  if (q->prev)
    q->prev->next = q->next;
  else if (r->queries == q)
    r->queries = q->next;
  if (q->next)
    q->next->prev = q->prev;
  q->prev = q->next = NULL;
}

static void query_free(struct tern_dns_query *q) {
  free(q->hosts);
  free(q);
}

void tern_dns_cancel(struct tern_dns_query *q) {
  if (q == NULL || q->in_cb)
    return;
  tern__sub_cancel_owner(q->r, q);
  if (q->kind == TERN__Q_MTASTS)
    tern__sts_cancel(q);
  tern__query_unlink(q);
  timer_update(q->r);
  query_free(q);
}

/* ---- MX
 * ------------------------------------------------------------------------------------
 */

static uint64_t rng_next(struct tern_resolver *r) {
  uint64_t x = r->rng;
  x ^= x << 13;
  x ^= x >> 7;
  x ^= x << 17;
  return r->rng = x;
}

static void mx_deliver(struct tern_dns_query *q, int status) {
  struct tern_mx_result res;
  struct tern_mx_host hosts[TERN__MX_HOSTS_MAX];
  struct sockaddr_storage *addrs = NULL;
  size_t total = 0, i, k, at = 0;
  bool secure = true;

  memset(&res, 0, sizeof res);
  memset(hosts, 0, sizeof hosts);
  res.status = status;
  res.why = status == TERN_DNS_OK ? "" : q->why;
  res.implicit = q->implicit;
  if (status == TERN_DNS_OK) {
    for (i = 0; i < q->nhosts; i++)
      total += q->hosts[i].n4 + q->hosts[i].n6;
    if (total > 0)
      addrs = calloc(total, sizeof *addrs);
    if (total > 0 && addrs == NULL) {
      res.status = TERN_DNS_TEMPFAIL;
      res.why = "out of memory";
    } else {
      for (i = 0; i < q->nhosts; i++) {
        struct tern__mx_state *h = &q->hosts[i];
        struct tern_mx_host *o = &hosts[i];
        int st = TERN_DNS_NODATA;
        o->name = h->name;
        o->pref = h->pref;
        o->addrs = addrs ? addrs + at : NULL;
        /* IPv6 first, then IPv4 (tern/resolve.h) */
        for (k = 0; k < h->n6; k++) {
          struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&addrs[at++];
          s6->sin6_family = AF_INET6;
          memcpy(&s6->sin6_addr, h->a6[k], 16);
        }
        for (k = 0; k < h->n4; k++) {
          struct sockaddr_in *s4 = (struct sockaddr_in *)&addrs[at++];
          s4->sin_family = AF_INET;
          memcpy(&s4->sin_addr, h->a4[k], 4);
        }
        o->naddrs = h->n4 + h->n6;
        /* No address: the worst family status explains why (bogus, then
         * tempfail, then nxdomain, then nodata). */
        if (o->naddrs > 0) {
          st = TERN_DNS_OK;
        } else {
          int fam[2] = {h->st4, h->st6}, f;
          int rank[] = {[TERN_DNS_OK] = 0,       [TERN_DNS_NODATA] = 1,
                        [TERN_DNS_NXDOMAIN] = 2, [TERN_DNS_NULLMX] = 0,
                        [TERN_DNS_TEMPFAIL] = 3, [TERN_DNS_BOGUS] = 4};
          for (f = 0; f < 2; f++)
            if (fam[f] >= 0 && rank[fam[f]] > rank[st])
              st = fam[f];
        }
        o->status = st;
        /* secure: every family that answered validated (tern/resolve.h);
         * a failed family is told apart (failed), never taken for an
         * insecure answer: that would turn DANE off (RFC 7672 §2.1.1) */
        {
          int fst[2] = {h->st4, h->st6};
          bool fsec[2] = {h->sec4, h->sec6}, answered = false;
          o->secure = true;
          o->failed = TERN_DNS_OK;
          for (int g = 0; g < 2; g++) {
            if (fst[g] < 0)
              continue; /* not asked */
            if (fst[g] == TERN_DNS_TEMPFAIL || fst[g] == TERN_DNS_BOGUS) {
              if (o->failed != TERN_DNS_BOGUS)
                o->failed = fst[g];
              continue;
            }
            answered = true;
            if (!fsec[g])
              o->secure = false;
          }
          if (!answered)
            o->secure = false;
        }
        /* the CNAME-expanded name (RFC 7672 §2.2.2): both families
         * that gave addresses must agree on it, else it is not used */
        {
          const char *c4 = h->n4 ? h->canon4 : "";
          const char *c6 = h->n6 ? h->canon6 : "";
          const char *c = c4[0] ? c4 : c6;
          if (c[0] && (!c4[0] || !c6[0] || strcmp(c4, c6) == 0) &&
              strcmp(c, h->name) != 0)
            o->canon = c;
        }
        if (!o->secure)
          secure = false;
      }
      res.hosts = hosts;
      res.nhosts = q->nhosts;
    }
  }
  /* An implicit MX rests on two answers: the denial of MX records and
   * the addresses. */
  res.secure = q->implicit ? (status == TERN_DNS_OK && secure && q->mx_secure)
                           : q->mx_secure;
  tern__query_unlink(q);
  q->in_cb = true;
  q->mx_cb(&res, q->ud);
  free(addrs);
  query_free(q);
}

static void addr_done(struct tern__sub *s, int err, struct ub_result *res) {
  struct tern_dns_query *q = s->owner;
  struct tern__mx_state *h = &q->hosts[s->idx];
  char why[TERN__WHY_MAX];
  int st = tern__sub_status(err, res, why, sizeof why);
  bool sec = res != NULL && res->secure && !res->bogus;
  size_t i;

  if (s->rrtype == RR_A) {
    h->st4 = st;
    h->sec4 = sec;
  } else {
    h->st6 = st;
    h->sec6 = sec;
  }
  if (st == TERN_DNS_OK) {
    char *canon = s->rrtype == RR_A ? h->canon4 : h->canon6;
    if (res->canonname == NULL ||
        tern__dns_name(res->canonname, canon, TERN__DNS_NAME_MAX) != 0)
      canon[0] = '\0';
    for (i = 0; res->data[i] != NULL; i++) {
      if (s->rrtype == RR_A && res->len[i] == 4 &&
          h->n4 < TERN__ADDRS_PER_FAMILY)
        memcpy(h->a4[h->n4++], res->data[i], 4);
      else if (s->rrtype == RR_AAAA && res->len[i] == 16 &&
               h->n6 < TERN__ADDRS_PER_FAMILY)
        memcpy(h->a6[h->n6++], res->data[i], 16);
    }
  }
  if (--q->pending == 0)
    mx_deliver(q, TERN_DNS_OK);
}

static void mx_lookup_addrs(struct tern_dns_query *q) {
  struct tern_resolver *r = q->r;
  size_t i;

  for (i = 0; i < q->nhosts; i++) {
    q->hosts[i].st4 = q->hosts[i].st6 = -1;
    if (r->ipv4) {
      q->pending++;
      if (!tern__sub_start(r, q->hosts[i].name, RR_A, addr_done, q, (int)i))
        goto nomem;
    }
    if (r->ipv6) {
      q->pending++;
      if (!tern__sub_start(r, q->hosts[i].name, RR_AAAA, addr_done, q, (int)i))
        goto nomem;
    }
  }
  if (q->pending == 0) /* neither family: nothing to ask */
    mx_deliver(q, TERN_DNS_OK);
  return;
nomem:
  tern__sub_cancel_owner(r, q);
  snprintf(q->why, sizeof q->why, "out of memory");
  mx_deliver(q, TERN_DNS_TEMPFAIL);
}

struct mx_rec {
  unsigned pref;
  uint64_t key;
  char name[TERN__DNS_NAME_MAX];
};

static int mx_cmp(const void *a, const void *b) {
  const struct mx_rec *x = a, *y = b;
  if (x->pref != y->pref)
    return x->pref < y->pref ? -1 : 1;
  return x->key < y->key ? -1 : x->key > y->key;
}

static void mx_done(struct tern__sub *s, int err, struct ub_result *res) {
  struct tern_dns_query *q = s->owner;
  struct mx_rec *recs = NULL;
  size_t n = 0, nrec = 0, i, k;
  bool root = false;
  int st = tern__sub_status(err, res, q->why, sizeof q->why);

  if (st != TERN_DNS_OK && st != TERN_DNS_NODATA) {
    if (st == TERN_DNS_NXDOMAIN)
      q->mx_secure = res != NULL && res->secure;
    mx_deliver(q, st);
    return;
  }
  q->mx_secure = res->secure && !res->bogus;
  q->hosts = calloc(TERN__MX_HOSTS_MAX, sizeof *q->hosts);
  if (q->hosts == NULL)
    goto nomem;
  if (st == TERN_DNS_NODATA) {
    /* RFC 5321 §5.1: no MX, the domain is its own mail host. */
    q->implicit = true;
    memcpy(q->hosts[0].name, q->name, sizeof q->name);
    q->nhosts = 1;
    mx_lookup_addrs(q);
    return;
  }
  while (res->data[n] != NULL)
    n++;
  recs = calloc(n ? n : 1, sizeof *recs);
  if (recs == NULL)
    goto nomem;
  for (i = 0; i < n; i++) {
    const uint8_t *p = (const uint8_t *)res->data[i];
    size_t len = (size_t)res->len[i];
    struct mx_rec *m = &recs[nrec];
    if (len < 3 || wire_name(p + 2, len - 2, m->name, sizeof m->name) == 0)
      continue; /* malformed or not a host name: unusable */
    m->pref = (unsigned)p[0] << 8 | p[1];
    if (m->name[0] == '\0') { /* "." : RFC 7505 null MX */
      root = true;
      continue;
    }
    m->key = rng_next(q->r);
    nrec++;
  }
  /* RFC 7505 §3: "0 ." alone says the domain takes no mail; next to
   * other records it is a mistake and is skipped. */
  if (nrec == 0) {
    free(recs);
    if (root) {
      snprintf(q->why, sizeof q->why, "the domain accepts no mail (null MX)");
      mx_deliver(q, TERN_DNS_NULLMX);
    } else {
      snprintf(q->why, sizeof q->why, "no usable MX host name");
      mx_deliver(q, TERN_DNS_TEMPFAIL);
    }
    return;
  }
  /* By preference; equal preferences in random order (RFC 5321 §5.1). */
  qsort(recs, nrec, sizeof *recs, mx_cmp);
  for (i = 0; i < nrec && q->nhosts < TERN__MX_HOSTS_MAX; i++) {
    bool dup = false;
    for (k = 0; k < q->nhosts; k++)
      if (strcmp(q->hosts[k].name, recs[i].name) == 0)
        dup = true;
    if (dup)
      continue;
    memcpy(q->hosts[q->nhosts].name, recs[i].name, sizeof recs[i].name);
    q->hosts[q->nhosts].pref = recs[i].pref;
    q->nhosts++;
  }
  free(recs);
  mx_lookup_addrs(q);
  return;
nomem:
  free(recs);
  snprintf(q->why, sizeof q->why, "out of memory");
  mx_deliver(q, TERN_DNS_TEMPFAIL);
}

static bool ip_literal(const char *d) {
  unsigned char buf[16];
  char tmp[64];
  size_t n = strlen(d);
  if (d[0] == '[')
    return true;
  if (n >= sizeof tmp)
    return false;
  memcpy(tmp, d, n + 1);
  if (n > 0 && tmp[n - 1] == '.')
    tmp[n - 1] = '\0';
  return inet_pton(AF_INET, tmp, buf) == 1 ||
         inet_pton(AF_INET6, tmp, buf) == 1;
}

int tern_resolve_mx(struct tern_resolver *r, const char *domain, tern_mx_cb cb,
                    void *ud, struct tern_dns_query **qp) {
  struct tern_dns_query *q;
  char name[TERN__DNS_NAME_MAX];

  if (qp)
    *qp = NULL;
  if (r == NULL || cb == NULL || domain == NULL || r->dying ||
      ip_literal(domain) || tern__dns_name(domain, name, sizeof name) != 0)
    return TERN_EINVAL;
  q = query_new(r, TERN__Q_MX, ud);
  if (q == NULL)
    return TERN_ENOMEM;
  q->mx_cb = cb;
  memcpy(q->name, name, sizeof name);
  if (!tern__sub_start(r, q->name, RR_MX, mx_done, q, 0)) {
    tern__query_unlink(q);
    query_free(q);
    return TERN_ENOMEM;
  }
  if (qp)
    *qp = q;
  return 0;
}

/* ---- TLSA
 * ------------------------------------------------------------------------------------
 */

static void tlsa_done(struct tern__sub *s, int err, struct ub_result *res) {
  struct tern_dns_query *q = s->owner;
  struct tern_tlsa_result out;
  struct tern_tlsa *recs = NULL;
  size_t n = 0, i;

  memset(&out, 0, sizeof out);
  out.status = tern__sub_status(err, res, q->why, sizeof q->why);
  out.why = q->why;
  out.secure = res != NULL && res->secure && !res->bogus;
  if (out.status == TERN_DNS_OK) {
    while (res->data[n] != NULL)
      n++;
    recs = calloc(n, sizeof *recs);
    if (recs == NULL) {
      out.status = TERN_DNS_TEMPFAIL;
      out.why = "out of memory";
      out.secure = false;
    } else {
      for (i = 0; i < n; i++) {
        const uint8_t *p = (const uint8_t *)res->data[i];
        if (res->len[i] < 3)
          continue; /* not even the three fields */
        recs[out.n].usage = p[0];
        recs[out.n].selector = p[1];
        recs[out.n].mtype = p[2];
        recs[out.n].data = p + 3;
        recs[out.n].len = (size_t)res->len[i] - 3;
        out.n++;
      }
      out.recs = recs;
      if (out.n == 0) {
        out.status = TERN_DNS_NODATA;
        snprintf(q->why, sizeof q->why, "only malformed TLSA records");
      }
    }
  }
  tern__query_unlink(q);
  q->in_cb = true;
  q->tlsa_cb(&out, q->ud);
  free(recs);
  query_free(q);
}

int tern_resolve_tlsa(struct tern_resolver *r, const char *host, unsigned port,
                      tern_tlsa_cb cb, void *ud, struct tern_dns_query **qp) {
  struct tern_dns_query *q;
  char name[TERN__DNS_NAME_MAX], qname[TERN__DNS_NAME_MAX + 16];

  if (qp)
    *qp = NULL;
  if (r == NULL || cb == NULL || host == NULL || r->dying || port == 0 ||
      port > 65535 || tern__dns_name(host, name, sizeof name) != 0)
    return TERN_EINVAL;
  snprintf(qname, sizeof qname, "_%u._tcp.%s", port, name);
  if (strlen(qname) > 253)
    return TERN_EINVAL;
  q = query_new(r, TERN__Q_TLSA, ud);
  if (q == NULL)
    return TERN_ENOMEM;
  q->tlsa_cb = cb;
  q->port = port;
  memcpy(q->name, name, sizeof name);
  if (!tern__sub_start(r, qname, RR_TLSA, tlsa_done, q, 0)) {
    tern__query_unlink(q);
    query_free(q);
    return TERN_ENOMEM;
  }
  if (qp)
    *qp = q;
  return 0;
}

/* ---- MTA-STS (the work is in mtasts_fetch.c)
 * ------------------------------------------------- */

int tern_resolve_mtasts(struct tern_resolver *r, const char *domain,
                        tern_mtasts_cb cb, void *ud,
                        struct tern_dns_query **qp) {
  struct tern_dns_query *q;
  char name[TERN__DNS_NAME_MAX];

  if (qp)
    *qp = NULL;
  if (r == NULL || cb == NULL || domain == NULL || r->dying ||
      tern__dns_name(domain, name, sizeof name) != 0 ||
      strlen(name) + sizeof "_mta-sts." > 254)
    return TERN_EINVAL;
  q = query_new(r, TERN__Q_MTASTS, ud);
  if (q == NULL)
    return TERN_ENOMEM;
  q->sts_cb = cb;
  memcpy(q->name, name, sizeof name);
  if (tern__sts_start(q) != 0) {
    tern__query_unlink(q);
    query_free(q);
    return TERN_ENOMEM;
  }
  if (qp)
    *qp = q;
  return 0;
}

uint64_t tern_resolver_mtasts_fetches(const struct tern_resolver *r) {
  return r ? r->fetches : 0;
}

/* ---- construction
 * ------------------------------------------------------------------------------
 */

/* "ADDR", "ADDR:PORT", "[V6]", "[V6]:PORT", "V6" -> unbound's "ADDR@PORT". */
static int forward_one(const char *tok, size_t n, char *out, size_t cap) {
  char addr[INET6_ADDRSTRLEN + 1];
  unsigned char bin[16];
  const char *port = NULL;
  size_t alen, colons = 0, i;
  unsigned pv = 0;

  for (i = 0; i < n; i++)
    colons += tok[i] == ':';
  if (n > 0 && tok[0] == '[') {
    const char *end = memchr(tok, ']', n);
    if (end == NULL)
      return TERN_EINVAL;
    alen = (size_t)(end - tok - 1);
    if (alen >= sizeof addr)
      return TERN_EINVAL;
    memcpy(addr, tok + 1, alen);
    addr[alen] = '\0';
    if ((size_t)(end - tok) + 1 < n) {
      if (end[1] != ':')
        return TERN_EINVAL;
      port = end + 2;
    }
  } else if (colons == 1) {
    const char *c = memchr(tok, ':', n);
    alen = (size_t)(c - tok);
    if (alen >= sizeof addr)
      return TERN_EINVAL;
    memcpy(addr, tok, alen);
    addr[alen] = '\0';
    port = c + 1;
  } else {
    if (n >= sizeof addr)
      return TERN_EINVAL;
    memcpy(addr, tok, n);
    addr[n] = '\0';
  }
  if (inet_pton(AF_INET, addr, bin) != 1 && inet_pton(AF_INET6, addr, bin) != 1)
    return TERN_EINVAL;
  if (port != NULL) {
    size_t plen = (size_t)(tok + n - port);
    uint64_t v;
    if (tern__parse_u64(port, plen, 65535, &v) != 0 || v == 0)
      return TERN_EINVAL;
    pv = (unsigned)v;
  }
  if (pv)
    snprintf(out, cap, "%.46s@%u", addr, pv);
  else
    snprintf(out, cap, "%.46s", addr);
  return 0;
}

static int set_forwarders(struct tern_resolver *r, const char *list) {
  const char *p = list;
  int count = 0;

  while (*p) {
    size_t n;
    char ub[80];
    while (*p == ' ' || *p == ',' || *p == '\t')
      p++;
    if (*p == '\0')
      break;
    n = strcspn(p, " ,\t");
    if (forward_one(p, n, ub, sizeof ub) != 0) {
      snprintf(r->err, sizeof r->err, "forward: bad address \"%.*s\"",
               (int)(n > 64 ? 64 : n), p);
      return TERN_EINVAL;
    }
    if (ub_ctx_set_fwd(r->ctx, ub) != 0) {
      snprintf(r->err, sizeof r->err, "forward: unbound refused \"%s\"", ub);
      return TERN_EINVAL;
    }
    count++;
    p += n;
  }
  if (count == 0) {
    snprintf(r->err, sizeof r->err, "forward: no address");
    return TERN_EINVAL;
  }
  return 0;
}

static bool readable(const char *f) { return access(f, R_OK) == 0; }

static int configure(struct tern_resolver *r,
                     const struct tern_resolver_options *o) {
  const char *ta = o->trust_anchor_file;
  int rc;

  /* A forwarder on 127.0.0.x (a local unbound, a test server) is fine. */
  if (ub_ctx_set_option(r->ctx, "do-not-query-localhost:", "no") != 0) {
    snprintf(r->err, sizeof r->err,
             "unbound: cannot set do-not-query-localhost");
    return TERN_EIO;
  }
  if (o->forward != NULL) {
    rc = set_forwarders(r, o->forward);
    if (rc != 0)
      return rc;
  } else {
    const char *rc_file = o->resolv_conf ? o->resolv_conf : "/etc/resolv.conf";
    rc = ub_ctx_resolvconf(r->ctx, rc_file);
    if (rc != 0) {
      snprintf(r->err, sizeof r->err, "%.150s: unreadable or malformed (%s)",
               rc_file, rc > 0 ? strerror(rc) : ub_strerror(rc));
      return TERN_EIO;
    }
  }
  if (o->hosts_file != NULL) {
    rc = ub_ctx_hosts(r->ctx, o->hosts_file);
    if (rc != 0) {
      snprintf(r->err, sizeof r->err, "%.150s: unreadable or malformed (%s)",
               o->hosts_file, rc > 0 ? strerror(rc) : ub_strerror(rc));
      return TERN_EIO;
    }
  }
  if (o->dnssec && ta == NULL) {
    if (readable("/usr/share/dns/root.key"))
      ta = "/usr/share/dns/root.key";
    else if (readable("/var/lib/unbound/root.key"))
      ta = "/var/lib/unbound/root.key";
  }
  if (o->dnssec && ta != NULL) {
    /* libunbound reads the file when the first query starts; check now
     * that it is there, so a typo shows at startup. */
    if (!readable(ta)) {
      snprintf(r->err, sizeof r->err,
               "%.150s: cannot read the trust anchor file (%s)", ta,
               strerror(errno));
      return TERN_EIO;
    }
    rc = ub_ctx_add_ta_file(r->ctx, ta);
    if (rc != 0) {
      snprintf(r->err, sizeof r->err, "%.150s: %s", ta, ub_strerror(rc));
      return TERN_EIO;
    }
  } else {
    /* No validation: every answer is insecure, never bogus. */
    if (ub_ctx_set_option(r->ctx, "module-config:", "iterator") != 0) {
      snprintf(r->err, sizeof r->err, "unbound: cannot turn validation off");
      return TERN_EIO;
    }
  }
  rc = ub_ctx_async(r->ctx, 1);
  if (rc != 0) {
    snprintf(r->err, sizeof r->err, "unbound: %s", ub_strerror(rc));
    return TERN_EIO;
  }
  /* libunbound reads the trust anchors when its first query starts. Ask
   * it "localhost." now, which its built-in local zone answers without
   * the network, so a malformed file fails here, at startup, not every
   * later query. */
  {
    struct ub_result *res = NULL;
    rc = ub_resolve(r->ctx, "localhost.", 1, 1, &res);
    if (res != NULL)
      ub_resolve_free(res);
    if (rc != 0) {
      snprintf(r->err, sizeof r->err, "%.150s: %s", ta ? ta : "unbound",
               rc == UB_INITFAIL ? "malformed trust anchor file"
                                 : ub_strerror(rc));
      return TERN_EIO;
    }
  }
  return 0;
}

int tern_resolver_new(struct tern_resolver **out, uv_loop_t *loop,
                      const struct tern_resolver_options *oin) {
  struct tern_resolver_options o;
  struct tern_resolver *r;
  int rc, fd;

  if (out == NULL)
    return TERN_EINVAL;
  *out = NULL;
  tern_resolver_options_init(&o);
  if (loop == NULL ||
      (oin != NULL && tern__copy_sized(&o, sizeof o, oin) != 0)) {
    snprintf(new_error, sizeof new_error, "bad arguments");
    return TERN_EINVAL;
  }
  if (o.mta_sts_port > 65535) {
    snprintf(new_error, sizeof new_error, "mta_sts_port: %u is not a port",
             o.mta_sts_port);
    return TERN_EINVAL;
  }
  r = calloc(1, sizeof *r);
  if (r == NULL)
    return TERN_ENOMEM;
  r->loop = loop;
  r->ipv4 = o.ipv4;
  r->ipv6 = o.ipv6;
  r->mta_sts = o.mta_sts;
  r->timeout_ms = o.timeout_ms ? o.timeout_ms : 30000;
  r->sts_timeout_ms = o.mta_sts_timeout_ms ? o.mta_sts_timeout_ms : 10000;
  r->sts_port = o.mta_sts_port ? o.mta_sts_port : 443;
  if (uv_random(NULL, NULL, &r->rng, sizeof r->rng, 0, NULL) != 0 ||
      r->rng == 0)
    r->rng = (uint64_t)(uintptr_t)r ^ uv_hrtime() ^ 0x9e3779b97f4a7c15ull;
  if (o.mta_sts_ca_file != NULL) {
    r->sts_ca_file = strdup(o.mta_sts_ca_file);
    if (r->sts_ca_file == NULL) {
      rc = TERN_ENOMEM;
      goto fail;
    }
  }
  if (o.mta_sts_cache_file != NULL) {
    r->sts_cache_file = strdup(o.mta_sts_cache_file);
    if (r->sts_cache_file == NULL) {
      rc = TERN_ENOMEM;
      goto fail;
    }
  }
  r->ctx = ub_ctx_create();
  if (r->ctx == NULL) {
    rc = TERN_ENOMEM;
    snprintf(r->err, sizeof r->err, "unbound: cannot create a context");
    goto fail;
  }
  rc = configure(r, &o);
  if (rc != 0)
    goto fail;
  fd = ub_fd(r->ctx);
  if (fd < 0 || uv_poll_init(loop, &r->poll, fd) != 0) {
    snprintf(r->err, sizeof r->err, "unbound: no file descriptor to poll");
    rc = TERN_EIO;
    goto fail;
  }
  if (uv_timer_init(loop, &r->timer) != 0) {
    /* the poll handle is initialised: close it, r goes in its callback */
    r->closing = 1;
    r->poll.data = r;
    ub_ctx_delete(r->ctx);
    free(r->sts_cache_file);
    uv_close((uv_handle_t *)&r->poll, on_closed);
    snprintf(new_error, sizeof new_error, "cannot make a timer");
    return TERN_EIO;
  }
  r->poll.data = r;
  r->timer.data = r;
  uv_poll_start(&r->poll, UV_READABLE, on_poll);
  /* Idle resolvers must not keep a loop alive. */
  uv_unref((uv_handle_t *)&r->poll);
  snprintf(r->err, sizeof r->err, "no error");
  /* the MTA-STS policies kept by an earlier run (a small file, once) */
  tern__sts_load(r);
  *out = r;
  return 0;
fail:
  snprintf(new_error, sizeof new_error, "%s",
           r->err[0] ? r->err : tern_strerror(rc));
  if (r->ctx)
    ub_ctx_delete(r->ctx);
  free(r->sts_ca_file);
  free(r->sts_cache_file);
  free(r);
  return rc;
}

void tern_resolver_free(struct tern_resolver *r) {
  if (r == NULL || r->torn)
    return;
  if (r->depth > 0) {
    r->dying = true;
    cancel_all(r);
    return;
  }
  teardown(r);
}

const char *tern_resolver_last_error(const struct tern_resolver *r) {
  if (r == NULL)
    return new_error[0] ? new_error : "no error";
  return r->err;
}
