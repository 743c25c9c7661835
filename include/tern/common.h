/*
 * tern — common definitions: export macro, error codes, allocator hooks,
 * borrowed strings.
 *
 * Error convention (as in libuv): every function that can fail returns an
 * int that is 0 (or a non-negative count) on success and a negative
 * TERN_E* value on failure. Codes are never reused. Codes at or below
 * TERN_EFATAL_BASE are fatal for the object that returned them: after such
 * a code only the object's _free() function may be called.
 */
#ifndef TERN_COMMON_H
#define TERN_COMMON_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(TERN_STATIC)
#define TERN_EXTERN
#elif defined(__GNUC__)
#define TERN_EXTERN __attribute__((visibility("default")))
#else
#define TERN_EXTERN
#endif

/*
 * The error list. X(NAME, value, message). Values are negative and stable;
 * a removed code is never reused.
 */
#define TERN_ERRORS(X)                                                     \
  X(EINVAL, -1, "invalid argument")                                        \
  X(ENOMEM, -2, "out of memory")                                           \
  X(ESTATE, -3, "call not allowed in the object's current state")          \
  X(ESYNTAX, -4, "syntax error")                                           \
  X(ETOOLONG, -5, "input longer than the allowed limit")                   \
  X(ENONASCII, -6, "non-ASCII input where only ASCII is allowed")          \
  X(EBADUTF8, -7, "invalid UTF-8")                                         \
  X(ERANGE, -8, "value out of range")                                      \
  X(EUNKNOWN, -9, "unknown parameter or keyword")                          \
  X(EDUPLICATE, -10, "parameter given twice")                              \
  X(ENOTSUP, -11, "not supported or not enabled")                          \
  X(ENOSPACE, -12, "output buffer full")                                   \
  X(EAUTH, -13, "authentication failed")                                   \
  X(ETLS, -14, "TLS failure")                                              \
  X(EADDRINUSE, -15, "address already in use")                             \
  X(EIO, -16, "system or I/O error")                                       \
  X(EPROXY, -17, "malformed PROXY protocol header")                        \
  X(ETEMP, -18, "temporary failure")                                       \
  X(EPROTO, -19, "protocol error from the peer")                           \
  X(ERESOLVE, -20, "host name could not be resolved")                      \
  X(ECONNECT, -21, "connection failed")                                    \
  X(ETIMEDOUT, -22, "timed out")                                           \
  X(ENOENT, -23, "no such item")                                           \
  X(EBUSY, -24, "busy: one operation at a time")                           \
  X(ENOSPC, -25, "no space left on the storage")                           \
  X(ECLOSED, -100, "session is closed")

enum tern_err {
#define TERN__ERR_ENUM(name, val, msg) TERN_##name = (val),
  TERN_ERRORS(TERN__ERR_ENUM)
#undef TERN__ERR_ENUM
  TERN_EFATAL_BASE = -100
};

/*
 * ESMTP extensions, one bit each, the same bits on both sides: a server
 * session's config says which it offers (tern_server_config.extensions),
 * a client session reports which the server offered
 * (tern_client_session_caps(); XCLIENT and HELP are never reported).
 */
enum tern_ext {
  TERN_EXT_PIPELINING = 1u << 0,    /* RFC 2920 */
  TERN_EXT_SIZE = 1u << 1,          /* RFC 1870 */
  TERN_EXT_8BITMIME = 1u << 2,      /* RFC 6152 */
  TERN_EXT_SMTPUTF8 = 1u << 3,      /* RFC 6531 */
  TERN_EXT_ENHANCEDSTATUSCODES = 1u << 4, /* RFC 2034 / 3463 */
  TERN_EXT_CHUNKING = 1u << 5,      /* RFC 3030 BDAT */
  TERN_EXT_BINARYMIME = 1u << 6,    /* RFC 3030, needs CHUNKING */
  TERN_EXT_DSN = 1u << 7,           /* RFC 3461 */
  TERN_EXT_STARTTLS = 1u << 8,      /* RFC 3207; the runtime does TLS */
  TERN_EXT_AUTH = 1u << 9,          /* RFC 4954; mechanisms via on_auth */
  TERN_EXT_REQUIRETLS = 1u << 10,   /* RFC 8689; advertised over TLS only */
  TERN_EXT_LIMITS = 1u << 11,       /* RFC 9422 */
  TERN_EXT_XCLIENT = 1u << 12,      /* Postfix XCLIENT; trusted peers only */
  TERN_EXT_HELP = 1u << 13          /* answer HELP (RFC 5321 §4.1.1.8) */
};

/*
 * tern_strerror() returns a static English message for an error code,
 * tern_err_name() its symbolic name ("TERN_ENOMEM"). Both return a string
 * for unknown codes too ("unknown error"/"TERN_E?"), never NULL.
 * Thread-safe.
 */
TERN_EXTERN const char *tern_strerror(int err);
TERN_EXTERN const char *tern_err_name(int err);

/*
 * Allocator hooks. Every object that allocates takes an optional pointer
 * to one of these; NULL means malloc/realloc/free. The library copies the
 * struct, so it need not outlive the call that passed it, but `ud` must
 * stay valid as long as objects created with it live. Hooks may return
 * NULL; the library then fails the call with TERN_ENOMEM and never aborts.
 * free(NULL) must be a no-op (as with libc).
 */
struct tern_mem {
  void *(*malloc)(size_t n, void *ud);
  void *(*realloc)(void *p, size_t n, void *ud);
  void (*free)(void *p, void *ud);
  void *ud;
};

/*
 * A borrowed byte string: pointer + length, not NUL-terminated unless a
 * function says otherwise. Lifetime is given by whoever hands it out.
 */
struct tern_str {
  const char *ptr;
  size_t len;
};

#ifdef __cplusplus
}
#endif
#endif /* TERN_COMMON_H */
