/*
 * The daemon's control socket: how `tern queue` steers the running
 * queue (list, flush, delete, hold, release), like Postfix's showq and
 * OpenSMTPD's control socket.
 *
 * The socket. A unix stream socket at [queue] control (default
 * DIRECTORY/control), mode 0600, owned by the daemon's user: it is bound
 * in a fresh 0700 directory next to its place, given its mode, then
 * renamed into place, so it is never reachable with a wider mode. A
 * socket already there is replaced only when nobody answers on it
 * (a daemon that crashed); a live one, or a file that is not a socket,
 * stops control_start. Keep it in a directory only the daemon's user
 * can write (the spool directory is 0700). Besides the mode, every
 * connection's peer is checked with SO_PEERCRED: only root and the
 * daemon's own user are served; anybody else gets "ERR PERM".
 *
 * The protocol. The client sends one request line (at most 1024 octets
 * with its LF, within 10 s of connecting, else "ERR USAGE"/closed):
 *
 *   LIST          every message, text (queue_fmt.h), then the summary
 *                 line ("-- N messages, N recipients" / "Queue is empty")
 *   LIST JSON     every message, one JSON object per line, no summary
 *   SHOW ID       one message's envelope, text (the body is read from
 *                 the spool by the client: tern_queue_scan_body)
 *   FLUSH         retry every message now (held ones excepted)
 *   FLUSH ID      retry that message now
 *   DELETE ID     remove it, no DSN
 *   HOLD ID       no delivery, no expiry until released
 *   RELEASE ID    back to normal
 *
 * Verbs are upper case; one space between words; ID is [0-9A-Z]{1,23}.
 * The answer is lines ending in LF: data lines start with a space (the
 * rest of the line is the output), and one final status line ends the
 * answer, then the daemon closes the connection:
 *
 *   OK
 *   ERR CODE text     CODE: USAGE (bad request), NOENT (no such
 *                     message), PERM (peer not allowed), IO (the store
 *                     failed), BUSY (too many control clients)
 *
 * An answer that ends without a status line (the daemon stopped) did
 * not complete. All of it runs on the queue's home loop.
 *
 * Memory: tern_queue_list calls back for every message inside one call
 * (the API has no cursor), so a listing is formatted in one pass into
 * 64 KiB blocks that are written as they fill and freed as the client
 * reads them: linear in the listing (about 100 octets per recipient),
 * never quadratic; at most 16 clients are served at once.
 */
#ifndef TERN_CLI_CONTROL_H
#define TERN_CLI_CONTROL_H

#include <stddef.h>

#include <uv.h>

#include <tern/queue.h>

/* Requests and answers are text lines; a request longer than this is
 * refused. */
#define CONTROL_MAX_REQUEST 1024
/* A client has this long to send its request. */
#define CONTROL_REQUEST_TIMEOUT_MS 10000
/* Connections served at once; more are answered "ERR BUSY". */
#define CONTROL_MAX_CLIENTS 16
/* How long an answer may take to be read by its client before the
 * connection is closed (a client that never reads holds a slot). */
#define CONTROL_ANSWER_TIMEOUT_MS 10000

/*
 * Listen on `path` on `loop`, which must be the home loop of `q` (the
 * queue's control calls run there). `q` must stay open until
 * control_stop's `done` has run. One control socket per process.
 * Call it after dropping privileges ([server] user): the socket file is
 * made by, and so belongs to, the user the daemon runs as, which is the
 * user `tern queue` must run as (or root), and who removes it at stop.
 * Returns 0, or -1 with why in err[0..cap) ("control socket PATH: ...":
 * the path is too long for a unix socket, a daemon answers there
 * already, it is not a socket, bind/listen failed, or one is running).
 */
int control_start(uv_loop_t *loop, struct tern_queue *q, const char *path,
                  char *err, size_t cap);

/*
 * Stop listening, remove the socket file, close every connection (an
 * answer being written is cut short), and call done(arg) on the loop
 * once every handle is closed (never inside this call). Without a
 * running control socket, done(arg) runs at once, inside the call.
 */
void control_stop(void (*done)(void *arg), void *arg);

#endif /* TERN_CLI_CONTROL_H */
