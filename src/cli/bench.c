/*
 * tern bench — an SMTP load generator on the client runtime, the
 * counterpart of Postfix's smtp-source.
 *
 *   tern bench [--server URL] [--sessions N] [--messages M] [--size B]
 *              [--per-connection K] [--pipelining on|off] [--chunking]
 *              [--tls] [--no-verify] [--ca-file F] [--duration S]
 *              [--from ADDR] [--to ADDR] [--helo NAME] [--timeout S]
 *
 * N connections run at once on one event loop (one thread); each sends
 * messages one after another on its connection, reconnecting after K
 * messages (default: never). The run ends when M messages have been
 * started and finished (default 1000) or when --duration has passed,
 * whichever comes first (with --duration alone, M is unlimited): no new
 * message starts after that, those in flight finish.
 *
 * The message (--size octets, headers included, default 1024) is made
 * once in memory: From/To/Subject, then 74-character text lines with
 * CRLF (76 octets each), every 50th starting with "." so dot-stuffing is
 * exercised. It is pushed with tern_client_session_body() as the
 * session takes it (on_body_ready), and ended with _body_end().
 *
 * Printed: messages started/ok/failed, connections, wall time (first
 * connect to last message done), messages/s, MB/s (10^6 message octets
 * per second), latency percentiles from send() to on_message_done, and
 * the process's own CPU time (getrusage: user + system) per message.
 * Exit status: 0 when every message was accepted, 1 when some failed,
 * EX_TEMPFAIL when none could be sent, EX_USAGE for bad arguments.
 */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>
#include <sysexits.h>

#include "cli.h"

struct bopts {
  const char *server;
  unsigned sessions;
  unsigned long long messages; /* 0 = unlimited (needs --duration) */
  unsigned long long size;
  unsigned long long per_conn; /* 0 = unlimited */
  bool pipelining;
  bool chunking;
  bool tls;
  bool no_verify;
  const char *ca_file;
  unsigned duration_ms;        /* 0 = none */
  const char *from;
  const char *to;
  const char *helo;
  unsigned timeout_ms;
  unsigned long long high_water; /* session output_high_water, 0 = default */
  bool quiet;
};

struct bench;

struct conn {
  struct bench *b;
  struct tern_client *cl;
  unsigned long long sent_here; /* messages on this connection */
  bool in_msg;                  /* a message is in progress */
  bool body_ended;
  size_t body_off;
  uint64_t t_send;              /* uv_hrtime() at send() */
  bool ever_ready;
  bool pushing, push_again;     /* push_body() reentrancy */
  bool closing;
  bool dead;                    /* slot finished */
};

struct bench {
  struct bopts o;
  char url[1024];
  char endpoint[300];
  bool opportunistic;
  char *body;
  size_t body_len;
  struct tern_client_rcpt rcpt;
  struct tern_client_message msg;
  struct tern_client_callbacks cb;

  uv_loop_t loop;
  uv_timer_t timer;
  struct conn *conns;

  unsigned long long started, ok, failed;
  unsigned long long conn_opened, conn_failed;
  bool stopping;
  uint64_t t0, t_last;
  double *lat;                  /* seconds, one per finished message */
  size_t nlat, caplat;
  char first_error[600];
  unsigned long long nerrors;
};

static void note_error(struct bench *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void note_error(struct bench *b, const char *fmt, ...) {
  b->nerrors++;
  if (b->first_error[0])
    return;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(b->first_error, sizeof b->first_error, fmt, ap);
  va_end(ap);
}

static bool more_work(struct bench *b) {
  if (b->stopping)
    return false;
  if (b->o.messages && b->started >= b->o.messages)
    return false;
  return true;
}

static void conn_open(struct conn *k);

static void push_once(struct conn *k);

/* Give the session as much of the body as it takes now. body() flushes
 * through the runtime, which can fire on_body_ready and so call us again:
 * a nested call only asks the outer one to go round once more. */
static void push_body(struct conn *k) {
  if (k->pushing) {
    k->push_again = true;
    return;
  }
  k->pushing = true;
  do {
    k->push_again = false;
    push_once(k);
  } while (k->push_again);
  k->pushing = false;
}

static void push_once(struct conn *k) {
  struct bench *b = k->b;
  struct tern_client_session *c;
  if (!k->in_msg || k->body_ended || !k->cl)
    return;
  c = tern_client_get_session(k->cl);
  while (k->body_off < b->body_len) {
    long n = tern_client_session_body(c, b->body + k->body_off,
                                      b->body_len - k->body_off);
    if (n < 0) { /* the message failed: on_message_done has run */
      k->body_ended = true;
      return;
    }
    if (n == 0)
      return; /* above the high-water mark, or before the 354 */
    k->body_off += (size_t)n;
  }
  if (tern_client_session_body_end(c) == 0 || !k->in_msg)
    k->body_ended = true;
}

/* The session takes body bytes again (the 354, or output drained). */
static void on_body_ready(struct tern_client_session *c, void *ud) {
  (void)c;
  push_body(ud);
}

static void next_message(struct conn *k, struct tern_client_session *c) {
  struct bench *b = k->b;
  if (k->in_msg || k->closing)
    return;
  if (!more_work(b) || (b->o.per_conn && k->sent_here >= b->o.per_conn)) {
    k->closing = true;
    tern_client_close(k->cl);
    return;
  }
  int rc = tern_client_session_send(c, &b->msg);
  if (rc < 0) {
    note_error(b, "send(): %s", tern_strerror(rc));
    b->stopping = true; /* the same error would repeat: stop */
    k->closing = true;
    tern_client_close(k->cl);
    return;
  }
  b->started++;
  k->sent_here++;
  k->in_msg = true;
  k->body_ended = false;
  k->body_off = 0;
  k->t_send = uv_hrtime();
  push_body(k);
}

static void on_ready(struct tern_client_session *c, void *ud) {
  struct conn *k = ud;
  k->ever_ready = true;
  next_message(k, c);
}

static void on_reply(struct tern_client_session *c, enum tern_client_cmd cmd,
                     unsigned index, const struct tern_client_reply *r,
                     void *ud) {
  struct conn *k = ud;
  (void)c, (void)index;
  if (cmd == TERN_CMD_DATA && r->code == 354)
    push_body(k);
  else if (r->code >= 400 && cmd >= TERN_CMD_MAIL) {
    char buf[500];
    cli_format_reply(r, buf, sizeof buf);
    note_error(k->b, "%s: %s", cli_cmd_name(cmd), buf);
  }
}

static void record_latency(struct bench *b, double s) {
  if (b->nlat == b->caplat) {
    size_t cap = b->caplat ? b->caplat * 2 : 4096;
    double *n = realloc(b->lat, cap * sizeof *n);
    if (!n)
      return; /* figures only: drop the sample */
    b->lat = n;
    b->caplat = cap;
  }
  b->lat[b->nlat++] = s;
}

static void on_message_done(struct tern_client_session *c,
                            const struct tern_client_outcome *o, void *ud) {
  struct conn *k = ud;
  struct bench *b = k->b;
  (void)c;
  uint64_t now = uv_hrtime();
  k->in_msg = false;
  k->body_ended = true;
  b->t_last = now;
  if (o->code >= 200 && o->code < 300) {
    b->ok++;
    record_latency(b, (double)(now - k->t_send) / 1e9);
  } else {
    b->failed++;
    if (o->local)
      note_error(b, "message failed locally (%d): %s", o->code,
                 tern_client_last_error(k->cl));
  }
}

static void on_error(struct tern_client_session *c, int err,
                     const struct tern_client_reply *r, void *ud) {
  struct conn *k = ud;
  (void)c;
  if (r) {
    char buf[500];
    cli_format_reply(r, buf, sizeof buf);
    note_error(k->b, "session failed (%s): %s", tern_err_name(err), buf);
  } else {
    note_error(k->b, "session failed (%s): %s", tern_err_name(err),
               tern_client_last_error(k->cl));
  }
}

static bool on_verify(struct tern_client *cl, bool ok, const char *why,
                      void *ud) {
  struct conn *k = ud;
  (void)cl;
  if (ok || k->b->opportunistic || k->b->o.no_verify)
    return true;
  note_error(k->b, "TLS certificate verification failed: %s",
             why ? why : "?");
  return false;
}

static void on_connect(struct tern_client *cl, int status, void *ud) {
  struct conn *k = ud;
  if (status < 0) {
    k->b->conn_failed++;
    note_error(k->b, "connection to %s failed: %s", k->b->endpoint,
               tern_client_last_error(cl));
  }
}

static void on_close(struct tern_client *cl, void *ud) {
  struct conn *k = ud;
  struct bench *b = k->b;
  bool reopen = k->ever_ready && more_work(b);
  tern_client_free(cl);
  k->cl = NULL;
  k->in_msg = false;
  if (reopen)
    conn_open(k);
  else
    k->dead = true;
}

static void conn_open(struct conn *k) {
  struct bench *b = k->b;
  struct tern_client_options co;
  int rc;

  tern_client_options_init(&co);
  struct tern_client_config cc;
  tern_client_config_init(&cc);
  co.session = &cc;
  co.url = b->url;
  co.callbacks = &b->cb;
  co.ud = k;
  cc.pipelining = b->o.pipelining;
  cc.chunking = b->o.chunking;
  if (b->o.high_water)
    cc.output_high_water = (size_t)b->o.high_water;
  if (b->o.helo)
    cc.ehlo_name = b->o.helo;
  if (b->o.tls)
    cc.starttls = TERN_STARTTLS_REQUIRED;
  co.tls_verify = !b->o.no_verify && !b->opportunistic;
  co.verify = on_verify;
  co.ca_file = b->o.ca_file;
  co.connect_timeout_ms = b->o.timeout_ms;
  co.command_timeout_ms = b->o.timeout_ms;
  co.data_timeout_ms = b->o.timeout_ms;
  co.on_connect = on_connect;
  co.on_close = on_close;

  k->sent_here = 0;
  k->in_msg = false;
  k->ever_ready = false;
  k->closing = false;
  k->dead = false;
  rc = tern_client_new(&k->cl, &b->loop, &co);
  if (rc == 0)
    rc = tern_client_connect(k->cl);
  if (rc < 0) {
    note_error(b, "cannot start a connection: %s", tern_strerror(rc));
    if (k->cl)
      tern_client_free(k->cl);
    k->cl = NULL;
    k->dead = true;
    b->conn_failed++;
    return;
  }
  b->conn_opened++;
}

static void on_timer(uv_timer_t *t) {
  struct bench *b = t->data;
  if (!b->stopping) {
    /* the time bound: no new messages; give those in flight a grace */
    b->stopping = true;
    uv_timer_start(&b->timer, on_timer,
                   b->o.timeout_ms ? b->o.timeout_ms : 30000, 0);
    return;
  }
  for (unsigned i = 0; i < b->o.sessions; i++)
    if (b->conns[i].cl && !b->conns[i].closing) {
      b->conns[i].closing = true;
      tern_client_close(b->conns[i].cl);
    }
}

/* ---- the message ------------------------------------------------------------ */

static int make_body(struct bench *b) {
  size_t size = (size_t)b->o.size, pos = 0;
  char *m = malloc(size + 1);
  if (!m)
    return -1;
  int h = snprintf(m, size + 1,
                   "From: <%s>\r\nTo: <%s>\r\nSubject: tern bench\r\n\r\n",
                   b->o.from, b->o.to);
  if (h > 0 && (size_t)h + 2 <= size)
    pos = (size_t)h;
  static const char alpha[] =
      "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
  for (size_t line = 0; pos < size; line++) {
    size_t rem = size - pos, len;
    if (rem < 2) { /* one octet left: make the previous line longer */
      m[pos - 2] = 'x';
      m[pos - 1] = '\r';
      m[pos] = '\n';
      pos++;
      break;
    }
    len = rem >= 74 + 2 + 3 ? 74 : rem - 2;
    for (size_t i = 0; i < len; i++)
      m[pos + i] = alpha[(line * 7 + i) % (sizeof alpha - 1)];
    if (len && line % 50 == 7)
      m[pos] = '.';
    pos += len;
    m[pos++] = '\r';
    m[pos++] = '\n';
  }
  b->body = m;
  b->body_len = size;
  return 0;
}

/* ---- figures ------------------------------------------------------------------ */

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

static double pct(const double *v, size_t n, double p) {
  if (!n)
    return 0;
  size_t i = (size_t)ceil(p / 100.0 * (double)n);
  if (i > 0)
    i--;
  if (i >= n)
    i = n - 1;
  return v[i];
}

static double tv_s(struct timeval t) {
  return (double)t.tv_sec + (double)t.tv_usec / 1e6;
}

/* ---- options -------------------------------------------------------------------- */

static void usage(FILE *f) {
  fprintf(f,
    "usage: tern bench [options]\n"
    "  --server URL          default smtp://127.0.0.1:25 (env TERN_SERVER)\n"
    "  --sessions N          concurrent connections (default 20)\n"
    "  --messages M          messages in all (default 1000; unlimited with "
    "--duration only)\n"
    "  --size BYTES          message size, headers included (default 1024; "
    "K/M suffixes)\n"
    "  --per-connection K    messages per connection before reconnecting "
    "(default unlimited)\n"
    "  --pipelining on|off   use PIPELINING when offered (default on)\n"
    "  --chunking            use BDAT when offered\n"
    "  --tls                 require STARTTLS (verified unless "
    "--no-verify)\n"
    "  --no-verify, --ca-file F\n"
    "  --duration SECONDS    time bound: no new message after it\n"
    "  --from ADDR, --to ADDR   envelope (default bench@example.org, "
    "sink@example.org)\n"
    "  --high-water BYTES    unsent output before body() pushes back "
    "(default 64K)\n"
    "  --helo NAME, --timeout SECONDS, --quiet\n");
}

static int parse_size(const char *v, unsigned long long *out) {
  char buf[64];
  size_t n = strlen(v);
  unsigned long long mul = 1;
  if (n == 0 || n >= sizeof buf)
    return -1;
  memcpy(buf, v, n + 1);
  char last = buf[n - 1];
  if (last == 'k' || last == 'K')
    mul = 1024;
  else if (last == 'm' || last == 'M')
    mul = 1024 * 1024;
  if (mul > 1)
    buf[n - 1] = '\0';
  unsigned long long x;
  if (cli_parse_u64(buf, 1, (1ull << 32) / mul, &x) != 0)
    return -1;
  *out = x * mul;
  return 0;
}

enum bench_kind {
  B_FLAG,     /* no value: sets a bool */
  B_HELP,     /* no value */
  B_STRING,   /* kept as it is */
  B_SESSIONS, /* 1 to 100000, an unsigned */
  B_COUNT,    /* 1 to 2^40 */
  B_SIZE,     /* parse_size */
  B_ONOFF,    /* on or off */
  B_SECONDS,  /* cli_parse_seconds_ms */
};

#define BO(f) offsetof(struct bopts, f)

static const struct bench_opt {
  const char *name;
  enum bench_kind kind;
  size_t off; /* the field in struct bopts */
} bench_opts[] = {
    {"--chunking", B_FLAG, BO(chunking)},
    {"--tls", B_FLAG, BO(tls)},
    {"--no-verify", B_FLAG, BO(no_verify)},
    {"--quiet", B_FLAG, BO(quiet)},
    {"--help", B_HELP, 0},
    {"--server", B_STRING, BO(server)},
    {"--sessions", B_SESSIONS, BO(sessions)},
    {"--messages", B_COUNT, BO(messages)},
    {"--size", B_SIZE, BO(size)},
    {"--per-connection", B_COUNT, BO(per_conn)},
    {"--pipelining", B_ONOFF, BO(pipelining)},
    {"--high-water", B_SIZE, BO(high_water)},
    {"--ca-file", B_STRING, BO(ca_file)},
    {"--duration", B_SECONDS, BO(duration_ms)},
    {"--timeout", B_SECONDS, BO(timeout_ms)},
    {"--from", B_STRING, BO(from)},
    {"--to", B_STRING, BO(to)},
    {"--helo", B_STRING, BO(helo)},
};

static const struct bench_opt *bench_opt(const char *name) {
  for (size_t k = 0; k < sizeof bench_opts / sizeof *bench_opts; k++)
    if (!strcmp(name, bench_opts[k].name))
      return &bench_opts[k];
  return NULL;
}

/* Store v (NULL for B_FLAG and B_HELP) in the option's field. Returns
 * 0, -1 when done (--help), or -2 for a bad value. */
static int apply_opt(struct bopts *o, const struct bench_opt *bo,
                     const char *v) {
  char *field = (char *)o + bo->off;
  unsigned long long x;
  switch (bo->kind) {
  case B_FLAG:
    *(bool *)field = true;
    return 0;
  case B_HELP:
    usage(stdout);
    return -1;
  case B_STRING:
    *(const char **)field = v;
    return 0;
  case B_SESSIONS:
    if (cli_parse_u64(v, 1, 100000, &x) != 0)
      return -2;
    *(unsigned *)field = (unsigned)x;
    return 0;
  case B_COUNT:
    return cli_parse_u64(v, 1, 1ull << 40, (unsigned long long *)field) != 0
               ? -2
               : 0;
  case B_SIZE:
    return parse_size(v, (unsigned long long *)field) != 0 ? -2 : 0;
  case B_ONOFF:
    if (strcmp(v, "on") != 0 && strcmp(v, "off") != 0)
      return -2;
    *(bool *)field = !strcmp(v, "on");
    return 0;
  case B_SECONDS:
    return cli_parse_seconds_ms(v, (unsigned *)field) != 0 ? -2 : 0;
  }
  return 0;
}

/* "--name VALUE" or "--name=VALUE", each in bench_opts. Returns 0, -1
 * when done (--help), or EX_USAGE after printing why. */
static int parse_args(struct bench *b, int argc, char **argv) {
  struct bopts *o = &b->o;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i], *v = NULL;
    char name[64];
    const char *eq = strchr(a, '=');
    size_t nl = eq ? (size_t)(eq - a) : strlen(a);
    if (nl >= sizeof name || strncmp(a, "--", 2) != 0) {
      fprintf(stderr, "tern bench: unexpected argument '%s'\n", a);
      return EX_USAGE;
    }
    memcpy(name, a, nl);
    name[nl] = '\0';
    const struct bench_opt *bo = bench_opt(name);
    if (!bo || (bo->kind != B_FLAG && bo->kind != B_HELP)) {
      if (eq)
        v = eq + 1;
      else if (i + 1 < argc)
        v = argv[++i];
      else {
        fprintf(stderr, "tern bench: option %s needs a value\n", name);
        return EX_USAGE;
      }
    }
    if (!bo) {
      fprintf(stderr, "tern bench: unknown option '%s'\n", name);
      usage(stderr);
      return EX_USAGE;
    }
    int rc = apply_opt(o, bo, v);
    if (rc == -2) {
      fprintf(stderr, "tern bench: bad value for %s: '%s'\n", name, v);
      return EX_USAGE;
    }
    if (rc != 0)
      return rc;
  }
  if (!o->messages) /* --messages is at least 1 */
    o->messages = o->duration_ms ? 0 : 1000;
  return 0;
}

/* Everything a run gets before it reads the options. */
static struct bench *bench_new(void) {
  struct bench *b = calloc(1, sizeof *b);
  if (!b)
    return NULL;
  b->o.server = getenv("TERN_SERVER");
  if (!b->o.server || !*b->o.server)
    b->o.server = "smtp://127.0.0.1:25";
  b->o.sessions = 20;
  b->o.size = 1024;
  b->o.pipelining = true;
  b->o.from = "bench@example.org";
  b->o.to = "sink@example.org";
  return b;
}

/* The endpoint, the message, the callbacks, the connection slots, the
 * loop and the --duration timer. Returns 0 or an exit status (after
 * printing why). */
static int setup(struct bench *b) {
  char tmp[1024];
  const char *u = cli_url_starttls(b->o.server, b->o.tls, tmp, sizeof tmp);
  snprintf(b->url, sizeof b->url, "%s", u);
  b->opportunistic = cli_url_opportunistic(b->url) && !b->o.tls;
  cli_url_endpoint(b->url, b->endpoint, sizeof b->endpoint);
  if (make_body(b) != 0) {
    fprintf(stderr, "tern bench: out of memory for a %llu-byte message\n",
            b->o.size);
    return EX_OSERR;
  }
  b->rcpt.address = b->o.to;
  b->msg.from = b->o.from;
  b->msg.rcpts = &b->rcpt;
  b->msg.nrcpts = 1;
  b->msg.size = b->body_len;
  tern_client_callbacks_init(&b->cb);
  b->cb.on_reply = on_reply;
  b->cb.on_ready = on_ready;
  b->cb.on_message_done = on_message_done;
  b->cb.on_error = on_error;
  b->cb.on_body_ready = on_body_ready;
  b->conns = calloc(b->o.sessions, sizeof *b->conns);
  if (!b->conns || uv_loop_init(&b->loop) != 0) {
    fprintf(stderr, "tern bench: cannot set up (out of memory?)\n");
    return EX_OSERR;
  }
  uv_timer_init(&b->loop, &b->timer);
  b->timer.data = b;
  if (b->o.duration_ms)
    uv_timer_start(&b->timer, on_timer, b->o.duration_ms, 0);
  uv_unref((uv_handle_t *)&b->timer);
  return 0;
}

/* Every connection at once, until the last has closed. Returns the end
 * time (uv_hrtime); *user and *sys: the CPU seconds the run took. */
static uint64_t run_load(struct bench *b, double *user, double *sys) {
  if (!b->o.quiet)
    fprintf(stderr, "tern bench: %s, %u sessions, %s%llu messages of %llu "
            "bytes, pipelining %s%s%s\n",
            b->url, b->o.sessions, b->o.messages ? "" : "unlimited ",
            b->o.messages, b->o.size, b->o.pipelining ? "on" : "off",
            b->o.chunking ? ", chunking" : "", b->o.tls ? ", STARTTLS" : "");

  struct rusage ru0, ru1;
  getrusage(RUSAGE_SELF, &ru0);
  b->t0 = uv_hrtime();
  b->t_last = b->t0;
  for (unsigned i = 0; i < b->o.sessions; i++) {
    b->conns[i].b = b;
    conn_open(&b->conns[i]);
  }
  uv_run(&b->loop, UV_RUN_DEFAULT);
  uint64_t t_end = uv_hrtime();
  getrusage(RUSAGE_SELF, &ru1);

  uv_close((uv_handle_t *)&b->timer, NULL);
  uv_run(&b->loop, UV_RUN_DEFAULT);
  uv_loop_close(&b->loop);
  *user = tv_s(ru1.ru_utime) - tv_s(ru0.ru_utime);
  *sys = tv_s(ru1.ru_stime) - tv_s(ru0.ru_stime);
  return t_end;
}

static void print_figures(struct bench *b, uint64_t t_end, double user,
                          double sys) {
  double wall = (double)(b->t_last - b->t0) / 1e9;
  if (wall <= 0)
    wall = (double)(t_end - b->t0) / 1e9;
  if (b->nlat)
    qsort(b->lat, b->nlat, sizeof *b->lat, cmp_double);
  unsigned long long done = b->ok + b->failed;

  printf("server:      %s\n", b->url);
  printf("sessions:    %u (%llu connections opened, %llu failed)\n",
         b->o.sessions, b->conn_opened, b->conn_failed);
  printf("message:     %zu bytes, pipelining %s%s%s\n", b->body_len,
         b->o.pipelining ? "on" : "off", b->o.chunking ? ", chunking" : "",
         b->o.tls ? ", STARTTLS" : "");
  printf("messages:    sent %llu ok %llu failed %llu\n", b->started, b->ok,
         b->failed);
  printf("wall time:   %.3f s\n", wall);
  printf("rate:        %.1f messages/s, %.2f MB/s\n",
         wall > 0 ? (double)b->ok / wall : 0.0,
         wall > 0 ? (double)b->ok * (double)b->body_len / wall / 1e6 : 0.0);
  printf("latency ms:  p50 %.3f p90 %.3f p99 %.3f max %.3f\n",
         pct(b->lat, b->nlat, 50) * 1e3, pct(b->lat, b->nlat, 90) * 1e3,
         pct(b->lat, b->nlat, 99) * 1e3,
         b->nlat ? b->lat[b->nlat - 1] * 1e3 : 0.0);
  printf("client CPU:  %.1f us/message (user %.3f s, system %.3f s)\n",
         done ? (user + sys) * 1e6 / (double)done : 0.0, user, sys);
  if (b->first_error[0])
    printf("errors:      %llu, first: %s\n", b->nerrors, b->first_error);
  fflush(stdout);
}

/* 0: every message accepted; 1: some failed; EX_TEMPFAIL: none went. */
static int run(struct bench *b, int argc, char **argv) {
  int ex = parse_args(b, argc, argv);
  if (ex)
    return ex < 0 ? 0 : ex;
  if ((ex = setup(b)) != 0)
    return ex;
  double user, sys;
  uint64_t t_end = run_load(b, &user, &sys);
  print_figures(b, t_end, user, sys);
  if (b->ok == 0)
    return EX_TEMPFAIL;
  return b->failed || b->started != b->ok ? 1 : 0;
}

int tern_cli_bench(int argc, char **argv) {
  struct bench *b = bench_new();
  if (!b) {
    fprintf(stderr, "tern bench: out of memory\n");
    return EX_OSERR;
  }
  int ex = run(b, argc, argv);
  free(b->conns);
  free(b->body);
  free(b->lat);
  free(b);
  return ex;
}
