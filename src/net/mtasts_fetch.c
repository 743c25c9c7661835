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
 * curl never calls getaddrinfo. The transfers run on the loop with
 * libcurl's multi interface (curl_multi_socket_action, a uv_poll_t per
 * socket, one uv_timer_t): every fetch starts as soon as its addresses
 * are known, next to the others, each bounded by its own timeout, so a
 * slow policy host delays no other domain; no thread is involved, and
 * freeing the resolver removes the transfers in flight at once
 * (docs/decisions/0019-resolver.md).
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <sys/stat.h>
#include <curl/curl.h>

#include "internal.h"

#include "resolve_internal.h"

#define STS_BODY_MAX (64u * 1024u)
#define STS_ADDRS_MAX 8 /* per family, for CURLOPT_RESOLVE */

struct tern__sts_entry {
  struct tern__sts_entry *next;
  char domain[TERN__DNS_NAME_MAX];
  bool have; /* a policy was fetched */
  char id[TERN__STS_ID_MAX];
  int64_t expiry; /* wall clock, seconds (it outlives a restart) */
  uint64_t used;  /* uv_now() ms */
  size_t bytes;   /* entry_bytes() */
  struct tern_mtasts_parsed parsed;
  struct tern_mtasts_policy pol; /* points into parsed and id */
  struct tern__sts_fetch *fetch; /* in flight */
};

struct tern__sts_fetch {
  struct tern_resolver *r;
  struct tern__sts_entry *e;
  char id[TERN__STS_ID_MAX]; /* the TXT id that asked for it */
  struct tern_dns_query *waiters;
  int pending; /* address lookups */
  CURL *easy;  /* on the multi handle, while the transfer runs */
  struct curl_slist *res;
  char host[TERN__DNS_NAME_MAX + 8]; /* mta-sts.DOMAIN */
  char url[TERN__DNS_NAME_MAX + 64];
  char resolve[(INET6_ADDRSTRLEN + 3) * 2 * STS_ADDRS_MAX + TERN__DNS_NAME_MAX +
               16];
  size_t naddrs;
  char err[CURL_ERROR_SIZE];
  char *body;
  size_t len;
  bool too_big;
  struct tern__sts_fetch *wait_next; /* in m->wait */
  uint64_t wait_until;               /* uv_now() ms */
};

/* libcurl's multi interface on the loop: one uv_poll_t per socket curl
 * tells us about, one uv_timer_t for the timeout curl asks for. Made at
 * the first fetch; its handles close (and free their memory) on their
 * own when the resolver goes, so they may outlive it. */
struct sts_sock {
  uv_poll_t poll;
  curl_socket_t fd;
  struct tern__sts_multi *m;
  struct sts_sock *prev, *next;
};

struct tern__sts_multi {
  struct tern_resolver *r;
  CURLM *multi;
  uv_timer_t timer;
  struct sts_sock *socks;
  unsigned running; /* easy handles on the multi */
  /* Fetches that found every slot taken, oldest first: each starts when
   * a slot frees, or fails "busy" if its own timeout passed first. */
  struct tern__sts_fetch *wait, *wait_tail;
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

static int64_t wall_now(void) { return (int64_t)time(NULL); }

static struct tern__sts_entry *entry_find(struct tern_resolver *r,
                                          const char *domain) {
  struct tern__sts_entry *e;
  for (e = r->sts; e != NULL; e = e->next)
    if (strcmp(e->domain, domain) == 0)
      return e;
  return NULL;
}

/* What an entry costs: itself and its policy's patterns. */
static size_t entry_bytes(const struct tern__sts_entry *e) {
  size_t n = sizeof *e, i;
  for (i = 0; i < e->parsed.nmx; i++)
    n += sizeof(char *) + strlen(e->parsed.mx[i]) + 1;
  return n;
}

static void entry_unlink_free(struct tern_resolver *r,
                              struct tern__sts_entry **pp) {
  struct tern__sts_entry *e = *pp;
  *pp = e->next;
  r->nsts--;
  r->sts_bytes -= e->bytes;
  tern_mtasts_parsed_free(&e->parsed);
  free(e);
}

static bool entry_valid(const struct tern_resolver *r,
                        const struct tern__sts_entry *e) {
  (void)r;
  return e != NULL && e->have && wall_now() < e->expiry;
}

/* Which entry goes first when the cache is full: one with no policy or
 * an expired one, then testing/none, enforce last; RFC 8461 §5.1 wants
 * an enforce policy to last, and a flood of other domains must not push
 * it out. */
static int entry_rank(const struct tern_resolver *r,
                      const struct tern__sts_entry *e) {
  if (!entry_valid(r, e))
    return 0;
  return e->pol.mode == TERN_MTASTS_ENFORCE ? 2 : 1;
}

/* Drop one entry (not `keep`, none with a fetch in flight): the lowest
 * rank, least recently used. false: nothing could go. */
static bool entry_evict(struct tern_resolver *r,
                        const struct tern__sts_entry *keep) {
  struct tern__sts_entry **pp, **victim = NULL;
  int vrank = 3;

  for (pp = &r->sts; *pp != NULL; pp = &(*pp)->next) {
    int rank;
    if ((*pp)->fetch != NULL || *pp == keep)
      continue;
    rank = entry_rank(r, *pp);
    if (victim == NULL || rank < vrank ||
        (rank == vrank && (*pp)->used < (*victim)->used)) {
      victim = pp;
      vrank = rank;
    }
  }
  if (victim == NULL)
    return false;
  entry_unlink_free(r, victim);
  return true;
}

/* Within the bounds again after `keep` grew. */
static void cache_trim(struct tern_resolver *r,
                       const struct tern__sts_entry *keep) {
  while (
      (r->nsts > TERN__STS_CACHE_MAX || r->sts_bytes > TERN__STS_CACHE_BYTES) &&
      entry_evict(r, keep))
    ;
}

/* A new entry, at the head; when the cache is full one goes first
 * (memory stays bounded). */
static struct tern__sts_entry *entry_new(struct tern_resolver *r,
                                         const char *domain) {
  struct tern__sts_entry *e;

  if (r->nsts >= TERN__STS_CACHE_MAX && !entry_evict(r, NULL))
    return NULL;
  e = calloc(1, sizeof *e);
  if (e == NULL)
    return NULL;
  snprintf(e->domain, sizeof e->domain, "%s", domain);
  e->bytes = entry_bytes(e);
  e->next = r->sts;
  r->sts = e;
  r->nsts++;
  r->sts_bytes += e->bytes;
  return e;
}

/* The entry takes the parsed policy (fetched, or loaded from the file). */
static void entry_set(struct tern_resolver *r, struct tern__sts_entry *e,
                      struct tern_mtasts_parsed *parsed, const char *id,
                      int64_t expiry) {
  tern_mtasts_parsed_free(&e->parsed);
  e->parsed = *parsed;
  e->have = true;
  snprintf(e->id, sizeof e->id, "%s", id);
  e->expiry = expiry;
  e->pol.mode = (enum tern_mtasts_mode)parsed->mode;
  e->pol.mx = (const char *const *)parsed->mx;
  e->pol.nmx = parsed->nmx;
  e->pol.max_age = parsed->max_age;
  e->pol.id = e->id;
  r->sts_bytes -= e->bytes;
  e->bytes = entry_bytes(e);
  r->sts_bytes += e->bytes;
  cache_trim(r, e);
}

/* ---- the cache file
 * ---------------------------------------------------------------
 * One line per policy: "DOMAIN ID MODE MAX_AGE EXPIRES MX,MX,..." (MODE
 * none/testing/enforce, EXPIRES in seconds since the epoch, "-" for no
 * mx). Read back through the policy parser, so a line loads only as a
 * policy a policy host could have served. */

struct tern__sts_store {
  uv_work_t work;
  struct tern_resolver *r; /* NULL: the resolver is gone */
  char *path;
  char *buf, *next; /* this write; one more after it (at teardown) */
  size_t len, nextlen;
  char *extra; /* lines of other writers kept (store_merge) */
  size_t xlen;
  int err; /* errno of a failed write */
  const char *step;
};

static atomic_ulong store_seq; /* temporary file names */

static const char *const mode_names[] = {"none", "testing", "enforce"};

static char *cache_serialize(struct tern_resolver *r, size_t *lenp) {
  struct tern__sts_entry *e;
  size_t cap = 64, len = 0, i;
  char *buf;

  for (e = r->sts; e != NULL; e = e->next)
    if (entry_valid(r, e))
      cap += e->bytes + 128;
  buf = malloc(cap);
  if (buf == NULL)
    return NULL;
  len = (size_t)snprintf(buf, cap, "# tern MTA-STS policy cache 1\n");
  for (e = r->sts; e != NULL; e = e->next) {
    if (!entry_valid(r, e) || e->pol.mode > TERN_MTASTS_ENFORCE)
      continue;
    len += (size_t)snprintf(buf + len, cap - len, "%s %s %s %u %lld ",
                            e->domain, e->id, mode_names[e->pol.mode],
                            (unsigned)e->pol.max_age, (long long)e->expiry);
    for (i = 0; i < e->pol.nmx; i++)
      len += (size_t)snprintf(buf + len, cap - len, "%s%s", i ? "," : "",
                              e->pol.mx[i]);
    len +=
        (size_t)snprintf(buf + len, cap - len, "%s\n", e->pol.nmx ? "" : "-");
  }
  *lenp = len;
  return buf;
}

static int cmp_str(const void *a, const void *b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}

/* On a pool thread: the lines of the file as it is now for domains this
 * resolver does not hold, still unexpired, go to s->extra (up to the
 * cache's bound in all). The resolvers of other loops write the same
 * file; without this the last writer would drop the policies the others
 * fetched. Lines are not checked here: loading checks them. */
/* The cache file for reading, only when it is a regular file: a FIFO or
 * a device someone put in its place must not block the loop or the pool
 * (O_NONBLOCK for the open itself), a symlink is not followed. */
static FILE *open_cache(const char *path) {
  int fd = open(path, O_RDONLY | O_NONBLOCK | O_NOFOLLOW | O_CLOEXEC);
  struct stat st;
  FILE *fp;
  if (fd < 0)
    return NULL;
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) ||
      (fp = fdopen(fd, "r")) == NULL) {
    close(fd);
    return NULL;
  }
  return fp;
}

static void store_merge(struct tern__sts_store *s) {
  char **mine = NULL, *copy = NULL, *p, *line = NULL;
  size_t nmine = 0, cap = 0, xcap = 0, total;
  long long now = (long long)time(NULL);
  ssize_t n;
  FILE *fp = open_cache(s->path);

  if (fp == NULL)
    return;
  copy = malloc(s->len + 1);
  mine = malloc((s->len / 8 + 1) * sizeof *mine);
  if (copy == NULL || mine == NULL)
    goto out;
  memcpy(copy, s->buf, s->len);
  copy[s->len] = '\0';
  for (p = copy; *p;) {
    char *eol = strchr(p, '\n'), *sp;
    if (eol == NULL)
      break;
    *eol = '\0';
    if (*p != '#' && (sp = strchr(p, ' ')) != NULL) {
      *sp = '\0';
      mine[nmine++] = p;
    }
    p = eol + 1;
  }
  qsort(mine, nmine, sizeof *mine, cmp_str);
  total = nmine;
  while (total < TERN__STS_CACHE_MAX && (n = getline(&line, &cap, fp)) > 0) {
    char dom[TERN__DNS_NAME_MAX], *key = dom, *f = line;
    long long exp;
    int k;
    if (line[0] == '#' || (size_t)n > STS_BODY_MAX + 512 ||
        line[n - 1] != '\n' || sscanf(line, "%253s", dom) != 1 ||
        bsearch(&key, mine, nmine, sizeof *mine, cmp_str) != NULL)
      continue;
    for (k = 0; k < 4 && f != NULL; k++)
      if ((f = strchr(f, ' ')) != NULL)
        f++;
    if (f == NULL || sscanf(f, "%lld", &exp) != 1 || exp <= now)
      continue;
    if (s->xlen + (size_t)n > xcap) {
      size_t nc = (xcap ? xcap * 2 : 65536) + (size_t)n;
      char *nx = realloc(s->extra, nc);
      if (nx == NULL)
        break;
      s->extra = nx;
      xcap = nc;
    }
    memcpy(s->extra + s->xlen, line, (size_t)n);
    s->xlen += (size_t)n;
    total++;
  }
out:
  free(line);
  free(mine);
  free(copy);
  fclose(fp);
}

/* All of a buffer to fd; 0 or an errno. */
static int write_all(int fd, const char *b, size_t len) {
  size_t off = 0;
  while (off < len) {
    ssize_t n = write(fd, b + off, len - off);
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0)
      return n < 0 ? errno : EIO;
    off += (size_t)n;
  }
  return 0;
}

/* On a pool thread: a temporary file beside the cache, fsync, rename,
 * fsync the directory. */
static void store_work(uv_work_t *w) {
  struct tern__sts_store *s = w->data;
  char tmp[4096], dir[4096];
  char *slash;
  int fd;

  s->err = 0;
  free(s->extra);
  s->extra = NULL;
  s->xlen = 0;
  store_merge(s);
  /* unique per write: resolvers of other loops may share the file */
  snprintf(tmp, sizeof tmp, "%s.tmp.%ld.%lu", s->path, (long)getpid(),
           (unsigned long)atomic_fetch_add(&store_seq, 1));
  fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC,
            0600);
  if (fd < 0) {
    s->err = errno, s->step = "open";
    return;
  }
  if ((s->err = write_all(fd, s->buf, s->len)) != 0 ||
      (s->err = write_all(fd, s->extra ? s->extra : "", s->xlen)) != 0)
    s->step = "write";
  if (s->err == 0 && fsync(fd) != 0)
    s->err = errno, s->step = "fsync";
  if (close(fd) != 0 && s->err == 0)
    s->err = errno, s->step = "close";
  if (s->err == 0 && rename(tmp, s->path) != 0)
    s->err = errno, s->step = "rename";
  if (s->err != 0) {
    unlink(tmp);
    return;
  }
  snprintf(dir, sizeof dir, "%s", s->path);
  slash = strrchr(dir, '/');
  if (slash == dir)
    slash[1] = '\0';
  else if (slash != NULL)
    *slash = '\0';
  else
    snprintf(dir, sizeof dir, ".");
  fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd >= 0) {
    (void)fsync(fd);
    close(fd);
  }
}

static void store_free(struct tern__sts_store *s) {
  free(s->path);
  free(s->buf);
  free(s->next);
  free(s->extra);
  free(s);
}

static void store_after(uv_work_t *w, int status);

static bool store_queue(struct tern__sts_store *s, uv_loop_t *loop) {
  s->work.data = s;
  return uv_queue_work(loop, &s->work, store_work, store_after) == 0;
}

/* Write the cache file now, or after the write in flight. */
static void store_kick(struct tern_resolver *r) {
  struct tern__sts_store *s;

  if (r->sts_cache_file == NULL)
    return;
  if (r->sts_store != NULL) {
    r->sts_dirty = true;
    return;
  }
  r->sts_dirty = false;
  s = calloc(1, sizeof *s);
  if (s == NULL || (s->path = strdup(r->sts_cache_file)) == NULL ||
      (s->buf = cache_serialize(r, &s->len)) == NULL) {
    if (s)
      store_free(s);
    snprintf(r->err, sizeof r->err, "%.150s: not written: out of memory",
             r->sts_cache_file);
    return;
  }
  s->r = r;
  if (!store_queue(s, r->loop)) {
    store_free(s);
    return;
  }
  r->sts_store = s;
}

static void store_after(uv_work_t *w, int status) {
  struct tern__sts_store *s = w->data;
  struct tern_resolver *r = s->r;

  if (r != NULL) {
    r->sts_store = NULL;
    if (status == 0 && s->err != 0)
      snprintf(r->err, sizeof r->err, "%.150s: not written: %s: %s", s->path,
               s->step, strerror(s->err));
    store_free(s);
    if (r->sts_dirty)
      store_kick(r);
    return;
  }
  /* The resolver is gone: its last state, if any, still goes out. */
  if (status == 0 && s->next != NULL) {
    free(s->buf);
    s->buf = s->next;
    s->len = s->nextlen;
    s->next = NULL;
    if (store_queue(s, w->loop))
      return;
  }
  store_free(s);
}

/* Teardown: the write in flight finishes on its own, with the latest
 * state after it when that changed meanwhile. */
static void store_orphan(struct tern_resolver *r) {
  struct tern__sts_store *s = r->sts_store;
  if (s == NULL)
    return;
  if (r->sts_dirty)
    s->next = cache_serialize(r, &s->nextlen);
  s->r = NULL;
  r->sts_store = NULL;
}

static bool load_line(struct tern_resolver *r, char *line, int64_t now) {
  char *f[6], *save = NULL, *tok, *text;
  char domain[TERN__DNS_NAME_MAX];
  struct tern_mtasts_parsed parsed;
  struct tern__sts_entry *e;
  size_t n = 0, cap, len, i;
  long long expiry;
  char *end;
  int mode = -1;

  for (tok = strtok_r(line, " \t\r\n", &save); tok != NULL && n < 6;
       tok = strtok_r(NULL, " \t\r\n", &save))
    f[n++] = tok;
  if (n != 6 || tok != NULL || f[0][0] == '#')
    return false;
  if (tern__dns_name(f[0], domain, sizeof domain) != 0 ||
      strcmp(domain, f[0]) != 0 || strlen(f[1]) >= TERN__STS_ID_MAX)
    return false;
  for (i = 0; f[1][i]; i++)
    if (!tern__is_alnum((unsigned char)f[1][i]))
      return false;
  if (i == 0)
    return false;
  for (i = 0; i < 3; i++)
    if (strcmp(f[2], mode_names[i]) == 0)
      mode = (int)i;
  errno = 0;
  expiry = strtoll(f[4], &end, 10);
  if (mode < 0 || errno != 0 || *end != '\0' || expiry <= now)
    return false;
  /* The policy text again, through the parser: it checks it all. */
  cap = strlen(f[5]) * 2 + 128;
  text = malloc(cap);
  if (text == NULL)
    return false;
  len = (size_t)snprintf(text, cap, "version: STSv1\nmode: %s\nmax_age: %s\n",
                         f[2], f[3]);
  if (strcmp(f[5], "-") != 0) {
    for (tok = strtok_r(f[5], ",", &save); tok != NULL;
         tok = strtok_r(NULL, ",", &save))
      len += (size_t)snprintf(text + len, cap - len, "mx: %s\n", tok);
  }
  if (tern_mtasts_policy_parse(text, len, &parsed) != 0) {
    free(text);
    return false;
  }
  free(text);
  /* a policy lives max_age from its fetch: never longer from the file */
  if (expiry - now > (long long)parsed.max_age + 60 ||
      (e = entry_find(r, domain)) != NULL ||
      (e = entry_new(r, domain)) == NULL) {
    tern_mtasts_parsed_free(&parsed);
    return false;
  }
  entry_set(r, e, &parsed, f[1], (int64_t)expiry);
  return true;
}

void tern__sts_load(struct tern_resolver *r) {
  FILE *fp;
  char *line = NULL;
  size_t cap = 0;
  int64_t now = wall_now();
  unsigned lines = 0;

  if (r->sts_cache_file == NULL ||
      (fp = open_cache(r->sts_cache_file)) == NULL)
    return;
  /* A line holds at most a 64 KiB policy's patterns; the file at most
   * the cache's bound of entries. */
  while (getline(&line, &cap, fp) > 0 && lines++ < TERN__STS_CACHE_MAX + 1)
    if (strlen(line) <= STS_BODY_MAX + 512)
      (void)load_line(r, line, now);
  free(line);
  fclose(fp);
}

/* ---- the fetch
 * -------------------------------------------------------------------- */

static void multi_remove(struct tern__sts_fetch *f) {
  struct tern__sts_multi *m = f->r ? f->r->stsm : NULL;
  if (f->easy == NULL)
    return;
  if (m != NULL && m->multi != NULL) {
    curl_multi_remove_handle(m->multi, f->easy);
    m->running--;
  }
  curl_easy_cleanup(f->easy);
  f->easy = NULL;
}

static void fetch_free(struct tern__sts_fetch *f) {
  multi_remove(f);
  curl_slist_free_all(f->res);
  free(f->body);
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

/* A transfer ended (curl's result rc): check it, parse the body, store
 * the policy, tell the waiters. On the loop, inside tern__enter. */
static void fetch_done(struct tern__sts_fetch *f, CURLcode rc) {
  struct tern_resolver *r = f->r;
  struct tern__sts_entry *e = f->e;
  struct tern_mtasts_parsed parsed;
  char why[TERN__WHY_MAX];
  long code = 0;
  char *ct = NULL;
  int prc;

  if (f->too_big || rc == CURLE_FILESIZE_EXCEEDED) {
    fetch_fail(f, "policy larger than 64 KiB");
    return;
  }
  if (rc != CURLE_OK) {
    snprintf(why, sizeof why, "%.100s: %.140s", f->url,
             f->err[0] ? f->err : curl_easy_strerror(rc));
    fetch_fail(f, why);
    return;
  }
  curl_easy_getinfo(f->easy, CURLINFO_RESPONSE_CODE, &code);
  if (code != 200) {
    snprintf(why, sizeof why,
             "%.100s: HTTP status %ld (want 200; "
             "redirects are not followed)",
             f->url, code);
    fetch_fail(f, why);
    return;
  }
  curl_easy_getinfo(f->easy, CURLINFO_CONTENT_TYPE, &ct);
  if (!text_plain(ct)) {
    snprintf(why, sizeof why, "%.100s: Content-Type \"%.60s\", not text/plain",
             f->url, ct ? ct : "");
    fetch_fail(f, why);
    return;
  }
  if ((prc = tern_mtasts_policy_parse(f->body, f->len, &parsed)) != 0) {
    snprintf(why, sizeof why, "policy of %.100s: %s", f->host,
             prc == TERN_ENOMEM ? "out of memory"
                                : "malformed (RFC 8461 §3.2)");
    fetch_fail(f, why);
    return;
  }
  entry_set(r, e, &parsed, f->id, wall_now() + (int64_t)parsed.max_age);
  store_kick(r);
  fetch_complete(f, &e->pol, "fetched");
}

static void fetch_transfer(struct tern__sts_multi *m,
                           struct tern__sts_fetch *f);

/* A slot came free: the fetches waiting for one start, or fail when
 * they waited their whole timeout (a cached policy stays in force). A
 * slot frees within a timeout of any wait starting (the transfers
 * running began earlier), so no fetch waits longer than its own. */
static void wait_next(struct tern__sts_multi *m) {
  struct tern_resolver *r = m->r;
  while (!r->dying && m->running < TERN__STS_FETCH_MAX && m->wait != NULL) {
    struct tern__sts_fetch *f = m->wait;
    m->wait = f->wait_next;
    if (m->wait == NULL)
      m->wait_tail = NULL;
    f->wait_next = NULL;
    if (uv_now(r->loop) >= f->wait_until)
      fetch_fail(f, "busy (too many policy fetches at once)");
    else
      fetch_transfer(m, f);
  }
}

/* Transfers curl finished: each one's waiters are told. A waiter may
 * free the resolver: then the rest waits for the teardown. */
static void multi_check(struct tern__sts_multi *m) {
  struct tern_resolver *r = m->r;
  CURLMsg *msg;
  int left;

  while (!r->dying && (msg = curl_multi_info_read(m->multi, &left)) != NULL) {
    char *priv = NULL;
    if (msg->msg != CURLMSG_DONE)
      continue;
    curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, &priv);
    if (priv == NULL)
      continue;
    fetch_done((struct tern__sts_fetch *)(void *)priv, msg->data.result);
    wait_next(m);
  }
  if (!r->dying && m->running == 0)
    uv_timer_stop(&m->timer);
}

static void on_sock(uv_poll_t *p, int status, int events) {
  struct sts_sock *s = p->data;
  struct tern__sts_multi *m = s->m;
  struct tern_resolver *r = m->r;
  int flags = 0, running;

  if (status < 0)
    flags = CURL_CSELECT_ERR;
  if (events & UV_READABLE)
    flags |= CURL_CSELECT_IN;
  if (events & UV_WRITABLE)
    flags |= CURL_CSELECT_OUT;
  tern__enter(r);
  curl_multi_socket_action(m->multi, s->fd, flags, &running);
  multi_check(m);
  tern__leave(r);
}

static void on_multi_timer(uv_timer_t *t) {
  struct tern__sts_multi *m = t->data;
  struct tern_resolver *r = m->r;
  int running;

  tern__enter(r);
  curl_multi_socket_action(m->multi, CURL_SOCKET_TIMEOUT, 0, &running);
  multi_check(m);
  tern__leave(r);
}

static void sock_closed(uv_handle_t *h) { free(h->data); }

static void sock_close(struct sts_sock *s) {
  struct tern__sts_multi *m = s->m;
  if (s->prev)
    s->prev->next = s->next;
  else
    m->socks = s->next;
  if (s->next)
    s->next->prev = s->prev;
  uv_poll_stop(&s->poll);
  uv_close((uv_handle_t *)&s->poll, sock_closed);
}

/* CURLMOPT_SOCKETFUNCTION: watch (or stop watching) one socket. Called
 * with CURL_POLL_REMOVE before curl closes it. */
static int multi_sock_cb(CURL *easy, curl_socket_t fd, int what, void *ud,
                         void *sockp) {
  struct tern__sts_multi *m = ud;
  struct sts_sock *s = sockp;
  int ev = 0;
  (void)easy;

  if (what == CURL_POLL_REMOVE) {
    if (s != NULL) {
      if (m->multi != NULL) /* NULL: inside curl_multi_cleanup */
        curl_multi_assign(m->multi, fd, NULL);
      sock_close(s);
    }
    return 0;
  }
  if (s == NULL) {
    s = calloc(1, sizeof *s);
    if (s == NULL)
      return -1;
    if (uv_poll_init_socket(m->r->loop, &s->poll, fd) != 0) {
      free(s);
      return -1;
    }
    s->poll.data = s;
    s->fd = fd;
    s->m = m;
    s->next = m->socks;
    if (m->socks)
      m->socks->prev = s;
    m->socks = s;
    curl_multi_assign(m->multi, fd, s);
  }
  if (what == CURL_POLL_IN || what == CURL_POLL_INOUT)
    ev |= UV_READABLE;
  if (what == CURL_POLL_OUT || what == CURL_POLL_INOUT)
    ev |= UV_WRITABLE;
  uv_poll_start(&s->poll, ev, on_sock);
  return 0;
}

/* CURLMOPT_TIMERFUNCTION: when curl wants to be called next. */
static int multi_timer_cb(CURLM *multi, long ms, void *ud) {
  struct tern__sts_multi *m = ud;
  (void)multi;
  if (ms < 0)
    uv_timer_stop(&m->timer);
  else
    uv_timer_start(&m->timer, on_multi_timer, (uint64_t)ms, 0);
  return 0;
}

static void multi_closed(uv_handle_t *h) { free(h->data); }

static struct tern__sts_multi *multi_get(struct tern_resolver *r) {
  struct tern__sts_multi *m;

  if (r->stsm != NULL)
    return r->stsm;
  pthread_once(&curl_once, curl_init);
  if (curl_init_rc != CURLE_OK)
    return NULL;
  m = calloc(1, sizeof *m);
  if (m == NULL)
    return NULL;
  m->r = r;
  m->multi = curl_multi_init();
  if (m->multi == NULL || uv_timer_init(r->loop, &m->timer) != 0) {
    if (m->multi)
      curl_multi_cleanup(m->multi);
    free(m);
    return NULL;
  }
  m->timer.data = m;
  curl_multi_setopt(m->multi, CURLMOPT_SOCKETFUNCTION, multi_sock_cb);
  curl_multi_setopt(m->multi, CURLMOPT_SOCKETDATA, m);
  curl_multi_setopt(m->multi, CURLMOPT_TIMERFUNCTION, multi_timer_cb);
  curl_multi_setopt(m->multi, CURLMOPT_TIMERDATA, m);
  r->stsm = m;
  return m;
}

/* Every transfer is removed (its connection closed), then the multi
 * handle; the handles close and free themselves on the loop. */
static void multi_free(struct tern_resolver *r) {
  struct tern__sts_multi *m = r->stsm;
  CURLM *multi;
  if (m == NULL)
    return;
  multi = m->multi;
  m->multi = NULL;
  curl_multi_cleanup(multi);
  while (m->socks != NULL)
    sock_close(m->socks);
  uv_timer_stop(&m->timer);
  uv_close((uv_handle_t *)&m->timer, multi_closed);
  r->stsm = NULL;
}

/* The addresses are known: start the transfer at once, next to any
 * others (each bounded by its own timeout); with every slot taken, wait
 * for one at most that timeout. */
static void fetch_begin(struct tern__sts_fetch *f) {
  struct tern_resolver *r = f->r;
  struct tern__sts_multi *m;

  if (r->sts_port == 443)
    snprintf(f->url, sizeof f->url, "https://%s/.well-known/mta-sts.txt",
             f->host);
  else
    snprintf(f->url, sizeof f->url, "https://%s:%u/.well-known/mta-sts.txt",
             f->host, r->sts_port);
  m = multi_get(r);
  if (m == NULL) {
    fetch_fail(f, "libcurl could not start");
    return;
  }
  if (m->running >= TERN__STS_FETCH_MAX) {
    f->wait_until = uv_now(r->loop) + r->sts_timeout_ms;
    if (m->wait_tail)
      m->wait_tail->wait_next = f;
    else
      m->wait = f;
    m->wait_tail = f;
    return;
  }
  fetch_transfer(m, f);
}

static void fetch_transfer(struct tern__sts_multi *m,
                           struct tern__sts_fetch *f) {
  struct tern_resolver *r = f->r;
  CURL *c;

  f->res = curl_slist_append(NULL, f->resolve);
  c = curl_easy_init();
  if (c == NULL || f->res == NULL) {
    if (c)
      curl_easy_cleanup(c);
    fetch_fail(f, "out of memory");
    return;
  }
  f->err[0] = '\0';
  curl_easy_setopt(c, CURLOPT_URL, f->url);
  curl_easy_setopt(c, CURLOPT_RESOLVE, f->res);
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
  if (r->sts_ca_file != NULL)
    curl_easy_setopt(c, CURLOPT_CAINFO, r->sts_ca_file);
  curl_easy_setopt(c, CURLOPT_PROXY, ""); /* never an environment proxy */
  curl_easy_setopt(c, CURLOPT_NOPROXY, "*");
  curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
  /* One transfer per connection: its socket goes when it ends (or is
   * removed), so no idle socket outlives a fetch. */
  curl_easy_setopt(c, CURLOPT_FORBID_REUSE, 1L);
  curl_easy_setopt(c, CURLOPT_FRESH_CONNECT, 1L);
  curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, (long)r->sts_timeout_ms);
  curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, (long)r->sts_timeout_ms);
  curl_easy_setopt(c, CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)STS_BODY_MAX);
  curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
  curl_easy_setopt(c, CURLOPT_WRITEDATA, f);
  curl_easy_setopt(c, CURLOPT_USERAGENT, "tern (MTA-STS)");
  curl_easy_setopt(c, CURLOPT_ERRORBUFFER, f->err);
  curl_easy_setopt(c, CURLOPT_PRIVATE, (char *)f);
  if (curl_multi_add_handle(m->multi, c) != CURLM_OK) {
    curl_easy_cleanup(c);
    fetch_fail(f, "libcurl refused the transfer");
    return;
  }
  f->easy = c;
  m->running++;
  r->fetches++;
}

static void fetch_addr_done(struct tern__sub *s, int err,
                            struct ub_result *res) {
  struct tern__sts_fetch *f = s->owner;
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
  fetch_begin(f);
}

static int fetch_start(struct tern_resolver *r, struct tern__sts_entry *e,
                       const char *id) {
  struct tern__sts_fetch *f = calloc(1, sizeof *f);

  if (f == NULL)
    return TERN_ENOMEM;
  f->r = r;
  f->e = e;
  snprintf(f->id, sizeof f->id, "%s", id);
  snprintf(f->host, sizeof f->host, "mta-sts.%s", e->domain);
  snprintf(f->resolve, sizeof f->resolve, "%s:%u:", f->host, r->sts_port);
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
  store_orphan(r);
  if (r->stsm != NULL) /* the waiting fetches go with their entries */
    r->stsm->wait = r->stsm->wait_tail = NULL;
  while (r->sts != NULL) {
    struct tern__sts_entry *e = r->sts;
    struct tern__sts_fetch *f = e->fetch;
    r->sts = e->next;
    if (f != NULL) {
      tern__sub_cancel_owner(r, f);
      while (f->waiters != NULL)
        waiter_remove(f, f->waiters);
      fetch_free(f); /* a transfer in flight leaves the multi handle */
    }
    tern_mtasts_parsed_free(&e->parsed);
    free(e);
  }
  r->nsts = 0;
  r->sts_bytes = 0;
  multi_free(r);
  free(r->sts_cache_file);
  r->sts_cache_file = NULL;
}
