/*
 * tern send — message helpers without a session (send_msg.c): address
 * lists, header fields, and the Date: and Message-ID: fields tern send
 * adds to a message that has none. Used by send.c only.
 */
#ifndef TERN_CLI_SEND_MSG_H
#define TERN_CLI_SEND_MSG_H

#include <stdbool.h>
#include <stddef.h>
#include <time.h>

/* A list of owned strings without exact duplicates. */
struct strvec {
  char **v;
  size_t n, cap;
};

/* malloc/strndup that end the program with EX_OSERR when memory runs
 * out (a one-shot command: nothing to unwind). */
void *send_xmalloc(size_t n);
char *send_xstrndup(const char *p, size_t n);

/* Append s (taking ownership); an exact duplicate is freed instead. */
void send_sv_push(struct strvec *v, char *s);
/* Free every string and the list; v is empty afterwards. */
void send_sv_free(struct strvec *v);

/*
 * Parse an RFC 5322 address list (a header value, or a command-line
 * argument) p[0..n) into bare addr-specs appended to out: "Name <a@b>,
 * c@d (comment), Group: e@f, g@h;" gives a@b, c@d, e@f, g@h. Comments
 * are dropped, quoted strings kept (local parts may be quoted), display
 * names and group names dropped, source routes in <...> dropped, folding
 * white space ignored. Empty elements ("undisclosed-recipients:;") give
 * none. Nothing is validated here.
 */
void send_parse_addr_list(const char *p, size_t n, struct strvec *out);

/* Is the header field f[0..flen) named `name` (case-insensitive, white
 * space before the colon allowed, RFC 5322 §4.5)? */
bool send_field_named(const char *f, size_t flen, const char *name);
/* Does the line p[0..n) start a header field (ftext then ':')? */
bool send_field_start(const char *p, size_t n);

/* Fill buf with n random bytes from the kernel. Returns 0, or -1 with
 * errno set. */
int send_random(void *buf, size_t n);

/*
 * "Date: Thu, 03 Dec 2026 10:22:37 +0100\r\n" for `now` in local time
 * (RFC 5322 §3.3; English names whatever the locale). Returns its
 * length, or 0 (nothing usable in buf) when cap is too small or the
 * time cannot be converted.
 */
size_t send_format_date(char *buf, size_t cap, time_t now);

/*
 * "Message-ID: <YYYYMMDDhhmmss.RANDOM@HOST>\r\n": the UTC time, 128
 * random bits in hex, and `host` when it is a dot-atom (RFC 5322
 * §3.6.4), else "localhost". Returns its length, or 0 when no random
 * bytes could be had (errno set) or cap is too small.
 */
size_t send_format_msgid(char *buf, size_t cap, time_t now, const char *host);

#endif /* TERN_CLI_SEND_MSG_H */
