/*
 * DKIM signing (include/tern/dkim.h) through libopendkim
 * (docs/decisions/0020-dkim.md).
 *
 * One DKIM_LIB per signer (its options are the signer's: From over-signed,
 * a missing last CRLF supplied). Ed25519 keys sign through
 * ed25519.c instead: libopendkim 2.11 leaks the key objects of each
 * Ed25519 signature, and a daemon signs without end. Per message: the header
 * section is held (at most 1 MiB) until its empty line, because which keys sign
 * depends on the From: field; then one libopendkim handle per signing
 * key gets the header and, as it comes, the body (libopendkim hashes it
 * and keeps nothing of it). At the end each handle's DKIM-Signature
 * value is folded here, at the spaces libopendkim put between the tags
 * and inside b= (the only places where adding folding whitespace does
 * not change what relaxed canonicalisation hashes, RFC 6376 §3.4.2).
 */
#include <tern/dkim.h>

#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/evp.h>
#include <openssl/pem.h>

#include <opendkim/dkim.h>

#include "dkim_int.h"

/* The header section is held until its end: past this it is not signed. */
#define HDR_MAX (1024u * 1024)
/* A PEM key file is a few KiB; anything far larger is not one. */
#define KEYFILE_MAX (64u * 1024)
/* RFC 5322 §2.1.1: lines SHOULD stay within 78 characters. */
#define FOLD_COL 78

static const char *const default_headers[] = {
    "from",       "reply-to",     "subject",      "date",
    "to",         "cc",           "message-id",   "in-reply-to",
    "references", "mime-version", "content-type", "content-transfer-encoding",
    NULL};

struct dkey {
  char *domain;    /* d=: lower case, without a leading dot */
  bool subdomains; /* the configured domain began with a dot */
  char *selector;
  char *pem; /* the key file's text, for dkim_sign (RSA) */
  bool ed25519;
  EVP_PKEY *pkey; /* Ed25519: the key, for ed25519.c */
  char **headers; /* NULL-terminated, or NULL: default_headers */
};

struct tern_dkim_signer {
  DKIM_LIB *lib;
  struct dkey *keys;
  size_t n;
};

struct tern_dkim_sign {
  struct tern_dkim_signer *s;
  char *hdr; /* the header section so far (until the body starts) */
  size_t hlen, hcap;
  int st;    /* header end scanner: 0 in a line, 1 after CR, 2 at a
                line's start, 3 there after a CR */
  bool body; /* the header section was complete */
  bool skip; /* not signed: why says why */
  const char *why;
  int err; /* TERN_EIO once a libopendkim call failed */
  /* one slot per signing key: a libopendkim handle (RSA) or ours */
  DKIM **h;
  struct dkim_ed **ed;
  const struct dkey **key;
  size_t nh;
};

/* ---- small helpers ------------------------------------------------------- */

static char lower(char c) { return c >= 'A' && c <= 'Z' ? c + 32 : c; }

static void set_err(char *err, size_t cap, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void set_err(char *err, size_t cap, const char *fmt, ...) {
  if (!err || !cap)
    return;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(err, cap, fmt, ap);
  va_end(ap);
}

/* A domain name of LDH labels (RFC 5321 §4.1.2 Domain; also a selector's
 * syntax, RFC 6376 §3.1): 1-63 octets each, at most 253 in all. */
static bool ldh_name(const char *s) {
  size_t n = strlen(s), lab = 0;
  if (n == 0 || n > 253)
    return false;
  for (size_t i = 0; i < n; i++) {
    char c = s[i];
    if (c == '.') {
      if (lab == 0 || s[i - 1] == '-')
        return false;
      lab = 0;
      continue;
    }
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
              (c >= '0' && c <= '9') || (c == '-' && lab > 0) || c == '_';
    if (!ok || ++lab > 63)
      return false;
  }
  return lab > 0 && s[n - 1] != '-';
}

static char *lower_dup(const char *s) {
  char *d = strdup(s);
  if (d)
    for (char *p = d; *p; p++)
      *p = lower(*p);
  return d;
}

/* Read a whole (small) file. 0, or an errno value (EFBIG: too large). */
static int read_file(const char *path, char **out) {
  *out = NULL;
  FILE *f = fopen(path, "rb");
  if (!f)
    return errno;
  char *b = malloc(KEYFILE_MAX + 1);
  if (!b) {
    fclose(f);
    return ENOMEM;
  }
  size_t n = fread(b, 1, KEYFILE_MAX + 1, f);
  int e = ferror(f) ? EIO : 0;
  fclose(f);
  if (!e && n > KEYFILE_MAX)
    e = EFBIG;
  if (e) {
    free(b);
    return e;
  }
  b[n] = '\0';
  *out = b;
  return 0;
}

/* "from:to:subject" into a NULL-terminated array of lower-case names.
 * Field names are printable ASCII but ':' (RFC 5322 §3.6.8). */
static int parse_headers(const char *list, char ***out) {
  *out = NULL;
  size_t n = 1;
  for (const char *p = list; *p; p++)
    n += *p == ':';
  char **v = calloc(n + 2, sizeof *v); /* + "from", + NULL */
  if (!v)
    return TERN_ENOMEM;
  size_t k = 0;
  const char *p = list;
  int rc = 0;
  for (;;) {
    const char *e = strchr(p, ':');
    size_t len = e ? (size_t)(e - p) : strlen(p);
    while (len && (*p == ' ' || *p == '\t'))
      p++, len--;
    while (len && (p[len - 1] == ' ' || p[len - 1] == '\t'))
      len--;
    if (len == 0 || len > 255) {
      rc = TERN_EINVAL;
      break;
    }
    for (size_t i = 0; i < len; i++)
      if (p[i] < 33 || p[i] > 126)
        rc = TERN_EINVAL;
    if (rc)
      break;
    v[k] = malloc(len + 1);
    if (!v[k]) {
      rc = TERN_ENOMEM;
      break;
    }
    for (size_t i = 0; i < len; i++)
      v[k][i] = lower(p[i]);
    v[k][len] = '\0';
    k++;
    if (!e)
      break;
    p = e + 1;
  }
  /* From is always signed (RFC 6376 §5.4: it MUST be). */
  bool from = false;
  for (size_t i = 0; !rc && i < k; i++)
    from = from || strcmp(v[i], "from") == 0;
  if (!rc && !from && !(v[k++] = strdup("from")))
    rc = TERN_ENOMEM;
  if (rc) {
    for (size_t i = 0; i < k; i++)
      free(v[i]);
    free(v);
    return rc;
  }
  *out = v;
  return 0;
}

static void key_clear(struct dkey *k) {
  free(k->domain);
  free(k->selector);
  if (k->pem) {
    OPENSSL_cleanse(k->pem, strlen(k->pem));
    free(k->pem);
  }
  EVP_PKEY_free(k->pkey);
  if (k->headers)
    for (char **p = k->headers; *p; p++)
      free(*p);
  free(k->headers);
}

/* ---- the signer ---------------------------------------------------------- */

static int key_load(struct dkey *k, const struct tern_dkim_key *c, char *err,
                    size_t cap) {
  if (!c->domain || !c->selector || !c->key_file || !c->key_file[0]) {
    set_err(err, cap, "a DKIM key needs a domain, a selector and a key file");
    return TERN_EINVAL;
  }
  const char *d = c->domain;
  k->subdomains = d[0] == '.';
  if (k->subdomains)
    d++;
  if (!ldh_name(d)) {
    set_err(err, cap, "%s: bad DKIM domain \"%s\"", c->key_file, c->domain);
    return TERN_EINVAL;
  }
  if (!ldh_name(c->selector)) {
    set_err(err, cap, "%s: bad DKIM selector \"%s\"", c->key_file, c->selector);
    return TERN_EINVAL;
  }
  k->domain = lower_dup(d);
  k->selector = strdup(c->selector);
  if (!k->domain || !k->selector)
    return TERN_ENOMEM;
  if (c->headers) {
    int rc = parse_headers(c->headers, &k->headers);
    if (rc == TERN_EINVAL)
      set_err(err, cap, "%s: bad DKIM header list \"%s\"", c->key_file,
              c->headers);
    if (rc)
      return rc;
  }
  int e = read_file(c->key_file, &k->pem);
  if (e == ENOMEM)
    return TERN_ENOMEM;
  if (e) {
    set_err(err, cap, "%s: %s", c->key_file,
            e == EFBIG ? "too large for a key file" : strerror(e));
    return TERN_EIO;
  }
  /* Which kind of key, read by OpenSSL as libopendkim will read it
   * (PEM_read_bio_PrivateKey on the same text). */
  BIO *bio = BIO_new_mem_buf(k->pem, -1);
  if (!bio)
    return TERN_ENOMEM;
  EVP_PKEY *pk = PEM_read_bio_PrivateKey(bio, NULL, NULL, NULL);
  BIO_free(bio);
  if (!pk) {
    set_err(err, cap,
            "%s: not a PEM private key (an encrypted one "
            "cannot be used)",
            c->key_file);
    return TERN_EINVAL;
  }
  int rc = 0;
  int type = EVP_PKEY_get_base_id(pk);
  if (type == EVP_PKEY_RSA) {
    int bits = EVP_PKEY_get_bits(pk);
    if (bits < 1024) {
      /* RFC 8301 §3.2: verifiers must not accept fewer. */
      set_err(err, cap, "%s: RSA key of %d bits: at least 1024 needed",
              c->key_file, bits);
      rc = TERN_EINVAL;
    }
  } else if (type == EVP_PKEY_ED25519) {
    k->ed25519 = true;
    k->pkey = pk;
    pk = NULL;
  } else {
    set_err(err, cap, "%s: neither an RSA nor an Ed25519 key", c->key_file);
    rc = TERN_EINVAL;
  }
  EVP_PKEY_free(pk);
  return rc;
}

void tern_dkim_signer_free(struct tern_dkim_signer *s) {
  if (!s)
    return;
  for (size_t i = 0; i < s->n; i++)
    key_clear(&s->keys[i]);
  free(s->keys);
  if (s->lib)
    dkim_close(s->lib);
  free(s);
}

int tern_dkim_signer_new(struct tern_dkim_signer **out,
                         const struct tern_dkim_key *keys, size_t n, char *err,
                         size_t cap) {
  set_err(err, cap, "%s", "");
  if (!out)
    return TERN_EINVAL;
  *out = NULL;
  if (!keys || n == 0) {
    set_err(err, cap, "no DKIM key");
    return TERN_EINVAL;
  }
  struct tern_dkim_signer *s = calloc(1, sizeof *s);
  if (!s)
    return TERN_ENOMEM;
  s->keys = calloc(n, sizeof *s->keys);
  if (!s->keys) {
    free(s);
    return TERN_ENOMEM;
  }
  s->n = n;
  int rc = 0;
  for (size_t i = 0; i < n && rc == 0; i++)
    rc = key_load(&s->keys[i], &keys[i], err, cap);
  if (rc == 0) {
    s->lib = dkim_init(NULL, NULL);
    if (!s->lib)
      rc = TERN_ENOMEM;
  }
  if (rc == 0) {
    /* A last line without CRLF (BDAT allows one) is hashed with the CRLF
     * relaxed canonicalisation gives it (RFC 6376 §3.4.4), instead of
     * libopendkim failing the signature; the same flag would make a bare
     * LF count as CRLF, which tern's input never has (decision 0002). */
    uint32_t flags = DKIM_LIBFLAGS_FIXCRLF;
    if (dkim_options(s->lib, DKIM_OP_SETOPT, DKIM_OPTS_FLAGS, &flags,
                     sizeof flags) != DKIM_STAT_OK) {
      set_err(err, cap, "libopendkim: cannot set its flags");
      rc = TERN_EIO;
    }
  }
  if (rc == 0) {
    /* From once more in every h= than the message has: no From can be
     * added after signing (RFC 6376 §8.15). */
    const char *over[] = {"from", NULL};
    if (dkim_options(s->lib, DKIM_OP_SETOPT, DKIM_OPTS_OVERSIGNHDRS, over,
                     sizeof(char **)) != DKIM_STAT_OK) {
      set_err(err, cap, "libopendkim: cannot set the over-signed fields");
      rc = TERN_EIO;
    }
  }
  if (rc) {
    if (rc == TERN_ENOMEM)
      set_err(err, cap, "out of memory loading DKIM keys");
    tern_dkim_signer_free(s);
    return rc;
  }
  *out = s;
  return 0;
}

static bool key_covers(const struct dkey *k, const char *domain, size_t len) {
  size_t kl = strlen(k->domain);
  if (len == kl)
    return strncmp(domain, k->domain, len) == 0;
  return k->subdomains && len > kl + 1 && domain[len - kl - 1] == '.' &&
         memcmp(domain + len - kl, k->domain, kl) == 0;
}

/* domain[len], lower case, no trailing dot. */
static bool covers(const struct tern_dkim_signer *s, const char *domain,
                   size_t len) {
  for (size_t i = 0; i < s->n; i++)
    if (key_covers(&s->keys[i], domain, len))
      return true;
  return false;
}

bool tern_dkim_signer_covers(const struct tern_dkim_signer *s,
                             const char *domain) {
  if (!s || !domain)
    return false;
  char buf[256];
  size_t n = strlen(domain);
  while (n && domain[n - 1] == '.')
    n--;
  if (n == 0 || n >= sizeof buf)
    return false;
  for (size_t i = 0; i < n; i++)
    buf[i] = lower(domain[i]);
  return covers(s, buf, n);
}

/* ---- the From: field ----------------------------------------------------- */

/*
 * The domain of a From: field's one mailbox (RFC 5322 §3.6.2, §3.4):
 * value[len] is the field body, unfolded or not. Comments and quoted
 * strings are skipped; an angle-addr wins over anything around it; the
 * domain is what follows the last '@' outside quotes. Writes the domain
 * in lower case to out[cap]; returns NULL or why not.
 */
/* One step of a scan of a field value: false when v[*i] is inside (or
 * opens, or is escaped within) a quoted string or a comment, with *q and
 * *depth kept; true when it is an octet of the value proper. */
static bool plain_at(const char *v, size_t *i, bool *q, int *depth) {
  char c = v[*i];
  if ((*q || *depth) && c == '\\') {
    (*i)++;
    return false;
  }
  if (*q) {
    *q = c != '"';
    return false;
  }
  if (*depth) {
    *depth += c == '(' ? 1 : c == ')' ? -1 : 0;
    return false;
  }
  if (c == '"' || c == '(') {
    *q = c == '"';
    *depth = c == '(';
    return false;
  }
  return true;
}

static const char *from_domain(const char *v, size_t len, char *out,
                               size_t cap) {
  /* Pass 1: find the mailbox's extent (angle-addr or the whole value),
   * refuse a list. */
  size_t a0 = 0, a1 = len;
  bool in_angle = false, had_angle = false;
  int depth = 0;
  bool q = false;
  for (size_t i = 0; i < len; i++) {
    if (!plain_at(v, &i, &q, &depth))
      continue;
    char c = v[i];
    if (c == '<' && !in_angle) {
      if (had_angle)
        return "several mailboxes in the From field";
      in_angle = had_angle = true;
      a0 = i + 1;
    } else if (c == '>' && in_angle) {
      in_angle = false;
      a1 = i;
    } else if (c == ',' && !in_angle) {
      return "several mailboxes in the From field";
    } else if (c == ':' && !in_angle) {
      return "a group in the From field";
    }
  }
  if (q || depth || in_angle)
    return "a From field that cannot be parsed";
  /* Pass 2: the domain after the last '@' outside quotes and comments,
   * with comments and white space dropped. */
  size_t at = SIZE_MAX;
  q = false;
  depth = 0;
  for (size_t i = a0; i < a1; i++)
    if (plain_at(v, &i, &q, &depth) && v[i] == '@')
      at = i;
  if (at == SIZE_MAX)
    return "no domain in the From field";
  size_t n = 0;
  depth = 0;
  for (size_t i = at + 1; i < a1; i++) {
    char c = v[i];
    if (depth) {
      if (c == '\\')
        i++;
      else
        depth += c == '(' ? 1 : c == ')' ? -1 : 0;
      continue;
    }
    if (c == '(') {
      depth = 1;
      continue;
    }
    if (c == ' ' || c == '\t' || c == '\r' || c == '\n')
      continue;
    if (n + 1 >= cap)
      return "a From domain too long";
    out[n++] = lower(c);
  }
  while (n && out[n - 1] == '.')
    n--;
  out[n] = '\0';
  if (n == 0 || !ldh_name(out))
    return "no usable domain in the From field";
  return NULL;
}

/*
 * The header section h[len] (CRLF lines, through its empty line or not):
 * the domain of its one From field, or why not.
 */
static const char *header_from(const char *h, size_t len, char *out,
                               size_t cap) {
  const char *found = NULL;
  size_t flen = 0;
  size_t i = 0;
  while (i < len) {
    /* A field: from here to a CRLF not followed by WSP. */
    size_t s = i;
    if (h[i] == '\r' || h[i] == '\n')
      break; /* the empty line */
    size_t e = i;
    for (;;) {
      const char *nl = memchr(h + e, '\n', len - e);
      e = nl ? (size_t)(nl - h) + 1 : len;
      if (e >= len || (h[e] != ' ' && h[e] != '\t'))
        break;
    }
    i = e;
    if (e - s >= 5 && lower(h[s]) == 'f' && lower(h[s + 1]) == 'r' &&
        lower(h[s + 2]) == 'o' && lower(h[s + 3]) == 'm') {
      size_t c = s + 4;
      while (c < e && (h[c] == ' ' || h[c] == '\t'))
        c++;
      if (c < e && h[c] == ':') {
        if (found)
          return "several From fields";
        found = h + c + 1;
        flen = e - c - 1;
      }
    }
  }
  if (!found)
    return "no From field";
  return from_domain(found, flen, out, cap);
}

/* ---- signing one message ------------------------------------------------- */

int tern_dkim_sign_new(struct tern_dkim_signer *s,
                       struct tern_dkim_sign **out) {
  if (!out)
    return TERN_EINVAL;
  *out = NULL;
  if (!s)
    return TERN_EINVAL;
  struct tern_dkim_sign *c = calloc(1, sizeof *c);
  if (!c)
    return TERN_ENOMEM;
  c->s = s;
  c->st = 2;
  *out = c;
  return 0;
}

static void drop_handles(struct tern_dkim_sign *c) {
  for (size_t i = 0; i < c->nh; i++) {
    if (c->h[i])
      dkim_free(c->h[i]);
    tern__dkim_ed_free(c->ed[i]);
  }
  free(c->h);
  free(c->ed);
  free(c->key);
  c->h = NULL;
  c->ed = NULL;
  c->key = NULL;
  c->nh = 0;
}

/* libopendkim said no: the message goes unsigned, and why is kept in a
 * buffer of this thread (tern_dkim_sign_end's `why` is valid until the
 * thread's next signing call). */
static _Thread_local char why_buf[256];

static void fail(struct tern_dkim_sign *c, DKIM *h, const char *what,
                 DKIM_STAT st) {
  const char *e = h ? dkim_geterror(h) : NULL;
  snprintf(why_buf, sizeof why_buf, "libopendkim: %s: %s", what,
           e && *e ? e : dkim_getresultstr(st));
  c->why = why_buf;
  c->err = TERN_EIO;
  c->skip = true;
  drop_handles(c);
}

/* The header section is complete (or the message ended inside it): pick
 * the keys and give each handle the header. */
static int begin(struct tern_dkim_sign *c) {
  char dom[256];
  const char *why = header_from(c->hdr ? c->hdr : "", c->hlen, dom, sizeof dom);
  size_t dl = why ? 0 : strlen(dom);
  if (!why && !covers(c->s, dom, dl))
    why = "no key for the From domain";
  if (why) {
    c->why = why;
    c->skip = true;
    return 0;
  }
  struct tern_dkim_signer *s = c->s;
  c->h = calloc(s->n, sizeof *c->h);
  c->ed = calloc(s->n, sizeof *c->ed);
  c->key = calloc(s->n, sizeof *c->key);
  if (!c->h || !c->ed || !c->key)
    return TERN_ENOMEM;
  for (size_t i = 0; i < s->n; i++) {
    struct dkey *k = &s->keys[i];
    if (!key_covers(k, dom, dl))
      continue;
    if (k->ed25519) {
      int rc = tern__dkim_ed_new(&c->ed[c->nh], c->hdr ? c->hdr : "", c->hlen,
                                 k->headers ? (const char *const *)k->headers
                                            : default_headers);
      if (rc)
        return rc;
      c->key[c->nh++] = k;
      continue;
    }
    DKIM_STAT st = DKIM_STAT_OK;
    DKIM *h = dkim_sign(
        s->lib, (const unsigned char *)"tern", NULL,
        (const dkim_sigkey_t)k->pem, (const unsigned char *)k->selector,
        (const unsigned char *)k->domain, DKIM_CANON_RELAXED,
        DKIM_CANON_RELAXED,
        k->ed25519 ? DKIM_SIGN_ED25519SHA256 : DKIM_SIGN_RSASHA256, -1, &st);
    if (!h) {
      fail(c, NULL, "dkim_sign", st);
      return 0;
    }
    c->key[c->nh] = k;
    c->h[c->nh++] = h;
    st = dkim_signhdrs(h, k->headers ? (const char **)k->headers
                                     : (const char **)default_headers);
    if (st == DKIM_STAT_OK)
      st = dkim_set_margin(h, 0); /* folded by fold() */
    if (st == DKIM_STAT_OK && c->hlen)
      st = dkim_chunk(h, (u_char *)c->hdr, c->hlen);
    if (st != DKIM_STAT_OK) {
      fail(c, h, "header", st);
      return 0;
    }
  }
  return 0;
}

static void feed_body(struct tern_dkim_sign *c, const char *buf, size_t len) {
  for (size_t i = 0; i < c->nh && len; i++) {
    if (c->ed[i]) {
      tern__dkim_ed_body(c->ed[i], buf, len);
      continue;
    }
    DKIM_STAT st = dkim_chunk(c->h[i], (u_char *)buf, len);
    if (st != DKIM_STAT_OK) {
      fail(c, c->h[i], "body", st);
      return;
    }
  }
}

static int hdr_add(struct tern_dkim_sign *c, const char *buf, size_t len) {
  if (c->hlen + len > HDR_MAX) {
    c->why = "a header section over 1 MiB";
    c->skip = true;
    free(c->hdr);
    c->hdr = NULL;
    c->hlen = c->hcap = 0;
    return 0;
  }
  if (c->hcap - c->hlen < len) {
    size_t cap = c->hcap ? c->hcap : 4096;
    while (cap - c->hlen < len)
      cap *= 2;
    if (cap > HDR_MAX)
      cap = HDR_MAX;
    char *b = realloc(c->hdr, cap);
    if (!b)
      return TERN_ENOMEM;
    c->hdr = b;
    c->hcap = cap;
  }
  memcpy(c->hdr + c->hlen, buf, len);
  c->hlen += len;
  return 0;
}

int tern_dkim_sign_write(struct tern_dkim_sign *c, const char *buf,
                         size_t len) {
  if (!c || (!buf && len))
    return TERN_EINVAL;
  if (c->skip || len == 0)
    return 0;
  if (c->body) {
    feed_body(c, buf, len);
    return 0;
  }
  /* Look for the empty line that ends the header section. */
  size_t i = 0;
  bool end = false;
  for (; i < len && !end; i++) {
    char ch = buf[i];
    if (ch == '\r')
      c->st = c->st == 2 ? 3 : 1;
    else if (ch == '\n' && c->st == 3)
      end = true;
    else if (ch == '\n' && c->st == 1)
      c->st = 2;
    else
      c->st = 0;
  }
  int rc = hdr_add(c, buf, i);
  if (rc || c->skip || !end)
    return rc;
  c->body = true;
  rc = begin(c);
  free(c->hdr);
  c->hdr = NULL;
  c->hlen = c->hcap = 0;
  if (rc == 0 && !c->skip && i < len)
    feed_body(c, buf + i, len - i);
  return rc;
}

void tern_dkim_sign_abort(struct tern_dkim_sign *c) {
  if (!c)
    return;
  drop_handles(c);
  free(c->hdr);
  free(c);
}

/* Grow-only output string. */
struct out {
  char *p;
  size_t len, cap;
  bool oom;
};

static void out_add(struct out *o, const char *s, size_t n) {
  if (o->oom)
    return;
  if (o->cap - o->len < n + 1) {
    size_t cap = o->cap ? o->cap : 512;
    while (cap - o->len < n + 1)
      cap *= 2;
    char *b = realloc(o->p, cap);
    if (!b) {
      o->oom = true;
      return;
    }
    o->p = b;
    o->cap = cap;
  }
  memcpy(o->p + o->len, s, n);
  o->len += n;
  o->p[o->len] = '\0';
}

/*
 * "DKIM-Signature: " + v, folded: a line break before a tag that would
 * pass FOLD_COL, and b='s value cut to fill lines. libopendkim (margin 0)
 * separates the tags with single spaces; a break replaces such a space,
 * and relaxed canonicalisation (RFC 6376 §3.4.2) hashes "CRLF TAB" there
 * as the space it was. Inside b= any FWS is ignored (§3.5, b= is removed
 * before hashing). A tag that cannot be cut (h= of many fields) makes a
 * longer line, well within 998.
 */
static void fold(struct out *o, const char *v) {
  static const char name[] = "DKIM-Signature: ";
  out_add(o, name, sizeof name - 1);
  size_t col = sizeof name - 1;
  bool first = true;
  while (*v) {
    while (*v == ' ')
      v++;
    if (!*v)
      break;
    const char *e = strchr(v, ' ');
    size_t n = e ? (size_t)(e - v) : strlen(v);
    bool is_b = n > 2 && v[0] == 'b' && v[1] == '=';
    if (!first && col + 1 + n > FOLD_COL && !(is_b && col + 8 < FOLD_COL)) {
      out_add(o, "\r\n\t", 3);
      col = 1;
    } else if (!first) {
      out_add(o, " ", 1);
      col++;
    }
    first = false;
    if (is_b) {
      while (n) {
        size_t room = col < FOLD_COL ? FOLD_COL - col : 0;
        if (room == 0) {
          out_add(o, "\r\n\t", 3);
          col = 1;
          continue;
        }
        size_t k = n < room ? n : room;
        out_add(o, v, k);
        v += k;
        n -= k;
        col += k;
      }
    } else {
      out_add(o, v, n);
      col += n;
      v += n;
    }
  }
  out_add(o, "\r\n", 2);
}

int tern_dkim_sign_end(struct tern_dkim_sign *c, char **fields,
                       const char **why) {
  if (why)
    *why = NULL;
  if (!c || !fields) {
    tern_dkim_sign_abort(c);
    return TERN_EINVAL;
  }
  *fields = NULL;
  int rc = 0;
  if (!c->skip && !c->body) {
    /* The message ended inside its header section: no body. */
    c->body = true;
    rc = begin(c);
  }
  struct out o = {0};
  time_t now = time(NULL);
  for (size_t i = 0; rc == 0 && !c->skip && i < c->nh; i++) {
    if (c->ed[i]) {
      char *v = NULL;
      const struct dkey *k = c->key[i];
      int er =
          tern__dkim_ed_end(c->ed[i], k->pkey, k->domain, k->selector, now, &v);
      c->ed[i] = NULL;
      if (er == TERN_ENOMEM) {
        rc = er;
        break;
      }
      if (er) {
        snprintf(why_buf, sizeof why_buf, "Ed25519 signing failed");
        c->why = why_buf;
        c->err = TERN_EIO;
        c->skip = true;
        break;
      }
      fold(&o, v);
      free(v);
      continue;
    }
    DKIM *h = c->h[i];
    DKIM_STAT st = dkim_chunk(h, NULL, 0);
    if (st == DKIM_STAT_OK)
      st = dkim_eom(h, NULL);
    u_char *v = NULL;
    size_t vlen = 0;
    if (st == DKIM_STAT_OK)
      st = dkim_getsighdr_d(h, 0, &v, &vlen);
    if (st != DKIM_STAT_OK) {
      fail(c, h, "signing", st);
      break;
    }
    fold(&o, (const char *)v);
  }
  if (rc == 0 && o.oom)
    rc = TERN_ENOMEM;
  if (rc == 0 && c->err)
    rc = c->err;
  if (rc == 0 && c->nh == 0 && !c->why)
    c->why = "no key for the From domain";
  if (rc == 0) {
    *fields = o.p ? o.p : strdup("");
    if (!*fields)
      rc = TERN_ENOMEM;
  } else {
    free(o.p);
  }
  if (why)
    *why = rc == TERN_ENOMEM ? "out of memory" : c->why;
  tern_dkim_sign_abort(c);
  return rc;
}
