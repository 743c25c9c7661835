/*
 * bench_data — the DATA and BDAT paths of a real server session, on one
 * core, beside two peers that show what the figures mean:
 *
 *   memcpy   the same bytes copied into a 64 KiB buffer, 64 KiB at a time
 *            (an upper bound: touching every byte once, vectorised)
 *   naive    a byte-at-a-time end-of-data + unstuffing loop writing into a
 *            64 KiB buffer (what a straightforward server does)
 *
 * The body is ~64 MiB of 76-octet text lines with CRLF, ~1% of them
 * starting with "." (stuffed to ".." on the wire). DATA: EHLO, MAIL, RCPT,
 * DATA, then the body in 64 KiB feed() calls, then "\r\n.\r\n". BDAT: the
 * same content in "BDAT 65536" chunks, fed 64 KiB at a time. on_data only
 * sums lengths. Each figure is repeated for at least 1 s and 5 runs;
 * MB/s = 10^6 body octets per second (wire octets for DATA, content
 * octets for BDAT), median and best. Not a test: it never fails on speed.
 *
 *   bench_data [MiB]     (default 64)
 */
#define _POSIX_C_SOURCE 200809L

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "tern/server.h"

#define CHUNK 65536
#define MIN_RUNS 5
#define MIN_SECONDS 1.0
#define MAX_RUNS 200

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Keep the compiler from dropping work whose result nobody reads. */
static void keep(const void *p) { __asm__ volatile("" : : "g"(p) : "memory"); }

/* ---- the message ------------------------------------------------------------- */

static char *content; /* unstuffed, as the application must see it */
static size_t content_len;
static char *wire; /* stuffed DATA body, without its final CRLF */
static size_t wire_len;
static char *bdat; /* "BDAT n\r\n" + chunk, ..., "BDAT n LAST\r\n" + chunk */
static size_t bdat_len;

static void build(size_t target) {
  static const char words[] =
      "the quick brown fox jumps over lazy dogs while mail flows to its "
      "final destination through relays and queues of every kind ";
  uint32_t rng = 2463534242u;
  size_t lines = target / 78, stuffed = 0;

  content_len = lines * 78;
  content = malloc(content_len);
  wire = malloc(content_len + lines); /* room for every line stuffed */
  if (!content || !wire) {
    fprintf(stderr, "bench_data: out of memory\n");
    exit(1);
  }
  char *c = content, *w = wire;
  for (size_t i = 0; i < lines; i++) {
    rng ^= rng << 13;
    rng ^= rng >> 17;
    rng ^= rng << 5;
    size_t off = rng % (sizeof words - 77);
    memcpy(c, words + off, 76);
    if (rng % 100 == 7) { /* ~1%: a line starting with "." */
      c[0] = '.';
      *w++ = '.';
      stuffed++;
    }
    c[76] = '\r';
    c[77] = '\n';
    memcpy(w, c, 78);
    w += 78;
    c += 78;
  }
  wire_len = (size_t)(w - wire) - 2; /* "\r\n.\r\n" brings the last CRLF */
  fprintf(stdout, "body: %.1f MiB content, %zu lines of 78 octets, %.2f%% "
                  "stuffed; %d KiB feeds\n",
          (double)content_len / 1048576.0, lines,
          100.0 * (double)stuffed / (double)lines, CHUNK / 1024);

  size_t nchunks = (content_len + CHUNK - 1) / CHUNK;
  bdat = malloc(content_len + nchunks * 32);
  if (!bdat) {
    fprintf(stderr, "bench_data: out of memory\n");
    exit(1);
  }
  bdat_len = 0;
  for (size_t off = 0; off < content_len; off += CHUNK) {
    size_t n = content_len - off < CHUNK ? content_len - off : CHUNK;
    bdat_len += (size_t)sprintf(bdat + bdat_len, "BDAT %zu%s\r\n", n,
                                off + n == content_len ? " LAST" : "");
    memcpy(bdat + bdat_len, content + off, n);
    bdat_len += n;
  }
}

/* ---- the session ------------------------------------------------------------------ */

struct app {
  uint64_t got; /* octets seen by on_data */
  unsigned ends;
};

static int on_data(struct tern_server_session *s, const char *buf, size_t len,
                   void *ud) {
  (void)s;
  (void)buf;
  ((struct app *)ud)->got += len;
  return 0;
}

static int on_data_end(struct tern_server_session *s,
                       const struct tern_envelope *env,
                       struct tern_reply *r, void *ud) {
  (void)s;
  (void)env;
  (void)r;
  ((struct app *)ud)->ends++;
  return TERN_REPLY_NOW;
}

static void drain(struct tern_server_session *s) {
  const char *p;
  size_t n = tern_server_session_output(s, &p);
  if (n)
    tern_server_session_consume(s, n);
}

static void feed_all(struct tern_server_session *s, const char *p, size_t n) {
  while (n) {
    long got = tern_server_session_feed(s, p, n);
    if (got < 0) {
      fprintf(stderr, "bench_data: feed: %s\n", tern_strerror((int)got));
      exit(1);
    }
    p += got;
    n -= (size_t)got;
    drain(s);
    if (got == 0 && !(tern_server_session_want(s) & TERN_WANT_READ)) {
      fprintf(stderr, "bench_data: session stopped reading\n");
      exit(1);
    }
  }
}

static struct tern_server_session *open_session(struct app *a) {
  static const char head[] = "EHLO client.example\r\n"
                             "MAIL FROM:<a@example.org>\r\n"
                             "RCPT TO:<b@example.net>\r\n";
  struct tern_server_config cfg;
  struct tern_server_callbacks cb;
  struct tern_server_session *s;
  tern_server_config_init(&cfg);
  cfg.max_message_size = 0; /* no limit: the body is large on purpose */
  tern_server_callbacks_init(&cb);
  cb.on_data = on_data;
  cb.on_data_end = on_data_end;
  memset(a, 0, sizeof *a);
  if (tern_server_session_new(&s, &cfg, &cb, a) != 0 ||
      tern_server_session_start(s) != 0) {
    fprintf(stderr, "bench_data: cannot create a session\n");
    exit(1);
  }
  drain(s);
  feed_all(s, head, sizeof head - 1);
  return s;
}

static void check_end(struct tern_server_session *s, const struct app *a) {
  if (a->got != content_len || a->ends != 1 ||
      !(tern_server_session_want(s) & TERN_WANT_READ)) {
    fprintf(stderr, "bench_data: wrong result (%llu of %zu octets)\n",
            (unsigned long long)a->got, content_len);
    exit(1);
  }
}

/* One DATA transaction; returns the seconds spent on the body. */
static double run_data(void) {
  struct app a;
  struct tern_server_session *s = open_session(&a);
  feed_all(s, "DATA\r\n", 6);
  double t0 = now();
  for (size_t off = 0; off < wire_len; off += CHUNK)
    feed_all(s, wire + off, wire_len - off < CHUNK ? wire_len - off : CHUNK);
  feed_all(s, "\r\n.\r\n", 5);
  double t = now() - t0;
  check_end(s, &a);
  tern_server_session_free(s);
  return t;
}

static double run_bdat(void) {
  struct app a;
  struct tern_server_session *s = open_session(&a);
  double t0 = now();
  for (size_t off = 0; off < bdat_len; off += CHUNK)
    feed_all(s, bdat + off, bdat_len - off < CHUNK ? bdat_len - off : CHUNK);
  double t = now() - t0;
  check_end(s, &a);
  tern_server_session_free(s);
  return t;
}

/* ---- the peers -------------------------------------------------------------------- */

static char buf64[CHUNK];

static double run_memcpy_of(const char *p, size_t n) {
  double t0 = now();
  for (size_t off = 0; off < n; off += CHUNK) {
    size_t k = n - off < CHUNK ? n - off : CHUNK;
    memcpy(buf64, p + off, k);
    keep(buf64);
  }
  return now() - t0;
}

static double run_memcpy(void) { return run_memcpy_of(wire, wire_len); }
static double run_memcpy_bdat(void) {
  return run_memcpy_of(content, content_len);
}

/* Byte at a time: CRLF "." CRLF ends, a leading "." of a longer line goes.
 * The state lives in locals inside a chunk, as a plain server loop. */
struct naive {
  enum { MID, CR, BOL, DOT, DOTCR } st;
  size_t o;       /* bytes in buf64 */
  uint64_t total; /* bytes handed on */
  int done;
};

static void naive_put(struct naive *n, size_t *o, char c) {
  buf64[(*o)++] = c;
  if (*o == CHUNK) {
    keep(buf64);
    n->total += CHUNK;
    *o = 0;
  }
}

static void naive_feed(struct naive *n, const char *p, size_t len) {
  int st = n->st;
  size_t o = n->o;
  for (size_t i = 0; i < len; i++) {
    char c = p[i];
    switch (st) {
    case BOL:
      if (c == '.') {
        st = DOT;
        continue;
      }
      st = c == '\r' ? CR : MID;
      break;
    case MID:
      st = c == '\r' ? CR : MID;
      break;
    case CR:
      st = c == '\n' ? BOL : c == '\r' ? CR : MID;
      break;
    case DOT:
      if (c == '\r') {
        st = DOTCR;
        continue;
      }
      st = MID; /* the stuffing dot is dropped */
      break;
    case DOTCR:
      if (c == '\n') {
        n->done = 1;
        n->st = BOL;
        n->o = o;
        return;
      }
      naive_put(n, &o, '.');
      naive_put(n, &o, '\r');
      st = c == '\r' ? CR : MID;
      break;
    }
    naive_put(n, &o, c);
  }
  n->st = st;
  n->o = o;
}

static double run_naive(void) {
  struct naive n = {BOL, 0, 0, 0};
  double t0 = now();
  for (size_t off = 0; off < wire_len; off += CHUNK)
    naive_feed(&n, wire + off, wire_len - off < CHUNK ? wire_len - off : CHUNK);
  naive_feed(&n, "\r\n.\r\n", 5);
  n.total += n.o;
  keep(&n);
  double t = now() - t0;
  if (!n.done || n.total != content_len) {
    fprintf(stderr, "bench_data: naive peer got %llu octets\n",
            (unsigned long long)n.total);
    exit(1);
  }
  return t;
}

/* ---- measuring ---------------------------------------------------------------------- */

static int cmp(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

struct figure {
  double median, best;
  int runs;
};

static struct figure measure(double (*fn)(void), size_t bytes) {
  double mbs[MAX_RUNS], total = 0;
  int n = 0;
  fn(); /* warm up: page faults, caches */
  while (n < MAX_RUNS && (n < MIN_RUNS || total < MIN_SECONDS)) {
    double t = fn();
    total += t;
    mbs[n++] = (double)bytes / 1e6 / t;
  }
  qsort(mbs, (size_t)n, sizeof mbs[0], cmp);
  struct figure f = {n % 2 ? mbs[n / 2] : (mbs[n / 2 - 1] + mbs[n / 2]) / 2,
                     mbs[n - 1], n};
  return f;
}

static void row(const char *name, struct figure f) {
  printf("%-26s %10.0f %10.0f %6d\n", name, f.median, f.best, f.runs);
}

int main(int argc, char **argv) {
  size_t mib = 64;
  if (argc > 1) {
    mib = strtoul(argv[1], NULL, 10);
    if (mib < 1 || mib > 4096) {
      fprintf(stderr, "usage: bench_data [MiB 1..4096]\n");
      return 2;
    }
  }
  build(mib * 1048576);

  struct figure data = measure(run_data, wire_len);
  struct figure dcpy = measure(run_memcpy, wire_len);
  struct figure naive = measure(run_naive, wire_len);
  struct figure bd = measure(run_bdat, content_len);
  struct figure bcpy = measure(run_memcpy_bdat, content_len);

  printf("%-26s %10s %10s %6s\n", "path (MB/s, 1 core)", "median", "best",
         "runs");
  row("DATA  tern session", data);
  row("DATA  peer: memcpy", dcpy);
  row("DATA  peer: naive unstuff", naive);
  row("BDAT  tern session", bd);
  row("BDAT  peer: memcpy", bcpy);
  printf("median ratios: DATA session/memcpy %.2f, session/naive %.2f; "
         "BDAT session/memcpy %.2f\n",
         data.median / dcpy.median, data.median / naive.median,
         bd.median / bcpy.median);
  free(content);
  free(wire);
  free(bdat);
  return 0;
}
