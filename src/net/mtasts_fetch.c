/*
 * tern — MTA-STS policies (RFC 8461) for tern_resolve_mtasts()
 * (tern/resolve.h): the `_mta-sts` TXT lookup through libunbound, the
 * HTTPS fetch of the policy with libcurl, and the in-memory cache.
 *
 * A fetch belongs to a cache entry, not to a query: queries that ask for
 * a domain while its policy is being fetched wait for that fetch (one at
 * a time per domain), and a cancelled query only leaves the waiters.
 * The policy host's name is resolved through our own resolver (so a
 * private or test DNS applies) and handed to curl with CURLOPT_RESOLVE;
 * curl never calls getaddrinfo. The transfer itself is a blocking
 * curl_easy_perform() on libuv's thread pool (uv_queue_work): policies
 * are fetched rarely (the cache holds them for max_age), and a pool
 * thread keeps the loop free without driving curl's multi interface
 * from the loop (docs/decisions/0019-resolver.md).
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <arpa/inet.h>
#include <curl/curl.h>
#include <openssl/crypto.h>

#include "internal.h"

#include "resolve_internal.h"

#define STS_BODY_MAX (64u * 1024u)
#define STS_ADDRS_MAX 8 /* per family, for CURLOPT_RESOLVE */

struct tern__sts_entry {
  struct tern__sts_entry *next;
  char domain[TERN__DNS_NAME_MAX];
  bool have; /* a policy was fetched */
  char id[TERN__STS_ID_MAX];
  uint64_t expiry; /* uv_now() ms */
  uint64_t used;
  struct tern_mtasts_parsed parsed;
  struct tern_mtasts_policy pol; /* points into parsed and id */
  struct tern__sts_fetch *fetch; /* in flight */
};

struct tern__sts_fetch {
  struct tern_resolver *r; /* NULL: orphaned by tern_resolver_free */
  struct tern__sts_entry *e;
  char id[TERN__STS_ID_MAX]; /* the TXT id that asked for it */
  struct tern_dns_query *waiters;
  int pending;  /* address lookups */
  bool queued;  /* on the thread pool */
  bool waiting; /* in r->pool_wait */
  struct tern__sts_fetch *pool_next;
  uv_work_t work;
  atomic_int abort;
  /* for the thread: read only there */
  char host[TERN__DNS_NAME_MAX + 8]; /* mta-sts.DOMAIN */
  char resolve[(INET6_ADDRSTRLEN + 3) * 2 * STS_ADDRS_MAX + TERN__DNS_NAME_MAX +
               16];
  size_t naddrs;
  unsigned port, timeout_ms;
  char *ca_file;
  /* from the thread */
  char *body;
  size_t len;
  bool too_big;
  bool ok;
  char why[TERN__WHY_MAX];
};

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static CURLcode curl_init_rc = CURLE_FAILED_INIT;

static void curl_init(void) {
  curl_init_rc = curl_global_init(CURL_GLOBAL_DEFAULT);
}

/* ---- queries ------------------------------------------------------------ */

static void waiter_remove(struct tern__sts_fetch *f, struct tern_dns_query *q) {
  if (q->wprev)
    q->wprev->wnext = q->wnext;
  else if (f->waiters == q)
    f->waiters = q->wnext;
  if (q->wnext)
    q->wnext->wprev = q->wprev;
  q->wprev = q->wnext = NULL;
  q->fetch = NULL;
}

static void finish(struct tern_dns_query *q, const struct tern_mtasts_policy *p,
                   const char *why) {
  tern__query_unlink(q);
  q->in_cb = true;
  q->sts_cb(p, why, q->ud);
  free(q);
}

void tern__sts_cancel(struct tern_dns_query *q) {
  if (q->fetch != NULL)
    waiter_remove(q->fetch, q);
}

/* ---- the cache
 * ---------------------------------------------------------------- */

static struct tern__sts_entry *entry_find(struct tern_resolver *r,
                                          const char *domain) {
  struct tern__sts_entry *e;
  for (e = r->sts; e != NULL; e = e->next)
    if (strcmp(e->domain, domain) == 0)
      return e;
  return NULL;
}

static void entry_free(struct tern__sts_entry *e) {
  tern_mtasts_parsed_free(&e->parsed);
  free(e);
}

/* A new entry; when the cache is full the least recently used entry
 * without a fetch in flight goes (memory stays bounded). */
static struct tern__sts_entry *entry_new(struct tern_resolver *r,
                                         const char *domain) {
  struct tern__sts_entry *e, **pp, **victim = NULL;

  if (r->nsts >= TERN__STS_CACHE_MAX) {
    for (pp = &r->sts; *pp != NULL; pp = &(*pp)->next)
      if ((*pp)->fetch == NULL &&
          (victim == NULL || (*pp)->used < (*victim)->used))
        victim = pp;
    if (victim == NULL)
      return NULL;
    e = *victim;
    *victim = e->next;
    entry_free(e);
    r->nsts--;
  }
  e = calloc(1, sizeof *e);
  if (e == NULL)
    return NULL;
  snprintf(e->domain, sizeof e->domain, "%s", domain);
  e->next = r->sts;
  r->sts = e;
  r->nsts++;
  return e;
}

static bool entry_valid(const struct tern_resolver *r,
                        const struct tern__sts_entry *e) {
  return e != NULL && e->have && uv_now(r->loop) < e->expiry;
}

/* ---- the fetch
 * -------------------------------------------------------------------- */

static void fetch_free(struct tern__sts_fetch *f) {
  free(f->body);
  free(f->ca_file);
  free(f);
}

/* Every waiter gets the outcome; the fetch is done. */
static void fetch_complete(struct tern__sts_fetch *f,
                           const struct tern_mtasts_policy *p,
                           const char *why) {
  if (f->e != NULL)
    f->e->fetch = NULL;
  while (f->waiters != NULL) {
    struct tern_dns_query *q = f->waiters;
    waiter_remove(f, q);
    finish(q, p, why);
  }
  fetch_free(f);
}

/* RFC 8461 §5.1: a policy that cannot be refreshed stays in force until
 * it expires. */
static void fetch_fail(struct tern__sts_fetch *f, const char *why) {
  char buf[TERN__WHY_MAX + 40];
  struct tern__sts_entry *e = f->e;
  if (entry_valid(f->r, e)) {
    snprintf(buf, sizeof buf, "fetch failed: %s; cached policy kept", why);
    fetch_complete(f, &e->pol, buf);
  } else {
    snprintf(buf, sizeof buf, "fetch failed: %s", why);
    fetch_complete(f, NULL, buf);
  }
}

static size_t on_body(char *p, size_t size, size_t n, void *ud) {
  struct tern__sts_fetch *f = ud;
  size_t len = size * n;
  if (len > STS_BODY_MAX - f->len) {
    f->too_big = true;
    return 0; /* curl aborts the transfer */
  }
  if (f->body == NULL) {
    f->body = malloc(STS_BODY_MAX);
    if (f->body == NULL)
      return 0;
  }
  memcpy(f->body + f->len, p, len);
  f->len += len;
  return len;
}

static int on_progress(void *ud, curl_off_t a, curl_off_t b, curl_off_t c,
                       curl_off_t d) {
  struct tern__sts_fetch *f = ud;
  (void)a, (void)b, (void)c, (void)d;
  return atomic_load(&f->abort) ? 1 : 0;
}

/* "text/plain", any case, alone or with parameters (RFC 8461 §3.2). */
static bool text_plain(const char *ct) {
  static const char want[] = "text/plain";
  size_t i;
  if (ct == NULL)
    return false;
  for (i = 0; i < sizeof want - 1; i++) {
    char c = ct[i];
    if (c >= 'A' && c <= 'Z')
      c = (char)(c + 32);
    if (c != want[i])
      return false;
  }
  return ct[i] == '\0' || ct[i] == ';' || ct[i] == ' ' || ct[i] == '\t';
}

/* On a pool thread: blocking is allowed here, and only here. */
static void fetch_work(uv_work_t *w) {
  struct tern__sts_fetch *f = w->data;
  char url[TERN__DNS_NAME_MAX + 64], err[CURL_ERROR_SIZE];
  struct curl_slist *res = NULL;
  CURL *c = NULL;
  CURLcode rc;
  long code = 0;
  char *ct = NULL;

  pthread_once(&curl_once, curl_init);
  if (curl_init_rc != CURLE_OK) {
    snprintf(f->why, sizeof f->why, "libcurl: %s",
             curl_easy_strerror(curl_init_rc));
    return;
  }
  if (f->port == 443)
    snprintf(url, sizeof url, "https://%s/.well-known/mta-sts.txt", f->host);
  else
    snprintf(url, sizeof url, "https://%s:%u/.well-known/mta-sts.txt", f->host,
             f->port);
  c = curl_easy_init();
  res = curl_slist_append(NULL, f->resolve);
  if (c == NULL || res == NULL) {
    snprintf(f->why, sizeof f->why, "out of memory");
    goto done;
  }
  err[0] = '\0';
  curl_easy_setopt(c, CURLOPT_URL, url);
  curl_easy_setopt(c, CURLOPT_RESOLVE, res);
#if LIBCURL_VERSION_NUM >= 0x075500
  curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "https");
#else
  curl_easy_setopt(c, CURLOPT_PROTOCOLS, (long)CURLPROTO_HTTPS);
#endif
  /* §3.3: "senders MUST NOT follow HTTP redirects" */
  curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 0L);
  curl_easy_setopt(c, CURLOPT_SSL_VERIFYPEER, 1L);
  curl_easy_setopt(c, CURLOPT_SSL_VERIFYHOST, 2L);
  curl_easy_setopt(c, CURLOPT_SSLVERSION, (long)CURL_SSLVERSION_TLSv1_2);
  if (f->ca_file != NULL)
    curl_easy_setopt(c, CURLOPT_CAINFO, f->ca_file);
  curl_easy_setopt(c, CURLOPT_PROXY, ""); /* never an environment proxy */
  curl_easy_setopt(c, CURLOPT_NOPROXY, "*");
  curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, (long)f->timeout_ms);
  curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, (long)f->timeout_ms);
  curl_easy_setopt(c, CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)STS_BODY_MAX);
  curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
  curl_easy_setopt(c, CURLOPT_WRITEDATA, f);
  curl_easy_setopt(c, CURLOPT_XFERINFOFUNCTION, on_progress);
  curl_easy_setopt(c, CURLOPT_XFERINFODATA, f);
  curl_easy_setopt(c, CURLOPT_NOPROGRESS, 0L);
  curl_easy_setopt(c, CURLOPT_USERAGENT, "tern (MTA-STS)");
  curl_easy_setopt(c, CURLOPT_ERRORBUFFER, err);
  rc = curl_easy_perform(c);
  if (f->too_big || rc == CURLE_FILESIZE_EXCEEDED) {
    snprintf(f->why, sizeof f->why, "policy larger than 64 KiB");
    goto done;
  }
  if (rc != CURLE_OK) {
    snprintf(f->why, sizeof f->why, "%.100s: %.140s", url,
             err[0] ? err : curl_easy_strerror(rc));
    goto done;
  }
  curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &code);
  if (code != 200) {
    snprintf(f->why, sizeof f->why,
             "%.100s: HTTP status %ld (want 200; "
             "redirects are not followed)",
             url, code);
    goto done;
  }
  curl_easy_getinfo(c, CURLINFO_CONTENT_TYPE, &ct);
  if (!text_plain(ct)) {
    snprintf(f->why, sizeof f->why,
             "%.100s: Content-Type \"%.60s\", not text/plain", url,
             ct ? ct : "");
    goto done;
  }
  f->ok = true;
done:
  curl_slist_free_all(res);
  if (c != NULL)
    curl_easy_cleanup(c);
  /* OpenSSL keeps per-thread state (its error queue) that a pool thread,
   * which never ends, would otherwise hold until exit. */
  OPENSSL_thread_stop();
}

static void pool_next(struct tern_resolver *r);

static void fetch_after(uv_work_t *w, int status) {
  struct tern__sts_fetch *f = w->data;
  struct tern_resolver *r = f->r;
  struct tern__sts_entry *e = f->e;
  struct tern_mtasts_parsed parsed;
  int rc;

  if (r == NULL) { /* the resolver is gone */
    fetch_free(f);
    return;
  }
  tern__enter(r);
  r->pool_busy--;
  if (status != 0) {
    fetch_fail(f, "cancelled");
  } else if (!f->ok) {
    fetch_fail(f, f->why);
  } else if ((rc = tern_mtasts_policy_parse(f->body, f->len, &parsed)) != 0) {
    char why[TERN__WHY_MAX];
    snprintf(why, sizeof why, "policy of %.100s: %s", f->host,
             rc == TERN_ENOMEM ? "out of memory" : "malformed (RFC 8461 §3.2)");
    fetch_fail(f, why);
  } else {
    tern_mtasts_parsed_free(&e->parsed);
    e->parsed = parsed;
    e->have = true;
    memcpy(e->id, f->id, sizeof e->id);
    e->expiry = uv_now(r->loop) + (uint64_t)parsed.max_age * 1000u;
    e->pol.mode = (enum tern_mtasts_mode)parsed.mode;
    e->pol.mx = (const char *const *)parsed.mx;
    e->pol.nmx = parsed.nmx;
    e->pol.max_age = parsed.max_age;
    e->pol.id = e->id;
    fetch_complete(f, &e->pol, "fetched");
  }
  if (!r->dying)
    pool_next(r);
  tern__leave(r);
}

/* Onto the thread pool. */
static void fetch_queue(struct tern__sts_fetch *f) {
  struct tern_resolver *r = f->r;
  f->queued = true;
  r->fetches++;
  r->pool_busy++;
  if (uv_queue_work(r->loop, &f->work, fetch_work, fetch_after) != 0) {
    f->queued = false;
    r->pool_busy--;
    fetch_fail(f, "cannot queue the fetch");
  }
}

/* A pool slot came free: the next waiting fetch, if any. */
static void pool_next(struct tern_resolver *r) {
  while (r->pool_busy < TERN__STS_POOL_MAX && r->pool_wait != NULL) {
    struct tern__sts_fetch *f = r->pool_wait;
    r->pool_wait = f->pool_next;
    if (r->pool_wait == NULL)
      r->pool_wait_tail = NULL;
    f->pool_next = NULL;
    f->waiting = false;
    fetch_queue(f);
  }
}

static void fetch_addr_done(struct tern__sub *s, int err,
                            struct ub_result *res) {
  struct tern__sts_fetch *f = s->owner;
  struct tern_resolver *r = f->r;
  char why[TERN__WHY_MAX];
  int st = tern__sub_status(err, res, why, sizeof why);
  size_t i, n = 0;

  if (st == TERN_DNS_OK) {
    for (i = 0; res->data[i] != NULL && n < STS_ADDRS_MAX; i++) {
      char a[INET6_ADDRSTRLEN];
      size_t at = strlen(f->resolve);
      if (s->rrtype == 1 && res->len[i] == 4 &&
          inet_ntop(AF_INET, res->data[i], a, sizeof a)) {
        snprintf(f->resolve + at, sizeof f->resolve - at, "%s%s",
                 f->naddrs ? "," : "", a);
      } else if (s->rrtype == 28 && res->len[i] == 16 &&
                 inet_ntop(AF_INET6, res->data[i], a, sizeof a)) {
        snprintf(f->resolve + at, sizeof f->resolve - at, "%s[%s]",
                 f->naddrs ? "," : "", a);
      } else {
        continue;
      }
      f->naddrs++;
      n++;
    }
  }
  if (--f->pending > 0)
    return;
  if (f->naddrs == 0) {
    char msg[TERN__WHY_MAX + 64];
    snprintf(msg, sizeof msg, "%.100s: no address (%.120s)", f->host,
             st == TERN_DNS_OK ? "none usable" : why);
    fetch_fail(f, msg);
    return;
  }
  if (r->pool_busy >= TERN__STS_POOL_MAX) {
    f->waiting = true;
    if (r->pool_wait_tail)
      r->pool_wait_tail->pool_next = f;
    else
      r->pool_wait = f;
    r->pool_wait_tail = f;
    return;
  }
  fetch_queue(f);
}

static int fetch_start(struct tern_resolver *r, struct tern__sts_entry *e,
                       const char *id) {
  struct tern__sts_fetch *f = calloc(1, sizeof *f);

  if (f == NULL)
    return TERN_ENOMEM;
  f->r = r;
  f->e = e;
  f->work.data = f;
  atomic_init(&f->abort, 0);
  snprintf(f->id, sizeof f->id, "%s", id);
  snprintf(f->host, sizeof f->host, "mta-sts.%s", e->domain);
  f->port = r->sts_port;
  f->timeout_ms = r->sts_timeout_ms;
  snprintf(f->resolve, sizeof f->resolve, "%s:%u:", f->host, f->port);
  if (r->sts_ca_file != NULL && (f->ca_file = strdup(r->sts_ca_file)) == NULL) {
    free(f);
    return TERN_ENOMEM;
  }
  e->fetch = f;
  if (r->ipv4) {
    f->pending++;
    if (!tern__sub_start(r, f->host, 1, fetch_addr_done, f, 0))
      goto nomem;
  }
  if (r->ipv6) {
    f->pending++;
    if (!tern__sub_start(r, f->host, 28, fetch_addr_done, f, 0))
      goto nomem;
  }
  if (f->pending == 0) {
    /* neither family: fail it through a deferred step */
    f->pending = 1;
    if (!tern__sub_start(r, NULL, 1, fetch_addr_done, f, 0))
      goto nomem;
  }
  return 0;
nomem:
  tern__sub_cancel_owner(r, f);
  e->fetch = NULL;
  fetch_free(f);
  return TERN_ENOMEM;
}

/* ---- the TXT record
 * ----------------------------------------------------------- */

/* RFC 8461 §3.1: "If multiple TXT records for _mta-sts are returned by
 * the resolver, records that do not begin with "v=STSv1;" are discarded.
 * If the number of resulting records is not one, or if the resulting
 * record is syntactically invalid, senders MUST assume the recipient
 * domain does not have an available MTA-STS policy." Returns 0 with the
 * id, or 1 with words in why. A record's strings are joined. */
static int txt_id(const struct ub_result *res, char *id, size_t cap, char *why,
                  size_t wcap) {
  char *txt = NULL, *one = NULL;
  size_t i, k, n = 0, onelen = 0, count = 0;
  int rc = 1;

  for (i = 0; res->data[i] != NULL; i++) {
    const uint8_t *p = (const uint8_t *)res->data[i];
    size_t len = (size_t)res->len[i];
    free(txt);
    txt = malloc(len ? len : 1);
    if (txt == NULL) {
      snprintf(why, wcap, "out of memory");
      goto out;
    }
    n = 0;
    for (k = 0; k < len;) {
      size_t l = p[k++];
      if (l > len - k)
        l = len - k;
      memcpy(txt + n, p + k, l);
      n += l;
      k += l;
    }
    if (n < 7 || memcmp(txt, "v=STSv1", 7) != 0 ||
        (n > 7 && txt[7] != ';' && txt[7] != ' ' && txt[7] != '\t'))
      continue;
    count++;
    free(one);
    one = txt;
    onelen = n;
    txt = NULL;
  }
  if (count == 0) {
    snprintf(why, wcap, "no _mta-sts record");
  } else if (count > 1) {
    snprintf(why, wcap, "no _mta-sts record (several v=STSv1 records)");
  } else if (tern_mtasts_txt_parse(one, onelen, id, cap) != 0) {
    snprintf(why, wcap, "no _mta-sts record (malformed v=STSv1 record)");
  } else {
    rc = 0;
  }
out:
  free(txt);
  free(one);
  return rc;
}

static void txt_done(struct tern__sub *s, int err, struct ub_result *res) {
  struct tern_dns_query *q = s->owner;
  struct tern_resolver *r = q->r;
  struct tern__sts_entry *e = entry_find(r, q->name);
  char id[TERN__STS_ID_MAX], why[TERN__WHY_MAX], buf[TERN__WHY_MAX + 32];
  int st = tern__sub_status(err, res, why, sizeof why);

  if (e != NULL)
    e->used = uv_now(r->loop);
  if (st == TERN_DNS_NXDOMAIN || st == TERN_DNS_NODATA) {
    snprintf(why, sizeof why, "no _mta-sts record");
    st = -1;
  } else if (st == TERN_DNS_OK &&
             txt_id(res, id, sizeof id, why, sizeof why) != 0) {
    st = -1;
  }
  if (st != TERN_DNS_OK) {
    /* No record, or none readable now: a cached policy stays (§5.1). */
    if (entry_valid(r, e)) {
      snprintf(buf, sizeof buf, "cached (%s)", why);
      finish(q, &e->pol, buf);
    } else if (st == -1) {
      finish(q, NULL, why);
    } else {
      snprintf(buf, sizeof buf, "_mta-sts lookup failed: %s", why);
      finish(q, NULL, buf);
    }
    return;
  }
  if (entry_valid(r, e) && strcmp(e->id, id) == 0) {
    finish(q, &e->pol, "cached");
    return;
  }
  if (e == NULL && (e = entry_new(r, q->name)) == NULL) {
    finish(q, NULL, "fetch failed: too many policy fetches at once");
    return;
  }
  e->used = uv_now(r->loop);
  if (e->fetch == NULL && fetch_start(r, e, id) != 0) {
    finish(q, entry_valid(r, e) ? &e->pol : NULL,
           "fetch failed: out of memory");
    return;
  }
  /* join the fetch in flight (ours or an earlier one) */
  q->fetch = e->fetch;
  q->wprev = NULL;
  q->wnext = e->fetch->waiters;
  if (q->wnext)
    q->wnext->wprev = q;
  e->fetch->waiters = q;
}

static void off_done(struct tern__sub *s, int err, struct ub_result *res) {
  (void)err, (void)res;
  finish(s->owner, NULL, "MTA-STS is off");
}

int tern__sts_start(struct tern_dns_query *q) {
  struct tern_resolver *r = q->r;
  char name[TERN__DNS_NAME_MAX + 16];

  if (!r->mta_sts)
    return tern__sub_start(r, NULL, 16, off_done, q, 0) ? 0 : TERN_ENOMEM;
  snprintf(name, sizeof name, "_mta-sts.%s", q->name);
  return tern__sub_start(r, name, 16 /* TXT */, txt_done, q, 0) ? 0
                                                                : TERN_ENOMEM;
}

void tern__sts_free_all(struct tern_resolver *r) {
  /* the waiting fetches belong to entries: freed with them below */
  r->pool_wait = r->pool_wait_tail = NULL;
  while (r->sts != NULL) {
    struct tern__sts_entry *e = r->sts;
    struct tern__sts_fetch *f = e->fetch;
    r->sts = e->next;
    if (f != NULL) {
      tern__sub_cancel_owner(r, f);
      while (f->waiters != NULL)
        waiter_remove(f, f->waiters);
      if (f->queued) {
        /* On the pool, or about to be: fetch_after frees it. */
        f->r = NULL;
        f->e = NULL;
        atomic_store(&f->abort, 1);
        uv_cancel((uv_req_t *)&f->work);
      } else {
        fetch_free(f);
      }
    }
    entry_free(e);
  }
  r->nsts = 0;
}
