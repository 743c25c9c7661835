/*
 * tern_queue_msg_prepend (include/tern/queue.h): header fields known only
 * after the body was written (DKIM-Signature) go in front of the message
 * for every reader: a job's tern_queue_job_read, tern_queue_scan_body,
 * a DSN that copies the message. Also: a spool written by Step 7's code
 * (made here by hand through SQLite, schema version 1 without any
 * prepended chunk) still opens and delivers; the errors the header
 * promises.
 *
 * Every wait runs the loop under a deadline: a lost event fails the test.
 */
#define _GNU_SOURCE /* memmem */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <sqlite3.h>
#include <uv.h>

#include <tern/queue.h>

#define MAXJOBS 8

struct jobrec {
  char *body;
  size_t len;
  uint64_t size; /* info->size */
  bool is_bounce;
  bool done;
};

struct fx {
  uv_loop_t loop;
  char dir[64];
  struct tern_queue_options o;
  struct tern_queue *q;
  struct tern_queue_port *port;
  struct jobrec jobs[MAXJOBS];
  int njobs, nfinished;
  int done, code, written, closed;
};

struct live {
  struct fx *f;
  struct tern_queue_job *job;
  const struct tern_queue_job_info *info;
  struct jobrec *rec;
};

static void on_body(void *arg, const char *buf, size_t len, int status) {
  struct live *l = arg;
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
  for (size_t i = 0; i < l->info->nrcpts; i++) {
    struct tern_reply r = {250, "2.0.0", "Ok"};
    if (strncmp(l->info->rcpts[i].addr, "fail", 4) == 0)
      r = (struct tern_reply){550, "5.1.1", "user unknown"};
    tern_queue_job_result(l->job, i, &r, NULL);
  }
  l->rec->done = true;
  l->f->nfinished++;
  tern_queue_job_done(l->job, NULL);
  free(l);
}

static void deliver(struct tern_queue_job *job,
                    const struct tern_queue_job_info *info, void *ud) {
  struct fx *f = ud;
  assert_true(f->njobs < MAXJOBS);
  struct jobrec *r = &f->jobs[f->njobs++];
  memset(r, 0, sizeof *r);
  r->size = info->size;
  r->is_bounce = info->is_bounce;
  struct live *l = calloc(1, sizeof *l);
  assert_non_null(l);
  *l = (struct live){f, job, info, r};
  assert_int_equal(tern_queue_job_read(job, on_body, l), 0);
}

static const char *route(const char *addr, void *ud) {
  (void)addr;
  (void)ud;
  return "local";
}

static void on_deadline(uv_timer_t *t) { *(bool *)t->data = true; }

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

static struct fx *fx_new(void) {
  struct fx *f = calloc(1, sizeof *f);
  assert_non_null(f);
  assert_int_equal(uv_loop_init(&f->loop), 0);
  snprintf(f->dir, sizeof f->dir, "/tmp/tern-prepend-XXXXXX");
  assert_non_null(mkdtemp(f->dir));
  tern_queue_options_init(&f->o);
  f->o.dir = f->dir;
  f->o.hostname = "mx.test";
  f->o.fsync = false;
  f->o.deliver = deliver;
  f->o.route = route;
  f->o.ud = f;
  return f;
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

static void on_closed(void *arg) {
  struct fx *f = arg;
  tern_queue_free(f->q);
  f->q = NULL;
  f->closed++;
}

static void fx_free(struct fx *f) {
  if (f->q) {
    tern_queue_port_free(f->port);
    tern_queue_close(f->q, 1000, on_closed, f);
    assert_true(run_until(f, &f->closed, 1, 20000));
    uv_run(&f->loop, UV_RUN_NOWAIT);
  }
  assert_int_equal(uv_loop_close(&f->loop), 0);
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
  f->done++;
}

/* Begin a message to rcpt and write body in 4 KiB pieces. */
static struct tern_queue_msg *begin_write(struct fx *f, const char *rcpt,
                                          const char *body, size_t len) {
  struct tern_queue_rcpt r = {rcpt, NULL, 0, "local"};
  struct tern_queue_envelope e = {
      .from = "s@example.org", .rcpts = &r, .nrcpts = 1, .ret = TERN_RET_FULL};
  struct tern_queue_msg *m;
  assert_int_equal(tern_queue_msg_begin(f->port, &e, &m), 0);
  for (size_t off = 0; off < len;) {
    size_t n = len - off < 4096 ? len - off : 4096;
    int rc = tern_queue_msg_write(m, body + off, n, on_written, f);
    assert_true(rc == 0 || rc == 1);
    off += n;
    if (rc == 1)
      assert_true(run_until(f, &f->written, f->written + 1, 20000));
  }
  return m;
}

static void commit(struct fx *f, struct tern_queue_msg *m) {
  int want = f->done + 1;
  tern_queue_msg_commit(m, on_done, f);
  assert_true(run_until(f, &f->done, want, 20000));
  assert_int_equal(f->code, 250);
}

static const char fields[] =
    "DKIM-Signature: v=1; a=rsa-sha256; d=example.org; s=s1;\r\n"
    "\tb=AAAA\r\n";

/* A body of `len` octets: a header, then numbered lines. */
static char *make_body(size_t len) {
  char *b = malloc(len + 1);
  assert_non_null(b);
  const char *h = "From: s@example.org\r\nSubject: t\r\n\r\n";
  size_t hl = strlen(h);
  memcpy(b, h, hl);
  for (size_t i = hl; i < len; i++)
    b[i] = (i % 64 == 62) ? '\r' : (i % 64 == 63) ? '\n' : (char)('a' + i % 26);
  b[len] = '\0';
  return b;
}

struct scan {
  char *buf;
  size_t len;
};

static int scan_cb(void *arg, const char *buf, size_t len) {
  struct scan *s = arg;
  s->buf = realloc(s->buf, s->len + len + 1);
  assert_non_null(s->buf);
  memcpy(s->buf + s->len, buf, len);
  s->len += len;
  return 0;
}

/* Prepend, commit: the job (and tern_queue_scan_body) gets the fields,
 * then the body byte for byte; the size counts both. The body spans
 * several store chunks (64 KiB each), so chunk 0 with its fields in
 * front and the later chunks are both read. */
static void test_prepend_delivered_first(void **state) {
  (void)state;
  struct fx *f = fx_new();
  fx_open(f);
  size_t blen = 150 * 1024 + 17;
  char *body = make_body(blen);
  struct tern_queue_msg *m = begin_write(f, "a@example.net", body, blen);
  char id[TERN_QUEUE_ID_MAX];
  snprintf(id, sizeof id, "%s", tern_queue_msg_id(m));
  assert_int_equal(tern_queue_msg_prepend(m, fields, sizeof fields - 1), 0);
  commit(f, m);

  /* offline reader, while the queue runs */
  struct scan sc = {0};
  char err[256];
  assert_int_equal(
      tern_queue_scan_body(f->dir, id, scan_cb, &sc, err, sizeof err), 0);
  assert_int_equal(sc.len, sizeof fields - 1 + blen);
  assert_memory_equal(sc.buf, fields, sizeof fields - 1);
  assert_memory_equal(sc.buf + sizeof fields - 1, body, blen);
  free(sc.buf);

  assert_true(run_until(f, &f->nfinished, 1, 20000));
  struct jobrec *r = &f->jobs[0];
  assert_int_equal(r->len, sizeof fields - 1 + blen);
  assert_int_equal(r->size, r->len);
  assert_memory_equal(r->body, fields, sizeof fields - 1);
  assert_memory_equal(r->body + sizeof fields - 1, body, blen);
  free(body);
  fx_free(f);
}

/* A small body (one chunk, the last, sent with the commit). */
static void test_prepend_small(void **state) {
  (void)state;
  struct fx *f = fx_new();
  fx_open(f);
  const char *body = "From: s@example.org\r\n\r\nhi\r\n";
  struct tern_queue_msg *m =
      begin_write(f, "a@example.net", body, strlen(body));
  assert_int_equal(tern_queue_msg_prepend(m, fields, sizeof fields - 1), 0);
  commit(f, m);
  assert_true(run_until(f, &f->nfinished, 1, 20000));
  struct jobrec *r = &f->jobs[0];
  assert_int_equal(r->len, sizeof fields - 1 + strlen(body));
  assert_int_equal(r->size, r->len);
  assert_memory_equal(r->body, fields, sizeof fields - 1);
  assert_string_equal(r->body + sizeof fields - 1, body);
  fx_free(f);
}

/* A DSN returning the whole message (RET=FULL, under the queue's 50,000
 * octets for a full copy) returns it as it was delivered: fields
 * first. */
static void test_prepend_in_dsn(void **state) {
  (void)state;
  struct fx *f = fx_new();
  fx_open(f);
  size_t blen = 2000;
  char *body = make_body(blen);
  struct tern_queue_msg *m = begin_write(f, "fail@example.net", body, blen);
  assert_int_equal(tern_queue_msg_prepend(m, fields, sizeof fields - 1), 0);
  commit(f, m);
  assert_true(run_until(f, &f->nfinished, 2, 20000)); /* it and its DSN */
  struct jobrec *d = f->jobs[1].is_bounce ? &f->jobs[1] : &f->jobs[0];
  assert_true(d->is_bounce);
  assert_int_equal(d->size, d->len);
  char *at = memmem(d->body, d->len, fields, sizeof fields - 1);
  assert_non_null(at);
  size_t off = (size_t)(at - d->body) + sizeof fields - 1;
  assert_true(d->len - off >= blen);
  assert_memory_equal(d->body + off, body, blen);
  free(body);
  fx_free(f);
}

static void test_prepend_errors(void **state) {
  (void)state;
  struct fx *f = fx_new();
  fx_open(f);
  const char *body = "From: s@example.org\r\n\r\nhi\r\n";
  struct tern_queue_msg *m =
      begin_write(f, "a@example.net", body, strlen(body));
  assert_int_equal(tern_queue_msg_prepend(NULL, fields, 4), TERN_EINVAL);
  assert_int_equal(tern_queue_msg_prepend(m, NULL, 4), TERN_EINVAL);
  assert_int_equal(tern_queue_msg_prepend(m, "X-A: b", 6), TERN_EINVAL);
  assert_int_equal(tern_queue_msg_prepend(m, "X-A: b\n", 7), TERN_EINVAL);
  assert_int_equal(tern_queue_msg_prepend(m, "", 0), TERN_EINVAL);
  size_t big = 64 * 1024 + 2;
  char *b = malloc(big);
  assert_non_null(b);
  memset(b, 'x', big);
  memcpy(b, "X-Big: ", 7);
  b[big - 2] = '\r';
  b[big - 1] = '\n';
  assert_int_equal(tern_queue_msg_prepend(m, b, big), TERN_EINVAL);
  /* exactly 64 KiB is allowed */
  memcpy(b + 64 * 1024 - 2, "\r\n", 2);
  assert_int_equal(tern_queue_msg_prepend(m, b, 64 * 1024), 0);
  free(b);
  assert_int_equal(tern_queue_msg_prepend(m, fields, sizeof fields - 1),
                   TERN_ESTATE); /* twice */
  int want = f->done + 1;
  tern_queue_msg_commit(m, on_done, f);
  assert_int_equal(tern_queue_msg_prepend(m, fields, sizeof fields - 1),
                   TERN_ESTATE); /* after commit */
  assert_true(run_until(f, &f->done, want, 20000));
  assert_int_equal(f->code, 250);
  assert_true(run_until(f, &f->nfinished, 1, 20000));
  assert_int_equal(f->jobs[0].len, 64 * 1024 + strlen(body));
  assert_memory_equal(f->jobs[0].body, "X-Big: ", 7);
  fx_free(f);
}

/* A spool as Step 7's code wrote it (schema version 1, no chunk -1),
 * made here through SQLite: it opens, and its message is delivered whole,
 * with nothing in front. */
static void test_old_spool_opens(void **state) {
  (void)state;
  struct fx *f = fx_new();
  char path[128];
  snprintf(path, sizeof path, "%s/queue.db", f->dir);
  sqlite3 *db;
  assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
  const char *sql =
      "PRAGMA page_size=4096; PRAGMA auto_vacuum=INCREMENTAL;"
      "PRAGMA journal_mode=WAL;"
      "CREATE TABLE msg("
      " id TEXT PRIMARY KEY, arrival INTEGER NOT NULL, sender TEXT NOT NULL,"
      " size INTEGER NOT NULL, body INTEGER NOT NULL,"
      " smtputf8 INTEGER NOT NULL, requiretls INTEGER NOT NULL,"
      " ret INTEGER NOT NULL, envid TEXT, client TEXT,"
      " held INTEGER NOT NULL DEFAULT 0, is_bounce INTEGER NOT NULL DEFAULT 0,"
      " warned INTEGER NOT NULL DEFAULT 0, nchunks INTEGER NOT NULL)"
      " WITHOUT ROWID;"
      "CREATE TABLE rcpt("
      " msg TEXT NOT NULL, idx INTEGER NOT NULL, addr TEXT NOT NULL,"
      " orcpt TEXT, notify INTEGER NOT NULL, dest TEXT NOT NULL,"
      " state INTEGER NOT NULL, attempts INTEGER NOT NULL,"
      " next_try INTEGER NOT NULL, last_code INTEGER NOT NULL,"
      " last_reply TEXT, remote_mta TEXT, PRIMARY KEY (msg, idx))"
      " WITHOUT ROWID;"
      "CREATE TABLE chunk("
      " msg TEXT NOT NULL, seq INTEGER NOT NULL, data BLOB NOT NULL,"
      " PRIMARY KEY (msg, seq));"
      "PRAGMA user_version=1;"
      "INSERT INTO msg VALUES('0000000000A001', 1700000000, 's@example.org',"
      " 33, 0, 0, 0, 0, NULL, NULL, 0, 0, 0, 2);"
      "INSERT INTO rcpt VALUES('0000000000A001', 0, 'a@example.net', NULL,"
      " 0, 'local', 0, 0, 0, 0, NULL, NULL);"
      "INSERT INTO chunk VALUES('0000000000A001', 0,"
      " CAST('From: s@example.org' || char(13,10) AS BLOB));"
      "INSERT INTO chunk VALUES('0000000000A001', 1,"
      " CAST(char(13,10) || 'old body' || char(13,10) AS BLOB));";
  char *e = NULL;
  if (sqlite3_exec(db, sql, NULL, NULL, &e) != SQLITE_OK)
    fail_msg("sqlite: %s", e);
  sqlite3_close(db);
  fx_open(f);
  assert_true(run_until(f, &f->nfinished, 1, 20000));
  assert_int_equal(f->jobs[0].len, 33);
  assert_string_equal(f->jobs[0].body,
                      "From: s@example.org\r\n\r\nold body\r\n");
  /* and a new message with fields goes into the same old spool */
  const char *body = "From: s@example.org\r\n\r\nnew\r\n";
  struct tern_queue_msg *m =
      begin_write(f, "a@example.net", body, strlen(body));
  assert_int_equal(tern_queue_msg_prepend(m, fields, sizeof fields - 1), 0);
  commit(f, m);
  assert_true(run_until(f, &f->nfinished, 2, 20000));
  assert_memory_equal(f->jobs[1].body, fields, sizeof fields - 1);
  fx_free(f);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_prepend_delivered_first),
      cmocka_unit_test(test_prepend_small),
      cmocka_unit_test(test_prepend_in_dsn),
      cmocka_unit_test(test_prepend_errors),
      cmocka_unit_test(test_old_spool_opens),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
