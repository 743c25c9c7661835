/*
 * tern — the sans-IO SMTP/LMTP server session.
 *
 * One tern_server_session per connection. It does no I/O, reads no clock
 * and makes no system call: the caller feeds the bytes it read from the
 * client, the session fires callbacks and queues reply bytes, and the
 * caller takes those bytes and writes them wherever it likes.
 *
 *   tern_server_session_new()      create (allocates its state and its
 *                                  buffers; nothing later in an ordinary
 *                                  transaction allocates)
 *   tern_server_session_start()    fires on_connect, queues the greeting
 *   tern_server_session_feed()     bytes in; returns how many were taken
 *   tern_server_session_output()   bytes out (pointer + length)
 *   tern_server_session_consume()  mark output as written
 *   tern_server_session_want()     read? write? start TLS? close?
 *   tern_server_session_reply()    answer a decision that was left pending
 *
 * Threading: a session is not thread-safe; use it from one thread at a
 * time. Distinct sessions are independent. Callbacks run on the thread
 * that called the function that fired them.
 *
 * Reentrancy: from inside a callback the application may call only
 * tern_server_session_{reply(its own pending decision), userdata,
 * set_userdata, set_message_id, is_tls, is_authenticated, pending, close}
 * and tern_envelope_rcpt(). Freeing the
 * session from a callback is not allowed; call tern_server_session_close()
 * and free it after the callback returns.
 */
#ifndef TERN_SERVER_H
#define TERN_SERVER_H

#include <stdbool.h>

#include "address.h"
#include "common.h"
#include "reply.h"

#ifdef __cplusplus
extern "C" {
#endif

struct tern_server_session;

/* Extensions on by default: everything the core can do by itself. */
#define TERN_EXT_DEFAULT                                                   \
  (TERN_EXT_PIPELINING | TERN_EXT_SIZE | TERN_EXT_8BITMIME |               \
   TERN_EXT_SMTPUTF8 | TERN_EXT_ENHANCEDSTATUSCODES | TERN_EXT_CHUNKING |  \
   TERN_EXT_BINARYMIME | TERN_EXT_DSN | TERN_EXT_LIMITS | TERN_EXT_HELP)

/* What to do with a bare LF or bare CR inside DATA content. */
enum tern_bare_lf_policy {
  /* Pass CRLF to the application in its place (as Postfix 3.9 does). */
  TERN_BARE_LF_NORMALIZE = 0,
  /* Read to the end of data, then reject the message (550 5.6.0). */
  TERN_BARE_LF_REJECT = 1
};

/*
 * Session configuration. Fill with tern_server_config_init(), then change
 * fields. Strings are copied by tern_server_session_new().
 */
struct tern_server_config {
  size_t size;               /* sizeof, set by tern_server_config_init() */
  const char *hostname;      /* our name in the greeting and EHLO; default
                                "localhost" */
  const char *banner;        /* greeting text after the hostname; default
                                "ESMTP tern" ("LMTP tern" in LMTP mode) */
  unsigned extensions;       /* TERN_EXT_* mask; default TERN_EXT_DEFAULT */
  bool lmtp;                 /* RFC 2033 LMTP: LHLO, per-recipient data
                                replies */
  bool auth_required;        /* MAIL needs AUTH first (530 5.7.0) */
  bool auth_insecure_ok;     /* offer AUTH before TLS (loopback, unix) */
  bool xclient_trusted;      /* peer may use XCLIENT */
  const char *auth_mechanisms; /* space-separated list advertised after
                                  AUTH, e.g. "PLAIN LOGIN"; default "" */
  size_t max_line;           /* command line incl. CRLF; default 512
                                (RFC 5321 §4.5.3.1.4), min 512 */
  size_t max_auth_line;      /* AUTH lines; default 12288 (RFC 4954 §4) */
  size_t max_line_length;    /* longest message text line incl. CRLF, in
                                DATA and in BDAT without BINARYMIME; a
                                longer one fails the message with
                                500 5.5.6 after its end. Default 0 = no
                                limit: lines are passed on as sent, as
                                Postfix does (RFC 5321 §4.5.3.1.6 says
                                1000; set 1000 to enforce it). Lines are
                                streamed, never held whole, either way. */
  uint64_t max_message_size; /* octets; default 30 MiB; 0 = no limit */
  unsigned max_recipients;   /* per transaction; default 1000 */
  unsigned max_errors;       /* protocol errors and failed AUTH before
                                421; default 10; forgiven when a message
                                is accepted (as Postfix's
                                smtpd_hard_error_limit) */
  unsigned max_junk_commands; /* commands that move no mail (RSET, NOOP,
                                VRFY, EXPN, HELP, HELO/EHLO/LHLO, unknown
                                verbs, and any command answered 4xx/5xx)
                                before 421 4.7.0; the count starts over
                                when a message is accepted, so a session
                                that delivers mail is never cut (like
                                Postfix's smtpd_junk_command_limit).
                                Default 100, 0 = no limit */
  unsigned max_transactions; /* messages per session (LIMITS MAILMAX);
                                default 0 = no limit */
  size_t output_high_water;  /* stop taking input while this much reply
                                output is unsent; default 2048 */
  enum tern_bare_lf_policy bare_lf; /* default NORMALIZE */
  unsigned timeout_command_ms;  /* RFC 5321 §4.5.3.2.7: 5 min */
  unsigned timeout_data_ms;     /* waiting for message data (DATA content
                                   or a BDAT chunk); §4.5.3.2.7, the
                                   server timeout: 5 min */
  const struct tern_mem *mem;   /* allocator; NULL = libc */
};

/* Fill *cfg with the defaults above. */
static inline void tern_server_config_init(struct tern_server_config *cfg) {
  struct tern_server_config d = {0};
  d.size = sizeof d;
  d.hostname = "localhost";
  d.extensions = TERN_EXT_DEFAULT;
  d.max_line = 512;
  d.max_auth_line = 12288;
  d.max_line_length = 0;
  d.max_message_size = 30u * 1024 * 1024;
  d.max_recipients = 1000;
  d.max_errors = 10;
  d.max_junk_commands = 100;
  d.output_high_water = 2048;
  d.bare_lf = TERN_BARE_LF_NORMALIZE;
  d.timeout_command_ms = 5 * 60 * 1000;
  d.timeout_data_ms = 5 * 60 * 1000;
  *cfg = d;
}

/* BODY= values (RFC 6152, RFC 3030). */
enum tern_body {
  TERN_BODY_UNSPECIFIED = 0,
  TERN_BODY_7BIT,
  TERN_BODY_8BITMIME,
  TERN_BODY_BINARYMIME
};

/* RET= values (RFC 3461 §4.3). */
enum tern_dsn_ret { TERN_RET_UNSPECIFIED = 0, TERN_RET_FULL, TERN_RET_HDRS };

/* NOTIFY= bits (RFC 3461 §4.1). 0 means not given. */
enum tern_notify {
  TERN_NOTIFY_NEVER = 1u << 0,
  TERN_NOTIFY_SUCCESS = 1u << 1,
  TERN_NOTIFY_FAILURE = 1u << 2,
  TERN_NOTIFY_DELAY = 1u << 3
};

/*
 * MAIL FROM parameters, parsed and xtext-decoded. Strings point into the
 * session's command buffer (see "Lifetimes" below); empty when absent.
 */
struct tern_mail_params {
  uint64_t size;          /* SIZE=, 0 when absent */
  bool has_size;
  enum tern_body body;    /* BODY= */
  bool smtputf8;          /* SMTPUTF8 */
  bool requiretls;        /* REQUIRETLS (RFC 8689) */
  enum tern_dsn_ret ret;  /* RET= */
  struct tern_str envid;  /* ENVID=, decoded */
  struct tern_str auth;   /* AUTH=, decoded ("<>" when unknown) */
};

/* RCPT TO parameters. */
struct tern_rcpt_params {
  unsigned notify;             /* TERN_NOTIFY_* bits */
  struct tern_str orcpt_type;  /* ORCPT= address type, e.g. "rfc822" */
  struct tern_str orcpt;       /* ORCPT= address, xtext-decoded */
};

/* HELO, EHLO or LHLO. */
enum tern_helo_verb { TERN_HELO = 0, TERN_EHLO, TERN_LHLO };

/*
 * XCLIENT attributes (Postfix XCLIENT_README); empty when absent. The
 * core checks every value after xtext decoding and refuses the command
 * (501 5.5.4) otherwise, so each present value is one of "[UNAVAILABLE]",
 * "[TEMPUNAVAIL]" or: name a host name (letters, digits, - . _); addr and
 * destaddr an IPv4 or IPv6 address (an "IPV6:" prefix removed); port and
 * destport 0..65535 in digits; proto SMTP or ESMTP; helo and login
 * printable with no space or control octet (login may be UTF-8). At most
 * 255 octets each.
 */
struct tern_xclient {
  struct tern_str name, addr, port, proto, helo, login, destaddr, destport;
};

/* Longest message id tern_server_session_set_message_id() takes. */
#define TERN_MESSAGE_ID_MAX 64

/* One accepted recipient of an envelope (tern_envelope_rcpt()). */
struct tern_envelope_rcpt {
  struct tern_path to;            /* as on_rcpt saw it */
  struct tern_rcpt_params params; /* NOTIFY, ORCPT */
};

/*
 * The envelope of the message being ended, handed to on_data_end. The
 * session owns it and its strings: they are valid until on_data_end
 * returns or, when it returned TERN_PENDING, until
 * tern_server_session_reply() answers it. Read-only: never allocate,
 * copy or change one; later versions add fields at the end only.
 *
 * Strings are the session's copies, made at MAIL and RCPT, each also
 * NUL-terminated (a decoded ENVID or ORCPT may hold a NUL of its own:
 * use .len). Absent parameters are empty, as in on_mail/on_rcpt.
 *
 * Recipients: tern_envelope_rcpt(env, i) for i in 0..nrcpts-1, the
 * accepted ones in RCPT order. In LMTP mode on_data_end is called once
 * per accepted recipient and rcpt_index says which one this call answers
 * for (its reply is that recipient's, RFC 2033 §4.2); in SMTP mode it is
 * called once, for all of them, and rcpt_index is 0.
 *
 * Memory: the session keeps the sender, each accepted recipient and
 * their parameters: about 100 octets per recipient plus its address and
 * ORCPT, so at most max_recipients * (100 + max_line) octets.
 */
struct tern_envelope {
  /* The message id the application gave with
   * tern_server_session_set_message_id(), or NULL: the library makes
   * none (it has no clock and no randomness; see that function). */
  const char *id;
  struct tern_path from;         /* MAIL FROM; TERN_PATHF_NULL for <> */
  struct tern_mail_params mail;  /* SIZE, BODY, SMTPUTF8, REQUIRETLS, RET,
                                    ENVID, AUTH */
  size_t nrcpts;                 /* accepted recipients, >= 1 */
  size_t rcpt_index;             /* LMTP: this call's recipient; SMTP: 0 */
  uint64_t size;                 /* octets passed to on_data */
  /* The session: the peer's address, the TLS details and the AUTH
   * identity belong to the runtime (tern_session_info() in net.h). */
  enum tern_helo_verb helo_verb; /* the accepted HELO, EHLO or LHLO */
  struct tern_str helo;          /* its argument as sent; empty when over
                                    255 octets (no domain or address
                                    literal is that long) */
  bool lmtp;                     /* the session speaks LMTP */
  bool tls;                      /* TLS is active */
  bool authenticated;            /* AUTH succeeded */
};

/* Recipient i (0..env->nrcpts-1) of an envelope, or NULL when i is out
 * of range or env is NULL. Valid as long as the envelope. */
TERN_EXTERN const struct tern_envelope_rcpt *
tern_envelope_rcpt(const struct tern_envelope *env, size_t i);

/* Which decision is waiting for tern_server_session_reply(). */
enum tern_server_event {
  TERN_EV_NONE = 0,
  TERN_EV_CONNECT,
  TERN_EV_HELO,
  TERN_EV_AUTH,
  TERN_EV_MAIL,
  TERN_EV_RCPT,
  TERN_EV_DATA_START,
  TERN_EV_DATA_END,
  TERN_EV_VRFY,
  TERN_EV_EXPN,
  TERN_EV_XCLIENT,
  TERN_EV_UNKNOWN
};

/* Decision callbacks return one of these (or a negative TERN_E* code,
 * which answers 451 4.3.0 and lets the session go on). */
enum tern_verdict {
  TERN_REPLY_NOW = 0, /* send *reply now (left as is, it accepts) */
  TERN_PENDING = 1    /* answer later with tern_server_session_reply() */
};

/*
 * Callbacks. Fill with tern_server_callbacks_init(); every member may be
 * NULL. A NULL decision callback accepts with the default reply (except
 * on_vrfy/on_expn: NULL means 502 "disabled", and on_auth: NULL means
 * AUTH is not offered).
 *
 * Decision callbacks get `reply` pre-filled with the default positive
 * answer. To accept, return TERN_REPLY_NOW. To reject, set reply->code,
 * ->enhanced and ->text and return TERN_REPLY_NOW. To decide later,
 * return TERN_PENDING: the session then takes no more input until
 * tern_server_session_reply() is called.
 *
 * Lifetimes: every pointer passed to a callback (event strings, params)
 * stays valid until the callback returns or, if it returned TERN_PENDING,
 * until tern_server_session_reply() is called. Copy what you keep.
 */
struct tern_server_callbacks {
  size_t size; /* sizeof, set by tern_server_callbacks_init() */

  /* Connection opened; default "220 <hostname> <banner>". A 5xx here
   * makes the session answer every command but QUIT with 503 (RFC 5321
   * §3.1); a 4xx (use 421) closes it. */
  int (*on_connect)(struct tern_server_session *s, struct tern_reply *reply,
                    void *ud);
  /* HELO/EHLO/LHLO with its argument (the client's domain or literal). */
  int (*on_helo)(struct tern_server_session *s, enum tern_helo_verb verb,
                 struct tern_str domain, struct tern_reply *reply, void *ud);
  /*
   * One AUTH step. `mechanism` is upper-cased. `response` is the client's
   * base64 text as sent (initial response or continuation line), without
   * CRLF; has_response is false when AUTH had no initial response. "="
   * (empty initial response) is passed as "=". `step` counts from 0.
   * Answer 334 with reply->text set to the base64 challenge (may be "")
   * to continue, 235 to succeed, 535 (or any 4xx/5xx) to fail; a 5xx
   * counts against max_errors, so guessing is bounded per session. The
   * pre-filled reply is the failure "535 5.7.8": there is no default
   * success. A "*" from the client cancels without calling this
   * (501 5.0.0). The core does not decode base64 (docs/decisions/0005).
   */
  int (*on_auth)(struct tern_server_session *s, struct tern_str mechanism,
                 struct tern_str response, bool has_response, unsigned step,
                 struct tern_reply *reply, void *ud);
  /* MAIL FROM; default 250 2.1.0. */
  int (*on_mail)(struct tern_server_session *s, const struct tern_path *from,
                 const struct tern_mail_params *params,
                 struct tern_reply *reply, void *ud);
  /* RCPT TO; default 250 2.1.5. Only accepted recipients count. */
  int (*on_rcpt)(struct tern_server_session *s, const struct tern_path *to,
                 const struct tern_rcpt_params *params,
                 struct tern_reply *reply, void *ud);
  /* DATA or the first BDAT of a transaction, before 354 is sent (DATA)
   * or the chunk is read (BDAT). The pre-filled reply is 354 for DATA
   * and "250 2.0.0 Ok" for BDAT: any 2xx/3xx accepts (for BDAT the reply
   * to the chunk comes later); a 4xx/5xx refuses, and a refused BDAT's
   * chunk is read and dropped. */
  int (*on_data_start)(struct tern_server_session *s,
                       struct tern_reply *reply, void *ud);
  /*
   * Message bytes, dot-unstuffed (DATA) or raw (BDAT), in order, in
   * chunks of any size. Not a decision: return 0 to go on, or
   * TERN_PENDING to stop the session taking input after this chunk until
   * tern_server_session_resume() (backpressure). A negative code aborts
   * the message: 451 4.3.0 at its end.
   */
  int (*on_data)(struct tern_server_session *s, const char *buf, size_t len,
                 void *ud);
  /*
   * End of message; default 250 2.0.0. `env` is the whole envelope:
   * sender, recipients, their parameters, the size (octets passed to
   * on_data) and the message id (see struct tern_envelope for its
   * lifetime). In LMTP mode this is called once per accepted recipient,
   * env->rcpt_index naming it, and each answer is that recipient's reply
   * (RFC 2033 §4.2); in SMTP mode it is called once.
   */
  int (*on_data_end)(struct tern_server_session *s,
                     const struct tern_envelope *env,
                     struct tern_reply *reply, void *ud);
  /*
   * The message will not be delivered: too big, bad bare LF/CR, a text
   * line too long, on_data failed, or the connection ended mid-message.
   * Discard what on_data delivered. `why` is a short static reason.
   */
  void (*on_data_abort)(struct tern_server_session *s, const char *why,
                        void *ud);
  /* RSET, or a new HELO/EHLO/STARTTLS, ended a transaction in progress. */
  void (*on_reset)(struct tern_server_session *s, void *ud);
  /* VRFY / EXPN with their argument; NULL callback = 502 5.5.1. */
  int (*on_vrfy)(struct tern_server_session *s, struct tern_str arg,
                 struct tern_reply *reply, void *ud);
  int (*on_expn)(struct tern_server_session *s, struct tern_str arg,
                 struct tern_reply *reply, void *ud);
  /* XCLIENT from a trusted peer; default 220 greeting, session reset. */
  int (*on_xclient)(struct tern_server_session *s,
                    const struct tern_xclient *attrs,
                    struct tern_reply *reply, void *ud);
  /* A command the core does not know; default 500 5.5.2. `verb` is as
   * sent, `args` the rest of the line. */
  int (*on_unknown)(struct tern_server_session *s, struct tern_str verb,
                    struct tern_str args, struct tern_reply *reply, void *ud);
  /* STARTTLS accepted: the 220 is queued; start TLS once it is written
   * (tern_server_session_want() also says TERN_WANT_TLS). */
  void (*on_starttls)(struct tern_server_session *s, void *ud);
  /* Observer: every command line as received, without CRLF. AUTH
   * payloads are redacted: the line shows "AUTH <MECH>" and continuation
   * lines show "*". Not called for message content. */
  void (*on_command)(struct tern_server_session *s, struct tern_str line,
                     void *ud);
  /* Observer: every reply, formatted, CRLFs included, as queued. */
  void (*on_reply)(struct tern_server_session *s, struct tern_str bytes,
                   void *ud);
  /* The session is over (QUIT, 421, fatal error, out of memory, _eof(),
   * _close(), or at the latest _free()). Called exactly once for every
   * session, so per-session state can always be released here. */
  void (*on_close)(struct tern_server_session *s, void *ud);
};

static inline void tern_server_callbacks_init(struct tern_server_callbacks *cb) {
  struct tern_server_callbacks d = {0};
  d.size = sizeof d;
  *cb = d;
}

/*
 * tern_server_session_new() creates a session. `cfg` and `cb` are copied
 * (cfg may be NULL for the defaults; cb may be NULL for no callbacks);
 * `ud` is handed to every callback. All buffers are allocated here, with
 * fixed ceilings (see docs/security.md); an ordinary transaction
 * allocates nothing more (unless tern_server_session_trim() gave them
 * back, or it has more recipients than the envelope store held so far).
 * Returns 0 and sets *out, or TERN_EINVAL (bad config: NULL out,
 * hostname with spaces or controls, max_line < 512, a size field larger
 * than this library knows with non-zero extra bytes) or TERN_ENOMEM.
 * On failure *out is NULL (when out is not NULL) and nothing needs
 * freeing: nothing stays allocated and no callback has fired.
 */
TERN_EXTERN int tern_server_session_new(struct tern_server_session **out,
                                        const struct tern_server_config *cfg,
                                        const struct tern_server_callbacks *cb,
                                        void *ud);

/* Free a session and everything it owns. If nothing ended the session
 * before, it ends now: a message in progress is aborted (on_data_abort)
 * and on_close fires; no other callback. NULL is a no-op. Not from inside
 * one of its callbacks. */
TERN_EXTERN void tern_server_session_free(struct tern_server_session *s);

/*
 * Start the session: fires on_connect and queues the greeting. Call once,
 * before the first feed. Returns 0, TERN_ESTATE (already started).
 */
TERN_EXTERN int tern_server_session_start(struct tern_server_session *s);

/*
 * Feed bytes received from the client. Returns the number of bytes taken
 * (0..len), or a negative error. Fewer than len are taken when the
 * session stops reading: a decision is pending, on_data asked for a
 * pause, unsent output is above the high-water mark, STARTTLS was
 * accepted, or the session is closing. The caller keeps the rest and
 * feeds it again when tern_server_session_want() has TERN_WANT_READ
 * (after a reply, resume, consume or tls_started).
 *
 * After STARTTLS is accepted, every byte fed until
 * tern_server_session_tls_started() is taken and discarded (RFC 3207 §4.2,
 * CVE-2011-0411). After the session closes, bytes are taken and dropped.
 * Errors: TERN_EINVAL (NULL with len > 0), TERN_ESTATE (not started).
 */
TERN_EXTERN long tern_server_session_feed(struct tern_server_session *s,
                                          const void *buf, size_t len);

/*
 * The queued reply bytes: sets *data and returns the length (0 when
 * nothing is queued). The pointer is valid until the next call on the
 * session other than output().
 */
TERN_EXTERN size_t tern_server_session_output(struct tern_server_session *s,
                                              const char **data);

/* Mark n bytes of output as written (n ≤ what output() returned; more
 * is clamped). In LMTP mode this may fire on_data_end for the next
 * recipient, since per-recipient replies wait for room in the queue. */
TERN_EXTERN void tern_server_session_consume(struct tern_server_session *s,
                                             size_t n);

/* What the session wants from the caller (TERN_WANT_* bits). */
enum tern_want {
  TERN_WANT_READ = 1u << 0,  /* it will take input now */
  TERN_WANT_WRITE = 1u << 1, /* output is queued */
  TERN_WANT_TLS = 1u << 2,   /* write the output, then start TLS and call
                                tern_server_session_tls_started() */
  TERN_WANT_CLOSE = 1u << 3  /* write the output, then close */
};
TERN_EXTERN unsigned tern_server_session_want(const struct tern_server_session *s);

/*
 * Answer the pending decision (see tern_server_session_pending()).
 * reply == NULL accepts with the default reply. Returns 0, TERN_ESTATE
 * (nothing pending) or TERN_EINVAL (tern_reply_check() failed; the
 * decision stays pending). May be called from any callback of this
 * session, or outside.
 */
TERN_EXTERN int tern_server_session_reply(struct tern_server_session *s,
                                          const struct tern_reply *reply);

/*
 * Hand back the session's I/O buffers (command line and output queue,
 * about 6.5 KiB with the defaults, and the envelope store when no
 * transaction is open) while it is idle: no partial line, no unsent
 * output, no pending decision. They are allocated again by the next
 * feed() or reply and the next MAIL, which are then the only
 * allocations an ordinary transaction makes. A runtime calls this when a connection goes quiet,
 * so idle connections cost only the session's own state. Returns 1 when
 * the buffers were freed, 0 when the session was busy (nothing done),
 * TERN_EINVAL for NULL. After a trim, feed() may fail with TERN_ENOMEM.
 */
TERN_EXTERN int tern_server_session_trim(struct tern_server_session *s);

/* The decision waiting for tern_server_session_reply(), or TERN_EV_NONE. */
TERN_EXTERN enum tern_server_event
tern_server_session_pending(const struct tern_server_session *s);

/* End a pause requested by on_data returning TERN_PENDING. If a BDAT
 * chunk ended during the pause, its reply (or on_data_end for a LAST
 * chunk) happens here. Returns 0 or TERN_ESTATE (not paused). */
TERN_EXTERN int tern_server_session_resume(struct tern_server_session *s);

/*
 * The runtime finished the TLS handshake after STARTTLS (or, for
 * implicit TLS, before start()). The session forgets everything learnt
 * before (HELO name, transaction, AUTH) as RFC 3207 §4.2 requires and
 * takes input again. Returns 0 or TERN_ESTATE.
 */
TERN_EXTERN int tern_server_session_tls_started(struct tern_server_session *s);

/*
 * The connection ended (peer closed, read error). A message in progress
 * is aborted (on_data_abort), then on_close fires. Idempotent.
 */
TERN_EXTERN void tern_server_session_eof(struct tern_server_session *s);

/*
 * The runtime's timer for the current state ran out: queues
 * "421 4.4.2 <hostname> Error: timeout exceeded", aborts a message in
 * progress and asks to close. tern_server_session_timeout_ms() tells
 * which timeout applies now (command or data, RFC 5321 §4.5.3.2).
 */
TERN_EXTERN void tern_server_session_timeout(struct tern_server_session *s);
TERN_EXTERN unsigned
tern_server_session_timeout_ms(const struct tern_server_session *s);

/*
 * Close from the application side: queues `reply` (NULL: "421 4.3.2
 * Service shutting down"), aborts a message in progress and asks to close.
 * Safe from inside a callback.
 */
TERN_EXTERN void tern_server_session_close(struct tern_server_session *s,
                                           const struct tern_reply *reply);

/*
 * Runtime hook: `fn(s, arg)` is called at the end of
 * tern_server_session_reply(), _resume() and _close(), which an
 * application may call from its own events (a lookup finished, an fsync
 * completed) while no feed() is running. A runtime uses it to write the
 * new output and feed the input it held back. It may also be called
 * inside a callback during feed(); a runtime should then only note it.
 * One hook per session; fn NULL removes it.
 */
typedef void (*tern_server_notify_fn)(struct tern_server_session *s,
                                      void *arg);
TERN_EXTERN void tern_server_session_set_notify(struct tern_server_session *s,
                                                tern_server_notify_fn fn,
                                                void *arg);
/* The `arg` given to tern_server_session_set_notify(), or NULL. */
TERN_EXTERN void *
tern_server_session_notify_arg(const struct tern_server_session *s);

/*
 * Give the current message an id, for the application's own use: it is
 * copied and handed back as tern_envelope.id to on_data_end. The library
 * makes none itself (a sans-IO core has no clock and no randomness to
 * make one unique); the `tern` program sets "<session id>-<n>" from
 * on_mail. Call it from on_mail or any later callback of the
 * transaction (on_data_start, for instance, to give a second DATA of one
 * transaction its own id); every MAIL forgets the previous id. `id` is
 * 1..TERN_MESSAGE_ID_MAX printable ASCII octets without spaces, or NULL
 * to forget it. Returns 0, TERN_EINVAL (bad id, NULL session) or
 * TERN_ENOMEM (the envelope store could not be made after a trim).
 */
TERN_EXTERN int
tern_server_session_set_message_id(struct tern_server_session *s,
                                   const char *id);

/* Let this peer use XCLIENT (the runtime knows which peers are trusted). */
TERN_EXTERN void tern_server_session_set_xclient_trusted(
    struct tern_server_session *s, bool trusted);

/* Is a mail transaction open (MAIL accepted, message not ended)? A
 * runtime draining for shutdown lets such sessions finish. */
TERN_EXTERN bool
tern_server_session_in_transaction(const struct tern_server_session *s);

/* Is a command line (or an AUTH continuation line) partly received:
 * bytes fed, its LF not yet? False inside DATA/BDAT. A runtime uses it to
 * give one command line a total deadline, not only an idle timer. */
TERN_EXTERN bool
tern_server_session_line_pending(const struct tern_server_session *s);

/* Session facts. */
TERN_EXTERN bool tern_server_session_is_tls(const struct tern_server_session *s);
TERN_EXTERN bool
tern_server_session_is_authenticated(const struct tern_server_session *s);
TERN_EXTERN void *tern_server_session_userdata(const struct tern_server_session *s);
TERN_EXTERN void tern_server_session_set_userdata(struct tern_server_session *s,
                                                  void *ud);

#ifdef __cplusplus
}
#endif
#endif /* TERN_SERVER_H */
