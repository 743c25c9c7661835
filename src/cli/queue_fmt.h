/*
 * `tern queue` output: one message of a listing as text (Postfix
 * mailq-like) or as one JSON object, written line by line to a sink.
 * Shared by the daemon's control socket (control.c), which formats for
 * the client, and by `tern queue` itself when it reads the spool
 * offline (queue_cmd.c), so both print the same thing.
 *
 * The text form, per message (docs/man/tern-queue.1):
 *
 *   ID[!]  SIZE  YYYY-MM-DD HH:MM:SS  SENDER[  (DSN)]
 *     RCPT  STATE  attempts N[  next YYYY-MM-DD HH:MM:SS]  via DEST
 *       (LAST REPLY)
 *
 * '!' marks a message on hold; dates are local time; SENDER is "<>" for
 * the null sender; the reply line is there once an attempt answered.
 * Every byte that came from outside (addresses, replies) is printed
 * with control characters and invalid UTF-8 escaped as \xHH, so a line
 * is always one line.
 */
#ifndef TERN_CLI_QUEUE_FMT_H
#define TERN_CLI_QUEUE_FMT_H

#include <stdbool.h>
#include <stddef.h>

#include <tern/queue.h>

/* Receives one output line (without its newline; len octets, no NUL
 * inside). Returns 0, or -1 to stop (out of memory, a closed peer). */
typedef int (*qfmt_sink)(void *arg, const char *line, size_t len);

/* Running totals for the summary line. */
struct qfmt_totals {
  size_t messages, recipients;
};

/* One message as text lines (the form above); adds it to *t when t is
 * not NULL. Returns 0, or -1 (the sink stopped, or out of memory). */
int qfmt_text(const struct tern_queue_list_msg *m, struct qfmt_totals *t,
              qfmt_sink sink, void *arg);

/* One message as one line of JSON (the object of docs/man/tern-queue.1:
 * id, arrival, size, from, held, bounce, rcpts[addr, dest, state,
 * attempts, next_try, last_code, last_reply]). Strings are UTF-8; a
 * byte that is not (or a control character) is written as \u00XX.
 * Returns 0 or -1. */
int qfmt_json(const struct tern_queue_list_msg *m, struct qfmt_totals *t,
              qfmt_sink sink, void *arg);

/* The text listing's last line: "-- N messages, N recipients" (singular
 * for 1), or "Queue is empty". Returns 0 or -1. */
int qfmt_summary(const struct qfmt_totals *t, qfmt_sink sink, void *arg);

/* "queued", "deferred", "active", "delivered", "failed". */
const char *qfmt_state_name(enum tern_queue_rcpt_state s);

/* Is s a queue id: 1 to 23 characters [0-9A-Z]? */
bool qfmt_id_ok(const char *s);

#endif /* TERN_CLI_QUEUE_FMT_H */
