/*
 * tern — the sans-IO SMTP/LMTP client session.
 *
 * The mirror image of server.h: the caller feeds the server's reply
 * bytes, the session queues command bytes, and the caller writes them
 * wherever it likes. The session drives the protocol itself: greeting,
 * EHLO (LHLO), STARTTLS when asked, AUTH through a callback, then one
 * message at a time: MAIL, RCPT..., DATA or BDAT, the body, the end.
 *
 *   tern_client_session_new()       create
 *   tern_client_session_feed()      server bytes in (returns bytes taken)
 *   tern_client_session_output()    command bytes out; _consume() when sent
 *   tern_client_session_want()      read? write? TLS? body? close?
 *   tern_client_session_send()      start a message (when ready)
 *   tern_client_session_body()      message bytes (when TERN_CLIENT_WANT_BODY)
 *   tern_client_session_body_end()  the end of the message
 *   tern_client_session_quit()      QUIT and close
 *
 * Or, one command at a time (an "incremental" transaction, for a proxy
 * that answers its own client with the server's replies):
 *
 *   tern_client_session_mail()      MAIL FROM, with its own reply callback
 *   tern_client_session_rcpt()      one RCPT TO, with its own callback
 *   tern_client_session_data()      DATA, with its own callback (354)
 *   then _body() and _body_end() as above; on_message_done ends it.
 *
 * Every reply the server sends is delivered to on_reply as
 * {code, enhanced code, lines}. Outgoing bodies are CRLF-normalised and
 * dot-stuffed (DATA): a bare CR or LF becomes CRLF, a line starting with
 * "." gets a second one, and the end is always "\r\n.\r\n", so no body can
 * smuggle an end of data. Every string from the application (EHLO name,
 * addresses, parameter values) is checked: CR, LF, NUL, and anything the
 * grammar does not allow, are refused with TERN_EINVAL, never sent.
 *
 * Threading: like server sessions, one thread at a time; callbacks run
 * on the calling thread. From a callback the application may call
 * _send(), _body(), _body_end(), _rset(), _noop(), _vrfy(), _quit() and
 * the getters, and _mail(), _rcpt(), _data(); not _free().
 */
#ifndef TERN_CLIENT_H
#define TERN_CLIENT_H

#include <stdbool.h>

#include "common.h"
#include "server.h" /* enum tern_body, tern_dsn_ret, tern_notify */

#ifdef __cplusplus
extern "C" {
#endif

struct tern_client_session;

/* Which command a reply answers. */
enum tern_client_cmd {
  TERN_CMD_GREETING = 0,
  TERN_CMD_EHLO,     /* or LHLO / HELO */
  TERN_CMD_STARTTLS,
  TERN_CMD_AUTH,     /* each step of the exchange */
  TERN_CMD_MAIL,
  TERN_CMD_RCPT,     /* index = recipient number */
  TERN_CMD_DATA,     /* the 354 (or refusal) */
  TERN_CMD_DATA_END, /* after the body; LMTP: index = accepted recipient */
  TERN_CMD_BDAT,     /* a chunk; the last one's reply is TERN_CMD_DATA_END */
  TERN_CMD_RSET,
  TERN_CMD_NOOP,
  TERN_CMD_VRFY,
  TERN_CMD_QUIT
};

/* A server reply. Strings live until the callback returns. */
struct tern_client_reply {
  int code;                    /* 200..599 */
  const char *enhanced;        /* "2.1.5", or NULL when the reply had
                                  none (NULL = none, as in tern_reply) */
  const struct tern_str *lines;/* text of each line, without "ddd-" */
  size_t nlines;               /* ≥ 1 */
};

/* STARTTLS policy. */
enum tern_starttls {
  TERN_STARTTLS_OFF = 0,      /* never */
  TERN_STARTTLS_OPPORTUNISTIC,/* when offered */
  TERN_STARTTLS_REQUIRED      /* fail the session when not offered */
};

struct tern_client_config {
  size_t size;               /* set by tern_client_config_init() */
  const char *ehlo_name;     /* default "localhost"; a domain or [literal] */
  bool lmtp;                 /* LHLO, one data reply per accepted rcpt */
  bool pipelining;           /* use PIPELINING when offered (default on) */
  bool chunking;             /* use BDAT when offered (default off) */
  enum tern_starttls starttls; /* default OFF (the runtime sets it) */
  bool tls_active;           /* TLS from the start (smtps://) */
  const char *auth_mechanism;/* e.g. "PLAIN"; NULL = no AUTH */
  bool auth_required;        /* fail when AUTH is not offered/usable */
  unsigned max_recipients;   /* per message; default 1000 */
  size_t output_high_water;  /* body() takes input while less than this
                                is unsent; default 65536 */
  const struct tern_mem *mem;
};

static inline void tern_client_config_init(struct tern_client_config *c) {
  struct tern_client_config d = {0};
  d.size = sizeof d;
  d.ehlo_name = "localhost";
  d.pipelining = true;
  d.max_recipients = 1000;
  d.output_high_water = 65536;
  *c = d;
}

/* One recipient of a message. */
struct tern_client_rcpt {
  const char *address;    /* mailbox without <>, e.g. "bob@example.org" */
  unsigned notify;        /* TERN_NOTIFY_* (DSN), 0 = none */
  const char *orcpt;      /* DSN ORCPT address ("rfc822;" is added), or NULL */
};

/* A message to send. It and everything it points to must stay valid
 * until on_message_done() for it has returned. */
struct tern_client_message {
  const char *from;       /* "" for the null sender <> */
  const struct tern_client_rcpt *rcpts;
  size_t nrcpts;          /* 1..max_recipients */
  uint64_t size;          /* expected size for SIZE=, 0 = unknown */
  enum tern_body body;    /* BODY= (only if offered; BINARYMIME needs
                             CHUNKING and is sent raw) */
  bool smtputf8;          /* SMTPUTF8 (needed for UTF-8 addresses) */
  bool requiretls;        /* REQUIRETLS (RFC 8689): only over TLS */
  enum tern_dsn_ret ret;  /* DSN RET= */
  const char *envid;      /* DSN ENVID= (xtext-encoded by tern), or NULL */
};

/* How a message ended. */
struct tern_client_outcome {
  int code;             /* the deciding reply: DATA_END (SMTP), or the
                           failure (MAIL, all RCPTs, DATA); in LMTP the
                           first failure, else 250; a local failure is
                           5xx/4xx with local = true */
  bool local;           /* decided here (SIZE over limit, TLS policy,
                           bad argument), never sent */
  size_t accepted;      /* recipients accepted at RCPT */
  size_t delivered;     /* recipients whose message was accepted (SMTP:
                           accepted or 0; LMTP: per data reply) */
};

/* on_auth's first-step answer for "no initial response" (see on_auth). */
#define TERN_CLIENT_AUTH_NO_IR (-1000L)

struct tern_client_callbacks {
  size_t size;
  /* Every server reply, in order. index: recipient number for RCPT, the
   * accepted recipient's number (in RCPT order among accepted ones) for
   * LMTP DATA_END, else 0. */
  void (*on_reply)(struct tern_client_session *c, enum tern_client_cmd cmd,
                   unsigned index, const struct tern_client_reply *r,
                   void *ud);
  /* Greeting, EHLO, STARTTLS and AUTH are done: send messages now. Also
   * after each message (on_message_done comes first). */
  void (*on_ready)(struct tern_client_session *c, void *ud);
  /*
   * One AUTH step for the mechanism in the config. `challenge` is the
   * server's base64 text (has_challenge false for the first step, before
   * any 334). Write the base64 response into out[0..cap) and return its
   * length (0 = empty response), or a negative code to cancel ("*").
   * On the first step only, returning
   * TERN_CLIENT_AUTH_NO_IR sends "AUTH <mech>" without an initial
   * response (server-first mechanisms such as CRAM-MD5, RFC 4954 §4:
   * "=" would be an empty initial response, which they do not allow);
   * on_auth is then called again with the server's first 334 challenge.
   */
  long (*on_auth)(struct tern_client_session *c, struct tern_str challenge,
                  bool has_challenge, char *out, size_t cap, void *ud);
  /* The current message ended (delivered, partly delivered, or not). */
  void (*on_message_done)(struct tern_client_session *c,
                          const struct tern_client_outcome *o, void *ud);
  /*
   * The session failed: err is TERN_EPROTO (a malformed or unexpected
   * reply, a greeting or EHLO refused), TERN_ETLS (STARTTLS required but
   * not offered or refused), TERN_EAUTH (AUTH refused, or not offered
   * when required), TERN_ECLOSED (server closed or sent 421). `r` is the
   * reply that caused it, or NULL. A message in progress gets
   * on_message_done with a local 4xx first. The session then wants close.
   */
  void (*on_error)(struct tern_client_session *c, int err,
                   const struct tern_client_reply *r, void *ud);
  /*
   * Choose the AUTH mechanism once it can be chosen: called after the (last) EHLO reply
   * has been parsed — i.e. after STARTTLS when TLS is started — and
   * before AUTH would be sent, with the mechanisms the server offered
   * (space-separated, as tern_client_session_auth_mechs(); "" when AUTH
   * is not offered) and whether TLS is active now. Return the mechanism
   * name to use (it must stay valid until the AUTH exchange ends), or
   * NULL for no AUTH. When this callback is set it replaces
   * config.auth_mechanism; AUTH then runs with on_auth as usual. With
   * config.auth_required, NULL (or AUTH not offered) fails the session
   * with TERN_EAUTH (on_error, r = NULL), as a configured mechanism the
   * server does not offer does.
   */
  const char *(*on_auth_mechanism)(struct tern_client_session *c,
                                   const char *offered, bool tls, void *ud);
  /* body() would take bytes again: the 354 arrived (or, for BDAT, the
   * envelope's replies), or output drained below the high-water mark
   * after body() had taken less than it was given. Fired on the change
   * only, from feed() or consume(). A forwarding proxy resumes its
   * paused inbound session here. */
  void (*on_body_ready)(struct tern_client_session *c, void *ud);
};

static inline void
tern_client_callbacks_init(struct tern_client_callbacks *cb) {
  struct tern_client_callbacks d = {0};
  d.size = sizeof d;
  *cb = d;
}

/* Create a session that waits for the server's greeting. cfg and cb are
 * copied (strings too; cfg NULL = defaults, cb NULL = no callbacks); `ud`
 * is handed to every callback and owned by the caller. Sets *out and
 * returns 0, or TERN_EINVAL (NULL out, bad EHLO name, mechanism name
 * syntax, max_recipients 0, a size field larger than this library knows
 * with non-zero extra bytes) or TERN_ENOMEM. On failure *out is NULL
 * (when out is not NULL) and nothing needs freeing: nothing stays
 * allocated and no callback has fired. */
TERN_EXTERN int tern_client_session_new(struct tern_client_session **out,
                                        const struct tern_client_config *cfg,
                                        const struct tern_client_callbacks *cb,
                                        void *ud);
/* Free the session and its buffers. Fires no callback; a message in
 * progress is simply dropped (call _eof() first to get on_message_done).
 * NULL is a no-op. Not from inside one of its callbacks. */
TERN_EXTERN void tern_client_session_free(struct tern_client_session *c);

/* Server bytes. Returns bytes taken (fewer only when the session stops:
 * STARTTLS accepted, or closed), or a negative error. */
TERN_EXTERN long tern_client_session_feed(struct tern_client_session *c,
                                          const void *buf, size_t len);
/* The queued command bytes: sets *data, returns their length (0 = none).
 * The pointer is valid until the next call on the session other than
 * output(). Mark what was written with _consume(n) (n ≤ the length; more
 * is clamped); consume may fire callbacks (on_body_ready, and the next
 * step of a message). */
TERN_EXTERN size_t tern_client_session_output(struct tern_client_session *c,
                                              const char **data);
TERN_EXTERN void tern_client_session_consume(struct tern_client_session *c,
                                             size_t n);

enum tern_client_want {
  TERN_CLIENT_WANT_READ = 1u << 0,  /* replies are awaited */
  TERN_CLIENT_WANT_WRITE = 1u << 1, /* output is queued */
  TERN_CLIENT_WANT_TLS = 1u << 2,   /* start TLS, then _tls_started() */
  TERN_CLIENT_WANT_BODY = 1u << 3,  /* body() takes bytes now */
  TERN_CLIENT_WANT_CLOSE = 1u << 4, /* write the output, then close */
  TERN_CLIENT_READY = 1u << 5       /* idle: send() may be called */
};
TERN_EXTERN unsigned tern_client_session_want(const struct tern_client_session *c);

/* TLS is up after STARTTLS: bytes received before are discarded (RFC
 * 3207 §4.2), EHLO is sent again. Returns 0 or TERN_ESTATE. */
TERN_EXTERN int tern_client_session_tls_started(struct tern_client_session *c);

/* What the server offered in its EHLO/LHLO reply, as TERN_EXT_* bits
 * (common.h), the same bits a server session's config uses; valid once
 * ready, 0 after HELO. */
TERN_EXTERN unsigned tern_client_session_caps(const struct tern_client_session *c);
TERN_EXTERN uint64_t tern_client_session_max_size(const struct tern_client_session *c);
/* AUTH mechanisms the server offered, space-separated, or "". */
TERN_EXTERN const char *
tern_client_session_auth_mechs(const struct tern_client_session *c);

/*
 * Start a message (only when READY). With PIPELINING, MAIL, every RCPT
 * and DATA go out as one group (RFC 2920 §3.1). Returns 0, TERN_ESTATE
 * (not ready), TERN_EINVAL (an address or parameter that cannot be sent:
 * syntax, CR/LF/NUL, UTF-8 without smtputf8, nrcpts 0 or too many) or
 * TERN_ENOTSUP (SMTPUTF8/BINARYMIME/REQUIRETLS asked but not offered;
 * also SIZE over the server's limit: then on_message_done reports a
 * local 552 instead). Nothing is sent on error.
 */
TERN_EXTERN int tern_client_session_send(struct tern_client_session *c,
                                         const struct tern_client_message *m);

/*
 * ---- Incremental transactions ------------------------------------------
 *
 * The envelope one command at a time, each with its own reply callback,
 * like smtp-protocol's client from()/to()/data(): a forwarding proxy
 * sends each recipient on when its own client sends it and answers that
 * client with the server's own reply, so that no recipient is told more
 * or less than the server said.
 *
 * The callback is called exactly once for every call that returned 0:
 * with the server's reply to that command (local false), or, when the
 * session fails, is closed (_quit(), _eof()) or the message ends before
 * the command could be answered, with a reply made here (local true:
 * 421 4.4.2 when the connection was lost, else 451 4.4.2 or the code
 * that ended the message). It runs on the thread that fed the reply (or
 * that called the function that ended the session), before the reply is
 * applied to the session and before on_message_done; on_reply sees the
 * same reply first. From it the application may call _rcpt(), _data(),
 * _body(), _body_end(), _quit() and the getters. `r` and its strings
 * live until it returns.
 *
 * Commands go out at once when the server offers PIPELINING (RFC 2920),
 * else each waits for the previous reply; the session holds them until
 * then (at most 32 commands and 8 KiB: TERN_ENOSPACE past that, which a
 * proxy answering each command before taking the next never meets).
 * A MAIL the server refuses ends the message (on_message_done with its
 * code, after the callback); refused recipients do not: add others, or
 * call _data() once at least one was accepted. After _data() the message
 * goes on as with _send(): its 354 comes to the data() callback, the
 * body goes through _body() / _body_end(), and on_message_done reports
 * the end (per-recipient data replies in LMTP through on_reply,
 * TERN_CMD_DATA_END, index = accepted recipient number).
 */
typedef void (*tern_client_reply_fn)(struct tern_client_session *c,
                                     const struct tern_client_reply *r,
                                     bool local, void *arg);

/*
 * Start an incremental transaction with MAIL FROM (only when READY).
 * m->from and the MAIL parameters (size, body, smtputf8, requiretls,
 * ret, envid) are used as by _send() and copied: m need not outlive the
 * call; m->rcpts and m->nrcpts are ignored. A BINARYMIME message goes
 * in BDAT (RFC 3030 §3); every other one in DATA, whatever
 * config.chunking says. Returns 0, TERN_EINVAL (NULL, a bad address or
 * parameter), TERN_ESTATE (not ready), TERN_ENOTSUP (SMTPUTF8,
 * BINARYMIME (with CHUNKING) or REQUIRETLS (over TLS) asked but not
 * offered), TERN_ERANGE (SIZE over the server's announced limit, RFC
 * 1870 §6), TERN_ENOMEM. Nothing is sent and `fn` is never called on
 * error.
 */
TERN_EXTERN int tern_client_session_mail(struct tern_client_session *c,
                                         const struct tern_client_message *m,
                                         tern_client_reply_fn fn, void *arg);
/*
 * Add one recipient (RCPT TO, with NOTIFY/ORCPT when the server offers
 * DSN). `r` is copied. Returns 0, TERN_EINVAL (bad address or
 * parameter, UTF-8 without smtputf8 in _mail()), TERN_ESTATE (no
 * incremental transaction open, _data() called already, or the message
 * ended: MAIL refused, session failed), TERN_ERANGE (more than
 * config.max_recipients), TERN_ENOSPACE (too many commands waiting for
 * replies: call again from a reply callback).
 */
TERN_EXTERN int tern_client_session_rcpt(struct tern_client_session *c,
                                         const struct tern_client_rcpt *r,
                                         tern_client_reply_fn fn, void *arg);
/*
 * End the envelope: DATA. `fn` gets the server's 354 (then _body() takes
 * bytes; on_body_ready fires) or its refusal (the message then ends).
 * With BDAT (BINARYMIME) there is no such reply: `fn` gets a local 354
 * once every envelope reply is in and a recipient was accepted. If no
 * recipient was accepted the message ends with the refusal. Returns 0,
 * TERN_EINVAL, TERN_ESTATE (as _rcpt()), TERN_ENOSPACE.
 */
TERN_EXTERN int tern_client_session_data(struct tern_client_session *c,
                                         tern_client_reply_fn fn, void *arg);

/*
 * Message bytes, any chunking; normalised and stuffed as they go (raw in
 * BDAT with BINARYMIME). Returns the bytes taken: fewer than len (maybe
 * 0) when the output is above the high-water mark or the body may not
 * be sent yet (DATA before its 354): wait for TERN_CLIENT_WANT_BODY.
 * TERN_ESTATE when the message already failed (no recipient, DATA
 * refused): stop sending; on_message_done has been called.
 */
TERN_EXTERN long tern_client_session_body(struct tern_client_session *c,
                                          const void *buf, size_t len);
/* End of message. Returns 0, TERN_ESTATE. */
TERN_EXTERN int tern_client_session_body_end(struct tern_client_session *c);

/* RSET, NOOP, VRFY (when READY), QUIT (any time: then close). */
TERN_EXTERN int tern_client_session_rset(struct tern_client_session *c);
TERN_EXTERN int tern_client_session_noop(struct tern_client_session *c);
TERN_EXTERN int tern_client_session_vrfy(struct tern_client_session *c,
                                         const char *arg);
TERN_EXTERN int tern_client_session_quit(struct tern_client_session *c);

/* The connection ended. A message in progress ends (local 421). */
TERN_EXTERN void tern_client_session_eof(struct tern_client_session *c);

/* The `ud` given to tern_client_session_new(), or NULL for NULL. */
TERN_EXTERN void *tern_client_session_userdata(const struct tern_client_session *c);

/* Runtime hook, as tern_server_session_set_notify(): called after send(),
 * body(), body_end(), rset(), noop(), vrfy() and quit(), so a runtime
 * knows to write the new output. */
typedef void (*tern_client_notify_fn)(struct tern_client_session *c,
                                      void *arg);
TERN_EXTERN void tern_client_session_set_notify(struct tern_client_session *c,
                                                tern_client_notify_fn fn,
                                                void *arg);
/* The `arg` last given to tern_client_session_set_notify() (NULL before
 * it, or for a NULL session): how a runtime finds its own object from
 * inside a session callback. Like every session call, from the thread
 * that uses the session. */
TERN_EXTERN void *
tern_client_session_notify_arg(const struct tern_client_session *c);

/*
 * The body codec on its own, for applications that stuff bodies
 * themselves: normalise to CRLF and dot-stuff src[0..len) into
 * dst[0..cap). `state` starts at 0 and carries line state across calls;
 * `final` adds the closing CRLF if the body did not end with one, and
 * ".\r\n". Needs cap ≥ 2 * len + 7 (a CR held from the previous call
 * adds 2); with less, nothing is written and 0 is returned. Returns bytes
 * written.
 */
TERN_EXTERN size_t tern_dot_stuff(unsigned *state, const char *src,
                                  size_t len, bool final, char *dst,
                                  size_t cap);

#ifdef __cplusplus
}
#endif
#endif /* TERN_CLIENT_H */
