/*
 * DATA codec (server side): finds the end of data and undoes dot-stuffing,
 * across arbitrary feed boundaries, as an explicit byte state machine.
 *
 * RFC 5321 §4.1.1.4: the mail data ends with "<CRLF>.<CRLF>". Nothing
 * else ends it: a bare LF or bare CR never completes the sequence (SMTP
 * smuggling, CVE-2023-51764 family). Bare CR and bare LF in the content
 * are handed on as CRLF (policy "normalize"), and `bare` is set so the
 * caller can reject the message instead. RFC 5321 §4.5.2: a line that
 * starts with "." and has more characters loses that first ".".
 */
#ifndef TERN_CORE_DOT_H
#define TERN_CORE_DOT_H

#include <stdbool.h>
#include <stddef.h>

/* Receives unstuffed content. Return false to make tern__dot_feed()
 * stop after the byte it is working on (backpressure). */
typedef bool (*tern__dot_emit_fn)(void *ctx, const char *p, size_t n);

struct tern__dot {
  unsigned char state; /* enum in dot.c */
  bool bare;           /* a bare CR or LF was seen (and normalised) */
  bool long_line;      /* a line was longer than max_line */
  size_t line_len;     /* octets in the current line so far */
  size_t max_line;     /* limit incl. CRLF; 0 = none */
};

/* Start a message. `after_crlf`: the DATA command ended with a real CRLF,
 * so a "." first line can end the data at once (empty message). */
void tern__dot_init(struct tern__dot *d, size_t max_line, bool after_crlf);

/*
 * Scan buf[0..len). Content goes to `emit` in as few calls as possible
 * (runs of the input, plus short constants where bytes were normalised
 * or held across calls). Returns the bytes consumed; *done is set when
 * they include the final "<CRLF>.<CRLF>" (its last byte is the last one
 * consumed). Fewer than len bytes are consumed only at the end of data or
 * when emit returned false.
 */
size_t tern__dot_feed(struct tern__dot *d, const char *buf, size_t len,
                      tern__dot_emit_fn emit, void *ctx, bool *done);

#endif
