#!/usr/bin/env python3
"""Issue 8 item 26: lines over 998 octets.

By default `tern serve` takes them as sent, in DATA and in BDAT, and
stores the message byte for byte (nothing wrapped), as Postfix does; so
`tern send` -> `tern serve` works with long lines. With
`[server] max_line_length = 1000` both DATA and BDAT refuse such a
message with 500 5.5.6 after its end, and nothing is stored.
"""

import os

import e2e as h

LONG = b"x" * 5000
BODY = (b"Subject: long line\r\n\r\n" + LONG + b"\r\n" + b"y" * 999 +
        b"\r\nend\r\n")


def start(extra=""):
    d = h.tmpdir(prefix="tern-e2e-long-")
    md = os.path.join(d, "mail")
    (port,) = h.free_ports(1)
    cfg = os.path.join(d, "tern.ini")
    h.write(cfg, "[server]\n%s[listener mx]\nurl = smtp://127.0.0.1:%d\n"
            "[delivery]\nmaildir = %s\nfsync = no\n" % (extra, port, md))
    return h.Serve(["-c", cfg], name="long"), port, md


def send_both(port, expect):
    """One message by DATA and one by BDAT on one connection; returns the
    two final replies."""
    r = h.Raw(port=port, timeout=10)
    r.reply()
    r.cmd("EHLO client.example", 250)
    out = []
    r.cmd("MAIL FROM:<a@example.org>", 250)
    r.cmd("RCPT TO:<b@example.org>", 250)
    r.cmd("DATA", 354)
    r.send(h.dot_stuff(BODY) + b".\r\n")
    out.append(r.reply())
    r.cmd("MAIL FROM:<a@example.org>", 250)
    r.cmd("RCPT TO:<b@example.org>", 250)
    r.send(b"BDAT %d LAST\r\n" % len(BODY) + BODY)
    out.append(r.reply())
    r.cmd("QUIT", 221)
    for code, lines in out:
        h.check(code == expect, "expected %d, got %s" % (expect, lines))
    return out


def test_default_accepts_long_lines():
    srv, port, md = start()
    with srv:
        send_both(port, 250)
        # tern send -> tern serve (the reproducer)
        h.run([h.tern_bin(), "send", "--server", "smtp://127.0.0.1:%d" % port,
               "-f", "a@example.org", "b@example.org"], input=BODY,
              timeout=30)
        bodies = h.stored_bodies(md)
        h.check(len(bodies) == 3, "%d messages stored, expected 3"
                % len(bodies))
        for p, (_, rest) in bodies.items():
            h.check(LONG + b"\r\n" in rest, "%s: the 5000-octet line was "
                    "not stored whole" % p)
        # DATA and BDAT stored exactly what was sent
        exact = [p for p, (_, rest) in bodies.items() if rest == BODY]
        h.check(len(exact) >= 2, "DATA/BDAT message altered")


def test_max_line_length_1000_refuses():
    srv, port, md = start("max_line_length = 1000\n")
    with srv:
        for code, lines in send_both(port, 500):
            h.check(lines[-1].startswith("500 5.5.6"),
                    "expected 500 5.5.6, got %s" % lines)
        h.check(not h.maildir_files(md), "a refused message was stored")


if __name__ == "__main__":
    h.main([test_default_accepts_long_lines,
            test_max_line_length_1000_refuses])
