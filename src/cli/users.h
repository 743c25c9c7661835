/*
 * `tern serve` users file: "user:hash" lines, hash a crypt(3) string
 * ($y$ yescrypt, $gy$, $7$, $6$ sha512-crypt, $5$ sha256-crypt, $2b$/$2y$/
 * $2a$ bcrypt), as `tern passwd` prints them. '#' starts a comment line;
 * blank lines are skipped. Kept in memory as a sorted array.
 *
 * Reload: users_load() a new table, swap it in, users_free() the old one
 * once no check uses it. A table is read-only after loading, so
 * users_check() may run on several threads at once.
 */
#ifndef TERN_CLI_USERS_H
#define TERN_CLI_USERS_H

#include <stddef.h>

struct users;

/*
 * Load `path`. Returns 0 with a new table in *out, or -1 with
 * "FILE:LINE: what" (or "FILE: what") in err[0..cap): unreadable file,
 * a line without ':', a bad user name, a hash that is not a crypt(3)
 * string, a user given twice.
 */
int users_load(const char *path, struct users **out, char *err, size_t cap);

/*
 * 0 if `password` is the user's, -1 if not (or no such user, or out of
 * memory). One crypt(3) is run in every case, against a dummy hash for
 * an unknown user, and the result is compared in constant time, so the
 * time taken does not tell whether the user exists.
 */
int users_check(const struct users *u, const char *user, const char *password);

/* Number of users (for log lines). */
size_t users_count(const struct users *u);

void users_free(struct users *u);

#endif
