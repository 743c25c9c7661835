#!/usr/bin/env python3
"""`tern serve` with no arguments (the embedded default), and the
--listen / --maildir / --hostname flags.

The default listens on the fixed port 2525 (CTest RESOURCE_LOCK
port2525); a busy port fails this test with a clear message."""

import os
import random
import re
import smtplib
import socket

import e2e as h


def port_free(host, family):
    s = socket.socket(family, socket.SOCK_STREAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host, 2525))
        return True
    except OSError:
        return False
    finally:
        s.close()


def check_message_line(srv, frm, rcpts, size, path):
    """One event=message line: time, session id, sender, recipients,
    size, the Maildir file."""
    lines = srv.wait_log("event=message from=<%s>" % frm)
    h.check(len(lines) == 1, "expected one log line for %s: %r" % (frm, lines))
    ln = lines[0]
    h.check(re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ session=\S+ ", ln),
            "log line lacks time and session id: %r" % ln)
    h.check("to=" + ",".join("<%s>" % r for r in rcpts) in ln,
            "log line lacks recipients %r: %r" % (rcpts, ln))
    h.check(" size=%d " % size in ln, "log line size is not %d: %r"
            % (size, ln))
    h.check(" status=250 " in ln, "log line status is not 250: %r" % ln)
    m = re.search(r" file=(\S+)", ln)
    h.check(m, "no file= in %r" % ln)
    h.check(m.group(1).endswith("/new/" + os.path.basename(path)),
            "log names file %s, stored file is %s" % (m.group(1), path))


def test_embedded_default():
    for host, fam in (("127.0.0.1", socket.AF_INET), ("::1", socket.AF_INET6)):
        if not port_free(host, fam):
            h.fail("port 2525 on %s is busy: the embedded default of tern "
                   "serve needs it (something else is listening; stop it)"
                   % host)
    cwd = h.tmpdir(prefix="tern-e2e-default-")
    rng = random.Random(1)
    with h.Serve([], cwd=cwd, name="default") as srv:
        h.check(srv.ports == [2525, 2525] and
                srv.urls == ["smtp://127.0.0.1:2525", "smtp://[::1]:2525"],
                "default listeners: %r %r" % (srv.urls, srv.ports))
        sent = {}
        for i, (host, frm) in enumerate((("127.0.0.1", "v4@example.net"),
                                          ("::1", "v6@example.net"))):
            m = h.make_message("default-%d@e2e" % i, 3000 + i * 1000, rng,
                               frm=frm)
            with smtplib.SMTP(host, 2525, timeout=10) as c:
                c.ehlo("client.example")
                refused = c.sendmail(frm, ["a@example.org", "b@example.com"], m)
                h.check(refused == {}, "refused: %r" % refused)
            sent[frm] = m
        md = os.path.join(cwd, "mail")
        files = h.maildir_files(md)
        h.check(len(files) == 2, "expected 2 files in ./mail/new: %r" % files)
        for p in files:
            trace, rest = h.split_trace(h.read(p), p)
            frm = re.search(rb"Return-Path: <([^>]*)>", trace).group(1).decode()
            h.check(frm in sent, "unexpected Return-Path %r" % frm)
            h.assert_bytes_equal(rest, sent[frm], p)
            h.check(b"by " in trace and b"with ESMTP id " in trace and
                    b"client.example" in trace,
                    "Received line lacks by/with/helo: %r" % trace)
            check_message_line(srv, frm, ["a@example.org", "b@example.com"],
                               len(sent[frm]), p)
        h.check(h.maildir_files(md, "tmp") == [], "files left in tmp/")
        h.check(os.path.isdir(os.path.join(md, "cur")), "no mail/cur")
    h.check(srv.has("event=stopped"), "no event=stopped at SIGTERM")


def test_flags():
    d = h.tmpdir(prefix="tern-e2e-flags-")
    md = os.path.join(d, "box")
    rng = random.Random(2)
    with h.Serve(["--listen", "smtp://127.0.0.1:0", "--maildir", md,
                  "--hostname", "mx.flags.example"], cwd=d, name="flags") as srv:
        h.check(len(srv.ports) == 1 and srv.ports[0] > 0,
                "one listener with a real port: %r" % srv.ports)
        with smtplib.SMTP("127.0.0.1", srv.port, timeout=10) as c:
            code, msg = c.ehlo("flags.client")
            h.check(code == 250 and msg.startswith(b"mx.flags.example"),
                    "EHLO reply does not name --hostname: %r" % msg)
            m = h.make_message("flags@e2e", 5000, rng)
            c.sendmail("f@example.net", ["x@example.org"], m)
        (p,) = h.maildir_files(md)
        trace, rest = h.split_trace(h.read(p), p)
        h.assert_bytes_equal(rest, m, p)
        h.check(b"by mx.flags.example (tern)" in trace,
                "Received lacks --hostname: %r" % trace)
        check_message_line(srv, "f@example.net", ["x@example.org"], len(m), p)


if __name__ == "__main__":
    h.main([test_embedded_default, test_flags])
