/*
 * The queue (include/tern/queue.h over src/queue/store.c) on a real loop
 * and a temporary spool, with a fake `deliver` that answers by address:
 *   "defer..."  451 4.4.1 (until f->defer_ok), "fail..." 550 5.1.1,
 *   anything else 250; in hold mode jobs are kept open for the test.
 *
 *   unit_queue            every case but the full disk
 *   unit_queue enospc DIR a full disk: 452 4.3.1, nothing partial, serving
 *                         resumes (DIR on a small tmpfs: enospc.sh)
 *   unit_queue load N     time tern_queue_open over N queued messages
 *
 * Every wait runs the loop under a deadline: a lost event fails the test
 * instead of hanging it. Waits for something *not* to happen run the loop
 * for a bounded time past the moment it would have happened.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <uv.h>

#include <tern/queue.h>

/* ---- fixture ------------------------------------------------------------- */

#define MAXJOBS 256

struct jobrec {
  char id[TERN_QUEUE_ID_MAX];
  char dest[64];
  char from[64];
  char rcpt0[64];
  size_t nrcpts;
  bool is_bounce;
  bool requiretls;
  unsigned attempt;
  char *body;
  size_t len;
};

struct live { /* a job being delivered */
  struct fx *f;
  struct tern_queue_job *job;
  const struct tern_queue_job_info *info;
  struct jobrec *rec;
  bool ended;
};

struct fx {
  uv_loop_t loop;
  char dir[64];
  struct tern_queue_options o;
  struct tern_queue *q;
  struct tern_queue_port *port;
  /* deliver */
  bool defer_ok, hold;
  bool unreach;     /* relay jobs: tern_queue_job_unreachable at once */
  const char *dead; /* this destination's jobs: unreachable at once */
  int ndead;        /* jobs handed over for it */
  bool too_many;    /* recipients from accept_max on get 452 4.5.3 */
  size_t accept_max;
  struct jobrec jobs[MAXJOBS];
  int njobs;
  struct live *held[MAXJOBS];
  int nheld;
  int inflight_local, inflight_relay, max_local, max_relay;
  /* events */
  int ev[16];
  char last_bounce[TERN_QUEUE_ID_MAX];
  char last_detail[128];
  char last_error[256];
  char full_detail[256]; /* the last "disk full" error */
  int nfull;
  time_t last_retry;
  bool last_expired;
  /* submission */
  int done;
  int code;
  char text[128];
  int written;
  int closed;
  bool in_call; /* inside tern_queue_job_done: deliver must not come */
};

static int count_ev(struct fx *f, enum tern_queue_event_type t) {
  return f->ev[t];
}

static void on_event(const struct tern_queue_event *ev, void *ud) {
  struct fx *f = ud;
  f->ev[ev->type]++;
  if (getenv("QDBG"))
    fprintf(stderr, "%ld event %d %s %s\n", (long)time(NULL), (int)ev->type,
            ev->id ? ev->id : "-", ev->detail ? ev->detail : "-");
  assert_non_null(ev->detail);
  assert_non_null(ev->id);
  if (ev->bounce_id)
    snprintf(f->last_bounce, sizeof f->last_bounce, "%s", ev->bounce_id);
  if (ev->type == TERN_QEV_DEFERRED)
    f->last_retry = ev->retry_at;
  if (ev->type == TERN_QEV_ERROR)
    snprintf(f->last_error, sizeof f->last_error, "%s", ev->detail);
  if (ev->type == TERN_QEV_ERROR && strncmp(ev->detail, "disk full", 9) == 0) {
    snprintf(f->full_detail, sizeof f->full_detail, "%s", ev->detail);
    assert_string_equal(ev->id, ""); /* about the queue, not a message */
    f->nfull++;
  }
  if (ev->type == TERN_QEV_NO_BOUNCE || ev->type == TERN_QEV_FAILED)
    snprintf(f->last_detail, sizeof f->last_detail, "%s", ev->detail);
  if (ev->type == TERN_QEV_FAILED)
    f->last_expired = ev->expired;
}

static void finish(struct live *l) {
  struct fx *f = l->f;
  for (size_t i = 0; i < l->info->nrcpts; i++) {
    const char *a = l->info->rcpts[i].addr;
    struct tern_reply r = {250, "2.0.0", "Ok"};
    if (strncmp(a, "defer", 5) == 0 && !f->defer_ok)
      r = (struct tern_reply){451, "4.4.1", "try again later"};
    else if (strncmp(a, "fail8", 5) == 0) /* a next hop's raw bytes */
      r = (struct tern_reply){550, "5.1.1",
                              "Empf\xe4nger unbekannt \x1b[31m\x01"};
    else if (f->too_many && i >= f->accept_max)
      r = (struct tern_reply){452, "4.5.3", "Too many recipients"};
    else if (strncmp(a, "fail", 4) == 0)
      r = (struct tern_reply){550, "5.1.1", "<fail> user unknown"};
    tern_queue_job_result(
        l->job, i, &r,
        strcmp(l->info->dest, "relay") == 0 ? "mx.test [192.0.2.1]" : NULL);
  }
  if (strcmp(l->info->dest, "relay") == 0)
    f->inflight_relay--;
  else
    f->inflight_local--;
  l->ended = true;
  f->in_call = true;
  tern_queue_job_done(l->job, NULL);
  f->in_call = false;
  free(l);
}

static void on_body(void *arg, const char *buf, size_t len, int status) {
  struct live *l = arg;
  if (status == TERN_ECLOSED && tern_queue_job_cancelled(l->job)) {
    tern_queue_job_done(l->job, NULL); /* closed while reading */
    free(l);
    return;
  }
  assert_int_equal(status, 0);
  if (len) {
    struct jobrec *r = l->rec;
    r->body = realloc(r->body, r->len + len + 1);
    assert_non_null(r->body);
    memcpy(r->body + r->len, buf, len);
    r->len += len;
    r->body[r->len] = '\0';
    assert_int_equal(tern_queue_job_read(l->job, on_body, l), 0);
    return;
  }
  struct fx *f = l->f;
  assert_int_equal(l->rec->len, l->info->size);
  if (f->hold) {
    assert_true(f->nheld < MAXJOBS);
    f->held[f->nheld++] = l;
    return;
  }
  finish(l);
}

static void deliver(struct tern_queue_job *job,
                    const struct tern_queue_job_info *info, void *ud) {
  struct fx *f = ud;
  assert_false(f->in_call);
  if (getenv("QDBG"))
    fprintf(stderr, "%ld job %s %s attempt %u bounce %d\n", (long)time(NULL),
            info->id, info->rcpts[0].addr, info->attempt, info->is_bounce);
  assert_true(f->njobs < MAXJOBS);
  struct jobrec *r = &f->jobs[f->njobs++];
  memset(r, 0, sizeof *r);
  snprintf(r->id, sizeof r->id, "%s", info->id);
  snprintf(r->dest, sizeof r->dest, "%s", info->dest);
  snprintf(r->from, sizeof r->from, "%s", info->from);
  snprintf(r->rcpt0, sizeof r->rcpt0, "%s", info->rcpts[0].addr);
  r->nrcpts = info->nrcpts;
  r->is_bounce = info->is_bounce;
  r->requiretls = info->requiretls;
  r->attempt = info->attempt;
  if (f->dead && strcmp(info->dest, f->dead) == 0) {
    struct tern_reply down = {451, "4.4.1", "no MX host answered"};
    f->ndead++;
    f->in_call = true;
    tern_queue_job_unreachable(job, &down);
    f->in_call = false;
    return;
  }
  if (f->unreach && strcmp(info->dest, "relay") == 0) {
    /* a dead next hop, found out inside deliver */
    struct tern_reply down = {421, "4.4.2", "mx.test down"};
    f->in_call = true;
    tern_queue_job_unreachable(job, &down);
    f->in_call = false;
    return;
  }
  if (strcmp(info->dest, "relay") == 0) {
    if (++f->inflight_relay > f->max_relay)
      f->max_relay = f->inflight_relay;
  } else if (++f->inflight_local > f->max_local) {
    f->max_local = f->inflight_local;
  }
  struct live *l = calloc(1, sizeof *l);
  assert_non_null(l);
  *l = (struct live){f, job, info, r, false};
  assert_int_equal(tern_queue_job_read(job, on_body, l), 0);
  assert_int_equal(tern_queue_job_read(job, on_body, l), TERN_EBUSY);
}

static const char *route(const char *addr, void *ud) {
  (void)ud;
  /* "mx-...@DOMAIN": the destination "mx:DOMAIN", as tern serve names
   * it (one per recipient domain) */
  static char mx[128];
  const char *at = strchr(addr, '@');
  if (strncmp(addr, "mx-", 3) == 0 && at) {
    snprintf(mx, sizeof mx, "mx:%s", at + 1);
    return mx;
  }
  return strncmp(addr, "relay", 5) == 0 ? "relay" : "local";
}

static void on_deadline(uv_timer_t *t) { *(bool *)t->data = true; }

/* Run the loop until *v >= target or ms pass; returns whether it got
 * there. */
static bool run_until(struct fx *f, const int *v, int target, unsigned ms) {
  uv_timer_t t;
  bool out = false;
  uv_timer_init(&f->loop, &t);
  t.data = &out;
  uv_timer_start(&t, on_deadline, ms, 0);
  while (*v < target && !out)
    uv_run(&f->loop, UV_RUN_ONCE);
  uv_close((uv_handle_t *)&t, NULL);
  uv_run(&f->loop, UV_RUN_NOWAIT);
  return *v >= target;
}

static void run_for(struct fx *f, unsigned ms) {
  int never = 0;
  run_until(f, &never, 1, ms);
}

static void fx_open(struct fx *f) {
  char err[256] = "";
  f->o.error = err;
  f->o.error_size = sizeof err;
  int rc = tern_queue_open(&f->q, &f->loop, &f->o);
  if (rc != 0)
    fail_msg("tern_queue_open: %s: %s", tern_err_name(rc), err);
  f->o.error = NULL;
  assert_int_equal(tern_queue_port_new(f->q, &f->loop, &f->port), 0);
}

static struct fx *fx_new(void) {
  struct fx *f = calloc(1, sizeof *f);
  assert_non_null(f);
  assert_int_equal(uv_loop_init(&f->loop), 0);
  snprintf(f->dir, sizeof f->dir, "/tmp/tern-queue-XXXXXX");
  assert_non_null(mkdtemp(f->dir));
  tern_queue_options_init(&f->o);
  f->o.dir = f->dir;
  f->o.hostname = "mx.test";
  f->o.fsync = false;
  f->o.deliver = deliver;
  f->o.on_event = on_event;
  f->o.route = route;
  f->o.ud = f;
  return f;
}

static void on_closed(void *arg) { ((struct fx *)arg)->closed++; }

/* The queue is freed inside its close callback, as the header allows. */
static void on_closed_free(void *arg) {
  struct fx *f = arg;
  tern_queue_free(f->q);
  f->q = NULL;
  f->closed++;
}

static void fx_close(struct fx *f, unsigned timeout_ms) {
  tern_queue_port_free(f->port);
  f->port = NULL;
  f->closed = 0;
  tern_queue_close(f->q, timeout_ms, on_closed_free, f);
  assert_int_equal(f->closed, 0); /* never inside the call */
  assert_true(run_until(f, &f->closed, 1, 20000));
  assert_null(f->q);
  uv_run(&f->loop, UV_RUN_NOWAIT);
}

static void fx_free(struct fx *f) {
  if (f->q)
    fx_close(f, 1000);
  for (int i = 0; i < f->nheld; i++)
    free(f->held[i]);
  assert_int_equal(uv_loop_close(&f->loop), 0); /* no handle left open */
  for (int i = 0; i < f->njobs; i++)
    free(f->jobs[i].body);
  char cmd[128];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", f->dir);
  assert_int_equal(system(cmd), 0);
  free(f);
}

static void on_written(void *arg, int status) {
  struct fx *f = arg;
  assert_int_equal(status, 0);
  f->written++;
}

static void on_done(void *arg, const struct tern_reply *r) {
  struct fx *f = arg;
  f->code = r->code;
  snprintf(f->text, sizeof f->text, "%s", r->text ? r->text : "");
  f->done++;
}

/* Submit a message; returns its id (static buffer) after the 250. */
static const char *submit_env(struct fx *f, const struct tern_queue_envelope *e,
                              const char *body, size_t len, size_t piece,
                              int *waits) {
  static char id[TERN_QUEUE_ID_MAX];
  struct tern_queue_msg *m;
  assert_int_equal(tern_queue_msg_begin(f->port, e, &m), 0);
  snprintf(id, sizeof id, "%s", tern_queue_msg_id(m));
  assert_true(id[0] != '\0');
  for (size_t off = 0; off < len;) {
    size_t n = len - off < piece ? len - off : piece;
    int rc = tern_queue_msg_write(m, body + off, n, on_written, f);
    assert_true(rc == 0 || rc == 1);
    off += n;
    if (rc == 1) {
      int want = f->written + 1;
      assert_true(run_until(f, &f->written, want, 20000));
      if (waits)
        (*waits)++;
    }
  }
  int want = f->done + 1;
  tern_queue_msg_commit(m, on_done, f);
  assert_int_equal(f->done, want - 1); /* never inside commit */
  assert_true(run_until(f, &f->done, want, 20000));
  assert_int_equal(f->code, 250);
  char expect[64];
  snprintf(expect, sizeof expect, "Ok: queued as %s", id);
  assert_string_equal(f->text, expect);
  return id;
}

static const char body1[] = "From: s@example.org\r\nTo: a@example.net\r\n"
                            "Subject: hello\r\n\r\nHello there.\r\n";

static const char *submit(struct fx *f, const char *from, const char *rcpt,
                          unsigned notify) {
  struct tern_queue_rcpt r = {rcpt, NULL, notify, route(rcpt, NULL)};
  struct tern_queue_envelope e = {.from = from,
                                  .rcpts = &r,
                                  .nrcpts = 1,
                                  .client = "client.test (192.0.2.9)"};
  return submit_env(f, &e, body1, sizeof body1 - 1, sizeof body1, NULL);
}

static double secs(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* ---- listing helpers ----------------------------------------------------- */

struct listed {
  int n;
  bool held;
  enum tern_queue_rcpt_state state[4];
  unsigned attempts[4];
  time_t next_try[4];
  int last_code[4];
  char last_reply[4][96];
};

static int list_fn(const struct tern_queue_list_msg *m, void *arg) {
  struct listed *l = arg;
  l->n++;
  l->held = m->held;
  for (size_t i = 0; i < m->nrcpts && i < 4; i++) {
    l->state[i] = m->rcpts[i].state;
    l->attempts[i] = m->rcpts[i].attempts;
    l->next_try[i] = m->rcpts[i].next_try;
    l->last_code[i] = m->rcpts[i].last_code;
    snprintf(l->last_reply[i], sizeof l->last_reply[i], "%s",
             m->rcpts[i].last_reply);
  }
  return 0;
}

static struct listed list_one(struct fx *f, const char *id, int *rc) {
  struct listed l;
  memset(&l, 0, sizeof l);
  *rc = tern_queue_list(f->q, id, list_fn, &l);
  return l;
}

static int find_job(struct fx *f, bool bounce) {
  for (int i = 0; i < f->njobs; i++)
    if (f->jobs[i].is_bounce == bounce)
      return i;
  return -1;
}

/* ---- cases --------------------------------------------------------------- */

static void test_deliver(void **state) {
  (void)state;
  struct fx *f = fx_new();
  fx_open(f);
  char id[TERN_QUEUE_ID_MAX];
  snprintf(id, sizeof id, "%s", submit(f, "s@example.org", "a@example.net", 0));
  assert_true(run_until(f, &f->ev[TERN_QEV_REMOVED], 1, 10000));
  assert_int_equal(count_ev(f, TERN_QEV_QUEUED), 1);
  assert_int_equal(count_ev(f, TERN_QEV_DELIVERED), 1);
  assert_int_equal(f->njobs, 1);
  assert_string_equal(f->jobs[0].id, id);
  assert_string_equal(f->jobs[0].dest, "local");
  assert_int_equal(f->jobs[0].attempt, 1);
  assert_int_equal(f->jobs[0].len, sizeof body1 - 1);
  assert_memory_equal(f->jobs[0].body, body1, sizeof body1 - 1);
  int rc;
  struct listed l = list_one(f, NULL, &rc);
  assert_int_equal(rc, 0);
  assert_int_equal(l.n, 0);
  list_one(f, id, &rc);
  assert_int_equal(rc, TERN_ENOENT);
  fx_free(f);
}

static void test_defer_flush(void **state) {
  (void)state;
  struct fx *f = fx_new();
  fx_open(f);
  char id[TERN_QUEUE_ID_MAX];
  snprintf(id, sizeof id, "%s",
           submit(f, "s@example.org", "defer@example.net", 0));
  assert_true(run_until(f, &f->ev[TERN_QEV_DEFERRED], 1, 10000));
  time_t now = time(NULL);
  /* The update is committed in the background: list once it is. */
  int rc;
  struct listed l;
  for (int tries = 0; tries < 200; tries++) {
    l = list_one(f, id, &rc);
    if (rc == 0 && l.attempts[0] == 1)
      break;
    run_for(f, 10);
  }
  assert_int_equal(rc, 0);
  assert_int_equal(l.n, 1);
  assert_int_equal(l.state[0], TERN_QRS_DEFERRED);
  assert_int_equal(l.attempts[0], 1);
  assert_int_equal(l.last_code[0], 451);
  assert_string_equal(l.last_reply[0], "451 4.4.1 try again later");
  /* retry_min 300 s plus up to 10% jitter */
  assert_true(l.next_try[0] >= now + 299 && l.next_try[0] <= now + 331);
  assert_int_equal(f->last_retry, l.next_try[0]);
  f->defer_ok = true;
  assert_int_equal(tern_queue_flush(f->q, "NOSUCHID"), TERN_ENOENT);
  assert_int_equal(tern_queue_flush(f->q, NULL), 0);
  assert_true(run_until(f, &f->ev[TERN_QEV_REMOVED], 1, 10000));
  assert_int_equal(f->njobs, 2);
  assert_int_equal(f->jobs[1].attempt, 2);
  fx_free(f);
}

/* Python's email package reads the DSN as a mail reader would: a
 * multipart/report; report-type=delivery-status whose second part holds
 * the per-message and per-recipient fields. Prints what it found. */
static const char parse_py[] =
    "import sys, email, email.policy\n"
    "m = email.message_from_binary_file(open(sys.argv[1], 'rb'),\n"
    "                                   policy=email.policy.compat32)\n"
    "assert m.get_content_type() == 'multipart/report', m.get_content_type()\n"
    "assert m.get_param('report-type') == 'delivery-status'\n"
    "parts = m.get_payload()\n"
    "assert parts[0].get_content_type() == 'text/plain'\n"
    "ds = parts[1]\n"
    "assert ds.get_content_type() == 'message/delivery-status'\n"
    "blocks = ds.get_payload()\n"
    "assert blocks[0]['Reporting-MTA'] == 'dns; mx.test', blocks[0].items()\n"
    "r = blocks[1]\n"
    "print(r['Final-Recipient'], '|', r['Action'], '|', r['Status'], '|',\n"
    "      ' '.join(r['Diagnostic-Code'].split()))\n";

static void python_parse(const struct jobrec *b, const char *status,
                         const char *diag) {
  char path[96], py[96], cmd[256], out[512] = "";
  snprintf(path, sizeof path, "/tmp/tern-queue-dsn-%d.eml", (int)getpid());
  snprintf(py, sizeof py, "/tmp/tern-queue-dsn-%d.py", (int)getpid());
  FILE *fp = fopen(path, "wb");
  assert_non_null(fp);
  assert_int_equal(fwrite(b->body, 1, b->len, fp), b->len);
  assert_int_equal(fclose(fp), 0);
  fp = fopen(py, "w");
  assert_non_null(fp);
  fputs(parse_py, fp);
  assert_int_equal(fclose(fp), 0);
  snprintf(cmd, sizeof cmd, "/usr/bin/python3 %s %s 2>&1", py, path);
  FILE *pp = popen(cmd, "r");
  assert_non_null(pp);
  size_t n = fread(out, 1, sizeof out - 1, pp);
  out[n] = '\0';
  int st = pclose(pp);
  remove(path);
  remove(py);
  if (st != 0)
    fail_msg("python3 could not parse the DSN: %s", out);
  char want[160];
  snprintf(want, sizeof want, "| failed | %s | smtp; %s", status, diag);
  if (!strstr(out, want))
    fail_msg("python3 read %s, wanted %s", out, want);
}

static void check_dsn_body(const struct jobrec *b, const char *status,
                           const char *diag) {
  const char *s = b->body;
  assert_non_null(s);
  if (getenv("TERN_QUEUE_DUMP"))
    fwrite(b->body, 1, b->len, stderr);
  python_parse(b, status, diag);
  assert_non_null(strstr(s, "From: MAILER-DAEMON@mx.test\r\n"));
  assert_non_null(strstr(s, "multipart/report"));
  assert_non_null(strstr(s, "report-type=delivery-status"));
  assert_non_null(strstr(s, "Content-Type: message/delivery-status\r\n"));
  assert_non_null(strstr(s, "Reporting-MTA: dns; mx.test\r\n"));
  assert_non_null(strstr(s, "Final-Recipient: rfc822; "));
  assert_non_null(strstr(s, "Action: failed\r\n"));
  char want[128];
  snprintf(want, sizeof want, "Status: %s\r\n", status);
  assert_non_null(strstr(s, want));
  snprintf(want, sizeof want, "Diagnostic-Code: smtp; %s", diag);
  assert_non_null(strstr(s, want));
}

static void test_bounce(void **state) {
  (void)state;
  struct fx *f = fx_new();
  fx_open(f);
  struct tern_queue_rcpt r[2] = {
      {"ok@example.net", NULL, 0, "local"},
      {"fail@example.net", "rfc822;Fail@example.net", 0, "local"}};
  struct tern_queue_envelope e = {.from = "sender@example.org",
                                  .rcpts = r,
                                  .nrcpts = 2,
                                  .envid = "ENV1",
                                  .client = "client.test (192.0.2.9)"};
  char id[TERN_QUEUE_ID_MAX];
  snprintf(id, sizeof id, "%s",
           submit_env(f, &e, body1, sizeof body1 - 1, 7, NULL));
  /* the original and the DSN both end removed */
  assert_true(run_until(f, &f->ev[TERN_QEV_REMOVED], 2, 10000));
  assert_int_equal(count_ev(f, TERN_QEV_BOUNCE), 1);
  assert_int_equal(count_ev(f, TERN_QEV_DELIVERED), 2); /* ok + the DSN */
  assert_int_equal(count_ev(f, TERN_QEV_FAILED), 1);
  int b = find_job(f, true);
  assert_true(b >= 0);
  assert_string_equal(f->jobs[b].id, f->last_bounce);
  assert_string_equal(f->jobs[b].from, "");
  assert_string_equal(f->jobs[b].rcpt0, "sender@example.org");
  assert_string_equal(f->jobs[b].dest, "local");
  check_dsn_body(&f->jobs[b], "5.1.1", "550 5.1.1 <fail> user unknown");
  /* RET unspecified: the whole original comes back */
  assert_non_null(strstr(f->jobs[b].body, "Content-Type: message/rfc822\r\n"));
  assert_non_null(strstr(f->jobs[b].body, "Hello there.\r\n"));
  assert_non_null(strstr(f->jobs[b].body, "Original-Envelope-Id: ENV1\r\n"));
  assert_non_null(
      strstr(f->jobs[b].body, "Original-Recipient: rfc822;Fail@example.net"));
  assert_non_null(strstr(f->jobs[b].body, "fail@example.net"));
  assert_null(strstr(f->jobs[b].body, "Final-Recipient: rfc822; ok@"));
  fx_free(f);
}

static void test_ret_hdrs(void **state) {
  (void)state;
  struct fx *f = fx_new();
  fx_open(f);
  struct tern_queue_rcpt r = {"fail@example.net", NULL, TERN_NOTIFY_FAILURE,
                              "local"};
  struct tern_queue_envelope e = {.from = "sender@example.org",
                                  .rcpts = &r,
                                  .nrcpts = 1,
                                  .ret = TERN_RET_HDRS};
  submit_env(f, &e, body1, sizeof body1 - 1, 5, NULL);
  assert_true(run_until(f, &f->ev[TERN_QEV_REMOVED], 2, 10000));
  int b = find_job(f, true);
  assert_true(b >= 0);
  check_dsn_body(&f->jobs[b], "5.1.1", "550 5.1.1 <fail> user unknown");
  assert_non_null(strstr(f->jobs[b].body, "text/rfc822-headers"));
  assert_non_null(strstr(f->jobs[b].body, "Subject: hello\r\n"));
  assert_null(strstr(f->jobs[b].body, "Hello there."));
  fx_free(f);
}

/* RFC 8689 §5: the report on a REQUIRETLS message is sent with
 * REQUIRETLS, and holds the original's header only, never its body. */
static void test_requiretls_bounce(void **state) {
  (void)state;
  struct fx *f = fx_new();
  fx_open(f);
  struct tern_queue_rcpt r = {"fail@example.net", NULL, 0, "local"};
  struct tern_queue_envelope e = {.from = "sender@example.org",
                                  .rcpts = &r,
                                  .nrcpts = 1,
                                  .requiretls = true};
  submit_env(f, &e, body1, sizeof body1 - 1, 5, NULL);
  assert_true(run_until(f, &f->ev[TERN_QEV_REMOVED], 2, 10000));
  int b = find_job(f, true);
  assert_true(b >= 0);
  assert_true(f->jobs[b].requiretls);
  check_dsn_body(&f->jobs[b], "5.1.1", "550 5.1.1 <fail> user unknown");
  assert_non_null(strstr(f->jobs[b].body, "text/rfc822-headers"));
  assert_null(strstr(f->jobs[b].body, "Hello there."));
  fx_free(f);
}

static void test_notify_never(void **state) {
  (void)state;
  struct fx *f = fx_new();
  fx_open(f);
  submit(f, "sender@example.org", "fail@example.net", TERN_NOTIFY_NEVER);
  assert_true(run_until(f, &f->ev[TERN_QEV_REMOVED], 1, 10000));
  assert_int_equal(count_ev(f, TERN_QEV_NO_BOUNCE), 1);
  assert_string_equal(f->last_detail, "NOTIFY=NEVER");
  /* SUCCESS only: no failure report either */
  submit(f, "sender@example.org", "fail2@example.net", TERN_NOTIFY_SUCCESS);
  assert_true(run_until(f, &f->ev[TERN_QEV_REMOVED], 2, 10000));
  assert_int_equal(count_ev(f, TERN_QEV_NO_BOUNCE), 2);
  run_for(f, 200);
  assert_int_equal(count_ev(f, TERN_QEV_BOUNCE), 0);
  assert_int_equal(find_job(f, true), -1);
  fx_free(f);
}

static void test_success_notice(void **state) {
  (void)state;
  struct fx *f = fx_new();
  fx_open(f);
  submit(f, "sender@example.org", "a@example.net",
         TERN_NOTIFY_SUCCESS | TERN_NOTIFY_FAILURE);
  assert_true(run_until(f, &f->ev[TERN_QEV_REMOVED], 2, 10000));
  int b = find_job(f, true);
  assert_true(b >= 0);
  assert_non_null(strstr(f->jobs[b].body, "Action: delivered\r\n"));
  assert_non_null(strstr(f->jobs[b].body, "text/rfc822-headers"));
  assert_null(strstr(f->jobs[b].body, "Hello there."));
  fx_free(f);
}

static void test_null_sender(void **state) {
  (void)state;
  struct fx *f = fx_new();
  fx_open(f);
  char id[TERN_QUEUE_ID_MAX];
  snprintf(id, sizeof id, "%s", submit(f, "", "fail@example.net", 0));
  assert_true(run_until(f, &f->ev[TERN_QEV_NO_BOUNCE], 1, 10000));
  int rc;
  struct listed l;
  for (int tries = 0; tries < 200; tries++) {
    l = list_one(f, id, &rc);
    if (rc == 0 && l.held)
      break;
    run_for(f, 10);
  }
  assert_int_equal(rc, 0);
  assert_true(l.held);
  assert_int_equal(l.state[0], TERN_QRS_FAILED);
  assert_int_equal(count_ev(f, TERN_QEV_REMOVED), 0);
  assert_int_equal(find_job(f, true), -1);
  /* the operator releases it: nothing left to deliver, so it goes */
  assert_int_equal(tern_queue_hold(f->q, id, false), 0);
  assert_true(run_until(f, &f->ev[TERN_QEV_REMOVED], 1, 10000));
  fx_free(f);

  /* with a postmaster: a double bounce to it */
  f = fx_new();
  f->o.postmaster = "relaypm@example.org";
  fx_open(f);
  submit(f, "", "fail@example.net", 0);
  assert_true(run_until(f, &f->ev[TERN_QEV_REMOVED], 2, 10000));
  int b = find_job(f, true);
  assert_true(b >= 0);
  assert_string_equal(f->jobs[b].rcpt0, "relaypm@example.org");
  assert_string_equal(f->jobs[b].dest, "relay"); /* opts.route decided */
  check_dsn_body(&f->jobs[b], "5.1.1", "550 5.1.1");
  fx_free(f);
}

/* A double bounce that fails is never reported again: it is held (the
 * loop grew the spool without end, each report carrying the last). */
static void test_double_bounce_fails(void **state) {
  (void)state;
  struct fx *f = fx_new();
  f->o.postmaster = "failpm@example.org";
  fx_open(f);
  char id[TERN_QUEUE_ID_MAX];
  snprintf(id, sizeof id, "%s", submit(f, "", "fail@example.net", 0));
  assert_true(run_until(f, &f->ev[TERN_QEV_NO_BOUNCE], 1, 10000));
  assert_string_equal(f->last_detail,
                      "double bounce failed: message kept on hold");
  run_for(f, 500);
  assert_int_equal(count_ev(f, TERN_QEV_BOUNCE), 1); /* the double bounce */
  int nb = 0;
  for (int i = 0; i < f->njobs; i++)
    nb += f->jobs[i].is_bounce;
  assert_int_equal(nb, 1);
  /* the original went once the double bounce was queued; the double
   * bounce itself is held for an operator */
  int rc;
  struct listed l = list_one(f, f->last_bounce, &rc);
  assert_int_equal(rc, 0);
  assert_true(l.held);
  fx_free(f);
}

/* A next hop's reply with 8-bit and control octets still makes a
 * bounce (it made none: the DSN composer refused the raw text). */
static void test_bounce_raw_reply(void **state) {
  (void)state;
  struct fx *f = fx_new();
  fx_open(f);
  submit(f, "sender@example.org", "fail8@example.net", 0);
  assert_true(run_until(f, &f->ev[TERN_QEV_REMOVED], 2, 10000));
  assert_int_equal(count_ev(f, TERN_QEV_ERROR), 0);
  int b = find_job(f, true);
  assert_true(b >= 0);
  check_dsn_body(&f->jobs[b], "5.1.1", "550 5.1.1 Empf?nger unbekannt");
  fx_free(f);
}

/* An original over 50,000 octets comes back as its header only. */
static void test_bounce_big_original(void **state) {
  (void)state;
  struct fx *f = fx_new();
  fx_open(f);
  size_t n = 60000;
  char *big = malloc(n);
  assert_non_null(big);
  size_t h = sizeof body1 - 1;
  memcpy(big, body1, h);
  for (size_t i = h; i < n; i++)
    big[i] = (i - h) % 80 == 78 ? '\r' : (i - h) % 80 == 79 ? '\n' : 'x';
  struct tern_queue_rcpt r = {"fail@example.net", NULL, 0, "local"};
  struct tern_queue_envelope e = {
      .from = "sender@example.org", .rcpts = &r, .nrcpts = 1};
  submit_env(f, &e, big, n, 8192, NULL);
  free(big);
  assert_true(run_until(f, &f->ev[TERN_QEV_REMOVED], 2, 10000));
  int b = find_job(f, true);
  assert_true(b >= 0);
  assert_non_null(strstr(f->jobs[b].body, "text/rfc822-headers"));
  assert_non_null(strstr(f->jobs[b].body, "Subject: hello\r\n"));
  assert_null(strstr(f->jobs[b].body, "xxxxxxxxxx"));
  fx_free(f);
}

static void test_expiry(void **state) {
  (void)state;
  struct fx *f = fx_new();
  f->o.lifetime_s = 1;
  f->o.retry_min_s = 1;
  f->o.retry_max_s = 1;
  fx_open(f);
  submit(f, "sender@example.org", "defer@example.net", 0);
  assert_true(run_until(f, &f->ev[TERN_QEV_FAILED], 1, 10000));
  /* says so, with the last reply, for a status=expired log line */
  assert_true(f->last_expired);
  assert_true(strncmp(f->last_detail, "expired after ", 14) == 0);
  assert_non_null(strstr(f->last_detail, " s in the queue; last reply: "
                                         "451 4.4.1 try again later"));
  assert_true(run_until(f, &f->ev[TERN_QEV_REMOVED], 2, 10000));
  int b = find_job(f, true);
  assert_true(b >= 0);
  check_dsn_body(&f->jobs[b], "4.4.1", "451 4.4.1 try again later");
  fx_free(f);
}

static void test_restart(void **state) {
  (void)state;
  struct fx *f = fx_new();
  f->o.retry_min_s = 1;
  f->o.retry_max_s = 1;
  fx_open(f);
  char id[TERN_QUEUE_ID_MAX];
  snprintf(id, sizeof id, "%s",
           submit(f, "s@example.org", "defer@example.net", 0));
  assert_true(run_until(f, &f->ev[TERN_QEV_DEFERRED], 1, 10000));
  fx_close(f, 1000);
  int before = f->njobs;
  f->defer_ok = true;
  fx_open(f);
  assert_true(run_until(f, &f->ev[TERN_QEV_REMOVED], 1, 10000));
  assert_true(f->njobs > before);
  assert_string_equal(f->jobs[f->njobs - 1].id, id);
  assert_true(f->jobs[f->njobs - 1].attempt >= 2);
  fx_free(f);
}

static void test_hold_release_delete(void **state) {
  (void)state;
  struct fx *f = fx_new();
  f->o.retry_min_s = 1;
  f->o.retry_max_s = 1;
  fx_open(f);
  char id[TERN_QUEUE_ID_MAX], id2[TERN_QUEUE_ID_MAX];
  snprintf(id, sizeof id, "%s",
           submit(f, "s@example.org", "defer@example.net", 0));
  assert_true(run_until(f, &f->ev[TERN_QEV_DEFERRED], 1, 10000));
  assert_int_equal(tern_queue_hold(f->q, id, true), 0);
  assert_int_equal(tern_queue_hold(f->q, "NOSUCH", true), TERN_ENOENT);
  int jobs = f->njobs;
  assert_int_equal(tern_queue_flush(f->q, id), 0);
  run_for(f, 2500); /* past its retry time, twice */
  assert_int_equal(f->njobs, jobs);
  int rc;
  struct listed l = list_one(f, id, &rc);
  assert_int_equal(rc, 0);
  assert_true(l.held);
  assert_int_equal(l.next_try[0], 0); /* not tried while held */
  f->defer_ok = true;
  assert_int_equal(tern_queue_hold(f->q, id, false), 0);
  assert_true(run_until(f, &f->ev[TERN_QEV_REMOVED], 1, 10000));
  assert_int_equal(f->njobs, jobs + 1);

  f->defer_ok = false;
  snprintf(id2, sizeof id2, "%s",
           submit(f, "s@example.org", "defer@example.net", 0));
  assert_true(run_until(f, &f->ev[TERN_QEV_DEFERRED], 2, 10000));
  assert_int_equal(tern_queue_delete(f->q, id2), 0);
  assert_int_equal(tern_queue_delete(f->q, id2), TERN_ENOENT);
  assert_true(run_until(f, &f->ev[TERN_QEV_DELETED], 1, 10000));
  list_one(f, id2, &rc);
  assert_int_equal(rc, TERN_ENOENT);
  jobs = f->njobs;
  run_for(f, 1500);
  assert_int_equal(f->njobs, jobs);
  fx_free(f);
}

static void test_concurrency(void **state) {
  (void)state;
  struct fx *f = fx_new();
  f->o.concurrency = 2;
  f->o.max_active = 10;
  f->hold = true;
  fx_open(f);
  for (int i = 0; i < 6; i++)
    submit(f, "s@example.org", "relay@example.net", 0);
  for (int i = 0; i < 3; i++)
    submit(f, "s@example.org", "a@example.net", 0);
  assert_true(run_until(f, &f->nheld, 4, 10000));
  run_for(f, 200);
  assert_int_equal(f->nheld, 4);
  assert_int_equal(f->max_relay, 2);
  assert_int_equal(f->max_local, 2);
  /* a job in flight shows as active */
  int rc;
  struct listed l = list_one(f, f->held[0]->rec->id, &rc);
  assert_int_equal(rc, 0);
  assert_int_equal(l.state[0], TERN_QRS_ACTIVE);
  /* end them one by one: the limits hold all the way */
  double t0 = secs();
  while (f->ev[TERN_QEV_REMOVED] < 9) {
    assert_true(secs() - t0 < 20);
    if (f->nheld > 0)
      finish(f->held[--f->nheld]);
    run_for(f, 5);
  }
  assert_true(run_until(f, &f->ev[TERN_QEV_REMOVED], 9, 10000));
  assert_int_equal(f->max_relay, 2);
  assert_int_equal(f->max_local, 2);
  fx_free(f);
}

static void test_cancel_at_close(void **state) {
  (void)state;
  struct fx *f = fx_new();
  f->hold = true;
  fx_open(f);
  char id[TERN_QUEUE_ID_MAX];
  snprintf(id, sizeof id, "%s", submit(f, "s@example.org", "a@example.net", 0));
  assert_true(run_until(f, &f->nheld, 1, 10000));
  struct live *x = f->held[--f->nheld];
  assert_false(tern_queue_job_cancelled(x->job));
  tern_queue_port_free(f->port);
  f->port = NULL;
  f->closed = 0;
  tern_queue_close(f->q, 50, on_closed, f);
  assert_true(run_until(f, &f->closed, 1, 10000));
  assert_true(tern_queue_job_cancelled(x->job));
  finish(x); /* results ignored */
  tern_queue_free(f->q);
  f->q = NULL;
  /* after a restart it is delivered again */
  f->hold = false;
  fx_open(f);
  assert_true(run_until(f, &f->ev[TERN_QEV_REMOVED], 1, 10000));
  assert_string_equal(f->jobs[f->njobs - 1].id, id);
  fx_free(f);
}

static void test_finish_while_closing(void **state) {
  (void)state;
  struct fx *f = fx_new();
  f->hold = true;
  fx_open(f);
  submit(f, "s@example.org", "a@example.net", 0);
  assert_true(run_until(f, &f->nheld, 1, 10000));
  struct live *x = f->held[--f->nheld];
  tern_queue_port_free(f->port);
  f->port = NULL;
  f->closed = 0;
  tern_queue_close(f->q, 20000, on_closed, f);
  run_for(f, 100);
  assert_int_equal(f->closed, 0); /* waits for the job */
  assert_false(tern_queue_job_cancelled(x->job));
  finish(x); /* in time: recorded */
  assert_true(run_until(f, &f->closed, 1, 10000));
  assert_int_equal(count_ev(f, TERN_QEV_REMOVED), 1);
  tern_queue_free(f->q);
  f->q = NULL;
  f->hold = false;
  int jobs = f->njobs;
  fx_open(f);
  run_for(f, 300);
  assert_int_equal(f->njobs, jobs); /* nothing left to deliver */
  fx_free(f);
}

static void test_big_body(void **state) {
  (void)state;
  struct fx *f = fx_new();
  fx_open(f);
  size_t len = 1u << 20;
  char *body = malloc(len);
  assert_non_null(body);
  uint32_t x = 12345;
  for (size_t i = 0; i < len; i++) {
    x = x * 1103515245u + 12345u;
    body[i] = (char)(x >> 16);
  }
  struct tern_queue_rcpt r = {"a@example.net", NULL, 0, "local"};
  struct tern_queue_envelope e = {.from = "s@example.org",
                                  .rcpts = &r,
                                  .nrcpts = 1,
                                  .body = TERN_BODY_BINARYMIME};
  int waits = 0;
  submit_env(f, &e, body, len, 10000, &waits);
  assert_true(waits > 0); /* the writer was held back: bounded memory */
  assert_true(run_until(f, &f->ev[TERN_QEV_REMOVED], 1, 20000));
  assert_int_equal(f->jobs[0].len, len);
  assert_memory_equal(f->jobs[0].body, body, len);
  free(body);
  fx_free(f);
}

static void test_delay_warning(void **state) {
  (void)state;
  struct fx *f = fx_new();
  f->o.delay_warning_s = 1;
  f->o.retry_min_s = 1;
  f->o.retry_max_s = 1;
  f->o.lifetime_s = 60;
  fx_open(f);
  submit(f, "sender@example.org", "defer@example.net", 0);
  submit(f, "sender@example.org", "defer2@example.net", TERN_NOTIFY_FAILURE);
  assert_true(run_until(f, &f->ev[TERN_QEV_DELAYED], 1, 10000));
  /* the warning is queued, then delivered (the only delivery here) */
  assert_true(run_until(f, &f->ev[TERN_QEV_DELIVERED], 1, 10000));
  int b = find_job(f, true);
  assert_true(b >= 0);
  assert_non_null(f->jobs[b].body);
  assert_string_equal(f->jobs[b].rcpt0, "sender@example.org");
  const char *s = f->jobs[b].body;
  assert_non_null(strstr(s, "Final-Recipient: rfc822; defer@example.net\r\n"));
  assert_null(strstr(s, "defer2@"));
  assert_non_null(strstr(s, "Action: delayed\r\n"));
  assert_non_null(strstr(s, "Status: 4.4.1\r\n"));
  assert_non_null(strstr(s, "Will-Retry-Until: "));
  assert_non_null(strstr(s, "text/rfc822-headers"));
  assert_null(strstr(s, "Hello there."));
  /* once per message: more deferrals, no second warning */
  int d = count_ev(f, TERN_QEV_DEFERRED);
  assert_true(run_until(f, &f->ev[TERN_QEV_DEFERRED], d + 4, 10000));
  assert_int_equal(count_ev(f, TERN_QEV_DELAYED), 1);
  f->defer_ok = true;
  assert_int_equal(tern_queue_flush(f->q, NULL), 0);
  assert_true(run_until(f, &f->ev[TERN_QEV_REMOVED], 3, 10000));
  fx_free(f);
}

/* ---- review fixes: dead destinations, grouping, 452 4.5.3 ---------------- */

/* Over every listed recipient: how many are in `state` with `reply`
 * (NULL: any), and the range of their next_try and attempts. */
struct tally {
  enum tern_queue_rcpt_state state;
  const char *reply;
  int n, match;
  time_t min_next, max_next;
  unsigned min_att, max_att;
};

static int tally_fn(const struct tern_queue_list_msg *m, void *arg) {
  struct tally *t = arg;
  for (size_t i = 0; i < m->nrcpts; i++) {
    const struct tern_queue_list_rcpt *r = &m->rcpts[i];
    t->n++;
    if (r->state != t->state ||
        (t->reply && strcmp(r->last_reply, t->reply) != 0))
      continue;
    if (!t->match || r->next_try < t->min_next)
      t->min_next = r->next_try;
    if (!t->match || r->next_try > t->max_next)
      t->max_next = r->next_try;
    if (!t->match || r->attempts < t->min_att)
      t->min_att = r->attempts;
    if (!t->match || r->attempts > t->max_att)
      t->max_att = r->attempts;
    t->match++;
  }
  return 0;
}

/* List until `want` recipients match (results are committed in the
 * background), bounded. */
static struct tally tally_wait(struct fx *f, enum tern_queue_rcpt_state st,
                               const char *reply, int want) {
  struct tally t;
  for (int tries = 0; tries < 500; tries++) {
    memset(&t, 0, sizeof t);
    t.state = st;
    t.reply = reply;
    assert_int_equal(tern_queue_list(f->q, NULL, tally_fn, &t), 0);
    if (t.match >= want)
      break;
    run_for(f, 10);
  }
  return t;
}

/* A dead next hop costs one connection attempt, not one per message:
 * the first job finds it unreachable, the 199 others waiting for it are
 * deferred without being tried; after retry_min one probe goes, and when
 * it gets through the rest flows at full concurrency. */
static void test_unreachable(void **state) {
  (void)state;
  struct fx *f = fx_new();
  f->o.retry_min_s = 1;
  f->o.retry_max_s = 60;
  /* 200 messages for the relay, queued while its one job hangs */
  f->hold = true;
  f->o.max_active = 1;
  fx_open(f);
  for (int i = 0; i < 200; i++)
    submit(f, "s@example.org", "relay@example.net", 0);
  assert_true(run_until(f, &f->nheld, 1, 10000));
  fx_close(f, 0);
  for (int i = 0; i < f->nheld; i++)
    free(f->held[i]);
  f->nheld = 0;
  f->inflight_relay = f->max_relay = 0;
  /* restart: all 200 due at once, 20 may run; the next hop is dead */
  f->hold = false;
  f->unreach = true;
  f->o.max_active = 200;
  memset(f->ev, 0, sizeof f->ev);
  int jobs0 = f->njobs;
  fx_open(f);
  assert_true(run_until(f, &f->ev[TERN_QEV_DEFERRED], 200, 10000));
  assert_int_equal(f->njobs, jobs0 + 1);
  struct tally t =
      tally_wait(f, TERN_QRS_DEFERRED, "421 4.4.2 mx.test down", 200);
  assert_int_equal(t.n, 200);
  assert_int_equal(t.match, 200);
  /* one attempt counted each (the hung job, cancelled, counts none) */
  assert_int_equal(t.min_att, 1);
  assert_int_equal(t.max_att, 1);
  /* the next hop is back; one probe, held to see that it is alone */
  f->unreach = false;
  f->hold = true;
  assert_true(run_until(f, &f->nheld, 1, 5000));
  run_for(f, 300);
  assert_int_equal(f->nheld, 1);
  assert_int_equal(f->njobs, jobs0 + 2);
  assert_int_equal(f->max_relay, 1);
  /* it gets through: the rest goes, 20 at a time */
  finish(f->held[--f->nheld]);
  assert_true(run_until(f, &f->nheld, 20, 5000));
  run_for(f, 100);
  assert_int_equal(f->max_relay, 20);
  double t0 = secs();
  while (f->ev[TERN_QEV_REMOVED] < 200) {
    assert_true(secs() - t0 < 30);
    while (f->nheld > 0)
      finish(f->held[--f->nheld]);
    run_for(f, 5);
  }
  assert_int_equal(f->njobs, jobs0 + 201);
  assert_int_equal(f->ev[TERN_QEV_DELIVERED], 200);
  fx_free(f);
}

/* Destinations per recipient domain (mx:DOMAIN): a dead one is
 * suspended alone. Its first job finds it unreachable and the others
 * waiting for it are deferred untried, so they hold no slot of
 * max_active: mail to a live domain, queued at the same time, goes at
 * once. */
static void test_dead_mx_alone(void **state) {
  (void)state;
  struct fx *f = fx_new();
  f->o.retry_min_s = 1;
  f->o.retry_max_s = 60;
  f->o.concurrency = 5;
  f->o.max_active = 5;
  f->dead = "mx:dead.example";
  fx_open(f);
  for (int i = 0; i < 60; i++) {
    submit(f, "s@example.org", "mx-a@dead.example", 0);
    submit(f, "s@example.org", "mx-b@live.example", 0);
  }
  /* the live domain's mail was delivered as it came */
  assert_true(run_until(f, &f->ev[TERN_QEV_DELIVERED], 60, 20000));
  /* the dead one's waits for the probe (after retry_min), whose
   * failure defers it all */
  assert_true(run_until(f, &f->ev[TERN_QEV_DEFERRED], 60, 20000));
  assert_int_equal(f->ev[TERN_QEV_DELIVERED], 60);
  /* it cost one attempt and the probes, not one per message */
  assert_true(f->ndead >= 2 && f->ndead <= 10);
  assert_int_equal(f->njobs, 60 + f->ndead);
  for (int i = 0; i < f->njobs; i++)
    if (strcmp(f->jobs[i].dest, "mx:dead.example") != 0)
      assert_string_equal(f->jobs[i].dest, "mx:live.example");
  fx_free(f);
}

/* Many destinations (one per domain) come and go: each message to its
 * own domain is delivered, the table grows past its first size and
 * forgets destinations that have nothing left. */
static void test_many_dests(void **state) {
  (void)state;
  struct fx *f = fx_new();
  fx_open(f);
  char rcpt[64];
  for (int i = 0; i < 200; i++) {
    snprintf(rcpt, sizeof rcpt, "mx-u@d%d.example", i);
    submit(f, "s@example.org", rcpt, 0);
  }
  assert_true(run_until(f, &f->ev[TERN_QEV_REMOVED], 200, 20000));
  assert_int_equal(f->ev[TERN_QEV_DELIVERED], 200);
  /* a destination forgotten comes back as new */
  submit(f, "s@example.org", "mx-u@d7.example", 0);
  assert_true(run_until(f, &f->ev[TERN_QEV_REMOVED], 201, 20000));
  assert_string_equal(f->jobs[f->njobs - 1].dest, "mx:d7.example");
  fx_free(f);
}

/* A second unreachable outcome (the probe) defers what waited for it;
 * new mail to a suspended destination waits untried meanwhile. */
static void test_unreachable_probe_fails(void **state) {
  (void)state;
  struct fx *f = fx_new();
  f->o.retry_min_s = 1;
  f->o.retry_max_s = 60;
  f->unreach = true;
  fx_open(f);
  submit(f, "s@example.org", "relay@example.net", 0);
  assert_true(run_until(f, &f->ev[TERN_QEV_DEFERRED], 1, 5000));
  assert_int_equal(f->njobs, 1);
  /* new mail while suspended: not handed to deliver */
  submit(f, "s@example.org", "relay2@example.net", 0);
  run_for(f, 200);
  assert_int_equal(f->njobs, 1);
  /* after retry_min: one probe, unreachable again: both deferred */
  assert_true(run_until(f, &f->ev[TERN_QEV_DEFERRED], 3, 5000));
  assert_int_equal(f->njobs, 2);
  /* a local message is not concerned */
  submit(f, "s@example.org", "a@example.net", 0);
  assert_true(run_until(f, &f->ev[TERN_QEV_REMOVED], 1, 5000));
  fx_free(f);
}

/* The recipients of one message deferred together come back together:
 * one retry time for the job's outcome, one job on retry (not split by
 * per-recipient jitter). */
static void test_retry_together(void **state) {
  (void)state;
  struct fx *f = fx_new();
  f->o.retry_min_s = 10; /* jitter up to 1 s */
  f->o.retry_max_s = 10;
  fx_open(f);
  struct tern_queue_rcpt rs[50];
  char addrs[50][32];
  for (int i = 0; i < 50; i++) {
    snprintf(addrs[i], sizeof addrs[i], "defer%d@example.net", i);
    rs[i] = (struct tern_queue_rcpt){addrs[i], NULL, 0, "local"};
  }
  struct tern_queue_envelope e = {
      .from = "s@example.org", .rcpts = rs, .nrcpts = 50};
  submit_env(f, &e, body1, sizeof body1 - 1, sizeof body1, NULL);
  assert_true(run_until(f, &f->ev[TERN_QEV_DEFERRED], 50, 5000));
  assert_int_equal(f->njobs, 1);
  assert_int_equal(f->jobs[0].nrcpts, 50);
  struct tally t = tally_wait(f, TERN_QRS_DEFERRED, NULL, 50);
  assert_int_equal(t.match, 50);
  assert_int_equal(t.min_next, t.max_next);
  f->defer_ok = true;
  assert_true(run_until(f, &f->ev[TERN_QEV_REMOVED], 1, 15000));
  assert_int_equal(f->njobs, 2);
  assert_int_equal(f->jobs[1].nrcpts, 50);
  assert_int_equal(f->jobs[1].attempt, 2);
  fx_free(f);
}

/* Recipients of one message and destination with different retry times
 * (two jobs' outcomes a second apart, here split by max_job_rcpts 2)
 * go in one job once the first of them is due. */
static void test_retry_regroup(void **state) {
  (void)state;
  struct fx *f = fx_new();
  f->o.retry_min_s = 2;
  f->o.retry_max_s = 2;
  f->o.max_job_rcpts = 2;
  f->hold = true;
  fx_open(f);
  struct tern_queue_rcpt rs[4] = {{"defer0@example.net", NULL, 0, "local"},
                                  {"defer1@example.net", NULL, 0, "local"},
                                  {"defer2@example.net", NULL, 0, "local"},
                                  {"defer3@example.net", NULL, 0, "local"}};
  struct tern_queue_envelope e = {
      .from = "s@example.org", .rcpts = rs, .nrcpts = 4};
  submit_env(f, &e, body1, sizeof body1 - 1, sizeof body1, NULL);
  assert_true(run_until(f, &f->nheld, 2, 5000));
  finish(f->held[--f->nheld]);
  assert_true(run_until(f, &f->ev[TERN_QEV_DEFERRED], 2, 5000));
  run_for(f, 1100); /* the other outcome a second later */
  finish(f->held[--f->nheld]);
  assert_true(run_until(f, &f->ev[TERN_QEV_DEFERRED], 4, 5000));
  struct tally t = tally_wait(f, TERN_QRS_DEFERRED, NULL, 4);
  assert_int_equal(t.match, 4);
  assert_true(t.max_next > t.min_next);
  fx_close(f, 1000);
  /* reopened with room for all four in a job */
  f->o.max_job_rcpts = 50;
  f->hold = false;
  f->defer_ok = true;
  memset(f->ev, 0, sizeof f->ev);
  int jobs0 = f->njobs;
  fx_open(f);
  assert_true(run_until(f, &f->ev[TERN_QEV_REMOVED], 1, 10000));
  assert_int_equal(f->njobs, jobs0 + 1);
  assert_int_equal(f->jobs[jobs0].nrcpts, 4);
  fx_free(f);
}

/* "452 4.5.3 Too many recipients" from the next hop: the rest goes at
 * once in a new transaction, the attempt not counted. Jobs hold 50
 * recipients by default. */
static void test_too_many_rcpts(void **state) {
  (void)state;
  struct fx *f = fx_new();
  assert_int_equal(f->o.max_job_rcpts, 50);
  fx_open(f);
  f->too_many = true;
  f->accept_max = 30;
  struct tern_queue_rcpt rs[60];
  char addrs[60][32];
  for (int i = 0; i < 60; i++) {
    snprintf(addrs[i], sizeof addrs[i], "relay%d@example.net", i);
    rs[i] = (struct tern_queue_rcpt){addrs[i], NULL, 0, "relay"};
  }
  struct tern_queue_envelope e = {
      .from = "s@example.org", .rcpts = rs, .nrcpts = 60};
  submit_env(f, &e, body1, sizeof body1 - 1, sizeof body1, NULL);
  /* 50 (30 taken, 20 "too many"), 10, then the 20 again */
  assert_true(run_until(f, &f->ev[TERN_QEV_REMOVED], 1, 5000));
  assert_int_equal(f->ev[TERN_QEV_DELIVERED], 60);
  assert_int_equal(f->ev[TERN_QEV_DEFERRED], 20);
  assert_int_equal(f->njobs, 3);
  assert_int_equal(f->jobs[0].nrcpts, 50);
  for (int i = 0; i < f->njobs; i++)
    assert_int_equal(f->jobs[i].attempt, 1);

  /* a next hop that says it to every recipient is deferred as usual:
   * no retry at once, forever */
  f->accept_max = 0;
  time_t now = time(NULL);
  struct tern_queue_rcpt one = {"relay@example.net", NULL, 0, "relay"};
  e.rcpts = &one;
  e.nrcpts = 1;
  submit_env(f, &e, body1, sizeof body1 - 1, sizeof body1, NULL);
  assert_true(run_until(f, &f->ev[TERN_QEV_DEFERRED], 21, 5000));
  struct tally t =
      tally_wait(f, TERN_QRS_DEFERRED, "452 4.5.3 Too many recipients", 1);
  assert_int_equal(t.match, 1);
  assert_int_equal(t.min_att, 1);
  assert_true(t.min_next >= now + 299);
  run_for(f, 300);
  assert_int_equal(f->njobs, 4);

  /* "too many" beside only a deferral (a greylisting hop that takes one
   * recipient a transaction) is no progress either: it looped at once,
   * hundreds of transactions a second */
  f->accept_max = 1;
  struct tern_queue_rcpt two[3] = {{"defer0@example.net", NULL, 0, "relay"},
                                   {"relay1@example.net", NULL, 0, "relay"},
                                   {"relay2@example.net", NULL, 0, "relay"}};
  e.rcpts = two;
  e.nrcpts = 3;
  submit_env(f, &e, body1, sizeof body1 - 1, sizeof body1, NULL);
  assert_true(run_until(f, &f->njobs, 5, 5000));
  run_for(f, 500);
  assert_int_equal(f->njobs, 5);
  fx_free(f);
}

static int scan_fn(const struct tern_queue_list_msg *m, void *arg) {
  struct listed *l = arg;
  l->n++;
  l->state[0] = m->rcpts[0].state;
  assert_string_equal(m->from, "s@example.org");
  assert_int_equal(m->size, sizeof body1 - 1);
  return 0;
}

struct collected {
  char *p;
  size_t len;
};

static int body_fn(void *arg, const char *buf, size_t len) {
  struct collected *c = arg;
  c->p = realloc(c->p, c->len + len);
  assert_non_null(c->p);
  memcpy(c->p + c->len, buf, len);
  c->len += len;
  return 0;
}

static void test_scan_abort_options(void **state) {
  (void)state;
  struct fx *f = fx_new();
  /* options: a missing callback, a struct from a newer caller */
  struct tern_queue *q = (struct tern_queue *)1;
  char err[128] = "";
  struct tern_queue_options o = f->o;
  o.deliver = NULL;
  o.error = err;
  o.error_size = sizeof err;
  assert_int_equal(tern_queue_open(&q, &f->loop, &o), TERN_EINVAL);
  assert_null(q);
  assert_string_equal(err, "no deliver callback");
  struct {
    struct tern_queue_options o;
    uint64_t newer;
  } big;
  memset(&big, 0, sizeof big);
  big.o = f->o;
  big.o.size = sizeof big;
  big.newer = 1; /* a field this library does not know, set */
  assert_int_equal(tern_queue_open(&q, &f->loop, &big.o), TERN_EINVAL);

  fx_open(f);
  char id[TERN_QUEUE_ID_MAX];
  snprintf(id, sizeof id, "%s",
           submit(f, "s@example.org", "defer@example.net", 0));
  assert_true(run_until(f, &f->ev[TERN_QEV_DEFERRED], 1, 10000));
  /* offline reading while the queue runs */
  struct listed l;
  memset(&l, 0, sizeof l);
  assert_int_equal(tern_queue_scan(f->dir, NULL, scan_fn, &l, err, sizeof err),
                   0);
  assert_int_equal(l.n, 1);
  struct collected c = {NULL, 0};
  assert_int_equal(
      tern_queue_scan_body(f->dir, id, body_fn, &c, err, sizeof err), 0);
  assert_int_equal(c.len, sizeof body1 - 1);
  assert_memory_equal(c.p, body1, c.len);
  free(c.p);
  assert_int_equal(
      tern_queue_scan(f->dir, "NOSUCH", scan_fn, &l, err, sizeof err),
      TERN_ENOENT);

  /* abort before commit, after chunks went to the store: nothing is
   * queued, no callback comes */
  struct tern_queue_rcpt r = {"a@example.net", NULL, 0, "local"};
  struct tern_queue_envelope e = {
      .from = "s@example.org", .rcpts = &r, .nrcpts = 1};
  struct tern_queue_msg *m;
  assert_int_equal(tern_queue_msg_begin(f->port, &e, &m), 0);
  char *big_body = calloc(1, 200000);
  assert_non_null(big_body);
  int rc = tern_queue_msg_write(m, big_body, 200000, on_written, f);
  assert_true(rc == 0 || rc == 1);
  free(big_body);
  tern_queue_msg_abort(m);
  int done = f->done;
  run_for(f, 300);
  assert_int_equal(f->done, done);
  memset(&l, 0, sizeof l);
  assert_int_equal(tern_queue_list(f->q, NULL, scan_fn, &l), 0);
  assert_int_equal(l.n, 1);
  /* a bad envelope */
  e.nrcpts = 0;
  assert_int_equal(tern_queue_msg_begin(f->port, &e, &m), TERN_EINVAL);
  assert_null(m);
  fx_free(f);
}

/* ---- a port on another loop's thread ------------------------------------- */

struct worker {
  struct tern_queue *q;
  int n, ok, bad;
};

static void worker_done(void *arg, const struct tern_reply *r) {
  struct worker *w = arg;
  if (r->code == 250)
    w->ok++;
  else
    w->bad++;
}

static void worker_main(void *arg) {
  struct worker *w = arg;
  uv_loop_t loop;
  uv_loop_init(&loop);
  struct tern_queue_port *p;
  if (tern_queue_port_new(w->q, &loop, &p) != 0) {
    w->bad = w->n;
    return;
  }
  struct tern_queue_rcpt r = {"a@example.net", NULL, 0, "local"};
  struct tern_queue_envelope e = {
      .from = "s@example.org", .rcpts = &r, .nrcpts = 1};
  for (int i = 0; i < w->n; i++) {
    struct tern_queue_msg *m;
    if (tern_queue_msg_begin(p, &e, &m) != 0 ||
        tern_queue_msg_write(m, body1, sizeof body1 - 1, NULL, NULL) != 0) {
      w->bad++;
      continue;
    }
    tern_queue_msg_commit(m, worker_done, w);
  }
  /* bounded: the commits answer within a few group transactions */
  struct timespec t0;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  while (w->ok + w->bad < w->n) {
    uv_run(&loop, UV_RUN_NOWAIT);
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    if (t.tv_sec - t0.tv_sec > 20)
      break;
    usleep(1000);
  }
  tern_queue_port_free(p);
  uv_run(&loop, UV_RUN_DEFAULT); /* the port's handle closes */
  uv_loop_close(&loop);
}

static void test_other_loop(void **state) {
  (void)state;
  struct fx *f = fx_new();
  fx_open(f);
  struct worker w[2] = {{f->q, 20, 0, 0}, {f->q, 20, 0, 0}};
  uv_thread_t t[2];
  for (int i = 0; i < 2; i++)
    assert_int_equal(uv_thread_create(&t[i], worker_main, &w[i]), 0);
  /* the home loop delivers what the other loops committed */
  bool got = run_until(f, &f->ev[TERN_QEV_REMOVED], 40, 20000);
  for (int i = 0; i < 2; i++) {
    uv_thread_join(&t[i]);
    assert_int_equal(w[i].ok, 20);
    assert_int_equal(w[i].bad, 0);
  }
  assert_true(got);
  assert_int_equal(count_ev(f, TERN_QEV_QUEUED), 40);
  fx_free(f);
}

/* ---- a full disk (unit_queue enospc DIR, DIR on a small tmpfs) ----------- */

struct raw {
  int written, wstatus, done, code;
  char enhanced[16], text[128];
};

static void raw_written(void *arg, int status) {
  struct raw *r = arg;
  r->written++;
  if (status)
    r->wstatus = status;
}

static void raw_done(void *arg, const struct tern_reply *rep) {
  struct raw *r = arg;
  r->code = rep->code;
  snprintf(r->enhanced, sizeof r->enhanced, "%s",
           rep->enhanced ? rep->enhanced : "");
  snprintf(r->text, sizeof r->text, "%s", rep->text ? rep->text : "");
  r->done++;
}

/* Submit a body whatever happens; the reply's code comes back in r. */
static void submit_raw(struct fx *f, const char *body, size_t len,
                       struct raw *r) {
  struct tern_queue_rcpt rc = {"defer@example.net", NULL, 0, "local"};
  struct tern_queue_envelope e = {
      .from = "s@example.org", .rcpts = &rc, .nrcpts = 1};
  struct tern_queue_msg *m;
  memset(r, 0, sizeof *r);
  assert_int_equal(tern_queue_msg_begin(f->port, &e, &m), 0);
  for (size_t off = 0; off < len; off += 65536) {
    size_t n = len - off < 65536 ? len - off : 65536;
    int rc2 = tern_queue_msg_write(m, body + off, n, raw_written, r);
    if (rc2 < 0)
      break; /* the commit says why */
    if (rc2 == 1) {
      int want = r->written + 1;
      assert_true(run_until(f, &r->written, want, 20000));
      if (r->wstatus)
        break;
    }
  }
  tern_queue_msg_commit(m, raw_done, r);
  assert_true(run_until(f, &r->done, 1, 20000));
}

static int count_fn(const struct tern_queue_list_msg *m, void *arg) {
  (void)m;
  (*(int *)arg)++;
  return 0;
}

static int run_enospc(const char *dir) {
  struct fx *f = fx_new();
  f->o.dir = dir;
  f->o.retry_min_s = 3600;
  f->o.retry_max_s = 3600;
  fx_open(f);
  size_t len = 1u << 20;
  char *body = malloc(len);
  assert_non_null(body);
  for (size_t i = 0; i < len; i++)
    body[i] = (char)('a' + i % 26);
  struct raw r;
  int ok = 0;
  for (int i = 0; i < 400; i++) {
    submit_raw(f, body, len, &r);
    if (r.code != 250)
      break;
    ok++;
  }
  print_message("%d messages of 1 MiB queued, then %d %s %s\n", ok, r.code,
                r.enhanced, r.text);
  assert_true(ok > 0);
  assert_int_equal(r.code, 452);
  assert_string_equal(r.enhanced, "4.3.1");
  assert_string_equal(r.text, "Insufficient system storage");
  /* the application heard of it (the home loop, from the store's
   * writer) */
  assert_true(run_until(f, &f->nfull, 1, 5000));
  char want[256];
  snprintf(want, sizeof want,
           "disk full: new mail refused (452 4.3.1) until 16 MiB are free "
           "in %s",
           dir);
  assert_string_equal(f->full_detail, want);
  assert_int_equal(f->ev[TERN_QEV_RESUMED], 0);
  /* nothing partial: the refused message is not listed */
  int n = 0;
  assert_int_equal(tern_queue_list(f->q, NULL, count_fn, &n), 0);
  assert_int_equal(n, ok);
  /* the next hop takes them: space comes back, serving resumes */
  f->defer_ok = true;
  assert_int_equal(tern_queue_flush(f->q, NULL), 0);
  bool gone = run_until(f, &f->ev[TERN_QEV_REMOVED], ok, 60000);
  if (!gone)
    print_message("jobs %d delivered %d removed %d errors %d (%s)\n", f->njobs,
                  f->ev[TERN_QEV_DELIVERED], f->ev[TERN_QEV_REMOVED],
                  f->ev[TERN_QEV_ERROR], f->last_error);
  assert_true(gone);
  submit_raw(f, body, len, &r);
  assert_int_equal(r.code, 250);
  assert_true(run_until(f, &f->ev[TERN_QEV_RESUMED], 1, 5000));
  free(body);
  fx_free(f);
  return 0;
}

static const char *enospc_dir;

static void test_enospc(void **state) {
  (void)state;
  run_enospc(enospc_dir);
}

/* ---- many messages: restart time ----------------------------------------- */

struct bulk {
  struct fx *f;
  int left, inflight, ok;
};

static void bulk_done(void *arg, const struct tern_reply *r) {
  struct bulk *b = arg;
  assert_int_equal(r->code, 250);
  b->inflight--;
  b->ok++;
}

/* Queue n messages (next hop "down": every job is held open, one at a
 * time), close, and time the reopening. Returns seconds. */
/* Heap bytes in use (glibc): what the queue holds for n messages. */
static long heap_kib(void) { return (long)(mallinfo2().uordblks / 1024); }

static double load_case(int n) {
  struct fx *f = fx_new();
  f->hold = true;
  f->o.max_active = 1;
  fx_open(f);
  struct bulk b = {f, n, 0, 0};
  struct tern_queue_rcpt r = {"relay@example.net", NULL, 0, "relay"};
  struct tern_queue_envelope e = {
      .from = "s@example.org", .rcpts = &r, .nrcpts = 1};
  double t0 = secs();
  while (b.ok < n) {
    while (b.left > 0 && b.inflight < 500) {
      struct tern_queue_msg *m;
      assert_int_equal(tern_queue_msg_begin(f->port, &e, &m), 0);
      assert_int_equal(
          tern_queue_msg_write(m, body1, sizeof body1 - 1, NULL, NULL), 0);
      tern_queue_msg_commit(m, bulk_done, &b);
      b.left--;
      b.inflight++;
    }
    uv_run(&f->loop, UV_RUN_ONCE);
    assert_true(secs() - t0 < 300);
  }
  double tq = secs() - t0;
  fx_close(f, 0);
  for (int i = 0; i < f->nheld; i++)
    free(f->held[i]);
  f->nheld = 0;
  long heap0 = heap_kib();
  double t1 = secs();
  fx_open(f);
  double topen = secs() - t1;
  long heap1 = heap_kib();
  /* every message is due: the first tick makes them all ready jobs */
  int jobs = f->njobs + 1;
  assert_true(run_until(f, &f->njobs, jobs, 20000));
  double tfirst = secs() - t1;
  int rc;
  t1 = secs();
  struct listed l = list_one(f, NULL, &rc);
  double tlist = secs() - t1;
  assert_int_equal(rc, 0);
  assert_int_equal(l.n, n);
  print_message("queued %d messages in %.2f s; tern_queue_open over them: "
                "%.3f s (+%ld KiB heap), first delivery after %.3f s; "
                "tern_queue_list: %.3f s\n",
                n, tq, topen, heap1 - heap0, tfirst, tlist);
  fx_close(f, 0);
  for (int i = 0; i < f->nheld; i++)
    free(f->held[i]);
  f->nheld = 0;
  fx_free(f);
  return topen;
}

static void test_many(void **state) {
  (void)state;
  double t = load_case(20000);
  /* 0.04-0.3 s measured; 0.15-2 s under ASan on a busy machine */
  assert_true(t < 5.0);
}

int main(int argc, char **argv) {
  if (argc == 3 && strcmp(argv[1], "enospc") == 0) {
    enospc_dir = argv[2];
    const struct CMUnitTest one[] = {cmocka_unit_test(test_enospc)};
    return cmocka_run_group_tests(one, NULL, NULL);
  }
  if (argc == 3 && strcmp(argv[1], "load") == 0) {
    long n = strtol(argv[2], NULL, 10);
    load_case(n > 0 && n < 10000000 ? (int)n : 100000);
    return 0;
  }
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_deliver),
      cmocka_unit_test(test_defer_flush),
      cmocka_unit_test(test_bounce),
      cmocka_unit_test(test_requiretls_bounce),
      cmocka_unit_test(test_ret_hdrs),
      cmocka_unit_test(test_notify_never),
      cmocka_unit_test(test_success_notice),
      cmocka_unit_test(test_null_sender),
      cmocka_unit_test(test_double_bounce_fails),
      cmocka_unit_test(test_bounce_raw_reply),
      cmocka_unit_test(test_bounce_big_original),
      cmocka_unit_test(test_expiry),
      cmocka_unit_test(test_restart),
      cmocka_unit_test(test_hold_release_delete),
      cmocka_unit_test(test_concurrency),
      cmocka_unit_test(test_cancel_at_close),
      cmocka_unit_test(test_finish_while_closing),
      cmocka_unit_test(test_big_body),
      cmocka_unit_test(test_delay_warning),
      cmocka_unit_test(test_scan_abort_options),
      cmocka_unit_test(test_other_loop),
      cmocka_unit_test(test_unreachable),
      cmocka_unit_test(test_unreachable_probe_fails),
      cmocka_unit_test(test_dead_mx_alone),
      cmocka_unit_test(test_many_dests),
      cmocka_unit_test(test_retry_together),
      cmocka_unit_test(test_retry_regroup),
      cmocka_unit_test(test_too_many_rcpts),
      cmocka_unit_test(test_many),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
