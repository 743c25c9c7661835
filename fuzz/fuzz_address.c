/*
 * libFuzzer target for tern_path_parse() (src/core/address.c).
 *
 * Input: the first byte is the TERN_PATH_ALLOW_* option mask, the rest is
 * the path text. The text is copied into an exact-size heap block so that
 * AddressSanitizer traps any read past `len`. On success the documented
 * invariants are checked and any violation traps.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

static int inside(const char *base, size_t len, struct tern_str s) {
  return s.ptr != NULL && s.ptr >= base && s.len <= len &&
         (size_t)(s.ptr - base) <= len - s.len;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  struct tern_path p;
  size_t consumed = 0;
  unsigned opts;
  char *buf;
  size_t len;
  int rc;

  if (size < 1)
    return 0;
  opts = data[0] & 0x0F;
  len = size - 1;
  buf = malloc(len ? len : 1);
  if (buf == NULL)
    return 0;
  memcpy(buf, data + 1, len);

  rc = tern_path_parse(buf, len, opts, &p, &consumed);
  if (rc == 0) {
    if (consumed == 0 || consumed > len)
      __builtin_trap();
    if (!inside(buf, consumed, p.mailbox) || !inside(buf, consumed, p.local) ||
        !inside(buf, consumed, p.domain))
      __builtin_trap();
    if (p.local.len > TERN_LOCAL_PART_MAX || p.domain.len > TERN_DOMAIN_MAX)
      __builtin_trap();
    if (consumed > TERN_PATH_MAX || p.mailbox.len + 2 > TERN_PATH_MAX)
      __builtin_trap();
    if ((p.flags & TERN_PATHF_NULL) &&
        (!(opts & TERN_PATH_ALLOW_NULL) || p.mailbox.len != 0))
      __builtin_trap();
    if ((p.flags & TERN_PATHF_POSTMASTER) &&
        (!(opts & TERN_PATH_ALLOW_POSTMASTER) ||
         !tern__str_ieq(p.mailbox.ptr, p.mailbox.len, "POSTMASTER")))
      __builtin_trap();
    if ((p.flags & TERN_PATHF_UTF8) && !(opts & TERN_PATH_ALLOW_UTF8))
      __builtin_trap();
    if (buf[0] != '<' && !(opts & TERN_PATH_ALLOW_NO_BRACKETS))
      __builtin_trap();
    /* the path is all ASCII without the UTF-8 option, valid UTF-8 with */
    if (!tern__utf8_valid((const unsigned char *)buf, consumed))
      __builtin_trap();
    if (!(opts & TERN_PATH_ALLOW_UTF8))
      for (size_t i = 0; i < consumed; i++)
        if ((unsigned char)buf[i] >= 0x80)
          __builtin_trap();
    /* mailbox = local "@" domain when there is a domain */
    if (p.domain.len > 0 &&
        (p.mailbox.ptr != p.local.ptr ||
         p.mailbox.len != p.local.len + 1 + p.domain.len ||
         p.mailbox.ptr[p.local.len] != '@'))
      __builtin_trap();
    /* no control bytes outside a quoted local part */
    for (size_t i = 0; i < p.domain.len; i++) {
      unsigned char ch = (unsigned char)p.domain.ptr[i];
      if (ch <= 32 || ch == 127)
        __builtin_trap();
    }
    /* parsing is a pure function of its input */
    {
      struct tern_path q;
      size_t c2 = 0;
      if (tern_path_parse(buf, len, opts, &q, &c2) != 0 || c2 != consumed ||
          memcmp(&p, &q, sizeof p) != 0)
        __builtin_trap();
    }
  } else {
    if (rc != TERN_ESYNTAX && rc != TERN_ETOOLONG && rc != TERN_ENONASCII &&
        rc != TERN_EBADUTF8)
      __builtin_trap();
    if (consumed != 0)
      __builtin_trap();
  }
  free(buf);
  return 0;
}
