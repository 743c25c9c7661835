/*
 * tern serve's DKIM signer (serve_dkim.c): made from the [dkim NAME]
 * sections when the configuration loads (start-up and every reload), held
 * by the policy (serve.h), so a session signs with the keys of the policy
 * it started with and a reload that fails to load a key changes nothing.
 */
#ifndef TERN_CLI_SERVE_DKIM_H
#define TERN_CLI_SERVE_DKIM_H

#include <stddef.h>

#include <tern/dkim.h>

#include "config.h"

/*
 * The signer for c's [dkim NAME] keys, or *out NULL when there is none.
 * Every key must load (its file read, an RSA key of 1024 bits at least
 * or an Ed25519 key): else -1 with err "FILE:LINE: [dkim NAME]: KEYFILE:
 * what" and *out NULL. Returns 0 or -1.
 */
int serve_dkim_load(const struct cfg *c, struct tern_dkim_signer **out,
                    char *err, size_t cap);

struct log_line;

/*
 * The outcome of signing one message, as the queue target's DELIVER_ALL
 * detail (deliver_queue.c writes it, serve.c's log line reads it back
 * through serve_dkim_log; no one else looks into it):
 *   "d=example.org,s=s1;d=example.org,s=e1"  signed (each signature)
 *   "none WHY"                                not signed (no key for the
 *                                             From domain, no From, ...)
 *   "failed WHY"                              signing failed: queued
 *                                             unsigned
 * rc and why are tern_dkim_sign_end's (rc 0 with fields "" is "none").
 */
void serve_dkim_detail(char *buf, size_t cap, int rc, const char *fields,
                       const char *why);

/* Add the detail's fields to a log line: dkim=d=example.org,s=s1 or
 * dkim=none why="..." or dkim=failed why="..."; nothing for NULL or "". */
void serve_dkim_log(struct log_line *l, const char *detail);

#endif /* TERN_CLI_SERVE_DKIM_H */
