/*
 * Maildir delivery for `tern serve` (deliver.h has the contract).
 *
 * The format is qmail's (also Courier's and Dovecot's): a message is
 * written under DIR/tmp with a name unique on this host, made durable, and
 * only then given a name in DIR/new, where readers look. A reader never
 * sees a partial file, and a crash leaves at worst a file in tmp/, which
 * was never acknowledged and which maildir_prepare(clean_tmp) removes.
 *
 * Order of operations (STYLE.md 15, "durable before 250"):
 *
 *   1. gather the header and the chunks in a buffer; each time 128 KiB
 *      have gathered, write them in one pwrite in the thread pool (the
 *      first such job opens SPOOL-or-DIRS[0]/tmp/NAME, O_EXCL, 0600);
 *   2. make the file's data durable;
 *   3. link it into DIRS[i]/new for i >= 1 (EXDEV: copy it into
 *      DIRS[i]/tmp, fsync the copy, rename it into DIRS[i]/new, fsync
 *      that new/);
 *   4. rename it into DIRS[0]/new;
 *   5. make the new names durable;
 *   6. only then `done` with 250 2.0.0.
 *
 * Steps 2 and 5 are shared (group commit). Per maildir_ctx (one per
 * loop) one job at a time, the cycle, runs in the thread pool:
 *
 *   - it places (steps 3-4) the messages whose data an earlier barrier
 *     made durable,
 *   - it writes, whole, the messages committed since the last cycle
 *     that fitted in the buffer (most mail: one open, one write, one
 *     close each, with no pool round trip of their own),
 *   - then it calls syncfs() once per file system it touched: the
 *     barrier. It makes the names of the first kind durable (they are
 *     answered 250 after it) and the data of the second (they are
 *     placed by the next cycle, whose barrier answers them).
 *
 * So a message costs two barriers it shares with every message of the
 * same cycles, instead of a file fsync and a directory fsync of its own:
 * on this project's test machine (ext4, no journal, a virtual disk) a
 * per-file fsync cost about as much CPU as the rest of the delivery.
 * The price: syncfs() flushes everything dirty on that file system,
 * other programs' data too. Big messages (written in blocks while they
 * arrive) fsync their own file in their sealing job, as before, and
 * join the cycle to be placed.
 *
 * A barrier reports errors through a descriptor per file system that
 * stays open (ctx->devs): syncfs() returns a write-back error that
 * happened on that file system since the descriptor last saw one (Linux
 * 5.8 and later), so the descriptor must exist before the writes it
 * vouches for. A message written before its file system's descriptor
 * was opened fsyncs its own file once.
 *
 * Failures answer 452 4.3.1 (ENOSPC, EDQUOT) or 451 4.3.0 (anything else)
 * and leave nothing in any new/.
 */
#define _GNU_SOURCE /* syncfs */
#include "deliver.h"
#include "recipients.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* Room for "SECONDS.M<usec>P<pid>Q<seq>." plus an escaped host name. */
#define MD_NAME_MAX 256
#define MD_HOST_MAX 128
#define MD_COPY_BUF 65536
/* Bytes gathered before a write: a 1 KiB message is one pwrite at
 * commit, a 6 MB one 47 instead of one per runtime read. */
#define MD_WBUF (128 * 1024)
/* Stripes of the create/rename locks (md_dirlock). */
#define MD_LOCKS 64

static const struct tern_reply md_ok = {250, "2.0.0", "Ok: delivered"};
static const struct tern_reply md_nospace = {
    452, "4.3.1", "Error: insufficient system storage"};
static const struct tern_reply md_failed = {451, "4.3.0",
                                            "Error: local delivery failed"};

/*
 * The Q<seq> part of the unique name. Process-wide on purpose: two loops
 * (two maildir_ctx) in one process share the pid, and could share the
 * microsecond, so a per-context counter would not make names unique. It
 * is the one piece of global state here, and it is an atomic counter.
 */
static atomic_ulong md_seq;

/* ---- types --------------------------------------------------------------- */

/* A file system the cycle makes durable with syncfs(): a directory on
 * it, open for the context's life (see the top of this file). */
struct md_dev {
  dev_t dev;
  int fd;
  bool touched; /* something of this cycle lives there */
  int status;   /* the barrier's result */
};

struct maildir_ctx {
  uv_loop_t *loop;
  bool fsync;
  bool freeing;             /* maildir_ctx_free called, deliveries live */
  size_t live;              /* deliveries not yet freed */
  unsigned long barriers; /* cycles that ran syncfs (test hook) */
  /* The cycle (see the top of this file). The lists are of deliveries
   * linked by cnext; to_write and to_place gather on the loop, j_write
   * and j_place belong to the running job. devs is touched only by the
   * cycle's job, one at a time, and by md_ctx_destroy. */
  uv_work_t cycle;
  bool cycling;
  struct maildir_delivery *to_write; /* committed, data in the buffer */
  struct maildir_delivery *to_place; /* data durable */
  struct maildir_delivery *j_write, *j_place;
  struct md_dev *devs;
  size_t ndevs;
  long pid;               /* for unique names (a syscall per message else) */
  char host[MD_HOST_MAX]; /* escaped */
};

struct maildir_delivery {
  struct maildir_ctx *ctx;
  char *spool; /* the file's tmp/ is here, or NULL: in DIRS[0] */
  char **dirs;
  size_t ndirs;
  /* The bytes not yet in the file: the header, then the caller's
   * chunks, written in one pwrite once MD_WBUF have gathered (or at
   * commit, which for most messages is the only write). */
  char *buf;
  size_t blen, bcap;

  int fd;
  uint64_t off;
  bool tmp_exists; /* DIRS[0]/tmp/NAME */
  bool *placed;    /* placed[i]: NAME is in DIRS[i]/new */

  int err;            /* first error (-errno), 0 if none */
  const char *err_op; /* what failed, for the detail text */

  bool busy;      /* a uv request or job is in flight */
  bool committed; /* maildir_commit called */
  bool aborted;   /* maildir_abort called */

  /* The caller's write waiting for a flush. */
  void (*wcb)(void *arg, int status);
  void *warg;

  deliver_done_fn done;
  void *done_arg;
  const struct deliver_cbs *ocb; /* behind deliver_ops: the session's */
  void *oarg;
  struct maildir_delivery *cnext; /* in a cycle list */
  dev_t dev;                       /* of the file, once written */

  uv_work_t work;
  char name[MD_NAME_MAX];
  char detail[MD_NAME_MAX + 96];
};

/* ---- helpers ------------------------------------------------------------- */

/*
 * One lock per directory (striped by a hash of its path, process-wide)
 * around the calls that add or remove its entries: open(O_CREAT) in
 * tmp/, link and rename into new/. Many pool threads creating files in
 * one directory at once made the kernel spin on that directory's lock
 * (rwsem_spin_on_owner under openat and rename); holding ours, at most
 * one thread per directory is in such a call and the others sleep. The
 * slow parts (writes, fsyncs) run outside it.
 */
static uv_mutex_t md_locks[MD_LOCKS];
static uv_once_t md_locks_once = UV_ONCE_INIT;
static bool md_locks_ok;
static uv_mutex_t md_nolock; /* never initialised nor used */

static void md_locks_init(void) {
  for (size_t i = 0; i < MD_LOCKS; i++)
    if (uv_mutex_init(&md_locks[i]) != 0)
      return; /* (cannot happen on Linux) unbounded, as before */
  md_locks_ok = true;
}

static uv_mutex_t *md_dirlock(const char *dir) {
  uint32_t h = 2166136261u; /* FNV-1a */
  uv_once(&md_locks_once, md_locks_init);
  if (!md_locks_ok)
    return &md_nolock;
  for (const unsigned char *p = (const unsigned char *)dir; *p; p++)
    h = (h ^ *p) * 16777619u;
  return &md_locks[h % MD_LOCKS];
}

static void md_lock(uv_mutex_t *m) {
  if (m != &md_nolock)
    uv_mutex_lock(m);
}

static void md_unlock(uv_mutex_t *m) {
  if (m != &md_nolock)
    uv_mutex_unlock(m);
}

/* The maildir whose tmp/ holds the file. */
static const char *md_tmpbox(const struct maildir_delivery *d) {
  return d->spool ? d->spool : d->dirs[0];
}

static char *md_strdup(const char *s) {
  size_t n = strlen(s) + 1;
  char *p = malloc(n);
  if (p != NULL)
    memcpy(p, s, n);
  return p;
}

static int md_path(char *buf, size_t cap, const char *dir, const char *sub,
                   const char *name) {
  int n = snprintf(buf, cap, "%s/%s%s%s", dir, sub, name ? "/" : "",
                   name ? name : "");
  return (n < 0 || (size_t)n >= cap) ? -ENAMETOOLONG : 0;
}

/* fsync the directory that holds `path` (a new entry in it). */
static int md_sync_parent(const char *path) {
  char parent[PATH_MAX];
  const char *slash = strrchr(path, '/');
  size_t n = slash == NULL ? 1 : slash == path ? 1 : (size_t)(slash - path);
  int fd, r = 0;

  if (n >= sizeof parent)
    return -ENAMETOOLONG;
  memcpy(parent, slash == NULL ? "." : path, n);
  parent[n] = '\0';
  if ((fd = open(parent, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) < 0)
    return -errno;
  if (fsync(fd) != 0)
    r = -errno;
  close(fd);
  return r;
}

/* mkdir with mode 0700; an existing directory is fine. A directory made
 * here is only durable once its parent is fsynced (with `sync`): the
 * message's new/ entry would be lost with it. */
static int md_mkdir1(const char *path, bool sync) {
  struct stat st;
  if (mkdir(path, 0700) == 0)
    return sync ? md_sync_parent(path) : 0;
  if (errno != EEXIST)
    return -errno;
  if (stat(path, &st) != 0)
    return -errno;
  return S_ISDIR(st.st_mode) ? 0 : -ENOTDIR;
}

/* mkdir -p DIR, then DIR/tmp, DIR/new, DIR/cur. */
static int md_mktree(const char *dir, bool sync) {
  char path[PATH_MAX];
  size_t n = strlen(dir);
  int r;

  if (n == 0)
    return -EINVAL;
  if (n >= sizeof path)
    return -ENAMETOOLONG;
  memcpy(path, dir, n + 1);
  for (size_t i = 1; i < n; i++) {
    if (path[i] != '/' || path[i - 1] == '/')
      continue;
    path[i] = '\0';
    r = md_mkdir1(path, sync);
    path[i] = '/';
    if (r < 0)
      return r;
  }
  if ((r = md_mkdir1(dir, sync)) < 0)
    return r;
  static const char *const subs[] = {"tmp", "new", "cur"};
  for (size_t i = 0; i < 3; i++) {
    if ((r = md_path(path, sizeof path, dir, subs[i], NULL)) < 0)
      return r;
    if ((r = md_mkdir1(path, sync)) < 0)
      return r;
  }
  return 0;
}

/*
 * "SECONDS.M<usec>P<pid>Q<seq>.<host>" — qmail's "time.MusecPpid" with
 * Courier's Q<deliveries> for several messages per process and
 * microsecond. Called from the loop and from pool threads (both
 * uv_gettimeofday and the counter are thread-safe).
 */
static void md_make_name(struct maildir_delivery *d) {
  uv_timeval64_t tv;
  unsigned long seq = atomic_fetch_add(&md_seq, 1) + 1;

  if (uv_gettimeofday(&tv) != 0) {
    tv.tv_sec = (int64_t)time(NULL);
    tv.tv_usec = 0;
  }
  snprintf(d->name, sizeof d->name, "%lld.M%ldP%ldQ%lu.%s",
           (long long)tv.tv_sec, (long)tv.tv_usec, d->ctx->pid, seq,
           d->ctx->host);
}

/* The host name for unique names: '/' → "\057", ':' → "\072" (the
 * separators a Maildir file name may not contain). */
static void md_host(char *out, size_t cap) {
  char raw[MD_HOST_MAX];
  size_t o = 0;

  if (gethostname(raw, sizeof raw) != 0 || raw[0] == '\0')
    snprintf(raw, sizeof raw, "localhost");
  raw[sizeof raw - 1] = '\0';
  for (const char *p = raw; *p != '\0' && o + 5 < cap; p++) {
    if (*p == '/' || *p == ':') {
      memcpy(out + o, *p == '/' ? "\\057" : "\\072", 4);
      o += 4;
    } else {
      out[o++] = *p;
    }
  }
  out[o] = '\0';
}

static bool md_nospace_err(int err) { return err == -ENOSPC || err == -EDQUOT; }

static void md_set_err(struct maildir_delivery *d, int err, const char *op) {
  if (d->err == 0) {
    d->err = err;
    d->err_op = op;
  }
}

/* Write all of buf at off (pool thread). */
static int md_write_all(int fd, const char *buf, size_t len, uint64_t off) {
  while (len > 0) {
    ssize_t n = pwrite(fd, buf, len, (off_t)off);
    if (n < 0) {
      if (errno == EINTR)
        continue;
      return -errno;
    }
    buf += n;
    len -= (size_t)n;
    off += (uint64_t)n;
  }
  return 0;
}

/* ---- freeing ------------------------------------------------------------- */

static void md_ctx_destroy(struct maildir_ctx *ctx) {
  for (size_t i = 0; i < ctx->ndevs; i++)
    close(ctx->devs[i].fd);
  free(ctx->devs);
  free(ctx);
}

static void md_free(struct maildir_delivery *d) {
  struct maildir_ctx *ctx = d->ctx;

  for (size_t i = 0; i < d->ndirs; i++)
    free(d->dirs[i]);
  free(d->dirs);
  free(d->spool);
  free(d->placed);
  free(d->buf);
  free(d);
  if (--ctx->live == 0 && ctx->freeing)
    md_ctx_destroy(ctx);
}

/* ---- open and flush (pool) ---------------------------------------------- */

/* Create the file in the tmp/ of the spool or DIRS[0] (pool thread),
 * under the directory's create lock (md_dirlock). */
static int md_open(struct maildir_delivery *d) {
  char path[PATH_MAX];
  int fd = -1, r = 0;
  bool made = false;

  for (int tries = 0; tries < 8; tries++) {
    if ((r = md_path(path, sizeof path, md_tmpbox(d), "tmp", d->name)) < 0)
      break;
    uv_mutex_t *lk = md_dirlock(md_tmpbox(d));
    md_lock(lk);
    fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    r = fd >= 0 ? 0 : -errno;
    md_unlock(lk);
    if (fd >= 0)
      break;
    if (r == -ENOENT && !made) {
      made = true; /* maildir not there yet: create it, once */
      if ((r = md_mktree(md_tmpbox(d), d->ctx->fsync)) < 0)
        break;
    } else if (r == -EEXIST) {
      md_make_name(d); /* someone else's file: take the next name */
    } else if (r != -EINTR) {
      break;
    }
  }
  if (fd < 0)
    return r < 0 ? r : -EEXIST;
  d->fd = fd;
  d->tmp_exists = true;
  return 0;
}

/* Write what is buffered, opening the file first if need be (pool). */
static void md_flush(struct maildir_delivery *d) {
  int r;

  if (d->err != 0)
    return;
  if (d->fd < 0 && (r = md_open(d)) < 0) {
    md_set_err(d, r, "open");
    return;
  }
  if (d->blen > 0) {
    if ((r = md_write_all(d->fd, d->buf, d->blen, d->off)) < 0) {
      md_set_err(d, r, "write");
      return;
    }
    d->off += d->blen;
  }
  d->blen = 0;
}

static void md_seal(struct maildir_delivery *d);
static void md_discard(struct maildir_delivery *d);

static void md_flush_work(uv_work_t *w) { md_flush(w->data); }

static void md_flush_after(uv_work_t *w, int status) {
  struct maildir_delivery *d = w->data;
  void (*cb)(void *, int) = d->wcb;

  d->busy = false;
  d->wcb = NULL;
  if (status < 0)
    md_set_err(d, status, "write");
  if (d->aborted) {
    md_discard(d);
    return;
  }
  /* A commit that came while the block was written (the caller did
   * not wait for cb): seal after telling it. Otherwise cb may commit or
   * abort itself (we are in a loop callback: not re-entrant). */
  bool then_seal = d->committed;
  cb(d->warg, d->err);
  if (then_seal)
    md_seal(d);
}

/* ---- commit: seal (pool) ------------------------------------------------- */

/* Copy the tmp file into DIR/tmp, fsync it, rename it into DIR/new (pool
 * thread): link(2) across file systems fails with EXDEV. */
static int md_copy_into(struct maildir_delivery *d, const char *src,
                        const char *dir, const char *dst_new) {
  char tmp[PATH_MAX];
  int in = -1, out = -1, r = 0;
  char *buf = NULL;

  if ((r = md_path(tmp, sizeof tmp, dir, "tmp", d->name)) < 0)
    return r;
  if ((in = open(src, O_RDONLY | O_CLOEXEC)) < 0)
    return -errno;
  out = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (out < 0) {
    r = -errno;
    goto done;
  }
  if ((buf = malloc(MD_COPY_BUF)) == NULL) {
    r = -ENOMEM;
    goto done;
  }
  for (uint64_t off = 0;;) {
    ssize_t n = read(in, buf, MD_COPY_BUF);
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0) {
      r = -errno;
      goto done;
    }
    if (n == 0)
      break;
    if ((r = md_write_all(out, buf, (size_t)n, off)) < 0)
      goto done;
    off += (uint64_t)n;
  }
  if (d->ctx->fsync && fsync(out) != 0) {
    r = -errno;
    goto done;
  }
  r = close(out) == 0 ? 0 : -errno;
  out = -1;
  if (r == 0 && rename(tmp, dst_new) != 0)
    r = -errno;
  /* The cycle's barrier is for the file systems it knows: this one's
   * new/ is made durable here (a rare path). */
  if (r == 0 && d->ctx->fsync && (r = md_sync_parent(dst_new)) < 0)
    unlink(dst_new);
done:
  free(buf);
  if (out >= 0)
    close(out);
  if (in >= 0)
    close(in);
  if (r < 0)
    unlink(tmp);
  return r;
}

/* Remove every name this delivery has given the message (pool thread). */
static void md_undo(struct maildir_delivery *d) {
  char path[PATH_MAX];

  for (size_t i = 0; i < d->ndirs; i++) {
    if (d->placed[i] &&
        md_path(path, sizeof path, d->dirs[i], "new", d->name) == 0 &&
        (unlink(path) == 0 || errno == ENOENT))
      d->placed[i] = false;
  }
  if (d->tmp_exists &&
      md_path(path, sizeof path, md_tmpbox(d), "tmp", d->name) == 0 &&
      (unlink(path) == 0 || errno == ENOENT))
    d->tmp_exists = false;
}

/* Give the file the name DIRS[i]/new/NAME: link (or copy) for i >= 1 or
 * from the spool, rename for i == 0 otherwise. A missing maildir is
 * created once (in the pool, at commit: only for accepted messages). */
static int md_place(struct maildir_delivery *d, size_t i, const char *tmp) {
  char dst[PATH_MAX];
  int r;

  if ((r = md_path(dst, sizeof dst, d->dirs[i], "new", d->name)) < 0)
    return r;
  for (int made = 0;; made++) {
    bool mv = i == 0 && d->spool == NULL;
    uv_mutex_t *lk = md_dirlock(d->dirs[i]);
    md_lock(lk);
    r = (mv ? rename(tmp, dst) : link(tmp, dst)) == 0 ? 0 : -errno;
    md_unlock(lk);
    if (r == -EXDEV && !mv)
      r = md_copy_into(d, tmp, d->dirs[i], dst);
    if (r != -ENOENT || made > 0)
      return r;
    if ((r = md_mktree(d->dirs[i], d->ctx->fsync)) < 0)
      return r;
  }
}

/* Give the written file its names: link into DIRS[1..]/new, rename into
 * DIRS[0]/new (pool). On failure everything it did is undone. */
static void md_place_all(struct maildir_delivery *d) {
  char tmp[PATH_MAX];
  int r;

  if ((r = md_path(tmp, sizeof tmp, md_tmpbox(d), "tmp", d->name)) < 0) {
    md_set_err(d, r, "rename");
    goto fail;
  }
  /* Extra directories first, the rename last: until the rename succeeds
   * the tmp file is still there to link from and to undo. */
  for (size_t i = 1; i < d->ndirs; i++) {
    if ((r = md_place(d, i, tmp)) < 0) {
      md_set_err(d, r, "link");
      goto fail;
    }
    d->placed[i] = true;
  }
  if ((r = md_place(d, 0, tmp)) < 0) {
    md_set_err(d, r, "rename");
    goto fail;
  }
  d->placed[0] = true;
  /* From the spool every place is a link: drop the spool's name (a
   * failure only leaves a file that start-up removes). */
  if (d->spool != NULL)
    unlink(tmp);
  d->tmp_exists = false;
  return;
fail:
  md_undo(d);
}

/* Write the rest and close the file (pool); with `sync`, fsync it first.
 * Notes the file system it is on (d->dev). */
static void md_close_file(struct maildir_delivery *d, bool sync) {
  struct stat st;

  md_flush(d); /* often the whole message: open, one write */
  if (d->fd < 0)
    return;
  if (d->err == 0) {
    if (fstat(d->fd, &st) == 0)
      d->dev = st.st_dev;
    else
      md_set_err(d, -errno, "stat");
  }
  if (d->err == 0 && sync && fsync(d->fd) != 0)
    md_set_err(d, -errno, "fsync");
  /* close() can report a deferred write error (NFS): it counts. */
  if (close(d->fd) != 0)
    md_set_err(d, -errno, "close");
  d->fd = -1;
}

/* A message that did not fit in the buffer (written in blocks): its own
 * fsync, then the cycle places it; without fsync it is placed here. */
static void md_seal_work(uv_work_t *w) {
  struct maildir_delivery *d = w->data;

  md_close_file(d, d->ctx->fsync);
  if (d->err != 0)
    md_undo(d);
  else if (!d->ctx->fsync)
    md_place_all(d);
}

/* ---- finishing ----------------------------------------------------------- */

static void md_finish(struct maildir_delivery *d) {
  const struct tern_reply *r = &md_ok;

  if (d->err == 0) {
    snprintf(d->detail, sizeof d->detail, "%s", d->name);
  } else {
    r = md_nospace_err(d->err) ? &md_nospace : &md_failed;
    snprintf(d->detail, sizeof d->detail, "%s %s: %s", d->err_op, d->name,
             uv_strerror(d->err));
  }
  if (d->done) /* NULL when the caller gave up after commit */
    d->done(d->done_arg, r, d->detail);
  md_free(d);
}

static void md_undo_work(uv_work_t *w) { md_undo(w->data); }

static void md_undo_after(uv_work_t *w, int status) {
  (void)status;
  md_finish(w->data);
}

/* A failure after the rename (a directory fsync): take the message out of
 * every new/ again, then answer. */
static void md_fail_late(struct maildir_delivery *d) {
  d->work.data = d;
  if (uv_queue_work(d->ctx->loop, &d->work, md_undo_work, md_undo_after) < 0) {
    md_undo(d); /* cannot happen with a valid loop; do not leave it */
    md_finish(d);
  }
}

/* ---- the cycle (see the top of this file) ------------------------------ */

/* The barrier descriptor for d's file system, opened if need be (cycle
 * job). *fresh says it was opened just now: after d's file was. NULL
 * with errno set if it cannot be had. */
static struct md_dev *md_dev_get(struct maildir_ctx *ctx,
                                 const struct maildir_delivery *d,
                                 bool *fresh) {
  char path[PATH_MAX];
  struct stat st;
  int r;

  *fresh = false;
  for (size_t i = 0; i < ctx->ndevs; i++)
    if (ctx->devs[i].dev == d->dev)
      return &ctx->devs[i];
  if ((r = md_path(path, sizeof path, md_tmpbox(d), "tmp", NULL)) < 0) {
    errno = -r;
    return NULL;
  }
  struct md_dev *n = realloc(ctx->devs, (ctx->ndevs + 1) * sizeof *n);
  if (n == NULL)
    return NULL;
  ctx->devs = n;
  int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0)
    return NULL;
  int e = fstat(fd, &st) != 0 ? errno : st.st_dev != d->dev ? EXDEV : 0;
  if (e != 0) { /* EXDEV: the directory was moved under us */
    close(fd);
    errno = e;
    return NULL;
  }
  n[ctx->ndevs] = (struct md_dev){.dev = d->dev, .fd = fd};
  *fresh = true;
  return &n[ctx->ndevs++];
}

/* Mark d's file system for this cycle's barrier (cycle job); 0 or
 * -errno. A descriptor opened after d's file vouches only for what
 * comes after: then d's file is fsynced on its own (fd still open). */
static int md_dev_touch(struct maildir_ctx *ctx, struct maildir_delivery *d,
                        int fd) {
  bool fresh;
  struct md_dev *v = md_dev_get(ctx, d, &fresh);

  if (v == NULL)
    return -errno;
  v->touched = true;
  if (fresh && fd >= 0 && fsync(fd) != 0)
    return -errno;
  return 0;
}

/* A message the cycle writes whole (cycle job). */
static void md_cycle_write(struct maildir_ctx *ctx,
                           struct maildir_delivery *d) {
  struct stat st;
  int r;

  md_flush(d);
  if (d->fd >= 0 && d->err == 0) {
    if (fstat(d->fd, &st) != 0) {
      md_set_err(d, -errno, "stat");
    } else {
      d->dev = st.st_dev;
      if (ctx->fsync && (r = md_dev_touch(ctx, d, d->fd)) < 0)
        md_set_err(d, r, "fsync");
    }
  }
  if (d->fd >= 0) {
    if (close(d->fd) != 0)
      md_set_err(d, -errno, "close");
    d->fd = -1;
  }
  if (d->err != 0)
    md_undo(d);
  else if (!ctx->fsync)
    md_place_all(d); /* nothing to wait for */
}

/* A message whose data is durable: its names (cycle job). The file
 * system's descriptor exists before the names do. */
static void md_cycle_place(struct maildir_ctx *ctx,
                           struct maildir_delivery *d) {
  int r = md_dev_touch(ctx, d, -1);

  if (r < 0) {
    md_set_err(d, r, "syncfs");
    md_undo(d);
    return;
  }
  md_place_all(d);
}

static void md_cycle_work(uv_work_t *w) {
  struct maildir_ctx *ctx = w->data;
  struct maildir_delivery *d;

  for (d = ctx->j_place; d != NULL; d = d->cnext)
    md_cycle_place(ctx, d);
  for (d = ctx->j_write; d != NULL; d = d->cnext)
    md_cycle_write(ctx, d);
  if (!ctx->fsync)
    return;
  for (size_t i = 0; i < ctx->ndevs; i++) {
    struct md_dev *v = &ctx->devs[i];
    if (v->touched)
      v->status = syncfs(v->fd) == 0 ? 0 : -errno;
  }
  /* What the barrier could not vouch for fails, and is undone. */
  for (int pass = 0; pass < 2; pass++) {
    for (d = pass ? ctx->j_write : ctx->j_place; d != NULL; d = d->cnext) {
      if (d->err != 0)
        continue;
      for (size_t i = 0; i < ctx->ndevs; i++) {
        if (ctx->devs[i].dev == d->dev && ctx->devs[i].status < 0) {
          md_set_err(d, ctx->devs[i].status, "syncfs");
          md_undo(d);
        }
      }
    }
  }
  for (size_t i = 0; i < ctx->ndevs; i++) {
    ctx->devs[i].touched = false;
    ctx->devs[i].status = 0;
  }
}

static void md_cycle_after(uv_work_t *w, int status);

/* Start a cycle if none runs and something waits (loop). */
static void md_cycle_kick(struct maildir_ctx *ctx) {
  if (ctx->cycling || (ctx->to_write == NULL && ctx->to_place == NULL))
    return;
  ctx->cycling = true;
  ctx->j_write = ctx->to_write;
  ctx->j_place = ctx->to_place;
  ctx->to_write = ctx->to_place = NULL;
  ctx->cycle.data = ctx;
  int r = uv_queue_work(ctx->loop, &ctx->cycle, md_cycle_work,
                        md_cycle_after);
  if (r < 0) { /* cannot happen with a valid loop */
    md_cycle_work(&ctx->cycle);
    md_cycle_after(&ctx->cycle, 0);
  }
}

static void md_cycle_after(uv_work_t *w, int status) {
  struct maildir_ctx *ctx = w->data;
  struct maildir_delivery *placed = ctx->j_place, *written = ctx->j_write;
  struct maildir_delivery *finish = NULL, *d, *next;

  (void)status; /* never cancelled */
  ctx->cycling = false;
  ctx->j_place = ctx->j_write = NULL;
  if (ctx->fsync && (placed != NULL || written != NULL))
    ctx->barriers++;
  /* Written and durable: placed by the next cycle. Queued before any
   * answer below, which may commit more and start that cycle. */
  for (d = written; d != NULL; d = next) {
    next = d->cnext;
    if (d->err == 0 && ctx->fsync) {
      d->cnext = ctx->to_place;
      ctx->to_place = d;
    } else {
      d->cnext = finish;
      finish = d;
    }
  }
  md_cycle_kick(ctx);
  ctx->live++; /* the answers may free the last delivery */
  for (int pass = 0; pass < 2; pass++) {
    for (d = pass ? finish : placed; d != NULL; d = next) {
      next = d->cnext;
      d->busy = false;
      md_finish(d);
    }
  }
  if (--ctx->live == 0 && ctx->freeing)
    md_ctx_destroy(ctx);
}

static void md_seal_after(uv_work_t *w, int status) {
  struct maildir_delivery *d = w->data;
  struct maildir_ctx *ctx = d->ctx;

  d->busy = false;
  if (status < 0) { /* the job did not run: nothing was placed yet */
    md_set_err(d, status, "fsync");
    if (d->fd >= 0)
      close(d->fd); /* not reached with a valid loop */
    d->fd = -1;
    md_fail_late(d);
    return;
  }
  if (d->err != 0 || !ctx->fsync) {
    md_finish(d);
    return;
  }
  d->busy = true;
  d->cnext = ctx->to_place;
  ctx->to_place = d;
  md_cycle_kick(ctx);
}

/* Commit: a message still all in the buffer goes to the cycle; one
 * already partly written is finished by a job of its own. */
static void md_seal(struct maildir_delivery *d) {
  struct maildir_ctx *ctx = d->ctx;

  d->busy = true;
  if (d->fd < 0 && !d->tmp_exists && d->err == 0) {
    d->cnext = ctx->to_write;
    ctx->to_write = d;
    md_cycle_kick(ctx);
    return;
  }
  d->work.data = d;
  int r = uv_queue_work(ctx->loop, &d->work, md_seal_work, md_seal_after);
  if (r < 0)
    md_seal_after(&d->work, r);
}

/* ---- abort --------------------------------------------------------------- */

static void md_discard_work(uv_work_t *w) {
  struct maildir_delivery *d = w->data;
  if (d->fd >= 0)
    close(d->fd);
  d->fd = -1;
  md_undo(d);
}

static void md_discard_after(uv_work_t *w, int status) {
  (void)status;
  md_free(w->data);
}

static void md_discard(struct maildir_delivery *d) {
  d->busy = true;
  d->work.data = d;
  if (uv_queue_work(d->ctx->loop, &d->work, md_discard_work, md_discard_after) <
      0) {
    md_discard_work(&d->work);
    md_free(d);
  }
}

/* ---- public -------------------------------------------------------------- */

int maildir_ctx_new(struct maildir_ctx **out, uv_loop_t *loop, bool fsync) {
  struct maildir_ctx *ctx = calloc(1, sizeof *ctx);

  if (ctx == NULL)
    return -ENOMEM;
  ctx->loop = loop;
  ctx->fsync = fsync;
  md_host(ctx->host, sizeof ctx->host);
  ctx->pid = (long)getpid();
  *out = ctx;
  return 0;
}

void maildir_ctx_free(struct maildir_ctx *ctx) {
  if (ctx == NULL)
    return;
  if (ctx->live > 0)
    ctx->freeing = true; /* the last delivery frees it */
  else
    md_ctx_destroy(ctx);
}

unsigned long maildir_ctx_test_barriers(const struct maildir_ctx *ctx) {
  return ctx->barriers;
}

int maildir_prepare(const char *dir, bool clean_tmp) {
  char path[PATH_MAX];
  int r;

  if ((r = md_mktree(dir, true)) < 0)
    return r;
  if (!clean_tmp)
    return 0;
  if ((r = md_path(path, sizeof path, dir, "tmp", NULL)) < 0)
    return r;
  DIR *dp = opendir(path);
  if (dp == NULL)
    return -errno;
  int dfd = dirfd(dp);
  struct dirent *de;
  r = 0;
  while ((errno = 0, de = readdir(dp)) != NULL) {
    struct stat st;
    if (fstatat(dfd, de->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0)
      continue; /* vanished meanwhile */
    if (S_ISREG(st.st_mode) && unlinkat(dfd, de->d_name, 0) != 0 &&
        errno != ENOENT && r == 0)
      r = -errno;
  }
  if (errno != 0 && r == 0)
    r = -errno;
  closedir(dp);
  return r;
}

int maildir_begin(struct maildir_ctx *ctx, const char *spool,
                  const char *const *dirs, size_t ndirs, const char *header,
                  size_t hlen, struct maildir_delivery **out) {
  struct maildir_delivery *d;
  int r = -ENOMEM;

  if (ctx == NULL || dirs == NULL || ndirs == 0 || (hlen > 0 && !header))
    return -EINVAL;
  if ((d = calloc(1, sizeof *d)) == NULL)
    return -ENOMEM;
  d->ctx = ctx;
  d->fd = -1;
  if ((d->dirs = calloc(ndirs, sizeof *d->dirs)) == NULL ||
      (d->placed = calloc(ndirs, sizeof *d->placed)) == NULL ||
      (d->buf = malloc(hlen > MD_WBUF ? hlen : MD_WBUF)) == NULL ||
      (spool != NULL && (d->spool = md_strdup(spool)) == NULL))
    goto fail;
  /* The same directory twice would make link() fail with EEXIST: keep
   * the first of each (spelled the same; the caller normalises). */
  for (size_t i = 0; i < ndirs; i++) {
    bool dup = false;
    if (dirs[i] == NULL || dirs[i][0] == '\0') {
      r = -EINVAL;
      goto fail;
    }
    for (size_t j = 0; j < d->ndirs && !dup; j++)
      dup = strcmp(d->dirs[j], dirs[i]) == 0;
    if (dup)
      continue;
    if ((d->dirs[d->ndirs] = md_strdup(dirs[i])) == NULL)
      goto fail;
    d->ndirs++;
  }
  d->bcap = hlen > MD_WBUF ? hlen : MD_WBUF;
  if (hlen > 0)
    memcpy(d->buf, header, hlen);
  d->blen = hlen;
  md_make_name(d);
  d->work.data = d;
  ctx->live++;
  *out = d;
  return 0;

fail:
  for (size_t i = 0; d->dirs != NULL && i < ndirs; i++)
    free(d->dirs[i]);
  free(d->dirs);
  free(d->spool);
  free(d->placed);
  free(d->buf);
  free(d);
  return r;
}

int maildir_write(struct maildir_delivery *d, const char *buf, size_t len,
                  void (*cb)(void *arg, int status), void *arg) {
  if (d == NULL || cb == NULL || (len > 0 && buf == NULL) || len > UINT_MAX)
    return -EINVAL;
  if (d->committed || d->aborted)
    return -EINVAL;
  if (d->busy)
    return -EBUSY;
  if (d->err != 0)
    return d->err;
  /* Copied: the flush runs in the pool and may outlive the caller's
   * buffer (an abort leaves it running). */
  if (d->blen + len > d->bcap) {
    size_t cap = d->blen + len;
    char *n = realloc(d->buf, cap);
    if (n == NULL)
      return -ENOMEM;
    d->buf = n;
    d->bcap = cap;
  }
  if (len > 0)
    memcpy(d->buf + d->blen, buf, len);
  d->blen += len;
  if (d->blen < MD_WBUF)
    return 1; /* taken; written with the next block or at commit */
  d->wcb = cb;
  d->warg = arg;
  d->busy = true;
  int r = uv_queue_work(d->ctx->loop, &d->work, md_flush_work, md_flush_after);
  if (r < 0) {
    d->busy = false;
    d->wcb = NULL;
    md_set_err(d, r, "write"); /* a hole in the message: never commit it */
  }
  return r;
}

void maildir_commit(struct maildir_delivery *d, deliver_done_fn done,
                    void *arg) {
  d->committed = true;
  d->done = done;
  d->done_arg = arg;
  if (!d->busy)
    md_seal(d);
  /* else: the block being written seals when it is done */
}

void maildir_abort(struct maildir_delivery *d) {
  if (d == NULL || d->aborted)
    return;
  if (d->committed) {
    /* The commit finishes on its own (the message may land in new/; its
     * sender was not told 250, so at worst it comes again), but the
     * caller is gone: `done` must not be called. */
    d->done = NULL;
    return;
  }
  d->aborted = true;
  if (d->busy)
    return; /* the flush in flight discards when it ends */
  if (d->fd < 0 && !d->tmp_exists)
    md_free(d); /* nothing on disk yet */
  else
    md_discard(d);
  /* else: the request in flight discards when it ends */
}

/* ---- the delivery interface (deliver_ops) ------------------------------- */

/*
 * The directories of a message: one per distinct expansion of the
 * template (recipients.h spells each name), and with a template the
 * spool its file waits in until the message is accepted, so that a
 * recipient whose message is not accepted gets no directory. Nothing is
 * created here: maildir_begin opens the file and makes missing maildirs
 * in the thread pool.
 */
static int md_dirs_of(const char *tpl, const struct deliver_msg *m,
                      char **dirs, size_t *nd, char *spool, size_t scap) {
  char path[PATH_MAX];

  *nd = 0;
  for (size_t i = 0; i < m->nrcpts; i++) {
    bool seen = false;
    if (rcpt_expand_maildir(tpl, m->rcpts[i], path, sizeof path) != 0)
      return -ENAMETOOLONG; /* the session refused it at RCPT */
    for (size_t k = 0; k < *nd && !seen; k++)
      seen = strcmp(dirs[k], path) == 0;
    if (seen)
      continue;
    if ((dirs[*nd] = md_strdup(path)) == NULL)
      return -ENOMEM;
    (*nd)++;
  }
  if (strchr(tpl, '%') != NULL &&
      rcpt_template_spool(tpl, spool, scap) != 0)
    return -ENAMETOOLONG;
  return 0;
}

static int mdo_begin(const struct deliver_target *t,
                     const struct deliver_msg *m, const struct deliver_cbs *cb,
                     void *arg, struct delivery **out,
                     struct tern_reply *refusal) {
  char spool[PATH_MAX] = "";
  size_t nd = 0;
  char **dirs = calloc(m->nrcpts ? m->nrcpts : 1, sizeof *dirs);
  struct maildir_delivery *d = NULL;
  int r = dirs && t->md ? md_dirs_of(t->spec, m, dirs, &nd, spool,
                                     sizeof spool)
                        : -ENOMEM;

  if (r == 0)
    r = maildir_begin(t->md, spool[0] ? spool : NULL,
                      (const char *const *)dirs, nd, m->header, m->hlen, &d);
  for (size_t k = 0; k < nd; k++)
    free(dirs[k]);
  free(dirs);
  if (r != 0) {
    *refusal = md_failed;
    return r;
  }
  d->ocb = cb;
  d->oarg = arg;
  *out = (struct delivery *)d;
  return 0;
}

static int mdo_write(struct delivery *dv, const char *buf, size_t len) {
  struct maildir_delivery *d = (struct maildir_delivery *)dv;
  int r = maildir_write(d, buf, len, d->ocb->written, d->oarg);
  /* maildir_write: 1 buffered, 0 a block is being written */
  return r == 1 ? 0 : r == 0 ? DELIVER_LATER : r;
}

static void mdo_done(void *arg, const struct tern_reply *r,
                     const char *detail) {
  struct maildir_delivery *d = arg;
  d->ocb->result(d->oarg, DELIVER_ALL, r, detail);
}

static void mdo_commit(struct delivery *dv) {
  struct maildir_delivery *d = (struct maildir_delivery *)dv;
  maildir_commit(d, mdo_done, d);
}

static void mdo_abort(struct delivery *dv) {
  maildir_abort((struct maildir_delivery *)dv);
}

const struct deliver_ops maildir_ops = {true, mdo_begin, mdo_write,
                                        mdo_commit, mdo_abort};
