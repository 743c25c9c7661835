/*
 * Recipients of `tern serve`'s local targets (pipe, maildir): one
 * normal form for a local part, a file-system-safe spelling of it for
 * Maildir templates, command lines for the pipe target, and the
 * `[delivery] recipients` file (known users, checked at RCPT time).
 *
 * Everything here is pure (no I/O) except rcptset_load(), which reads a
 * file at start-up and on reload; a loaded set is read-only, so lookups
 * may run on several threads at once.
 */
#ifndef TERN_CLI_RECIPIENTS_H
#define TERN_CLI_RECIPIENTS_H

#include <stdbool.h>
#include <stddef.h>

/*
 * The local part of an address (the mailbox as RCPT gave it, up to its
 * last '@'), unquoted: `"alice"@x` and `alice@x` both give "alice", and
 * a quoted pair `\c` gives `c` (RFC 5321 §4.1.2: the quoting is syntax,
 * not part of the name). Writes at most cap-1 bytes and a NUL. Returns
 * the length, or -1 when it does not fit (or cap is 0).
 */
int rcpt_local(const char *addr, char *out, size_t cap);

/* The domain of `addr` (after its last '@'; "" when there is none). */
const char *rcpt_domain(const char *addr);

/*
 * The one spelling of a name inside a Maildir path (the %u, %d and %a of
 * a template). ASCII letters are lower-cased (mailboxes differ by case
 * only in theory; every MTA folds them); a-z, 0-9, '-', '_', '+' and
 * bytes >= 0x80 (the parser let only valid UTF-8 through) stay; '.'
 * stays except as the first byte; every other byte, '%' included,
 * becomes "%HH" (upper-case hex). An empty name becomes "%". So, up to
 * ASCII case, two different names never share a spelling (the escape is
 * injective), and a spelling is never "", ".", "..", a dot file or a
 * path with a '/'. Returns the length written (NUL-terminated), or -1
 * when it does not fit in cap.
 */
int rcpt_fs_escape(const char *s, size_t n, char *out, size_t cap);

/*
 * Expand a Maildir template for one recipient (the address as RCPT gave
 * it): %u its unquoted local part, %d its domain, %a both as
 * "LOCAL@DOMAIN", each spelled by rcpt_fs_escape(); %% a '%'. Returns 0,
 * or -1 when the result does not fit in cap (never a truncated path).
 */
int rcpt_expand_maildir(const char *tpl, const char *addr, char *out,
                        size_t cap);

/*
 * Where a Maildir template's messages wait until they are accepted: the
 * template up to the last '/' before its first '%' (or "." when there
 * is none), followed by "/.tern-spool" (a name no expansion can take:
 * rcpt_fs_escape never starts one with '.'). The message is written to
 * SPOOL/tmp and linked into each recipient's new/ once accepted.
 * Returns 0, or -1 when it does not fit in cap.
 */
int rcpt_template_spool(const char *tpl, char *out, size_t cap);

/*
 * Whether a pipe command may get this recipient: no local part that
 * begins with '-' (after unquoting), which a command could read as an
 * option (`-oQ/tmp/x@example.org`; Postfix: allow_min_user = no).
 */
bool rcpt_pipe_safe(const char *addr);

/*
 * The argv of the pipe target for one recipient: `cmd` split on spaces
 * (no shell), and in each word %s the sender, %r and %a the recipient,
 * %u its unquoted local part, %d its domain, %% a '%'. The words are
 * written into words[0..cap) and argv[0..maxargs) points into it, NULL
 * terminated. Returns the number of words, or -1 when they do not fit.
 */
int rcpt_pipe_argv(const char *cmd, const char *sender, const char *rcpt,
                   char *words, size_t cap, char **argv, size_t maxargs);

/* ---- the recipients file ------------------------------------------------ */

struct rcptset;

/*
 * Load `path`: one entry a line, '#' starts a comment line, blank lines
 * are skipped. An entry is "local@domain" (that address), "local" (that
 * local part in every accepted domain) or "@domain" (every local part
 * of that domain). Local parts are compared unquoted, everything without
 * regard to ASCII case. Returns 0 with a new set in *out, or -1 with
 * "FILE:LINE: what" (or "FILE: what") in err: unreadable file, an entry
 * with a space, an entry too long.
 */
int rcptset_load(const char *path, struct rcptset **out, char *err, size_t cap);

/* Whether `addr` (as RCPT gave it) is in the set. */
bool rcptset_has(const struct rcptset *s, const char *addr);

size_t rcptset_count(const struct rcptset *s);

void rcptset_free(struct rcptset *s);

#endif
