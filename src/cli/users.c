/*
 * `tern serve` users file (see users.h): load, verify, reload.
 */
#include "users.h"

#include <crypt.h>
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fileerr.h"

struct user_entry {
  char *name;
  char *hash;
  int line;
};

struct users {
  struct user_entry *v;
  size_t n;
  /* what an unknown user is checked against: a real hash of the file
   * (same method and cost as the others), or a fresh yescrypt setting */
  char *dummy;
};

static bool is_space(int ch) {
  return ch == ' ' || ch == '\t' || ch == '\r' || ch == '\n' || ch == '\v' ||
         ch == '\f';
}

static bool name_ok(const char *s) {
  size_t n = strlen(s);
  if (n == 0 || n > 255)
    return false;
  for (; *s; s++) {
    unsigned char ch = (unsigned char)*s;
    if (ch <= 0x20 || ch == 0x7f)
      return false;
  }
  return true;
}

/* A crypt(3) hash of a method we accept, with its parts in place. */
static bool hash_ok(const char *h) {
  static const char *const prefixes[] = {"$y$", "$gy$", "$7$",  "$6$",
                                         "$5$", "$2b$", "$2y$", "$2a$"};
  bool known = false;
  for (size_t i = 0; i < sizeof prefixes / sizeof prefixes[0]; i++)
    if (strncmp(h, prefixes[i], strlen(prefixes[i])) == 0)
      known = true;
  if (!known)
    return false;
  size_t dollars = 0;
  for (const char *p = h; *p; p++) {
    unsigned char ch = (unsigned char)*p;
    if (ch == '$') {
      dollars++;
      continue;
    }
    if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
          (ch >= '0' && ch <= '9') || ch == '.' || ch == '/' || ch == '=' ||
          ch == ','))
      return false;
  }
  const char *last = strrchr(h, '$');
  if (dollars < 3 || last[1] == '\0')
    return false;
#ifdef CRYPT_CHECKSALT_AVAILABLE
  int cs = crypt_checksalt(h);
  if (cs == CRYPT_SALT_INVALID || cs == CRYPT_SALT_METHOD_DISABLED)
    return false;
#endif
  return true;
}

static int by_name(const void *a, const void *b) {
  const struct user_entry *x = a, *y = b;
  int r = strcmp(x->name, y->name);
  return r ? r : (x->line > y->line) - (x->line < y->line);
}

void users_free(struct users *u) {
  if (u == NULL)
    return;
  for (size_t i = 0; i < u->n; i++) {
    free(u->v[i].name);
    free(u->v[i].hash);
  }
  free(u->v);
  free(u->dummy);
  free(u);
}

size_t users_count(const struct users *u) { return u ? u->n : 0; }

/*
 * One line of the file, trimmed, into name and hash (NUL-terminated in
 * place). Returns 1 for a user line, 0 for a blank line or a comment,
 * -1 with the message in err.
 */
static int parse_line(char *buf, size_t n, const char *path, int line,
                      char **name, const char **hash, char *err, size_t cap) {
  if (strlen(buf) != n)
    return file_error(err, cap, path, line, "NUL byte in the file");
  while (n > 0 && is_space((unsigned char)buf[n - 1]))
    buf[--n] = '\0';
  char *p = buf;
  while (is_space((unsigned char)*p))
    p++;
  if (*p == '\0' || *p == '#')
    return 0;
  char *colon = strchr(p, ':');
  if (colon == NULL)
    return file_error(err, cap, path, line,
                      "expected 'user:hash' (make one with tern passwd)");
  *colon = '\0';
  if (!name_ok(p))
    return file_error(err, cap, path, line,
                      "bad user name '%s': 1 to 255 characters, no spaces "
                      "or control characters",
                      p);
  if (!hash_ok(colon + 1))
    return file_error(err, cap, path, line,
                      "bad hash for user '%s': expected a crypt(3) hash "
                      "like $y$... (yescrypt), $6$, $5$ or $2b$ (make one "
                      "with tern passwd)",
                      p);
  *name = p;
  *hash = colon + 1;
  return 1;
}

/* Append a copy of the entry. Returns 0, or -1 when memory runs out. */
static int add_entry(struct users *u, size_t *vcap, const char *name,
                     const char *hash, int line) {
  if (u->n == *vcap) {
    size_t ncap = *vcap ? *vcap * 2 : 16;
    struct user_entry *nv = realloc(u->v, ncap * sizeof *nv);
    if (nv == NULL)
      return -1;
    u->v = nv;
    *vcap = ncap;
  }
  struct user_entry *e = &u->v[u->n];
  e->name = strdup(name);
  e->hash = strdup(hash);
  e->line = line;
  u->n++;
  return e->name == NULL || e->hash == NULL ? -1 : 0;
}

/* Every line of f into u. Returns 0 or -1 with the message in err. */
static int read_entries(FILE *f, const char *path, struct users *u, char *err,
                        size_t cap) {
  char *buf = NULL, *name = NULL;
  const char *hash = NULL;
  size_t bufcap = 0, vcap = 0;
  int line = 0, rc = 0;
  ssize_t got;
  errno = 0;
  while (rc == 0 && (got = getline(&buf, &bufcap, f)) >= 0) {
    line++;
    int r = parse_line(buf, (size_t)got, path, line, &name, &hash, err, cap);
    if (r < 0)
      rc = -1;
    else if (r > 0 && add_entry(u, &vcap, name, hash, line) != 0)
      rc = file_error(err, cap, path, 0, "out of memory");
    errno = 0;
  }
  free(buf);
  if (rc == 0 && ferror(f))
    rc = file_error(err, cap, path, 0, "cannot read: %s",
                    strerror(errno ? errno : EIO));
  return rc;
}

/* Sorted by name for find(); a name given twice is an error. */
static int sort_entries(struct users *u, const char *path, char *err,
                        size_t cap) {
  if (u->n > 1)
    qsort(u->v, u->n, sizeof *u->v, by_name);
  for (size_t i = 1; i < u->n; i++)
    if (strcmp(u->v[i - 1].name, u->v[i].name) == 0)
      return file_error(err, cap, path, u->v[i].line,
                        "user '%s' given twice (first on line %d)",
                        u->v[i].name, u->v[i - 1].line);
  return 0;
}

/* What an unknown user's password is hashed with, so that the answer
 * takes as long as for a known one. */
static int make_dummy(struct users *u) {
  if (u->n > 0) {
    u->dummy = strdup(u->v[0].hash);
  } else {
    char setting[CRYPT_GENSALT_OUTPUT_SIZE];
    const char *s =
        crypt_gensalt_rn("$y$", 0, NULL, 0, setting, (int)sizeof setting);
    u->dummy = strdup(s ? s : "$6$tern.dummy.salt");
  }
  return u->dummy == NULL ? -1 : 0;
}

int users_load(const char *path, struct users **out, char *err, size_t cap) {
  *out = NULL;
  if (err != NULL && cap > 0)
    err[0] = '\0';
  FILE *f = fopen(path, "r");
  if (f == NULL)
    return file_error(err, cap, path, 0, "cannot open: %s", strerror(errno));
  struct users *u = calloc(1, sizeof *u);
  int rc;
  if (u == NULL)
    rc = file_error(err, cap, path, 0, "out of memory");
  else if ((rc = read_entries(f, path, u, err, cap)) == 0 &&
           (rc = sort_entries(u, path, err, cap)) == 0 && make_dummy(u) != 0)
    rc = file_error(err, cap, path, 0, "out of memory");
  fclose(f);
  if (rc != 0) {
    users_free(u);
    return -1;
  }
  *out = u;
  return 0;
}

static const struct user_entry *find(const struct users *u, const char *user) {
  size_t lo = 0, hi = u->n;
  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    int r = strcmp(user, u->v[mid].name);
    if (r == 0)
      return &u->v[mid];
    if (r < 0)
      hi = mid;
    else
      lo = mid + 1;
  }
  return NULL;
}

/* Equal strings? Time depends on the lengths only. */
static bool ct_equal(const char *a, const char *b) {
  size_t la = strlen(a), lb = strlen(b);
  volatile unsigned char d = (unsigned char)(la != lb);
  for (size_t i = 0; i < lb; i++)
    d |= (unsigned char)((i < la ? (unsigned char)a[i] : 0) ^
                         (unsigned char)b[i]);
  return d == 0;
}

int users_check(const struct users *u, const char *user, const char *password) {
  if (u == NULL || user == NULL || password == NULL)
    return -1;
  const struct user_entry *e = find(u, user);
  const char *hash = e ? e->hash : u->dummy;
  struct crypt_data *cd = calloc(1, sizeof *cd);
  if (cd == NULL)
    return -1;
  const char *r = crypt_rn(password, hash, cd, (int)sizeof *cd);
  bool ok = r != NULL && r[0] != '*' && ct_equal(r, hash);
  explicit_bzero(cd, sizeof *cd);
  free(cd);
  return (ok && e != NULL) ? 0 : -1;
}
