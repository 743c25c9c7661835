/*
 * tern passwd [--sha512] [USER] — print a users-file line "USER:HASH".
 *
 * The hash is yescrypt ("$y$", libxcrypt's default cost) or, with
 * --sha512, sha512-crypt ("$6$", 5000 rounds) for systems whose libcrypt
 * lacks yescrypt. The salt comes from the operating system's random
 * source (crypt_gensalt_rn with no random bytes of our own).
 *
 * The password is read from stdin when stdin is not a terminal (first
 * line; the newline is not part of it), else prompted for twice on the
 * terminal with echo off. Never from the command line: that would leak
 * it into `ps` and shell history. USER defaults to the login name.
 */
#include <crypt.h>
#include <errno.h>
#include <pwd.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sysexits.h>
#include <termios.h>
#include <unistd.h>

#include "cli.h"

#define PW_MAX 1024

static struct termios g_saved;
static volatile sig_atomic_t g_echo_off;

static void restore_echo(void) {
  if (g_echo_off) {
    tcsetattr(STDIN_FILENO, TCSAFLUSH, &g_saved);
    g_echo_off = 0;
  }
}

/* Ctrl-C while echo is off must not leave the terminal silent. */
static void on_signal(int sig) {
  restore_echo();
  signal(sig, SIG_DFL);
  raise(sig);
}

/* Read one line (without its newline) into buf. Returns its length, or
 * -1 at EOF before any byte / on error, -2 when longer than cap - 1. */
static long read_line(FILE *f, char *buf, size_t cap) {
  size_t n = 0;
  int ch;
  bool any = false;
  while ((ch = getc(f)) != EOF) {
    any = true;
    if (ch == '\n')
      break;
    if (n + 1 >= cap)
      return -2;
    buf[n++] = (char)ch;
  }
  if (!any)
    return -1;
  if (n > 0 && buf[n - 1] == '\r')
    n--;
  buf[n] = '\0';
  return (long)n;
}

static long prompt(const char *text, char *buf, size_t cap) {
  struct termios t;
  fputs(text, stderr);
  fflush(stderr);
  if (tcgetattr(STDIN_FILENO, &g_saved) != 0)
    return -1;
  t = g_saved;
  t.c_lflag &= ~(tcflag_t)ECHO;
  t.c_lflag |= ECHONL;
  g_echo_off = 1;
  if (tcsetattr(STDIN_FILENO, TCSAFLUSH, &t) != 0) {
    g_echo_off = 0;
    return -1;
  }
  long n = read_line(stdin, buf, cap);
  restore_echo();
  return n;
}

static void usage(FILE *f) {
  fprintf(f, "usage: tern passwd [--sha512] [USER]\n"
             "  Prints USER:HASH (yescrypt; --sha512: sha512-crypt) for a "
             "users file.\n"
             "  The password is read from stdin when it is not a terminal "
             "(first line),\n"
             "  else prompted for twice without echo.\n");
}

int tern_cli_passwd(int argc, char **argv) {
  const char *prefix = "$y$";
  const char *user = NULL;
  int rc = EX_SOFTWARE;
  char pw[PW_MAX], again[PW_MAX];
  struct crypt_data *cd = NULL;

  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (!strcmp(a, "--sha512")) {
      prefix = "$6$";
    } else if (!strcmp(a, "--yescrypt")) {
      prefix = "$y$";
    } else if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
      usage(stdout);
      return 0;
    } else if (a[0] == '-' && a[1] != '\0') {
      fprintf(stderr, "tern passwd: unknown option '%s'\n", a);
      usage(stderr);
      return EX_USAGE;
    } else if (!user) {
      user = a;
    } else {
      fprintf(stderr, "tern passwd: more than one user name\n");
      return EX_USAGE;
    }
  }
  if (!user) {
    struct passwd *p = getpwuid(getuid());
    if (!p || !p->pw_name) {
      fprintf(stderr, "tern passwd: no user name given and none known\n");
      return EX_USAGE;
    }
    user = p->pw_name;
  }
  if (!user[0] || strpbrk(user, ":\r\n") ||
      strspn(user, " \t") == strlen(user)) {
    fprintf(stderr, "tern passwd: invalid user name '%s' (empty, or "
                    "contains ':' or a line break)\n", user);
    return EX_USAGE;
  }

  long n;
  if (isatty(STDIN_FILENO)) {
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    signal(SIGHUP, on_signal);
    n = prompt("Password: ", pw, sizeof pw);
    if (n >= 0) {
      long m = prompt("Retype password: ", again, sizeof again);
      if (m < 0 || m != n || memcmp(pw, again, (size_t)n) != 0) {
        fprintf(stderr, "tern passwd: the passwords do not match\n");
        rc = EX_DATAERR;
        goto out;
      }
    }
  } else {
    n = read_line(stdin, pw, sizeof pw);
  }
  if (n == -2) {
    fprintf(stderr, "tern passwd: password longer than %d bytes\n",
            PW_MAX - 1);
    rc = EX_DATAERR;
    goto out;
  }
  if (n < 0) {
    fprintf(stderr, "tern passwd: no password read\n");
    rc = EX_NOINPUT;
    goto out;
  }
  if (n == 0) {
    fprintf(stderr, "tern passwd: empty password refused\n");
    rc = EX_DATAERR;
    goto out;
  }

  char salt[CRYPT_GENSALT_OUTPUT_SIZE];
  if (!crypt_gensalt_rn(prefix, 0, NULL, 0, salt, (int)sizeof salt)) {
    fprintf(stderr, "tern passwd: cannot make a %s salt: %s\n", prefix,
            strerror(errno));
    rc = errno == EINVAL ? EX_UNAVAILABLE : EX_OSERR;
    goto out;
  }
  cd = calloc(1, sizeof *cd); /* ~32 KiB: not on the stack */
  if (!cd) {
    fprintf(stderr, "tern passwd: out of memory\n");
    rc = EX_OSERR;
    goto out;
  }
  const char *h = crypt_rn(pw, salt, cd, (int)sizeof *cd);
  if (!h || h[0] == '*') {
    fprintf(stderr, "tern passwd: hashing failed: %s\n",
            errno ? strerror(errno) : "unknown error");
    rc = EX_SOFTWARE;
    goto out;
  }
  if (printf("%s:%s\n", user, h) < 0 || fflush(stdout) != 0) {
    fprintf(stderr, "tern passwd: cannot write the result\n");
    rc = EX_IOERR;
    goto out;
  }
  rc = 0;

out:
  explicit_bzero(pw, sizeof pw);
  explicit_bzero(again, sizeof again);
  if (cd) {
    explicit_bzero(cd, sizeof *cd);
    free(cd);
  }
  return rc;
}
