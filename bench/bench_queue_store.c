/*
 * bench_queue_store — the queue store's cost per message (src/queue/store.c).
 *
 *   bench_queue_store [-n MESSAGES] [-s SIZE] [-c CONCURRENCY]... [-F] [-l]
 *                     [DIR]
 *
 * For each concurrency C (default: 1 and 20), C committers on one loop
 * each queue a message (one chunk of SIZE bytes, default 1024, two
 * recipients) and queue the next as soon as the previous is durable,
 * until MESSAGES (default 2000) are committed. Prints messages/s, the
 * process's CPU time (every thread: user + system) per message, and the
 * messages per group transaction. -F: fsync off (synchronous=OFF).
 * -l: then also time closing, reopening (a restart) and listing the
 * whole queue (qstore_list, every message and recipient).
 * DIR (default: a fresh directory under /tmp) should be on the disk the
 * queue will use: fsync cost is the point.
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include <uv.h>

#include "store.h"

struct bench {
  struct qstore *s;
  struct qstore_sink *k;
  size_t size;
  int total, started, done, failed;
};

static void next(struct bench *b);

static void done_cb(void *arg, int status)
{
  struct bench *b = arg;
  b->done++;
  if (status)
    b->failed++;
  next(b);
}

static void next(struct bench *b)
{
  if (b->started >= b->total)
    return;
  b->started++;
  struct qstore_rcpt r[2] = {
      {.idx = 0, .addr = "a@example.net", .dest = "relay", .notify = 6},
      {.idx = 1, .addr = "b@example.net", .dest = "relay", .notify = 6}};
  struct qstore_msg m = {.arrival = time(NULL), .from = "s@example.org",
                         .size = b->size, .nchunks = 1, .rcpts = r,
                         .nrcpts = 2};
  qstore_new_id(b->s, m.id);
  void *data = malloc(b->size);
  memset(data, 'x', b->size);
  qstore_commit(b->k, &m, data, b->size, NULL, 0, done_cb, b, NULL, NULL, NULL);
}

static double now_s(void)
{
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static double cpu_s(void)
{
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
         (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

static int count_fn(const struct qstore_msg *m, void *arg)
{
  *(size_t *)arg += m->nrcpts;
  return 0;
}

static void time_restart(struct qstore **s, const char *dir, bool fsync)
{
  char err[256];
  double t0 = now_s();
  qstore_close(*s);
  double t1 = now_s();
  if (qstore_open(s, dir, fsync, false, err, sizeof err) != 0) {
    fprintf(stderr, "bench_queue_store: %s\n", err);
    exit(1);
  }
  double t2 = now_s();
  size_t n = 0;
  qstore_list(*s, NULL, count_fn, &n);
  double t3 = now_s();
  printf("  close %.0f ms, open %.0f ms, list (%zu recipients) %.0f ms\n",
         (t1 - t0) * 1e3, (t2 - t1) * 1e3, n, (t3 - t2) * 1e3);
}

static int run(const char *dir, bool fsync, int total, size_t size, int conc,
               bool list)
{
  char err[256];
  uv_loop_t loop;
  uv_loop_init(&loop);
  struct bench b = {.size = size, .total = total};
  int e = qstore_open(&b.s, dir, fsync, false, err, sizeof err);
  if (e) {
    fprintf(stderr, "bench_queue_store: %s\n", err);
    return 1;
  }
  qstore_sink_new(b.s, &loop, &b.k);
  unsigned long g0 = qstore_test_commits(b.s);
  double t0 = now_s(), c0 = cpu_s();
  for (int i = 0; i < conc; i++)
    next(&b);
  while (b.done < total)
    uv_run(&loop, UV_RUN_ONCE);
  double t = now_s() - t0, c = cpu_s() - c0;
  unsigned long groups = qstore_test_commits(b.s) - g0;
  printf("concurrency %3d  size %6zu  fsync %-3s  %6d msgs  %8.0f msg/s  "
         "%6.1f us CPU/msg  %5.1f msgs/group  %d failed\n",
         conc, size, fsync ? "yes" : "no", total, total / t, c * 1e6 / total,
         groups ? (double)total / (double)groups : 0.0, b.failed);
  qstore_sink_free(b.k);
  uv_run(&loop, UV_RUN_NOWAIT);
  if (list)
    time_restart(&b.s, dir, fsync);
  qstore_close(b.s);
  uv_loop_close(&loop);
  return b.failed != 0;
}

int main(int argc, char **argv)
{
  int total = 2000, nconc = 0, conc[16];
  size_t size = 1024;
  bool fsync = true, list = false;
  int opt;
  while ((opt = getopt(argc, argv, "n:s:c:Fl")) != -1) {
    switch (opt) {
    case 'n':
      total = atoi(optarg);
      break;
    case 's':
      size = (size_t)atol(optarg);
      break;
    case 'c':
      if (nconc < 16)
        conc[nconc++] = atoi(optarg);
      break;
    case 'F':
      fsync = false;
      break;
    case 'l':
      list = true;
      break;
    default:
      fprintf(stderr, "usage: bench_queue_store [-n N] [-s SIZE] [-c C]... "
                      "[-F] [-l] [DIR]\n");
      return 64;
    }
  }
  if (!nconc) {
    conc[nconc++] = 1;
    conc[nconc++] = 20;
  }
  char tmp[] = "/tmp/tern-bench-store-XXXXXX";
  const char *base = optind < argc ? argv[optind] : mkdtemp(tmp);
  if (!base) {
    perror("mkdtemp");
    return 1;
  }
  int rc = 0;
  for (int i = 0; i < nconc; i++) {
    char dir[512];
    snprintf(dir, sizeof dir, "%s/spool-%d", base, i);
    rc |= run(dir, fsync, total, size, conc[i], list);
  }
  if (optind >= argc) {
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", base);
    if (system(cmd) != 0)
      rc = 1;
  }
  return rc;
}
