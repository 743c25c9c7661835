/*
 * The client side of AUTH (RFC 4954) on GNU SASL.
 *
 *   PLAIN, LOGIN, CRAM-MD5, SCRAM-SHA-1, SCRAM-SHA-256   GNU SASL (client side)
 *   XOAUTH2, OAUTHBEARER                                 framed here
 *
 * GNU SASL 2.2 has neither XOAUTH2 nor OAUTHBEARER, so their one message
 * is built here: XOAUTH2 is "user=" U ^A "auth=Bearer " T ^A ^A (Google's
 * format), OAUTHBEARER is RFC 7628 §3.1 "n,a=" U "," ^A "auth=Bearer " T
 * ^A ^A. Base64 is GNU SASL's (gsasl_base64_to / gsasl_step64).
 *
 * Initial responses. SMTP lets the client send its first message with
 * the AUTH command. Client-first mechanisms (PLAIN, SCRAM, XOAUTH2) do;
 * LOGIN sends the user name (GNU SASL's LOGIN client opens with it, and
 * servers that take "AUTH LOGIN <user>" are the norm); CRAM-MD5 is
 * server-first, so the first step answers TERN_CLIENT_AUTH_NO_IR.
 *
 * Policy (tern_sasl_client_choose): PLAIN and LOGIN carry the password
 * itself, so they are chosen only over TLS unless the caller allows them
 * in the clear; XOAUTH2/OAUTHBEARER only with a token.
 *
 * Secrets: our copies are wiped on free, as are GNU SASL's properties.
 */
#include <gsasl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "tern/sasl.h"

#define STEPS_MAX 8
#define CHALLENGE_MAX 12288 /* base64 from the server */

enum ckind { CK_GSASL, CK_XOAUTH2, CK_OAUTHBEARER };
enum cneed { CN_PASSWORD, CN_TOKEN };

static const struct cmech {
  const char *name;
  enum ckind kind;
  enum cneed need;
  bool cleartext; /* sends the password itself */
} CMECHS[] = {
    {"SCRAM-SHA-256", CK_GSASL, CN_PASSWORD, false},
    {"SCRAM-SHA-1", CK_GSASL, CN_PASSWORD, false},
    {"CRAM-MD5", CK_GSASL, CN_PASSWORD, false},
    {"PLAIN", CK_GSASL, CN_PASSWORD, true},
    {"LOGIN", CK_GSASL, CN_PASSWORD, true},
    {"XOAUTH2", CK_XOAUTH2, CN_TOKEN, false},
    {"OAUTHBEARER", CK_OAUTHBEARER, CN_TOKEN, false},
};
#define CMECH_COUNT (sizeof CMECHS / sizeof CMECHS[0])

struct tern_sasl_client {
  const struct cmech *mech;
  Gsasl *ctx;        /* CK_GSASL */
  Gsasl_session *gs; /* CK_GSASL */
  char *user, *password, *token, *authzid;
  unsigned steps;
};

static const struct cmech *cmech_find(const char *name, size_t len) {
  for (size_t i = 0; i < CMECH_COUNT; i++)
    if (tern__str_ieq(name, len, CMECHS[i].name))
      return &CMECHS[i];
  return NULL;
}

static bool has(const char *s) { return s != NULL && s[0] != '\0'; }

static bool usable(const struct cmech *m,
                   const struct tern_sasl_client_params *p) {
  if (!has(p->user))
    return false;
  if (m->need == CN_TOKEN)
    return has(p->token);
  if (p->password == NULL)
    return false;
  return !m->cleartext || p->tls || p->insecure_ok;
}

/* Is `name` (len bytes) in the space-separated list? */
static bool in_list(const char *list, const char *name, size_t len) {
  const char *p = list;
  while (p != NULL && *p) {
    while (*p == ' ')
      p++;
    const char *e = p;
    while (*e && *e != ' ')
      e++;
    if (e > p && (size_t)(e - p) == len) {
      size_t i = 0;
      while (i < len && (p[i] | 0x20) == (name[i] | 0x20))
        i++;
      if (i == len)
        return true;
    }
    p = e;
  }
  return false;
}

const char *tern_sasl_client_choose(const char *offered, const char *prefs,
                                    const struct tern_sasl_client_params *pp) {
  struct tern_sasl_client_params params, *p = &params;
  tern_sasl_client_params_init(p);
  if (offered == NULL || pp == NULL || tern__copy_sized(p, sizeof *p, pp))
    return NULL;
  if (prefs == NULL)
    prefs = has(p->token) ? "XOAUTH2 " TERN_SASL_CLIENT_PREFS
                          : TERN_SASL_CLIENT_PREFS;
  const char *q = prefs;
  while (*q) {
    while (*q == ' ')
      q++;
    const char *e = q;
    while (*e && *e != ' ')
      e++;
    if (e > q) {
      const struct cmech *m = cmech_find(q, (size_t)(e - q));
      if (m != NULL && usable(m, p) &&
          in_list(offered, m->name, strlen(m->name)))
        return m->name;
    }
    q = e;
  }
  return NULL;
}

static void wipe_free(char *s) {
  if (s != NULL) {
    explicit_bzero(s, strlen(s));
    free(s);
  }
}

static char *dup_opt(const char *s, bool *oom) {
  if (s == NULL)
    return NULL;
  size_t n = strlen(s) + 1;
  char *d = malloc(n);
  if (d == NULL)
    *oom = true;
  else
    memcpy(d, s, n);
  return d;
}

void tern_sasl_client_free(struct tern_sasl_client *c) {
  if (c == NULL)
    return;
  if (c->gs != NULL) {
    const char *pw = gsasl_property_fast(c->gs, GSASL_PASSWORD);
    if (pw != NULL) /* GNU SASL's own malloc'ed copy; see gsasl.c */
      explicit_bzero((char *)(uintptr_t)pw, strlen(pw));
    gsasl_finish(c->gs);
  }
  if (c->ctx != NULL)
    gsasl_done(c->ctx);
  wipe_free(c->user);
  wipe_free(c->password);
  wipe_free(c->token);
  wipe_free(c->authzid);
  free(c);
}

int tern_sasl_client_new(struct tern_sasl_client **out, const char *mech,
                         const struct tern_sasl_client_params *pp) {
  struct tern_sasl_client *c;
  struct tern_sasl_client_params params, *p = &params;
  bool oom = false;

  if (out != NULL)
    *out = NULL;
  tern_sasl_client_params_init(p);
  if (out == NULL || mech == NULL || pp == NULL ||
      tern__copy_sized(p, sizeof *p, pp))
    return TERN_EINVAL;
  const struct cmech *m = cmech_find(mech, strlen(mech));
  if (m == NULL || !has(p->user) ||
      (m->need == CN_TOKEN ? !has(p->token) : p->password == NULL))
    return TERN_ENOTSUP;
  c = calloc(1, sizeof *c);
  if (c == NULL)
    return TERN_ENOMEM;
  c->mech = m;
  c->user = dup_opt(p->user, &oom);
  c->password = dup_opt(p->password, &oom);
  c->token = dup_opt(p->token, &oom);
  c->authzid = has(p->authzid) ? dup_opt(p->authzid, &oom) : NULL;
  if (oom) {
    tern_sasl_client_free(c);
    return TERN_ENOMEM;
  }
  if (m->kind == CK_GSASL) {
    if (gsasl_init(&c->ctx) != GSASL_OK) {
      c->ctx = NULL;
      tern_sasl_client_free(c);
      return TERN_EIO;
    }
    int grc = gsasl_client_start(c->ctx, m->name, &c->gs);
    if (grc != GSASL_OK) {
      c->gs = NULL;
      tern_sasl_client_free(c);
      return grc == GSASL_MALLOC_ERROR ? TERN_ENOMEM : TERN_ENOTSUP;
    }
    if (gsasl_property_set(c->gs, GSASL_AUTHID, c->user) != GSASL_OK ||
        gsasl_property_set(c->gs, GSASL_PASSWORD, c->password) != GSASL_OK ||
        (c->authzid != NULL &&
         gsasl_property_set(c->gs, GSASL_AUTHZID, c->authzid) != GSASL_OK) ||
        gsasl_property_set(c->gs, GSASL_SERVICE, "smtp") != GSASL_OK) {
      tern_sasl_client_free(c);
      return TERN_ENOMEM;
    }
  }
  *out = c;
  return 0;
}

/* base64 of data[0..n) into out (NUL-terminated); returns its length. */
static long b64_out(const char *data, size_t n, char *out, size_t cap) {
  char *b = NULL;
  size_t blen = 0;
  if (n == 0) {
    if (cap == 0)
      return TERN_ENOSPACE;
    out[0] = '\0';
    return 0;
  }
  if (gsasl_base64_to(data, n, &b, &blen) != GSASL_OK)
    return TERN_ENOMEM;
  if (blen + 1 > cap) {
    gsasl_free(b);
    return TERN_ENOSPACE;
  }
  memcpy(out, b, blen + 1);
  gsasl_free(b);
  return (long)blen;
}

/* The one OAuth message (XOAUTH2 or OAUTHBEARER), base64. */
static long oauth_message(struct tern_sasl_client *c, char *out, size_t cap) {
  const char *pre = c->mech->kind == CK_XOAUTH2 ? "user=" : "n,a=";
  const char *mid = c->mech->kind == CK_XOAUTH2 ? "\001" : ",\001";
  size_t n = strlen(pre) + strlen(c->user) + strlen(mid) +
             strlen("auth=Bearer ") + strlen(c->token) + 2;
  /* the user name must not break the framing */
  if (strpbrk(c->user, "\001,=") != NULL && c->mech->kind == CK_OAUTHBEARER)
    return TERN_EINVAL;
  if (strchr(c->user, '\001') != NULL || strchr(c->token, '\001') != NULL)
    return TERN_EINVAL;
  char *msg = malloc(n + 1);
  if (msg == NULL)
    return TERN_ENOMEM;
  snprintf(msg, n + 1, "%s%s%sauth=Bearer %s\001\001", pre, c->user, mid,
           c->token);
  long r = b64_out(msg, n, out, cap);
  explicit_bzero(msg, n);
  free(msg);
  return r;
}

long tern_sasl_client_step(struct tern_sasl_client *c, const char *b64,
                           size_t len, bool has_challenge, char *out,
                           size_t cap) {
  if (c == NULL || out == NULL || (has_challenge && b64 == NULL && len > 0))
    return TERN_EINVAL;
  if (++c->steps > STEPS_MAX)
    return TERN_EAUTH;
  if (len > CHALLENGE_MAX)
    return TERN_ESYNTAX;
  if (c->mech->kind != CK_GSASL) {
    /* The message first; after it, a 334 can only carry the server's
     * error report, which is acknowledged with an empty line (then 535). */
    if (c->steps == 1)
      return oauth_message(c, out, cap);
    return b64_out(NULL, 0, out, cap);
  }

  char *in = malloc(len + 1);
  if (in == NULL)
    return TERN_ENOMEM;
  if (has_challenge && len > 0)
    memcpy(in, b64, len);
  in[has_challenge ? len : 0] = '\0';
  char *o = NULL;
  int grc = gsasl_step64(c->gs, in, &o);
  free(in);
  if (grc != GSASL_OK && grc != GSASL_NEEDS_MORE) {
    gsasl_free(o);
    return grc == GSASL_BASE64_ERROR ? TERN_ESYNTAX
           : grc == GSASL_MALLOC_ERROR ? TERN_ENOMEM
                                       : TERN_EAUTH;
  }
  size_t olen = o != NULL ? strlen(o) : 0;
  long r;
  if (!has_challenge && grc == GSASL_NEEDS_MORE && olen == 0) {
    r = TERN_CLIENT_AUTH_NO_IR; /* server-first (CRAM-MD5) */
    c->steps = 0;               /* the real first step comes next */
  } else if (olen + 1 > cap) {
    r = TERN_ENOSPACE;
  } else {
    memcpy(out, o, olen + 1);
    r = (long)olen;
  }
  if (o != NULL) {
    explicit_bzero(o, olen);
    gsasl_free(o);
  }
  return r;
}
