/*
 * libFuzzer target for tern_dsn_head() and tern_dsn_tail()
 * (src/core/dsn.c).
 *
 * Input: the first byte chooses flags (bit 0 utf8, bit 1 eight_bit, bits
 * 2-3 include, bit 4 two recipients), the rest is split at NUL bytes into
 * the text fields in a fixed order (a missing piece leaves the field
 * NULL). Whatever the fields hold, a report that is accepted must be
 * lines ending with CRLF, none longer than 998 octets, and have exactly
 * the boundary delimiter lines we write: no field may add a header line
 * break or a MIME part. Any violation traps.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

#include "tern/dsn.h"

#define NFIELDS 26

/* Every line ends with CRLF and has at most 998 octets; returns the
 * number of lines that start with "--" and the boundary, or -1. */
static long check_lines(const char *p, size_t n, const char *b) {
  size_t bl = strlen(b);
  long delims = 0;
  size_t i = 0;
  while (i < n) {
    size_t s = i;
    while (i < n && p[i] != '\r' && p[i] != '\n')
      i++;
    if (i + 1 >= n || p[i] != '\r' || p[i + 1] != '\n')
      return -1;
    if (i - s > 998)
      return -1;
    if (i - s >= bl + 2 && p[s] == '-' && p[s + 1] == '-' &&
        memcmp(p + s + 2, b, bl) == 0)
      delims++;
    i += 2;
  }
  return delims;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  const char *f[NFIELDS] = {0};
  struct tern_dsn d;
  struct tern_dsn_rcpt r[2];
  char *buf, *head = NULL, *tail = NULL;
  size_t hl = 0, tl = 0, k = 0;

  if (size < 1)
    return 0;
  buf = malloc(size);
  if (!buf)
    return 0;
  memcpy(buf, data + 1, size - 1);
  buf[size - 1] = '\0';
  for (size_t i = 0, s = 0; i < size && k < NFIELDS; i++)
    if (buf[i] == '\0') {
      f[k++] = buf + s;
      s = i + 1;
    }

  memset(r, 0, sizeof r);
  tern_dsn_init(&d);
  d.utf8 = data[0] & 1;
  d.eight_bit = (data[0] >> 1) & 1;
  d.include = (enum tern_dsn_ret)((data[0] >> 2) & 3);
  d.nrcpts = (data[0] >> 4) & 1 ? 2 : 1;
  d.rcpts = r;
  k = 0;
  d.reporting_mta = f[k++];
  d.from = f[k++];
  d.to = f[k++];
  d.date = f[k++];
  d.message_id = f[k++];
  d.boundary = f[k++];
  d.subject = f[k++];
  d.human = f[k++];
  d.envid = f[k++];
  d.received_from_mta = f[k++];
  d.arrival_date = f[k++];
  for (int i = 0; i < 2; i++) {
    r[i].final_rcpt = f[k++];
    r[i].orcpt = f[k++];
    r[i].action = f[k++];
    r[i].status = f[k++];
    r[i].remote_mta = f[k++];
    r[i].diagnostic = f[k++];
    r[i].last_attempt = f[k++];
  }
  /* Empty optional fields mean "absent" here, so that short inputs
   * reach the writer. */
  const char **opt[] = {
      &d.subject,         &d.human,    &d.envid,         &d.received_from_mta,
      &d.arrival_date,    &r[0].orcpt, &r[0].remote_mta, &r[0].diagnostic,
      &r[0].last_attempt, &r[1].orcpt, &r[1].remote_mta, &r[1].diagnostic,
      &r[1].last_attempt};
  for (size_t i = 0; i < sizeof opt / sizeof opt[0]; i++)
    if (*opt[i] && !**opt[i])
      *opt[i] = NULL;

  int rc = tern_dsn_head(&d, &head, &hl);
  int rt = tern_dsn_tail(&d, &tail, &tl);
  if ((rc == 0) != (rt == 0))
    __builtin_trap();
  if (rc == 0) {
    /* The notification, the report, and the third part or the end. */
    long want = 3;
    if (strlen(head) != hl || strlen(tail) != tl)
      __builtin_trap();
    if (check_lines(head, hl, d.boundary) != want)
      __builtin_trap();
    if (check_lines(tail, tl, d.boundary) != (tl ? 1 : 0))
      __builtin_trap();
    if ((d.include == TERN_RET_UNSPECIFIED) != (tl == 0))
      __builtin_trap();
  } else if (head != NULL || tail != NULL) {
    __builtin_trap();
  }
  free(head);
  free(tail);
  free(buf);
  return 0;
}
