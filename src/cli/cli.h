/*
 * tern — the program's subcommands (src/cli/). Built on the public API
 * only (<tern/tern.h>, <tern/net.h>): if a subcommand needs something,
 * the library offers it.
 *
 * Each entry point takes the arguments after the subcommand name
 * (argv[0] is the subcommand, as getopt expects) and returns a process
 * exit status from <sysexits.h>.
 */
#ifndef TERN_CLI_H
#define TERN_CLI_H

#include <stdbool.h>
#include <stddef.h>

#include <tern/net.h>
#include <tern/tern.h>

/* `tern send` (and `sendmail`): as_sendmail only changes the program name
 * used in messages. */
int tern_cli_send(int argc, char **argv, bool as_sendmail);
int tern_cli_bench(int argc, char **argv);
int tern_cli_passwd(int argc, char **argv);
int tern_cli_serve(int argc, char **argv);
/* `tern queue` (queue_cmd.c): list, show, flush, delete, hold, release. */
int tern_cli_queue(int argc, char **argv);

/* ---- helpers shared by send and bench (util.c) ---------------------------- */

/*
 * The endpoint URL to use: with `starttls`, "smtp://..." becomes
 * "smtp+starttls://..." (STARTTLS required); other schemes are returned
 * as they are. The result is in buf (or is url itself).
 */
const char *cli_url_starttls(const char *url, bool starttls, char *buf,
                             size_t cap);

/* True for endpoints whose TLS is opportunistic ("smtp://", "lmtp://"):
 * STARTTLS only when offered, certificate not verified (RFC 7435). */
bool cli_url_opportunistic(const char *url);

/* "host:port" (the scheme's default port when none is given) or the
 * socket path of a unix-socket URL, for messages. */
void cli_url_endpoint(const char *url, char *buf, size_t cap);

/*
 * A server reply on one line for messages: "550 5.1.1 text / more text",
 * non-printable bytes escaped (\xHH), at most cap - 1 bytes (cut with
 * "..."). The enhanced code is shown once even if the text repeats it.
 */
void cli_format_reply(const struct tern_client_reply *r, char *buf,
                      size_t cap);

/* Copy peer text into buf with non-printable bytes escaped. */
void cli_escape(const char *p, size_t n, char *buf, size_t cap);

/* Name of a client command for -v traces ("EHLO", "RCPT", ...). */
const char *cli_cmd_name(enum tern_client_cmd cmd);

/* Parse a decimal number in [min, max]. Returns 0 or -1. */
int cli_parse_u64(const char *s, unsigned long long min,
                  unsigned long long max, unsigned long long *out);

/* Parse seconds (decimal, fractions allowed, > 0, ≤ 1 day) as ms. */
int cli_parse_seconds_ms(const char *s, unsigned *ms);

#endif /* TERN_CLI_H */
