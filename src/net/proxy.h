/*
 * PROXY protocol v1 and v2 header parser (HAProxy's proxy-protocol.txt),
 * and CIDR network lists. Pure functions: no I/O, fuzzed.
 */
#ifndef TERN_NET_PROXY_H
#define TERN_NET_PROXY_H

#include <netinet/in.h>
#include <stdbool.h>
#include <stddef.h>
#include <sys/socket.h>

struct tern__proxy {
  bool local;                  /* v2 LOCAL / v1 UNKNOWN: keep the real
                                  connection's addresses */
  struct sockaddr_storage src; /* the original client */
  struct sockaddr_storage dst; /* the address it connected to */
};

/* Longest header we accept: v1 is at most 107 octets; v2 16 + length,
 * and we cap the TLVs at 512. */
#define TERN__PROXY_MAX (16 + 512)

/*
 * Parse a header at the start of buf[0..len). Returns the header length
 * (> 0) when complete, 0 when more bytes are needed (never when len >=
 * TERN__PROXY_MAX), or TERN_EPROXY when the bytes are not a valid header
 * (which includes plain SMTP: a listener that expects PROXY closes then).
 * v2 TLVs are skipped; v2 UNSPEC/UNIX families count as local.
 */
long tern__proxy_parse(const char *buf, size_t len, struct tern__proxy *out);

/* A list of networks, e.g. "127.0.0.0/8 ::1/128 192.0.2.7" (spaces or
 * commas). */
struct tern__cidr_list;

/* Parse; on error returns TERN_ESYNTAX and sets *bad to the bad token's
 * offset. */
int tern__cidr_parse(struct tern__cidr_list **out, const char *text,
                     size_t *bad);
bool tern__cidr_match(const struct tern__cidr_list *l,
                      const struct sockaddr *sa);
void tern__cidr_free(struct tern__cidr_list *l);

#endif
