/*
 * tern — error code names and messages, generated from TERN_ERRORS(X) in
 * common.h so the enum, the names and the messages can never drift apart.
 */
#include "internal.h"

/*
 * tern_strerror() maps a TERN_E* code to its static English message.
 * Unknown codes (including 0 and positive values) give "unknown error";
 * never returns NULL. Thread-safe: only static strings are returned.
 */
const char *tern_strerror(int err) {
  switch (err) {
#define TERN__ERR_MSG(name, val, msg)                                      \
  case (val):                                                              \
    return (msg);
    TERN_ERRORS(TERN__ERR_MSG)
#undef TERN__ERR_MSG
  default:
    return "unknown error";
  }
}

/*
 * tern_err_name() maps a TERN_E* code to its symbolic name, for example
 * "TERN_ENOMEM". Unknown codes give "TERN_E?"; never returns NULL.
 * Thread-safe.
 */
const char *tern_err_name(int err) {
  switch (err) {
#define TERN__ERR_NAME(name, val, msg)                                     \
  case (val):                                                              \
    return "TERN_" #name;
    TERN_ERRORS(TERN__ERR_NAME)
#undef TERN__ERR_NAME
  default:
    return "TERN_E?";
  }
}
