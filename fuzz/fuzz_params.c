/*
 * libFuzzer target for tern__mail_params_parse() and
 * tern__rcpt_params_parse() (src/core/params.c).
 *
 * Input: the first byte selects the parser and the extension mask
 *   bit 0: 0 = MAIL, 1 = RCPT
 *   bits 1..7: SIZE, 8BITMIME, SMTPUTF8, CHUNKING+BINARYMIME, DSN, AUTH,
 *              REQUIRETLS
 * the rest is the parameter text, copied into a writable heap block of
 * exactly its size (xtext is decoded in place). Decoded strings and the
 * *bad token must lie inside that block.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

static void check_inside(const char *base, size_t len, struct tern_str s) {
  if (s.len == 0)
    return;
  if (s.ptr == NULL || s.ptr < base || s.len > len ||
      (size_t)(s.ptr - base) > len - s.len)
    __builtin_trap();
}

/* Decoded ENVID/ORCPT/AUTH are printable US-ASCII. */
static void check_printable(struct tern_str s) {
  for (size_t i = 0; i < s.len; i++)
    if ((unsigned char)s.ptr[i] < 32 || (unsigned char)s.ptr[i] > 126)
      __builtin_trap();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static const unsigned bits[7] = {
      TERN_EXT_SIZE,
      TERN_EXT_8BITMIME,
      TERN_EXT_SMTPUTF8,
      TERN_EXT_CHUNKING | TERN_EXT_BINARYMIME,
      TERN_EXT_DSN,
      TERN_EXT_AUTH,
      TERN_EXT_REQUIRETLS,
  };
  struct tern_str bad;
  unsigned ext = 0;
  size_t len;
  char *buf;
  int rc;

  if (size < 1)
    return 0;
  for (int i = 0; i < 7; i++)
    if (data[0] & (1u << (i + 1)))
      ext |= bits[i];
  len = size - 1;
  buf = malloc(len ? len : 1);
  if (buf == NULL)
    return 0;
  memcpy(buf, data + 1, len);

  if (!(data[0] & 1)) {
    struct tern_mail_params mp;
    rc = tern__mail_params_parse(buf, len, ext, &mp, &bad);
    if (rc == 0) {
      check_inside(buf, len, mp.envid);
      check_inside(buf, len, mp.auth);
      check_printable(mp.envid);
      check_printable(mp.auth);
      if (mp.envid.len > 100)
        __builtin_trap();
      if (mp.has_size && !(ext & TERN_EXT_SIZE))
        __builtin_trap();
      if (mp.body == TERN_BODY_BINARYMIME && !(ext & TERN_EXT_BINARYMIME))
        __builtin_trap();
      if (mp.body == TERN_BODY_8BITMIME && !(ext & TERN_EXT_8BITMIME))
        __builtin_trap();
      if ((mp.smtputf8 && !(ext & TERN_EXT_SMTPUTF8)) ||
          (mp.requiretls && !(ext & TERN_EXT_REQUIRETLS)) ||
          (mp.ret != TERN_RET_UNSPECIFIED && !(ext & TERN_EXT_DSN)))
        __builtin_trap();
    }
  } else {
    struct tern_rcpt_params rp;
    rc = tern__rcpt_params_parse(buf, len, ext, &rp, &bad);
    if (rc == 0) {
      check_inside(buf, len, rp.orcpt_type);
      check_inside(buf, len, rp.orcpt);
      check_printable(rp.orcpt);
      if (rp.orcpt.len > 500)
        __builtin_trap();
      if ((rp.orcpt_type.len == 0) != (rp.orcpt.len == 0))
        __builtin_trap();
      if ((rp.notify & TERN_NOTIFY_NEVER) && rp.notify != TERN_NOTIFY_NEVER)
        __builtin_trap();
      if ((rp.notify != 0 || rp.orcpt.len != 0) && !(ext & TERN_EXT_DSN))
        __builtin_trap();
    }
  }
  if (rc == 0) {
    if (bad.ptr != NULL || bad.len != 0)
      __builtin_trap();
  } else {
    if (rc != TERN_ESYNTAX && rc != TERN_EUNKNOWN && rc != TERN_EDUPLICATE &&
        rc != TERN_ERANGE)
      __builtin_trap();
    if (bad.len == 0)
      __builtin_trap();
    check_inside(buf, len, bad);
  }
  free(buf);
  return 0;
}
