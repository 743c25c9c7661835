/*
 * src/dkim's insides: Ed25519-SHA256 signing done here (ed25519.c) rather
 * than by libopendkim, whose 2.11 dkim_free leaks the key objects of
 * every Ed25519 signature (docs/decisions/0020-dkim.md).
 */
#ifndef TERN_DKIM_INT_H
#define TERN_DKIM_INT_H

#include <stddef.h>
#include <time.h>

#include <openssl/evp.h>

struct dkim_ed;

/*
 * Begin an Ed25519-SHA256 signature (RFC 8463, relaxed/relaxed) of a
 * message whose header section is hdr[hlen] (CRLF lines, through its
 * empty line or to its end): the fields named in `names` (lower case,
 * NULL-terminated) are chosen and hashed now, From over-signed.
 * Returns 0 or TERN_ENOMEM.
 */
int tern__dkim_ed_new(struct dkim_ed **out, const char *hdr, size_t hlen,
                      const char *const *names);
/* Body bytes, in chunks of any size (hashed as they come). */
int tern__dkim_ed_body(struct dkim_ed *t, const char *buf, size_t len);
/*
 * Finish: *value (malloc'd) is the DKIM-Signature field's value, tags
 * separated by single spaces ("v=1; a=ed25519-sha256; ... b=BASE64"),
 * as tern_dkim_sign_end folds it. Returns 0, TERN_ENOMEM, TERN_EIO (the
 * signing failed). The context is freed in every case.
 */
int tern__dkim_ed_end(struct dkim_ed *t, EVP_PKEY *key, const char *domain,
                      const char *selector, time_t now, char **value);
void tern__dkim_ed_free(struct dkim_ed *t);

#endif /* TERN_DKIM_INT_H */
