/*
 * Unit tests for tern_path_parse() (src/core/address.c).
 *
 * Most cases live in one table: input, options, expected result, and for
 * successes the expected consumed count, local part, domain and flags.
 * Every input is copied into a heap block of exactly its length so that
 * AddressSanitizer catches any read past `len`. Length limits are tested
 * with generated inputs on each side of every boundary.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

#define N TERN_PATH_ALLOW_NULL
#define U TERN_PATH_ALLOW_UTF8
#define P TERN_PATH_ALLOW_POSTMASTER
#define B TERN_PATH_ALLOW_NO_BRACKETS

#define F_NULL TERN_PATHF_NULL
#define F_UTF8 TERN_PATHF_UTF8
#define F_QUOTED TERN_PATHF_QUOTED
#define F_LIT TERN_PATHF_LITERAL
#define F_ROUTE TERN_PATHF_ROUTE
#define F_PM TERN_PATHF_POSTMASTER

struct path_case {
  const char *in;
  size_t len; /* 0: strlen(in) */
  unsigned opts;
  int rc;
  size_t consumed;   /* checked on success */
  const char *local; /* checked on success */
  const char *domain;
  unsigned flags;
};

/* clang-format off */
static const struct path_case cases[] = {
  /* ---- plain mailboxes -------------------------------------------- */
  {"<a@b>", 0, 0, 0, 5, "a", "b", 0},
  {"<user@example.com>", 0, 0, 0, 18, "user", "example.com", 0},
  {"<first.last@sub.example.org>", 0, 0, 0, 28, "first.last", "sub.example.org", 0},
  {"<a!#$%&'*+-/=?^_`{|}~@x>", 0, 0, 0, 24, "a!#$%&'*+-/=?^_`{|}~", "x", 0},
  {"<USER@EXAMPLE.COM>", 0, 0, 0, 18, "USER", "EXAMPLE.COM", 0},
  {"<1@2>", 0, 0, 0, 5, "1", "2", 0},
  {"<a@b-c.d>", 0, 0, 0, 9, "a", "b-c.d", 0},
  {"<a@b--c>", 0, 0, 0, 8, "a", "b--c", 0},
  {"<a@123.example>", 0, 0, 0, 15, "a", "123.example", 0},
  /* trailing text after ">" is the caller's */
  {"<a@b> SIZE=10", 0, 0, 0, 5, "a", "b", 0},
  {"<a@b>>", 0, 0, 0, 5, "a", "b", 0},
  {"<a@b>garbage", 0, 0, 0, 5, "a", "b", 0},

  /* ---- dot-string errors -------------------------------------------- */
  {"<.a@b>", 0, 0, TERN_ESYNTAX, 0, 0, 0, 0},
  {"<a.@b>", 0, 0, TERN_ESYNTAX, 0, 0, 0, 0},
  {"<a..b@c>", 0, 0, TERN_ESYNTAX, 0, 0, 0, 0},
  {"<@b>", 0, 0, TERN_ESYNTAX, 0, 0, 0, 0},
  {"<a(b)@c>", 0, 0, TERN_ESYNTAX, 0, 0, 0, 0},
  {"<a,b@c>", 0, 0, TERN_ESYNTAX, 0, 0, 0, 0},
  {"<a b@c>", 0, 0, TERN_ESYNTAX, 0, 0, 0, 0},
  {"< a@b>", 0, 0, TERN_ESYNTAX, 0, 0, 0, 0},
  {"<a@b >", 0, 0, TERN_ESYNTAX, 0, 0, 0, 0},
  {"<a\t@b>", 0, 0, TERN_ESYNTAX, 0, 0, 0, 0},
  {"<a\x7f@b>", 0, 0, TERN_ESYNTAX, 0, 0, 0, 0},
  {"<a\0@b>", 6, 0, TERN_ESYNTAX, 0, 0, 0, 0},
  {"<a@b\0>", 6, 0, TERN_ESYNTAX, 0, 0, 0, 0},
  {"<a@@b>", 0, 0, TERN_ESYNTAX, 0, 0, 0, 0},
  {"<a@b@c>", 0, 0, TERN_ESYNTAX, 0, 0, 0, 0},
  {"<ab>", 0, 0, TERN_ESYNTAX, 0, 0, 0, 0},

  /* ---- framing ------------------------------------------------------ */
  {"", 0, 0, TERN_ESYNTAX, 0, 0, 0, 0},
  {"<", 0, 0, TERN_ESYNTAX, 0, 0, 0, 0},
  {"<a", 0, 0, TERN_ESYNTAX, 0, 0, 0, 0},
  {"<a@", 0, 0, TERN_ESYNTAX, 0, 0, 0, 0},
  {"<a@b", 0, 0, TERN_ESYNTAX, 0, 0, 0, 0},
  {"<a@b.", 0, 0, TERN_ESYNTAX, 0, 0, 0, 0},
  {"a@b", 0, 0, TERN_ESYNTAX, 0, 0, 0, 0},
  {"a@b>", 0, 0, TERN_ESYNTAX, 0, 0, 0, 0},
  {" <a@b>", 0, 0, TERN_ESYNTAX, 0, 0, 0, 0},
  {"<<a@b>>", 0, 0, TERN_ESYNTAX, 0, 0, 0, 0},
  /* the length, not a NUL, ends the input */
  {"<a@b>", 4, 0, TERN_ESYNTAX, 0, 0, 0, 0},
  {"<a@bc>", 5, 0, TERN_ESYNTAX, 0, 0, 0, 0},

  /* ---- null path and postmaster -------------------------------------- */
  {"<>", 0, N, 0, 2, "", "", F_NULL},
  {"<> BODY=8BITMIME", 0, N, 0, 2, "", "", F_NULL},
  {"<>", 0, 0, TERN_ESYNTAX, 0, 0, 0, 0},
  {"<>", 0, P | U | B, TERN_ESYNTAX, 0, 0, 0, 0},
  {"< >", 0, N, TERN_ESYNTAX, 0, 0, 0, 0},
  {"<Postmaster>", 0, P, 0, 12, "Postmaster", "", F_PM},
  {"<POSTMASTER>", 0, P, 0, 12, "POSTMASTER", "", F_PM},
  {"<postMaster> NOTIFY=NEVER", 0, P, 0, 12, "postMaster", "", F_PM},
  {"<Postmaster>", 0, 0, TERN_ESYNTAX, 0, 0, 0, 0},
  {"<Postmaster>", 0, N, TERN_ESYNTAX, 0, 0, 0, 0},
  {"<Postmasters>", 0, P, TERN_ESYNTAX, 0, 0, 0, 0},
  {"<Postmaste>", 0, P, TERN_ESYNTAX, 0, 0, 0, 0},
  {"<Postmaster", 0, P, TERN_ESYNTAX, 0, 0, 0, 0},
  {"<Postmaster@example.com>", 0, P, 0, 24, "Postmaster", "example.com", 0},
  {"<postmaster@example.com>", 0, 0, 0, 24, "postmaster", "example.com", 0},
  {"<@a:Postmaster>", 0, P, TERN_ESYNTAX, 0, 0, 0, 0},
  {"Postmaster", 0, P | B, 0, 10, "Postmaster", "", F_PM},
  {"Postmaster x", 0, P | B, 0, 10, "Postmaster", "", F_PM},

  /* ---- quoted local parts ---------------------------------------- */
  {"<\"a b\"@c>", 0, 0, 0, 9, "\"a b\"", "c", F_QUOTED},
  {"<\"\"@c>", 0, 0, 0, 6, "\"\"", "c", F_QUOTED},
  {"<\"a>b\"@c>", 0, 0, 0, 9, "\"a>b\"", "c", F_QUOTED},
  {"<\"a\\\"b\"@c>", 0, 0, 0, 10, "\"a\\\"b\"", "c", F_QUOTED},
  {"<\"a\\\\b\"@c>", 0, 0, 0, 10, "\"a\\\\b\"", "c", F_QUOTED},
  {"<\"\\ \"@c>", 0, 0, 0, 8, "\"\\ \"", "c", F_QUOTED},
  {"<\"@:,;<>[]\"@c>", 0, 0, 0, 14, "\"@:,;<>[]\"", "c", F_QUOTED},
  {"<\"a\"b@c>", 0, 0, TERN_ESYNTAX, 0, 0, 0, 0},
  {"<\"a\".b@c>", 0, 0, TERN_ESYNTAX, 0, 0, 0, 0},
  {"<\"a@c>", 0, 0, TERN_ESYNTAX, 0, 0, 0, 0},
  {"<\"a\\", 0, 0, TERN_ESYNTAX, 0, 0, 0, 0},
  {"<\"a\tb\"@c>", 0, 0, TERN_ESYNTAX, 0, 0, 0, 0},
  {"<\"a\\\tb\"@c>", 0, 0, TERN_ESYNTAX, 0, 0, 0, 0},
  {"<\"a\\\x7f\"@c>", 0, 0, TERN_ESYNTAX, 0, 0, 0, 0},
  {"<\"a\rb\"@c>", 0, 0, TERN_ESYNTAX, 0, 0, 0, 0},
  {"<\"a\0b\"@c>", 9, 0, TERN_ESYNTAX, 0, 0, 0, 0},
  {"<\"a\x7f\"@c>", 0, 0, TERN_ESYNTAX, 0, 0, 0, 0},

  /* ---- domains ------------------------------------------------------- */
  {"<a@-b>", 0, 0, TERN_ESYNTAX, 0, 0, 0, 0},
  {"<a@b->", 0, 0, TERN_ESYNTAX, 0, 0, 0, 0},
  {"<a@b-.c>", 0, 0, TERN_ESYNTAX, 0, 0, 0, 0},
  {"<a@b.-c>", 0, 0, TERN_ESYNTAX, 0, 0, 0, 0},
  {"<a@.b>", 0, 0, TERN_ESYNTAX, 0, 0, 0, 0},
  {"<a@b.>", 0, 0, TERN_ESYNTAX, 0, 0, 0, 0},
  {"<a@b..c>", 0, 0, TERN_ESYNTAX, 0, 0, 0, 0},
  {"<a@b_c>", 0, 0, TERN_ESYNTAX, 0, 0, 0, 0},
  {"<a@>", 0, 0, TERN_ESYNTAX, 0, 0, 0, 0},
  {"<a@b.c:25>", 0, 0, TERN_ESYNTAX, 0, 0, 0, 0},

  /* ---- address literals -------------------------------------------- */
  {"<a@[1.2.3.4]>", 0, 0, 0, 13, "a", "[1.2.3.4]", F_LIT},
  {"<a@[255.255.255.255]>", 0, 0, 0, 21, "a", "[255.255.255.255]", F_LIT},
  {"<a@[0.0.0.0]>", 0, 0, 0, 13, "a", "[0.0.0.0]", F_LIT},
  {"<a@[001.002.003.004]>", 0, 0, 0, 21, "a", "[001.002.003.004]", F_LIT},
  {"<a@[256.1.1.1]>", 0, 0, TERN_ESYNTAX, 0, 0, 0, 0},
  {"<a@[1.2.3]>", 0, 0, TERN_ESYNTAX, 0, 0, 0, 0},
  {"<a@[1.2.3.4.5]>", 0, 0, TERN_ESYNTAX, 0, 0, 0, 0},
  {"<a@[1.2.3.]>", 0, 0, TERN_ESYNTAX, 0, 0, 0, 0},
  {"<a@[.1.2.3]>", 0, 0, TERN_ESYNTAX, 0, 0, 0, 0},
  {"<a@[1..2.3]>", 0, 0, TERN_ESYNTAX, 0, 0, 0, 0},
  {"<a@[1234.1.1.1]>", 0, 0, TERN_ESYNTAX, 0, 0, 0, 0},
  {"<a@[1.2.3.a]>", 0, 0, TERN_ESYNTAX, 0, 0, 0, 0},
  {"<a@[]>", 0, 0, TERN_ESYNTAX, 0, 0, 0, 0},
  {"<a@[1.2.3.4>", 0, 0, TERN_ESYNTAX, 0, 0, 0, 0},
  {"<a@[1.2.3.4]", 0, 0, TERN_ESYNTAX, 0, 0, 0, 0},
  {"<a@[1.2.3.4]x>", 0, 0, TERN_ESYNTAX, 0, 0, 0, 0},
  {"<a@[1.2.3.4].com>", 0, 0, TERN_ESYNTAX, 0, 0, 0, 0},
  {"<a@[1.2 .3.4]>", 0, 0, TERN_ESYNTAX, 0, 0, 0, 0},
  {"<a@[[1.2.3.4]]>", 0, 0, TERN_ESYNTAX, 0, 0, 0, 0},
  /* IPv6 */
  {"<a@[IPv6:1:2:3:4:5:6:7:8]>", 0, 0, 0, 26, "a", "[IPv6:1:2:3:4:5:6:7:8]", F_LIT},
  {"<a@[IPv6:2001:db8:0:0:0:0:0:1]>", 0, 0, 0, 31, "a", "[IPv6:2001:db8:0:0:0:0:0:1]", F_LIT},
  {"<a@[ipv6:ABCD:ef01:2345:6789:abcd:EF01:2345:6789]>", 0, 0, 0, 50, "a",
   "[ipv6:ABCD:ef01:2345:6789:abcd:EF01:2345:6789]", F_LIT},
  {"<a@[IPv6:::1]>", 0, 0, 0, 14, "a", "[IPv6:::1]", F_LIT},
  {"<a@[IPv6:::]>", 0, 0, 0, 13, "a", "[IPv6:::]", F_LIT},
  {"<a@[IPv6:1::]>", 0, 0, 0, 14, "a", "[IPv6:1::]", F_LIT},
  {"<a@[IPv6:2001:db8::1]>", 0, 0, 0, 22, "a", "[IPv6:2001:db8::1]", F_LIT},
  {"<a@[IPv6:1:2:3::4:5:6]>", 0, 0, 0, 23, "a", "[IPv6:1:2:3::4:5:6]", F_LIT},
  {"<a@[IPv6:1:2:3:4:5:6::]>", 0, 0, 0, 24, "a", "[IPv6:1:2:3:4:5:6::]", F_LIT},
  {"<a@[IPv6:::1:2:3:4:5:6]>", 0, 0, 0, 24, "a", "[IPv6:::1:2:3:4:5:6]", F_LIT},
  {"<a@[IPv6:1:2:3:4:5:6:1.2.3.4]>", 0, 0, 0, 30, "a", "[IPv6:1:2:3:4:5:6:1.2.3.4]", F_LIT},
  {"<a@[IPv6:::ffff:192.0.2.1]>", 0, 0, 0, 27, "a", "[IPv6:::ffff:192.0.2.1]", F_LIT},
  {"<a@[IPv6:::192.0.2.1]>", 0, 0, 0, 22, "a", "[IPv6:::192.0.2.1]", F_LIT},
  {"<a@[IPv6:1:2::3:4:1.2.3.4]>", 0, 0, 0, 27, "a", "[IPv6:1:2::3:4:1.2.3.4]", F_LIT},
  {"<a@[IPv6:1:2:3:4::1.2.3.4]>", 0, 0, 0, 27, "a", "[IPv6:1:2:3:4::1.2.3.4]", F_LIT},
  /* seven groups with "::" leave one zero group: RFC 5321 says "::"
   * stands for at least two */
  {"<a@[IPv6:1:2:3:4:5:6:7::]>", 0, 0, TERN_ESYNTAX, 0, 0, 0, 0},
  {"<a@[IPv6:1::2:3:4:5:6:7]>", 0, 0, TERN_ESYNTAX, 0, 0, 0, 0},
  {"<a@[IPv6:1:2:3:4:5:6:7]>", 0, 0, TERN_ESYNTAX, 0, 0, 0, 0},
  {"<a@[IPv6:1:2:3:4:5:6:7:8:9]>", 0, 0, TERN_ESYNTAX, 0, 0, 0, 0},
  {"<a@[IPv6:1::2::3]>", 0, 0, TERN_ESYNTAX, 0, 0, 0, 0},
  {"<a@[IPv6:1:::2]>", 0, 0, TERN_ESYNTAX, 0, 0, 0, 0},
  {"<a@[IPv6::1:2:3:4:5:6:7:8]>", 0, 0, TERN_ESYNTAX, 0, 0, 0, 0},
  {"<a@[IPv6:1:2:3:4:5:6:7:8:]>", 0, 0, TERN_ESYNTAX, 0, 0, 0, 0},
  {"<a@[IPv6:12345::1]>", 0, 0, TERN_ESYNTAX, 0, 0, 0, 0},
  {"<a@[IPv6:g::1]>", 0, 0, TERN_ESYNTAX, 0, 0, 0, 0},
  {"<a@[IPv6:]>", 0, 0, TERN_ESYNTAX, 0, 0, 0, 0},
  {"<a@[IPv6:1.2.3.4]>", 0, 0, TERN_ESYNTAX, 0, 0, 0, 0},
  {"<a@[IPv6:1:2:3:4:5:1.2.3.4]>", 0, 0, TERN_ESYNTAX, 0, 0, 0, 0},
  {"<a@[IPv6:1:2:3:4:5:6:7:1.2.3.4]>", 0, 0, TERN_ESYNTAX, 0, 0, 0, 0},
  {"<a@[IPv6:1:2:3:4:5::1.2.3.4]>", 0, 0, TERN_ESYNTAX, 0, 0, 0, 0},
  {"<a@[IPv6:1.2.3.4::1]>", 0, 0, TERN_ESYNTAX, 0, 0, 0, 0},
  {"<a@[IPv6:::1.2.3.4:1]>", 0, 0, TERN_ESYNTAX, 0, 0, 0, 0},
  {"<a@[IPv6:::1.2.3.256]>", 0, 0, TERN_ESYNTAX, 0, 0, 0, 0},
  {"<a@[IPv6:::1.2.3]>", 0, 0, TERN_ESYNTAX, 0, 0, 0, 0},
  /* without "IPv6:" this is a General-address-literal with tag "1" */
  {"<a@[1:2:3:4:5:6:7:8]>", 0, 0, 0, 21, "a", "[1:2:3:4:5:6:7:8]", F_LIT},
  /* General-address-literal = Standardized-tag ":" 1*dcontent */
  {"<a@[x-tag:anything!]>", 0, 0, 0, 21, "a", "[x-tag:anything!]", F_LIT},
  {"<a@[tag:a:b:c]>", 0, 0, 0, 15, "a", "[tag:a:b:c]", F_LIT},
  {"<a@[tag-:x]>", 0, 0, TERN_ESYNTAX, 0, 0, 0, 0},
  {"<a@[tag:]>", 0, 0, TERN_ESYNTAX, 0, 0, 0, 0},
  {"<a@[:x]>", 0, 0, TERN_ESYNTAX, 0, 0, 0, 0},
  {"<a@[t_g:x]>", 0, 0, TERN_ESYNTAX, 0, 0, 0, 0},
  {"<a@[tag:a\\b]>", 0, 0, TERN_ESYNTAX, 0, 0, 0, 0},
  {"<a@[tag:a b]>", 0, 0, TERN_ESYNTAX, 0, 0, 0, 0},

  /* ---- source routes ------------------------------------------------- */
  {"<@a:b@c>", 0, 0, 0, 8, "b", "c", F_ROUTE},
  {"<@a,@b,@c.d:x@y>", 0, 0, 0, 16, "x", "y", F_ROUTE},
  {"<@relay.example:\"q\"@[1.2.3.4]>", 0, 0, 0, 30, "\"q\"", "[1.2.3.4]",
   F_ROUTE | F_QUOTED | F_LIT},
  {"<@a:>", 0, N, TERN_ESYNTAX, 0, 0, 0, 0},
  {"<@a b@c>", 0, 0, TERN_ESYNTAX, 0, 0, 0, 0},
  {"<@a,b@c>", 0, 0, TERN_ESYNTAX, 0, 0, 0, 0},
  {"<@a,:b@c>", 0, 0, TERN_ESYNTAX, 0, 0, 0, 0},
  {"<@:b@c>", 0, 0, TERN_ESYNTAX, 0, 0, 0, 0},
  {"<@[1.2.3.4]:b@c>", 0, 0, TERN_ESYNTAX, 0, 0, 0, 0},
  {"<@a@b:c@d>", 0, 0, TERN_ESYNTAX, 0, 0, 0, 0},
  {"<@a:@b:c@d>", 0, 0, TERN_ESYNTAX, 0, 0, 0, 0},

  /* ---- no brackets (leniency) ---------------------------------------- */
  {"a@b", 0, B, 0, 3, "a", "b", 0},
  {"a@b SIZE=5", 0, B, 0, 3, "a", "b", 0},
  {"\"a b\"@c d", 0, B, 0, 7, "\"a b\"", "c", F_QUOTED},
  {"<a@b>", 0, B, 0, 5, "a", "b", 0},
  {"a@b>", 0, B, TERN_ESYNTAX, 0, 0, 0, 0},
  {"a@b\t", 0, B, TERN_ESYNTAX, 0, 0, 0, 0},
  {" a@b", 0, B, TERN_ESYNTAX, 0, 0, 0, 0},
  {"", 0, B, TERN_ESYNTAX, 0, 0, 0, 0},
  {"@a:b@c", 0, B, TERN_ESYNTAX, 0, 0, 0, 0},
  {"a", 0, B, TERN_ESYNTAX, 0, 0, 0, 0},

  /* ---- UTF-8 (RFC 6531) ---------------------------------------------- */
  {"<j\xc3\xb6rg@example.de>", 0, U, 0, 18, "j\xc3\xb6rg", "example.de", F_UTF8},
  {"<a@\xc3\xb6.de>", 0, U, 0, 9, "a", "\xc3\xb6.de", F_UTF8},
  {"<\xe2\x82\xac@\xe4\xbe\x8b\xe5\xad\x90.\xe6\xb5\x8b\xe8\xaf\x95>", 0, U, 0, 19,
   "\xe2\x82\xac", "\xe4\xbe\x8b\xe5\xad\x90.\xe6\xb5\x8b\xe8\xaf\x95", F_UTF8},
  {"<\xf0\x9f\x98\x80@x>", 0, U, 0, 8, "\xf0\x9f\x98\x80", "x", F_UTF8},
  {"<\xf4\x8f\xbf\xbf@x>", 0, U, 0, 8, "\xf4\x8f\xbf\xbf", "x", F_UTF8},
  {"<\"\xc3\xa9 x\"@y>", 0, U, 0, 10, "\"\xc3\xa9 x\"", "y", F_UTF8 | F_QUOTED},
  {"<a@\xc3\xb6-x>", 0, U, 0, 8, "a", "\xc3\xb6-x", F_UTF8},
  {"<j\xc3\xb6rg@example.de>", 0, 0, TERN_ENONASCII, 0, 0, 0, 0},
  {"<a@\xc3\xb6.de>", 0, 0, TERN_ENONASCII, 0, 0, 0, 0},
  {"<\"\xc3\xa9\"@y>", 0, 0, TERN_ENONASCII, 0, 0, 0, 0},
  {"<a@[1.2.3.\xc3\xa9]>", 0, 0, TERN_ENONASCII, 0, 0, 0, 0},
  /* invalid UTF-8 is EBADUTF8 with or without the option */
  {"<j\xf6rg@example.de>", 0, 0, TERN_EBADUTF8, 0, 0, 0, 0},
  {"<j\xf6rg@example.de>", 0, U, TERN_EBADUTF8, 0, 0, 0, 0},
  {"<\xc0\xaf@x>", 0, U, TERN_EBADUTF8, 0, 0, 0, 0},        /* overlong '/' */
  {"<\xc1\xbf@x>", 0, U, TERN_EBADUTF8, 0, 0, 0, 0},        /* overlong */
  {"<\xe0\x80\xaf@x>", 0, U, TERN_EBADUTF8, 0, 0, 0, 0},    /* overlong 3 */
  {"<\xf0\x80\x80\xaf@x>", 0, U, TERN_EBADUTF8, 0, 0, 0, 0}, /* overlong 4 */
  {"<\xed\xa0\x80@x>", 0, U, TERN_EBADUTF8, 0, 0, 0, 0},    /* U+D800 */
  {"<\xed\xbf\xbf@x>", 0, U, TERN_EBADUTF8, 0, 0, 0, 0},    /* U+DFFF */
  {"<\xf4\x90\x80\x80@x>", 0, U, TERN_EBADUTF8, 0, 0, 0, 0}, /* > U+10FFFF */
  {"<\xf5\x80\x80\x80@x>", 0, U, TERN_EBADUTF8, 0, 0, 0, 0},
  {"<\xff@x>", 0, U, TERN_EBADUTF8, 0, 0, 0, 0},
  {"<\x80@x>", 0, U, TERN_EBADUTF8, 0, 0, 0, 0},           /* lone continuation */
  {"<\xc3@x>", 0, U, TERN_EBADUTF8, 0, 0, 0, 0},           /* truncated */
  {"<\xe2\x82@x>", 0, U, TERN_EBADUTF8, 0, 0, 0, 0},        /* truncated */
  {"<a\xc3", 0, U, TERN_EBADUTF8, 0, 0, 0, 0},             /* cut at end */
  {"<a@b\xe2\x82", 0, U, TERN_EBADUTF8, 0, 0, 0, 0},
  {"<\"\xc3\"@x>", 0, U, TERN_EBADUTF8, 0, 0, 0, 0},
  /* valid first character, invalid later one, no UTF8 option */
  {"<\xc3\xa9\xff@x>", 0, 0, TERN_EBADUTF8, 0, 0, 0, 0},
  /* valid UTF-8 where RFC 6531 does not allow it */
  {"<a@[1.2.3.\xc3\xa9]>", 0, U, TERN_ESYNTAX, 0, 0, 0, 0},
  {"<\"\\\xc3\xa9\"@x>", 0, U, TERN_ESYNTAX, 0, 0, 0, 0},
  {"<\"a\"\xc3\xa9@x>", 0, U, TERN_ESYNTAX, 0, 0, 0, 0},
};
/* clang-format on */

/* Run one case on an exact-size heap copy so overreads are caught. */
static void run_case(const struct path_case *tc, size_t idx) {
  size_t len = tc->len ? tc->len : strlen(tc->in);
  char *buf = malloc(len ? len : 1);
  struct tern_path path;
  size_t consumed = 12345;
  int rc;

  assert_non_null(buf);
  memcpy(buf, tc->in, len);
  rc = tern_path_parse(buf, len, tc->opts, &path, &consumed);
  if (rc != tc->rc)
    print_error("case %zu \"%s\": got %s, want %s\n", idx, tc->in,
                tern_err_name(rc), tern_err_name(tc->rc));
  assert_int_equal(rc, tc->rc);
  if (rc == 0) {
    size_t ll = strlen(tc->local), dl = strlen(tc->domain);
    if (consumed != tc->consumed)
      print_error("case %zu \"%s\": consumed %zu\n", idx, tc->in, consumed);
    assert_int_equal(consumed, tc->consumed);
    assert_int_equal(path.local.len, ll);
    assert_memory_equal(path.local.ptr, tc->local, ll);
    assert_int_equal(path.domain.len, dl);
    assert_memory_equal(path.domain.ptr, tc->domain, dl);
    assert_int_equal(path.flags, tc->flags);
    /* strings point into the input */
    assert_true(path.mailbox.ptr >= buf &&
                path.mailbox.ptr + path.mailbox.len <= buf + len);
    assert_true(path.local.ptr >= buf);
    assert_true(path.domain.ptr + path.domain.len <= buf + len);
    /* mailbox is local@domain, or just local for <> and postmaster */
    if (dl > 0) {
      assert_ptr_equal(path.mailbox.ptr, path.local.ptr);
      assert_int_equal(path.mailbox.len, ll + 1 + dl);
      assert_int_equal(path.mailbox.ptr[ll], '@');
    } else {
      assert_int_equal(path.mailbox.len, ll);
    }
  } else {
    assert_int_equal(consumed, 0);
    assert_int_equal(path.flags, 0);
    assert_int_equal(path.mailbox.len, 0);
  }
  free(buf);
}

static void test_table(void **state) {
  (void)state;
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
    run_case(&cases[i], i);
}

/* Build "<" + local + "@" + domain + ">" where local has `ll` octets and
 * domain has `dl` octets made of 63-octet labels. Returns the length. */
static size_t build(char *out, size_t ll, size_t dl, bool brackets) {
  size_t n = 0;

  if (brackets)
    out[n++] = '<';
  for (size_t i = 0; i < ll; i++)
    out[n++] = 'l';
  out[n++] = '@';
  for (size_t i = 0; i < dl; i++)
    out[n++] = (i % 64 == 63 && i + 1 < dl) ? '.' : 'd';
  if (brackets)
    out[n++] = '>';
  return n;
}

static int parse_exact(const char *src, size_t len, unsigned opts,
                       struct tern_path *p, size_t *consumed) {
  char *buf = malloc(len);
  int rc;

  assert_non_null(buf);
  memcpy(buf, src, len);
  rc = tern_path_parse(buf, len, opts, p, consumed);
  free(buf);
  return rc;
}

/* RFC 5321 §4.5.3.1.1: local part 64 octets. */
static void test_local_limit(void **state) {
  char b[600];
  struct tern_path p;
  size_t c, n;
  (void)state;

  n = build(b, 64, 1, true);
  assert_int_equal(parse_exact(b, n, 0, &p, &c), 0);
  assert_int_equal(p.local.len, 64);
  n = build(b, 65, 1, true);
  assert_int_equal(parse_exact(b, n, 0, &p, &c), TERN_ETOOLONG);
  /* a quoted local part counts its quotes */
  memset(b, 0, sizeof b);
  b[0] = '<';
  b[1] = '"';
  memset(b + 2, 'q', 62);
  memcpy(b + 64, "\"@x>", 4);
  assert_int_equal(parse_exact(b, 68, 0, &p, &c), 0);
  assert_int_equal(p.local.len, 64);
  b[1] = '"';
  memset(b + 2, 'q', 63);
  memcpy(b + 65, "\"@x>", 4);
  assert_int_equal(parse_exact(b, 69, 0, &p, &c), TERN_ETOOLONG);
  /* 64 with a multi-byte character straddling the limit */
  n = build(b, 62, 1, true);
  memmove(b + 3, b + 1, n - 1);
  b[1] = '\xc3';
  b[2] = '\xa9';
  assert_int_equal(parse_exact(b, n + 2, U, &p, &c), 0);
  assert_int_equal(p.local.len, 64);
  n = build(b, 63, 1, true);
  memmove(b + 3, b + 1, n - 1);
  b[1] = '\xc3';
  b[2] = '\xa9';
  assert_int_equal(parse_exact(b, n + 2, U, &p, &c), TERN_ETOOLONG);
}

/* RFC 5321 §4.5.3.1.2 domain 255 and §4.5.3.1.3 path 256 octets. With
 * the brackets, "@" and a local part, a 255-octet domain always breaks
 * the path limit, so the domain limit is checked on its own in
 * no-bracket mode... where the path limit counts two brackets too. */
static void test_domain_and_path_limits(void **state) {
  char b[700];
  struct tern_path p;
  size_t c, n;
  (void)state;

  /* path: "<" + 1 + "@" + dl + ">" = dl + 4 octets */
  n = build(b, 1, 252, true);
  assert_int_equal(n, 256);
  assert_int_equal(parse_exact(b, n, 0, &p, &c), 0);
  assert_int_equal(c, 256);
  assert_int_equal(p.domain.len, 252);
  n = build(b, 1, 253, true);
  assert_int_equal(n, 257);
  assert_int_equal(parse_exact(b, n, 0, &p, &c), TERN_ETOOLONG);
  /* a long local part and domain that together pass 256 */
  n = build(b, 64, 189, true);
  assert_int_equal(n, 256);
  assert_int_equal(parse_exact(b, n, 0, &p, &c), 0);
  n = build(b, 64, 190, true);
  assert_int_equal(parse_exact(b, n, 0, &p, &c), TERN_ETOOLONG);
  /* bare mailbox: 252 + "a@" counts as a 256-octet path */
  n = build(b, 1, 252, false);
  assert_int_equal(parse_exact(b, n, B, &p, &c), 0);
  assert_int_equal(c, 254);
  n = build(b, 1, 253, false);
  assert_int_equal(parse_exact(b, n, B, &p, &c), TERN_ETOOLONG);
  /* domain 255 is within its own limit (fails only on the path);
   * 256 fails on the domain limit itself */
  n = build(b, 1, 255, true);
  assert_int_equal(parse_exact(b, n, 0, &p, &c), TERN_ETOOLONG);
  n = build(b, 1, 256, true);
  assert_int_equal(parse_exact(b, n, 0, &p, &c), TERN_ETOOLONG);
  /* a long source route counts toward the path */
  memcpy(b, "<@", 2);
  memset(b + 2, 'r', 240);
  memcpy(b + 242, ":a@b>", 5);
  assert_int_equal(parse_exact(b, 247, 0, &p, &c), 0);
  assert_int_equal(p.flags, TERN_PATHF_ROUTE);
  memset(b + 2, 'r', 250);
  memcpy(b + 252, ":a@b>", 5);
  assert_int_equal(parse_exact(b, 257, 0, &p, &c), TERN_ETOOLONG);
  /* an address literal counts as domain */
  memcpy(b, "<a@[x:", 6);
  memset(b + 6, 'v', 247);
  memcpy(b + 253, "]>", 2);
  assert_int_equal(parse_exact(b, 255, 0, &p, &c), 0);
  assert_int_equal(p.flags, TERN_PATHF_LITERAL);
}

/* Every proper prefix of a valid path is an error, never a crash. */
static void test_prefixes(void **state) {
  static const char *const valid[] = {
      "<@a,@b:\"x\\\"y\"@[IPv6:1::1.2.3.4]>",
      "<j\xc3\xb6rg@\xc3\xb6.example>",
      "<Postmaster>",
      "<a@[tag:z]>",
  };
  struct tern_path p;
  size_t c;
  (void)state;

  for (size_t v = 0; v < sizeof valid / sizeof valid[0]; v++) {
    size_t len = strlen(valid[v]);
    assert_int_equal(parse_exact(valid[v], len, U | P, &p, &c), 0);
    assert_int_equal(c, len);
    for (size_t k = 0; k < len; k++) {
      int rc = parse_exact(valid[v], k, U | P, &p, &c);
      assert_true(rc == TERN_ESYNTAX || rc == TERN_EBADUTF8);
    }
  }
}

static void test_null_args(void **state) {
  struct tern_path p;
  size_t c;
  (void)state;

  assert_int_equal(tern_path_parse(NULL, 0, 0, &p, &c), TERN_EINVAL);
  assert_int_equal(tern_path_parse("<a@b>", 5, 0, NULL, &c), TERN_EINVAL);
  assert_int_equal(tern_path_parse("<a@b>", 5, 0, &p, NULL), TERN_EINVAL);
}

/* The null path and bare postmaster give empty strings inside the input. */
static void test_special_pointers(void **state) {
  const char *s = "<>";
  const char *pm = "<postmaster>";
  struct tern_path p;
  size_t c;
  (void)state;

  assert_int_equal(tern_path_parse(s, 2, N, &p, &c), 0);
  assert_ptr_equal(p.mailbox.ptr, s + 1);
  assert_int_equal(p.mailbox.len, 0);
  assert_int_equal(p.local.len, 0);
  assert_int_equal(p.domain.len, 0);
  assert_int_equal(tern_path_parse(pm, 12, P, &p, &c), 0);
  assert_ptr_equal(p.mailbox.ptr, pm + 1);
  assert_int_equal(p.mailbox.len, 10);
  assert_ptr_equal(p.domain.ptr, pm + 11);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_table),
      cmocka_unit_test(test_local_limit),
      cmocka_unit_test(test_domain_and_path_limits),
      cmocka_unit_test(test_prefixes),
      cmocka_unit_test(test_null_args),
      cmocka_unit_test(test_special_pointers),
  };
  print_message("address table: %zu cases\n", sizeof cases / sizeof cases[0]);
  return cmocka_run_group_tests(tests, NULL, NULL);
}
