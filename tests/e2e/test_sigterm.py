#!/usr/bin/env python3
"""Graceful SIGTERM: a transaction in DATA when the signal comes
completes (250, stored byte-exact), new connections are no longer taken,
and the daemon exits 0."""

import os
import random
import signal
import socket

import e2e as h


def test_sigterm_mid_data():
    d = h.tmpdir(prefix="tern-e2e-term-")
    md = os.path.join(d, "mail")
    rng = random.Random(11)
    m = h.make_message("term@e2e", 200 * 1024, rng)
    wire = h.dot_stuff(m)
    srv = h.Serve(["--listen", "smtp://127.0.0.1:0", "--maildir", md],
                  name="sigterm")
    try:
        srv.start()
        with h.session(srv.port, "EHLO term.client", timeout=15) as r:
            r.cmd("MAIL FROM:<s@example.net>", 250)
            r.cmd("RCPT TO:<r@example.org>", 250)
            r.cmd("DATA", 354)
            half = len(wire) // 2
            r.send(wire[:half])
            srv.signal(signal.SIGTERM)
            srv.wait_log("event=stopping")
            # the listener is closed: a new client is refused (or, if it
            # still got in, not served)
            try:
                with socket.create_connection(("127.0.0.1", srv.port),
                                              timeout=3) as s2:
                    s2.settimeout(3)
                    try:
                        greet = s2.recv(100)
                    except socket.timeout:
                        greet = b""
                    h.check(not greet.startswith(b"220"),
                            "a new connection was greeted after SIGTERM: %r"
                            % greet)
            except OSError:
                pass
            h.check(srv.alive(), "the daemon exited with a transaction in "
                    "DATA")
            r.send(wire[half:] + b".\r\n")
            code, lines = r.reply()
            h.check(code == 250, "the transaction in DATA at SIGTERM: %d %r"
                    % (code, lines))
            try:
                r.send("QUIT\r\n")
                code, lines = r.reply()
                h.check(code in (221, 421), "QUIT: %d %r" % (code, lines))
            except (OSError, h.TestFailure):
                pass  # the server may close after the reply
        rc = srv.wait_exit(timeout=30)
        h.check(rc == 0, "exit code %d after SIGTERM (expected 0); log:\n%s"
                % (rc, srv.log()))
        h.check(srv.has("event=stopped"), "no event=stopped line")
        (p,) = h.maildir_files(md)
        h.assert_bytes_equal(h.split_trace(h.read(p), p)[1], m, p)
    finally:
        srv.cleanup()


def test_sigterm_idle():
    """SIGTERM with an idle session open: exit 0 without waiting for the
    command timeout (the idle client gets 421)."""
    d = h.tmpdir(prefix="tern-e2e-term-")
    srv = h.Serve(["--listen", "smtp://127.0.0.1:0", "--maildir",
                   os.path.join(d, "mail")], name="sigterm-idle")
    try:
        srv.start()
        with h.session(srv.port, "EHLO idle.client", timeout=15) as r:
            srv.signal(signal.SIGTERM)
            rc = srv.wait_exit(timeout=40)
            h.check(rc == 0, "exit code %d" % rc)
    finally:
        srv.cleanup()


def test_forced_shutdown_mid_delivery():
    """shutdown_timeout = 0: sessions in DATA or waiting for their fsync
    are closed at once. The deliveries in flight must finish or stop
    without touching the closed session (a use-after-free under ASan in
    an earlier version), and the daemon exits 0."""
    d = h.tmpdir(prefix="tern-e2e-term0-")
    (port,) = h.free_ports(1)
    cfg = os.path.join(d, "tern.ini")
    h.write(cfg, "[server]\nshutdown_timeout = 0s\n"
            "[listener mx]\nurl = smtp://127.0.0.1:%d\n"
            "[delivery]\nmaildir = %s\n" % (port, os.path.join(d, "mail")))
    body = (b"y" * 70 + b"\r\n") * 20000
    for when in ("streaming", "after-dot"):
        srv = h.Serve(["-c", cfg], name="term0-" + when)
        try:
            srv.start()
            with h.session(port, "EHLO t", timeout=15) as r:
                r.cmd("MAIL FROM:<s@example.net>", 250)
                r.cmd("RCPT TO:<r@example.org>", 250)
                r.cmd("DATA", 354)
                if when == "streaming":
                    r.send(body[:len(body) // 2])
                else:
                    r.send(body + b".\r\n")
                srv.signal(signal.SIGTERM)
                rc = srv.wait_exit(timeout=30)
                h.check(rc == 0, "%s: exit code %d; log:\n%s"
                        % (when, rc, srv.log()))
        finally:
            srv.cleanup()


if __name__ == "__main__":
    h.main([test_sigterm_mid_data, test_sigterm_idle,
            test_forced_shutdown_mid_delivery])
