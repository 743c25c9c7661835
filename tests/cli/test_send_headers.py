#!/usr/bin/env python3
"""`tern send` as a sendmail (issue 8, item 30): Date: and Message-ID:
added when missing (exactly once; existing fields kept byte-exact), a
leading mbox "From " line dropped (git format-patch output), -v shows
both directions of the dialogue and never a password, --version."""

import base64
import calendar
import email.utils
import os
import re
import socket
import time

import harness as h
from sendpeer import Peer, cert_pair
from test_send import (DATE_RE, MSGID_RE, expect_rc, send, server_url,
                       strip_added, tern)


def one(srv, args, msg):
    rc, _, err = send(["--server", server_url(srv)] + args +
                      ["bob@example.org"], stdin=msg)
    expect_rc(rc, err, 0, "send %r" % msg[:40])
    h.check(err == "", "stderr: %r" % err)


def fields(eml, name):
    head = eml.partition(b"\r\n\r\n")[0]
    return [l for l in head.split(b"\r\n")
            if l.lower().startswith(name.lower() + b":")]


def test_date_and_message_id_added():
    msg = b"From: a@example.org\nSubject: no date\n\nbody\n"
    with h.CaptureServer(["--listen", "smtp://127.0.0.1:0"]) as srv:
        t0 = time.time()
        one(srv, [], msg)
        one(srv, [], msg)
        m1, m2 = srv.wait_messages(2)
    h.assert_bytes_equal(strip_added(m1.eml), h.crlf(msg))
    (date,) = fields(m1.eml, b"Date")
    h.check(DATE_RE.fullmatch(date), "Date: %r" % date)
    # the time is now, with the local offset
    when = email.utils.parsedate_tz(date[6:].decode())
    h.check(when is not None, "Date does not parse: %r" % date)
    stamp = calendar.timegm(when[:9]) - when[9]
    h.check(abs(stamp - t0) < 60, "Date %r is not now" % date)
    want_off = time.localtime(stamp).tm_gmtoff
    h.check(when[9] == want_off, "offset %r, local offset %r"
            % (when[9], want_off))
    (id1,) = fields(m1.eml, b"Message-ID")
    (id2,) = fields(m2.eml, b"Message-ID")
    h.check(MSGID_RE.fullmatch(id1), "Message-ID: %r" % id1)
    host = id1.rsplit(b"@", 1)[1][:-1].decode()
    h.check(host in (os.uname().nodename, "localhost"),
            "Message-ID host %r" % host)
    h.check(id1 != id2, "two messages, one Message-ID: %r" % id1)


def test_date_local_offset():
    """The offset is the local one (a fixed-offset TZ, no tzdata needed)."""
    with h.CaptureServer(["--listen", "smtp://127.0.0.1:0"]) as srv:
        for tz in ("TST-5:30", "TST+3"):
            rc, _, err = send(["--server", server_url(srv),
                               "bob@example.org"],
                              stdin=b"Subject: tz\n\nb\n", env={"TZ": tz})
            expect_rc(rc, err, 0, "TZ=" + tz)
        m1, m2 = srv.wait_messages(2)
    for m, off in ((m1, b" +0530"), (m2, b" -0300")):
        (date,) = fields(m.eml, b"Date")
        h.check(date.endswith(off), "%r does not end with %r" % (date, off))


def test_existing_fields_kept():
    """Present fields (any case) are kept byte-exact, nothing is added;
    with only one of them, only the other is added."""
    both = (b"Subject: has both\nDATE:   Mon, 1 Jan 2024 00:00:00 -0000\n"
            b"Message-Id:\n <x.y@z.example>\n\nbody\n")
    only_date = b"Date: Tue, 2 Jan 2024 10:00:00 +0100\nSubject: d\n\nb\n"
    only_id = b"Message-ID: <only@id.example>\nSubject: i\n\nb\n"
    with h.CaptureServer(["--listen", "smtp://127.0.0.1:0"]) as srv:
        one(srv, [], both)
        one(srv, [], only_date)
        one(srv, [], only_id)
        m1, m2, m3 = srv.wait_messages(3)
    h.assert_bytes_equal(m1.eml, h.crlf(both))
    (mid,) = fields(m2.eml, b"Message-ID")
    h.check(MSGID_RE.fullmatch(mid), repr(mid))
    h.assert_bytes_equal(m2.eml, h.crlf(only_date).replace(
        b"\r\n\r\n", b"\r\n" + mid + b"\r\n\r\n", 1))
    (date,) = fields(m3.eml, b"Date")
    h.check(DATE_RE.fullmatch(date), repr(date))
    h.assert_bytes_equal(m3.eml, h.crlf(only_id).replace(
        b"\r\n\r\n", b"\r\n" + date + b"\r\n\r\n", 1))


def test_no_header_block():
    """A message that starts with its body gets the fields and an empty
    line before the body, so the body stays the body."""
    with h.CaptureServer(["--listen", "smtp://127.0.0.1:0"]) as srv:
        one(srv, [], b"just a body line\nand another\n")
        (m,) = srv.wait_messages(1)
    head, sep, body = m.eml.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    h.check(len(lines) == 2 and DATE_RE.fullmatch(lines[0]) and
            MSGID_RE.fullmatch(lines[1]), "header %r" % head)
    h.check(body == b"just a body line\r\nand another\r\n", repr(body))
    # input that ends inside its only header field, without a newline
    with h.CaptureServer(["--listen", "smtp://127.0.0.1:0"]) as srv:
        one(srv, [], b"Subject: no newline")
        (m,) = srv.wait_messages(1)
    lines = m.eml.split(b"\r\n")
    h.check(len(lines) == 4 and lines[0] == b"Subject: no newline" and
            DATE_RE.fullmatch(lines[1]) and MSGID_RE.fullmatch(lines[2])
            and lines[3] == b"", "stored %r" % m.eml)


PATCH = (b"From 2f1c0ffee0ddba11 Mon Sep 17 00:00:00 2001\n"
         b"From: Dev <dev@example.org>\n"
         b"Date: Wed, 2 Dec 2026 09:00:00 +0100\n"
         b"Subject: [PATCH] fix it\n"
         b"\n"
         b"From the body: this line stays.\n"
         b"---\n"
         b" a.c | 1 +\n")


def test_mbox_from_line_dropped():
    """git format-patch | tern send -t: the "From <sha> <date>" line is
    an mbox envelope, not a header; it is dropped, the rest is sent
    byte-exact ("From " later in the body stays)."""
    long_from = b"From " + b"x" * 100000 + b"\nSubject: long\n\nb\n"
    with h.CaptureServer(["--listen", "smtp://127.0.0.1:0"]) as srv:
        one(srv, ["-i"], PATCH)
        one(srv, ["-i"], long_from)
        one(srv, ["-i"], b"From: x@example.org\nSubject: s\n\nb\n")
        m1, m2, m3 = srv.wait_messages(3)
    want = h.crlf(PATCH.split(b"\n", 1)[1])
    (mid,) = fields(m1.eml, b"Message-ID")
    h.assert_bytes_equal(m1.eml, want.replace(
        b"\r\n\r\n", b"\r\n" + mid + b"\r\n\r\n", 1))
    h.assert_bytes_equal(strip_added(m2.eml),
                         b"Subject: long\r\n\r\nb\r\n")
    h.assert_bytes_equal(strip_added(m3.eml),
                         b"From: x@example.org\r\nSubject: s\r\n\r\nb\r\n")



def default_helo():
    """The EHLO name tern send uses without --helo: the host name's
    canonical name when it has a dot (getaddrinfo AI_CANONNAME), else
    the host name (never "localhost", which hardened MX hosts refuse,
    unless the host calls itself that)."""
    host = socket.gethostname()
    try:
        cn = socket.getaddrinfo(host, None, 0, socket.SOCK_STREAM, 0,
                                socket.AI_CANONNAME)[0][3]
    except OSError:
        cn = ""
    if "." in cn and re.fullmatch(r"[A-Za-z0-9.-]+", cn):
        return cn
    return host

def test_verbose_both_directions():
    d = h.tmpdir()
    password = "Pw-only-in-file-4417"
    pw = os.path.join(d, "pw")
    with open(pw, "w") as f:
        f.write(password + "\n")
    with Peer(tls=cert_pair("server"), auth=True) as p:
        rc, _, err = send(["--server", p.url, "-v", "--timeout", "10",
                           "--ca-file", h.cert("ca.pem"), "--user", "alice",
                           "--password-file", pw, "-f", "me@example.org",
                           "bob@example.org", "carol@example.org"],
                          stdin=b"Subject: v\n\nx\n")
        expect_rc(rc, err, 0, "-v with AUTH")
        cmds = p.commands()
    h.check(any(c.startswith("TLS AUTH PLAIN ") for c in cmds),
            "AUTH did not happen: %r" % cmds)
    lines = err.splitlines()
    helo = default_helo()
    order = ["<<< [greeting] 220", ">>> EHLO " + helo, "<<< [EHLO] 250",
             ">>> STARTTLS", "<<< [STARTTLS] 220", ">>> EHLO " + helo,
             ">>> AUTH", "<<< [AUTH] 235",
             ">>> MAIL FROM:<me@example.org>",
             ">>> RCPT TO:<bob@example.org>",
             ">>> RCPT TO:<carol@example.org>", ">>> DATA",
             "<<< [MAIL] 250", "<<< [RCPT bob@example.org] 250",
             "<<< [DATA] 354", ">>> .", "<<< [end of data] 250",
             ">>> QUIT"]
    at = 0
    for want in order:
        while at < len(lines) and \
                not lines[at].startswith("tern send: " + want):
            at += 1
        h.check(at < len(lines), "-v lacks %r (in order): %s"
                % (want, err))
    # the MAIL line is the one sent, parameters included
    sent_mail = [c for c in cmds if c.startswith("TLS MAIL")][0][4:]
    h.check("tern send: >>> " + sent_mail in lines,
            "MAIL as sent %r not in the trace" % sent_mail)
    plain = base64.b64encode(b"\0alice\0" + password.encode()).decode()
    for secret in (password, plain, plain[:12]):
        h.check(secret not in err, "the trace shows a secret %r" % secret)


def test_version():
    rc, out, err = send(["--version"])
    expect_rc(rc, err, 0, "--version")
    p = h.run([tern(), "--version"], timeout=10)
    h.check(re.fullmatch(rb"tern \d+\.\d+\.\d+\S* \(library \S+\)\n", out),
            "--version printed %r" % out)
    h.check(out == p.stdout, "%r differs from tern --version %r"
            % (out, p.stdout))
    rc, out, err = send(["--help"])
    h.check(rc == 0 and b"--version" in out and b"--insecure-auth" in out,
            "--help: %r" % out)


if __name__ == "__main__":
    h.main([test_date_and_message_id_added, test_date_local_offset,
            test_existing_fields_kept,
            test_no_header_block, test_mbox_from_line_dropped,
            test_verbose_both_directions, test_version])
