/*
 * What the tests of tests/deliver share: CHECK, a checked snprintf, a
 * whole file read, a scratch tree removed.
 */
#ifndef TERN_TESTS_DELIVER_CHECK_H
#define TERN_TESTS_DELIVER_CHECK_H

#include <ftw.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define CHECK(c)                                                               \
  do {                                                                         \
    if (!(c)) {                                                                \
      fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #c);    \
      exit(1);                                                                 \
    }                                                                          \
  } while (0)

/* snprintf that must fit. */
__attribute__((format(printf, 3, 4), unused)) static void
pathf(char *buf, size_t cap, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(buf, cap, fmt, ap);
  va_end(ap);
  CHECK(n > 0 && (size_t)n < cap);
}

/* The whole file (NUL-terminated; free it), its length in *len. */
__attribute__((unused)) static char *read_file(const char *path, size_t *len) {
  FILE *f = fopen(path, "rb");
  CHECK(f != NULL);
  CHECK(fseek(f, 0, SEEK_END) == 0);
  long n = ftell(f);
  CHECK(n >= 0);
  rewind(f);
  char *p = malloc((size_t)n + 1);
  CHECK(p != NULL);
  CHECK(fread(p, 1, (size_t)n, f) == (size_t)n);
  p[n] = '\0';
  fclose(f);
  *len = (size_t)n;
  return p;
}

static int check_rm_one(const char *p, const struct stat *st, int flag,
                        struct FTW *f) {
  (void)st, (void)flag, (void)f;
  remove(p);
  return 0;
}

/* rm -rf dir */
__attribute__((unused)) static void rm_tree(const char *dir) {
  nftw(dir, check_rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

/* A scratch directory NAME-XXXXXX under $TMPDIR (or /tmp) into base. */
__attribute__((unused)) static void scratch_dir(char *base, size_t cap,
                                                const char *name) {
  const char *tmp = getenv("TMPDIR");
  pathf(base, cap, "%s/%s-XXXXXX", tmp && tmp[0] ? tmp : "/tmp", name);
  CHECK(mkdtemp(base) != NULL);
}

struct check_case {
  const char *name;
  void (*fn)(void);
};

/*
 * main() of a test driver: a scratch directory NAME-XXXXXX under $TMPDIR
 * into base, setup(), the case named argv[1] ("all": every one), then
 * teardown(). Returns the exit status.
 */
__attribute__((unused)) static int
check_main(int argc, char **argv, char *base, size_t cap, const char *name,
           const struct check_case *c, size_t n, void (*setup)(void),
           void (*teardown)(void)) {
  const char *want = argc > 1 ? argv[1] : "all";
  int ran = 0;
  scratch_dir(base, cap, name);
  setup();
  for (size_t i = 0; i < n; i++) {
    if (strcmp(want, "all") != 0 && strcmp(want, c[i].name) != 0)
      continue;
    printf("== %s\n", c[i].name);
    fflush(stdout);
    c[i].fn();
    ran++;
  }
  if (ran == 0) {
    fprintf(stderr, "no test named %s\n", want);
    return 1;
  }
  teardown();
  printf("ok (%d)\n", ran);
  return 0;
}

#endif
