/*
 * tern — the program: subcommand dispatch.
 *
 *   tern send [sendmail options] [recipient ...]   (also as `sendmail`)
 *   tern bench [options]
 *   tern passwd [--sha512] [USER]
 *   tern serve [options]
 *   tern queue [-c FILE | -d DIR] list|show|flush|delete|hold|release
 *   tern version | tern help
 *
 * When the program is invoked under the name "sendmail" (a symlink, as
 * installed in sbin/), it behaves as `tern send` with every argument
 * parsed as a sendmail option or recipient (-bp and -q: tern queue list
 * and flush). Under the name "mailq" it is `tern queue [OPTIONS] list`.
 */
#include <stdio.h>
#include <string.h>
#include <sysexits.h>

#include <tern/net.h>
#include <tern/tern.h>

#include "cli.h"

static void usage(FILE *f) {
  fprintf(f,
          "usage: tern COMMAND [ARGS]\n"
          "\n"
          "commands:\n"
          "  send     send one message, sendmail-compatible (message on "
          "stdin)\n"
          "  bench    SMTP load generator (messages/s, latency)\n"
          "  passwd   make a users-file line with a yescrypt hash\n"
          "  serve    the SMTP/LMTP daemon\n"
          "  queue    list, show, flush, delete, hold, release queued "
          "messages\n"
          "  version  print the version\n"
          "  help     this text\n"
          "\n"
          "`tern COMMAND --help` describes each command; tern(1) and "
          "tern.ini(5)\n"
          "(`man tern`, `man tern.ini`) describe them all; tern-queue(1) "
          "the queue.\n"
          "Installed as `sendmail`, tern acts as `tern send`.\n");
}

static const char *base_name(const char *p) {
  const char *s = strrchr(p, '/');
  return s ? s + 1 : p;
}

int main(int argc, char **argv) {
  const char *self = argc > 0 && argv[0] ? base_name(argv[0]) : "tern";

  if (!strcmp(self, "sendmail"))
    return tern_cli_send(argc, argv, true);
  if (!strcmp(self, "mailq")) {
    /* mailq [OPTIONS] = tern queue [OPTIONS] list (-c FILE, --json) */
    char *qargv[64];
    int n = 0;
    qargv[n++] = "queue";
    for (int i = 1; i < argc && n < 62; i++)
      qargv[n++] = argv[i];
    if (argc > 62) {
      fprintf(stderr, "mailq: too many arguments\n");
      return EX_USAGE;
    }
    qargv[n++] = "list";
    qargv[n] = NULL;
    return tern_cli_queue(n, qargv);
  }

  if (argc < 2) {
    usage(stderr);
    return EX_USAGE;
  }
  const char *cmd = argv[1];
  if (!strcmp(cmd, "send"))
    return tern_cli_send(argc - 1, argv + 1, false);
  if (!strcmp(cmd, "bench"))
    return tern_cli_bench(argc - 1, argv + 1);
  if (!strcmp(cmd, "passwd"))
    return tern_cli_passwd(argc - 1, argv + 1);
  if (!strcmp(cmd, "serve"))
    return tern_cli_serve(argc - 1, argv + 1);
  if (!strcmp(cmd, "queue"))
    return tern_cli_queue(argc - 1, argv + 1);
  if (!strcmp(cmd, "version") || !strcmp(cmd, "--version")) {
    printf("tern %s (library %s)\n", TERN_VERSION_STRING,
           tern_version_string());
    return 0;
  }
  if (!strcmp(cmd, "help") || !strcmp(cmd, "--help") || !strcmp(cmd, "-h")) {
    usage(stdout);
    return 0;
  }
  fprintf(stderr, "tern: unknown command '%s'\n", cmd);
  usage(stderr);
  return EX_USAGE;
}
