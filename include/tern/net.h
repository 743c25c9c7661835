/*
 * tern — the runtime: server sessions on libuv, with TLS, AUTH, PROXY
 * protocol, limits and worker threads.
 *
 *   struct tern_server *srv;
 *   struct tern_server_options o;
 *   tern_server_options_init(&o);
 *   o.callbacks = &cb;             // the same callbacks as server.h
 *   tern_server_new(&srv, loop, &o);
 *   tern_server_listen(srv, "smtp://127.0.0.1:2525", NULL);
 *   tern_server_start(srv);
 *   uv_run(loop, UV_RUN_DEFAULT);
 *
 * Threading. With workers == 1 everything runs on the loop given to
 * tern_server_new(). With workers > 1 the server starts workers - 1 more
 * threads, each with its own uv_loop_t accepting from the same listening
 * socket of every TCP listener (bound once, without SO_REUSEPORT, so no
 * other process can share the port; unix-socket and adopted listeners
 * stay on the first loop). A session lives on one
 * thread for its whole life and every callback for it runs there, so
 * callbacks need no locks for per-session state; state shared between
 * sessions (the app's `ud`) is touched from several threads at once and
 * is the application's to protect. tern_server_* functions are called
 * from the thread that runs the first loop; tern_server_session_* only
 * from the session's own thread (inside its callbacks, or from work the
 * app scheduled on that loop: tern_session_loop() tells which).
 *
 * Ownership. The server owns its sessions: they are freed after
 * on_close returns. Pointers from tern_session_info() live as long as
 * the session.
 *
 * Creation. tern_server_new() and tern_client_new() follow one rule: on
 * success *out is the new object; on any failure *out is NULL and
 * nothing needs freeing. Every options or callbacks struct starts with
 * its `size` (set by its _init function) and is copied: a struct from
 * an older header (smaller) is completed with defaults; one from a
 * newer header (larger) is accepted only when the fields this library
 * does not know are all zero, otherwise TERN_EINVAL. Nested configs are
 * passed by pointer, so each carries its own size.
 *
 * Signals. Sockets are written with write(2), as libuv does: writing to
 * a peer that has gone raises SIGPIPE, whose default action ends the
 * process. The library never changes a signal's disposition; a program
 * that uses the runtime ignores SIGPIPE first (signal(SIGPIPE, SIG_IGN))
 * and then sees the failed write as an error of that one connection.
 */
#ifndef TERN_NET_H
#define TERN_NET_H

#include <stdbool.h>
#include <sys/socket.h>
#include <uv.h>

#include "client.h"
#include "common.h"
#include "sasl.h" /* struct tern_auth_callbacks */
#include "server.h"

struct tern_resolver; /* tern/resolve.h */

#ifdef __cplusplus
extern "C" {
#endif

struct tern_server;

/*
 * AUTH through GNU SASL (sasl.h). The server offers the mechanisms in
 * tern_server_options.auth_mechanisms for which the callbacks of struct
 * tern_auth_callbacks (sasl.h) are set: PLAIN and LOGIN need
 * check_password; CRAM-MD5 and SCRAM-SHA-256 need get_password (the
 * mechanism needs the clear secret); XOAUTH2 and OAUTHBEARER need
 * check_token. Return 0 to accept, TERN_EAUTH to refuse, any other
 * negative code for a temporary failure (454 4.7.0).
 *
 * Threads. check_password runs OFF the event loop, on libuv's thread pool
 * (uv_queue_work), because checking a password hash (yescrypt, bcrypt)
 * takes tens of milliseconds and would stall every session of the loop;
 * at most tern_server_options.auth_max_concurrent run at once per worker.
 * So it may block, but it must be thread-safe, and `s` only names the
 * session: call no tern_server_session_* or tern_session_* function with
 * it and use no per-session data of yours that on_close frees (the
 * session may close while the check runs; it is freed only after). Use
 * `ud` (auth_ud) for shared state. The strings are valid during the call.
 * get_password and check_token run on the session's thread, inside the
 * mechanism's step, and must not block for long (an in-memory table).
 */

/* A certificate and its key (PEM files; the certificate file may hold
 * the chain). SNI picks among several by the names they carry. */
struct tern_tls_cert {
  const char *cert_file;
  const char *key_file;
};

/* Per-listener options (tern_server_listen()). */
struct tern_listener_options {
  size_t size;
  bool proxy_protocol;    /* read a PROXY v1/v2 header first; without one
                             the connection is closed */
  bool starttls;          /* offer STARTTLS (needs certificates) */
  bool auth_required;     /* MAIL needs AUTH (530 5.7.0) */
  bool auth_insecure_ok;  /* offer AUTH without TLS (defaults to true for
                             unix sockets, false elsewhere) */
  bool xclient;           /* accept XCLIENT from xclient_networks */
  bool no_auth;           /* never offer AUTH here (e.g. an MX listener
                             next to a submission one) */
  /* Unix-socket listeners only: the socket file's mode and owner, set
   * between bind() and listen() (so no client ever sees other rights).
   * socket_mode 0 keeps what the umask gave; socket_uid/socket_gid -1
   * keep the creating process's (changing them needs root or, for the
   * group, membership). A failure fails tern_server_listen(). */
  unsigned socket_mode;   /* e.g. 0660 */
  long socket_uid;        /* default -1 */
  long socket_gid;        /* default -1 */
};

static inline void
tern_listener_options_init(struct tern_listener_options *l) {
  struct tern_listener_options d = {0};
  d.size = sizeof d;
  d.socket_uid = -1;
  d.socket_gid = -1;
  *l = d;
}

/*
 * What the runtime did on its own to a connection, for the application's
 * log (tern_server_options.on_event): refusals without a session (limits,
 * early talkers), TLS handshakes that failed, and the deadlines that cut
 * a connection. Replies the session sent (530, 535, a 421 for an idle
 * timeout...) are not repeated here: see the on_reply observer.
 */
enum tern_net_event_type {
  TERN_NET_CONN_LIMIT = 1, /* 421 4.7.0: max_connections reached */
  TERN_NET_IP_LIMIT,       /* 421 4.7.0: max_per_ip reached */
  TERN_NET_PREGREET,       /* 554 5.5.1: talked before the greeting */
  TERN_NET_TLS_FAILED,     /* TLS handshake failed (detail: the reason) */
  TERN_NET_TLS_TIMEOUT,    /* handshake not done by its deadline */
  TERN_NET_PROXY_FAILED,   /* not a valid PROXY header */
  TERN_NET_PROXY_TIMEOUT,  /* PROXY header not complete by its deadline */
  TERN_NET_LINE_TIMEOUT,   /* 421 4.4.2: a command line not complete
                              within timeout_command of its first byte */
  TERN_NET_WRITE_TIMEOUT   /* output pending, no progress for
                              write_timeout_ms: the client stopped
                              reading; closed without a reply */
};

struct tern_net_event {
  size_t size;
  enum tern_net_event_type type;
  /* The connection: id, peer_addr/peer_port (PROXY applied once known),
   * local address, listener. Valid during the call only. */
  const struct tern_session_info *info;
  unsigned code;        /* the reply sent, 0 when none was */
  const char *enhanced; /* its enhanced code ("4.7.0"), NULL when none */
  const char *detail;   /* short reason in words; never NULL */
};

/* Server options. */
struct tern_server_options {
  size_t size;
  /* Template for every session (NULL: tern_server_config_init()'s
   * defaults); copied. Timeouts here are enforced. Per listener the
   * runtime sets, whatever the template says: lmtp (lmtp:// listeners),
   * auth_required and auth_insecure_ok (tern_listener_options; unix
   * sockets count as secure), the STARTTLS bit (listener's starttls and
   * certificates), the AUTH bit and auth_mechanisms (from `auth` and
   * auth_mechanisms below; no_auth clears it), the XCLIENT bit and
   * xclient_trusted (xclient_networks and the listener's xclient). */
  const struct tern_server_config *session;
  const struct tern_server_callbacks *callbacks; /* app callbacks; copied */
  void *ud;                           /* first userdata of each session */
  unsigned workers;                   /* event-loop threads; 0 = one per
                                         core (uv_available_parallelism) */
  unsigned max_connections;           /* all workers together; default
                                         10000; past it 421 4.7.0 */
  unsigned max_per_ip;                /* default 0 = no limit */
  unsigned greeting_delay_ms;         /* wait before the greeting; a
                                         client that talks first gets 554
                                         and is closed (default 0) */
  unsigned shutdown_timeout_ms;       /* graceful shutdown: how long
                                         sessions may finish (30 s) */
  const struct tern_tls_cert *tls_certs; /* first is the default */
  size_t tls_cert_count;
  const char *auth_mechanisms;        /* default "PLAIN LOGIN" */
  const struct tern_auth_callbacks *auth; /* NULL: no AUTH */
  void *auth_ud;                      /* for the auth callbacks */
  unsigned auth_fail_delay_ms;        /* first failed AUTH delay; doubles
                                         each time, max 8×; default 1000 */
  const char *xclient_networks;       /* "127.0.0.0/8 ::1/128" style list
                                         of peers allowed to use XCLIENT */
  unsigned auth_max_concurrent;       /* check_password calls running at
                                         once on the thread pool, per
                                         worker; default 2 (libuv's pool
                                         has 4 threads, which file I/O
                                         needs too); 0 counts as 1 */
  unsigned auth_max_queued;           /* checks waiting for one of those,
                                         per worker; past it AUTH gets
                                         454 4.7.0 at once; default 64 */
  /* Total deadlines (not idle timers: a byte now and then does not
   * extend them); 0 means the default. The command line's is
   * session.timeout_command_ms, counted from its first byte. */
  unsigned proxy_timeout_ms;          /* whole PROXY header; default 10 s */
  unsigned tls_handshake_timeout_ms;  /* whole TLS handshake (STARTTLS or
                                         smtps://); default 30 s */
  unsigned write_timeout_ms;          /* output pending and no byte of it
                                         taken by the client for this long:
                                         the connection is closed, unsent
                                         output dropped; default 60 s */
  /* Runtime events (see enum tern_net_event_type), for logging. Called
   * on the connection's worker thread with `ud` above; must not block
   * and must not call back into the server. NULL: none. */
  void (*on_event)(const struct tern_net_event *ev, void *ud);
  /* Where tern_server_new() writes why it failed, in words, with a NUL
   * (the server, and so tern_server_last_error(), is gone by then).
   * NULL: nowhere. */
  char *error;
  size_t error_size;
};

static inline void
tern_server_options_init(struct tern_server_options *o) {
  struct tern_server_options d = {0};
  d.size = sizeof d;
  d.workers = 1;
  d.max_connections = 10000;
  d.shutdown_timeout_ms = 30000;
  d.auth_mechanisms = "PLAIN LOGIN";
  d.auth_fail_delay_ms = 1000;
  d.auth_max_concurrent = 2;
  d.auth_max_queued = 64;
  d.proxy_timeout_ms = 10000;
  d.tls_handshake_timeout_ms = 30000;
  d.write_timeout_ms = 60000;
  *o = d;
}

/*
 * Create a server on `loop` (the first worker's loop). Copies the options
 * (strings included) and loads the TLS certificates now, so a bad file
 * fails here. Returns 0, TERN_EINVAL (a bad option or session template,
 * or a size-tagged struct with unknown fields set), TERN_ENOMEM,
 * TERN_ETLS (a certificate or key could not be loaded). On failure *out
 * is NULL, nothing needs freeing, and opts->error (when set) says why.
 */
TERN_EXTERN int tern_server_new(struct tern_server **out, uv_loop_t *loop,
                                const struct tern_server_options *opts);

/*
 * Add a listener: "smtp://HOST:PORT" (HOST an IPv4 address, "[IPv6]", or
 * "*" for all), "smtps://HOST:PORT" (implicit TLS), "lmtp://HOST:PORT",
 * "lmtp:///path/to.sock" or "smtp:///path/to.sock" (unix socket). Binds
 * now, so a port in use fails here (TERN_EADDRINUSE). `lo` may be NULL.
 * Only before tern_server_start().
 */
TERN_EXTERN int tern_server_listen(struct tern_server *srv, const char *url,
                                   const struct tern_listener_options *lo);

/*
 * Adopt an already-bound listening socket (systemd LISTEN_FDS); `url`
 * says what it is (its scheme picks SMTP, LMTP or implicit TLS; host and
 * port are informative: see tern_listener_matches_fd() to check them).
 * TERN_EINVAL when fd is not a listening socket. Same rules as listen.
 */
TERN_EXTERN int tern_server_listen_fd(struct tern_server *srv, int fd,
                                      const char *url,
                                      const struct tern_listener_options *lo);

/*
 * Does the socket `fd` listen where the listener URL says? A unix URL
 * matches a unix socket bound to the same path; a TCP URL one bound to
 * the same port and address ("*" matches 0.0.0.0 or [::]). Returns 1, 0,
 * or TERN_EINVAL (bad URL, fd not a socket). For socket activation: a
 * handed-over socket goes to the listener it matches, never by position.
 */
TERN_EXTERN int tern_listener_matches_fd(const char *url, int fd);

/* Start accepting (and start the worker threads). Returns 0 or an error. */
TERN_EXTERN int tern_server_start(struct tern_server *srv);

/*
 * Graceful shutdown: stop accepting at once; sessions in a transaction
 * may finish until shutdown_timeout_ms, idle ones get "421 4.3.2" now,
 * the rest at the deadline. `cb` runs on the first loop when every
 * session is gone and every handle closed; only then may the server be
 * freed. Calling it twice is harmless (the second cb is not called).
 */
TERN_EXTERN void tern_server_shutdown(struct tern_server *srv,
                                      void (*cb)(struct tern_server *srv,
                                                 void *arg),
                                      void *arg);

/* Free a server that was never started or whose shutdown completed. */
TERN_EXTERN void tern_server_free(struct tern_server *srv);

/* Reload the certificates from the same files; sessions already in TLS
 * keep theirs. Returns 0 or TERN_ETLS (the old ones stay). */
TERN_EXTERN int tern_server_reload_tls(struct tern_server *srv);

/*
 * Change a running server's settings; connections accepted from now on
 * get them, sessions already open keep theirs. What changes:
 *   - the session template `o->session` (hostname, banner, extensions,
 *     limits such as max_message_size and max_recipients, timeouts);
 *   - max_connections, max_per_ip, greeting_delay_ms, auth_fail_delay_ms,
 *     shutdown_timeout_ms;
 *   - the certificates `tls_certs` (the same or other files): all are
 *     loaded now, and they replace the current ones only if every one
 *     loads.
 * Everything else in `o` (callbacks, ud, workers, auth, auth_ud,
 * auth_mechanisms, xclient_networks) is ignored: those need a new
 * server. Listeners are not in `o` and cannot change either.
 * `o` and its strings are copied. Call it on the first loop's thread,
 * after tern_server_new() (started or not).
 * Returns 0; TERN_EINVAL (a bad session template: nothing changed);
 * TERN_ETLS (a certificate or key did not load: nothing changed,
 * tern_server_last_error() names the file); TERN_ESTATE (certificates
 * given to a server created without any, or none to a server created
 * with some: nothing changed); TERN_ENOMEM.
 */
TERN_EXTERN int tern_server_update(struct tern_server *srv,
                                   const struct tern_server_options *o);

/* A human-readable description of the last failure of new/listen/reload
 * (e.g. the OpenSSL error and file name). Never NULL. */
TERN_EXTERN const char *tern_server_last_error(const struct tern_server *srv);

/* Where the listener number `i` actually listens, e.g. after port 0. */
TERN_EXTERN int tern_server_listener_port(const struct tern_server *srv,
                                          size_t i);

/* Facts about a runtime session. Owned by the runtime and read-only;
 * new fields are only ever added at the end. */
struct tern_session_info {
  const char *id;              /* unique per process, for logs */
  const char *peer_addr;       /* client address text (PROXY/XCLIENT
                                  applied), "unix" for unix sockets */
  unsigned peer_port;
  const struct sockaddr *peer; /* NULL for unix sockets */
  const char *local_addr;
  unsigned local_port;
  const char *listener;        /* the URL it was accepted on */
  bool tls;
  const char *tls_version;     /* "TLSv1.3" ..., NULL without TLS */
  const char *tls_cipher;
  const char *tls_sni;         /* server name the client asked for */
  const char *auth_user;       /* NULL until AUTH succeeds */
  unsigned worker;             /* 0-based worker thread index */
  bool lmtp;                   /* accepted on an LMTP listener */
};

/* The info of a session created by a tern_server; NULL for a session the
 * application created itself. */
TERN_EXTERN const struct tern_session_info *
tern_session_info(const struct tern_server_session *s);

/* The loop a runtime session lives on (for the app's own async work). */
TERN_EXTERN uv_loop_t *tern_session_loop(const struct tern_server_session *s);

/* ==== client runtime ======================================================= */

/*
 * How a "mx:DOMAIN" client protects its connection (Postfix's
 * smtp_tls_security_level, per destination).
 */
enum tern_tls_policy {
  TERN_TLS_POLICY_AUTO = 0, /* what the domain publishes: DANE where its
                               MX host has DNSSEC-validated TLSA records
                               (RFC 7672), else MTA-STS where it has a
                               policy (RFC 8461: enforce, or testing),
                               else MAY */
  TERN_TLS_POLICY_NONE,     /* never STARTTLS */
  TERN_TLS_POLICY_MAY,      /* STARTTLS when offered, certificate not
                               verified; a failed handshake is retried
                               once in the clear: never a reason to defer */
  TERN_TLS_POLICY_ENCRYPT,  /* STARTTLS required, not verified */
  TERN_TLS_POLICY_VERIFY,   /* STARTTLS required, certificate verified
                               (system CAs or ca_file), name = the MX host */
  TERN_TLS_POLICY_DANE      /* DANE required: usable TLSA records must
                               exist and match; else defer */
};

/*
 * A connection to one SMTP/LMTP server, driving a tern_client_session on
 * a loop: name resolution (asynchronous, getaddrinfo on libuv's pool),
 * connect (each address in turn), implicit TLS or STARTTLS with
 * certificate and host-name verification, AUTH through GNU SASL, and
 * timeouts (RFC 5321 §4.5.3.2: 5 min greeting and commands, 3 min data
 * blocks, 10 min final reply). Messages go through the session:
 * tern_client_session_send()/_body()/_body_end() (or, a command at a
 * time, _mail()/_rcpt()/_data()) on tern_client_get_session(cl) once
 * on_ready has been called; writes are flushed by the runtime.
 *
 * Endpoints: "smtp://host[:25]" (STARTTLS when offered), "smtp+starttls://
 * host[:587]" (STARTTLS required), "smtps://host[:465]" (implicit TLS),
 * "lmtp://host[:24]", "lmtp:///path/to.sock" (unix socket).
 *
 * "mx:DOMAIN" delivers to a domain (RFC 5321 §5.1) through options.
 * resolver: its MX hosts in preference order (random among equals), or
 * the domain itself without MX (implicit MX); every address of a host in
 * turn; the next address or host after a connection failure, a 4xx/5xx
 * greeting, a refused EHLO, or a TLS failure the policy does not allow;
 * at most 10 addresses in all per connect (RFC 5321 §5.1 asks for a
 * bound), at most 10 MX hosts. An MX name that is an address in text
 * is not used (none left: 451 4.4.3). With a DNSSEC-validated MX
 * answer (policy AUTO or DANE) a host whose A or AAAA lookup failed
 * (bogus, SERVFAIL, timeout) is skipped (RFC 7672 §2.1.1). A host
 * whose TLSA lookup fails (other than a validated denial) is skipped
 * (RFC 7672 §2.2); validated TLSA records none of which is usable make
 * TLS mandatory, unverified (policy "dane-unusable"); with an MTA-STS
 * policy in enforce mode, hosts its "mx" patterns do not name are
 * skipped. With require_verified_tls a host that does not offer
 * STARTTLS or (after STARTTLS) REQUIRETLS is left (RFC 8689 §4.2.1);
 * when every host failed that way the failure is permanent (5.7.30).
 * TLS follows options.tls_policy (tls_verify, tls_server_name and
 * starttls are not used: the policy decides); the name checked is the
 * MX host's. A null MX, a domain that does not exist, or no host left
 * fail the connect (on_connect's status), and
 * tern_client_failure_reply() says what to tell the sender.
 * tern_client_conn_info() says which host took the connection and how
 * its certificate was verified.
 * The URL's STARTTLS level is a floor: options.session->starttls can
 * raise it (e.g. REQUIRED on smtp://), never lower it. Certificates are
 * verified the same way for STARTTLS (opportunistic too) and smtps://:
 * with tls_verify a chain or host-name failure fails the connection
 * (TERN_ETLS) unless the verify hook says to go on. With auth_user set
 * AUTH is required: the mechanism is chosen after EHLO (after STARTTLS)
 * from what the server offers, by auth_mechanisms' order.
 *
 * One thread: all calls on the loop's thread; callbacks run there.
 */
struct tern_client;

struct tern_client_options {
  size_t size;
  const char *url;                      /* endpoint, see above */
  /* EHLO name, pipelining, ... (NULL: tern_client_config_init()'s
   * defaults); copied. The runtime sets, whatever it says: lmtp (from
   * lmtp:// URLs), starttls (raised to the URL's floor, see above),
   * tls_active (smtps://), and with auth_user set auth_required (true)
   * and auth_mechanism (chosen from auth_mechanisms below). */
  const struct tern_client_config *session;
  const struct tern_client_callbacks *callbacks; /* on_auth is provided
                                           by the runtime when auth_user
                                           is set */
  void *ud;                             /* for the callbacks */
  /* TLS */
  bool tls_verify;                      /* default true */
  const char *ca_file;                  /* PEM bundle; NULL = system */
  const char *ca_dir;                   /* hashed directory; NULL = system */
  const char *tls_server_name;          /* SNI and the name to verify;
                                           default: the URL's host */
  /* The app's say on a certificate: `ok` is OpenSSL's verdict (with the
   * host-name check), `why` its reason when not ok. Return true to go
   * on. NULL: go on only when ok (and tls_verify). */
  bool (*verify)(struct tern_client *cl, bool ok, const char *why, void *ud);
  /* AUTH through GNU SASL */
  const char *auth_user;                /* NULL: no AUTH */
  const char *auth_password;            /* PLAIN, LOGIN, CRAM-MD5, SCRAM */
  const char *auth_token;               /* XOAUTH2 bearer token */
  const char *auth_authzid;             /* optional */
  const char *auth_mechanisms;          /* preference order; default
                                           "SCRAM-SHA-256 CRAM-MD5 PLAIN
                                           LOGIN" (+ XOAUTH2 with a token);
                                           PLAIN and LOGIN only over TLS
                                           whose certificate verified:
                                           with tls_verify, ok or accepted
                                           by verify() */
  bool auth_insecure_ok;                /* allow PLAIN/LOGIN in the clear
                                           or over unverified TLS */
  /* timeouts (ms); 0 = the RFC 5321 §4.5.3.2 default */
  unsigned connect_timeout_ms;          /* default 30 s */
  unsigned command_timeout_ms;          /* default 5 min */
  unsigned data_timeout_ms;             /* default 10 min (final reply) */
  /* Connection outcome: status 0 once the session is ready (after
   * on_ready), or a negative TERN_E* code (ERESOLVE, ECONNECT, ETLS,
   * ETIMEDOUT, EAUTH, EPROTO) with tern_client_last_error(). */
  void (*on_connect)(struct tern_client *cl, int status, void *ud);
  /* The connection is closed; the client may be freed from here. */
  void (*on_close)(struct tern_client *cl, void *ud);
  /* ---- mail to a domain: "mx:DOMAIN" URLs (see below) ---- */
  struct tern_resolver *resolver;       /* tern/resolve.h, on the same
                                           loop; NULL: the client makes
                                           its own from the system's
                                           configuration (and frees it) */
  enum tern_tls_policy tls_policy;      /* mx: URLs only; default AUTO */
  bool require_verified_tls;            /* REQUIRETLS (RFC 8689): only
                                           hosts whose certificate is
                                           verified (DANE, MTA-STS, or
                                           PKIX with a DNSSEC-validated
                                           MX name); none: the connect
                                           fails, permanently (5.7.30) */
  unsigned mx_port;                     /* mx: URLs; default 25 */
  /* every URL: the local address to connect from ("192.0.2.1",
   * "2001:db8::1"); NULL: the system's choice. An address of the other
   * family than the peer's is not used for that peer. */
  const char *bind_addr;
  const char *bind_addr6;
  /* mx: URLs: this server's own addresses (its listeners', and every
   * interface's when a listener is on a wildcard address). An MX host
   * with one of them is this server: it and every MX host of the same
   * or a worse preference are dropped (a backup MX hands mail only to
   * better ones); when that leaves none, the connect fails permanently
   * with 554 5.4.6 "mail for DOMAIN loops back to myself" (Postfix's
   * rule). With a list given, these count as ours too: 0.0.0.0 and ::
   * (a connection to them reaches this machine), and every 127.0.0.0/8
   * address when 127.0.0.1 is in the list with the mx port (or port 0):
   * a wildcard listener gets lo's 127.0.0.1/8 and Linux delivers the
   * whole /8 to it (a listener on one other 127.0.0.x takes only that
   * address). An IPv4-mapped IPv6 address is its IPv4 address; the port
   * counts only in the 127/8 rule. Copied by tern_client_new. NULL/0: no
   * check. */
  const struct sockaddr_storage *self_addrs;
  size_t nself_addrs;
};

static inline void
tern_client_options_init(struct tern_client_options *o) {
  struct tern_client_options d = {0};
  d.size = sizeof d;
  d.tls_verify = true;
  *o = d;
}

/* Create (copies the options and their strings). Returns 0, TERN_EINVAL
 * (bad URL, or a size-tagged struct from a newer header with unknown
 * fields set), TERN_ETLS (CA file unreadable), TERN_ENOMEM. On failure
 * *out is NULL. */
TERN_EXTERN int tern_client_new(struct tern_client **out, uv_loop_t *loop,
                                const struct tern_client_options *o);
/* Start resolving and connecting. Returns 0 (outcome via on_connect) or
 * TERN_ESTATE (already started). */
TERN_EXTERN int tern_client_connect(struct tern_client *cl);
/* The session, for sending messages. Valid until on_close. */
TERN_EXTERN struct tern_client_session *
tern_client_get_session(struct tern_client *cl);
/*
 * Send the body of the current message from a file descriptor (read on
 * libuv's thread pool, never whole in memory), then end it. `fd` stays
 * the caller's. Returns 0 or TERN_ESTATE (no message waiting for a
 * body). The outcome arrives at on_message_done.
 */
TERN_EXTERN int tern_client_send_fd(struct tern_client *cl, int fd);
/* QUIT (when connected) and close; on_close follows. */
TERN_EXTERN void tern_client_close(struct tern_client *cl);
/* Free after on_close (or before connect). */
TERN_EXTERN void tern_client_free(struct tern_client *cl);
/* What went wrong last, in words (never NULL; "no error" while nothing
 * has failed in the runtime, e.g. when the session itself refused a
 * reply it could not parse). */
TERN_EXTERN const char *tern_client_last_error(const struct tern_client *cl);
/* TLS facts once connected: version ("TLSv1.3") or NULL without TLS. */
TERN_EXTERN const char *tern_client_tls_version(const struct tern_client *cl);
TERN_EXTERN void *tern_client_userdata(const struct tern_client *cl);

/* Where a connection went and how it is protected (any URL). The struct
 * and its strings are the client's, valid until the next connect or
 * free; fields are filled as the connection gets that far. */
struct tern_client_conn_info {
  const char *host;           /* host connected to: the MX host's name
                                 for mx: URLs, else the URL's host;
                                 NULL before a connection */
  const char *addr;           /* its address as text, "127.0.0.2", "::1" */
  unsigned port;
  const char *tls_version;    /* "TLSv1.3", NULL without TLS */
  const char *tls_cipher;
  const char *verified;       /* what verified the certificate: "dane-ee",
                                 "dane-ta", "mta-sts", "ca"; NULL: not
                                 verified (or no TLS) */
  const char *policy;         /* what applied: "none", "may", "encrypt",
                                 "verify", "dane", "mta-sts",
                                 "mta-sts-testing", "dane-unusable" (the
                                 host has DNSSEC-validated TLSA records
                                 none of which SMTP can use, RFC 7672
                                 §3.1.3: TLS required, not verified, as
                                 "encrypt"; §2.2) (mx: URLs; NULL for
                                 other URLs) */
  const char *policy_failure; /* a failure the policy let pass (MTA-STS
                                 testing, RFC 8461 §5): what it was;
                                 else NULL */
  unsigned hosts_tried;       /* mx: URLs: addresses tried before (and
                                 including) this one */
};
TERN_EXTERN const struct tern_client_conn_info *
tern_client_conn_info(const struct tern_client *cl);

/*
 * After a failed connect (on_connect with status < 0): the reply that
 * tells the recipients' senders what happened (RFC 3463 codes), e.g.
 * 550 5.1.10 (null MX, RFC 7505), 550 5.1.2 (no such domain), 451
 * 4.4.3 (DNS failure), 451 4.4.1 (no host answered), 421 4.4.2 (every
 * host's greeting refused), 451 4.7.5 (TLS or DANE verification failed
 * everywhere), 550 5.7.30 (REQUIRETLS cannot be met). `text` names the
 * host and the reason; strings are the client's until the next connect
 * or free. Returns true when the failure is permanent (5xx).
 */
TERN_EXTERN bool tern_client_failure_reply(const struct tern_client *cl,
                                           struct tern_reply *out);

/* ==== one-call send ======================================================== */

/*
 * Send one message with one call: connect to `url`, say EHLO, do STARTTLS
 * and AUTH as the URL and the options ask, send MAIL, every RCPT, the
 * body, QUIT, and tell the outcome to `cb` — the common case of
 * nodemailer's sendMail(), Python's smtplib.sendmail() and go-smtp's
 * SendMail(), on a libuv loop. Built on tern_client_new() and the session
 * API above: use those for several messages on one connection, DSN
 * parameters or a reply-by-reply view.
 *
 *   static void done(const struct tern_send_result *r, void *ud) {
 *     if (r->error)
 *       fprintf(stderr, "not sent: %s\n", r->error_text);
 *     else if (r->delivered < r->nrcpt)
 *       ...  r->rcpts[i].rcpt.code / .text say who was refused, and why
 *   }
 *   const char *to[] = {"bob@example.org"};
 *   struct tern_send_body b = tern_send_body_mem(msg, msg_len);
 *   tern_send(loop, "smtp://mx.example.org", "alice@example.net", to, 1,
 *             &b, NULL, done, NULL);
 *   uv_run(loop, UV_RUN_DEFAULT);
 */

/* The message (headers and body, as it is to be stored: lines may end
 * in LF or CRLF; tern sends CRLF and dot-stuffs). Either in memory, or
 * read from a file descriptor to its end. */
struct tern_send_body {
  const void *data; /* the message in memory (copied by tern_send()), or
                       NULL: read it from fd */
  size_t len;       /* bytes at data */
  int fd;           /* when data is NULL: read from here, from its
                       offset to its end, on libuv's thread pool (never
                       whole in memory). tern_send() duplicates it, so the
                       caller may close its own at once; the duplicate
                       shares the offset, so do not read or seek it until
                       the callback (a regular file's offset is then
                       where it was: it is read with pread) */
};

/* The message in memory (NULL: an empty one). */
static inline struct tern_send_body tern_send_body_mem(const void *data,
                                                       size_t len) {
  struct tern_send_body b = {data ? data : "", data ? len : 0, -1};
  return b;
}

/* The message read from `fd`. */
static inline struct tern_send_body tern_send_body_fd(int fd) {
  struct tern_send_body b = {NULL, 0, fd};
  return b;
}

/* What tern_send() may change; tern_send_options_init() gives the
 * defaults below. Strings are copied during the call. */
struct tern_send_options {
  size_t size;
  const char *ehlo_name;        /* default "localhost" */
  enum tern_starttls starttls;  /* raises the URL's TLS level, never lowers
                                   it: TERN_STARTTLS_REQUIRED on smtp://
                                   refuses to go on in the clear. Default
                                   OFF: what the URL says (smtp:// uses
                                   STARTTLS when offered) */
  bool tls_verify;              /* verify the certificate and host name
                                   (default true); a failure fails the
                                   send with TERN_ETLS */
  const char *ca_file;          /* PEM bundle; NULL: the system's */
  const char *auth_user;        /* NULL: no AUTH. Set: AUTH is required,
                                   the mechanism chosen from what the
                                   server offers (SCRAM-SHA-256, CRAM-MD5,
                                   PLAIN, LOGIN; PLAIN and LOGIN only
                                   over TLS with tls_verify on, unless
                                   auth_insecure_ok) */
  const char *auth_password;
  bool auth_insecure_ok;
  unsigned timeout_ms;          /* for connecting, for each command and
                                   for the final reply; 0: the RFC 5321
                                   §4.5.3.2 defaults (30 s to connect, 5
                                   min per command, 10 min after data) */
  enum tern_body body;          /* BODY= (8BITMIME...), sent only when
                                   the server offers it; default none */
  /* "mx:DOMAIN" URLs (see tern_client_options): the resolver (NULL: one
   * made from the system's configuration for this send) and the TLS
   * policy (tls_verify is not used for them) */
  struct tern_resolver *resolver;
  enum tern_tls_policy tls_policy;
  bool requiretls;              /* REQUIRETLS (RFC 8689) on this message:
                                   MAIL carries it, and the connection
                                   must be verified TLS (mx: URLs:
                                   require_verified_tls; other URLs:
                                   STARTTLS required and tls_verify on) */
};

static inline void tern_send_options_init(struct tern_send_options *o) {
  struct tern_send_options d = {0};
  d.size = sizeof d;
  d.tls_verify = true;
  *o = d;
}

/* A server reply (or one made here: local). */
struct tern_send_reply {
  int code;             /* 200..599; 0: no reply (never asked, or the
                           connection ended first) */
  const char *enhanced; /* "2.1.5", or NULL when the reply had none */
  const char *text;     /* the reply's lines without "ddd-", joined by LF;
                           "" when none */
  bool local;           /* made here, not sent by the server: the
                           connection ended, or the message could not be
                           sent (then text says why) */
};

/* One recipient's fate, in the order given to tern_send(). */
struct tern_send_rcpt_result {
  const char *address;
  struct tern_send_reply rcpt; /* the reply to RCPT TO (code 0: not
                                  answered, e.g. MAIL was refused) */
  struct tern_send_reply data; /* the reply that decided the message for
                                  this recipient: in LMTP its own reply
                                  after the data (RFC 2033 §4.2); in SMTP
                                  the message's (see result.reply). Code 0
                                  when RCPT was refused or the message
                                  never got that far */
  bool delivered;              /* the server took the message for this
                                  recipient: rcpt and data both 2xx */
};

/*
 * The outcome, handed to the callback. It and every string it points
 * to are the library's, valid until the callback returns: copy what
 * you keep.
 */
struct tern_send_result {
  int error;              /* 0: the server answered the message (reply
                             says how: accepted, or refused); else why no
                             answer came, a negative TERN_E* code:
                             ERESOLVE, ECONNECT, ETIMEDOUT, ETLS, EAUTH
                             (credentials refused, or no usable
                             mechanism), EPROTO (greeting or EHLO refused,
                             malformed replies), ECLOSED (the connection
                             ended, or a 421), EIO (reading fd),
                             EINVAL/ENOTSUP (the server cannot take this
                             envelope: SMTPUTF8, SIZE), ENOMEM */
  const char *error_text; /* the error in words (as
                             tern_client_last_error()); "" when error
                             is 0 */
  struct tern_send_reply reply; /* the message's final reply: the one
                             after the data, or the refusal that ended
                             it (MAIL, every RCPT, DATA); in LMTP the
                             first recipient's failure, else a success.
                             Code 0 when the message never got that far,
                             except for "mx:" URLs whose connect failed:
                             then the local reply of
                             tern_client_failure_reply() (e.g. 550
                             5.1.10 for a null MX) */
  const struct tern_send_rcpt_result *rcpts;
  size_t nrcpt;
  size_t delivered;       /* recipients with delivered true: all of
                             them (== nrcpt) is complete success */
  const char *tls_version;/* "TLSv1.3" when the message went over TLS,
                             else NULL */
};

typedef void (*tern_send_cb)(const struct tern_send_result *r, void *ud);

/*
 * Send one message from `from` ("" for the null sender <>) to `rcpts`
 * (nrcpt addresses without <>, 1..100000) through `url` (the client URLs
 * above: smtp://, smtp+starttls://, smtps://, lmtp://, lmtp:///path), then
 * QUIT. Addresses with non-ASCII characters are sent with SMTPUTF8.
 * `opts` may be NULL (the defaults of tern_send_options_init()).
 *
 * Ownership: everything is copied or duplicated during the call (url,
 * from, rcpts, the options' strings, the body's bytes; the body's fd is
 * dup()ed): the caller may free or close its own at once. `ud` stays the
 * caller's and is handed to cb.
 *
 * Returns 0, and then `cb` is called exactly once, on the loop's thread,
 * never from inside tern_send(), after the connection is closed (the loop
 * must run until then). Or returns a negative code and `cb` is never
 * called: TERN_EINVAL (NULL loop, url, from, rcpts, body or cb; nrcpt 0;
 * a bad URL; an address that is not an RFC 5321 mailbox, or an
 * options struct from a newer tern with fields set that this one does
 * not know), TERN_ETLS (ca_file
 * unreadable), TERN_EIO (the fd cannot be duplicated, or the loop's
 * timer cannot start), TERN_ENOMEM. Call on the loop's thread.
 */
TERN_EXTERN int tern_send(uv_loop_t *loop, const char *url, const char *from,
                          const char *const *rcpts, size_t nrcpt,
                          const struct tern_send_body *body,
                          const struct tern_send_options *opts,
                          tern_send_cb cb, void *ud);

#ifdef __cplusplus
}
#endif
#endif /* TERN_NET_H */
