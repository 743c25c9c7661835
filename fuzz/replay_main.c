/*
 * replay_main.c — a main() for libFuzzer targets without libFuzzer.
 *
 * Linked with one fuzz_*.c file it gives <name>_replay, built with any
 * compiler in every build: it runs LLVMFuzzerTestOneInput once on each input
 * file, so the corpora (and any crash reproducer) run as ordinary CTest cases,
 * under ASan/UBSan in the sanitizer build.
 *
 *   fuzz_reply_replay FILE|DIR...
 *
 * Directories are walked recursively; names starting with '.' are skipped
 * (.gitkeep, editor files). Prints "N inputs replayed" and exits 0; exits 1
 * if a path cannot be read (a crash in the target ends the process on its
 * own). LLVMFuzzerInitialize is called first if the target defines it.
 */
#define _POSIX_C_SOURCE 200809L

#include <dirent.h>
#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv) __attribute__((weak));

static unsigned long replayed;

/* Reads the whole file into a fresh heap buffer, so ASan sees an overread
 * one past its end. Returns 0 or -1 with a message printed. */
static int replay_file(const char *path) {
  FILE *f = fopen(path, "rb");
  if (f == NULL) {
    fprintf(stderr, "replay: %s: %s\n", path, strerror(errno));
    return -1;
  }
  size_t cap = 4096, len = 0;
  uint8_t *buf = malloc(cap);
  if (buf == NULL) {
    fclose(f);
    fprintf(stderr, "replay: %s: out of memory\n", path);
    return -1;
  }
  for (;;) {
    if (len == cap) {
      uint8_t *nbuf = cap > SIZE_MAX / 2 ? NULL : realloc(buf, cap * 2);
      if (nbuf == NULL) {
        free(buf);
        fclose(f);
        fprintf(stderr, "replay: %s: out of memory\n", path);
        return -1;
      }
      buf = nbuf;
      cap *= 2;
    }
    size_t n = fread(buf + len, 1, cap - len, f);
    len += n;
    if (n == 0)
      break;
  }
  int err = ferror(f);
  fclose(f);
  if (err) {
    free(buf);
    fprintf(stderr, "replay: %s: read error\n", path);
    return -1;
  }

  /* An exact-size copy: the buffer ends where the input ends. */
  uint8_t *input = malloc(len ? len : 1);
  if (input == NULL) {
    free(buf);
    fprintf(stderr, "replay: %s: out of memory\n", path);
    return -1;
  }
  if (len)
    memcpy(input, buf, len);
  free(buf);
  LLVMFuzzerTestOneInput(input, len);
  free(input);
  replayed++;
  return 0;
}

static int compare_names(const void *a, const void *b) {
  return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static int replay_path(const char *path);

/* Replays every entry of a directory, in name order (reproducible runs). */
static int replay_dir(const char *path) {
  DIR *d = opendir(path);
  if (d == NULL) {
    fprintf(stderr, "replay: %s: %s\n", path, strerror(errno));
    return -1;
  }
  char **names = NULL;
  size_t n = 0, cap = 0;
  int rc = 0;
  struct dirent *e;
  while ((e = readdir(d)) != NULL) {
    if (e->d_name[0] == '.')
      continue;
    if (n == cap) {
      size_t ncap = cap ? cap * 2 : 64;
      char **nn = realloc(names, ncap * sizeof *names);
      if (nn == NULL) {
        rc = -1;
        break;
      }
      names = nn;
      cap = ncap;
    }
    size_t plen = strlen(path) + 1 + strlen(e->d_name) + 1;
    names[n] = malloc(plen);
    if (names[n] == NULL) {
      rc = -1;
      break;
    }
    snprintf(names[n], plen, "%s/%s", path, e->d_name);
    n++;
  }
  closedir(d);
  if (rc != 0)
    fprintf(stderr, "replay: %s: out of memory\n", path);
  else if (n > 0)
    qsort(names, n, sizeof *names, compare_names);
  for (size_t i = 0; i < n; i++) {
    if (rc == 0 && replay_path(names[i]) != 0)
      rc = -1;
    free(names[i]);
  }
  free(names);
  return rc;
}

static int replay_path(const char *path) {
  struct stat st;
  if (stat(path, &st) != 0) {
    fprintf(stderr, "replay: %s: %s\n", path, strerror(errno));
    return -1;
  }
  if (S_ISDIR(st.st_mode))
    return replay_dir(path);
  return replay_file(path);
}

int main(int argc, char **argv) {
  if (LLVMFuzzerInitialize != NULL)
    LLVMFuzzerInitialize(&argc, &argv);
  if (argc < 2) {
    fprintf(stderr, "usage: %s FILE|DIR...\n", argv[0]);
    return 2;
  }
  int rc = 0;
  for (int i = 1; i < argc; i++) {
    if (replay_path(argv[i]) != 0)
      rc = 1;
  }
  printf("%lu inputs replayed\n", replayed);
  return rc;
}
