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
 * The signers of c's [dkim NAME] keys: a key without `users` signs for
 * every authenticated user, one with `users` only for those named.
 * Every key must load (its file read, an RSA key of 1024 bits at least
 * or an Ed25519 key): else -1 with err "FILE:LINE: [dkim NAME]:
 * KEYFILE: what" and *out NULL. *out is NULL when there is no key.
 * Returns 0 or -1. Free with serve_dkim_free (NULL is ignored).
 */
struct serve_dkim;
int serve_dkim_load(const struct cfg *c, struct serve_dkim **out,
                    char *err, size_t cap);
void serve_dkim_free(struct serve_dkim *d);
/* The signer for mail of authenticated user `user`: the keys that every
 * user may use and those whose `users` name them; NULL when none (or d
 * or user NULL). Valid as long as d. */
struct tern_dkim_signer *serve_dkim_for(const struct serve_dkim *d,
                                        const char *user);

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
