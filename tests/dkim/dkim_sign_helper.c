/*
 * A command around tern/dkim.h for tests/dkim/test_dkim.py:
 *
 *   dkim_sign_helper [-c SIZE | -e] KEY... < message > fields
 *
 * KEY is "domain,selector,keyfile" or "domain,selector,keyfile,headers".
 * The message (as it will be sent: CRLF lines) is fed in pieces of SIZE
 * octets (default: whole); the DKIM-Signature fields go to stdout, why a
 * message is not signed to stderr ("unsigned: why"). With -e it is
 * signed once for every piece size from 1 to its length, each result
 * after a line "=== SIZE".
 * Exit: 0 (signed or not), 1 signing failed, 2 the keys did not load
 * (stderr: the error).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <tern/dkim.h>

static int sign(struct tern_dkim_signer *s, const char *msg, size_t len,
                size_t piece) {
  struct tern_dkim_sign *c;
  if (tern_dkim_sign_new(s, &c) != 0)
    return 1;
  for (size_t off = 0; off < len; off += piece) {
    size_t n = len - off < piece ? len - off : piece;
    if (tern_dkim_sign_write(c, msg + off, n) != 0) {
      tern_dkim_sign_abort(c);
      return 1;
    }
  }
  char *fields;
  const char *why;
  int rc = tern_dkim_sign_end(c, &fields, &why);
  if (rc != 0) {
    fprintf(stderr, "failed: %s: %s\n", tern_err_name(rc), why ? why : "");
    return 1;
  }
  if (!*fields)
    fprintf(stderr, "unsigned: %s\n", why ? why : "?");
  fputs(fields, stdout);
  free(fields);
  return 0;
}

int main(int argc, char **argv) {
  size_t piece = 0;
  int every = 0, a = 1;
  if (a < argc && strcmp(argv[a], "-c") == 0 && a + 1 < argc) {
    piece = strtoul(argv[a + 1], NULL, 10);
    a += 2;
  } else if (a < argc && strcmp(argv[a], "-e") == 0) {
    every = 1;
    a++;
  }
  size_t nk = (size_t)(argc - a);
  struct tern_dkim_key *keys = calloc(nk ? nk : 1, sizeof *keys);
  for (size_t i = 0; i < nk; i++) {
    char *spec = argv[a + i];
    keys[i].domain = strsep(&spec, ",");
    keys[i].selector = strsep(&spec, ",");
    keys[i].key_file = strsep(&spec, ",");
    keys[i].headers = spec; /* the rest, or NULL */
  }
  char err[512];
  struct tern_dkim_signer *s;
  int rc = tern_dkim_signer_new(&s, keys, nk, err, sizeof err);
  if (rc != 0) {
    fprintf(stderr, "%s: %s\n", tern_err_name(rc), err);
    free(keys);
    return 2;
  }
  size_t cap = 1 << 16, len = 0, n;
  char *msg = malloc(cap);
  while ((n = fread(msg + len, 1, cap - len, stdin)) > 0) {
    len += n;
    if (len == cap)
      msg = realloc(msg, cap *= 2);
  }
  int ret = 0;
  if (every) {
    for (size_t p = 1; p <= len && ret == 0; p++) {
      printf("=== %zu\n", p);
      ret = sign(s, msg, len, p);
    }
  } else {
    ret = sign(s, msg, len, piece ? piece : (len ? len : 1));
  }
  free(msg);
  free(keys);
  tern_dkim_signer_free(s);
  return ret;
}
