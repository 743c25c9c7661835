/*
 * tern/dkim.h — DKIM signing (RFC 6376; Ed25519 RFC 8463), streaming,
 * rsa-sha256 through libopendkim, ed25519-sha256 on OpenSSL (libopendkim
 * 2.11 leaks per Ed25519 signature; docs/decisions/0020-dkim.md): the
 * message goes through in chunks as it is received, nothing is held
 * whole, and the DKIM-Signature fields come out at the end, to be put in
 * front of the message (tern_queue_msg_prepend() in tern/queue.h does
 * that for a queued message).
 *
 *   struct tern_dkim_key k = {.domain = "example.org", .selector = "s1",
 *                             .key_file = "/etc/tern/dkim/s1.pem"};
 *   tern_dkim_signer_new(&sg, &k, 1, err, sizeof err);
 *   tern_dkim_sign_new(sg, &ctx);
 *   tern_dkim_sign_write(ctx, chunk, len);  ... as often as needed
 *   tern_dkim_sign_end(ctx, &fields);       "DKIM-Signature: ...\r\n"
 *
 * Which key signs: the domain of the message's From: field (the
 * header's one mailbox; RFC 5322 §3.6.2) is matched against the keys'
 * domains, exactly or, with a key domain ".example.org", any
 * subdomain of example.org. Every key of that domain signs (e.g. one
 * RSA and one Ed25519 key give two fields). No match, no From:, or
 * several From: fields: no signature (the caller sends the message
 * unsigned). The signer never changes the message itself.
 *
 * Thread safety: a signer may be shared by threads once made (its
 * keys are read-only); one signing context belongs to one thread.
 * The application decides what it signs: tern serve signs only mail it
 * originates (authenticated sessions), never mail relayed in from
 * elsewhere.
 */
#ifndef TERN_DKIM_H
#define TERN_DKIM_H

#include <stdbool.h>
#include <stddef.h>

#include <tern/common.h>

#ifdef __cplusplus
extern "C" {
#endif

struct tern_dkim_key {
  const char *domain;    /* d=; ".example.org": also its subdomains
                            (the signature's d= is the key's domain
                            without the dot) */
  const char *selector;  /* s= */
  const char *key_file;  /* PEM private key: RSA (rsa-sha256; 1024 bits
                            at least) or Ed25519 (ed25519-sha256) */
  const char *headers;   /* fields to sign, colon-separated; NULL: From,
                            Reply-To, Subject, Date, To, Cc, Message-ID,
                            In-Reply-To, References, MIME-Version,
                            Content-Type, Content-Transfer-Encoding, and
                            From once more (over-signed, so none can be
                            added) */
};

struct tern_dkim_signer;
struct tern_dkim_sign;

/*
 * Load keys (their files are read now; the structs and strings are
 * copied). Canonicalisation is relaxed/relaxed (RFC 6376 §3.4.2,
 * §3.4.4). Returns 0; TERN_EINVAL (n 0, a missing field, a bad domain
 * or selector, a key too short or of another type: err says which,
 * naming the file); TERN_EIO (a key file unreadable: err names it);
 * TERN_ENOMEM. err[cap] gets the message (may be NULL).
 */
TERN_EXTERN int tern_dkim_signer_new(struct tern_dkim_signer **out,
                                     const struct tern_dkim_key *keys,
                                     size_t n, char *err, size_t cap);
TERN_EXTERN void tern_dkim_signer_free(struct tern_dkim_signer *s);

/* Would a message whose From: is in `domain` be signed? (For callers
 * that want to skip the work.) */
TERN_EXTERN bool tern_dkim_signer_covers(const struct tern_dkim_signer *s,
                                         const char *domain);

/* Start signing one message. Returns 0 or TERN_ENOMEM. */
TERN_EXTERN int tern_dkim_sign_new(struct tern_dkim_signer *s,
                                   struct tern_dkim_sign **out);

/*
 * Feed the message as it will be sent (header and body; lines ending
 * CRLF, dot-unstuffed), in chunks of any size. The header fields are
 * held until the end of the header (bounded: 1 MiB, past which the
 * message is not signed), then the body streams through.
 * Returns 0 (also when it will not be signed), TERN_ENOMEM.
 */
TERN_EXTERN int tern_dkim_sign_write(struct tern_dkim_sign *c, const char *buf,
                                     size_t len);

/*
 * The message is complete. *fields is a malloc'd string of zero or more
 * complete header fields ("DKIM-Signature: v=1; a=rsa-sha256; ...\r\n",
 * folded at 78 columns, CRLF ends), "" when the message is not signed
 * (why in *why, a static string: "no key for the From domain", "no
 * From field", ...; after a libopendkim failure it is the library's
 * message, valid until this thread's next tern_dkim_sign_end); the
 * caller frees *fields, NULL unless 0 is returned. `why` may be NULL.
 * The context is freed in every case.
 * Returns 0, TERN_ENOMEM, TERN_EIO (libopendkim failed: *why says how;
 * send the message unsigned, or refuse it, as the caller likes).
 */
TERN_EXTERN int tern_dkim_sign_end(struct tern_dkim_sign *c, char **fields,
                                   const char **why);

/* Give up (frees the context). */
TERN_EXTERN void tern_dkim_sign_abort(struct tern_dkim_sign *c);

#ifdef __cplusplus
}
#endif
#endif /* TERN_DKIM_H */
