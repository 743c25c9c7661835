/*
 * The daemon's control socket (control.h has the protocol). One
 * listener per process, on the queue's home loop; each connection reads
 * one request line, answers, and closes.
 */
#define _GNU_SOURCE /* struct ucred, SO_PEERCRED */
#include "control.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "log.h"
#include "queue_fmt.h"

#define BLOCK_SIZE (64 * 1024)

struct conn;

/* Output on its way to the client: written when full (or at the end),
 * freed in its write callback. */
struct block {
  uv_write_t req;
  struct conn *c;
  size_t len, cap;
  char data[];
};

struct conn {
  uv_pipe_t pipe;
  uv_timer_t timer;
  uv_shutdown_t shutdown;
  int handles; /* open handles (pipe, timer) */
  bool closing;
  bool answered; /* the status line is out */
  bool shut;     /* ... and written (our side shut down) */
  bool peer_eof; /* the client closed its side */
  bool failed;   /* a write failed: stop formatting */
  uid_t uid;     /* the peer's (SO_PEERCRED), for the audit lines */
  struct block *cur;
  char req[CONTROL_MAX_REQUEST];
  size_t reqlen;
  struct conn *prev, *next;
};

/* The one control socket of the process. */
static struct {
  bool running, stopping;
  uv_loop_t *loop;
  struct tern_queue *q;
  uv_pipe_t listener;
  bool listener_open;
  char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
  dev_t dev;
  ino_t ino;
  struct conn *conns;
  size_t nconns;
  void (*done)(void *arg);
  void *done_arg;
} g;

static int fail(char *err, size_t cap, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int fail(char *err, size_t cap, const char *fmt, ...) {
  if (err != NULL && cap > 0) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, cap, fmt, ap);
    va_end(ap);
  }
  return -1;
}

/* ---- stopping ------------------------------------------------------------ */

/* Everything closed after control_stop: tell the caller. */
static void maybe_stopped(void) {
  if (!g.stopping || g.listener_open || g.conns != NULL)
    return;
  void (*done)(void *) = g.done;
  void *arg = g.done_arg;
  memset(&g, 0, sizeof g);
  if (done != NULL)
    done(arg);
}

static void conn_handle_closed(uv_handle_t *h) {
  struct conn *c = h->data;
  if (--c->handles > 0)
    return;
  if (c->prev)
    c->prev->next = c->next;
  else
    g.conns = c->next;
  if (c->next)
    c->next->prev = c->prev;
  g.nconns--;
  free(c->cur);
  free(c);
  maybe_stopped();
}

/* Close a connection; writes still queued are cancelled (their
 * callbacks free their blocks). */
static void conn_close(struct conn *c) {
  if (c->closing)
    return;
  c->closing = true;
  uv_close((uv_handle_t *)&c->timer, conn_handle_closed);
  uv_close((uv_handle_t *)&c->pipe, conn_handle_closed);
}

/* ---- output -------------------------------------------------------------- */

static void on_written(uv_write_t *req, int status) {
  struct block *b = req->data;
  if (status < 0)
    b->c->failed = true; /* the client went away: the close follows */
  free(b);
}

/* Write the current block (if it holds anything). */
static void submit(struct conn *c) {
  struct block *b = c->cur;
  if (b == NULL || b->len == 0)
    return;
  c->cur = NULL;
  if (c->failed || c->closing) {
    free(b);
    return;
  }
  uv_buf_t buf = uv_buf_init(b->data, (unsigned)b->len);
  b->req.data = b;
  if (uv_write(&b->req, (uv_stream_t *)&c->pipe, &buf, 1, on_written) != 0) {
    c->failed = true;
    free(b);
  }
}

/* Append "PREFIX LINE\n" (no prefix when prefix is 0). Returns 0 or -1
 * (out of memory, or the client is gone). */
static int emit(struct conn *c, char prefix, const char *line, size_t len) {
  size_t need = len + 2;
  if (c->failed)
    return -1;
  if (c->cur != NULL && c->cur->cap - c->cur->len < need)
    submit(c);
  if (c->cur == NULL) {
    size_t cap = need > BLOCK_SIZE ? need : BLOCK_SIZE;
    c->cur = malloc(sizeof *c->cur + cap);
    if (c->cur == NULL) {
      c->failed = true;
      return -1;
    }
    c->cur->c = c;
    c->cur->len = 0;
    c->cur->cap = cap;
  }
  char *p = c->cur->data + c->cur->len;
  if (prefix)
    *p++ = prefix;
  memcpy(p, line, len);
  p[len] = '\n';
  c->cur->len += len + 1 + (prefix ? 1 : 0);
  return 0;
}

static int data_line(void *arg, const char *line, size_t len) {
  return emit(arg, ' ', line, len);
}

/* How long a client may keep its side open after the answer. */
#define LINGER_MS 5000

static void on_linger(uv_timer_t *t) { conn_close(t->data); }

/* The answer is written. Close once the client has closed too (closing
 * with its unread bytes would reset the connection, and the client
 * could lose the answer), or after LINGER_MS. */
static void on_shutdown(uv_shutdown_t *req, int status) {
  struct conn *c = req->data;
  c->shut = true;
  if (status < 0 || c->peer_eof || c->closing)
    conn_close(c);
  else
    uv_timer_start(&c->timer, on_linger, LINGER_MS, 0);
}

/* The status line, then close once it is written. */
static void answer(struct conn *c, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void answer(struct conn *c, const char *fmt, ...) {
  char buf[512];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  if (n < 0)
    n = 0;
  if ((size_t)n >= sizeof buf)
    n = sizeof buf - 1;
  c->answered = true;
  c->reqlen = 0; /* room to read (and drop) what else the client sends */
  /* A client that never reads its answer would keep its slot (and the
   * answer's memory) for ever, and 16 of them lock out `tern queue`:
   * the answer has CONTROL_ANSWER_TIMEOUT_MS to be taken. */
  uv_timer_start(&c->timer, on_linger, CONTROL_ANSWER_TIMEOUT_MS, 0);
  if (emit(c, 0, buf, (size_t)n) == 0)
    submit(c);
  c->shutdown.data = c;
  if (c->failed ||
      uv_shutdown(&c->shutdown, (uv_stream_t *)&c->pipe, on_shutdown) != 0)
    conn_close(c);
}

/* ---- requests ------------------------------------------------------------ */

struct listing {
  struct conn *c;
  bool json;
  struct qfmt_totals t;
};

static int list_one(const struct tern_queue_list_msg *m, void *arg) {
  struct listing *l = arg;
  if (l->json)
    return qfmt_json(m, &l->t, data_line, l->c) != 0;
  return qfmt_text(m, &l->t, data_line, l->c) != 0;
}

/* A queue call's result as the status line. */
static void answer_rc(struct conn *c, int rc, const char *id) {
  if (c->failed)
    conn_close(c);
  else if (rc == 0)
    answer(c, "OK");
  else if (rc == TERN_ENOENT)
    answer(c, "ERR NOENT no such message: %s", id ? id : "");
  else
    answer(c, "ERR IO %s", tern_strerror(rc));
}

static void do_list(struct conn *c, const char *id, bool json) {
  struct listing l = {.c = c, .json = json};
  int rc = tern_queue_list(g.q, id, list_one, &l);
  if (rc == 0 && !json && id == NULL && !c->failed)
    qfmt_summary(&l.t, data_line, c);
  answer_rc(c, rc, id);
}

/* The audit trail: every change made through the socket is a log line
 * of the daemon's (who asked, for what, and how it went), so an
 * operator's delete or flush can be told from the scheduler's own work.
 * `id` is NULL for a flush of the whole queue. */
static void audit(const struct conn *c, const char *event, const char *id,
                  int rc) {
  const char *result = rc == 0             ? "ok"
                       : rc == TERN_ENOENT ? "no-such-message"
                                           : tern_strerror(rc);
  if (id != NULL)
    log_kv("event", event, "id", id, "by", "control", "uid", LOG_U(c->uid),
           "result", result, NULL);
  else
    log_kv("event", event, "scope", "all", "by", "control", "uid",
           LOG_U(c->uid), "result", result, NULL);
}

/* One request line (without its LF). */
static void handle(struct conn *c, char *line) {
  size_t n = strlen(line);
  if (n > 0 && line[n - 1] == '\r')
    line[--n] = '\0';
  char *arg = strchr(line, ' ');
  if (arg != NULL)
    *arg++ = '\0';
  const char *verb = line;
  bool takes_id = !strcmp(verb, "SHOW") || !strcmp(verb, "DELETE") ||
                  !strcmp(verb, "HOLD") || !strcmp(verb, "RELEASE");
  if (!strcmp(verb, "LIST")) {
    if (arg == NULL || !strcmp(arg, "JSON"))
      do_list(c, NULL, arg != NULL);
    else
      answer(c, "ERR USAGE LIST takes nothing or JSON");
    return;
  }
  if (!strcmp(verb, "FLUSH") && arg == NULL) {
    int rc = tern_queue_flush(g.q, NULL);
    audit(c, "flush", NULL, rc);
    answer_rc(c, rc, NULL);
    return;
  }
  if (!takes_id && strcmp(verb, "FLUSH") != 0) {
    answer(c, "ERR USAGE unknown request (LIST, SHOW, FLUSH, DELETE, HOLD, "
              "RELEASE)");
    return;
  }
  if (arg == NULL || !qfmt_id_ok(arg)) {
    answer(c, "ERR USAGE %s needs a queue id ([0-9A-Z], 1 to 23)", verb);
    return;
  }
  if (!strcmp(verb, "SHOW"))
    do_list(c, arg, false);
  else {
    int rc;
    const char *event;
    if (!strcmp(verb, "FLUSH"))
      rc = tern_queue_flush(g.q, arg), event = "flush";
    else if (!strcmp(verb, "DELETE"))
      rc = tern_queue_delete(g.q, arg), event = "delete";
    else if (!strcmp(verb, "HOLD"))
      rc = tern_queue_hold(g.q, arg, true), event = "hold";
    else
      rc = tern_queue_hold(g.q, arg, false), event = "release";
    audit(c, event, arg, rc);
    answer_rc(c, rc, arg);
  }
}

static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf) {
  struct conn *c = h->data;
  (void)hint;
  *buf = uv_buf_init(c->req + c->reqlen, (unsigned)(sizeof c->req - c->reqlen));
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf) {
  struct conn *c = s->data;
  (void)buf;
  if (c->closing)
    return;
  if (c->answered) { /* what follows the request is read and dropped */
    c->reqlen = 0;
    if (nread < 0) { /* EOF, or an error: done with the client either way */
      c->peer_eof = true;
      uv_read_stop(s);
      if (c->shut)
        conn_close(c);
    }
    return;
  }
  if (nread < 0) { /* EOF or error before a whole line: nothing to say */
    conn_close(c);
    return;
  }
  size_t old = c->reqlen;
  c->reqlen += (size_t)nread;
  char *lf = memchr(c->req + old, '\n', c->reqlen - old);
  if (lf != NULL) {
    *lf = '\0';
    if (memchr(c->req, '\0', (size_t)(lf - c->req)) != NULL)
      answer(c, "ERR USAGE NUL in the request");
    else
      handle(c, c->req);
  } else if (c->reqlen == sizeof c->req) {
    answer(c, "ERR USAGE request longer than %d octets", CONTROL_MAX_REQUEST);
  }
}

static void on_timeout(uv_timer_t *t) {
  struct conn *c = t->data;
  answer(c, "ERR USAGE no request within %d s",
         CONTROL_REQUEST_TIMEOUT_MS / 1000);
}

/* Root and the daemon's own user; nobody else. */
static bool peer_allowed(struct conn *c, uid_t *uid) {
  uv_os_fd_t fd;
  struct ucred cred;
  socklen_t len = sizeof cred;
  *uid = (uid_t)-1;
  if (uv_fileno((uv_handle_t *)&c->pipe, &fd) != 0 ||
      getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0 ||
      len != sizeof cred)
    return false;
  *uid = cred.uid;
  return cred.uid == 0 || cred.uid == geteuid();
}

static void on_connection(uv_stream_t *server, int status) {
  (void)server;
  if (status < 0 || g.stopping)
    return;
  struct conn *c = calloc(1, sizeof *c);
  if (c == NULL)
    return; /* libuv pauses the listener until an accept: out of memory
               leaves the control socket deaf, the daemon unharmed */
  if (uv_pipe_init(g.loop, &c->pipe, 0) != 0) {
    free(c);
    return;
  }
  uv_timer_init(g.loop, &c->timer);
  c->pipe.data = c->timer.data = c;
  c->handles = 2;
  c->next = g.conns;
  if (g.conns)
    g.conns->prev = c;
  g.conns = c;
  g.nconns++;
  if (uv_accept((uv_stream_t *)&g.listener, (uv_stream_t *)&c->pipe) != 0) {
    conn_close(c);
    return;
  }
  /* Read from the start, even from a client that is refused: its EOF
   * tells when the answer has been read. */
  if (uv_read_start((uv_stream_t *)&c->pipe, on_alloc, on_read) != 0) {
    conn_close(c);
    return;
  }
  uid_t uid;
  bool allowed = peer_allowed(c, &uid);
  c->uid = uid;
  if (!allowed) {
    answer(c,
           "ERR PERM uid %ld may not use this socket (root or uid %ld "
           "only)",
           (long)(int)uid, (long)geteuid());
    return;
  }
  if (g.nconns > CONTROL_MAX_CLIENTS) {
    answer(c, "ERR BUSY too many control clients; try again");
    return;
  }
  if (uv_timer_start(&c->timer, on_timeout, CONTROL_REQUEST_TIMEOUT_MS, 0) != 0)
    conn_close(c);
}

/* ---- starting ------------------------------------------------------------ */

/* A socket file at path: remove it if nobody answers on it (left by a
 * daemon that died); refuse to touch anything else. */
static int clear_stale(const char *path, char *err, size_t cap) {
  struct stat st;
  if (lstat(path, &st) != 0) {
    if (errno == ENOENT)
      return 0;
    return fail(err, cap, "control socket %s: %s", path, strerror(errno));
  }
  if (!S_ISSOCK(st.st_mode))
    return fail(err, cap, "control socket %s: exists and is not a socket",
                path);
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0)
    return fail(err, cap, "control socket %s: %s", path, strerror(errno));
  struct sockaddr_un sa = {.sun_family = AF_UNIX};
  memcpy(sa.sun_path, path, strlen(path) + 1);
  int rc = connect(fd, (struct sockaddr *)&sa, sizeof sa);
  int e = errno;
  close(fd);
  if (rc == 0)
    return fail(err, cap,
                "control socket %s: another daemon answers there (is tern "
                "serve already running on this queue?)",
                path);
  if (e != ECONNREFUSED)
    return fail(err, cap, "control socket %s: %s", path, strerror(e));
  if (unlink(path) != 0 && errno != ENOENT)
    return fail(err, cap,
                "control socket %s: cannot remove the stale "
                "socket: %s",
                path, strerror(errno));
  return 0;
}

/* Bind a socket at `where` with mode 0600. */
static int bind_0600(int fd, const char *where) {
  struct sockaddr_un sa = {.sun_family = AF_UNIX};
  memcpy(sa.sun_path, where, strlen(where) + 1);
  if (bind(fd, (struct sockaddr *)&sa, sizeof sa) != 0)
    return -1;
  if (chmod(where, 0600) != 0) {
    int e = errno;
    unlink(where);
    errno = e;
    return -1;
  }
  return 0;
}

/* A listening-to-be socket at path, mode 0600 from the moment it is
 * reachable: bound in a private 0700 directory beside it, then renamed
 * into place. (umask would do it too, but it is process-wide and the
 * delivery threads create files meanwhile.) Returns the fd or -1. */
static int make_socket(const char *path, char *err, size_t cap) {
  char tmpdir[sizeof g.path], tmp[sizeof g.path + 8];
  const char *slash = strrchr(path, '/');
  int dl = slash ? (int)(slash - path) : 1;
  const char *dir = slash ? path : ".";
  if (slash == path)
    dl = 1; /* "/control": the root directory */
  int n = snprintf(tmpdir, sizeof tmpdir, "%.*s/.control-XXXXXX", dl, dir);
  bool direct = n < 0 || (size_t)n + 2 >= sizeof g.path; /* + "/s" */
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0)
    return fail(err, cap, "control socket %s: %s", path, strerror(errno));
  if (direct) {
    /* No room for the detour in sun_path: bind in place; the socket is
     * reachable with the umask's mode until the chmod. */
    if (bind_0600(fd, path) != 0) {
      int e = errno;
      close(fd);
      return fail(err, cap, "control socket %s: %s", path, strerror(e));
    }
    return fd;
  }
  if (mkdtemp(tmpdir) == NULL) {
    int e = errno;
    close(fd);
    return fail(err, cap, "control socket %s: cannot make %s: %s", path, tmpdir,
                strerror(e));
  }
  snprintf(tmp, sizeof tmp, "%s/s", tmpdir);
  int rc = bind_0600(fd, tmp);
  int e = errno;
  if (rc == 0 && rename(tmp, path) != 0) {
    e = errno;
    unlink(tmp);
    rc = -1;
  }
  rmdir(tmpdir);
  if (rc != 0) {
    close(fd);
    return fail(err, cap, "control socket %s: %s", path, strerror(e));
  }
  return fd;
}

static void listener_closed(uv_handle_t *h) {
  (void)h;
  g.listener_open = false;
  maybe_stopped();
}

int control_start(uv_loop_t *loop, struct tern_queue *q, const char *path,
                  char *err, size_t cap) {
  if (err != NULL && cap > 0)
    err[0] = '\0';
  if (g.running || g.stopping)
    return fail(err, cap, "control socket %s: one is running already", path);
  if (loop == NULL || q == NULL || path == NULL || path[0] == '\0')
    return fail(err, cap, "control socket: no loop, queue or path");
  if (strlen(path) >= sizeof g.path)
    return fail(err, cap,
                "control socket %s: the path is longer than a unix socket "
                "allows (%zu octets); set a shorter [queue] control",
                path, sizeof g.path - 1);
  if (clear_stale(path, err, cap) != 0)
    return -1;
  int fd = make_socket(path, err, cap);
  if (fd < 0)
    return -1;
  struct stat st;
  if (lstat(path, &st) != 0) {
    int e = errno;
    close(fd);
    return fail(err, cap, "control socket %s: %s", path, strerror(e));
  }
  memset(&g, 0, sizeof g);
  g.loop = loop;
  g.q = q;
  g.dev = st.st_dev;
  g.ino = st.st_ino;
  memcpy(g.path, path, strlen(path) + 1);
  int rc = uv_pipe_init(loop, &g.listener, 0);
  if (rc == 0) {
    g.listener_open = true;
    rc = uv_pipe_open(&g.listener, fd);
    if (rc == 0)
      rc = uv_listen((uv_stream_t *)&g.listener, 64, on_connection);
  }
  if (rc != 0) {
    unlink(path);
    if (g.listener_open) {
      /* the handle owns fd once opened: closing it closes fd; g stays
       * until its close callback */
      g.stopping = true;
      uv_close((uv_handle_t *)&g.listener, listener_closed);
    } else {
      close(fd);
      memset(&g, 0, sizeof g);
    }
    return fail(err, cap, "control socket %s: %s", path, uv_strerror(rc));
  }
  g.running = true;
  return 0;
}

void control_stop(void (*done)(void *arg), void *arg) {
  if (!g.running) {
    if (done != NULL)
      done(arg);
    return;
  }
  g.running = false;
  g.stopping = true;
  g.done = done;
  g.done_arg = arg;
  /* Remove the file only if it is still ours (not a new daemon's). */
  struct stat st;
  if (lstat(g.path, &st) == 0 && st.st_dev == g.dev && st.st_ino == g.ino)
    unlink(g.path);
  uv_close((uv_handle_t *)&g.listener, listener_closed);
  for (struct conn *c = g.conns; c != NULL; c = c->next)
    conn_close(c);
}
