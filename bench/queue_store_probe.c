/*
 * queue_store_probe — what a durable queue costs on this machine's disk,
 * for three ways of storing it (docs/decisions/0017-the-queue-store.md):
 *
 *   files    one file per message in 16 hashed directories: write a
 *            temporary name, fsync the file, rename, fsync the directory.
 *            A batch fsyncs each file, renames them all, then fsyncs each
 *            directory it touched once.
 *   syncfs   the same files, but a batch is written and renamed without
 *            fsync and made durable by one syncfs() (flushes the whole
 *            file system, other people's data included: a shared disk
 *            makes this noisy).
 *   sqlite   one SQLite database in WAL mode, synchronous=FULL, set up
 *            as src/queue/store.c does (8 KiB pages, incremental
 *            auto_vacuum, a checkpoint every 512 WAL pages): the schema
 *            of src/queue/store.h (msg, rcpt, chunk rows; the body as
 *            64 KiB BLOB chunks), one transaction per batch. The
 *            checkpoints run in the committing call and are counted in.
 *   segment  an append-only segment file: each message appended as one
 *            record, one fdatasync() per batch; completions appended as
 *            small records, also one fdatasync() per batch. Reclaiming
 *            space (compaction) is not measured.
 *
 * For each design, body size (1 KiB, 64 KiB) and batch size (1, 20
 * messages per commit: group commit, as 20 sessions finishing together
 * would share one), it enqueues messages durably (up to -n messages or -t
 * seconds, whole batches), then completes them (the message removed
 * durably, in batches of the same size). Each message has a sender and
 * two recipients (address, ORCPT, NOTIFY, destination).
 *
 * Figures: wall messages/s, and CPU µs per message = the process's user
 * + system time (getrusage) over the messages. Kernel work done by other
 * threads (ext4's journal thread, block layer) is not in the process's
 * CPU time; the wall figures include the waits for the disk.
 *
 *   queue_store_probe [-n MAX] [-t SECONDS] [-r ROUNDS] [-d LIST] [DIR]
 *     DIR       where to make a scratch directory (default /var/tmp);
 *               it is removed at the end
 *     -n MAX    messages per case at most (default 2000)
 *     -t SEC    enqueue time per case at most (default 4)
 *     -r N      rounds (default 3): every case once per round, the
 *               rounds interleaved; the table shows medians and the
 *               range of the enqueue rate
 *     -d LIST   designs, comma-separated (default files,sqlite,segment;
 *               syncfs also exists)
 *
 * Not a test: it prints a table and never fails on speed.
 */
#define _GNU_SOURCE

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include <sqlite3.h>

#define NDIRS 16
#define CHUNK 65536
#define SEG_MAX (256u << 20)
#define BATCH_MAX 64
#define ROUNDS_MAX 15

static void die(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fputs("queue_store_probe: ", stderr);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
  exit(1);
}

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static double cpu_seconds(void) {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
         (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

static void xwrite(int fd, const void *p, size_t n) {
  const char *c = p;
  while (n) {
    ssize_t w = write(fd, c, n);
    if (w < 0) {
      if (errno == EINTR)
        continue;
      die("write: %s", strerror(errno));
    }
    c += w;
    n -= (size_t)w;
  }
}

static void xfsync(int fd) {
  if (fsync(fd) != 0)
    die("fsync: %s", strerror(errno));
}

/* ---- the message --------------------------------------------------------- */

struct msg {
  char id[24];
  char env[512]; /* the envelope as text lines */
  size_t env_len;
  const char *body;
  size_t body_len;
};

static void msg_make(struct msg *m, unsigned long n, const char *body,
                     size_t body_len) {
  /* Like qstore_new_id(): [0-9A-Z]; unique per run. */
  snprintf(m->id, sizeof m->id, "P%08luX%06lu", n * 7919ul % 100000000ul, n);
  int k = snprintf(m->env, sizeof m->env,
                   "id %s\narrival 1796000000\nfrom sender%lu@example.org\n"
                   "size %zu\nrcpt 0 rcpt%lu@example.net rfc822;rcpt%lu@"
                   "example.net 6 relay\nrcpt 1 other%lu@example.net - 6 "
                   "relay\n\n",
                   m->id, n, body_len, n, n, n);
  m->env_len = (size_t)k;
  m->body = body;
  m->body_len = body_len;
}

/* The hashed directory of an id (FNV-1a, mod 16). */
static unsigned hash_dir(const char *id) {
  uint32_t h = 2166136261u;
  for (; *id; id++)
    h = (h ^ (unsigned char)*id) * 16777619u;
  return h % NDIRS;
}

/* ---- designs ----------------------------------------------------------- */

struct design {
  const char *name;
  void (*open)(void **st, const char *dir);
  void (*put)(void *st, const struct msg *m);
  void (*commit)(void *st);
  void (*done)(void *st, const struct msg *m);
  void (*done_commit)(void *st);
  void (*close)(void *st);
};

/* files and syncfs */
struct files {
  char dir[4096];
  int dirfd[NDIRS];
  bool dirty[NDIRS];
  bool use_syncfs;
  int fd[BATCH_MAX];
  char tmp[BATCH_MAX][64], fin[BATCH_MAX][64];
  unsigned h[BATCH_MAX];
  size_t n;
};

static void files_open2(void **st, const char *dir, bool use_syncfs) {
  struct files *f = calloc(1, sizeof *f);
  char p[4200];
  if (!f)
    die("out of memory");
  snprintf(f->dir, sizeof f->dir, "%s", dir);
  f->use_syncfs = use_syncfs;
  for (unsigned i = 0; i < NDIRS; i++) {
    snprintf(p, sizeof p, "%s/%X", dir, i);
    if (mkdir(p, 0700) != 0)
      die("mkdir %s: %s", p, strerror(errno));
    f->dirfd[i] = open(p, O_RDONLY | O_DIRECTORY);
    if (f->dirfd[i] < 0)
      die("open %s: %s", p, strerror(errno));
  }
  *st = f;
}

static void files_open(void **st, const char *dir) {
  files_open2(st, dir, false);
}
static void syncfs_open(void **st, const char *dir) {
  files_open2(st, dir, true);
}

static void files_put(void *st, const struct msg *m) {
  struct files *f = st;
  size_t i = f->n++;
  f->h[i] = hash_dir(m->id);
  snprintf(f->tmp[i], sizeof f->tmp[i], "%s.tmp", m->id);
  snprintf(f->fin[i], sizeof f->fin[i], "%s", m->id);
  int fd = openat(f->dirfd[f->h[i]], f->tmp[i],
                  O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0)
    die("create: %s", strerror(errno));
  struct iovec iov[2] = {{(void *)m->env, m->env_len},
                         {(void *)m->body, m->body_len}};
  ssize_t w = writev(fd, iov, 2);
  if (w != (ssize_t)(m->env_len + m->body_len))
    die("writev: %s", strerror(errno));
  f->fd[i] = fd;
}

static void files_commit(void *st) {
  struct files *f = st;
  if (!f->use_syncfs)
    for (size_t i = 0; i < f->n; i++)
      xfsync(f->fd[i]);
  for (size_t i = 0; i < f->n; i++) {
    close(f->fd[i]);
    if (renameat(f->dirfd[f->h[i]], f->tmp[i], f->dirfd[f->h[i]], f->fin[i]) !=
        0)
      die("rename: %s", strerror(errno));
    f->dirty[f->h[i]] = true;
  }
  if (f->use_syncfs) {
    if (syncfs(f->dirfd[0]) != 0)
      die("syncfs: %s", strerror(errno));
    memset(f->dirty, 0, sizeof f->dirty);
  }
  for (unsigned d = 0; d < NDIRS; d++)
    if (f->dirty[d]) {
      xfsync(f->dirfd[d]);
      f->dirty[d] = false;
    }
  f->n = 0;
}

static void files_done(void *st, const struct msg *m) {
  struct files *f = st;
  unsigned h = hash_dir(m->id);
  if (unlinkat(f->dirfd[h], m->id, 0) != 0)
    die("unlink: %s", strerror(errno));
  f->dirty[h] = true;
}

static void files_done_commit(void *st) {
  struct files *f = st;
  if (f->use_syncfs) {
    if (syncfs(f->dirfd[0]) != 0)
      die("syncfs: %s", strerror(errno));
    memset(f->dirty, 0, sizeof f->dirty);
    return;
  }
  for (unsigned d = 0; d < NDIRS; d++)
    if (f->dirty[d]) {
      xfsync(f->dirfd[d]);
      f->dirty[d] = false;
    }
}

static void files_close(void *st) {
  struct files *f = st;
  for (unsigned i = 0; i < NDIRS; i++)
    close(f->dirfd[i]);
  free(f);
}

/* sqlite */
struct sql {
  sqlite3 *db;
  sqlite3_stmt *ins_msg, *ins_rcpt, *ins_chunk, *del_msg, *del_rcpt, *del_chunk;
  bool in_tx;
};

static void sql_exec(sqlite3 *db, const char *q) {
  char *err = NULL;
  if (sqlite3_exec(db, q, NULL, NULL, &err) != SQLITE_OK)
    die("sqlite: %s: %s", q, err ? err : "?");
}

static sqlite3_stmt *sql_prep(sqlite3 *db, const char *q) {
  sqlite3_stmt *s;
  if (sqlite3_prepare_v2(db, q, -1, &s, NULL) != SQLITE_OK)
    die("sqlite: %s: %s", q, sqlite3_errmsg(db));
  return s;
}

static void sql_step(sqlite3_stmt *s) {
  if (sqlite3_step(s) != SQLITE_DONE)
    die("sqlite: %s", sqlite3_errmsg(sqlite3_db_handle(s)));
  sqlite3_reset(s);
  sqlite3_clear_bindings(s);
}

static void sql_open(void **st, const char *dir) {
  struct sql *q = calloc(1, sizeof *q);
  char p[4200];
  if (!q)
    die("out of memory");
  snprintf(p, sizeof p, "%s/queue.db", dir);
  if (sqlite3_open(p, &q->db) != SQLITE_OK)
    die("sqlite open %s", p);
  /* As src/queue/store.c sets it up: 8 KiB pages, incremental vacuum,
   * WAL with a checkpoint every 512 pages, synchronous=FULL. */
  sql_exec(q->db, "PRAGMA page_size=8192");
  sql_exec(q->db, "PRAGMA auto_vacuum=INCREMENTAL");
  sql_exec(q->db, "PRAGMA journal_mode=WAL");
  sql_exec(q->db, "PRAGMA wal_autocheckpoint=512");
  sql_exec(q->db, "PRAGMA synchronous=FULL");
  sql_exec(q->db,
           "CREATE TABLE msg(id TEXT PRIMARY KEY, arrival INTEGER, sender "
           "TEXT, size INTEGER, body INTEGER, smtputf8 INTEGER, requiretls "
           "INTEGER, ret INTEGER, envid TEXT, client TEXT, held INTEGER, "
           "is_bounce INTEGER, warned INTEGER, nchunks INTEGER);"
           "CREATE TABLE rcpt(msg TEXT, idx INTEGER, addr TEXT, orcpt TEXT, "
           "notify INTEGER, dest TEXT, state INTEGER, attempts INTEGER, "
           "next_try INTEGER, last_code INTEGER, last_reply TEXT, "
           "remote_mta TEXT, PRIMARY KEY (msg, idx));"
           "CREATE INDEX msg_arrival ON msg(arrival, id);"
           "CREATE TABLE chunk(msg TEXT, seq INTEGER, data BLOB, "
           "PRIMARY KEY (msg, seq));");
  q->ins_msg = sql_prep(q->db, "INSERT INTO msg VALUES(?,?,?,?,0,0,0,0,NULL,"
                               "'dns; client.example.org',0,0,0,?)");
  q->ins_rcpt = sql_prep(q->db, "INSERT INTO rcpt VALUES(?,?,?,?,6,'relay',"
                                "0,0,0,0,NULL,NULL)");
  q->ins_chunk = sql_prep(q->db, "INSERT INTO chunk VALUES(?,?,?)");
  q->del_chunk = sql_prep(q->db, "DELETE FROM chunk WHERE msg=?");
  q->del_rcpt = sql_prep(q->db, "DELETE FROM rcpt WHERE msg=?");
  q->del_msg = sql_prep(q->db, "DELETE FROM msg WHERE id=?");
  *st = q;
}

static void sql_begin(struct sql *q) {
  if (!q->in_tx) {
    sql_exec(q->db, "BEGIN");
    q->in_tx = true;
  }
}

static void sql_put(void *st, const struct msg *m) {
  struct sql *q = st;
  char a[96];
  unsigned long n = strtoul(m->id + 10, NULL, 10);
  size_t nchunks = (m->body_len + CHUNK - 1) / CHUNK;
  sql_begin(q);
  for (size_t c = 0; c < nchunks; c++) {
    size_t off = c * CHUNK, len = m->body_len - off;
    if (len > CHUNK)
      len = CHUNK;
    sqlite3_bind_text(q->ins_chunk, 1, m->id, -1, SQLITE_STATIC);
    sqlite3_bind_int64(q->ins_chunk, 2, (sqlite3_int64)c);
    sqlite3_bind_blob(q->ins_chunk, 3, m->body + off, (int)len, SQLITE_STATIC);
    sql_step(q->ins_chunk);
  }
  snprintf(a, sizeof a, "sender%lu@example.org", n);
  sqlite3_bind_text(q->ins_msg, 1, m->id, -1, SQLITE_STATIC);
  sqlite3_bind_int64(q->ins_msg, 2, 1796000000);
  sqlite3_bind_text(q->ins_msg, 3, a, -1, SQLITE_TRANSIENT);
  sqlite3_bind_int64(q->ins_msg, 4, (sqlite3_int64)m->body_len);
  sqlite3_bind_int64(q->ins_msg, 5, (sqlite3_int64)nchunks);
  sql_step(q->ins_msg);
  for (int r = 0; r < 2; r++) {
    char o[120];
    snprintf(a, sizeof a, "%s%lu@example.net", r ? "other" : "rcpt", n);
    snprintf(o, sizeof o, "rfc822;%s", a);
    sqlite3_bind_text(q->ins_rcpt, 1, m->id, -1, SQLITE_STATIC);
    sqlite3_bind_int(q->ins_rcpt, 2, r);
    sqlite3_bind_text(q->ins_rcpt, 3, a, -1, SQLITE_TRANSIENT);
    if (r == 0)
      sqlite3_bind_text(q->ins_rcpt, 4, o, -1, SQLITE_TRANSIENT);
    sql_step(q->ins_rcpt);
  }
}

static void sql_commit(void *st) {
  struct sql *q = st;
  if (q->in_tx) {
    sql_exec(q->db, "COMMIT");
    q->in_tx = false;
  }
}

static void sql_done(void *st, const struct msg *m) {
  struct sql *q = st;
  sql_begin(q);
  sqlite3_stmt *s[3] = {q->del_chunk, q->del_rcpt, q->del_msg};
  for (int i = 0; i < 3; i++) {
    sqlite3_bind_text(s[i], 1, m->id, -1, SQLITE_STATIC);
    sql_step(s[i]);
  }
}

static void sql_close(void *st) {
  struct sql *q = st;
  sqlite3_stmt *s[6] = {q->ins_msg, q->ins_rcpt, q->ins_chunk,
                        q->del_msg, q->del_rcpt, q->del_chunk};
  for (int i = 0; i < 6; i++)
    sqlite3_finalize(s[i]);
  sqlite3_close(q->db);
  free(q);
}

/* segment */
struct seg {
  char dir[4096];
  int dirfd, fd;
  unsigned no;
  uint64_t off;
  char *buf; /* a batch's records, written with one write() */
  size_t len, cap;
};

static void seg_next(struct seg *g) {
  char p[64];
  if (g->fd >= 0)
    close(g->fd);
  snprintf(p, sizeof p, "%08u.seg", ++g->no);
  g->fd = openat(g->dirfd, p, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
  if (g->fd < 0)
    die("create segment: %s", strerror(errno));
  xfsync(g->dirfd); /* the new name is durable before records count */
  g->off = 0;
}

static void seg_open(void **st, const char *dir) {
  struct seg *g = calloc(1, sizeof *g);
  if (!g)
    die("out of memory");
  snprintf(g->dir, sizeof g->dir, "%s", dir);
  g->dirfd = open(dir, O_RDONLY | O_DIRECTORY);
  if (g->dirfd < 0)
    die("open %s: %s", dir, strerror(errno));
  g->fd = -1;
  seg_next(g);
  *st = g;
}

static void seg_append(struct seg *g, char type, const char *a, size_t alen,
                       const char *b, size_t blen) {
  uint32_t n = (uint32_t)(1 + alen + blen);
  size_t need = 4 + n;
  if (g->cap - g->len < need) {
    size_t cap = g->cap ? g->cap : 1 << 20;
    while (cap - g->len < need)
      cap *= 2;
    g->buf = realloc(g->buf, cap);
    if (!g->buf)
      die("out of memory");
    g->cap = cap;
  }
  memcpy(g->buf + g->len, &n, 4);
  g->buf[g->len + 4] = type;
  memcpy(g->buf + g->len + 5, a, alen);
  if (blen)
    memcpy(g->buf + g->len + 5 + alen, b, blen);
  g->len += need;
}

static void seg_put(void *st, const struct msg *m) {
  seg_append(st, 'M', m->env, m->env_len, m->body, m->body_len);
}

static void seg_commit(void *st) {
  struct seg *g = st;
  if (g->off + g->len > SEG_MAX)
    seg_next(g);
  xwrite(g->fd, g->buf, g->len);
  g->off += g->len;
  g->len = 0;
  if (fdatasync(g->fd) != 0)
    die("fdatasync: %s", strerror(errno));
}

static void seg_done(void *st, const struct msg *m) {
  seg_append(st, 'D', m->id, strlen(m->id), NULL, 0);
}

static void seg_close(void *st) {
  struct seg *g = st;
  close(g->fd);
  close(g->dirfd);
  free(g->buf);
  free(g);
}

static const struct design designs[] = {
    {"files", files_open, files_put, files_commit, files_done,
     files_done_commit, files_close},
    {"syncfs", syncfs_open, files_put, files_commit, files_done,
     files_done_commit, files_close},
    {"sqlite", sql_open, sql_put, sql_commit, sql_done, sql_commit, sql_close},
    {"segment", seg_open, seg_put, seg_commit, seg_done, seg_commit, seg_close},
};

/* ---- scratch directories ------------------------------------------------- */

static void rm_rf(const char *path) {
  struct stat st;
  if (lstat(path, &st) != 0)
    return;
  if (S_ISDIR(st.st_mode)) {
    DIR *d = opendir(path);
    struct dirent *e;
    char p[4200];
    if (!d)
      die("opendir %s: %s", path, strerror(errno));
    while ((e = readdir(d)) != NULL) {
      if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
        continue;
      snprintf(p, sizeof p, "%s/%s", path, e->d_name);
      rm_rf(p);
    }
    closedir(d);
    rmdir(path);
  } else {
    unlink(path);
  }
}

static const char *fs_name(const char *dir) {
  struct statfs s;
  if (statfs(dir, &s) != 0)
    return "?";
  switch ((unsigned long)s.f_type) {
  case 0xEF53:
    return "ext2/3/4";
  case 0x58465342:
    return "xfs";
  case 0x9123683E:
    return "btrfs";
  case 0x01021994:
    return "tmpfs";
  case 0x2FC12FC1:
    return "zfs";
  case 0x794C7630:
    return "overlayfs";
  default:
    return "other";
  }
}

/* ---- one case --------------------------------------------------------------
 */

struct result {
  unsigned long n;
  double enq_rate, enq_cpu_us, done_rate, done_cpu_us;
};

static struct result run_case(const struct design *d, const char *dir,
                              size_t body_len, size_t batch, unsigned long max,
                              double max_s, const char *body) {
  struct result r = {0};
  struct msg *m = calloc(max, sizeof *m);
  void *st;
  if (!m)
    die("out of memory");
  d->open(&st, dir);

  double t0 = now(), c0 = cpu_seconds();
  unsigned long n = 0;
  while (n + batch <= max && (n == 0 || now() - t0 < max_s)) {
    for (size_t i = 0; i < batch; i++, n++) {
      msg_make(&m[n], n, body, body_len);
      d->put(st, &m[n]);
    }
    d->commit(st);
  }
  double t1 = now(), c1 = cpu_seconds();
  for (unsigned long i = 0; i < n;) {
    for (size_t k = 0; k < batch && i < n; k++, i++)
      d->done(st, &m[i]);
    d->done_commit(st);
  }
  double t2 = now(), c2 = cpu_seconds();
  d->close(st);

  r.n = n;
  r.enq_rate = (double)n / (t1 - t0);
  r.enq_cpu_us = (c1 - c0) * 1e6 / (double)n;
  r.done_rate = (double)n / (t2 - t1);
  r.done_cpu_us = (c2 - c1) * 1e6 / (double)n;
  free(m);
  return r;
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

static double median(double *v, unsigned n) {
  qsort(v, n, sizeof *v, cmp_double);
  return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

static bool wanted(const char *list, const char *name) {
  size_t n = strlen(name);
  for (const char *p = list; p && *p;) {
    const char *e = strchr(p, ',');
    size_t l = e ? (size_t)(e - p) : strlen(p);
    if (l == n && strncmp(p, name, n) == 0)
      return true;
    p = e ? e + 1 : NULL;
  }
  return false;
}

int main(int argc, char **argv) {
  unsigned long max = 2000;
  double max_s = 4;
  const char *list = "files,sqlite,segment";
  unsigned rounds = 3;
  int opt;
  while ((opt = getopt(argc, argv, "n:t:d:r:h")) != -1) {
    switch (opt) {
    case 'r':
      rounds = (unsigned)strtoul(optarg, NULL, 10);
      if (rounds < 1 || rounds > ROUNDS_MAX)
        die("-r: 1 to %d rounds", ROUNDS_MAX);
      break;
    case 'n':
      max = strtoul(optarg, NULL, 10);
      break;
    case 't':
      max_s = strtod(optarg, NULL);
      break;
    case 'd':
      list = optarg;
      break;
    default:
      fprintf(stderr, "usage: queue_store_probe [-n MAX] [-t SECONDS] "
                      "[-r ROUNDS] [-d files,syncfs,sqlite,segment] "
                      "[DIR]\n");
      return 2;
    }
  }
  const char *base = optind < argc ? argv[optind] : "/var/tmp";
  if (max < 20)
    max = 20;

  char top[4096];
  snprintf(top, sizeof top, "%s/queue_store_probe.%ld", base, (long)getpid());
  if (mkdir(top, 0700) != 0)
    die("mkdir %s: %s", top, strerror(errno));

  static char body[65536];
  for (size_t i = 0; i < sizeof body; i++) /* text lines of 78 + CRLF */
    body[i] = (i % 80 == 78)   ? '\r'
              : (i % 80 == 79) ? '\n'
                               : (char)('a' + i % 26);

  /* Every case once per round, rounds interleaved so that a busy moment
   * of a shared disk spreads over all cases; each figure is the median
   * over the rounds. */
  const size_t bodies[] = {1024, 65536};
  const size_t batches[] = {1, 20};
  struct kase {
    const struct design *d;
    size_t body, batch;
    struct result r[ROUNDS_MAX];
  } cases[sizeof designs / sizeof designs[0] * 4];
  unsigned ncases = 0, seq = 0;
  for (size_t di = 0; di < sizeof designs / sizeof designs[0]; di++) {
    if (!wanted(list, designs[di].name))
      continue;
    for (size_t bi = 0; bi < 2; bi++)
      for (size_t ki = 0; ki < 2; ki++)
        cases[ncases++] =
            (struct kase){&designs[di], bodies[bi], batches[ki], {{0}}};
  }
  for (unsigned round = 0; round < rounds; round++)
    for (unsigned c = 0; c < ncases; c++) {
      char dir[4200];
      snprintf(dir, sizeof dir, "%s/%u", top, seq++);
      if (mkdir(dir, 0700) != 0)
        die("mkdir %s: %s", dir, strerror(errno));
      cases[c].r[round] = run_case(cases[c].d, dir, cases[c].body,
                                   cases[c].batch, max, max_s, body);
      rm_rf(dir);
      fprintf(stderr, ".");
    }
  fprintf(stderr, "\n");

  printf("queue_store_probe: %s (%s), up to %lu messages or %.0f s per "
         "case, median of %u rounds, SQLite %s\n",
         base, fs_name(top), max, max_s, rounds, sqlite3_libversion());
  printf("%-8s %5s %5s %6s | %10s %10s %10s | %10s %10s\n", "design", "body",
         "batch", "msgs", "enq msg/s", "(min-max)", "enq cpu us", "done msg/s",
         "done cpu us");
  for (unsigned c = 0; c < ncases; c++) {
    double v[5][ROUNDS_MAX], lo = 1e300, hi = 0;
    for (unsigned k = 0; k < rounds; k++) {
      const struct result *r = &cases[c].r[k];
      v[0][k] = (double)r->n;
      v[1][k] = r->enq_rate;
      v[2][k] = r->enq_cpu_us;
      v[3][k] = r->done_rate;
      v[4][k] = r->done_cpu_us;
      lo = r->enq_rate < lo ? r->enq_rate : lo;
      hi = r->enq_rate > hi ? r->enq_rate : hi;
    }
    char range[32];
    snprintf(range, sizeof range, "%.0f-%.0f", lo, hi);
    printf("%-8s %4zuK %5zu %6.0f | %10.0f %10s %10.1f | %10.0f %10.1f\n",
           cases[c].d->name, cases[c].body / 1024, cases[c].batch,
           median(v[0], rounds), median(v[1], rounds), range,
           median(v[2], rounds), median(v[3], rounds), median(v[4], rounds));
  }
  rm_rf(top);
  return 0;
}
