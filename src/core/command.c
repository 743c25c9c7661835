/*
 * The command table: one handler per verb, each checking state and
 * syntax before it asks the application (check-then-proceed). Replies
 * are listed in docs/replies.md.
 */
#include "session.h"

typedef void (*cmd_fn)(struct tern_server_session *s, char *args,
                       size_t len);

/* ---- helpers --------------------------------------------------------------- */

static size_t skip_sp(const char *p, size_t len, size_t i) {
  while (i < len && p[i] == ' ')
    i++;
  return i;
}

/* Ask a decision callback, or accept with the default when it is NULL. */
#define NO_CB TERN_REPLY_NOW

static void need_helo(struct tern_server_session *s) {
  tern__fail(s, 503, "5.5.1",
             s->cfg.lmtp ? "Error: send LHLO first"
                         : "Error: send HELO/EHLO first");
}

/* ---- EHLO reply ------------------------------------------------------------- */

static size_t kw(char *t, size_t cap, size_t n, const char *word) {
  n = tern__cat(t, cap, n, "\n", 1);
  return tern__cat(t, cap, n, word, strlen(word));
}

/* RFC 5321 §4.1.1.1: "250-domain" then one keyword per line. */
void tern__ehlo_reply(struct tern_server_session *s, const char *first) {
  char t[TERN__REPLY_MAX];
  unsigned e = tern__ext(s);
  size_t n = 0;

  if (!first[0] || strlen(first) > TERN__REPLY_LINE_MAX - 8)
    first = s->cfg.hostname;
  n = tern__cat(t, sizeof t, n, first, strlen(first));
  if (e & TERN_EXT_PIPELINING)
    n = kw(t, sizeof t, n, "PIPELINING");
  if (e & TERN_EXT_SIZE) { /* RFC 1870 §4: the fixed limit, if any */
    n = kw(t, sizeof t, n, "SIZE");
    if (s->cfg.max_message_size) {
      n = tern__cat(t, sizeof t, n, " ", 1);
      n = tern__cat_u64(t, sizeof t, n, s->cfg.max_message_size);
    }
  }
  if ((e & TERN_EXT_STARTTLS) && !s->tls)
    n = kw(t, sizeof t, n, "STARTTLS");
  if (e & TERN_EXT_AUTH) {
    n = kw(t, sizeof t, n, "AUTH ");
    n = tern__cat(t, sizeof t, n, s->cfg.auth_mechanisms,
                  strlen(s->cfg.auth_mechanisms));
  }
  if (e & TERN_EXT_ENHANCEDSTATUSCODES)
    n = kw(t, sizeof t, n, "ENHANCEDSTATUSCODES");
  if (e & TERN_EXT_8BITMIME)
    n = kw(t, sizeof t, n, "8BITMIME");
  if (e & TERN_EXT_BINARYMIME)
    n = kw(t, sizeof t, n, "BINARYMIME");
  if (e & TERN_EXT_CHUNKING)
    n = kw(t, sizeof t, n, "CHUNKING");
  if (e & TERN_EXT_DSN)
    n = kw(t, sizeof t, n, "DSN");
  if (e & TERN_EXT_SMTPUTF8)
    n = kw(t, sizeof t, n, "SMTPUTF8");
  if (e & TERN_EXT_REQUIRETLS) /* RFC 8689 §4.1: only over TLS */
    n = kw(t, sizeof t, n, "REQUIRETLS");
  if (e & TERN_EXT_LIMITS) { /* RFC 9422 §4 */
    n = kw(t, sizeof t, n, "LIMITS RCPTMAX=");
    n = tern__cat_u64(t, sizeof t, n, s->cfg.max_recipients);
    if (s->cfg.max_transactions) {
      n = tern__cat(t, sizeof t, n, " MAILMAX=", 9);
      n = tern__cat_u64(t, sizeof t, n, s->cfg.max_transactions);
    }
  }
  if (e & TERN_EXT_XCLIENT)
    n = kw(t, sizeof t, n,
           "XCLIENT NAME ADDR PORT PROTO HELO LOGIN DESTADDR DESTPORT");
  if (e & TERN_EXT_HELP)
    n = kw(t, sizeof t, n, "HELP");
  (void)n;
  tern__emit(s, 250, NULL, t);
}

/* ---- HELO / EHLO / LHLO ----------------------------------------------------- */

static void helo(struct tern_server_session *s, enum tern_helo_verb verb,
                 char *args, size_t len) {
  static const char *const usage[] = {"Syntax: HELO hostname",
                                      "Syntax: EHLO hostname",
                                      "Syntax: LHLO hostname"};
  /* RFC 2033 §4.1: LMTP uses LHLO only; SMTP does not know LHLO. */
  if (s->cfg.lmtp != (verb == TERN_LHLO)) {
    tern__fail(s, 500, "5.5.1",
               s->cfg.lmtp ? "Error: use LHLO in LMTP"
                           : "Error: LHLO is for LMTP only");
    return;
  }
  if (!len) {
    tern__fail(s, 501, "5.5.4", usage[verb]);
    return;
  }
  for (size_t i = 0; i < len; i++) {
    unsigned char c = (unsigned char)args[i];
    if (c < 0x20 || c > 0x7e) {
      tern__fail(s, 501, "5.5.4", usage[verb]);
      return;
    }
  }
  /* RFC 5321 §4.1.4: EHLO in a transaction is an implicit RSET; the name
   * is forgotten until this one is accepted. */
  tern__txn_reset(s, true);
  s->helo_seen = s->esmtp = false;
  s->pend_verb = verb;
  tern__env_helo(s, verb, args, len);

  struct tern_reply r = {250, NULL, s->cfg.hostname};
  struct tern_str dom = {args, len};
  int rc = NO_CB;
  s->pend_default = r;
  if (s->cb.on_helo)
    rc = s->cb.on_helo(s, verb, dom, &r, s->ud);
  tern__decide(s, TERN_EV_HELO, rc, &r);
}

static void cmd_helo(struct tern_server_session *s, char *a, size_t n) {
  helo(s, TERN_HELO, a, n);
}
static void cmd_ehlo(struct tern_server_session *s, char *a, size_t n) {
  helo(s, TERN_EHLO, a, n);
}
static void cmd_lhlo(struct tern_server_session *s, char *a, size_t n) {
  helo(s, TERN_LHLO, a, n);
}

/* ---- MAIL / RCPT -------------------------------------------------------------- */

/* "FROM:" / "TO:" then optional spaces (a common leniency), then the
 * path; returns the offset of the path or 0 when the keyword is absent. */
static size_t path_start(const char *args, size_t len, const char *keyword) {
  size_t k = strlen(keyword);
  if (len < k || !tern__str_ieq(args, k, keyword))
    return 0;
  return skip_sp(args, len, k);
}

/* Map a parameter error (see tern__mail_params_parse). */
static void param_fail(struct tern_server_session *s, int err,
                       struct tern_str bad) {
  char t[TERN__REPLY_LINE_MAX - 32];
  size_t blen = bad.len > 200 ? 200 : bad.len;
  size_t n;
  for (size_t i = 0; i < blen; i++) /* never echo controls */
    if ((unsigned char)bad.ptr[i] < 0x20 || (unsigned char)bad.ptr[i] > 0x7e)
      blen = i;
  if (err == TERN_EUNKNOWN) { /* RFC 5321 §4.1.1.11 */
    n = tern__cat(t, sizeof t, 0, "Unsupported option: ", 20);
    tern__cat(t, sizeof t, n, bad.ptr, blen);
    tern__fail(s, 555, "5.5.4", t);
  } else {
    n = tern__cat(t, sizeof t, 0, "Bad parameter: ", 15);
    tern__cat(t, sizeof t, n, bad.ptr, blen);
    tern__fail(s, 501, "5.5.4", t);
  }
}

/* Map a path error; `who` is "5.1.7" (sender) or "5.1.3" (recipient). */
static void path_fail(struct tern_server_session *s, int err, bool sender) {
  const char *enh = sender ? "5.1.7" : "5.1.3";
  switch (err) {
  case TERN_ETOOLONG: /* RFC 5321 §4.5.3.1 */
    tern__fail(s, 553, enh,
               sender ? "Error: sender address too long"
                      : "Error: recipient address too long");
    break;
  case TERN_ENONASCII: /* RFC 6531 §3.4 */
    tern__fail(s, 553, "5.6.7",
               "Error: non-ASCII address requires SMTPUTF8");
    break;
  default:
    tern__fail(s, 501, enh,
               sender ? "Bad sender address syntax"
                      : "Bad recipient address syntax");
    break;
  }
}

/* The envelope store could not grow (RFC 5321 §4.2.2: 452). */
static void no_storage(struct tern_server_session *s) {
  tern__emit(s, 452, "4.3.1", "Error: insufficient system storage");
  tern__junk(s);
}

/* After the path: nothing, or SP and parameters. */
static bool split_params(char *args, size_t len, size_t at, char **p,
                         size_t *plen) {
  if (at < len && args[at] != ' ')
    return false;
  *p = args + at;
  *plen = len - at;
  return true;
}

static void cmd_mail(struct tern_server_session *s, char *args, size_t len) {
  struct tern_path path;
  struct tern_mail_params mp;
  struct tern_str bad = {"", 0};
  char *ps;
  size_t plen, used;
  unsigned e = tern__ext(s);

  if (!s->helo_seen) {
    need_helo(s);
    return;
  }
  if (s->in_txn) {
    tern__fail(s, 503, "5.5.1", "Error: nested MAIL command");
    return;
  }
  if (s->cfg.auth_required && !s->authenticated) {
    tern__fail(s, 530, "5.7.0", "Authentication required");
    return;
  }
  if (s->cfg.max_transactions && s->transactions >= s->cfg.max_transactions) {
    tern__emit(s, 452, "4.5.3", "Error: too many messages in this session");
    tern__junk(s);
    return;
  }
  size_t at = path_start(args, len, "FROM:");
  if (!at) {
    tern__fail(s, 501, "5.5.4", "Syntax: MAIL FROM:<address>");
    return;
  }
  unsigned opts = TERN_PATH_ALLOW_NULL;
  if (e & TERN_EXT_SMTPUTF8)
    opts |= TERN_PATH_ALLOW_UTF8;
  int rc = tern_path_parse(args + at, len - at, opts, &path, &used);
  if (rc) {
    path_fail(s, rc, true);
    return;
  }
  if (!split_params(args, len, at + used, &ps, &plen)) {
    tern__fail(s, 501, "5.5.4", "Syntax: MAIL FROM:<address> [parameters]");
    return;
  }
  rc = tern__mail_params_parse(ps, plen, e, &mp, &bad);
  if (rc) {
    param_fail(s, rc, bad);
    return;
  }
  if ((path.flags & TERN_PATHF_UTF8) && !mp.smtputf8) {
    tern__fail(s, 553, "5.6.7", "Error: non-ASCII address requires SMTPUTF8");
    return;
  }
  /* RFC 1870 §6.2: a declared size over the fixed limit fails now. */
  if (mp.has_size && s->cfg.max_message_size &&
      mp.size > s->cfg.max_message_size) {
    tern__emit(s, 552, "5.3.4", "Message size exceeds fixed limit");
    tern__junk(s);
    return;
  }
  if (tern__env_mail(s, &path, &mp)) {
    no_storage(s);
    return;
  }
  s->pend_utf8 = mp.smtputf8;
  s->pend_binary = mp.body == TERN_BODY_BINARYMIME;

  struct tern_reply r = {250, "2.1.0", "Ok"};
  rc = NO_CB;
  s->pend_default = r;
  if (s->cb.on_mail)
    rc = s->cb.on_mail(s, &path, &mp, &r, s->ud);
  tern__decide(s, TERN_EV_MAIL, rc, &r);
}

static void cmd_rcpt(struct tern_server_session *s, char *args, size_t len) {
  struct tern_path path;
  struct tern_rcpt_params rp;
  struct tern_str bad = {"", 0};
  char *ps;
  size_t plen, used;

  if (!s->in_txn) {
    tern__fail(s, 503, "5.5.1", "Error: need MAIL command");
    return;
  }
  size_t at = path_start(args, len, "TO:");
  if (!at) {
    tern__fail(s, 501, "5.5.4", "Syntax: RCPT TO:<address>");
    return;
  }
  /* RFC 5321 §4.1.1.3: <Postmaster> without a domain must be accepted. */
  unsigned opts = TERN_PATH_ALLOW_POSTMASTER;
  if (s->txn_utf8)
    opts |= TERN_PATH_ALLOW_UTF8;
  int rc = tern_path_parse(args + at, len - at, opts, &path, &used);
  if (rc) {
    path_fail(s, rc, false);
    return;
  }
  if (!split_params(args, len, at + used, &ps, &plen)) {
    tern__fail(s, 501, "5.5.4", "Syntax: RCPT TO:<address> [parameters]");
    return;
  }
  /* UTF-8 parameter values only in a transaction that declared SMTPUTF8
   * (RFC 6531 §3.4). */
  unsigned e = tern__ext(s);
  if (!s->txn_utf8)
    e &= ~(unsigned)TERN_EXT_SMTPUTF8;
  rc = tern__rcpt_params_parse(ps, plen, e, &rp, &bad);
  if (rc) {
    param_fail(s, rc, bad);
    return;
  }
  /* RFC 5321 §4.5.3.1.10: 452 for too many recipients, not an error. */
  if (s->rcpt_count >= s->cfg.max_recipients) {
    tern__emit(s, 452, "4.5.3", "Error: too many recipients");
    return;
  }
  if (tern__env_rcpt(s, &path, &rp)) {
    no_storage(s);
    return;
  }
  struct tern_reply r = {250, "2.1.5", "Ok"};
  rc = NO_CB;
  s->pend_default = r;
  if (s->cb.on_rcpt)
    rc = s->cb.on_rcpt(s, &path, &rp, &r, s->ud);
  tern__decide(s, TERN_EV_RCPT, rc, &r);
}

/* ---- DATA / BDAT ----------------------------------------------------------- */

/* Checks shared by DATA and BDAT; true when a message may start. */
static bool data_ok(struct tern_server_session *s) {
  if (!s->in_txn) {
    tern__fail(s, 503, "5.5.1", "Error: need MAIL command");
    return false;
  }
  if (!s->rcpt_count) { /* RFC 2920 §3.1 */
    tern__fail(s, 554, "5.5.1", "Error: no valid recipients");
    return false;
  }
  return true;
}

static void ask_data_start(struct tern_server_session *s, bool bdat) {
  struct tern_reply r = {354, NULL, "End data with <CR><LF>.<CR><LF>"};
  int rc = NO_CB;
  if (bdat)
    r = (struct tern_reply){250, "2.0.0", "Ok"};
  s->start_is_bdat = bdat;
  s->pend_default = r;
  if (s->cb.on_data_start)
    rc = s->cb.on_data_start(s, &r, s->ud);
  tern__decide(s, TERN_EV_DATA_START, rc, &r);
}

static void cmd_data(struct tern_server_session *s, char *args, size_t len) {
  (void)args;
  if (len) {
    tern__fail(s, 501, "5.5.4", "Syntax: DATA");
    return;
  }
  if (!data_ok(s))
    return;
  /* RFC 3030 §3: DATA may not follow BDAT, nor carry BINARYMIME. */
  if (s->bdat_used) {
    tern__fail(s, 503, "5.5.1", "Error: DATA after BDAT");
    return;
  }
  if (s->txn_binary) {
    tern__fail(s, 503, "5.5.1", "Error: BINARYMIME requires BDAT");
    return;
  }
  ask_data_start(s, false);
}

/*
 * BDAT <size> [LAST] (RFC 3030 §2). Once the size is known the chunk is
 * read in every case, so that its bytes are never taken for commands;
 * refusals are sent at once and the chunk is dropped.
 */
static void cmd_bdat(struct tern_server_session *s, char *args, size_t len) {
  size_t i = 0;
  uint64_t size;
  bool last = false;

  while (i < len && tern__is_digit((unsigned char)args[i]))
    i++;
  if (!i || tern__parse_u64(args, i, UINT64_MAX, &size) != 0) {
    tern__fail(s, 501, "5.5.4", "Syntax: BDAT <size> [LAST]");
    return;
  }
  if (i < len) {
    size_t j = skip_sp(args, len, i);
    if (j == i || len - j != 4 || !tern__str_ieq(args + j, 4, "LAST")) {
      tern__fail(s, 501, "5.5.4", "Syntax: BDAT <size> [LAST]");
      return;
    }
    last = true;
  }
  s->bdat_size = s->bdat_left = size;
  s->bdat_last = last;
  s->bdat_discard = true;

  if (!(s->cfg.extensions & TERN_EXT_CHUNKING)) {
    tern__fail(s, 502, "5.5.1", "Error: command not implemented");
  } else if (!data_ok(s)) {
    /* replied */
  } else if (s->cfg.max_message_size &&
             (s->msg_size > s->cfg.max_message_size ||
              size > s->cfg.max_message_size - s->msg_size)) {
    /* The chunk would pass the limit: refuse now, end the transaction. */
    tern__txn_reset(s, false);
    tern__emit(s, 552, "5.3.4", "Message size exceeds fixed limit");
  } else if (!s->bdat_used) {
    ask_data_start(s, true);
    return;
  } else {
    s->bdat_discard = false;
  }
  if (s->state != ST_CLOSED)
    tern__bdat_begin(s);
}

/* ---- RSET NOOP QUIT HELP VRFY EXPN -------------------------------------------- */

static void cmd_rset(struct tern_server_session *s, char *args, size_t len) {
  (void)args;
  if (len) {
    tern__fail(s, 501, "5.5.4", "Syntax: RSET");
    return;
  }
  tern__txn_reset(s, true);
  tern__emit(s, 250, "2.0.0", "Ok");
}

static void cmd_noop(struct tern_server_session *s, char *args, size_t len) {
  (void)args;
  (void)len; /* RFC 5321 §4.1.1.9: a parameter string is ignored */
  tern__emit(s, 250, "2.0.0", "Ok");
}

static void cmd_quit(struct tern_server_session *s, char *args, size_t len) {
  (void)args;
  if (len) { /* RFC 5321 §4.1.1.10: quit = "QUIT" CRLF */
    tern__fail(s, 501, "5.5.4", "Syntax: QUIT");
    return;
  }
  tern__emit(s, 221, "2.0.0", "Bye");
  tern_server_session_eof(s);
}

static void cmd_help(struct tern_server_session *s, char *args, size_t len) {
  (void)args;
  (void)len;
  if (!(s->cfg.extensions & TERN_EXT_HELP)) {
    tern__fail(s, 502, "5.5.1", "Error: command not implemented");
    return;
  }
  tern__emit(s, 214, "2.0.0", "See RFC 5321");
}

static void verify(struct tern_server_session *s, bool expn, char *args,
                   size_t len) {
  int (*cb)(struct tern_server_session *, struct tern_str,
            struct tern_reply *, void *) =
      expn ? s->cb.on_expn : s->cb.on_vrfy;
  if (!cb) {
    tern__fail(s, 502, "5.5.1",
               expn ? "EXPN command is disabled" : "VRFY command is disabled");
    return;
  }
  if (!len) {
    tern__fail(s, 501, "5.5.4", expn ? "Syntax: EXPN list" : "Syntax: VRFY address");
    return;
  }
  struct tern_reply r = {252, "2.1.5",
                         "Cannot VRFY user, but will accept message"};
  struct tern_str a = {args, len};
  s->pend_default = r;
  int rc = cb(s, a, &r, s->ud);
  tern__decide(s, expn ? TERN_EV_EXPN : TERN_EV_VRFY, rc, &r);
}

static void cmd_vrfy(struct tern_server_session *s, char *a, size_t n) {
  verify(s, false, a, n);
}
static void cmd_expn(struct tern_server_session *s, char *a, size_t n) {
  verify(s, true, a, n);
}

/* ---- STARTTLS ----------------------------------------------------------------- */

static void cmd_starttls(struct tern_server_session *s, char *args,
                         size_t len) {
  (void)args;
  if (!(s->cfg.extensions & TERN_EXT_STARTTLS)) {
    tern__fail(s, 502, "5.5.1", "Error: command not implemented");
    return;
  }
  if (len) {
    tern__fail(s, 501, "5.5.4", "Syntax: STARTTLS");
    return;
  }
  if (s->tls) {
    tern__fail(s, 503, "5.5.1", "Error: TLS already active");
    return;
  }
  /* RFC 3207 §4.2: forget the transaction and everything else learnt. */
  tern__txn_reset(s, true);
  s->helo_seen = s->esmtp = s->authenticated = false;
  tern__emit(s, 220, "2.0.0", "Ready to start TLS");
  s->state = ST_TLS_WAIT;
  if (s->cb.on_starttls)
    s->cb.on_starttls(s, s->ud);
}

/* ---- AUTH ---------------------------------------------------------------------- */

static void auth_step(struct tern_server_session *s, struct tern_str resp,
                      bool has_resp) {
  if (has_resp && !tern__base64_ok(resp.ptr, resp.len)) {
    s->state = ST_CMD;
    tern__fail(s, 501, "5.5.2", "Error: invalid base64 in AUTH response");
    return;
  }
  struct tern_reply r = {535, "5.7.8", "Error: authentication failed"};
  struct tern_str mech = {s->mech, strlen(s->mech)};
  s->pend_default = r;
  int rc = s->cb.on_auth(s, mech, resp, has_resp, s->auth_step, &r, s->ud);
  tern__decide(s, TERN_EV_AUTH, rc, &r);
}

/* RFC 4954 §4: AUTH mechanism [initial-response]. */
static void cmd_auth(struct tern_server_session *s, char *args, size_t len) {
  if (!tern__auth_offered(s)) {
    if ((s->cfg.extensions & TERN_EXT_AUTH) && s->cb.on_auth &&
        s->cfg.auth_mechanisms[0] && !s->tls &&
        (s->cfg.extensions & TERN_EXT_STARTTLS))
      /* RFC 3207 §4: AUTH waits for TLS here. */
      tern__fail(s, 530, "5.7.0", "Must issue a STARTTLS command first");
    else
      tern__fail(s, 502, "5.5.1", "Error: command not implemented");
    return;
  }
  if (!s->helo_seen || !s->esmtp) {
    tern__fail(s, 503, "5.5.1", "Error: send EHLO first");
    return;
  }
  if (s->authenticated) {
    tern__fail(s, 503, "5.5.1", "Error: already authenticated");
    return;
  }
  if (s->in_txn) {
    tern__fail(s, 503, "5.5.1", "Error: MAIL transaction in progress");
    return;
  }
  size_t m = 0;
  while (m < len && args[m] != ' ')
    m++;
  size_t r0 = m < len ? m + 1 : len;
  if (!m || (r0 < len && memchr(args + r0, ' ', len - r0)) ||
      (m < len && r0 == len)) {
    tern__fail(s, 501, "5.5.4", "Syntax: AUTH mechanism [initial-response]");
    return;
  }
  if (m >= sizeof s->mech || !tern__mech_listed(s->cfg.auth_mechanisms, args, m)) {
    tern__fail(s, 504, "5.5.4", "Unrecognized authentication type");
    return;
  }
  for (size_t i = 0; i < m; i++)
    s->mech[i] = (char)tern__upper((unsigned char)args[i]);
  s->mech[m] = '\0';
  s->auth_step = 0;
  struct tern_str resp = {args + r0, len - r0};
  auth_step(s, resp, r0 < len);
}

/* A line in the middle of an AUTH exchange (RFC 4954 §4). */
static void auth_continue(struct tern_server_session *s, char *line,
                          size_t len) {
  if (s->cb.on_command) {
    struct tern_str red = {"*", 1};
    s->cb.on_command(s, red, s->ud);
  }
  if (len == 1 && line[0] == '*') {
    s->state = ST_CMD;
    tern__fail(s, 501, "5.0.0", "Authentication cancelled");
    return;
  }
  struct tern_str resp = {line, len};
  auth_step(s, resp, true);
}

/* ---- XCLIENT (Postfix XCLIENT_README) ------------------------------------------ */

enum xc_kind { XC_NAME, XC_ADDR, XC_PORT, XC_PROTO, XC_TEXT };

/*
 * Is the decoded value v[0..n) what the attribute may carry? Values end
 * up in logs, Received: lines and the app's policy, so every one is
 * checked (issue 8 item 16: "ADDR=1.2.3.4+0D+0AX-Injected:+20yes"):
 * XCLIENT_README allows "[UNAVAILABLE]" and "[TEMPUNAVAIL]" anywhere;
 * NAME is a host name (letters, digits, "-", ".", "_"); ADDR and DESTADDR
 * an IPv4 or IPv6 address, the latter optionally as "IPV6:..." (the
 * prefix is dropped: *skip says how much); PORT and DESTPORT 0..65535;
 * PROTO SMTP or ESMTP; HELO and LOGIN printable, no space, no control
 * (UTF-8 allowed in LOGIN). At most 255 octets.
 */
static bool xclient_value_ok(enum xc_kind kind, const char *v, size_t n,
                             size_t *skip) {
  *skip = 0;
  if (!n || n > 255)
    return false;
  if ((n == 13 && memcmp(v, "[UNAVAILABLE]", 13) == 0) ||
      (n == 13 && memcmp(v, "[TEMPUNAVAIL]", 13) == 0))
    return true;
  switch (kind) {
  case XC_NAME:
    for (size_t i = 0; i < n; i++) {
      unsigned char c = (unsigned char)v[i];
      if (!(tern__is_alnum(c) || c == '-' || c == '.' || c == '_'))
        return false;
    }
    return true;
  case XC_ADDR:
    if (n > 5 && tern__str_ieq(v, 5, "IPV6:")) {
      *skip = 5;
      return tern__ipv6_valid(v + 5, n - 5);
    }
    return tern__ipv4_valid(v, n) || tern__ipv6_valid(v, n);
  case XC_PORT: {
    uint64_t port;
    for (size_t i = 0; i < n; i++)
      if (!tern__is_digit((unsigned char)v[i]))
        return false;
    return n <= 5 && tern__parse_u64(v, n, 65535, &port) == 0;
  }
  case XC_PROTO:
    return tern__str_ieq(v, n, "SMTP") || tern__str_ieq(v, n, "ESMTP");
  case XC_TEXT:
    for (size_t i = 0; i < n; i++) {
      unsigned char c = (unsigned char)v[i];
      if (c <= 0x20 || c == 0x7f)
        return false;
    }
    return true;
  }
  return false;
}

static void cmd_xclient(struct tern_server_session *s, char *args,
                        size_t len) {
  static const char *const names[] = {"NAME",  "ADDR",  "PORT",
                                      "PROTO", "HELO",  "LOGIN",
                                      "DESTADDR", "DESTPORT"};
  static const enum xc_kind kinds[] = {XC_NAME,  XC_ADDR, XC_PORT,
                                       XC_PROTO, XC_TEXT, XC_TEXT,
                                       XC_ADDR,  XC_PORT};
  struct tern_xclient x;
  struct tern_str *slot[] = {&x.name,  &x.addr,  &x.port,     &x.proto,
                             &x.helo,  &x.login, &x.destaddr, &x.destport};

  if (!(s->cfg.extensions & TERN_EXT_XCLIENT)) {
    tern__fail(s, 502, "5.5.1", "Error: command not implemented");
    return;
  }
  if (!s->xclient_trusted) {
    tern__fail(s, 550, "5.7.0", "Error: insufficient authorization");
    return;
  }
  if (s->in_txn) {
    tern__fail(s, 503, "5.5.1", "Error: MAIL transaction in progress");
    return;
  }
  memset(&x, 0, sizeof x);
  size_t i = skip_sp(args, len, 0);
  if (i == len) {
    tern__fail(s, 501, "5.5.4", "Syntax: XCLIENT attribute=value ...");
    return;
  }
  while (i < len) {
    size_t st = i, eq = 0;
    while (i < len && args[i] != ' ') {
      if (args[i] == '=' && !eq)
        eq = i;
      i++;
    }
    size_t k;
    for (k = 0; eq && k < sizeof names / sizeof names[0]; k++)
      if (tern__str_ieq(args + st, eq - st, names[k]))
        break;
    long vlen = eq ? tern__xtext_decode(args + eq + 1, i - eq - 1) : -1;
    if (!eq || k == sizeof names / sizeof names[0] || vlen < 0) {
      tern__fail(s, 501, "5.5.4", "Bad XCLIENT attribute");
      return;
    }
    size_t skip;
    if (!xclient_value_ok(kinds[k], args + eq + 1, (size_t)vlen, &skip)) {
      char t[48];
      size_t n = tern__cat(t, sizeof t, 0, "Bad XCLIENT ", 12);
      n = tern__cat(t, sizeof t, n, names[k], strlen(names[k]));
      tern__cat(t, sizeof t, n, " value", 6);
      tern__fail(s, 501, "5.5.4", t);
      return;
    }
    slot[k]->ptr = args + eq + 1 + skip;
    slot[k]->len = (size_t)vlen - skip;
    i = skip_sp(args, len, i);
  }
  struct tern_reply r = {220, NULL, s->greeting};
  int rc = NO_CB;
  s->pend_default = r;
  if (s->cb.on_xclient)
    rc = s->cb.on_xclient(s, &x, &r, s->ud);
  tern__decide(s, TERN_EV_XCLIENT, rc, &r);
}

/* ---- dispatch ---------------------------------------------------------------- */

/*
 * `junk`: the verb moves no mail, so it counts against max_junk_commands
 * (Postfix's smtpd_junk_command_limit counts NOOP, VRFY, ETRN and RSET;
 * tern adds EXPN, HELP and the greetings, which a client needs once per
 * session or per message, never thousands of times between messages).
 * Any command answered 4xx/5xx counts too (tern__fail, finish()).
 */
static const struct {
  const char *verb;
  cmd_fn fn;
  bool junk;
} table[] = {
    {"HELO", cmd_helo, true},      {"EHLO", cmd_ehlo, true},
    {"LHLO", cmd_lhlo, true},      {"MAIL", cmd_mail, false},
    {"RCPT", cmd_rcpt, false},     {"DATA", cmd_data, false},
    {"BDAT", cmd_bdat, false},     {"RSET", cmd_rset, true},
    {"NOOP", cmd_noop, true},      {"QUIT", cmd_quit, false},
    {"HELP", cmd_help, true},      {"VRFY", cmd_vrfy, true},
    {"EXPN", cmd_expn, true},      {"STARTTLS", cmd_starttls, false},
    {"AUTH", cmd_auth, false},     {"XCLIENT", cmd_xclient, false},
};

static void observe(struct tern_server_session *s, const char *line,
                    size_t len, bool is_auth, size_t verb_len) {
  if (!s->cb.on_command)
    return;
  struct tern_str l = {line, len};
  char red[40];
  if (is_auth) { /* never hand AUTH payloads to observers (logs) */
    size_t m = verb_len + 1;
    while (m < len && line[m] != ' ' && m < sizeof red - 1)
      m++;
    if (m > len)
      m = len;
    memcpy(red, line, m);
    l.ptr = red;
    l.len = m;
  }
  s->cb.on_command(s, l, s->ud);
}

/* One complete line (CRLF removed) in ST_CMD or ST_AUTH. */
void tern__command(struct tern_server_session *s, char *line, size_t len) {
  if (s->state == ST_AUTH) {
    auth_continue(s, line, len);
    return;
  }
  s->cmd_junk = false;
  while (len && (line[len - 1] == ' ' || line[len - 1] == '\t'))
    len--;
  size_t v = 0;
  while (v < len && line[v] != ' ')
    v++;
  size_t k, nt = sizeof table / sizeof table[0];
  for (k = 0; k < nt; k++)
    if (tern__str_ieq(line, v, table[k].verb))
      break;
  observe(s, line, len, k < nt && table[k].fn == cmd_auth, v);

  /* RFC 5321 §2.3.8: commands are text; NUL and bare CR have no place. */
  if (memchr(line, '\0', len) || memchr(line, '\r', len)) {
    tern__fail(s, 500, "5.5.2", "Error: bad character in command");
    return;
  }
  if (s->rejected && !(k < nt && table[k].fn == cmd_quit)) {
    tern__fail(s, 503, "5.5.1", "Error: connection rejected, send QUIT");
    return;
  }
  char *args = line + (v < len ? v + 1 : len);
  size_t alen = v < len ? len - v - 1 : 0;
  /* Past the junk limit the command is not run: 421 instead. */
  if ((k == nt || table[k].junk) && tern__junk(s))
    return;
  if (k < nt) {
    table[k].fn(s, args, alen);
    return;
  }
  if (!s->cb.on_unknown) {
    tern__fail(s, 500, "5.5.2", "Error: command not recognized");
    return;
  }
  struct tern_reply r = {500, "5.5.2", "Error: command not recognized"};
  struct tern_str verb = {line, v}, rest = {args, alen};
  s->pend_default = r;
  int rc = s->cb.on_unknown(s, verb, rest, &r, s->ud);
  tern__decide(s, TERN_EV_UNKNOWN, rc, &r);
}
