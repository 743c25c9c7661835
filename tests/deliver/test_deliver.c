/*
 * Tests for the delivery targets of `tern serve` (src/cli/deliver_*.c):
 * one C driver around a libuv loop. `test_deliver CASE` runs one case
 * (CTest registers each, label "deliver"); `test_deliver all` runs all.
 *
 * The storage-full and cross-device cases mount a small tmpfs, which needs
 * root (CAP_SYS_ADMIN). They do not skip: without it they fail and say so.
 */
#define _GNU_SOURCE
#include "check.h"
#include "deliver.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define CHECK_REPLY(j, code_, enh_)                                            \
  do {                                                                         \
    if (!(j)->finished || (j)->code != (code_) ||                              \
        strcmp((j)->enhanced, (enh_)) != 0) {                                  \
      fprintf(stderr, "%s:%d: expected %d %s, got %s%d %s (%s)\n", __FILE__,   \
              __LINE__, (code_), (enh_), (j)->finished ? "" : "(none) ",       \
              (j)->code, (j)->enhanced, (j)->detail);                          \
      exit(1);                                                                 \
    }                                                                          \
  } while (0)

static uv_loop_t *loop;
static char base[256]; /* this run's scratch directory */
static char mounted[8][300];
static int nmounted;

/* ---- helpers ------------------------------------------------------------- */

static void cleanup(void) {
  while (nmounted > 0)
    umount2(mounted[--nmounted], MNT_DETACH);
  if (base[0] != '\0')
    rm_tree(base);
}

/* A tmpfs of `size` bytes at path (created). Fails the test without root. */
static void mount_tmpfs(const char *path, const char *size) {
  char opts[64];
  CHECK(mkdir(path, 0700) == 0);
  pathf(opts, sizeof opts, "size=%s,mode=0700", size);
  if (mount("tmpfs", path, "tmpfs", 0, opts) != 0) {
    fprintf(stderr,
            "FAIL: cannot mount a tmpfs on %s (%s): this test needs root "
            "(CAP_SYS_ADMIN) to simulate a full or separate file system\n",
            path, strerror(errno));
    exit(1);
  }
  pathf(mounted[nmounted], sizeof mounted[0], "%s", path);
  nmounted++;
}

static char *random_bytes(size_t n, unsigned seed) {
  char *p = malloc(n);
  CHECK(p != NULL);
  for (size_t i = 0; i < n; i++) {
    seed = seed * 1103515245u + 12345u;
    p[i] = (char)(seed >> 16);
  }
  return p;
}

/* Number of entries (not . and ..) in dir; the last one's name in `last`. */
static int count_entries(const char *dir, char *last, size_t cap) {
  DIR *dp = opendir(dir);
  struct dirent *de;
  int n = 0;
  CHECK(dp != NULL);
  while ((de = readdir(dp)) != NULL) {
    if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
      continue;
    n++;
    if (last != NULL)
      pathf(last, cap, "%s", de->d_name);
  }
  closedir(dp);
  return n;
}

static int count_in(const char *dir, const char *sub) {
  char p[512];
  pathf(p, sizeof p, "%s/%s", dir, sub);
  return count_entries(p, NULL, 0);
}

/* ---- a delivery driven to the end ---------------------------------------- */

struct job {
  bool is_pipe;
  struct maildir_delivery *md;
  struct pipe_delivery *pd;
  const char *data;
  size_t len, chunk, off;
  int write_err;   /* first write error (callback or synchronous) */
  int write_calls; /* write callbacks seen */
  bool finished;
  int code;
  char enhanced[16];
  char detail[1200];
};

static void job_done(void *arg, const struct tern_reply *r,
                     const char *detail) {
  struct job *j = arg;
  CHECK(!j->finished);
  j->finished = true;
  j->code = r->code;
  pathf(j->enhanced, sizeof j->enhanced, "%s", r->enhanced);
  pathf(j->detail, sizeof j->detail, "%s", detail ? detail : "");
  /* Reply shape: class of the code and of the enhanced code agree. */
  CHECK(r->code >= 200 && r->code < 600 && r->text != NULL);
  CHECK(r->enhanced[0] - '0' == r->code / 100);
}

static void job_next(struct job *j);

static void job_write_cb(void *arg, int status) {
  struct job *j = arg;
  j->write_calls++;
  if (status < 0 && j->write_err == 0)
    j->write_err = status;
  job_next(j);
}

static void job_next(struct job *j) {
  while (j->off < j->len && j->write_err == 0) {
    size_t n = j->len - j->off < j->chunk ? j->len - j->off : j->chunk;
    const char *p = j->data + j->off;
    int r = j->is_pipe ? pipe_write(j->pd, p, n, job_write_cb, j)
                       : maildir_write(j->md, p, n, job_write_cb, j);
    if (r >= 0)
      j->off += n;
    if (r == 0)
      return; /* job_write_cb goes on */
    if (r < 0)
      j->write_err = r; /* no callback for a failed call: commit now */
    /* r == 1: buffered, no callback: go on */
  }
  if (j->is_pipe)
    pipe_commit(j->pd, job_done, j);
  else
    maildir_commit(j->md, job_done, j);
}

static const char hdr[] = "Return-Path: <a@example.org>\r\n"
                          "Received: from x by y; Thu, 1 Jan 2026\r\n";

static void md_start(struct job *j, struct maildir_ctx *ctx,
                     const char *const *dirs, size_t ndirs, const char *data,
                     size_t len, size_t chunk) {
  memset(j, 0, sizeof *j);
  j->data = data;
  j->len = len;
  j->chunk = chunk;
  CHECK(maildir_begin(ctx, NULL, dirs, ndirs, hdr, sizeof hdr - 1, &j->md) ==
        0);
  job_next(j);
}

/* The message in DIR/new is `hdr` + data, byte for byte, mode 0600, and
 * is the only one; nothing in DIR/tmp. Returns its inode. */
static ino_t check_delivered(const char *dir, const struct job *j) {
  char p[1024], name[300];
  struct stat st;
  size_t n;

  pathf(p, sizeof p, "%s/new", dir);
  CHECK(count_entries(p, name, sizeof name) == 1);
  CHECK(strcmp(name, j->detail) == 0);
  CHECK(count_in(dir, "tmp") == 0);
  CHECK(count_in(dir, "cur") == 0);
  pathf(p, sizeof p, "%s/new/%s", dir, name);
  CHECK(stat(p, &st) == 0);
  CHECK((st.st_mode & 07777) == 0600);
  char *got = read_file(p, &n);
  CHECK(n == sizeof hdr - 1 + j->len);
  CHECK(memcmp(got, hdr, sizeof hdr - 1) == 0);
  CHECK(memcmp(got + sizeof hdr - 1, j->data, j->len) == 0);
  free(got);
  return st.st_ino;
}

static void check_empty(const char *dir) {
  CHECK(count_in(dir, "new") == 0);
  CHECK(count_in(dir, "tmp") == 0);
}

/* ---- maildir ------------------------------------------------------------- */

static void t_maildir_happy(void) {
  struct maildir_ctx *ctx;
  struct job j;
  char dir[512], p[600], name[300];
  struct stat st;
  size_t len = 300000;
  char *data = random_bytes(len, 1);

  pathf(dir, sizeof dir, "%s/a/b/Maildir", base); /* created as needed */
  const char *dirs[] = {dir};
  CHECK(maildir_ctx_new(&ctx, loop, true) == 0);
  md_start(&j, ctx, dirs, 1, data, len, 7001);
  CHECK(!j.finished); /* never answered from inside a call */
  CHECK(uv_run(loop, UV_RUN_DEFAULT) == 0);
  CHECK_REPLY(&j, 250, "2.0.0");
  CHECK(j.write_err == 0);
  check_delivered(dir, &j);
  CHECK(stat(dir, &st) == 0 && (st.st_mode & 07777) == 0700);
  pathf(p, sizeof p, "%s/cur", dir);
  CHECK(stat(p, &st) == 0 && S_ISDIR(st.st_mode));
  /* 300 KB: written in blocks, fsynced on its own, placed by one cycle
   * whose barrier makes the name durable */
  CHECK(maildir_ctx_test_barriers(ctx) == 1);

  /* SECONDS.M<usec>P<pid>Q<seq>.<host> */
  long long sec;
  long usec, pid;
  unsigned long q;
  int used = 0;
  pathf(name, sizeof name, "%s", j.detail);
  CHECK(sscanf(name, "%lld.M%ldP%ldQ%lu.%n", &sec, &usec, &pid, &q, &used) ==
        4);
  CHECK(used > 0 && name[used] != '\0');
  CHECK(pid == (long)getpid() && usec >= 0 && usec < 1000000);
  CHECK(llabs(sec - (long long)time(NULL)) < 60);
  CHECK(strchr(name + used, '/') == NULL && strchr(name + used, ':') == NULL);

  /* An empty message (header only), written without chunks. */
  md_start(&j, ctx, dirs, 1, data, 0, 1);
  CHECK(uv_run(loop, UV_RUN_DEFAULT) == 0);
  CHECK_REPLY(&j, 250, "2.0.0");
  CHECK(count_in(dir, "new") == 2);

  maildir_ctx_free(ctx);
  free(data);
}

static void spool_written(void *arg, int status) {
  int *calls = arg;
  CHECK(status == 0);
  (*calls)++;
}

/* With a spool (Maildir templates): the file is written in SPOOL/tmp; no
 * recipient's maildir exists until commit, which makes them (in the
 * pool), links the message into each new/ and leaves the spool empty;
 * an aborted message leaves no maildir at all. A 300 KB message in
 * 3,000-octet chunks is written in blocks: the callback runs only when a
 * 128 KiB block went out. */
static void t_maildir_spool(void) {
  struct maildir_ctx *ctx;
  struct maildir_delivery *d;
  struct job j;
  char spool[512], d1[512], d2[512];
  struct stat st;
  size_t len = 300000;
  char *data = random_bytes(len, 13);
  int calls = 0;

  pathf(spool, sizeof spool, "%s/tpl/.tern-spool", base);
  pathf(d1, sizeof d1, "%s/tpl/a.example/u1", base);
  pathf(d2, sizeof d2, "%s/tpl/b.example/u2", base);
  const char *dirs[] = {d1, d2};
  CHECK(maildir_ctx_new(&ctx, loop, true) == 0);

  CHECK(maildir_begin(ctx, spool, dirs, 2, hdr, sizeof hdr - 1, &d) == 0);
  size_t off = 0;
  while (off < len) {
    int r = maildir_write(d, data + off, 3000, spool_written, &calls);
    off += 3000;
    CHECK(r == 0 || r == 1);
    if (r == 0)
      CHECK(uv_run(loop, UV_RUN_DEFAULT) == 0);
  }
  CHECK(calls == 2); /* 300,000 + header in 128 KiB blocks: 2 so far */
  CHECK(count_in(spool, "tmp") == 1);
  CHECK(stat(d1, &st) != 0 && stat(d2, &st) != 0);
  maildir_abort(d);
  CHECK(uv_run(loop, UV_RUN_DEFAULT) == 0);
  CHECK(count_in(spool, "tmp") == 0);
  CHECK(stat(d1, &st) != 0 && stat(d2, &st) != 0);

  memset(&j, 0, sizeof j);
  j.data = data;
  j.len = len;
  j.chunk = 3000;
  CHECK(maildir_begin(ctx, spool, dirs, 2, hdr, sizeof hdr - 1, &j.md) == 0);
  job_next(&j);
  CHECK(uv_run(loop, UV_RUN_DEFAULT) == 0);
  CHECK_REPLY(&j, 250, "2.0.0");
  ino_t a = check_delivered(d1, &j), b = check_delivered(d2, &j);
  CHECK(a == b); /* one file, two names */
  CHECK(count_in(spool, "tmp") == 0);

  /* A commit while a block is being written: the block's callback still
   * runs, then the message is sealed, whole. */
  char d3[512];
  pathf(d3, sizeof d3, "%s/tpl/c.example/u3", base);
  const char *dirs3[] = {d3};
  memset(&j, 0, sizeof j);
  j.data = data;
  j.len = 200000;
  calls = 0;
  CHECK(maildir_begin(ctx, NULL, dirs3, 1, hdr, sizeof hdr - 1, &j.md) == 0);
  CHECK(maildir_write(j.md, data, 100000, spool_written, &calls) == 1);
  CHECK(maildir_write(j.md, data + 100000, 100000, spool_written, &calls) == 0);
  maildir_commit(j.md, job_done, &j);
  CHECK(!j.finished);
  CHECK(uv_run(loop, UV_RUN_DEFAULT) == 0);
  CHECK(calls == 1);
  CHECK_REPLY(&j, 250, "2.0.0");
  check_delivered(d3, &j);
  maildir_ctx_free(ctx);
  free(data);
}

static void t_maildir_multi(void) {
  struct maildir_ctx *ctx;
  struct job j;
  char a[512], b[512], c[512];
  size_t len = 100000;
  char *data = random_bytes(len, 2);
  struct stat st;

  pathf(a, sizeof a, "%s/ma", base);
  pathf(b, sizeof b, "%s/mb", base);
  pathf(c, sizeof c, "%s/mc", base);
  CHECK(maildir_prepare(b, false) == 0);
  const char *dirs[] = {a, b, c, b}; /* b twice: delivered once */
  CHECK(maildir_ctx_new(&ctx, loop, true) == 0);
  md_start(&j, ctx, dirs, 4, data, len, 4096);
  CHECK(uv_run(loop, UV_RUN_DEFAULT) == 0);
  CHECK_REPLY(&j, 250, "2.0.0");
  ino_t ia = check_delivered(a, &j);
  CHECK(check_delivered(b, &j) == ia); /* hard links, one file */
  CHECK(check_delivered(c, &j) == ia);
  char p[1024];
  pathf(p, sizeof p, "%s/new/%s", a, j.detail);
  CHECK(stat(p, &st) == 0 && st.st_nlink == 3);
  /* all in the buffer: one cycle writes it, its barrier makes the data
   * durable, the next places it in the three maildirs (one file system:
   * one barrier each, whatever the number of maildirs) */
  CHECK(maildir_ctx_test_barriers(ctx) == 2);
  maildir_ctx_free(ctx);
  free(data);
}

/* A second maildir on another file system: link() says EXDEV, the file is
 * copied (through that maildir's tmp/). */
static void t_maildir_exdev(void) {
  struct maildir_ctx *ctx;
  struct job j;
  char a[512], mnt[512], x[600];
  size_t len = 200000;
  char *data = random_bytes(len, 3);

  pathf(a, sizeof a, "%s/ea", base);
  pathf(mnt, sizeof mnt, "%s/xdev", base);
  mount_tmpfs(mnt, "4m");
  pathf(x, sizeof x, "%s/Maildir", mnt);
  const char *dirs[] = {a, x};
  CHECK(maildir_ctx_new(&ctx, loop, true) == 0);
  md_start(&j, ctx, dirs, 2, data, len, 65536);
  CHECK(uv_run(loop, UV_RUN_DEFAULT) == 0);
  CHECK_REPLY(&j, 250, "2.0.0");
  check_delivered(a, &j);
  check_delivered(x, &j);
  maildir_ctx_free(ctx);
  free(data);
}

/* 20 deliveries at once to one maildir share barriers. */
static void t_maildir_group_commit(void) {
  enum { N = 20 };
  struct maildir_ctx *ctx;
  static struct job jobs[N];
  char dir[512];
  size_t len = 20000;
  char *data = random_bytes(len, 4);

  pathf(dir, sizeof dir, "%s/group", base);
  const char *dirs[] = {dir};
  CHECK(maildir_ctx_new(&ctx, loop, true) == 0);
  for (int i = 0; i < N; i++)
    md_start(&jobs[i], ctx, dirs, 1, data, len, 5000);
  CHECK(uv_run(loop, UV_RUN_DEFAULT) == 0);
  for (int i = 0; i < N; i++)
    CHECK_REPLY(&jobs[i], 250, "2.0.0");
  CHECK(count_in(dir, "new") == N);
  CHECK(count_in(dir, "tmp") == 0);
  unsigned long syncs = maildir_ctx_test_barriers(ctx);
  printf("group commit: %d deliveries, %lu barriers\n", N, syncs);
  CHECK(syncs >= 1 && syncs < N);
  maildir_ctx_free(ctx);

  /* fsync=false: no barrier at all (benchmarks, tests). */
  pathf(dir, sizeof dir, "%s/group-nofsync", base);
  CHECK(maildir_ctx_new(&ctx, loop, false) == 0);
  for (int i = 0; i < N; i++)
    md_start(&jobs[i], ctx, dirs, 1, data, len, 5000);
  CHECK(uv_run(loop, UV_RUN_DEFAULT) == 0);
  for (int i = 0; i < N; i++)
    CHECK_REPLY(&jobs[i], 250, "2.0.0");
  CHECK(count_in(dir, "new") == N);
  CHECK(maildir_ctx_test_barriers(ctx) == 0);

  /* Free the context with deliveries running: the last one frees it. */
  for (int i = 0; i < N; i++)
    md_start(&jobs[i], ctx, dirs, 1, data, len, 5000);
  maildir_ctx_free(ctx);
  CHECK(uv_run(loop, UV_RUN_DEFAULT) == 0);
  for (int i = 0; i < N; i++)
    CHECK_REPLY(&jobs[i], 250, "2.0.0");
  free(data);
}

static int abort_calls;
static void abort_in_cb(void *arg, int status) {
  struct maildir_delivery *d = arg;
  CHECK(status == 0);
  abort_calls++;
  maildir_abort(d);
}
static void never_cb(void *arg, int status) {
  (void)arg;
  (void)status;
  CHECK(!"write callback after abort");
}

static void t_maildir_abort(void) {
  struct maildir_ctx *ctx;
  struct maildir_delivery *d;
  char dir[512];
  char *data = random_bytes(100000, 5);

  pathf(dir, sizeof dir, "%s/abort", base);
  const char *dirs[] = {dir};
  CHECK(maildir_ctx_new(&ctx, loop, true) == 0);

  /* Abort right after begin (nothing on disk yet) and after a write
   * that was only buffered. */
  CHECK(maildir_begin(ctx, NULL, dirs, 1, hdr, sizeof hdr - 1, &d) == 0);
  maildir_abort(d);
  CHECK(maildir_begin(ctx, NULL, dirs, 1, hdr, sizeof hdr - 1, &d) == 0);
  CHECK(maildir_write(d, data, 1000, never_cb, NULL) == 1);
  maildir_abort(d);
  CHECK(uv_run(loop, UV_RUN_DEFAULT) == 0);
  struct stat st;
  CHECK(stat(dir, &st) != 0); /* not even the maildir was made */

  /* Abort from the write callback (a block was written: the file). */
  CHECK(maildir_begin(ctx, NULL, dirs, 1, hdr, sizeof hdr - 1, &d) == 0);
  CHECK(maildir_write(d, data, 100000, abort_in_cb, d) == 1);
  CHECK(maildir_write(d, data, 100000, abort_in_cb, d) == 0);
  CHECK(uv_run(loop, UV_RUN_DEFAULT) == 0);
  CHECK(abort_calls == 1);
  check_empty(dir);

  /* Abort with a write in flight: its callback is not called. */
  CHECK(maildir_begin(ctx, NULL, dirs, 1, hdr, sizeof hdr - 1, &d) == 0);
  CHECK(maildir_write(d, data, 100000, never_cb, NULL) == 1);
  CHECK(maildir_write(d, data, 100000, never_cb, NULL) == 0);
  CHECK(maildir_write(d, data, 10, never_cb, NULL) == -EBUSY);
  maildir_abort(d);
  CHECK(uv_run(loop, UV_RUN_DEFAULT) == 0);
  check_empty(dir);

  maildir_ctx_free(ctx);
  free(data);
}

/* A full file system: 452 4.3.1, and nothing left in new/ or tmp/. */
static void t_maildir_enospc(void) {
  struct maildir_ctx *ctx;
  struct job j;
  char mnt[512], dir[600], other[512];
  size_t len = 256 * 1024;
  char *data = random_bytes(len, 6);

  pathf(mnt, sizeof mnt, "%s/full", base);
  mount_tmpfs(mnt, "64k");
  pathf(dir, sizeof dir, "%s/Maildir", mnt);
  pathf(other, sizeof other, "%s/other", base);
  CHECK(maildir_prepare(dir, true) == 0);
  const char *dirs[] = {dir, other};
  CHECK(maildir_ctx_new(&ctx, loop, true) == 0);
  md_start(&j, ctx, dirs, 2, data, len, 16384);
  CHECK(uv_run(loop, UV_RUN_DEFAULT) == 0);
  CHECK_REPLY(&j, 452, "4.3.1");
  CHECK(j.write_err == -ENOSPC);
  CHECK(strstr(j.detail, "write") != NULL);
  check_empty(dir);
  /* `other` was never touched (the failure came before any link). */
  struct stat st;
  CHECK(stat(other, &st) != 0 || count_in(other, "new") == 0);

  /* The space is free again: the next delivery works. */
  md_start(&j, ctx, dirs, 1, data, 1000, 1000);
  CHECK(uv_run(loop, UV_RUN_DEFAULT) == 0);
  CHECK_REPLY(&j, 250, "2.0.0");
  check_delivered(dir, &j);
  maildir_ctx_free(ctx);
  free(data);
}

/* The disk under the file system fails after the data was written: an
 * ext4 (no journal) on a loop device whose backing tmpfs is then filled,
 * so write-back fails. The first message on that file system fsyncs its
 * own file (the barrier's descriptor was opened after it); the second
 * relies on the barrier (syncfs) alone, which must report the error:
 * 452 4.3.1 (the loop device says ENOSPC) and nothing in new/. */
static void t_maildir_barrier_error(void) {
  struct maildir_ctx *ctx;
  struct job j;
  char back[512], img[600], mnt[512], dir[600], cmd[2400];
  char *data = random_bytes(20000, 8);

  pathf(back, sizeof back, "%s/back", base);
  mount_tmpfs(back, "6m");
  pathf(img, sizeof img, "%s/img", back);
  pathf(mnt, sizeof mnt, "%s/loopfs", base);
  CHECK(mkdir(mnt, 0700) == 0);
  pathf(cmd, sizeof cmd,
        "truncate -s 64M '%s' && mkfs.ext4 -q -O ^has_journal -E nodiscard "
        "'%s' && mount -o loop '%s' '%s'",
        img, img, img, mnt);
  if (system(cmd) != 0) {
    fprintf(stderr, "FAIL: cannot mount an ext4 image on a loop device "
                    "(needs root, truncate, mkfs.ext4, loop devices)\n");
    exit(1);
  }
  pathf(mounted[nmounted], sizeof mounted[0], "%s", mnt); /* first out */
  nmounted++;
  pathf(dir, sizeof dir, "%s/Maildir", mnt);
  const char *dirs[] = {dir};
  CHECK(maildir_ctx_new(&ctx, loop, true) == 0);
  md_start(&j, ctx, dirs, 1, data, 20000, 4096);
  CHECK(uv_run(loop, UV_RUN_DEFAULT) == 0);
  CHECK_REPLY(&j, 250, "2.0.0");
  check_delivered(dir, &j);
  CHECK(maildir_ctx_test_barriers(ctx) == 2);

  pathf(cmd, sizeof cmd, "dd if=/dev/zero of='%s/fill' bs=64k 2>/dev/null",
        back);
  CHECK(system(cmd) != 0); /* dd stops at ENOSPC: the tmpfs is full */
  struct job k;
  md_start(&k, ctx, dirs, 1, data, 20000, 4096);
  CHECK(uv_run(loop, UV_RUN_DEFAULT) == 0);
  CHECK_REPLY(&k, 452, "4.3.1");
  CHECK(strstr(k.detail, "syncfs") != NULL);
  CHECK(count_in(dir, "new") == 1); /* the first message only */
  CHECK(count_in(dir, "tmp") == 0);
  maildir_ctx_free(ctx);
  free(data);
}

/* link() and rename() failures: 451 4.3.0, nothing left in any new/. */
static void t_maildir_link_fail(void) {
  struct maildir_ctx *ctx;
  struct job j;
  char a[512], bad[512], c[512], p[600];
  char *data = random_bytes(5000, 7);
  int fd;

  pathf(a, sizeof a, "%s/la", base);
  pathf(c, sizeof c, "%s/lc", base);
  pathf(bad, sizeof bad, "%s/lbad", base);
  fd = open(bad, O_CREAT | O_WRONLY, 0600); /* a file, not a maildir */
  CHECK(fd >= 0);
  close(fd);
  CHECK(maildir_ctx_new(&ctx, loop, true) == 0);

  /* The second link fails: the first is taken back. */
  const char *dirs1[] = {a, c, bad};
  md_start(&j, ctx, dirs1, 3, data, 5000, 5000);
  CHECK(uv_run(loop, UV_RUN_DEFAULT) == 0);
  CHECK_REPLY(&j, 451, "4.3.0");
  CHECK(strstr(j.detail, "link") != NULL);
  check_empty(a);
  check_empty(c);

  /* The rename (last) fails after the links: they are taken back. */
  pathf(p, sizeof p, "%s/new", a);
  CHECK(rmdir(p) == 0);
  fd = open(p, O_CREAT | O_WRONLY, 0600); /* a/new is now a file */
  CHECK(fd >= 0);
  close(fd);
  const char *dirs2[] = {a, c};
  md_start(&j, ctx, dirs2, 2, data, 5000, 1000);
  CHECK(uv_run(loop, UV_RUN_DEFAULT) == 0);
  CHECK_REPLY(&j, 451, "4.3.0");
  CHECK(strstr(j.detail, "rename") != NULL);
  CHECK(count_in(a, "tmp") == 0);
  check_empty(c);

  maildir_ctx_free(ctx);
  free(data);
}

static void t_maildir_prepare(void) {
  char dir[512], p[700];
  struct stat st;
  int fd;

  pathf(dir, sizeof dir, "%s/prep/x/Maildir", base);
  CHECK(maildir_prepare(dir, true) == 0);
  const char *subs[] = {"", "/tmp", "/new", "/cur"};
  for (int i = 0; i < 4; i++) {
    pathf(p, sizeof p, "%s%s", dir, subs[i]);
    CHECK(stat(p, &st) == 0 && S_ISDIR(st.st_mode));
    CHECK((st.st_mode & 07777) == 0700);
  }
  for (int i = 0; i < 3; i++) {
    pathf(p, sizeof p, "%s/tmp/stale%d", dir, i);
    CHECK((fd = open(p, O_CREAT | O_WRONLY, 0600)) >= 0);
    close(fd);
  }
  pathf(p, sizeof p, "%s/tmp/subdir", dir);
  CHECK(mkdir(p, 0700) == 0);
  pathf(p, sizeof p, "%s/new/kept", dir);
  CHECK((fd = open(p, O_CREAT | O_WRONLY, 0600)) >= 0);
  close(fd);

  CHECK(maildir_prepare(dir, false) == 0); /* no cleaning */
  CHECK(count_in(dir, "tmp") == 4);
  CHECK(maildir_prepare(dir, true) == 0);
  CHECK(count_in(dir, "tmp") == 1); /* only the directory is left */
  CHECK(count_in(dir, "new") == 1); /* new/ is never touched */

  /* A file where the maildir should be. */
  pathf(p, sizeof p, "%s/prep/file", base);
  CHECK((fd = open(p, O_CREAT | O_WRONLY, 0600)) >= 0);
  close(fd);
  CHECK(maildir_prepare(p, true) == -ENOTDIR);
}

/* ---- pipe ---------------------------------------------------------------- */

static void pipe_run(struct job *j, char *const *argv, char *const *env,
                     const char *data, size_t len, size_t chunk) {
  memset(j, 0, sizeof *j);
  j->is_pipe = true;
  j->data = data;
  j->len = len;
  j->chunk = chunk;
  CHECK(pipe_begin(loop, argv, env, hdr, sizeof hdr - 1, &j->pd) == 0);
  job_next(j);
  CHECK(!j->finished);
  CHECK(uv_run(loop, UV_RUN_DEFAULT) == 0);
}

static void t_pipe_ok(void) {
  struct job j;
  char out[512];
  size_t len = 3 * 1024 * 1024 + 17, n; /* more than a pipe buffer */
  char *data = random_bytes(len, 8);

  pathf(out, sizeof out, "%s/pipe-out", base);
  char *argv[] = {"/bin/sh", "-c", "cat > \"$1\"", "sh", out, NULL};
  pipe_run(&j, argv, NULL, data, len, 65536);
  CHECK_REPLY(&j, 250, "2.0.0");
  CHECK(j.write_err == 0);
  char *got = read_file(out, &n);
  CHECK(n == sizeof hdr - 1 + len);
  CHECK(memcmp(got, hdr, sizeof hdr - 1) == 0);
  CHECK(memcmp(got + sizeof hdr - 1, data, len) == 0);
  free(got);

  /* The environment as given. */
  char *argv2[] = {
      "/bin/sh", "-c", "printf '%s|%s' \"$SENDER\" \"$RECIPIENT\" > \"$1\"",
      "sh",      out,  NULL};
  char *env[] = {"SENDER=a@example.org", "RECIPIENT=b@example.net", NULL};
  pipe_run(&j, argv2, env, data, 1000, 1000);
  CHECK_REPLY(&j, 250, "2.0.0");
  got = read_file(out, &n);
  CHECK(n == strlen("a@example.org|b@example.net") &&
        memcmp(got, "a@example.org|b@example.net", n) == 0);
  free(got);
  free(data);
}

static void t_pipe_status(void) {
  static const struct {
    const char *script;
    int code;
    const char *enh;
  } cases[] = {
      {"cat >/dev/null; exit 0", 250, "2.0.0"},
      {"cat >/dev/null; exit 75", 451, "4.3.0"},
      {"cat >/dev/null; exit 67", 550, "5.1.1"},
      {"cat >/dev/null; exit 68", 550, "5.1.2"},
      {"cat >/dev/null; exit 71", 451, "4.3.0"},
      {"cat >/dev/null; exit 73", 451, "4.3.0"},
      {"cat >/dev/null; exit 77", 554, "5.7.1"},
      {"cat >/dev/null; exit 78", 554, "5.3.5"},
      {"cat >/dev/null; exit 65", 554, "5.6.0"},
      {"cat >/dev/null; exit 1", 554, "5.3.0"},
      {"cat >/dev/null; kill -KILL $$", 451, "4.3.0"},
  };
  char *data = random_bytes(50000, 9);
  struct job j;

  for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
    char *argv[] = {"/bin/sh", "-c", (char *)cases[i].script, NULL};
    pipe_run(&j, argv, NULL, data, 50000, 8192);
    CHECK_REPLY(&j, cases[i].code, cases[i].enh);
  }

  /* The detail carries the status name and the command's output. */
  char *argv[] = {"/bin/sh", "-c",
                  "cat >/dev/null; echo 'mailbox locked' >&2; exit 75", NULL};
  pipe_run(&j, argv, NULL, data, 100, 100);
  CHECK_REPLY(&j, 451, "4.3.0");
  CHECK(strstr(j.detail, "EX_TEMPFAIL") != NULL);
  CHECK(strstr(j.detail, "mailbox locked") != NULL);
  free(data);
}

/* Commands that exit without reading stdin: EPIPE must not kill us, and
 * the exit status still decides. */
static void t_pipe_early_exit(void) {
  size_t len = 4 * 1024 * 1024;
  char *data = random_bytes(len, 10);
  struct job j;

  char *a67[] = {"/bin/sh", "-c", "exit 67", NULL};
  pipe_run(&j, a67, NULL, data, len, 65536);
  CHECK_REPLY(&j, 550, "5.1.1");
  CHECK(j.write_err == UV_EPIPE);

  char *a0[] = {"/bin/sh", "-c", "exit 0", NULL};
  pipe_run(&j, a0, NULL, data, len, 65536);
  CHECK_REPLY(&j, 250, "2.0.0");

  char *a75[] = {"/bin/sh", "-c", "head -c 10 >/dev/null; exit 75", NULL};
  pipe_run(&j, a75, NULL, data, len, 65536);
  CHECK_REPLY(&j, 451, "4.3.0");

  /* A command that does not exist. */
  struct pipe_delivery *d;
  char *none[] = {"/nonexistent/command", NULL};
  CHECK(pipe_begin(loop, none, NULL, hdr, sizeof hdr - 1, &d) == -ENOENT);
  CHECK(uv_run(loop, UV_RUN_DEFAULT) == 0);
  free(data);
}

static void t_pipe_abort(void) {
  struct pipe_delivery *d;
  struct job j;
  char *data = random_bytes(1000, 11);

  /* Abort a command that would never finish; SIGTERM ends it. */
  char *argv[] = {"/bin/sh", "-c", "exec sleep 60", NULL};
  CHECK(pipe_begin(loop, argv, NULL, hdr, sizeof hdr - 1, &d) == 0);
  uint64_t t0 = uv_hrtime();
  pipe_abort(d);
  CHECK(uv_run(loop, UV_RUN_DEFAULT) == 0);
  CHECK(uv_hrtime() - t0 < 3000000000ull);

  /* Abort after commit while the command still runs: no `done`. */
  char *argv2[] = {"/bin/sh", "-c", "cat >/dev/null; exec sleep 60", NULL};
  memset(&j, 0, sizeof j);
  j.is_pipe = true;
  j.data = data;
  j.len = 1000;
  j.chunk = 1000;
  CHECK(pipe_begin(loop, argv2, NULL, hdr, sizeof hdr - 1, &j.pd) == 0);
  job_next(&j);
  CHECK(uv_run(loop, UV_RUN_NOWAIT) >= 0);
  pipe_abort(j.pd);
  CHECK(uv_run(loop, UV_RUN_DEFAULT) == 0);
  CHECK(!j.finished);
  free(data);
}

/* ---- pipe group: one command per recipient --------------------------------
 */

struct gjob {
  struct pipe_group *g;
  const char *data;
  size_t len, off;
  int calls;
  int code[4];
  char enh[4][16];
  size_t order[4];
  bool abort_in_each;
};

static void g_each(void *arg, size_t i, const struct tern_reply *r,
                   const char *detail) {
  struct gjob *j = arg;
  (void)detail;
  CHECK(i < 4 && j->code[i] == 0);
  j->code[i] = r->code;
  pathf(j->enh[i], sizeof j->enh[i], "%s", r->enhanced);
  j->order[j->calls++] = i;
  if (j->abort_in_each)
    pipe_group_abort(j->g);
}

static void g_next(void *arg, int status) {
  struct gjob *j = arg;
  CHECK(status == 0);
  while (j->off < j->len) {
    size_t n = j->len - j->off < 65536 ? j->len - j->off : 65536;
    int r = pipe_group_write(j->g, j->data + j->off, n, g_next, j);
    j->off += n;
    if (r == 0)
      return;
    CHECK(r == 1); /* no member reads any more */
  }
  pipe_group_commit(j->g, g_each, j);
}

static void t_pipe_group(void) {
  size_t len = 1024 * 1024, n;
  char *data = random_bytes(len, 12);
  char out0[512], out2[512];
  struct gjob j;

  pathf(out0, sizeof out0, "%s/group-0", base);
  pathf(out2, sizeof out2, "%s/group-2", base);
  /* 0 is slow and takes it all, 1 exits 67 without reading, 2 cannot be
   * started, 3 takes it all: each gets its own outcome, in the order the
   * commands finish; the one that stops reading holds no one back. */
  char *a0[] = {"/bin/sh", "-c", "cat > \"$1\"; sleep 0.3", "sh", out0, NULL};
  char *a1[] = {"/bin/sh", "-c", "exit 67", NULL};
  char *a2[] = {"/nonexistent/command", NULL};
  char *a3[] = {"/bin/sh", "-c", "cat > \"$1\"", "sh", out2, NULL};
  memset(&j, 0, sizeof j);
  j.data = data;
  j.len = len;
  CHECK(pipe_group_new(&j.g, 4, hdr, sizeof hdr - 1) == 0);
  CHECK(pipe_group_start(j.g, loop, 0, a0, NULL) == 0);
  CHECK(pipe_group_start(j.g, loop, 1, a1, NULL) == 0);
  CHECK(pipe_group_start(j.g, loop, 2, a2, NULL) == -ENOENT);
  CHECK(pipe_group_start(j.g, loop, 3, a3, NULL) == 0);
  g_next(&j, 0);
  CHECK(uv_run(loop, UV_RUN_DEFAULT) == 0);
  CHECK(j.calls == 4);
  CHECK(j.code[0] == 250 && !strcmp(j.enh[0], "2.0.0"));
  CHECK(j.code[1] == 550 && !strcmp(j.enh[1], "5.1.1"));
  CHECK(j.code[2] == 451 && !strcmp(j.enh[2], "4.3.0"));
  CHECK(j.code[3] == 250 && !strcmp(j.enh[3], "2.0.0"));
  CHECK(j.order[3] == 0); /* the slow one last */
  for (int k = 0; k < 2; k++) {
    char *got = read_file(k ? out2 : out0, &n);
    CHECK(n == sizeof hdr - 1 + len);
    CHECK(memcmp(got + sizeof hdr - 1, data, len) == 0);
    free(got);
  }

  /* Aborting from inside `each`: no further calls, the slow command is
   * stopped, nothing is left running (uv_run returns). */
  char *slow[] = {"/bin/sh", "-c", "cat >/dev/null; exec sleep 60", NULL};
  char *quick[] = {"/bin/sh", "-c", "cat >/dev/null; exit 0", NULL};
  memset(&j, 0, sizeof j);
  j.data = data;
  j.len = 1000;
  j.abort_in_each = true;
  CHECK(pipe_group_new(&j.g, 2, hdr, sizeof hdr - 1) == 0);
  CHECK(pipe_group_start(j.g, loop, 0, slow, NULL) == 0);
  CHECK(pipe_group_start(j.g, loop, 1, quick, NULL) == 0);
  g_next(&j, 0);
  uint64_t t0 = uv_hrtime();
  CHECK(uv_run(loop, UV_RUN_DEFAULT) == 0);
  CHECK(j.calls == 1 && j.code[1] == 250);
  CHECK(uv_hrtime() - t0 < 3000000000ull);
  free(data);
}

/* ---- main ---------------------------------------------------------------- */

static const struct check_case tests[] = {
    {"maildir_happy", t_maildir_happy},
    {"maildir_multi", t_maildir_multi},
    {"maildir_exdev", t_maildir_exdev},
    {"maildir_group_commit", t_maildir_group_commit},
    {"maildir_abort", t_maildir_abort},
    {"maildir_enospc", t_maildir_enospc},
    {"maildir_link_fail", t_maildir_link_fail},
    {"maildir_prepare", t_maildir_prepare},
    {"maildir_spool", t_maildir_spool},
    {"maildir_barrier_error", t_maildir_barrier_error},
    {"pipe_ok", t_pipe_ok},
    {"pipe_status", t_pipe_status},
    {"pipe_early_exit", t_pipe_early_exit},
    {"pipe_abort", t_pipe_abort},
    {"pipe_group", t_pipe_group},
};

static void setup(void) {
  atexit(cleanup);
  loop = uv_default_loop();
}

static void teardown(void) { CHECK(uv_loop_close(loop) == 0); }

int main(int argc, char **argv) {
  return check_main(argc, argv, base, sizeof base, "tern-deliver", tests,
                    sizeof tests / sizeof *tests, setup, teardown);
}
