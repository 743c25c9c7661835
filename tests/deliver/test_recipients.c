/*
 * Tests for src/cli/recipients.c (pure functions and the recipients
 * file): local parts unquoted, Maildir names spelled without collisions
 * (checked exhaustively over short strings), pipe command lines, the
 * option-like local part check. `test_recipients` runs them all.
 */
#define _GNU_SOURCE
#include "check.h"
#include "recipients.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void expect_local(const char *addr, const char *want) {
  char out[128];
  int n = rcpt_local(addr, out, sizeof out);
  if (n < 0 || strcmp(out, want) != 0) {
    fprintf(stderr, "rcpt_local(%s) = %d \"%s\", expected \"%s\"\n", addr, n,
            n < 0 ? "" : out, want);
    exit(1);
  }
}

static void expect_expand(const char *tpl, const char *addr, const char *want) {
  char out[512];
  int r = rcpt_expand_maildir(tpl, addr, out, sizeof out);
  if (r != 0 || strcmp(out, want) != 0) {
    fprintf(stderr, "expand(%s, %s) = %d \"%s\", expected \"%s\"\n", tpl, addr,
            r, r ? "" : out, want);
    exit(1);
  }
}

static void t_unquote(void) {
  expect_local("alice@example.org", "alice");
  expect_local("\"alice\"@example.org", "alice");
  expect_local("\"a\\\"b\"@example.org", "a\"b");
  expect_local("\"a\\\\b\"@example.org", "a\\b");
  expect_local("\"a@b\"@example.org", "a@b");
  expect_local("\"\"@example.org", "");
  expect_local("postmaster", "postmaster");
  char small[4];
  CHECK(rcpt_local("alice@x", small, sizeof small) == -1);
}

/* Every string of length 0..3 over an alphabet with the dangerous bytes:
 * no two (different after ASCII case folding) get the same spelling, and
 * no spelling is empty, "." or "..", starts with '.' or holds a '/' or a
 * control character. */
static void t_escape_injective(void) {
  static const char alpha[] = "a2F%/._-\x01 \"Az";
  const size_t na = sizeof alpha - 1;
  size_t total = 1 + na + na * na + na * na * na;
  char(*seen)[16] = calloc(total, sizeof *seen);
  size_t k = 0;
  CHECK(seen != NULL);
  for (size_t len = 0; len <= 3; len++) {
    size_t count = len == 0   ? 1
                   : len == 1 ? na
                   : len == 2 ? na * na
                              : na * na * na;
    for (size_t c = 0; c < count; c++) {
      char s[4];
      size_t v = c;
      for (size_t i = 0; i < len; i++, v /= na)
        s[i] = alpha[v % na];
      bool upper = false; /* 'F', 'A': the folded twin is counted once */
      for (size_t i = 0; i < len; i++)
        upper |= s[i] == 'F' || s[i] == 'A';
      char out[16];
      int n = rcpt_fs_escape(s, len, out, sizeof out);
      CHECK(n > 0 && (size_t)n == strlen(out));
      CHECK(out[0] != '.' && strchr(out, '/') == NULL);
      for (int i = 0; i < n; i++)
        CHECK((unsigned char)out[i] > 0x20 && out[i] != 0x7f);
      if (upper)
        continue;
      for (size_t j = 0; j < k; j++)
        if (strcmp(seen[j], out) == 0) {
          fprintf(stderr, "collision: \"%.*s\" -> %s\n", (int)len, s, out);
          exit(1);
        }
      memcpy(seen[k++], out, (size_t)n + 1);
    }
  }
  free(seen);
  char out[8];
  CHECK(rcpt_fs_escape("abcdefgh", 8, out, sizeof out) == -1);
}

static void t_expand(void) {
  expect_expand("/m/%d/%u", "alice@example.org", "/m/example.org/alice");
  expect_expand("/m/%d/%u", "\"alice\"@Example.ORG", "/m/example.org/alice");
  expect_expand("/m/%d/%u", "\"a/b\"@x", "/m/x/a%2Fb");
  expect_expand("/m/%d/%u", "a_b@x", "/m/x/a_b");
  expect_expand("/m/%d/%u", "\"a%2Fb\"@x", "/m/x/a%252fb");
  expect_expand("/m/%d/%u", "\"../../etc\"@x", "/m/x/%2E.%2F..%2Fetc");
  expect_expand("/m/%d/%u", "\".\"@x", "/m/x/%2E");
  expect_expand("/m/%d/%u", "\"\"@x", "/m/x/%");
  expect_expand("/m/%a/100%%", "Bob@X", "/m/bob@x/100%");
  expect_expand("/m/%u", "postmaster", "/m/postmaster");
  char small[8];
  CHECK(rcpt_expand_maildir("/m/%d/%u", "alice@example.org", small,
                            sizeof small) == -1);
}

static void t_spool(void) {
  char out[64];
  CHECK(rcpt_template_spool("/srv/mail/%d/%u", out, sizeof out) == 0 &&
        strcmp(out, "/srv/mail/.tern-spool") == 0);
  CHECK(rcpt_template_spool("/srv/mail-%d/%u", out, sizeof out) == 0 &&
        strcmp(out, "/srv/.tern-spool") == 0);
  CHECK(rcpt_template_spool("/%u", out, sizeof out) == 0 &&
        strcmp(out, "/.tern-spool") == 0);
  CHECK(rcpt_template_spool("%u/Maildir", out, sizeof out) == 0 &&
        strcmp(out, "./.tern-spool") == 0);
  CHECK(rcpt_template_spool("mail//%u", out, sizeof out) == 0 &&
        strcmp(out, "mail/.tern-spool") == 0);
}

static void t_pipe(void) {
  char words[256], *argv[8];
  CHECK(rcpt_pipe_safe("alice@x"));
  CHECK(rcpt_pipe_safe("a-b@x"));
  CHECK(!rcpt_pipe_safe("-oQ/tmp/evil@example.org"));
  CHECK(!rcpt_pipe_safe("\"-x\"@example.org"));
  CHECK(!rcpt_pipe_safe("-"));
  int n = rcpt_pipe_argv("/bin/deliver  -f %s %r %u %d 100%%", "s@y",
                         "\"Al ice\"@x", words, sizeof words, argv, 8);
  CHECK(n == 7);
  CHECK(!strcmp(argv[0], "/bin/deliver") && !strcmp(argv[1], "-f") &&
        !strcmp(argv[2], "s@y") && !strcmp(argv[3], "\"Al ice\"@x") &&
        !strcmp(argv[4], "Al ice") && !strcmp(argv[5], "x") &&
        !strcmp(argv[6], "100%") && argv[7] == NULL);
  CHECK(rcpt_pipe_argv("a b c d e f g h", "", "r@x", words, sizeof words, argv,
                       8) == -1);
  CHECK(rcpt_pipe_argv("/bin/x %r", "", "r@x", words, 8, argv, 8) == -1);
}

static void t_set(void) {
  char path[] = "/tmp/tern-rcpts-XXXXXX", err[256];
  int fd = mkstemp(path);
  CHECK(fd >= 0);
  const char text[] = "# known\n\nAlice@Example.org\n  bob  \n@Catch.example\n"
                      "\"carol\"@example.org\r\n";
  CHECK(write(fd, text, sizeof text - 1) == (ssize_t)(sizeof text - 1));
  close(fd);
  struct rcptset *s = NULL;
  CHECK(rcptset_load(path, &s, err, sizeof err) == 0);
  CHECK(rcptset_count(s) == 4);
  CHECK(rcptset_has(s, "alice@example.org"));
  CHECK(rcptset_has(s, "\"ALICE\"@EXAMPLE.ORG"));
  CHECK(!rcptset_has(s, "alice@example.net"));
  CHECK(rcptset_has(s, "bob@anywhere.example"));
  CHECK(rcptset_has(s, "anyone@catch.example"));
  CHECK(rcptset_has(s, "carol@example.org"));
  CHECK(!rcptset_has(s, "mallory@example.org"));
  rcptset_free(s);

  fd = open(path, O_WRONLY | O_TRUNC);
  CHECK(fd >= 0);
  const char bad[] = "alice@x\nbob and carol\n";
  CHECK(write(fd, bad, sizeof bad - 1) == (ssize_t)(sizeof bad - 1));
  close(fd);
  CHECK(rcptset_load(path, &s, err, sizeof err) == -1);
  char want[300];
  snprintf(want, sizeof want, "%s:2:", path);
  CHECK(strncmp(err, want, strlen(want)) == 0);
  unlink(path);
  CHECK(rcptset_load(path, &s, err, sizeof err) == -1);
  CHECK(strstr(err, path) != NULL);
}

int main(void) {
  t_unquote();
  t_escape_injective();
  t_expand();
  t_spool();
  t_pipe();
  t_set();
  printf("ok\n");
  return 0;
}
