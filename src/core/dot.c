/*
 * DATA codec: end-of-data detection and dot-unstuffing. See dot.h.
 *
 * States. "Real" beginning of line (BOL) follows a CRLF that the client
 * sent; "soft" BOL follows a bare CR or LF that we normalised. Only a
 * real BOL can start the end-of-data sequence, which is what keeps
 * "\n.\r\n", "\r.\r\n" and friends inside the message.
 */
#include "internal.h"

#include "dot.h"

enum {
  D_MID = 0,  /* inside a line */
  D_CR,       /* held a CR inside a line */
  D_BOL_R,    /* real beginning of line */
  D_BOL_S,    /* soft beginning of line */
  D_DOT_R,    /* held "." at a real BOL */
  D_DOT_S,    /* held "." at a soft BOL */
  D_DOTCR_R,  /* held ".\r" at a real BOL: "\n" now ends the data */
  D_DOTCR_S   /* held ".\r" at a soft BOL: "\n" is content ".\r\n" */
};

static const char crlf[] = "\r\n";
static const char dotcrlf[] = ".\r\n";

void tern__dot_init(struct tern__dot *d, size_t max_line, bool after_crlf) {
  memset(d, 0, sizeof *d);
  d->max_line = max_line;
  d->state = after_crlf ? D_BOL_R : D_BOL_S;
}

/* Account a finished line (without its terminator) against the limit. */
static void end_line(struct tern__dot *d) {
  if (d->max_line && d->line_len + 2 > d->max_line)
    d->long_line = true;
  d->line_len = 0;
}

/* A line ended by a bare CR or LF (or "." so ended): normalised to
 * `eol` (CRLF, or ".CRLF"), and the next byte starts a soft BOL. */
static bool bare_eol(struct tern__dot *d, tern__dot_emit_fn emit, void *ctx,
                     const char *eol, size_t n) {
  d->bare = true;
  end_line(d);
  d->state = D_BOL_S;
  return emit(ctx, eol, n);
}

/* First CR or LF in p[0..n), or NULL. Two memchr calls are cheaper than a
 * byte loop: lines are short and memchr is vectorised. */
static const char *find_crlf(const char *p, size_t n) {
  const char *lf = memchr(p, '\n', n);
  const char *cr = memchr(p, '\r', lf ? (size_t)(lf - p) : n);
  return cr ? cr : lf;
}

size_t tern__dot_feed(struct tern__dot *d, const char *buf, size_t len,
                      tern__dot_emit_fn emit, void *ctx, bool *done) {
  size_t i = 0;
  size_t run = 0; /* start of the pending run of content in buf */
  bool go = true;

  *done = false;
  while (i < len && go) {
    unsigned char c = (unsigned char)buf[i];

    switch (d->state) {
    case D_MID: {
      const char *p = find_crlf(buf + i, len - i);
      size_t j = p ? (size_t)(p - buf) : len;
      d->line_len += j - i;
      i = j;
      if (!p)
        break;
      if (*p == '\r' && i + 1 < len && buf[i + 1] == '\n') {
        /* The common case: CRLF inside this buffer stays in the run. */
        end_line(d);
        d->state = D_BOL_R;
        i += 2;
        break;
      }
      if (run < i) {
        go = emit(ctx, buf + run, i - run);
        run = i;
        if (!go) /* paused: the CR or LF waits for the next feed */
          break;
      }
      if (*p == '\r') {
        d->state = D_CR; /* held: is a LF next, in the next buffer? */
      } else { /* bare LF: normalise */
        go = bare_eol(d, emit, ctx, crlf, 2);
      }
      run = ++i;
      break;
    }
    case D_CR:
      if (c == '\n') {
        end_line(d);
        go = emit(ctx, crlf, 2);
        d->state = D_BOL_R;
        run = ++i;
      } else { /* bare CR: normalise; reprocess c at a soft BOL */
        go = bare_eol(d, emit, ctx, crlf, 2);
        run = i;
      }
      break;
    case D_BOL_R:
    case D_BOL_S:
      if (c == '.') { /* hold the dot: stuffing, or the end? */
        if (run < i)
          go = emit(ctx, buf + run, i - run);
        d->state = d->state == D_BOL_R ? D_DOT_R : D_DOT_S;
        /* RFC 5321 §4.5.3.1.6: the stuffing dot does not count. */
        d->line_len = 0;
        run = ++i;
      } else {
        d->state = D_MID; /* the run goes on */
      }
      break;
    case D_DOT_R:
    case D_DOT_S:
      if (c == '\r') {
        d->state = d->state == D_DOT_R ? D_DOTCR_R : D_DOTCR_S;
        run = ++i;
      } else if (c == '\n') { /* ".\n": a line "." ended by a bare LF */
        d->line_len = 1; /* the dot stays: it was content, not stuffing */
        go = bare_eol(d, emit, ctx, dotcrlf, 3);
        run = ++i;
      } else { /* the leading dot was stuffing: drop it (RFC 5321 §4.5.2) */
        d->state = D_MID;
        run = i;
      }
      break;
    case D_DOTCR_R:
      if (c == '\n') { /* <CRLF>.<CRLF> */
        d->line_len = 0;
        *done = true;
        return i + 1;
      }
      /* ".\r" + other: a line "." ended by a bare CR */
      d->line_len = 1;
      go = bare_eol(d, emit, ctx, dotcrlf, 3);
      run = i;
      break;
    case D_DOTCR_S:
      d->line_len = 1; /* the content line "." */
      end_line(d);
      go = emit(ctx, dotcrlf, 3);
      if (c == '\n') { /* a real CRLF ended the content line "." */
        d->state = D_BOL_R;
        run = ++i;
      } else {
        d->bare = true;
        d->state = D_BOL_S;
        run = i;
      }
      break;
    }
  }
  /* Content left in the run goes out now; emit's verdict is kept by the
   * caller's own pause flag. */
  if (run < i)
    emit(ctx, buf + run, i - run);
  return i;
}

/* ---- the client's body encoder ------------------------------------------- */

/*
 * The inverse of the decoder above. State bits: S_MID, the output is
 * inside a line (0 = at the beginning of a line, where a "." gets
 * doubled); S_CR, a CR ended the input of the previous call and waits to
 * learn whether a LF follows. Only CRLF ever leaves the encoder, and a
 * line of the output never starts with a single "." before the final one,
 * so "<CRLF>.<CRLF>" can only be the end (RFC 5321 §4.1.1.4, §4.5.2).
 */
enum { S_MID = 1u, S_CR = 2u };

size_t tern__stuff(unsigned *state, const char *src, size_t len, bool final,
                   bool dots, char *dst) {
  unsigned st = *state & (S_MID | S_CR);
  size_t o = 0, i = 0;

  while (i < len) {
    char ch = src[i];
    if (st & S_CR) { /* the held CR: a CRLF, or a bare CR made one */
      dst[o++] = '\r';
      dst[o++] = '\n';
      st = 0;
      if (ch == '\n') {
        i++;
        continue;
      }
    }
    if (ch == '\r') {
      st = S_CR;
      i++;
      continue;
    }
    if (ch == '\n') { /* a bare LF becomes CRLF */
      dst[o++] = '\r';
      dst[o++] = '\n';
      st = 0;
      i++;
      continue;
    }
    /* RFC 5321 §4.5.2: a line that starts with "." gets another one. */
    if (!st && ch == '.' && dots)
      dst[o++] = '.';
    const char *p = find_crlf(src + i, len - i);
    size_t j = p ? (size_t)(p - src) : len;
    memcpy(dst + o, src + i, j - i);
    o += j - i;
    i = j;
    st = S_MID;
  }
  if (final) {
    if (st) { /* close the last line (a held CR is that line's end) */
      dst[o++] = '\r';
      dst[o++] = '\n';
    }
    if (dots) {
      memcpy(dst + o, dotcrlf, 3);
      o += 3;
    }
    st = 0;
  }
  *state = st;
  return o;
}

/*
 * tern_dot_stuff() — see client.h. Worst case: a CR held from the last
 * call (2 octets), every octet doubled (2 * len) and the final "\r\n.\r\n"
 * (5). With a smaller `cap` nothing is written, `state` is unchanged and
 * 0 is returned.
 */
size_t tern_dot_stuff(unsigned *state, const char *src, size_t len,
                      bool final, char *dst, size_t cap) {
  if (!state || !dst || (!src && len) || len > (SIZE_MAX - 7) / 2 ||
      cap < 2 * len + 7)
    return 0;
  return tern__stuff(state, src, len, final, true, dst);
}
