/*
 * Pipe delivery for `tern serve` (deliver.h has the contract): run a
 * command with the message on stdin and map its exit status to a reply.
 *
 * The command is started with uv_spawn (argv, no shell, the environment
 * the caller built). stdin is a pipe fed with uv_write, one caller chunk
 * at a time (the caller waits for the callback: that is the
 * backpressure). stdout and stderr share one pipe; its first 1 KiB is
 * kept for the detail text and the rest is read and dropped, so a chatty
 * command never blocks on a full pipe.
 *
 * A command may exit without reading all of its input. Writes then fail
 * with EPIPE (SIGPIPE is ignored, see pipe_begin), which is remembered
 * but does not decide the outcome: as in Postfix's pipe(8), the exit
 * status does, and EPIPE with exit 0 is a success ("delivered" to a
 * command that chose not to read, like /bin/true). Any other write error
 * with exit 0 is a temporary failure.
 */
#include "deliver.h"
#include "recipients.h"

#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define PD_CAPTURE_MAX 1024
/* After the exit, how long to wait for the output pipe's EOF: a
 * background grandchild may hold it open for ever. */
#define PD_EOF_WAIT_MS 200
/* After pipe_abort's SIGTERM, when to send SIGKILL. */
#define PD_KILL_AFTER_MS 5000

/*
 * Exit status → reply. Postfix's sys_exits table (global/sys_exits.c) for
 * the codes and classes, with these choices of ours: IOERR, CANTCREAT and
 * OSFILE are temporary (Postfix: permanent; a full or broken file system
 * under the command is worth a retry), and NOPERM is 5.7.1 (Postfix 5.7.0).
 *
 *   exit  name            reply
 *   0     EX_OK           250 2.0.0
 *   64    EX_USAGE        554 5.3.0
 *   65    EX_DATAERR      554 5.6.0
 *   66    EX_NOINPUT      554 5.3.0
 *   67    EX_NOUSER       550 5.1.1
 *   68    EX_NOHOST       550 5.1.2
 *   69    EX_UNAVAILABLE  554 5.3.0
 *   70    EX_SOFTWARE     554 5.3.0
 *   71    EX_OSERR        451 4.3.0
 *   72    EX_OSFILE       451 4.3.0
 *   73    EX_CANTCREAT    451 4.3.0
 *   74    EX_IOERR        451 4.3.0
 *   75    EX_TEMPFAIL     451 4.3.0
 *   76    EX_PROTOCOL     554 5.5.0
 *   77    EX_NOPERM       554 5.7.1
 *   78    EX_CONFIG       554 5.3.5
 *   other non-zero        554 5.3.0
 *   killed by a signal    451 4.3.0
 *   (exit 0, write error other than EPIPE: 451 4.3.0)
 */
struct pd_exit {
  const char *name;
  struct tern_reply reply;
};

static const struct pd_exit pd_exits[] = {
    /* 64 */ {"EX_USAGE", {554, "5.3.0", "Error: command line usage error"}},
    /* 65 */ {"EX_DATAERR", {554, "5.6.0", "Error: data format error"}},
    /* 66 */ {"EX_NOINPUT", {554, "5.3.0", "Error: cannot open input"}},
    /* 67 */ {"EX_NOUSER", {550, "5.1.1", "Error: user unknown"}},
    /* 68 */ {"EX_NOHOST", {550, "5.1.2", "Error: host name unknown"}},
    /* 69 */ {"EX_UNAVAILABLE", {554, "5.3.0", "Error: service unavailable"}},
    /* 70 */ {"EX_SOFTWARE", {554, "5.3.0", "Error: internal software error"}},
    /* 71 */ {"EX_OSERR", {451, "4.3.0", "Error: system resource problem"}},
    /* 72 */ {"EX_OSFILE", {451, "4.3.0", "Error: critical OS file missing"}},
    /* 73 */ {"EX_CANTCREAT", {451, "4.3.0", "Error: cannot create output"}},
    /* 74 */ {"EX_IOERR", {451, "4.3.0", "Error: input/output error"}},
    /* 75 */ {"EX_TEMPFAIL", {451, "4.3.0", "Error: temporary failure"}},
    /* 76 */ {"EX_PROTOCOL", {554, "5.5.0", "Error: remote error in protocol"}},
    /* 77 */ {"EX_NOPERM", {554, "5.7.1", "Error: permission denied"}},
    /* 78 */ {"EX_CONFIG", {554, "5.3.5", "Error: local configuration error"}},
};
#define PD_EX_BASE 64

static const struct tern_reply pd_ok = {250, "2.0.0", "Ok: delivered"};
static const struct tern_reply pd_other = {554, "5.3.0",
                                           "Error: command failed"};
static const struct tern_reply pd_temp = {451, "4.3.0",
                                          "Error: command failed"};

struct pipe_delivery {
  uv_loop_t *loop;
  uv_process_t proc;
  uv_pipe_t in;  /* the command's stdin */
  uv_pipe_t out; /* its stdout + stderr */
  uv_timer_t timer;
  uv_timer_t limit; /* no progress for pd_limit_ms: kill (time limit) */
  int handles; /* initialised and not yet closed */

  char *header;
  uv_write_t hreq;
  uv_write_t wreq;
  size_t writes; /* uv_write requests in flight */
  void (*wcb)(void *arg, int status);
  void *warg;
  int werr; /* first write error */

  bool out_open, in_closing, in_closed, committed, aborted, finished;
  bool exited, eof, killed, timed_out;
  int64_t exit_status;
  int term_signal;

  deliver_done_fn done;
  void *done_arg;

  char rbuf[4096];
  char cap[PD_CAPTURE_MAX];
  size_t caplen;
  char detail[PD_CAPTURE_MAX + 96];
};

/* ---- lifetime ------------------------------------------------------------ */

/* d lives while it has open handles or a hold (a function on the stack
 * that still uses it); the last one frees it. */
static void pd_unhold(struct pipe_delivery *d) {
  if (--d->handles == 0) {
    free(d->header);
    free(d);
  }
}

static void pd_closed(uv_handle_t *h) { pd_unhold(h->data); }

static void pd_close(uv_handle_t *h) {
  if (!uv_is_closing(h))
    uv_close(h, pd_closed);
}

static void pd_try_finish(struct pipe_delivery *d);

/* stdin is closed (the command has its EOF): part of "finished", and
 * always in a callback, so `done` never runs inside pipe_commit. */
static void pd_in_closed(uv_handle_t *h) {
  struct pipe_delivery *d = h->data;
  d->in_closed = true;
  pd_try_finish(d);
  pd_unhold(d);
}

static void pd_close_stdin(struct pipe_delivery *d) {
  if (!d->in_closing) {
    d->in_closing = true;
    uv_close((uv_handle_t *)&d->in, pd_in_closed);
  }
}

static void pd_close_out(struct pipe_delivery *d) {
  if (d->out_open)
    uv_read_stop((uv_stream_t *)&d->out);
  d->out_open = false;
  pd_close((uv_handle_t *)&d->out);
}

/* Close everything; the process handle only once the child is reaped
 * (closing it earlier would leave a zombie). */
static void pd_teardown(struct pipe_delivery *d) {
  pd_close_stdin(d);
  pd_close_out(d);
  if (d->exited) {
    pd_close((uv_handle_t *)&d->proc);
    pd_close((uv_handle_t *)&d->timer);
    pd_close((uv_handle_t *)&d->limit);
  }
}

/* The command runs in its own session (process group), so a signal
 * reaches what it started too (a shell's `sleep`, a background job). */
static void pd_kill(struct pipe_delivery *d, int sig) {
  if (!d->exited && d->proc.pid > 0 && uv_kill(-d->proc.pid, sig) != 0)
    uv_process_kill(&d->proc, sig);
}

static _Atomic unsigned pd_limit_ms;

void pipe_set_time_limit(unsigned ms) { pd_limit_ms = ms; }

static void pd_on_limit(uv_timer_t *t) {
  struct pipe_delivery *d = t->data;
  if (d->exited || d->aborted)
    return;
  d->timed_out = true;
  pd_kill(d, SIGKILL);
}

/* The command made progress (took input, or was handed the end of it):
 * it has pd_limit_ms again. */
static void pd_progress(struct pipe_delivery *d) {
  unsigned ms = pd_limit_ms;
  if (ms && !d->exited && !d->aborted)
    uv_timer_start(&d->limit, pd_on_limit, ms, 0);
}

/* ---- outcome ------------------------------------------------------------- */

/* The captured output on one line: controls become spaces, other
 * non-ASCII bytes '?', so the detail may go into a reply or a log. */
static void pd_output(const struct pipe_delivery *d, char *buf, size_t cap) {
  size_t o = 0;
  bool space = true;

  for (size_t i = 0; i < d->caplen && o + 1 < cap; i++) {
    unsigned char c = (unsigned char)d->cap[i];
    if (c < 0x20 || c == 0x7f)
      c = ' ';
    else if (c > 0x7e)
      c = '?';
    if (c == ' ' && space)
      continue;
    space = c == ' ';
    buf[o++] = (char)c;
  }
  while (o > 0 && buf[o - 1] == ' ')
    o--;
  buf[o] = '\0';
}

static const struct tern_reply *pd_map(struct pipe_delivery *d) {
  const struct tern_reply *r;
  char out[PD_CAPTURE_MAX + 1];
  char what[64];

  pd_output(d, out, sizeof out);
  if (d->timed_out) {
    r = &pd_temp;
    snprintf(what, sizeof what, "command time limit exceeded (%u ms), killed",
             (unsigned)pd_limit_ms);
  } else if (d->term_signal != 0) {
    r = &pd_temp;
    snprintf(what, sizeof what, "command killed by signal %d", d->term_signal);
  } else if (d->exit_status == 0) {
    if (d->werr != 0 && d->werr != UV_EPIPE) {
      r = &pd_temp;
      snprintf(what, sizeof what, "writing to command: %s",
               uv_strerror(d->werr));
    } else {
      r = &pd_ok;
      snprintf(what, sizeof what, "command exited with status 0");
    }
  } else if (d->exit_status >= PD_EX_BASE &&
             d->exit_status <
                 PD_EX_BASE + (int64_t)(sizeof pd_exits / sizeof *pd_exits)) {
    const struct pd_exit *e = &pd_exits[d->exit_status - PD_EX_BASE];
    r = &e->reply;
    snprintf(what, sizeof what, "command exited with status %d (%s)",
             (int)d->exit_status, e->name);
  } else {
    r = &pd_other;
    snprintf(what, sizeof what, "command exited with status %lld",
             (long long)d->exit_status);
  }
  snprintf(d->detail, sizeof d->detail, "%s%s%s", what, out[0] ? ": " : "",
           out);
  return r;
}

static void pd_try_finish(struct pipe_delivery *d) {
  if (d->finished || d->aborted || !d->committed || !d->in_closed ||
      !d->exited || !d->eof || d->writes > 0)
    return;
  d->finished = true;
  const struct tern_reply *r = pd_map(d);
  d->handles++; /* keep d alive through the callback */
  d->done(d->done_arg, r, d->detail);
  pd_teardown(d);
  pd_unhold(d);
}

/* ---- callbacks ----------------------------------------------------------- */

static void pd_on_timer(uv_timer_t *t) {
  struct pipe_delivery *d = t->data;

  if (d->aborted) { /* SIGTERM was not enough */
    pd_kill(d, SIGKILL);
    return;
  }
  /* Exited, but the output pipe stays open (a background grandchild):
   * answer with what we have. */
  d->eof = true;
  pd_close_out(d);
  pd_try_finish(d);
}

static void pd_on_exit(uv_process_t *p, int64_t status, int sig) {
  struct pipe_delivery *d = p->data;

  d->exited = true;
  d->exit_status = status;
  d->term_signal = sig;
  uv_timer_stop(&d->limit);
  if (d->aborted) {
    pd_teardown(d);
    return;
  }
  if (!d->eof)
    uv_timer_start(&d->timer, pd_on_timer, PD_EOF_WAIT_MS, 0);
  pd_try_finish(d);
}

static void pd_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf) {
  struct pipe_delivery *d = h->data;
  (void)hint;
  *buf = uv_buf_init(d->rbuf, sizeof d->rbuf);
}

static void pd_on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf) {
  struct pipe_delivery *d = s->data;

  if (n > 0) {
    size_t room = sizeof d->cap - d->caplen;
    size_t take = (size_t)n < room ? (size_t)n : room;
    memcpy(d->cap + d->caplen, buf->base, take);
    d->caplen += take;
    return;
  }
  if (n == 0)
    return; /* EAGAIN */
  /* UV_EOF or an error: either way no more output. */
  d->eof = true;
  pd_close_out(d);
  if (d->exited && !d->aborted)
    uv_timer_stop(&d->timer);
  pd_try_finish(d);
}

static void pd_on_write(uv_write_t *req, int status) {
  struct pipe_delivery *d = req->data;

  d->writes--;
  if (status < 0 && d->werr == 0 && !d->in_closing)
    d->werr = status;
  if (status == 0)
    pd_progress(d);
  if (req == &d->hreq) {
    free(d->header);
    d->header = NULL;
  }
  if (d->aborted)
    return;
  if (d->committed && d->writes == 0)
    pd_close_stdin(d);
  if (req == &d->wreq) {
    void (*cb)(void *, int) = d->wcb;
    d->wcb = NULL;
    if (cb != NULL && !d->committed)
      cb(d->warg, status); /* may call pipe_commit or pipe_abort */
    return;
  }
  pd_try_finish(d);
}

/* ---- public -------------------------------------------------------------- */

/* libuv does not ignore SIGPIPE for us, and writing to a command that has
 * exited would kill the daemon. Ignoring it is process-wide, but children
 * are not affected: uv_spawn resets every signal to SIG_DFL in the child. */
static void pd_ignore_sigpipe(void) {
  struct sigaction sa;

  if (sigaction(SIGPIPE, NULL, &sa) == 0 && sa.sa_handler == SIG_DFL) {
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = SIG_IGN;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGPIPE, &sa, NULL);
  }
}

int pipe_begin(uv_loop_t *loop, char *const *argv, char *const *env,
               const char *header, size_t hlen, struct pipe_delivery **out) {
  struct pipe_delivery *d;
  uv_file fds[2] = {-1, -1};
  int r;

  if (loop == NULL || argv == NULL || argv[0] == NULL ||
      (hlen > 0 && header == NULL) || hlen > UINT_MAX)
    return -EINVAL;
  if ((d = calloc(1, sizeof *d)) == NULL)
    return -ENOMEM;
  if ((d->header = malloc(hlen > 0 ? hlen : 1)) == NULL) {
    free(d);
    return -ENOMEM;
  }
  if (hlen > 0)
    memcpy(d->header, header, hlen);
  d->loop = loop;
  pd_ignore_sigpipe();

  /* The output pipe is ours (uv_pipe) so that stdout and stderr can
   * share its write end; both ends are close-on-exec until uv_spawn
   * dup2()s the write end onto the child's 1 and 2. */
  if ((r = uv_pipe(fds, 0, 0)) < 0) {
    free(d->header);
    free(d);
    return r;
  }
  /* From here on d is freed by the close callbacks. */
  d->handles = 1; /* held by this function */
  uv_pipe_init(loop, &d->in, 0);
  d->in.data = d;
  d->handles++;
  uv_pipe_init(loop, &d->out, 0);
  d->out.data = d;
  d->handles++;
  uv_timer_init(loop, &d->timer);
  d->timer.data = d;
  d->handles++;
  uv_timer_init(loop, &d->limit);
  d->limit.data = d;
  d->handles++;

  uv_stdio_container_t stdio[3];
  stdio[0].flags = UV_CREATE_PIPE | UV_READABLE_PIPE;
  stdio[0].data.stream = (uv_stream_t *)&d->in;
  stdio[1].flags = UV_INHERIT_FD;
  stdio[1].data.fd = fds[1];
  stdio[2].flags = UV_INHERIT_FD;
  stdio[2].data.fd = fds[1];

  uv_process_options_t opt;
  memset(&opt, 0, sizeof opt);
  opt.exit_cb = pd_on_exit;
  opt.file = argv[0];
  opt.args = (char **)argv;
  opt.env = (char **)env;
  opt.stdio_count = 3;
  opt.stdio = stdio;
  opt.flags = UV_PROCESS_DETACHED; /* its own process group: pd_kill */

  r = uv_spawn(loop, &d->proc, &opt);
  /* A failed uv_spawn still initialised the handle: it must be closed. */
  d->proc.data = d;
  d->handles++;
  close(fds[1]);
  fds[1] = -1;
  if (r < 0) {
    close(fds[0]);
    d->exited = true; /* nothing to reap */
    d->aborted = true;
    pd_teardown(d);
    pd_unhold(d); /* this function's hold */
    return r;
  }
  if ((r = uv_pipe_open(&d->out, fds[0])) == 0) {
    d->out_open = true;
    r = uv_read_start((uv_stream_t *)&d->out, pd_alloc, pd_on_read);
  }
  if (r < 0) {
    if (!d->out_open)
      close(fds[0]);
    d->eof = true; /* no output to wait for */
  }
  if (hlen > 0) {
    uv_buf_t b = uv_buf_init(d->header, (unsigned)hlen);
    d->hreq.data = d;
    if ((r = uv_write(&d->hreq, (uv_stream_t *)&d->in, &b, 1, pd_on_write)) < 0)
      d->werr = r;
    else
      d->writes++;
  }
  pd_progress(d);
  d->handles--; /* this function's hold: never the last (5 handles) */
  *out = d;
  return 0;
}

int pipe_write(struct pipe_delivery *d, const char *buf, size_t len,
               void (*cb)(void *arg, int status), void *arg) {
  if (d == NULL || cb == NULL || (len > 0 && buf == NULL) || len > UINT_MAX)
    return -EINVAL;
  if (d->committed || d->aborted)
    return -EINVAL;
  if (d->wcb != NULL)
    return -EBUSY;
  if (d->werr != 0)
    return d->werr;
  uv_buf_t b = uv_buf_init((char *)buf, (unsigned)len);
  d->wreq.data = d;
  int r = uv_write(&d->wreq, (uv_stream_t *)&d->in, &b, 1, pd_on_write);
  if (r < 0) {
    d->werr = r;
    return r;
  }
  d->writes++;
  d->wcb = cb;
  d->warg = arg;
  return 0;
}

void pipe_commit(struct pipe_delivery *d, deliver_done_fn done, void *arg) {
  d->committed = true;
  d->done = done;
  d->done_arg = arg;
  pd_progress(d);
  if (d->writes == 0)
    pd_close_stdin(d);
  /* else: the last write callback closes stdin. Exit and EOF arrive in
   * callbacks, so `done` never runs inside this call. */
}

void pipe_abort(struct pipe_delivery *d) {
  if (d == NULL || d->aborted || d->finished)
    return;
  d->aborted = true;
  pd_teardown(d);
  if (!d->exited) {
    uv_timer_stop(&d->limit);
    pd_kill(d, SIGTERM);
    uv_timer_start(&d->timer, pd_on_timer, PD_KILL_AFTER_MS, 0);
  }
}

/* ---- one command per recipient ------------------------------------------- */

/*
 * A group is N pipe deliveries fed the same bytes: one command per
 * recipient, each with its own argv and exit status. The body is copied
 * once into the group's buffer and written to every command still
 * taking input; the caller's callback runs when the last of those writes
 * is done. A command that could not be started, or that stopped reading,
 * takes no more writes and does not hold the others back.
 */
struct pipe_member {
  struct pipe_group *g;
  size_t i;
  struct pipe_delivery *d; /* NULL: not started, or finished */
  int start_err;           /* pipe_begin's error, 0 if started */
  bool broken;             /* a write failed: no more writes */
  bool reported;           /* `each` was called for it */
};

struct pipe_group {
  size_t n;
  size_t running; /* started and not finished */
  size_t writes;  /* member writes in flight */
  unsigned in_cb; /* inside a member's done callback */
  bool committed, aborted;
  const char *header;
  size_t hlen;
  char *buf;
  size_t bcap;
  void (*wcb)(void *arg, int status);
  void *warg;
  pipe_each_fn each;
  void *each_arg;
  const struct deliver_cbs *ocb; /* behind deliver_ops: the session's */
  void *oarg;
  size_t nreported;
  struct pipe_member m[];
};

static const struct tern_reply pg_nostart = {451, "4.3.0",
                                             "Error: local delivery failed"};

static void pg_free(struct pipe_group *g) {
  free(g->buf);
  free(g);
}

int pipe_group_new(struct pipe_group **out, size_t n, const char *header,
                   size_t hlen) {
  struct pipe_group *g;

  if (n == 0 || (hlen > 0 && header == NULL))
    return -EINVAL;
  if (n > (SIZE_MAX - sizeof *g) / sizeof g->m[0])
    return -ENOMEM;
  if ((g = calloc(1, sizeof *g + n * sizeof g->m[0])) == NULL)
    return -ENOMEM;
  g->n = n;
  g->header = header;
  g->hlen = hlen;
  for (size_t i = 0; i < n; i++) {
    g->m[i].g = g;
    g->m[i].i = i;
    g->m[i].start_err = -ECANCELED; /* until started */
  }
  *out = g;
  return 0;
}

int pipe_group_start(struct pipe_group *g, uv_loop_t *loop, size_t i,
                     char *const *argv, char *const *env) {
  struct pipe_member *m;
  int r;

  if (g == NULL || i >= g->n || g->m[i].d != NULL || g->committed)
    return -EINVAL;
  m = &g->m[i];
  if (argv == NULL) {
    m->start_err = -E2BIG; /* the caller's command line did not fit */
    return -E2BIG;
  }
  r = pipe_begin(loop, argv, env, g->header, g->hlen, &m->d);
  m->start_err = r;
  if (r == 0)
    g->running++;
  else
    m->d = NULL;
  return r;
}

static void pg_written(void *arg, int status) {
  struct pipe_member *m = arg;
  struct pipe_group *g = m->g;

  if (status < 0)
    m->broken = true; /* its exit status decides; no more writes to it */
  if (--g->writes > 0)
    return;
  void (*cb)(void *, int) = g->wcb;
  g->wcb = NULL;
  cb(g->warg, 0);
}

int pipe_group_write(struct pipe_group *g, const char *buf, size_t len,
                     void (*cb)(void *arg, int status), void *arg) {
  if (g == NULL || cb == NULL || (len > 0 && buf == NULL) || g->committed ||
      g->aborted)
    return -EINVAL;
  if (g->writes > 0)
    return -EBUSY;
  if (len > g->bcap) {
    char *nb = realloc(g->buf, len);
    if (nb == NULL)
      return -ENOMEM;
    g->buf = nb;
    g->bcap = len;
  }
  if (len > 0)
    memcpy(g->buf, buf, len);
  g->wcb = cb;
  g->warg = arg;
  for (size_t i = 0; i < g->n; i++) {
    struct pipe_member *m = &g->m[i];
    if (m->d == NULL || m->broken)
      continue;
    if (pipe_write(m->d, g->buf, len, pg_written, m) == 0)
      g->writes++;
    else
      m->broken = true; /* remembered by the delivery: commit maps it */
  }
  if (g->writes == 0) {
    g->wcb = NULL;
    return 1;
  }
  return 0;
}

/* The members that never started: their outcome, from a callback. */
static void pg_report_unstarted(struct pipe_group *g) {
  for (size_t i = 0; i < g->n && !g->aborted; i++) {
    struct pipe_member *m = &g->m[i];
    if (m->start_err == 0 || m->reported)
      continue;
    char detail[160];
    snprintf(detail, sizeof detail, "cannot start command: %s",
             uv_strerror(m->start_err));
    m->reported = true;
    g->each(g->each_arg, i, &pg_nostart, detail);
  }
}

static void pg_member_done(void *arg, const struct tern_reply *r,
                           const char *detail) {
  struct pipe_member *m = arg;
  struct pipe_group *g = m->g;

  m->d = NULL; /* it frees itself after this returns */
  g->running--;
  g->in_cb++;
  pg_report_unstarted(g);
  if (!g->aborted) {
    m->reported = true;
    g->each(g->each_arg, m->i, r, detail);
  }
  g->in_cb--;
  if (g->in_cb == 0 && (g->aborted || g->running == 0))
    pg_free(g);
}

void pipe_group_commit(struct pipe_group *g, pipe_each_fn each, void *arg) {
  g->committed = true;
  g->each = each;
  g->each_arg = arg;
  for (size_t i = 0; i < g->n; i++)
    if (g->m[i].d != NULL)
      pipe_commit(g->m[i].d, pg_member_done, &g->m[i]);
}

void pipe_group_abort(struct pipe_group *g) {
  if (g == NULL || g->aborted)
    return;
  g->aborted = true;
  for (size_t i = 0; i < g->n; i++) {
    if (g->m[i].d != NULL)
      pipe_abort(g->m[i].d);
    g->m[i].d = NULL;
  }
  if (g->in_cb == 0)
    pg_free(g);
}

/* ---- the delivery interface (deliver_ops) ------------------------------- */

/* Start recipient i's command: its own argv (%s %r %u %d %a expanded)
 * and environment. */
static int pgo_start(struct pipe_group *g, const struct deliver_target *t,
                     const struct deliver_msg *m, size_t i) {
  char words[4096], *argv[64], envs[4][600];
  char *env[] = {envs[0], envs[1], envs[2], envs[3], NULL};
  const char *rcpt = m->rcpts[i];
  bool fits = rcpt_pipe_argv(t->spec, m->from, rcpt, words, sizeof words,
                             argv, 64) > 0;

  snprintf(envs[0], sizeof envs[0], "SENDER=%s", m->from);
  snprintf(envs[1], sizeof envs[1], "RECIPIENT=%s", rcpt);
  snprintf(envs[2], sizeof envs[2], "ORIGINAL_RECIPIENT=%s", rcpt);
  snprintf(envs[3], sizeof envs[3], "PATH=/usr/local/bin:/usr/bin:/bin");
  return pipe_group_start(g, m->loop, i, fits ? argv : NULL, env);
}

/* One command per recipient (pipe_group), each with its own exit
 * status. Fails only when no command could be started. */
static int pgo_begin(const struct deliver_target *t,
                     const struct deliver_msg *m, const struct deliver_cbs *cb,
                     void *arg, struct delivery **out,
                     struct tern_reply *refusal) {
  struct pipe_group *g;
  size_t started = 0;
  int r;

  pipe_set_time_limit(t->time_limit_ms);
  if ((r = pipe_group_new(&g, m->nrcpts, m->header, m->hlen)) != 0) {
    *refusal = pg_nostart;
    return r;
  }
  for (size_t i = 0; i < m->nrcpts; i++) {
    int ri = pgo_start(g, t, m, i);
    if (ri == 0)
      started++;
    else
      r = ri;
  }
  if (started == 0) {
    pipe_group_abort(g);
    *refusal = pg_nostart;
    return r ? r : -EINVAL;
  }
  g->header = NULL; /* pipe_begin copied it; the caller's may go */
  g->hlen = 0;
  g->ocb = cb;
  g->oarg = arg;
  *out = (struct delivery *)g;
  return 0;
}

static int pgo_write(struct delivery *dv, const char *buf, size_t len) {
  struct pipe_group *g = (struct pipe_group *)dv;
  int r = pipe_group_write(g, buf, len, g->ocb->written, g->oarg);
  /* pipe_group_write: 0 cb comes, 1 no command takes input any more */
  return r == 0 ? DELIVER_LATER : r == 1 ? 0 : r;
}

static void pgo_each(void *arg, size_t i, const struct tern_reply *r,
                     const char *detail) {
  struct pipe_group *g = arg;
  g->ocb->result(g->oarg, i, r, detail);
  if (!g->aborted && ++g->nreported == g->n)
    g->ocb->result(g->oarg, DELIVER_ALL, NULL, NULL);
}

static void pgo_commit(struct delivery *dv) {
  struct pipe_group *g = (struct pipe_group *)dv;
  pipe_group_commit(g, pgo_each, g);
}

static void pgo_abort(struct delivery *dv) {
  pipe_group_abort((struct pipe_group *)dv);
}

const struct deliver_ops pipe_ops = {true, pgo_begin, pgo_write, pgo_commit,
                                     pgo_abort};
