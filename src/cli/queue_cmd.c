/*
 * tern queue — look at and steer the queue of `tern serve`, like
 * Postfix's mailq/postqueue and OpenSMTPD's smtpctl:
 *
 *   tern queue [-c FILE | -d DIR] list [--json]
 *   tern queue [-c FILE | -d DIR] show ID
 *   tern queue [-c FILE | -d DIR] flush [ID]
 *   tern queue [-c FILE | -d DIR] delete ID | hold ID | release ID
 *
 * It talks to the running daemon over its control socket (control.h has
 * the protocol): [queue] control of the file given with -c, else
 * DIR/control (DIR from -d, from the file's [queue] directory, or the
 * embedded default ./queue). When nobody answers there, list and show
 * read the spool directly (tern_queue_scan, read-only; the daemon's
 * view of what is being delivered right now is then missing) and the
 * commands that change something say the daemon is not running: they
 * need the scheduler that owns the queue. A daemon that does not answer
 * within ANSWER_TIMEOUT_S (10 s: stopped, hung) is treated alike, with a
 * note on stderr, except that the changing commands exit 69.
 *
 * `show` prints the envelope as list does, a blank line, and the body
 * as stored (CRLF lines), read from the spool in both cases.
 *
 * Exit status (sysexits): 0 done; 1 no such message; 64 usage; 66 no
 * spool at DIR (offline); 69 the daemon gave no or a malformed answer;
 * 74 the spool or the output could not be read or written; 75 the
 * daemon is not running (flush, delete, hold, release) or too busy;
 * 77 not allowed (the socket's mode or the daemon's peer check: run as
 * the daemon's user or root); 78 the configuration file is bad.
 */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <sysexits.h>
#include <unistd.h>

#include <tern/queue.h>

#include "cli.h"
#include "config.h"
#include "control.h"
#include "queue_fmt.h"

#define EXIT_NO_SUCH 1
/* The longest connecting, sending the request, or any one read of the
 * answer may wait. The daemon answers from its event loop, at once: a
 * daemon that is stopped (SIGSTOP) or hung is told from a slow one long
 * before this; tern-queue(1) documents it. */
#define ANSWER_TIMEOUT_S 10

static void usage(FILE *f) {
  fprintf(
      f,
      "usage: tern queue [-c FILE | -d DIR] COMMAND [ARGS]\n"
      "\n"
      "commands:\n"
      "  list [--json]   every message: id ('!' when held), size, arrival,\n"
      "                  sender; each recipient with its state, attempts,\n"
      "                  next try and last reply (--json: one object a line)\n"
      "  show ID         one message: its envelope, a blank line, its body\n"
      "  flush [ID]      retry now (every message, or ID)\n"
      "  delete ID       remove a message, no bounce\n"
      "  hold ID         no delivery (and no expiry) until released\n"
      "  release ID      deliver again\n"
      "\n"
      "options:\n"
      "  -c, --config FILE  the tern serve configuration: its [queue]\n"
      "                     directory and control socket\n"
      "  -d, --dir DIR      the spool directory (control socket "
      "DIR/control);\n"
      "                     default ./queue\n"
      "  --json             list: JSON, one message per line\n"
      "  -h, --help         this text\n"
      "\n"
      "list and show read the spool when the daemon is not running or\n"
      "does not answer within 10 s (the others then fail: exit 69).\n"
      "See tern-queue(1).\n");
}

struct ctx {
  const char *cmd;
  const char *id;
  bool json;
  char dir[4096];
  char control[sizeof(((struct sockaddr_un *)0)->sun_path) + 1];
};

/* ---- output -------------------------------------------------------------- */

static int out_line(void *arg, const char *line, size_t len) {
  (void)arg;
  if (fwrite(line, 1, len, stdout) != len || putchar('\n') == EOF)
    return -1;
  return 0;
}

static int finish_output(int rc) {
  if (fflush(stdout) != 0 || ferror(stdout)) {
    fprintf(stderr, "tern queue: cannot write the output: %s\n",
            strerror(errno));
    return rc == 0 ? EX_IOERR : rc;
  }
  return rc;
}

/* ---- offline: the spool itself ------------------------------------------- */

struct scan {
  bool json;
  struct qfmt_totals t;
};

static int scan_one(const struct tern_queue_list_msg *m, void *arg) {
  struct scan *s = arg;
  if (s->json)
    return qfmt_json(m, &s->t, out_line, NULL) != 0;
  return qfmt_text(m, &s->t, out_line, NULL) != 0;
}

static int body_chunk(void *arg, const char *buf, size_t len) {
  (void)arg;
  return fwrite(buf, 1, len, stdout) == len ? 0 : -1;
}

/* The body of ID, after a blank line. */
static int print_body(const struct ctx *x) {
  char err[512] = "";
  if (putchar('\n') == EOF)
    return finish_output(EX_IOERR);
  int rc =
      tern_queue_scan_body(x->dir, x->id, body_chunk, NULL, err, sizeof err);
  if (rc == TERN_ENOENT) { /* delivered or deleted since the envelope */
    fflush(stdout);
    fprintf(stderr, "tern queue: no such message: %s\n", x->id);
    return EXIT_NO_SUCH;
  }
  if (rc != 0) {
    fflush(stdout);
    fprintf(stderr, "tern queue: %s: %s\n", x->dir,
            err[0] ? err : tern_strerror(rc));
    return finish_output(EX_IOERR);
  }
  return finish_output(0);
}

static int offline(const struct ctx *x) {
  bool list = !strcmp(x->cmd, "list");
  if (!list && strcmp(x->cmd, "show") != 0) {
    fprintf(stderr, "tern queue: the daemon is not running (%s)\n", x->control);
    return EX_TEMPFAIL;
  }
  /* No spool there (queue.db, include/tern/queue.h): 66, not an I/O
   * error. */
  struct stat st;
  char db[sizeof x->dir + 16];
  snprintf(db, sizeof db, "%s/queue.db", x->dir);
  int e = 0;
  if (stat(x->dir, &st) != 0)
    e = errno;
  else if (!S_ISDIR(st.st_mode))
    e = ENOTDIR;
  else if (stat(db, &st) != 0)
    e = errno;
  if (e != 0) {
    fprintf(stderr, "tern queue: no queue at %s: %s\n", x->dir,
            e == ENOENT || e == ENOTDIR ? "no such spool (queue.db)"
                                        : strerror(e));
    return e == ENOENT || e == ENOTDIR ? EX_NOINPUT : EX_IOERR;
  }
  struct scan s = {.json = x->json};
  char err[512] = "";
  int rc = tern_queue_scan(x->dir, list ? NULL : x->id, scan_one, &s, err,
                           sizeof err);
  if (rc == TERN_ENOENT && !list) {
    fprintf(stderr, "tern queue: no such message: %s\n", x->id);
    return EXIT_NO_SUCH;
  }
  if (rc != 0) {
    fflush(stdout);
    fprintf(stderr, "tern queue: %s: %s\n", x->dir,
            err[0] ? err : tern_strerror(rc));
    return finish_output(EX_IOERR);
  }
  if (!list)
    return print_body(x);
  if (!x->json && qfmt_summary(&s.t, out_line, NULL) != 0)
    return finish_output(EX_IOERR);
  return finish_output(0);
}

/* ---- online: the daemon's control socket --------------------------------- */

/* Connect to the control socket: the fd, or -1 with errno (EAGAIN: the
 * daemon's backlog stayed full for ANSWER_TIMEOUT_S). The timeouts are
 * set before connect(): a unix-socket connect waits on a full backlog
 * for as long as SO_SNDTIMEO says, and without one, for ever. */
static int connect_control(const char *path) {
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0)
    return -1;
  struct timeval tv = {.tv_sec = ANSWER_TIMEOUT_S};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  struct sockaddr_un sa = {.sun_family = AF_UNIX};
  memcpy(sa.sun_path, path, strlen(path) + 1);
  if (connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
    int e = errno;
    close(fd);
    errno = e;
    return -1;
  }
  return fd;
}

static bool timed_out(int e) {
  return e == EAGAIN || e == EWOULDBLOCK || e == ETIMEDOUT || e == EINPROGRESS;
}

/* The daemon took too long before its first line: list and show read
 * the spool instead (safe beside a live daemon: WAL mode, read-only),
 * with a note, since its view of deliveries in progress is missing; the
 * commands that change something cannot. */
static int no_answer(const struct ctx *x) {
  bool readable = !strcmp(x->cmd, "list") || !strcmp(x->cmd, "show");
  fflush(stdout);
  fprintf(stderr,
          "tern queue: the daemon did not answer within %d s (%s): is it "
          "stopped or hung?%s\n",
          ANSWER_TIMEOUT_S, x->control,
          readable ? " Reading the spool directly instead (deliveries "
                     "in progress are not shown)."
                   : "");
  return readable ? offline(x) : EX_UNAVAILABLE;
}

/* The daemon's ERR code as an exit status, with its message. */
static int daemon_error(const struct ctx *x, const char *line) {
  const char *code = line + 4, *text = strchr(code, ' ');
  size_t cl = text ? (size_t)(text - code) : strlen(code);
  text = text ? text + 1 : "";
  fflush(stdout);
  if (cl == 5 && !strncmp(code, "NOENT", 5)) {
    if (x->id != NULL)
      fprintf(stderr, "tern queue: no such message: %s\n", x->id);
    else
      fprintf(stderr, "tern queue: the daemon says: %s\n", text);
    return EXIT_NO_SUCH;
  }
  fprintf(stderr, "tern queue: the daemon says: %s\n", text);
  if (cl == 5 && !strncmp(code, "USAGE", 5))
    return EX_USAGE;
  if (cl == 4 && !strncmp(code, "PERM", 4))
    return EX_NOPERM;
  if (cl == 4 && !strncmp(code, "BUSY", 4))
    return EX_TEMPFAIL;
  if (cl == 2 && !strncmp(code, "IO", 2))
    return EX_IOERR;
  return EX_UNAVAILABLE;
}

static int online(const struct ctx *x, int fd) {
  char req[CONTROL_MAX_REQUEST];
  const char *verb = !strcmp(x->cmd, "list")     ? "LIST"
                     : !strcmp(x->cmd, "show")   ? "SHOW"
                     : !strcmp(x->cmd, "flush")  ? "FLUSH"
                     : !strcmp(x->cmd, "delete") ? "DELETE"
                     : !strcmp(x->cmd, "hold")   ? "HOLD"
                                                 : "RELEASE";
  int n;
  if (!strcmp(x->cmd, "list"))
    n = snprintf(req, sizeof req, "LIST%s\n", x->json ? " JSON" : "");
  else if (x->id != NULL)
    n = snprintf(req, sizeof req, "%s %s\n", verb, x->id);
  else
    n = snprintf(req, sizeof req, "%s\n", verb);
  FILE *f = NULL;
  ssize_t sent = send(fd, req, (size_t)n, MSG_NOSIGNAL);
  if (sent < 0 && timed_out(errno)) {
    close(fd);
    return no_answer(x);
  }
  if (sent != n || (f = fdopen(fd, "r")) == NULL) {
    fprintf(stderr, "tern queue: cannot talk to the daemon (%s): %s\n",
            x->control, strerror(errno));
    if (f == NULL)
      close(fd);
    else
      fclose(f);
    return EX_UNAVAILABLE;
  }
  char *line = NULL;
  size_t cap = 0;
  ssize_t len;
  int rc = -1;
  bool got = false; /* a line of the answer came */
  errno = 0;
  while ((len = getline(&line, &cap, f)) > 0) {
    got = true;
    if (line[len - 1] != '\n')
      break; /* cut short */
    line[--len] = '\0';
    if (line[0] == ' ') {
      if (out_line(NULL, line + 1, (size_t)len - 1) != 0) {
        rc = EX_IOERR;
        break;
      }
    } else if (!strcmp(line, "OK")) {
      rc = 0;
      break;
    } else if (!strncmp(line, "ERR ", 4)) {
      rc = daemon_error(x, line);
      break;
    } else {
      break;
    }
  }
  int e = errno;
  free(line);
  fclose(f);
  if (rc == EX_IOERR)
    return finish_output(rc);
  if (rc < 0 && len < 0 && timed_out(e)) {
    if (!got)
      return no_answer(x);
    fflush(stdout);
    fprintf(stderr,
            "tern queue: the daemon (%s) stopped answering for %d s; the "
            "output above is cut short\n",
            x->control, ANSWER_TIMEOUT_S);
    return EX_UNAVAILABLE;
  }
  if (rc < 0) {
    fflush(stdout);
    fprintf(stderr, "tern queue: the daemon (%s) ended its answer early%s%s\n",
            x->control, len < 0 && e ? ": " : "",
            len < 0 && e ? strerror(e) : "");
    return EX_UNAVAILABLE;
  }
  if (rc != 0)
    return rc;
  if (!strcmp(x->cmd, "show"))
    return print_body(x);
  return finish_output(0);
}

/* ---- arguments ------------------------------------------------------------
 */

/* The command and its arguments, checked. Returns 0 or EX_USAGE. */
static int parse(int argc, char **argv, struct ctx *x, bool *help) {
  static const struct option longs[] = {{"config", required_argument, 0, 'c'},
                                        {"dir", required_argument, 0, 'd'},
                                        {"json", no_argument, 0, 'j'},
                                        {"help", no_argument, 0, 'h'},
                                        {0, 0, 0, 0}};
  const char *config = NULL, *dir = NULL;
  int opt;
  opterr = 0;
  optind = 1;
  while ((opt = getopt_long(argc, argv, ":c:d:h", longs, NULL)) != -1) {
    switch (opt) {
    case 'c':
      config = optarg;
      break;
    case 'd':
      dir = optarg;
      break;
    case 'j':
      x->json = true;
      break;
    case 'h':
      *help = true;
      return 0;
    case ':':
      fprintf(stderr, "tern queue: %s needs a value\n", argv[optind - 1]);
      return EX_USAGE;
    default:
      fprintf(stderr, "tern queue: unknown option '%s'\n", argv[optind - 1]);
      return EX_USAGE;
    }
  }
  if (config != NULL && dir != NULL) {
    fprintf(stderr, "tern queue: -c and -d go one at a time\n");
    return EX_USAGE;
  }
  if (optind >= argc) {
    fprintf(stderr, "tern queue: which command? (list, show, flush, "
                    "delete, hold, release)\n");
    return EX_USAGE;
  }
  x->cmd = argv[optind++];
  int nargs = argc - optind;
  const char *arg = nargs > 0 ? argv[optind] : NULL;
  bool needs_id = !strcmp(x->cmd, "show") || !strcmp(x->cmd, "delete") ||
                  !strcmp(x->cmd, "hold") || !strcmp(x->cmd, "release");
  if (!strcmp(x->cmd, "list")) {
    if (nargs != 0) {
      fprintf(stderr, "tern queue: list takes no argument (but --json)\n");
      return EX_USAGE;
    }
  } else if (needs_id || !strcmp(x->cmd, "flush")) {
    if (nargs > 1 || (needs_id && nargs != 1)) {
      fprintf(stderr, "tern queue: %s takes %s queue id\n", x->cmd,
              needs_id ? "one" : "at most one");
      return EX_USAGE;
    }
    if (arg != NULL && !qfmt_id_ok(arg)) {
      fprintf(stderr, "tern queue: bad queue id '%s' (1 to 23 of 0-9 A-Z)\n",
              arg);
      return EX_USAGE;
    }
    x->id = arg;
    if (x->json) {
      fprintf(stderr, "tern queue: --json goes with list\n");
      return EX_USAGE;
    }
  } else {
    fprintf(stderr, "tern queue: unknown command '%s'\n", x->cmd);
    return EX_USAGE;
  }

  if (config != NULL) {
    struct cfg c;
    char err[1024];
    cfg_defaults(&c);
    if (cfg_load(&c, config, err, sizeof err) != 0) {
      fprintf(stderr, "tern queue: %s\n", err);
      cfg_free(&c);
      return EX_CONFIG;
    }
    int r1 = snprintf(x->dir, sizeof x->dir, "%s", c.queue_dir);
    int r2 = cfg_queue_control_path(&c, x->control, sizeof x->control);
    cfg_free(&c);
    if (r1 < 0 || (size_t)r1 >= sizeof x->dir || r2 != 0) {
      fprintf(stderr,
              "tern queue: %s: the queue's directory or control "
              "socket path is too long\n",
              config);
      return EX_CONFIG;
    }
    return 0;
  }
  if (dir == NULL)
    dir = "./queue";
  int r1 = snprintf(x->dir, sizeof x->dir, "%s", dir);
  int r2 = snprintf(x->control, sizeof x->control, "%s/control", dir);
  if (dir[0] == '\0' || r1 < 0 || (size_t)r1 >= sizeof x->dir || r2 < 0 ||
      (size_t)r2 >= sizeof x->control - 1) {
    fprintf(stderr, "tern queue: -d %s: %s\n", dir,
            dir[0] ? "too long for a control socket path" : "empty");
    return EX_USAGE;
  }
  return 0;
}

int tern_cli_queue(int argc, char **argv) {
  static struct ctx x;
  bool help = false;
  memset(&x, 0, sizeof x);
  int rc = parse(argc, argv, &x, &help);
  if (rc != 0) {
    if (rc == EX_USAGE)
      usage(stderr);
    return rc;
  }
  if (help) {
    usage(stdout);
    return 0;
  }
  int fd = connect_control(x.control);
  if (fd >= 0)
    return online(&x, fd);
  if (errno == ENOENT || errno == ECONNREFUSED || errno == ENOTDIR)
    return offline(&x);
  if (timed_out(errno))
    return no_answer(&x);
  int e = errno;
  fprintf(stderr, "tern queue: cannot use the control socket %s: %s%s\n",
          x.control, strerror(e),
          e == EACCES || e == EPERM ? " (run as the daemon's user or root)"
                                    : "");
  return e == EACCES || e == EPERM ? EX_NOPERM : EX_UNAVAILABLE;
}
