/*
 * The delivery interface (src/cli/deliver.h, struct deliver_ops), driven
 * the same way for every target, as the session drives it: begin, writes
 * of chunks larger than the runtime's 64 KiB reads, then commit, or an
 * abort in the middle. `test_deliver_ops CASE` runs one case (CTest
 * registers each, label "deliver"); `test_deliver_ops all` runs all.
 *
 * The ownership rule is checked on the way: every chunk is written from
 * a scratch buffer that is overwritten as soon as write() returns, so a
 * target that kept the caller's pointer delivers garbage and the
 * comparison at the end fails. The forwarding target's next hop is a
 * tern server on the same loop (loopback, port 0).
 */
#define _GNU_SOURCE
#include "check.h"
#include "deliver.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <tern/net.h>

#define CHUNK (200 * 1024) /* > 64 KiB, > Maildir's 128 KiB block */
#define BODY (3 * CHUNK + 4321)

static uv_loop_t *loop;
static char base[256];
static char *body; /* BODY bytes of CRLF text lines */
static const char hdr[] = "Received: from test by test; now\r\n";
static const char *const rcpts[] = {"alice@example.org", "bob@example.org"};

/* ---- helpers ------------------------------------------------------------- */

static void cleanup(void) {
  if (base[0] != '\0')
    rm_tree(base);
  free(body);
}

/* Text lines (so that a next hop passes them through unchanged). */
static void make_body(void) {
  CHECK((body = malloc(BODY)) != NULL);
  for (size_t i = 0; i < BODY; i++)
    body[i] = (char)('a' + (i * 7 + i / 61) % 26);
  for (size_t i = 78; i < BODY; i += 80) {
    body[i - 1] = '\r';
    body[i] = '\n';
  }
  body[BODY - 2] = '\r';
  body[BODY - 1] = '\n';
}

/* header + body, exactly */
static void check_message(const char *p, size_t n) {
  CHECK(n == strlen(hdr) + BODY);
  CHECK(memcmp(p, hdr, strlen(hdr)) == 0);
  CHECK(memcmp(p + strlen(hdr), body, BODY) == 0);
}

/* The one file in DIR/new, or none (want == false). */
static void check_new(const char *dir, bool want) {
  char path[600], file[900];
  pathf(path, sizeof path, "%s/new", dir);
  DIR *dp = opendir(path);
  struct dirent *de;
  int n = 0;
  if (dp == NULL) {
    CHECK(!want);
    return;
  }
  while ((de = readdir(dp)) != NULL) {
    if (de->d_name[0] == '.')
      continue;
    n++;
    pathf(file, sizeof file, "%s/%s", path, de->d_name);
  }
  closedir(dp);
  CHECK(n == (want ? 1 : 0));
  if (want) {
    size_t len;
    char *p = read_file(file, &len);
    check_message(p, len);
    free(p);
  }
}

static int count_in(const char *dir) {
  DIR *dp = opendir(dir);
  struct dirent *de;
  int n = 0;
  if (dp == NULL)
    return 0;
  while ((de = readdir(dp)) != NULL)
    n += de->d_name[0] != '.';
  closedir(dp);
  return n;
}

static void on_guard(uv_timer_t *t) {
  (void)t;
  fprintf(stderr, "timed out\n");
  exit(1);
}

/* Run the loop until *flag (30 s at most). */
static void run_until(const bool *flag) {
  uv_timer_t guard;
  uv_timer_init(loop, &guard);
  uv_timer_start(&guard, on_guard, 30000, 0);
  while (!*flag)
    uv_run(loop, UV_RUN_ONCE);
  uv_close((uv_handle_t *)&guard, NULL);
  uv_run(loop, UV_RUN_NOWAIT);
}

/* ---- one delivery driven through deliver_ops ---------------------------- */

struct job {
  const struct deliver_ops *ops;
  struct delivery *d;
  size_t off;
  size_t abort_at;   /* abort once this much is written (0: never) */
  bool waiting, aborted, over;
  char *scratch;     /* the caller's buffer, reused after each write */
  int code[2];       /* per recipient */
  int all_code;      /* DELIVER_ALL, -1 for r == NULL */
};

static void job_pump(struct job *j);

static void on_written(void *arg, int status) {
  struct job *j = arg;
  CHECK(!j->aborted && j->waiting);
  (void)status;
  j->waiting = false;
  job_pump(j);
}

static void on_result(void *arg, size_t i, const struct tern_reply *r,
                      const char *detail) {
  struct job *j = arg;
  (void)detail;
  CHECK(!j->aborted && !j->over);
  if (i == DELIVER_ALL) {
    j->all_code = r ? r->code : -1;
    j->over = true;
    return;
  }
  CHECK(i < 2);
  j->code[i] = r->code;
}

static const struct deliver_cbs cbs = {on_written, on_result};

static void job_pump(struct job *j) {
  while (j->off < BODY) {
    if (j->abort_at && j->off >= j->abort_at) {
      j->aborted = true;
      j->ops->abort(j->d);
      return;
    }
    size_t n = BODY - j->off < CHUNK ? BODY - j->off : CHUNK;
    memcpy(j->scratch, body + j->off, n);
    int r = j->ops->write(j->d, j->scratch, n);
    memset(j->scratch, 'X', CHUNK); /* write() is done with it */
    CHECK(r == 0 || r == DELIVER_LATER);
    j->off += n;
    if (r == DELIVER_LATER) {
      j->waiting = true;
      return;
    }
  }
  j->ops->commit(j->d);
}

static void job_begin(struct job *j, const struct deliver_ops *ops,
                      const struct deliver_target *t, size_t nrcpts,
                      void *envelope, size_t abort_at) {
  struct deliver_msg m = {loop, "sender@example.net", rcpts, nrcpts,
                          hdr,  strlen(hdr),          envelope,
                          NULL, NULL,                 NULL};
  struct tern_reply refusal = {0, NULL, NULL};
  memset(j, 0, sizeof *j);
  j->ops = ops;
  j->abort_at = abort_at;
  j->all_code = 0;
  CHECK((j->scratch = malloc(CHUNK)) != NULL);
  CHECK(ops->begin(t, &m, &cbs, j, &j->d, &refusal) == 0);
  CHECK(refusal.code == 0); /* untouched on success */
  job_pump(j);
}

/* After an abort: nothing more is called; what it runs ends. */
static void job_drain(struct job *j) {
  run_until(&j->aborted);
  uv_run(loop, UV_RUN_DEFAULT);
  CHECK(!j->over);
  free(j->scratch);
}

/* ---- maildir ------------------------------------------------------------- */

static void t_maildir(void) {
  struct maildir_ctx *ctx;
  char tpl[300], dir[300];
  struct job j;
  pathf(tpl, sizeof tpl, "%s/md/%%u", base);
  CHECK(maildir_ctx_new(&ctx, loop, true) == 0);
  struct deliver_target t = {&maildir_ops, tpl, ctx, 0};
  job_begin(&j, &maildir_ops, &t, 2, NULL, 0);
  run_until(&j.over);
  CHECK(j.all_code == 250);
  for (size_t i = 0; i < 2; i++) {
    pathf(dir, sizeof dir, "%s/md/%.*s", base, i ? 3 : 5, rcpts[i]);
    check_new(dir, true);
  }
  free(j.scratch);
  maildir_ctx_free(ctx);
  uv_run(loop, UV_RUN_DEFAULT);
}

static void t_maildir_abort(void) {
  struct maildir_ctx *ctx;
  char dir[300], tmp[320];
  struct job j;
  pathf(dir, sizeof dir, "%s/mda", base);
  CHECK(maildir_prepare(dir, false) == 0);
  CHECK(maildir_ctx_new(&ctx, loop, true) == 0);
  struct deliver_target t = {&maildir_ops, dir, ctx, 0};
  job_begin(&j, &maildir_ops, &t, 1, NULL, CHUNK + 1);
  job_drain(&j);
  check_new(dir, false);
  pathf(tmp, sizeof tmp, "%s/tmp", dir);
  CHECK(count_in(tmp) == 0);
  maildir_ctx_free(ctx);
}

/* ---- pipe ---------------------------------------------------------------- */

/* A command that copies its input to the file named by its argument. */
static void pipe_spec(char *spec, size_t cap) {
  char script[300];
  pathf(script, sizeof script, "%s/deliver.sh", base);
  FILE *f = fopen(script, "w");
  CHECK(f != NULL);
  fputs("#!/bin/sh\nexec cat > \"$1\"\n", f);
  fclose(f);
  CHECK(chmod(script, 0700) == 0);
  pathf(spec, cap, "%s %s/out.%%u", script, base);
}

static void t_pipe(void) {
  char spec[700], out[320];
  struct job j;
  pipe_spec(spec, sizeof spec);
  struct deliver_target t = {&pipe_ops, spec, NULL, 10000};
  job_begin(&j, &pipe_ops, &t, 2, NULL, 0);
  run_until(&j.over);
  CHECK(j.all_code == -1); /* each recipient had its own */
  for (size_t i = 0; i < 2; i++) {
    size_t len;
    CHECK(j.code[i] == 250);
    pathf(out, sizeof out, "%s/out.%.*s", base, i ? 3 : 5, rcpts[i]);
    char *p = read_file(out, &len);
    check_message(p, len);
    free(p);
  }
  free(j.scratch);
  uv_run(loop, UV_RUN_DEFAULT);
}

static void t_pipe_abort(void) {
  char spec[700];
  struct job j;
  pipe_spec(spec, sizeof spec);
  struct deliver_target t = {&pipe_ops, spec, NULL, 10000};
  job_begin(&j, &pipe_ops, &t, 2, NULL, CHUNK + 1);
  job_drain(&j);
}

/* ---- forwarding: a tern server on this loop as the next hop ------------ */

struct hop {
  struct tern_server *srv;
  char *got;
  size_t len;
  bool ended, aborted, closed, down;
};
static struct hop hop;

static int hop_data(struct tern_server_session *s, const char *buf,
                    size_t len, void *ud) {
  (void)s, (void)ud;
  CHECK((hop.got = realloc(hop.got, hop.len + len + 1)) != NULL);
  memcpy(hop.got + hop.len, buf, len);
  hop.len += len;
  return 0;
}

static int hop_end(struct tern_server_session *s,
                   const struct tern_envelope *env, struct tern_reply *r,
                   void *ud) {
  (void)s, (void)r, (void)ud;
  CHECK(env->size == hop.len);
  hop.ended = true;
  return TERN_REPLY_NOW;
}

static void hop_abort(struct tern_server_session *s, const char *why,
                      void *ud) {
  (void)s, (void)why, (void)ud;
  hop.aborted = true;
}

static void hop_close(struct tern_server_session *s, void *ud) {
  (void)s, (void)ud;
  hop.closed = true;
}

static void hop_down(struct tern_server *srv, void *arg) {
  (void)srv, (void)arg;
  hop.down = true;
}

static int hop_start(void) {
  static struct tern_server_callbacks cb;
  struct tern_server_options o;
  tern_server_callbacks_init(&cb);
  cb.on_data = hop_data;
  cb.on_data_end = hop_end;
  cb.on_data_abort = hop_abort;
  cb.on_close = hop_close;
  tern_server_options_init(&o);
  o.callbacks = &cb;
  memset(&hop, 0, sizeof hop);
  CHECK(tern_server_new(&hop.srv, loop, &o) == 0);
  CHECK(tern_server_listen(hop.srv, "smtp://127.0.0.1:0", NULL) == 0);
  CHECK(tern_server_start(hop.srv) == 0);
  return tern_server_listener_port(hop.srv, 0);
}

static void hop_stop(void) {
  tern_server_shutdown(hop.srv, hop_down, NULL);
  run_until(&hop.down);
  tern_server_free(hop.srv);
  free(hop.got);
}

struct step {
  bool done;
  int code;
};

static void step_done(void *arg, const struct tern_reply *r,
                      const char *detail) {
  struct step *st = arg;
  (void)detail;
  st->done = true;
  st->code = r->code;
}

/* MAIL, RCPT and DATA answered by the next hop: the envelope begin takes. */
static struct forward_delivery *hop_envelope(int port) {
  char url[64];
  struct forward_delivery *fd;
  struct step st = {0};
  struct tern_reply now;
  pathf(url, sizeof url, "smtp://127.0.0.1:%d", port);
  struct forward_opts fo = {url, "test.example", false, NULL, NULL, NULL,
                            10000};
  struct forward_mail fm = {"sender@example.net", 0, TERN_BODY_7BIT,
                            false, false, 0, NULL};
  CHECK(forward_open(loop, &fo, &fm, step_done, &st, &fd) == 0);
  run_until(&st.done);
  CHECK(st.code == 250);
  st.done = false;
  CHECK(forward_rcpt(fd, rcpts[0], 0, NULL, step_done, &st, &now) == 0);
  run_until(&st.done);
  CHECK(st.code == 250);
  st.done = false;
  CHECK(forward_data(fd, hdr, strlen(hdr), step_done, &st, &now) == 0);
  run_until(&st.done);
  CHECK(st.code == 354);
  return fd;
}

static void t_forward(void) {
  struct job j;
  int port = hop_start();
  struct deliver_target t = {&forward_ops, NULL, NULL, 10000};
  job_begin(&j, &forward_ops, &t, 1, hop_envelope(port), 0);
  run_until(&j.over);
  CHECK(j.all_code == 250);
  CHECK(j.code[0] == 250);
  CHECK(hop.ended && !hop.aborted);
  check_message(hop.got, hop.len);
  free(j.scratch);
  hop_stop();
}

static void t_forward_abort(void) {
  struct job j;
  int port = hop_start();
  struct deliver_target t = {&forward_ops, NULL, NULL, 10000};
  job_begin(&j, &forward_ops, &t, 1, hop_envelope(port), CHUNK + 1);
  run_until(&j.aborted);
  run_until(&hop.closed);
  CHECK(!hop.ended && hop.aborted);
  free(j.scratch);
  hop_stop();
  uv_run(loop, UV_RUN_DEFAULT);
  CHECK(!j.over);
}

static const struct check_case tests[] = {
    {"maildir", t_maildir},         {"maildir_abort", t_maildir_abort},
    {"pipe", t_pipe},               {"pipe_abort", t_pipe_abort},
    {"forward", t_forward},         {"forward_abort", t_forward_abort},
};

static void setup(void) {
  atexit(cleanup);
  make_body();
  loop = uv_default_loop();
}

static void teardown(void) { CHECK(uv_loop_close(loop) == 0); }

int main(int argc, char **argv) {
  return check_main(argc, argv, base, sizeof base, "tern-deliver-ops", tests,
                    sizeof tests / sizeof *tests, setup, teardown);
}
