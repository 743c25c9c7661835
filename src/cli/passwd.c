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

/* The options and USER. Returns 0 to go on, -1 when done (--help), or
 * EX_USAGE after printing why. */
static int parse_args(int argc, char **argv, const char **prefix,
                      const char **user) {
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (!strcmp(a, "--sha512")) {
      *prefix = "$6$";
    } else if (!strcmp(a, "--yescrypt")) {
      *prefix = "$y$";
    } else if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
      usage(stdout);
      return -1;
    } else if (a[0] == '-' && a[1] != '\0') {
      fprintf(stderr, "tern passwd: unknown option '%s'\n", a);
      usage(stderr);
      return EX_USAGE;
    } else if (!*user) {
      *user = a;
    } else {
      fprintf(stderr, "tern passwd: more than one user name\n");
      return EX_USAGE;
    }
  }
  return 0;
}

/* USER, or the login name; one that cannot stand in a users file is
 * refused. */
static int check_user(const char **user) {
  if (!*user) {
    struct passwd *p = getpwuid(getuid());
    if (!p || !p->pw_name) {
      fprintf(stderr, "tern passwd: no user name given and none known\n");
      return EX_USAGE;
    }
    *user = p->pw_name;
  }
  const char *u = *user;
  if (!u[0] || strpbrk(u, ":\r\n") || strspn(u, " \t") == strlen(u)) {
    fprintf(stderr, "tern passwd: invalid user name '%s' (empty, or "
                    "contains ':' or a line break)\n", u);
    return EX_USAGE;
  }
  return 0;
}

/* The password into pw: prompted for twice on a terminal, else the
 * first line of stdin. Returns 0 or an exit status (after printing
 * why). `again` holds the second answer. */
static int read_password(char *pw, char *again, size_t cap) {
  long n;
  if (isatty(STDIN_FILENO)) {
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    signal(SIGHUP, on_signal);
    n = prompt("Password: ", pw, cap);
    if (n >= 0) {
      long m = prompt("Retype password: ", again, cap);
      if (m < 0 || m != n || memcmp(pw, again, (size_t)n) != 0) {
        fprintf(stderr, "tern passwd: the passwords do not match\n");
        return EX_DATAERR;
      }
    }
  } else {
    n = read_line(stdin, pw, cap);
  }
  if (n == -2) {
    fprintf(stderr, "tern passwd: password longer than %d bytes\n",
            PW_MAX - 1);
    return EX_DATAERR;
  }
  if (n < 0) {
    fprintf(stderr, "tern passwd: no password read\n");
    return EX_NOINPUT;
  }
  if (n == 0) {
    fprintf(stderr, "tern passwd: empty password refused\n");
    return EX_DATAERR;
  }
  return 0;
}

/* Hash pw with a fresh salt of the method `prefix` names and print
 * "USER:HASH". Returns 0 or an exit status (after printing why). */
static int print_hash(const char *prefix, const char *user, const char *pw) {
  char salt[CRYPT_GENSALT_OUTPUT_SIZE];
  if (!crypt_gensalt_rn(prefix, 0, NULL, 0, salt, (int)sizeof salt)) {
    fprintf(stderr, "tern passwd: cannot make a %s salt: %s\n", prefix,
            strerror(errno));
    return errno == EINVAL ? EX_UNAVAILABLE : EX_OSERR;
  }
  struct crypt_data *cd = calloc(1, sizeof *cd); /* ~32 KiB: not on the stack */
  if (!cd) {
    fprintf(stderr, "tern passwd: out of memory\n");
    return EX_OSERR;
  }
  int rc = 0;
  const char *h = crypt_rn(pw, salt, cd, (int)sizeof *cd);
  if (!h || h[0] == '*') {
    fprintf(stderr, "tern passwd: hashing failed: %s\n",
            errno ? strerror(errno) : "unknown error");
    rc = EX_SOFTWARE;
  } else if (printf("%s:%s\n", user, h) < 0 || fflush(stdout) != 0) {
    fprintf(stderr, "tern passwd: cannot write the result\n");
    rc = EX_IOERR;
  }
  explicit_bzero(cd, sizeof *cd);
  free(cd);
  return rc;
}

int tern_cli_passwd(int argc, char **argv) {
  const char *prefix = "$y$";
  const char *user = NULL;
  char pw[PW_MAX], again[PW_MAX];
  int rc = parse_args(argc, argv, &prefix, &user);
  if (rc != 0)
    return rc < 0 ? 0 : rc;
  if ((rc = check_user(&user)) != 0)
    return rc;
  rc = read_password(pw, again, sizeof pw);
  if (rc == 0)
    rc = print_hash(prefix, user, pw);
  explicit_bzero(pw, sizeof pw);
  explicit_bzero(again, sizeof again);
  return rc;
}
