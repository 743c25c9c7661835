/*
 * bench_pipeline — a small pipelining SMTP load generator (the client half
 * of bench/run-sink.sh). Plain POSIX sockets and epoll; it does not use
 * the library, it only links it because every bench/bench_*.c does.
 *
 *   bench_pipeline [options] HOST:PORT
 *     -s N   sessions (connections) kept open, default 20
 *     -m M   messages in total, default 20000
 *     -l S   payload octets per message (after a ~110-octet header), 1024
 *     -k K   messages in flight per connection (BDAT only), default 1
 *     -M auto|bdat|data   transfer: BDAT when the server offers CHUNKING
 *            (auto, the default), or always DATA, or insist on BDAT
 *     -t SEC overall time limit, default 60 (exit 3 when exceeded)
 *     -i N   idle mode: open N connections, send EHLO on each and read the
 *            reply, print "ready N" on stdout, then hold them until
 *            SIGTERM/SIGINT (or the time limit) and close them
 *     -q     print only the one machine-readable result line
 *
 * Per connection: greeting, EHLO, then messages:
 *
 *   BDAT   "MAIL FROM / RCPT TO / BDAT <n> LAST" and the content in one
 *          write; up to K messages are outstanding, a new one is sent as
 *          soon as the three replies of an earlier one are in (RFC 3030
 *          lets BDAT be pipelined with its content).
 *   DATA   "MAIL FROM / RCPT TO / DATA" in one write; after the 354 the
 *          content and "." and, in the same write, the next message's
 *          MAIL/RCPT/DATA (RFC 2920 3.1: DATA ends a group, the content
 *          may start one). So one write and one round trip per message
 *          in the steady state; K is 1.
 *
 * Every reply is checked (250 for MAIL, RCPT, BDAT, end of data; 354 for
 * DATA); any other reply is counted as an error and ends the connection.
 * The result line:
 *
 *   RESULT mode=bdat sessions=20 inflight=8 size=1024 messages=20000
 *          errors=0 seconds=0.512 msgs_per_s=39062.5 MB_per_s=40.00
 *
 * MB/s counts 10^6 payload octets (the -l size, like smtp-source -l),
 * the clock runs from the first connect to the last message's reply.
 * Exit status: 0 all messages accepted, 1 errors, 2 usage, 3 time limit.
 * Without arguments (as `make bench` runs it) it prints how to use it and
 * exits 0.
 */
#define _GNU_SOURCE

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#define RBUF_LOAD 65536
#define RBUF_IDLE 2048
#define MAX_INFLIGHT 64
#define RING (2 * MAX_INFLIGHT + 8)
#define IOVS 64

enum cstate { C_CONNECT, C_GREETING, C_EHLO, C_RUN, C_QUIT, C_DONE };

struct seg {
  const char *p;
  size_t n;
};

struct conn {
  int fd;
  enum cstate st;
  /* output: a ring of segments pointing at static buffers */
  struct seg ring[RING];
  unsigned head, count;
  size_t off; /* octets of ring[head] already written */
  int want_out;
  /* input */
  char *in;
  size_t inlen;
  /* messages */
  unsigned inflight;  /* messages sent whose final reply is missing */
  unsigned phase;     /* replies seen for the oldest outstanding message */
  int chunking;
};

static struct {
  int sessions, inflight, idle, quiet;
  long messages;
  size_t size;
  double limit;
  int mode; /* 0 auto, 1 bdat, 2 data */
  struct sockaddr_in addr;
} opt = {20, 1, 0, 0, 20000, 1024, 60.0, 0, {0}};

static int ep;
static long to_start, done_msgs, errors;
static int open_conns, ready_conns;
static size_t rbuf = RBUF_LOAD;
static int use_bdat = -1;
static char *msg;          /* header + payload */
static size_t msg_len;
static char *data_body;    /* header + payload + ".\r\n" */
static size_t data_body_len;
static char bdat_cmd[256]; /* MAIL + RCPT + BDAT n LAST */
static size_t bdat_cmd_len;
static const char data_cmd[] = "MAIL FROM:<bench@example.org>\r\n"
                               "RCPT TO:<sink@example.org>\r\n"
                               "DATA\r\n";
static const char ehlo_cmd[] = "EHLO bench.example.org\r\n";
static const char quit_cmd[] = "QUIT\r\n";

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void die(const char *what) {
  perror(what);
  exit(1);
}

static void build_message(void) {
  char hdr[256];
  size_t h = (size_t)snprintf(hdr, sizeof hdr,
                              "From: <bench@example.org>\r\n"
                              "To: <sink@example.org>\r\n"
                              "Subject: bench_pipeline\r\n"
                              "Message-Id: <bench@example.org>\r\n"
                              "\r\n");
  msg_len = h + opt.size;
  msg = malloc(msg_len + 2);
  data_body = malloc(msg_len + 8);
  if (!msg || !data_body)
    die("malloc");
  memcpy(msg, hdr, h);
  /* payload: 80-octet lines (78 text + CRLF), digits then 'X' */
  char *p = msg + h;
  for (size_t i = 0; i < opt.size; i++) {
    size_t col = i % 80;
    p[i] = col == 78 ? '\r' : col == 79 ? '\n' : col == 0 ? (char)('0' + (i / 80) % 10) : 'X';
  }
  /* end on CRLF so DATA's terminator is well formed */
  if (opt.size >= 2) {
    p[opt.size - 2] = '\r';
    p[opt.size - 1] = '\n';
  }
  memcpy(data_body, msg, msg_len);
  data_body_len = msg_len;
  if (opt.size < 2) { /* tiny payload: make sure the body ends in CRLF */
    memcpy(data_body + data_body_len, "\r\n", 2);
    data_body_len += 2;
  }
  memcpy(data_body + data_body_len, ".\r\n", 3);
  data_body_len += 3;
  bdat_cmd_len = (size_t)snprintf(bdat_cmd, sizeof bdat_cmd,
                                  "MAIL FROM:<bench@example.org>\r\n"
                                  "RCPT TO:<sink@example.org>\r\n"
                                  "BDAT %zu LAST\r\n",
                                  msg_len);
}

static void push(struct conn *c, const char *p, size_t n) {
  if (c->count == RING) {
    fprintf(stderr, "bench_pipeline: output ring full\n");
    exit(1);
  }
  c->ring[(c->head + c->count) % RING] = (struct seg){p, n};
  c->count++;
}

static void set_events(struct conn *c, int out) {
  struct epoll_event ev = {.events = EPOLLIN | (out ? EPOLLOUT : 0),
                           .data.ptr = c};
  if (out != c->want_out) {
    if (epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev))
      die("epoll_ctl");
    c->want_out = out;
  }
}

static void close_conn(struct conn *c) {
  if (c->st == C_DONE)
    return;
  epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
  close(c->fd);
  c->st = C_DONE;
  open_conns--;
  /* messages this connection still owed go back to nobody: count them as
   * errors so the totals add up */
  if (c->inflight) {
    errors += c->inflight;
    c->inflight = 0;
  }
}

static void flush_out(struct conn *c) {
  while (c->count) {
    struct iovec iov[IOVS];
    int n = 0;
    for (unsigned i = 0; i < c->count && n < IOVS; i++, n++) {
      struct seg *s = &c->ring[(c->head + i) % RING];
      iov[n].iov_base = (char *)s->p + (i == 0 ? c->off : 0);
      iov[n].iov_len = s->n - (i == 0 ? c->off : 0);
    }
    ssize_t w = writev(c->fd, iov, n);
    if (w < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK) {
        set_events(c, 1);
        return;
      }
      if (errno == EINTR)
        continue;
      perror("bench_pipeline: write");
      errors++;
      close_conn(c);
      return;
    }
    size_t left = (size_t)w;
    while (left && c->count) {
      struct seg *s = &c->ring[c->head];
      size_t rest = s->n - c->off;
      if (left >= rest) {
        left -= rest;
        c->off = 0;
        c->head = (c->head + 1) % RING;
        c->count--;
      } else {
        c->off += left;
        left = 0;
      }
    }
  }
  set_events(c, 0);
}

/* Start as many messages as this connection may have in flight. */
static void fill(struct conn *c) {
  unsigned k = use_bdat ? (unsigned)opt.inflight : 1;
  while (c->inflight < k && to_start > 0) {
    to_start--;
    c->inflight++;
    if (use_bdat) {
      push(c, bdat_cmd, bdat_cmd_len);
      push(c, msg, msg_len);
    } else {
      push(c, data_cmd, sizeof data_cmd - 1);
    }
  }
  if (c->inflight == 0 && c->st == C_RUN) {
    push(c, quit_cmd, sizeof quit_cmd - 1);
    c->st = C_QUIT;
  }
}

static void bad_reply(struct conn *c, const char *line, size_t n) {
  if (errors < 5)
    fprintf(stderr, "bench_pipeline: unexpected reply: %.*s\n", (int)n, line);
  errors++;
  close_conn(c);
}

/* One complete reply line (without CRLF); returns 0 to go on. */
static int on_line(struct conn *c, const char *l, size_t n) {
  if (n < 3) {
    bad_reply(c, l, n);
    return -1;
  }
  int code = (l[0] - '0') * 100 + (l[1] - '0') * 10 + (l[2] - '0');
  int last = n == 3 || l[3] != '-';
  switch (c->st) {
  case C_GREETING:
    if (!last)
      return 0;
    if (code != 220) {
      bad_reply(c, l, n);
      return -1;
    }
    push(c, ehlo_cmd, sizeof ehlo_cmd - 1);
    c->st = C_EHLO;
    return 0;
  case C_EHLO:
    if (n >= 12 && !strncasecmp(l + 4, "CHUNKING", 8))
      c->chunking = 1;
    if (!last)
      return 0;
    if (code != 250) {
      bad_reply(c, l, n);
      return -1;
    }
    if (opt.idle) {
      c->st = C_RUN; /* idle: nothing more to send */
      ready_conns++;
      return 0;
    }
    if (use_bdat < 0) {
      use_bdat = opt.mode == 1 || (opt.mode == 0 && c->chunking);
      if (opt.mode == 1 && !c->chunking) {
        fprintf(stderr, "bench_pipeline: server does not offer CHUNKING\n");
        exit(1);
      }
    }
    c->st = C_RUN;
    fill(c);
    return 0;
  case C_RUN:
    if (!last)
      return 0;
    if (use_bdat) {
      if (code != 250) {
        bad_reply(c, l, n);
        return -1;
      }
      if (++c->phase == 3) {
        c->phase = 0;
        c->inflight--;
        done_msgs++;
        fill(c);
      }
    } else {
      /* MAIL 250, RCPT 250, DATA 354, end of data 250 */
      int want = c->phase == 2 ? 354 : 250;
      if (code != want) {
        bad_reply(c, l, n);
        return -1;
      }
      if (c->phase == 2) {
        /* the content, and in the same write the next message's
         * MAIL/RCPT/DATA (content may start a group: RFC 2920 3.1) */
        push(c, data_body, data_body_len);
        if (to_start > 0) {
          to_start--;
          c->inflight++;
          push(c, data_cmd, sizeof data_cmd - 1);
        }
        c->phase = 3;
      } else if (c->phase == 3) {
        c->phase = 0;
        c->inflight--;
        done_msgs++;
        fill(c); /* QUIT when nothing is left */
      } else {
        c->phase++;
      }
    }
    return 0;
  case C_QUIT:
    if (last)
      close_conn(c);
    return -1;
  default:
    return -1;
  }
}

static void on_readable(struct conn *c) {
  for (;;) {
    ssize_t r = read(c->fd, c->in + c->inlen, rbuf - c->inlen);
    if (r < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK)
        break;
      if (errno == EINTR)
        continue;
      perror("bench_pipeline: read");
      errors++;
      close_conn(c);
      return;
    }
    if (r == 0) {
      if (c->st != C_QUIT) {
        fprintf(stderr, "bench_pipeline: server closed the connection\n");
        errors++;
      }
      close_conn(c);
      return;
    }
    c->inlen += (size_t)r;
    size_t pos = 0;
    for (;;) {
      char *nl = memchr(c->in + pos, '\n', c->inlen - pos);
      if (!nl)
        break;
      size_t n = (size_t)(nl - (c->in + pos));
      size_t len = n && nl[-1] == '\r' ? n - 1 : n;
      if (on_line(c, c->in + pos, len))
        return;
      pos += n + 1;
    }
    if (pos) {
      memmove(c->in, c->in + pos, c->inlen - pos);
      c->inlen -= pos;
    }
    if (c->inlen == rbuf) {
      fprintf(stderr, "bench_pipeline: reply line too long\n");
      errors++;
      close_conn(c);
      return;
    }
    if ((size_t)r < rbuf / 2)
      break; /* probably drained; epoll is level-triggered anyway */
  }
  flush_out(c);
}

static int start_connect(struct conn *c) {
  c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (c->fd < 0)
    die("socket");
  int one = 1;
  setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  if (connect(c->fd, (struct sockaddr *)&opt.addr, sizeof opt.addr) &&
      errno != EINPROGRESS)
    die("connect");
  c->st = C_CONNECT;
  c->want_out = 1;
  struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.ptr = c};
  if (epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev))
    die("epoll_ctl");
  open_conns++;
  return 0;
}

static void on_event(struct conn *c, uint32_t evs) {
  if (c->st == C_CONNECT) {
    int err = 0;
    socklen_t l = sizeof err;
    getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &l);
    if (err) {
      errno = err;
      perror("bench_pipeline: connect");
      errors++;
      close_conn(c);
      return;
    }
    c->st = C_GREETING;
    set_events(c, 0);
  }
  if (evs & (EPOLLIN | EPOLLHUP | EPOLLERR))
    on_readable(c);
  if (c->st != C_DONE && (evs & EPOLLOUT))
    flush_out(c);
}

static volatile sig_atomic_t stop;
static void on_sig(int s) {
  (void)s;
  stop = 1;
}

static void usage(void) {
  fprintf(stderr, "usage: bench_pipeline [-s sessions] [-m messages] "
                  "[-l size] [-k inflight] [-M auto|bdat|data] [-t sec] "
                  "[-i idle_conns] [-q] HOST:PORT\n");
  exit(2);
}

int main(int argc, char **argv) {
  int o;
  while ((o = getopt(argc, argv, "s:m:l:k:M:t:i:q")) != -1) {
    switch (o) {
    case 's': opt.sessions = atoi(optarg); break;
    case 'm': opt.messages = atol(optarg); break;
    case 'l': opt.size = (size_t)atol(optarg); break;
    case 'k': opt.inflight = atoi(optarg); break;
    case 't': opt.limit = atof(optarg); break;
    case 'i': opt.idle = atoi(optarg); break;
    case 'q': opt.quiet = 1; break;
    case 'M':
      opt.mode = !strcmp(optarg, "bdat") ? 1 : !strcmp(optarg, "data") ? 2
               : !strcmp(optarg, "auto") ? 0 : -1;
      if (opt.mode < 0)
        usage();
      break;
    default: usage();
    }
  }
  if (argc == 1) {
    /* `make bench` runs every driver without arguments: this one needs a
     * server, so say how it is used and succeed */
    printf("bench_pipeline: a load generator, used by bench/run-sink.sh; "
           "run it as\n  bench_pipeline [-s N] [-m M] [-l S] [-k K] "
           "[-M auto|bdat|data] HOST:PORT\n");
    return 0;
  }
  if (optind + 1 != argc || opt.sessions < 1 || opt.messages < 0 ||
      opt.inflight < 1 || opt.inflight > MAX_INFLIGHT || opt.idle < 0)
    usage();
  char host[64];
  const char *colon = strrchr(argv[optind], ':');
  if (!colon || (size_t)(colon - argv[optind]) >= sizeof host)
    usage();
  memcpy(host, argv[optind], (size_t)(colon - argv[optind]));
  host[colon - argv[optind]] = 0;
  opt.addr.sin_family = AF_INET;
  opt.addr.sin_port = htons((uint16_t)atoi(colon + 1));
  if (inet_pton(AF_INET, host, &opt.addr.sin_addr) != 1)
    usage();
  if (opt.mode == 2 && opt.inflight > 1) {
    fprintf(stderr, "bench_pipeline: DATA needs the 354 first: -k 1\n");
    return 2;
  }
  signal(SIGPIPE, SIG_IGN);
  signal(SIGTERM, on_sig);
  signal(SIGINT, on_sig);

  int nconn = opt.idle ? opt.idle : opt.sessions;
  if (!opt.idle && nconn > opt.messages && opt.messages > 0)
    nconn = (int)opt.messages;
  struct rlimit rl;
  if (!getrlimit(RLIMIT_NOFILE, &rl) && rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
  }
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < (rlim_t)nconn + 16) {
    fprintf(stderr, "bench_pipeline: RLIMIT_NOFILE %llu too low for %d\n",
            (unsigned long long)rl.rlim_cur, nconn);
    return 2;
  }
  build_message();
  to_start = opt.messages;
  ep = epoll_create1(EPOLL_CLOEXEC);
  if (ep < 0)
    die("epoll_create1");
  struct conn *cs = calloc((size_t)nconn, sizeof *cs);
  if (!cs)
    die("calloc");
  rbuf = opt.idle ? RBUF_IDLE : RBUF_LOAD;
  char *ibufs = malloc((size_t)nconn * rbuf);
  if (!ibufs)
    die("malloc");
  for (int i = 0; i < nconn; i++)
    cs[i].in = ibufs + (size_t)i * rbuf;

  double t0 = now(), deadline = t0 + opt.limit, t_end = 0;
  int started = 0;
  /* idle mode: at most this many connections being set up at once */
  const int setup_window = 256;
  struct epoll_event evs[256];
  for (;;) {
    /* load: all sessions at once; idle: a window of set-ups at a time */
    while (started < nconn &&
           (!opt.idle || started - ready_conns < setup_window))
      start_connect(&cs[started++]);
    if (opt.idle && open_conns < started) {
      fprintf(stderr, "bench_pipeline: %d idle connections failed\n",
              started - open_conns);
      return 1;
    }
    if (opt.idle ? ready_conns == nconn : open_conns == 0)
      break;
    double left = deadline - now();
    if (left <= 0 || stop) {
      if (opt.idle)
        fprintf(stderr, "bench_pipeline: time limit: %d of %d connections "
                        "ready\n", ready_conns, nconn);
      else
        fprintf(stderr, "bench_pipeline: time limit: %ld of %ld messages "
                        "done\n", done_msgs, opt.messages);
      return 3;
    }
    int n = epoll_wait(ep, evs, 256, left > 1 ? 1000 : (int)(left * 1000) + 1);
    if (n < 0) {
      if (errno == EINTR)
        continue;
      die("epoll_wait");
    }
    for (int i = 0; i < n; i++) {
      struct conn *c = evs[i].data.ptr;
      if (c->st != C_DONE)
        on_event(c, evs[i].events);
    }
    if (!opt.idle && done_msgs == opt.messages && t_end == 0)
      t_end = now();
  }

  if (opt.idle) {
    printf("ready %d\n", nconn);
    fflush(stdout);
    while (!stop && now() < deadline)
      usleep(20000);
    for (int i = 0; i < nconn; i++)
      close(cs[i].fd);
    return 0;
  }
  if (t_end == 0)
    t_end = now();
  double secs = t_end - t0;
  if (!opt.quiet)
    fprintf(stderr, "%ld messages of %zu octets over %d sessions, %s, "
                    "%d in flight: %.3f s\n",
            done_msgs, opt.size, nconn, use_bdat ? "BDAT" : "DATA",
            use_bdat ? opt.inflight : 1, secs);
  printf("RESULT mode=%s sessions=%d inflight=%d size=%zu messages=%ld "
         "errors=%ld seconds=%.4f msgs_per_s=%.1f MB_per_s=%.2f\n",
         use_bdat ? "bdat" : "data", nconn, use_bdat ? opt.inflight : 1,
         opt.size, done_msgs, errors, secs, done_msgs / secs,
         (double)done_msgs * (double)opt.size / secs / 1e6);
  return errors || done_msgs != opt.messages ? 1 : 0;
}
