#!/usr/bin/env python3
"""Runtime behaviour on loopback: disconnect mid-DATA, timeouts, limits,
early talkers, graceful shutdown, LMTP over a unix socket, XCLIENT."""

import os
import signal
import socket
import time

import harness as h

MSG = (b"From: a@example.org\r\nTo: b@example.org\r\nSubject: runtime\r\n"
       b"\r\n" + b"line of the body\r\n" * 200)


def greet(r, expect=220):
    code, lines = r.reply()
    h.check(code == expect, "greeting: %r" % lines)
    return lines


def connect_refused_or_closed(port, host="127.0.0.1"):
    """True when a new connection is refused or closed without service."""
    try:
        s = socket.create_connection((host, port), timeout=2)
    except OSError:
        return True
    try:
        s.settimeout(2)
        try:
            d = s.recv(1024)
        except socket.timeout:
            return False
        except OSError:
            return True
        return d == b"" or d.startswith(b"421")
    finally:
        s.close()


# (c) --------------------------------------------------------------------------
def test_disconnect_mid_data():
    with h.CaptureServer(["--listen", "smtp://127.0.0.1:0"]) as srv:
        for rst in (False, True):
            r = h.Raw("127.0.0.1", srv.port)
            greet(r)
            r.cmd("EHLO t.example", 250)
            r.cmd("MAIL FROM:<a@example.org>", 250)
            r.cmd("RCPT TO:<b@example.org>", 250)
            r.cmd("DATA", 354)
            r.send(MSG[:len(MSG) // 2])
            if rst:  # abortive close (RST) this time
                r.s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                               b"\x01\x00\x00\x00\x00\x00\x00\x00")
            r.close()
            ab = srv.wait_aborted(2 if rst else 1)
            h.check(srv.eml_count() == 0, "an .eml was stored for an "
                    "aborted message")
        h.check(all("why:" in a for a in ab), repr(ab))
        # the server still works
        r = h.Raw("127.0.0.1", srv.port)
        greet(r)
        code, lines = h.transaction(r, "a@example.org", ["b@example.org"],
                                    MSG)
        h.check(code == 250, "after aborts: %r" % lines)
        r.cmd("QUIT", 221)
        r.close()
        (m,) = srv.wait_messages(1)
        h.assert_bytes_equal(m.eml, MSG)


# (d) --------------------------------------------------------------------------
def test_timeouts():
    with h.CaptureServer(["--listen", "smtp://127.0.0.1:0",
                          "--timeout-ms", "500"]) as srv:
        # idle after the greeting
        r = h.Raw("127.0.0.1", srv.port, timeout=5)
        t0 = time.monotonic()
        greet(r)
        code, lines = r.reply()
        dt = time.monotonic() - t0
        h.check(code == 421 and lines[0].startswith("421 4.4.2"),
                "idle connection: %r" % lines)
        h.check(0.4 <= dt < 3.0, "timeout after %.2f s, expected ~0.5" % dt)
        h.check(r.closed(timeout=3), "not closed after 421")
        r.close()
        # traffic restarts the timer: 4 NOOPs 300 ms apart outlive 500 ms
        r = h.Raw("127.0.0.1", srv.port, timeout=5)
        greet(r)
        for _ in range(4):
            time.sleep(0.3)  # the subject under test: pacing, not sync
            r.cmd("NOOP", 250)
        # idle inside DATA: 421 and the message is aborted
        r.cmd("EHLO t.example", 250)
        r.cmd("MAIL FROM:<a@example.org>", 250)
        r.cmd("RCPT TO:<b@example.org>", 250)
        r.cmd("DATA", 354)
        r.send(b"Subject: half\r\n\r\npart")
        code, lines = r.reply()
        h.check(code == 421 and lines[0].startswith("421 4.4.2"),
                "idle in DATA: %r" % lines)
        h.check(r.closed(timeout=3), "not closed after 421 in DATA")
        r.close()
        srv.wait_aborted(1)
        h.check(srv.eml_count() == 0, "stored a timed-out message")


# (e) --------------------------------------------------------------------------
def test_max_per_ip():
    with h.CaptureServer(["--listen", "smtp://127.0.0.1:0",
                          "--max-per-ip", "3"]) as srv:
        held = []
        try:
            for _ in range(3):
                r = h.Raw("127.0.0.1", srv.port)
                greet(r)
                held.append(r)
            r = h.Raw("127.0.0.1", srv.port)
            code, lines = r.reply()
            h.check(code == 421 and lines[0].startswith("421 4.7.0"),
                    "4th connection: %r" % lines)
            h.check(r.closed(), "4th connection not closed")
            r.close()
            # another address is not limited by 127.0.0.1's count
            r = h.Raw("127.0.0.1", srv.port, source=("127.0.0.2", 0))
            greet(r)
            r.cmd("QUIT", 221)
            r.close()
            # a slot frees when a connection ends
            held.pop().cmd("QUIT", 221)

            def fourth_ok():
                x = h.Raw("127.0.0.1", srv.port)
                try:
                    code, _ = x.reply()
                    if code == 220:
                        held.append(x)
                        return True
                except (h.TestFailure, OSError):
                    pass
                x.close()
                return False
            h.wait_for(fourth_ok, 5, "a slot after QUIT")
        finally:
            for r in held:
                r.close()


def test_max_conn():
    with h.CaptureServer(["--listen", "smtp://127.0.0.1:0",
                          "--max-conn", "2"]) as srv:
        held = []
        try:
            for src in ("127.0.0.1", "127.0.0.2"):
                r = h.Raw("127.0.0.1", srv.port, source=(src, 0))
                greet(r)
                held.append(r)
            r = h.Raw("127.0.0.1", srv.port, source=("127.0.0.3", 0))
            code, lines = r.reply()
            h.check(code == 421 and lines[0].startswith("421 4.7.0"),
                    "3rd connection: %r" % lines)
            h.check(r.closed(), "3rd connection not closed")
            r.close()
        finally:
            for r in held:
                r.close()


# (f) --------------------------------------------------------------------------
def test_early_talker():
    with h.CaptureServer(["--listen", "smtp://127.0.0.1:0",
                          "--greeting-delay", "300"]) as srv:
        r = h.Raw("127.0.0.1", srv.port)
        r.send("EHLO hasty.example\r\n")
        code, lines = r.reply()
        h.check(code == 554, "early talker: %r" % lines)
        h.check(r.closed(), "early talker not closed")
        r.close()
        r = h.Raw("127.0.0.1", srv.port)
        t0 = time.monotonic()
        greet(r)
        dt = time.monotonic() - t0
        h.check(dt >= 0.25, "greeting after %.3f s, expected ≥ 0.3" % dt)
        code, lines = h.transaction(r, "a@example.org", ["b@example.org"], MSG)
        h.check(code == 250, repr(lines))
        r.cmd("QUIT", 221)
        r.close()
        (m,) = srv.wait_messages(1)
        h.assert_bytes_equal(m.eml, MSG)


# (g) --------------------------------------------------------------------------
def test_graceful_shutdown():
    srv = h.CaptureServer(["--listen", "smtp://127.0.0.1:0"])
    with srv:
        busy = h.Raw("127.0.0.1", srv.port, timeout=10)
        idle = h.Raw("127.0.0.1", srv.port, timeout=10)
        try:
            greet(busy)
            greet(idle)
            idle.cmd("EHLO idle.example", 250)
            busy.cmd("EHLO busy.example", 250)
            busy.cmd("MAIL FROM:<a@example.org>", 250)
            busy.cmd("RCPT TO:<b@example.org>", 250)
            busy.cmd("DATA", 354)
            half = len(MSG) // 2
            busy.send(MSG[:half])
            srv.signal(signal.SIGTERM)
            # the idle session is told at once
            code, lines = idle.reply()
            h.check(code == 421 and lines[0].startswith("421 4.3.2"),
                    "idle session at shutdown: %r" % lines)
            h.check(idle.closed(), "idle session not closed")
            # no new connections
            h.wait_for(lambda: connect_refused_or_closed(srv.port), 5,
                       "the listener to stop accepting")
            h.check(srv.alive(), "server exited with a transaction open")
            # the transaction completes
            busy.send(MSG[half:] + b".\r\n")
            code, lines = busy.reply()
            h.check(code == 250, "transaction during shutdown: %r" % lines)
            code, lines = busy.reply()
            h.check(code == 421 and lines[0].startswith("421 4.3.2"),
                    "after the transaction: %r" % lines)
            h.check(busy.closed(), "busy session not closed")
        finally:
            busy.close()
            idle.close()
        rc = srv.wait_exit()
        h.check(rc == 0, "exit code %d: %s" % (rc, srv.stderr()))
        (m,) = srv.messages()
        h.assert_bytes_equal(m.eml, MSG)


# (h) --------------------------------------------------------------------------
def test_lmtp_unix_socket():
    d = h.tmpdir(prefix="tern-lmtp-")
    path = os.path.join(d, "lmtp.sock")
    with h.CaptureServer(["--listen", "lmtp://" + path]) as srv:
        h.check(os.path.exists(path), "no socket at " + path)
        r = h.Raw(port=path, family=socket.AF_UNIX)
        try:
            lines = greet(r)
            h.check("LMTP" in lines[0], "greeting %r" % lines)
            code, _ = r.cmd("EHLO not-lmtp.example")
            h.check(code >= 500, "EHLO accepted in LMTP mode")
            r.cmd("LHLO lmtp.example", 250)
            r.cmd("MAIL FROM:<a@example.org>", 250)
            r.cmd("RCPT TO:<one@example.org>", 250)
            r.cmd("RCPT TO:<reject-rcpt@example.org>", 550)
            r.cmd("RCPT TO:<fail-data@example.org>", 250)
            r.cmd("RCPT TO:<three@example.org>", 250)
            r.cmd("DATA", 354)
            r.send(h.dot_stuff(MSG) + b".\r\n")
            codes = [r.reply()[0] for _ in range(3)]
            h.check(codes == [250, 550, 250],
                    "per-recipient replies %r, expected [250, 550, 250]"
                    % codes)
            r.cmd("QUIT", 221)
        finally:
            r.close()
        (m,) = srv.wait_messages(1)
        h.assert_bytes_equal(m.eml, MSG)
        h.check(m.env["peer"] == "unix", m.env_text)
        h.check(m.rcpt == ["one@example.org", "fail-data@example.org",
                           "three@example.org"], m.env_text)
    h.check(not os.path.exists(path), "socket file left behind: " + path)


# XCLIENT --------------------------------------------------------------------
def test_xclient():
    with h.CaptureServer(["--listen", "smtp://127.0.0.1:0", "--xclient",
                          "--xclient-nets", "127.0.0.1/32",
                          "--listen", "smtp://127.0.0.1:0", "--xclient"])\
            as srv:
        r = h.Raw("127.0.0.1", srv.port)
        try:
            greet(r)
            code, lines = r.cmd("EHLO proxy.example", 250)
            h.check(any("XCLIENT" in l for l in lines),
                    "XCLIENT not offered to a trusted peer: %r" % lines)
            code, lines = r.cmd("XCLIENT ADDR=192.0.2.7 PORT=4567 "
                                "NAME=client.example")
            h.check(code == 220, "XCLIENT: %r" % lines)
            code, lines = h.transaction(r, "a@example.org", ["b@example.org"],
                                        MSG)
            h.check(code == 250, repr(lines))
            r.cmd("QUIT", 221)
        finally:
            r.close()
        (m,) = srv.wait_messages(1)
        h.check(m.env["peer"] == "192.0.2.7", "peer after XCLIENT: "
                + m.env_text)
        h.check(m.env["peer_port"] == "4567", m.env_text)
        # untrusted source address: not offered, refused
        r = h.Raw("127.0.0.1", srv.ports[1], source=("127.0.0.2", 0))
        try:
            greet(r)
            code, lines = r.cmd("EHLO other.example", 250)
            h.check(not any("XCLIENT" in l for l in lines),
                    "XCLIENT offered to an untrusted peer: %r" % lines)
            code, lines = r.cmd("XCLIENT ADDR=192.0.2.8")
            h.check(code >= 500, "untrusted XCLIENT: %r" % lines)
        finally:
            r.close()


def test_shutdown_deadline():
    """A transaction that does not finish is cut at shutdown_timeout_ms:
    421, the message is aborted, the server exits 0."""
    srv = h.CaptureServer(["--listen", "smtp://127.0.0.1:0",
                           "--shutdown-timeout-ms", "500"])
    with srv:
        r = h.Raw("127.0.0.1", srv.port, timeout=10)
        try:
            greet(r)
            r.cmd("EHLO stuck.example", 250)
            r.cmd("MAIL FROM:<a@example.org>", 250)
            r.cmd("RCPT TO:<b@example.org>", 250)
            r.cmd("DATA", 354)
            r.send(MSG[:100])
            t0 = time.monotonic()
            srv.signal(signal.SIGTERM)
            code, lines = r.reply()
            dt = time.monotonic() - t0
            h.check(code == 421, "at the shutdown deadline: %r" % lines)
            h.check(0.3 <= dt < 5, "cut after %.2f s, expected ~0.5" % dt)
            h.check(r.closed(), "not closed at the deadline")
        finally:
            r.close()
        rc = srv.wait_exit()
        h.check(rc == 0, "exit code %d: %s" % (rc, srv.stderr()))
        h.check(len(srv.aborted()) == 1 and srv.eml_count() == 0,
                "aborted %r, eml %d" % (srv.aborted(), srv.eml_count()))


def test_max_size():
    with h.CaptureServer(["--listen", "smtp://127.0.0.1:0",
                          "--max-size", "10000"]) as srv:
        r = h.Raw("127.0.0.1", srv.port)
        try:
            greet(r)
            code, lines = r.cmd("EHLO big.example", 250)
            h.check("250-SIZE 10000" in lines, "SIZE: %r" % lines)
            r.cmd("MAIL FROM:<a@example.org> SIZE=20000", 552)
            big = MSG * 4  # > 10000 octets, SIZE not declared
            code, lines = h.transaction(r, "a@example.org", ["b@example.org"],
                                        big, ehlo=None)
            h.check(code == 552, "oversized message: %r" % lines)
            code, lines = h.transaction(r, "a@example.org", ["b@example.org"],
                                        MSG, ehlo=None)
            h.check(code == 250, "next message: %r" % lines)
            r.cmd("QUIT", 221)
        finally:
            r.close()
        (m,) = srv.wait_messages(1)
        h.assert_bytes_equal(m.eml, MSG)
        h.check(len(srv.aborted()) == 1, "aborted: %r" % srv.aborted())


def test_starttls_discards_pipelined_plaintext():
    """CVE-2011-0411: a command sent with STARTTLS, before the handshake,
    is not executed inside TLS."""
    import ssl
    with h.CaptureServer(["--listen", "smtp://127.0.0.1:0", "--starttls"]
                         + h.tls_args()) as srv:
        r = h.Raw("127.0.0.1", srv.port)
        try:
            greet(r)
            r.cmd("EHLO inject.example", 250)
            r.send("STARTTLS\r\nMAIL FROM:<injected@example.org>\r\n")
            code, lines = r.reply()
            h.check(code == 220, "STARTTLS: %r" % lines)
            h.check(r.buf == b"", "bytes after the 220: %r" % r.buf)
            ctx = ssl.create_default_context(cafile=h.cert("ca.pem"))
            tls = ctx.wrap_socket(r.s, server_hostname="localhost")
            t = h.Raw(sock=tls, timeout=5)
            # were the injected MAIL executed, this RCPT would be accepted
            # (or a stale 250 would be read first)
            code, lines = t.cmd("RCPT TO:<b@example.org>")
            h.check(code == 503, "RCPT right after TLS: %r (the injected "
                    "MAIL counted?)" % lines)
            t.cmd("EHLO inject.example", 250)
            code, lines = h.transaction(t, "a@example.org", ["b@example.org"],
                                        MSG, ehlo=None)
            h.check(code == 250, repr(lines))
            t.cmd("QUIT", 221)
            r = t
        finally:
            r.close()
        (m,) = srv.wait_messages(1)
        h.check(m.env["from"] == "a@example.org", m.env_text)
        h.check(m.env["tls"].startswith("TLSv1."), m.env_text)


def test_per_ip_limit_across_workers():
    with h.CaptureServer(["--listen", "smtp://127.0.0.1:0", "--workers", "2",
                          "--max-per-ip", "4"]) as srv:
        held, refused = [], 0
        try:
            for _ in range(12):
                r = h.Raw("127.0.0.1", srv.port)
                code, lines = r.reply()
                if code == 220:
                    held.append(r)
                else:
                    h.check(lines[0].startswith("421 4.7.0"), repr(lines))
                    refused += 1
                    r.close()
            h.check(len(held) == 4 and refused == 8,
                    "with 2 workers: %d served, %d refused (limit 4)"
                    % (len(held), refused))
        finally:
            for r in held:
                r.close()


if __name__ == "__main__":
    h.main([test_disconnect_mid_data, test_timeouts, test_max_per_ip,
            test_max_conn, test_early_talker, test_graceful_shutdown,
            test_lmtp_unix_socket, test_xclient, test_shutdown_deadline,
            test_max_size, test_starttls_discards_pipelined_plaintext,
            test_per_ip_limit_across_workers])
