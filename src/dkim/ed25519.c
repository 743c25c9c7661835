/*
 * Ed25519-SHA256 DKIM signatures (RFC 8463) with relaxed/relaxed
 * canonicalisation (RFC 6376 §3.4.2, §3.4.4), on OpenSSL: the one
 * algorithm tern does not hand to libopendkim, whose 2.11 leaks the key
 * objects of each Ed25519 signature (docs/decisions/0020-dkim.md). The
 * output matches what libopendkim writes for RSA (same tags, same h=
 * rule, From over-signed), and dkimpy verifies both (tests/dkim).
 */
#include "dkim_int.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <tern/common.h>

struct dkim_ed {
  EVP_MD_CTX *hh; /* the header hash (selected fields hashed at new) */
  EVP_MD_CTX *bh; /* the body hash */
  char *h;        /* the h= list */
  /* body canonicalisation state */
  unsigned nempty; /* empty lines held back (dropped at the end) */
  bool wsp;        /* white space seen in this line, not yet written */
  bool content;    /* this line has something besides white space */
  bool cr;         /* a CR that may begin CRLF */
  char out[4096];  /* canonical bytes not yet hashed */
  size_t olen;
  bool fail;
};

static char lower(char c) { return c >= 'A' && c <= 'Z' ? c + 32 : c; }
static bool is_wsp(char c) { return c == ' ' || c == '\t'; }

/* ---- the body (RFC 6376 §3.4.4) ----------------------------------------- */

static void emit(struct dkim_ed *t, const char *p, size_t n) {
  if (t->olen + n > sizeof t->out) {
    if (EVP_DigestUpdate(t->bh, t->out, t->olen) != 1)
      t->fail = true;
    t->olen = 0;
  }
  memcpy(t->out + t->olen, p, n);
  t->olen += n;
}

/* A byte of a line's content (not white space, not its CRLF). */
static void body_char(struct dkim_ed *t, char c) {
  /* the empty lines before it were not the body's end after all */
  for (; t->nempty; t->nempty--)
    emit(t, "\r\n", 2);
  if (t->wsp) /* a run of white space inside a line: one SP */
    emit(t, " ", 1);
  t->wsp = false;
  emit(t, &c, 1);
  t->content = true;
}

/* A CRLF: white space before it is dropped; an empty line is held. */
static void body_eol(struct dkim_ed *t) {
  t->wsp = false;
  if (t->content)
    emit(t, "\r\n", 2);
  else
    t->nempty++;
  t->content = false;
}

int tern__dkim_ed_body(struct dkim_ed *t, const char *buf, size_t len) {
  for (size_t i = 0; i < len; i++) {
    char c = buf[i];
    if (t->cr) {
      t->cr = false;
      if (c == '\n') {
        body_eol(t);
        continue;
      }
      body_char(t, '\r'); /* a bare CR is content */
    }
    if (c == '\r')
      t->cr = true;
    else if (is_wsp(c))
      t->wsp = true;
    else
      body_char(t, c);
  }
  return 0;
}

/* ---- the header (RFC 6376 §3.4.2, §5.4.2) ------------------------------- */

struct field {
  const char *p; /* the field, from its name to its CRLF (excluded) */
  size_t n;
  size_t namelen; /* its name, white space before the colon excluded */
  bool used;
};

/* The fields of hdr[hlen]; *nf gets how many. NULL on allocation
 * failure (an empty header gives a 1-element array with *nf 0). */
static struct field *split_fields(const char *h, size_t len, size_t *nf) {
  size_t cap = 1;
  for (size_t i = 0; i < len; i++)
    cap += h[i] == '\n';
  struct field *f = calloc(cap, sizeof *f);
  if (!f)
    return NULL;
  size_t n = 0, i = 0;
  while (i < len && n < cap) {
    if (h[i] == '\r' || h[i] == '\n')
      break; /* the empty line */
    size_t s = i, e = i;
    for (;;) {
      const char *nl = memchr(h + e, '\n', len - e);
      e = nl ? (size_t)(nl - h) + 1 : len;
      if (e >= len || !is_wsp(h[e]))
        break;
    }
    i = e;
    const char *colon = memchr(h + s, ':', e - s);
    if (!colon)
      continue; /* not a field: nothing a verifier would match either */
    size_t nl = (size_t)(colon - (h + s));
    while (nl && is_wsp(h[s + nl - 1]))
      nl--;
    size_t fe = e;
    while (fe > s && (h[fe - 1] == '\n' || h[fe - 1] == '\r'))
      fe--;
    f[n++] = (struct field){h + s, fe - s, nl, false};
  }
  *nf = n;
  return f;
}

/* Relaxed form of one field ("name:value\r\n" without the CRLF when
 * `crlf` is false) appended to out (capacity checked by the caller: at
 * most the field's length + 3). Returns the length written. */
static size_t relaxed_field(const char *p, size_t n, size_t namelen, bool crlf,
                            char *out) {
  size_t o = 0;
  for (size_t i = 0; i < namelen; i++)
    out[o++] = lower(p[i]);
  out[o++] = ':';
  size_t i = namelen;
  while (i < n && p[i] != ':')
    i++;
  i++; /* past the colon */
  bool wsp = false, any = false;
  for (; i < n; i++) {
    char c = p[i];
    if (c == '\r' || c == '\n' || is_wsp(c)) { /* unfolded, then WSP */
      wsp = true;
      continue;
    }
    if (wsp && any)
      out[o++] = ' ';
    wsp = false;
    any = true;
    out[o++] = c;
  }
  if (crlf) {
    out[o++] = '\r';
    out[o++] = '\n';
  }
  return o;
}

static bool name_in(const char *p, size_t n, const char *const *names) {
  for (; *names; names++)
    if (strlen(*names) == n) {
      size_t i = 0;
      while (i < n && lower(p[i]) == (*names)[i])
        i++;
      if (i == n)
        return true;
    }
  return false;
}

int tern__dkim_ed_new(struct dkim_ed **out, const char *hdr, size_t hlen,
                      const char *const *names) {
  *out = NULL;
  struct dkim_ed *t = calloc(1, sizeof *t);
  if (!t)
    return TERN_ENOMEM;
  size_t nf = 0;
  struct field *f = split_fields(hdr, hlen, &nf);
  char *buf = malloc(hlen + 8);
  t->h = malloc(hlen + 8);
  t->hh = EVP_MD_CTX_new();
  t->bh = EVP_MD_CTX_new();
  int rc = TERN_ENOMEM;
  if (!f || !buf || !t->h || !t->hh || !t->bh ||
      EVP_DigestInit_ex(t->hh, EVP_sha256(), NULL) != 1 ||
      EVP_DigestInit_ex(t->bh, EVP_sha256(), NULL) != 1)
    goto out;
  /* h=: every field of the list, in the message's order (as libopendkim
   * writes it), then From once more. Hashed as a verifier will take
   * them: each name picks the last instance not yet taken (§5.4.2). */
  size_t hl = 0;
  for (size_t i = 0; i < nf; i++)
    if (name_in(f[i].p, f[i].namelen, names)) {
      if (hl)
        t->h[hl++] = ':';
      memcpy(t->h + hl, f[i].p, f[i].namelen);
      hl += f[i].namelen;
    }
  memcpy(t->h + hl, hl ? ":from" : "from", hl ? 6 : 5);
  const char *p = t->h;
  while (*p) {
    const char *e = strchr(p, ':');
    size_t n = e ? (size_t)(e - p) : strlen(p);
    for (size_t k = nf; k-- > 0;) {
      if (f[k].used || f[k].namelen != n)
        continue;
      size_t j = 0;
      while (j < n && lower(f[k].p[j]) == lower(p[j]))
        j++;
      if (j < n)
        continue;
      f[k].used = true;
      size_t m = relaxed_field(f[k].p, f[k].n, f[k].namelen, true, buf);
      if (EVP_DigestUpdate(t->hh, buf, m) != 1)
        goto out;
      break;
    }
    p += n + (e != NULL);
  }
  rc = 0;
out:
  free(f);
  free(buf);
  if (rc) {
    tern__dkim_ed_free(t);
    return rc;
  }
  *out = t;
  return 0;
}

void tern__dkim_ed_free(struct dkim_ed *t) {
  if (!t)
    return;
  EVP_MD_CTX_free(t->hh);
  EVP_MD_CTX_free(t->bh);
  free(t->h);
  free(t);
}

static char *b64(const unsigned char *p, size_t n) {
  char *s = malloc(4 * ((n + 2) / 3) + 1);
  if (s)
    EVP_EncodeBlock((unsigned char *)s, p, (int)n);
  return s;
}

int tern__dkim_ed_end(struct dkim_ed *t, EVP_PKEY *key, const char *domain,
                      const char *selector, time_t now, char **value) {
  *value = NULL;
  int rc = TERN_EIO;
  char *v = NULL, *bhs = NULL, *sig = NULL, *canon = NULL;
  EVP_MD_CTX *sc = NULL;
  if (t->cr) { /* a CR at the very end: content */
    t->cr = false;
    body_char(t, '\r');
  }
  if (t->content) /* a last line without CRLF gets one */
    body_eol(t);
  unsigned char bh[EVP_MAX_MD_SIZE], hh[EVP_MAX_MD_SIZE];
  unsigned bhn = 0, hhn = 0;
  if (t->fail || EVP_DigestUpdate(t->bh, t->out, t->olen) != 1 ||
      EVP_DigestFinal_ex(t->bh, bh, &bhn) != 1)
    goto out;
  rc = TERN_ENOMEM;
  bhs = b64(bh, bhn);
  if (!bhs)
    goto out;
  size_t cap =
      strlen(domain) + strlen(selector) + strlen(t->h) + strlen(bhs) + 256;
  v = malloc(cap);
  canon = malloc(cap + 32);
  if (!v || !canon)
    goto out;
  int n = snprintf(v, cap,
                   "v=1; a=ed25519-sha256; c=relaxed/relaxed; d=%s; s=%s; "
                   "t=%lld; bh=%s; h=%s; b=",
                   domain, selector, (long long)now, bhs, t->h);
  if (n < 0 || (size_t)n >= cap)
    goto out;
  /* The field itself, b= empty, relaxed and without its CRLF (§3.7). */
  static const char name[] = "DKIM-Signature";
  char *field = malloc(sizeof name + 1 + (size_t)n);
  if (!field)
    goto out;
  memcpy(field, name, sizeof name - 1);
  field[sizeof name - 1] = ':';
  memcpy(field + sizeof name, v, (size_t)n);
  size_t m = relaxed_field(field, sizeof name + (size_t)n, sizeof name - 1,
                           false, canon);
  free(field);
  rc = TERN_EIO;
  if (EVP_DigestUpdate(t->hh, canon, m) != 1 ||
      EVP_DigestFinal_ex(t->hh, hh, &hhn) != 1)
    goto out;
  /* RFC 8463 §3: PureEdDSA over the SHA-256 hash. */
  unsigned char s[64];
  size_t slen = sizeof s;
  sc = EVP_MD_CTX_new();
  if (!sc || EVP_DigestSignInit(sc, NULL, NULL, NULL, key) != 1 ||
      EVP_DigestSign(sc, s, &slen, hh, hhn) != 1)
    goto out;
  rc = TERN_ENOMEM;
  sig = b64(s, slen);
  if (!sig)
    goto out;
  size_t vl = (size_t)n, sl = strlen(sig);
  char *full = realloc(v, vl + sl + 1);
  if (!full)
    goto out;
  v = full;
  memcpy(v + vl, sig, sl + 1);
  *value = v;
  v = NULL;
  rc = 0;
out:
  EVP_MD_CTX_free(sc);
  free(v);
  free(bhs);
  free(sig);
  free(canon);
  tern__dkim_ed_free(t);
  return rc;
}
