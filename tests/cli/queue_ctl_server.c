/*
 * A queue with its control socket, for tests/cli/test_queue.py, without
 * the rest of `tern serve`:
 *
 *   queue_ctl_server DIR CONTROL N [exit]
 *
 * Opens (creates) the queue in DIR through the public API, submits N
 * messages (from sender@example.org to a@example.net and b@example.net,
 * body "Subject: test I\r\n\r\nmessage I\r\n"), whose every delivery is
 * deferred with "451 4.4.1 test: next hop down" (retries an hour
 * apart, so they stay put; "ready" waits until the queue lists every
 * recipient deferred). Then it listens on CONTROL (src/cli/
 * control.c), prints "ready" and runs until SIGTERM or SIGINT, when it
 * stops the socket and the queue and exits 0. With "exit" it closes
 * the queue once the messages are committed and deferred, for the
 * offline tests (CONTROL is not used then).
 *
 * Exit status: 0, 1 on any failure (said on stderr).
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <uv.h>

#include <tern/queue.h>

#include "control.h"

static uv_loop_t *g_loop;
static struct tern_queue *g_q;
static struct tern_queue_port *g_port;
static uv_signal_t g_sigterm, g_sigint;
static uv_timer_t g_timer;
static const char *g_control;
static unsigned g_n, g_committed, g_deferred;
static bool g_exit_after;
static int g_rc;

static void die(const char *what, int rc) {
  fprintf(stderr, "queue_ctl_server: %s: %s\n", what,
          rc ? tern_strerror(rc) : "failed");
  exit(1);
}

static void deliver(struct tern_queue_job *job,
                    const struct tern_queue_job_info *info, void *ud) {
  static const struct tern_reply r = {451, "4.4.1", "test: next hop down"};
  (void)ud;
  for (size_t i = 0; i < info->nrcpts; i++)
    tern_queue_job_result(job, i, &r, "test.invalid [192.0.2.1]");
  g_deferred += (unsigned)info->nrcpts;
  tern_queue_job_done(job, &r);
}

static void closed(void *arg) {
  (void)arg;
  uv_close((uv_handle_t *)&g_sigterm, NULL);
  uv_close((uv_handle_t *)&g_sigint, NULL);
  uv_close((uv_handle_t *)&g_timer, NULL);
}

static void control_stopped(void *arg) {
  (void)arg;
  if (g_port != NULL) {
    tern_queue_port_free(g_port);
    g_port = NULL;
  }
  tern_queue_close(g_q, 5000, closed, NULL);
}

static void on_signal(uv_signal_t *s, int sig) {
  (void)sig;
  uv_signal_stop(s);
  control_stop(control_stopped, NULL);
}

/* Counts recipients not yet recorded as deferred. */
static int unsettled(const struct tern_queue_list_msg *m, void *arg) {
  size_t *n = arg;
  for (size_t i = 0; i < m->nrcpts; i++)
    if (m->rcpts[i].state != TERN_QRS_DEFERRED)
      (*n)++;
  return 0;
}

/* Every message committed and its recipients' deferrals recorded (the
 * results are committed in the background after tern_queue_job_done):
 * serve, or stop. */
static void on_tick(uv_timer_t *t) {
  char err[512];
  size_t n = 0;
  if (g_committed < g_n || g_deferred < 2 * g_n)
    return;
  if (tern_queue_list(g_q, NULL, unsettled, &n) != 0 || n > 0)
    return;
  uv_timer_stop(t);
  if (g_exit_after) {
    control_stopped(NULL);
    return;
  }
  if (control_start(g_loop, g_q, g_control, err, sizeof err) != 0) {
    fprintf(stderr, "queue_ctl_server: %s\n", err);
    g_rc = 1;
    control_stopped(NULL);
    return;
  }
  printf("ready\n");
  fflush(stdout);
}

static void committed(void *arg, const struct tern_reply *r) {
  (void)arg;
  if (r->code != 250) {
    fprintf(stderr, "queue_ctl_server: commit: %d %s\n", r->code, r->text);
    exit(1);
  }
  printf("queued %s\n", r->text);
  g_committed++;
}

static void submit(unsigned i) {
  static const struct tern_queue_rcpt rcpts[] = {
      {"a@example.net", NULL, 0, "relay"}, {"b@example.net", NULL, 0, "relay"}};
  struct tern_queue_envelope env = {0};
  struct tern_queue_msg *m;
  char body[128];
  env.from = "sender@example.org";
  env.rcpts = rcpts;
  env.nrcpts = 2;
  int rc = tern_queue_msg_begin(g_port, &env, &m);
  if (rc != 0)
    die("tern_queue_msg_begin", rc);
  int n = snprintf(body, sizeof body, "Subject: test %u\r\n\r\nmessage %u\r\n",
                   i, i);
  rc = tern_queue_msg_write(m, body, (size_t)n, NULL, NULL);
  if (rc < 0)
    die("tern_queue_msg_write", rc);
  tern_queue_msg_commit(m, committed, NULL);
}

int main(int argc, char **argv) {
  if (argc < 4) {
    fprintf(stderr, "usage: queue_ctl_server DIR CONTROL N [exit]\n");
    return 1;
  }
  /* As tern serve does (daemon.c): an answer written to a client that
   * has gone (one that gave up on a stopped daemon) is EPIPE, not the
   * end of the process. */
  signal(SIGPIPE, SIG_IGN);
  g_control = argv[2];
  g_n = (unsigned)strtoul(argv[3], NULL, 10);
  g_exit_after = argc > 4 && !strcmp(argv[4], "exit");
  g_loop = uv_default_loop();
  char err[512] = "";
  struct tern_queue_options o;
  tern_queue_options_init(&o);
  o.dir = argv[1];
  o.hostname = "test.example";
  o.retry_min_s = 3600;
  o.retry_max_s = 3600;
  o.fsync = false;
  o.deliver = deliver;
  o.error = err;
  o.error_size = sizeof err;
  int rc = tern_queue_open(&g_q, g_loop, &o);
  if (rc != 0) {
    fprintf(stderr, "queue_ctl_server: open %s: %s\n", argv[1], err);
    return 1;
  }
  rc = tern_queue_port_new(g_q, g_loop, &g_port);
  if (rc != 0)
    die("tern_queue_port_new", rc);
  uv_signal_init(g_loop, &g_sigterm);
  uv_signal_init(g_loop, &g_sigint);
  uv_signal_start(&g_sigterm, on_signal, SIGTERM);
  uv_signal_start(&g_sigint, on_signal, SIGINT);
  uv_timer_init(g_loop, &g_timer);
  uv_timer_start(&g_timer, on_tick, 0, 10);
  for (unsigned i = 0; i < g_n; i++)
    submit(i);
  uv_run(g_loop, UV_RUN_DEFAULT);
  tern_queue_free(g_q);
  uv_loop_close(g_loop);
  return g_rc;
}
