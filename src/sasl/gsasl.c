/*
 * The SASL provider behind AUTH (RFC 4954), on GNU SASL.
 *
 * Where the mechanisms come from:
 *   PLAIN, LOGIN, CRAM-MD5, SCRAM-SHA-1, SCRAM-SHA-256   GNU SASL (server side)
 *   XOAUTH2, OAUTHBEARER                                 framed here
 * GNU SASL 2.2.0 has no XOAUTH2 or OAUTHBEARER (neither client nor server
 * side, and no GSASL_VALIDATE_* property for tokens), so their small
 * framing is parsed in this file: Google's XOAUTH2 format and RFC 7628
 * §3.1. Everything else GNU SASL offers (DIGEST-MD5, which RFC 6331 made
 * historic; the -PLUS variants, which need channel-binding data the
 * runtime does not hand us; ANONYMOUS, EXTERNAL, GSSAPI, ...) is left out
 * on purpose.
 *
 * Threads. A struct tern_sasl owns one Gsasl context and is used from
 * one thread only: the runtime creates one per worker. Nothing here is
 * global, so several of them on several threads do not interact.
 *
 * Secrets. Passwords and tokens live in buffers that are wiped
 * (explicit_bzero) as soon as the step that needed them is over: our
 * decoded copy of the client's text, the buffer get_password fills, and
 * GNU SASL's own copies in the session properties (wiped in place before
 * they are freed: we do not count on gsasl_finish() wiping). Nothing
 * here logs.
 */
#include <gsasl.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "tern/sasl.h"

/* Longest base64 text accepted from the client (a step's input). */
#define SASL_B64_MAX 12288
/* Largest password get_password may hand back, NUL included. */
#define SASL_PASSWORD_MAX 1024
/* Steps in one exchange before we give up: every mechanism here needs
 * at most four, so this only stops a client that loops on empty lines. */
#define SASL_STEPS_MAX 8

enum mech_kind { KIND_GSASL, KIND_XOAUTH2, KIND_OAUTHBEARER };
enum mech_need { NEED_CHECK_PASSWORD, NEED_GET_PASSWORD, NEED_CHECK_TOKEN };

static const struct mech_info {
  const char *name; /* upper case */
  enum mech_kind kind;
  enum mech_need need;
} MECHS[] = {
    {"PLAIN", KIND_GSASL, NEED_CHECK_PASSWORD},
    {"LOGIN", KIND_GSASL, NEED_CHECK_PASSWORD},
    {"CRAM-MD5", KIND_GSASL, NEED_GET_PASSWORD},
    {"SCRAM-SHA-1", KIND_GSASL, NEED_GET_PASSWORD},
    {"SCRAM-SHA-256", KIND_GSASL, NEED_GET_PASSWORD},
    {"XOAUTH2", KIND_XOAUTH2, NEED_CHECK_TOKEN},
    {"OAUTHBEARER", KIND_OAUTHBEARER, NEED_CHECK_TOKEN},
};
#define MECH_COUNT (sizeof MECHS / sizeof MECHS[0])

struct tern_sasl {
  Gsasl *ctx;
  struct tern_auth_callbacks cb; /* the caller's, copied up to its size */
  void *ud;
  unsigned offered; /* bit i: MECHS[i] is offered */
  char *mechs;      /* offered names, in the caller's order */
};

struct tern_sasl_session {
  struct tern_sasl *sasl;
  struct tern_server_session *s;
  const struct mech_info *mech;
  Gsasl_session *gs;  /* KIND_GSASL only */
  unsigned steps;     /* steps done */
  int cb_err;         /* worst callback answer: 0, TERN_EAUTH, or a
                         temporary failure (other negative) */
  bool oauth_refused; /* OAuth error challenge sent; next step fails */
  bool ok_pending;    /* success data sent as a challenge; the client
                         must answer with an empty line */
  char *challenge;    /* base64, from gsasl_base64_to() (gsasl_free) */
  char *user;         /* after OK */
  /* PLAIN/LOGIN: credentials waiting for tern_sasl_verify() (copies,
   * wiped when done); authzid NULL means "as myself". */
  bool verify_pending;
  bool verified;      /* tern_sasl_verify() ran for the pending check */
  bool over;          /* the exchange ended: every further step ESTATE */
  int verify_rc;      /* check_password's answer */
  char *v_authzid, *v_user, *v_password;
};

/* ---- small helpers ------------------------------------------------------- */

static const struct mech_info *mech_find(const char *name, size_t len) {
  for (size_t i = 0; i < MECH_COUNT; i++)
    if (tern__str_ieq(name, len, MECHS[i].name))
      return &MECHS[i];
  return NULL;
}

static bool need_met(const struct tern_auth_callbacks *cb, enum mech_need n) {
  switch (n) {
  case NEED_CHECK_PASSWORD:
    return cb->check_password != NULL;
  case NEED_GET_PASSWORD:
    return cb->get_password != NULL;
  case NEED_CHECK_TOKEN:
    return cb->check_token != NULL;
  }
  return false;
}

static void wipe(void *p, size_t n) {
  if (p != NULL && n > 0)
    explicit_bzero(p, n);
}

static void wipe_free(char *p, size_t n) {
  wipe(p, n);
  free(p);
}

static void verify_wipe(struct tern_sasl_session *ss) {
  if (ss->v_password)
    wipe_free(ss->v_password, strlen(ss->v_password));
  free(ss->v_user);
  free(ss->v_authzid);
  ss->v_password = ss->v_user = ss->v_authzid = NULL;
}

static int b64_value(unsigned char c) {
  if (c >= 'A' && c <= 'Z')
    return c - 'A';
  if (c >= 'a' && c <= 'z')
    return c - 'a' + 26;
  if (c >= '0' && c <= '9')
    return c - '0' + 52;
  if (c == '+')
    return 62;
  if (c == '/')
    return 63;
  return -1;
}

/*
 * Strict RFC 4648 §4 base64 (padding required, no spaces, no other
 * alphabet) into a fresh buffer with a NUL after the data, so text
 * mechanisms can use it as a string. Returns 0, TERN_ESYNTAX or
 * TERN_ENOMEM. The caller wipes and frees *out.
 */
static int b64_decode(const char *in, size_t len, char **out, size_t *outlen) {
  if (len % 4 != 0)
    return TERN_ESYNTAX;
  char *buf = malloc(len / 4 * 3 + 1);
  if (buf == NULL)
    return TERN_ENOMEM;
  size_t o = 0;
  for (size_t i = 0; i < len; i += 4) {
    int v[4];
    int pad = 0;
    for (int k = 0; k < 4; k++) {
      unsigned char c = (unsigned char)in[i + k];
      if (c == '=' && i + 4 == len && k >= 2) {
        v[k] = 0;
        pad++;
      } else if (pad > 0 || (v[k] = b64_value(c)) < 0) {
        goto bad; /* a character after '=', or outside the alphabet */
      }
    }
    uint32_t w = (uint32_t)v[0] << 18 | (uint32_t)v[1] << 12 |
                 (uint32_t)v[2] << 6 | (uint32_t)v[3];
    /* RFC 4648 §3.5: the bits dropped by padding must be zero. */
    if ((pad == 1 && (w & 0xff) != 0) || (pad == 2 && (w & 0xffff) != 0))
      goto bad;
    buf[o++] = (char)(w >> 16);
    if (pad < 2)
      buf[o++] = (char)(w >> 8);
    if (pad < 1)
      buf[o++] = (char)w;
  }
  buf[o] = '\0';
  *out = buf;
  *outlen = o;
  return 0;
bad:
  wipe_free(buf, len / 4 * 3 + 1);
  return TERN_ESYNTAX;
}

/* Wipe a property GNU SASL holds in place, then let it go. */
static void property_wipe(Gsasl_session *gs, Gsasl_property p) {
  const char *v = gsasl_property_fast(gs, p);
  if (v != NULL) {
    /* The value is GNU SASL's own malloc'ed copy (not const storage);
     * the const only keeps callers from changing it by accident. */
    wipe((char *)(uintptr_t)v, strlen(v));
    gsasl_property_free(gs, p);
  }
}

static void secrets_wipe(struct tern_sasl_session *ss) {
  if (ss->gs == NULL)
    return;
  property_wipe(ss->gs, GSASL_PASSWORD);
  property_wipe(ss->gs, GSASL_SCRAM_SALTED_PASSWORD);
  property_wipe(ss->gs, GSASL_SCRAM_SERVERKEY);
  property_wipe(ss->gs, GSASL_SCRAM_STOREDKEY);
}

/* ---- the GNU SASL callback ----------------------------------------------- */

/*
 * Remember what the app answered and turn it into a GNU SASL code. A
 * temporary failure cannot travel through GNU SASL (CRAM-MD5 and SCRAM
 * turn any failed password lookup into GSASL_NO_PASSWORD), so it is kept
 * in the session and wins over whatever GNU SASL returns.
 */
static int note_answer(struct tern_sasl_session *ss, int rc) {
  if (rc == 0)
    return GSASL_OK;
  if (rc == TERN_EAUTH || rc > 0) {
    /* positive is outside the contract: refuse rather than guess */
    if (ss->cb_err == 0)
      ss->cb_err = TERN_EAUTH;
  } else {
    ss->cb_err = rc;
  }
  return GSASL_AUTHENTICATION_ERROR;
}

static int gs_callback(Gsasl *ctx, Gsasl_session *gs, Gsasl_property prop) {
  (void)ctx;
  struct tern_sasl_session *ss = gs ? gsasl_session_hook_get(gs) : NULL;
  if (ss == NULL)
    return GSASL_NO_CALLBACK;
  const struct tern_auth_callbacks *cb = &ss->sasl->cb;

  switch (prop) {
  case GSASL_VALIDATE_SIMPLE: { /* PLAIN, LOGIN */
    if (ss->mech->need != NEED_CHECK_PASSWORD || cb->check_password == NULL)
      return GSASL_AUTHENTICATION_ERROR;
    const char *authzid = gsasl_property_fast(gs, GSASL_AUTHZID);
    const char *authid = gsasl_property_fast(gs, GSASL_AUTHID);
    const char *password = gsasl_property_fast(gs, GSASL_PASSWORD);
    if (authid == NULL || password == NULL)
      return GSASL_AUTHENTICATION_ERROR;
    /* GNU SASL 2.2's PLAIN fills in AUTHZID = AUTHID when the client
     * sent none; both mean "act as myself", which the app sees as NULL.
     * It gets a non-NULL authzid only for another identity. */
    if (authzid != NULL && (authzid[0] == '\0' || strcmp(authzid, authid) == 0))
      authzid = NULL;
    /* The check itself (a password hash: tens of milliseconds) is not
     * done here, on the event loop: the credentials are kept and the
     * step ends with TERN_SASL_VERIFY; tern_sasl_verify() runs the
     * app's check_password on a pool thread. */
    ss->v_user = strdup(authid);
    ss->v_password = strdup(password);
    ss->v_authzid = authzid ? strdup(authzid) : NULL;
    if (!ss->v_user || !ss->v_password || (authzid && !ss->v_authzid)) {
      ss->cb_err = TERN_ENOMEM;
      return GSASL_AUTHENTICATION_ERROR;
    }
    ss->verify_pending = true;
    ss->verify_rc = TERN_ETEMP; /* until tern_sasl_verify() has run */
    return GSASL_OK;
  }
  case GSASL_PASSWORD: { /* CRAM-MD5, SCRAM: the secret of GSASL_AUTHID */
    /* PLAIN and LOGIN ask for it only when VALIDATE_SIMPLE is not
     * answered, which never happens; refuse to be safe. */
    if (ss->mech->need != NEED_GET_PASSWORD || cb->get_password == NULL)
      return GSASL_NO_PASSWORD;
    const char *authid = gsasl_property_fast(gs, GSASL_AUTHID);
    if (authid == NULL)
      return GSASL_NO_AUTHID;
    char buf[SASL_PASSWORD_MAX];
    buf[0] = '\0';
    int rc = cb->get_password(ss->s, authid, buf, sizeof buf, ss->sasl->ud);
    if (rc == 0 && memchr(buf, '\0', sizeof buf) == NULL)
      rc = TERN_ETOOLONG; /* not terminated within cap: an app bug */
    int grc = note_answer(ss, rc);
    if (grc == GSASL_OK) {
      grc = gsasl_property_set(gs, GSASL_PASSWORD, buf);
      if (grc != GSASL_OK)
        ss->cb_err = TERN_ENOMEM;
    }
    wipe(buf, sizeof buf);
    return grc == GSASL_OK ? GSASL_OK : GSASL_NO_PASSWORD;
  }
  default:
    /* SCRAM asks for ITER, SALT, SALTED_PASSWORD, SERVERKEY, STOREDKEY
     * and the channel bindings first; unanswered, GNU SASL uses its
     * defaults (a fresh random salt, its default iteration count) and
     * derives the keys from GSASL_PASSWORD. */
    return GSASL_NO_CALLBACK;
  }
}

/* ---- XOAUTH2 and OAUTHBEARER (framed here) ------------------------------- */

static bool is_b64token_char(unsigned char c) {
  return tern__is_alnum(c) || c == '-' || c == '.' || c == '_' || c == '~' ||
         c == '+' || c == '/';
}

/*
 * "auth" value: RFC 6750 §2.1 credentials, "Bearer" 1*SP b64token, the
 * scheme case-insensitive (RFC 7628 §3.1). Returns the token or NULL.
 */
static const char *bearer_token(const char *v) {
  if (v == NULL || !tern__str_ieq(v, 6, "BEARER") || v[6] != ' ')
    return NULL;
  v += 6;
  while (*v == ' ')
    v++;
  size_t n = 0;
  while (is_b64token_char((unsigned char)v[n]))
    n++;
  if (n == 0)
    return NULL;
  size_t m = n;
  while (v[m] == '=')
    m++;
  return v[m] == '\0' ? v : NULL;
}

/*
 * Parse "key=value" ^A pairs from msg[pos..n), NUL-terminating them in
 * place; the list ends with a lone ^A that must be the last byte.
 * Keeps "user" and "auth" values. Returns false if malformed.
 */
static bool kv_parse(char *msg, size_t pos, size_t n, const char **user,
                     const char **auth) {
  for (;;) {
    char *end = pos < n ? memchr(msg + pos, '\x01', n - pos) : NULL;
    if (end == NULL)
      return false;
    size_t e = (size_t)(end - msg);
    if (e == pos) /* the closing ^A */
      return e + 1 == n;
    *end = '\0';
    char *eq = memchr(msg + pos, '=', e - pos);
    if (eq == NULL || eq == msg + pos)
      return false;
    *eq = '\0';
    const char *key = msg + pos;
    if (strcmp(key, "user") == 0)
      *user = eq + 1;
    else if (strcmp(key, "auth") == 0)
      *auth = eq + 1;
    /* other keys (RFC 7628 "host", "port", ...) are informative */
    pos = e + 1;
  }
}

/*
 * RFC 7628 §3.1 gs2-header: gs2-cbind-flag "," [ "a=" saslname ] ","
 * (RFC 5801 §4). Channel binding ("p=") is not offered here. The
 * saslname is decoded in place ("=2C" ",", "=3D" "="). Returns the index
 * just after the header's closing comma, or 0 if malformed; *user is the
 * authzid, or NULL when absent.
 */
static size_t gs2_header(char *msg, size_t n, const char **user) {
  *user = NULL;
  if (n < 3 || (msg[0] != 'n' && msg[0] != 'y') || msg[1] != ',')
    return 0;
  size_t i = 2;
  if (msg[i] == ',')
    return i + 1;
  if (n - i < 3 || msg[i] != 'a' || msg[i + 1] != '=')
    return 0;
  i += 2;
  char *w = msg + i;
  *user = w;
  for (; i < n && msg[i] != ','; i++) {
    if (msg[i] == '=') {
      if (n - i >= 3 && msg[i + 1] == '2' && msg[i + 2] == 'C')
        *w++ = ',';
      else if (n - i >= 3 && msg[i + 1] == '3' && msg[i + 2] == 'D')
        *w++ = '=';
      else
        return 0;
      i += 2;
    } else {
      *w++ = msg[i];
    }
  }
  if (i >= n)
    return 0;
  /* the comma at i is overwritten by the NUL when w == msg + i */
  *w = '\0';
  return i + 1;
}

/* Server error for a refused token (RFC 7628 §3.2.2; Google's XOAUTH2
 * documents the same shape). Sent as a challenge, then the exchange
 * fails whatever the client answers (RFC 7628: a dummy ^A). */
static const char OAUTH_ERROR_JSON[] =
    "{\"status\":\"invalid_token\",\"schemes\":\"bearer\"}";

static int set_challenge(struct tern_sasl_session *ss, const char *data,
                         size_t len) {
  gsasl_free(ss->challenge);
  ss->challenge = NULL;
  int grc = gsasl_base64_to(data, len, &ss->challenge, NULL);
  return grc == GSASL_OK ? TERN_SASL_CONTINUE : TERN_ENOMEM;
}

/*
 * One OAuth step on the decoded message msg[0..n) (NUL after it).
 * XOAUTH2:     "user=" user ^A "auth=Bearer " token ^A ^A
 * OAUTHBEARER: gs2-header ^A *("key=value" ^A) ^A   (RFC 7628 §3.1)
 */
static int oauth_step(struct tern_sasl_session *ss, char *msg, size_t n) {
  const char *user = NULL;
  const char *auth = NULL;
  size_t pos = 0;

  if (memchr(msg, '\0', n) != NULL)
    return TERN_EAUTH; /* the callbacks take C strings */
  if (ss->mech->kind == KIND_OAUTHBEARER) {
    pos = gs2_header(msg, n, &user);
    if (pos == 0 || pos >= n || msg[pos] != '\x01')
      return TERN_EAUTH;
    pos++;
    const char *kv_user = NULL; /* no "user" key in OAUTHBEARER */
    if (!kv_parse(msg, pos, n, &kv_user, &auth))
      return TERN_EAUTH;
  } else if (!kv_parse(msg, 0, n, &user, &auth)) {
    return TERN_EAUTH;
  }
  /* The app's check_token needs the user: an OAUTHBEARER message
   * without "a=" is refused rather than passed on with no user. */
  const char *token = bearer_token(auth);
  if (user == NULL || user[0] == '\0' || token == NULL)
    return TERN_EAUTH;

  int rc = ss->sasl->cb.check_token(ss->s, user, token, ss->sasl->ud);
  if (rc == 0) {
    ss->user = strdup(user);
    return ss->user ? TERN_SASL_OK : TERN_ENOMEM;
  }
  if (rc == TERN_EAUTH || rc > 0) {
    ss->oauth_refused = true;
    return set_challenge(ss, OAUTH_ERROR_JSON, sizeof OAUTH_ERROR_JSON - 1);
  }
  return TERN_ETEMP;
}

/* ---- GNU SASL steps ------------------------------------------------------ */

static int gsasl_to_tern(int grc) {
  switch (grc) {
  case GSASL_MALLOC_ERROR:
    return TERN_ENOMEM;
  case GSASL_BASE64_ERROR:
    return TERN_ESYNTAX;
  default:
    return TERN_EAUTH;
  }
}

static int gs_step(struct tern_sasl_session *ss, const char *in, size_t inlen) {
  char *out = NULL;
  size_t outlen = 0;
  int grc = gsasl_step(ss->gs, in, inlen, &out, &outlen);
  int rc;

  if (ss->cb_err != 0 && ss->cb_err != TERN_EAUTH) {
    rc = TERN_ETEMP;
  } else if (grc == GSASL_NEEDS_MORE) {
    rc = set_challenge(ss, out, outlen);
  } else if (grc == GSASL_OK) {
    const char *authid = gsasl_property_fast(ss->gs, GSASL_AUTHID);
    const char *authzid = gsasl_property_fast(ss->gs, GSASL_AUTHZID);
    if (authid == NULL || authid[0] == '\0') {
      rc = TERN_EAUTH;
    } else if (ss->mech->need == NEED_GET_PASSWORD && authzid != NULL &&
               authzid[0] != '\0' && strcmp(authzid, authid) != 0) {
      /* SCRAM lets the client name another identity to act as; the app
       * was only asked for authid's password and never got to agree. */
      rc = TERN_EAUTH;
    } else if ((ss->user = strdup(authid)) == NULL) {
      rc = TERN_ENOMEM;
    } else if (ss->verify_pending) {
      rc = TERN_SASL_VERIFY; /* PLAIN/LOGIN: the password is checked next */
    } else if (outlen > 0) {
      /* SCRAM's server-final message is "additional data with success",
       * which AUTH cannot carry in 235: it goes out as a challenge and
       * the client answers with an empty line (RFC 4422 §5 item 7,
       * RFC 4954 §4). */
      ss->ok_pending = true;
      rc = set_challenge(ss, out, outlen);
    } else {
      rc = TERN_SASL_OK;
    }
  } else {
    rc = gsasl_to_tern(grc);
  }
  if (out != NULL) {
    wipe(out, outlen);
    gsasl_free(out);
  }
  return rc;
}

static int session_start(struct tern_sasl *sasl,
                         struct tern_sasl_session **sess,
                         struct tern_server_session *s, const char *mech) {
  const struct mech_info *mi = mech ? mech_find(mech, strlen(mech)) : NULL;
  if (mi == NULL || !(sasl->offered & (1u << (mi - MECHS))))
    return TERN_ENOTSUP;
  struct tern_sasl_session *ss = calloc(1, sizeof *ss);
  if (ss == NULL)
    return TERN_ENOMEM;
  ss->sasl = sasl;
  ss->s = s;
  ss->mech = mi;
  if (mi->kind == KIND_GSASL) {
    int grc = gsasl_server_start(sasl->ctx, mi->name, &ss->gs);
    if (grc != GSASL_OK) {
      free(ss);
      return grc == GSASL_MALLOC_ERROR ? TERN_ENOMEM : TERN_ENOTSUP;
    }
    gsasl_session_hook_set(ss->gs, ss);
  }
  *sess = ss;
  return 0;
}

/* ---- the interface ------------------------------------------------------- */

/*
 * Create a provider for one thread. Copies `cb` (up to cb->size bytes,
 * so an older caller's smaller struct is read safely) and keeps `ud`.
 * `mechs` is split on spaces; each name (any case) is kept, upper-cased
 * and once, in the caller's order, if it is one of the mechanisms above,
 * GNU SASL can serve it and its callback is set. Unknown names are
 * skipped. Returns 0, TERN_EINVAL (a NULL argument, cb->size 0, a mech
 * name longer than 20 characters), TERN_ENOMEM, or TERN_EIO when GNU SASL
 * cannot start. On failure *out is NULL.
 */
int tern_sasl_new(struct tern_sasl **out, const struct tern_auth_callbacks *cb,
                  void *ud, const char *mechs) {
  if (out != NULL)
    *out = NULL;
  if (out == NULL || cb == NULL || mechs == NULL || cb->size == 0)
    return TERN_EINVAL;
  struct tern_sasl *sasl = calloc(1, sizeof *sasl);
  if (sasl == NULL)
    return TERN_ENOMEM;
  size_t n = cb->size < sizeof sasl->cb ? cb->size : sizeof sasl->cb;
  memcpy(&sasl->cb, cb, n);
  sasl->cb.size = sizeof sasl->cb;
  sasl->ud = ud;

  int rc = TERN_ENOMEM;
  size_t mlen = strlen(mechs);
  sasl->mechs = malloc(mlen + 1);
  if (sasl->mechs == NULL)
    goto fail;
  sasl->mechs[0] = '\0';

  int grc = gsasl_init(&sasl->ctx);
  if (grc != GSASL_OK) {
    sasl->ctx = NULL;
    rc = grc == GSASL_MALLOC_ERROR ? TERN_ENOMEM : TERN_EIO;
    goto fail;
  }
  gsasl_callback_set(sasl->ctx, gs_callback);

  size_t o = 0;
  for (size_t i = 0; i < mlen;) {
    if (mechs[i] == ' ') {
      i++;
      continue;
    }
    size_t j = i;
    while (j < mlen && mechs[j] != ' ')
      j++;
    if (j - i > 20) { /* RFC 4422 §3.1: at most 20 characters */
      rc = TERN_EINVAL;
      goto fail;
    }
    const struct mech_info *mi = mech_find(mechs + i, j - i);
    i = j;
    if (mi == NULL)
      continue;
    unsigned bit = 1u << (mi - MECHS);
    if ((sasl->offered & bit) || !need_met(&sasl->cb, mi->need))
      continue;
    if (mi->kind == KIND_GSASL && !gsasl_server_support_p(sasl->ctx, mi->name))
      continue;
    size_t nl = strlen(mi->name);
    if (o > 0)
      sasl->mechs[o++] = ' ';
    memcpy(sasl->mechs + o, mi->name, nl);
    o += nl;
    sasl->mechs[o] = '\0';
    sasl->offered |= bit;
  }
  *out = sasl;
  return 0;

fail:
  tern_sasl_free(sasl);
  return rc;
}

/* Free a provider and its GNU SASL context. Every session made from it
 * must be freed first. NULL is allowed. */
void tern_sasl_free(struct tern_sasl *sasl) {
  if (sasl == NULL)
    return;
  if (sasl->ctx != NULL)
    gsasl_done(sasl->ctx);
  free(sasl->mechs);
  free(sasl);
}

/* The offered mechanisms, space-separated, upper case; "" if none.
 * Owned by the provider. */
const char *tern_sasl_mechanisms(const struct tern_sasl *sasl) {
  return sasl->mechs;
}

/*
 * One step; see sasl.h. The exchange is over after any result other
 * than CONTINUE: GNU SASL's copies of secrets are wiped then, not only
 * at free. A client's "*" (cancel, RFC 4954 §4) is not base64 and comes
 * back as TERN_ESYNTAX (501), which is the reply RFC 4954 asks for.
 */
int tern_sasl_step(struct tern_sasl *sasl, struct tern_sasl_session **sess,
                   struct tern_server_session *s, const char *mech,
                   const char *b64, size_t len, bool has_response,
                   const char **challenge) {
  if (sasl == NULL || sess == NULL || challenge == NULL ||
      (has_response && b64 == NULL && len > 0))
    return TERN_EINVAL;
  *challenge = NULL;
  int rc;
  if (*sess == NULL) {
    rc = session_start(sasl, sess, s, mech);
    if (rc != 0)
      return rc;
  }
  struct tern_sasl_session *ss = *sess;
  if (ss->over)
    return TERN_ESTATE; /* a failed or finished exchange takes nothing more */
  ss->s = s;
  bool first = ss->steps == 0;
  ss->steps++;

  if ((ss->user != NULL && !ss->ok_pending) || ss->verify_pending)
    return TERN_ESTATE; /* already over, or waiting for verify */

  char *in = NULL;
  size_t inlen = 0;
  if (ss->steps > SASL_STEPS_MAX) {
    rc = TERN_EAUTH;
    goto done;
  }
  if (len > SASL_B64_MAX) {
    rc = TERN_ESYNTAX;
    goto done;
  }
  if (has_response) {
    /* RFC 4954 §4: "=" is an empty initial response; on a continuation
     * line an empty response is an empty line. */
    if (first && len == 1 && b64[0] == '=')
      len = 0;
    rc = b64_decode(b64 ? b64 : "", len, &in, &inlen);
    if (rc != 0)
      goto done;
  }

  if (ss->ok_pending) {
    ss->ok_pending = false;
    rc = inlen == 0 ? TERN_SASL_OK : TERN_EAUTH;
  } else if (ss->oauth_refused) {
    rc = TERN_EAUTH;
  } else if (ss->mech->kind != KIND_GSASL) {
    /* Without an initial response the client is asked for the message
     * with an empty challenge. */
    rc = has_response ? oauth_step(ss, in, inlen) : set_challenge(ss, "", 0);
  } else if (first && has_response && strcmp(ss->mech->name, "LOGIN") == 0) {
    /* GNU SASL's LOGIN always opens with "User Name" and ignores input
     * on its first step; an initial response (the user name, as many
     * clients send it) is fed to the second step instead. */
    rc = gs_step(ss, NULL, 0);
    if (rc == TERN_SASL_CONTINUE)
      rc = gs_step(ss, in, inlen);
  } else {
    rc = gs_step(ss, in, inlen);
  }

done:
  wipe_free(in, inlen);
  /* GNU SASL needs no secret once it said OK (ok_pending) */
  if (rc != TERN_SASL_CONTINUE || ss->ok_pending)
    secrets_wipe(ss);
  if (rc != TERN_SASL_VERIFY && ss->verify_pending) {
    ss->verify_pending = false; /* the step failed after all */
    verify_wipe(ss);
  }
  if (rc == TERN_SASL_CONTINUE) {
    *challenge = ss->challenge;
  } else if (rc != TERN_SASL_OK && rc != TERN_SASL_VERIFY) {
    free(ss->user);
    ss->user = NULL;
    ss->ok_pending = false;
  }
  if (rc != TERN_SASL_CONTINUE && rc != TERN_SASL_VERIFY)
    ss->over = true;
  if (rc == TERN_SASL_VERIFY)
    ss->verified = false;
  return rc;
}

/* The authenticated user after OK, else NULL. Owned by the session. */
const char *tern_sasl_user(const struct tern_sasl_session *sess) {
  return sess != NULL && !sess->ok_pending && !sess->verify_pending
             ? sess->user
             : NULL;
}

/*
 * The password check of a step that returned TERN_SASL_VERIFY: calls
 * the app's check_password with the kept credentials and keeps its
 * answer for tern_sasl_verify_done(). Touches only `sess` and the
 * provider's callbacks (read-only after tern_sasl_new), so it may run on
 * any thread while nothing else uses `sess`. Returns the callback's
 * answer, or TERN_ESTATE when nothing waits for a check.
 */
int tern_sasl_verify(struct tern_sasl_session *sess) {
  if (sess == NULL || !sess->verify_pending || sess->verified ||
      sess->v_user == NULL)
    return TERN_ESTATE; /* nothing waits, or the check already ran */
  sess->verified = true;
  const struct tern_auth_callbacks *cb = &sess->sasl->cb;
  int rc = cb->check_password(sess->s, sess->v_authzid, sess->v_user,
                              sess->v_password, sess->sasl->ud);
  sess->verify_rc = rc;
  wipe(sess->v_password, strlen(sess->v_password));
  return rc;
}

/*
 * Finish a TERN_SASL_VERIFY step on the session's thread, after
 * tern_sasl_verify(): wipes the kept credentials and gives the
 * exchange's result, TERN_SASL_OK (tern_sasl_user() is set now),
 * TERN_EAUTH (refused, or a positive answer outside the contract) or
 * TERN_ETEMP (any other negative answer). TERN_ESTATE when no check was
 * waiting. The exchange is over either way.
 */
int tern_sasl_verify_done(struct tern_sasl_session *sess) {
  if (sess == NULL || !sess->verify_pending)
    return TERN_ESTATE;
  sess->verify_pending = false;
  sess->over = true;
  verify_wipe(sess);
  int rc = sess->verified ? sess->verify_rc : TERN_EAUTH; /* never checked */
  if (rc == 0)
    return TERN_SASL_OK;
  free(sess->user);
  sess->user = NULL;
  return rc == TERN_EAUTH || rc > 0 ? TERN_EAUTH : TERN_ETEMP;
}

/* Free a session (wiping what GNU SASL kept). NULL is allowed. */
void tern_sasl_session_free(struct tern_sasl_session *sess) {
  if (sess == NULL)
    return;
  verify_wipe(sess);
  if (sess->gs != NULL) {
    secrets_wipe(sess);
    gsasl_finish(sess->gs);
  }
  gsasl_free(sess->challenge);
  free(sess->user);
  free(sess);
}
