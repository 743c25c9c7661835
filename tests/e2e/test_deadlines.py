#!/usr/bin/env python3
"""Deadlines (issue 8, items 12 and 19).

Item 12: a client that stops reading is disconnected within a bound.
Five sockets with a tiny receive buffer pipeline thousands of EHLO and
never read (the junk-command limit off, so nothing else closes them
first): each is closed once its output made no progress for
timeout_write (after the idle timeout too, which used to log
event=close but leave the socket ESTABLISHED for minutes), the
max_connections slots come back, and SIGTERM exits within
shutdown_timeout even while such clients are connected.

Item 19: total deadlines, not idle timers: one command line dripped a
byte a second, a PROXY header dripped a byte a second and a TLS
handshake dripped a byte a second are each cut at their deadline
although the connection is never idle for long."""

import os
import socket
import struct
import time

import e2e as h

TCP_ESTABLISHED = 1


def tcp_state(s):
    """The kernel's TCP state of socket s (1 = ESTABLISHED)."""
    info = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)
    return struct.unpack("B", info[:1])[0]


def config(d, extra_server="", listener="", port=None):
    port = port or h.free_ports(1)[0]
    cfg = os.path.join(d, "tern.ini")
    h.write(cfg, "[server]\nhostname = deadlines.example\n%s\n"
            "[listener mx]\nurl = smtp://127.0.0.1:%d\n%s\n"
            "[delivery]\nmaildir = %s\nfsync = no\n"
            % (extra_server, port, listener, os.path.join(d, "mail")))
    return cfg, port


def stuffers(port, n=5, lines=9000):
    """n clients with a ~1 KiB receive buffer that pipeline `lines` EHLO
    commands (as many as the kernel takes in 3 s) and never read."""
    socks = []
    payload = b"EHLO stuck.example\r\n" * lines
    for _ in range(n):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
        s.connect(("127.0.0.1", port))
        s.setblocking(False)
        socks.append([s, 0])
    end = time.monotonic() + 3.0
    while time.monotonic() < end and any(off < len(payload)
                                         for _, off in socks):
        progress = False
        for e in socks:
            s, off = e
            if off >= len(payload):
                continue
            try:
                k = s.send(payload[off:off + 65536])
                e[1] += k
                progress = progress or k > 0
            except BlockingIOError:
                pass
            except OSError:
                e[1] = len(payload)  # already cut: fine
        if not progress:
            time.sleep(0.05)
    h.check(all(off > 100000 for _, off in socks),
            "the stuck clients could not send much: %r"
            % [off for _, off in socks])
    return [s for s, _ in socks]


def test_stuck_clients_are_closed():
    """Clients that never read are closed within timeout_command +
    timeout_write, and their connection slots come back."""
    d = h.tmpdir(prefix="tern-e2e-dl-")
    cfg, port = config(d, "timeout_command = 2s\ntimeout_write = 3s\n"
                       "max_connections = 5\nmax_junk_commands = 0\n")
    with h.Serve(["-c", cfg], name="stuck") as srv:
        socks = stuffers(port)
        try:
            t0 = time.monotonic()
            h.wait_for(lambda: all(tcp_state(s) != TCP_ESTABLISHED
                                   for s in socks), 15,
                       "the five clients that never read to be "
                       "disconnected (states %r); log:\n%s"
                       % ([tcp_state(s) for s in socks], srv.log()))
            took = time.monotonic() - t0
            h.check(took < 12, "disconnecting took %.1f s" % took)
            srv.wait_log("event=timeout", count=5)
            h.check(len(srv.grep("what=write")) == 5,
                    "want five 'event=timeout ... what=write' lines:\n%s"
                    % srv.log())
            # the slots are free again: a new client is greeted with 220
            r = h.Raw("127.0.0.1", port, timeout=10)
            try:
                code, lines = r.reply()
                h.check(code == 220, "after the stuck clients: %r" % lines)
                r.cmd("QUIT", 221)
            finally:
                r.close()
        finally:
            for s in socks:
                s.close()


def test_sigterm_with_stuck_clients():
    """SIGTERM exits within shutdown_timeout (2 s) although five clients
    never read (their idle and write timeouts are far away)."""
    d = h.tmpdir(prefix="tern-e2e-dl-")
    cfg, port = config(d, "timeout_command = 5m\ntimeout_write = 5m\n"
                       "shutdown_timeout = 2s\nmax_junk_commands = 0\n")
    srv = h.Serve(["-c", cfg], name="stuck-term")
    try:
        srv.start()
        socks = stuffers(port)
        try:
            t0 = time.monotonic()
            srv.signal(15)
            rc = srv.wait_exit(timeout=12)
            took = time.monotonic() - t0
            h.check(rc == 0, "exit code %s; log:\n%s" % (rc, srv.log()))
            h.check(took < 8, "SIGTERM took %.1f s with shutdown_timeout "
                    "= 2s" % took)
        finally:
            for s in socks:
                s.close()
    finally:
        srv.cleanup()


def drip(sock, data, interval, limit):
    """Send data one byte every `interval` s until the peer closes or
    `limit` s pass. Returns (seconds until closed or None, what was read)."""
    t0 = time.monotonic()
    got = b""
    sock.settimeout(interval)
    i = 0
    while time.monotonic() - t0 < limit:
        if i < len(data):
            try:
                sock.send(data[i:i + 1])
            except OSError:
                return time.monotonic() - t0, got
            i += 1
        try:
            b = sock.recv(4096)
            if not b:
                return time.monotonic() - t0, got
            got += b
        except socket.timeout:
            pass
        except ConnectionResetError:
            return time.monotonic() - t0, got
    return None, got


def test_command_line_deadline():
    """A command line dripped a byte a second (never 3 s idle) is cut
    with 421 4.4.2 about timeout_command (3 s) after its first byte."""
    d = h.tmpdir(prefix="tern-e2e-dl-")
    cfg, port = config(d, "timeout_command = 3s\n")
    with h.Serve(["-c", cfg], name="line") as srv:
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        try:
            greet = s.recv(4096)
            h.check(greet.startswith(b"220"), "greeting %r" % greet)
            took, got = drip(s, b"NOOP " + b"x" * 60, 1.0, 15)
            h.check(took is not None, "a dripped command line stayed open "
                    "15 s with timeout_command = 3s; got %r" % got)
            h.check(b"421 4.4.2" in got, "no 421 4.4.2 before the close: %r"
                    % got)
            h.check(2.0 < took < 7.0, "closed after %.1f s (want about 3)"
                    % took)
            srv.wait_log("what=command-line")
        finally:
            s.close()


def test_proxy_header_deadline():
    """A PROXY header dripped a byte a second is refused at
    timeout_proxy (3 s) although it is never idle that long."""
    d = h.tmpdir(prefix="tern-e2e-dl-")
    cfg, port = config(d, "timeout_proxy = 3s\n",
                       listener="proxy_protocol = yes\n")
    with h.Serve(["-c", cfg], name="proxy") as srv:
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        try:
            took, got = drip(s, b"PROXY TCP4 192.0.2.1 192.0.2.2 "
                             b"5555 25\r\n", 1.0, 20)
            h.check(took is not None, "a dripped PROXY header kept the "
                    "connection open 20 s; got %r" % got)
            h.check(took < 7.0, "closed after %.1f s (want about 3)" % took)
            h.check(not got.startswith(b"220"), "greeted: %r" % got)
            srv.wait_log("what=proxy")
        finally:
            s.close()


def test_proxy_header_default_deadline():
    """The default PROXY deadline is 10 s: a header dripped a byte every
    6 s (the reproducer) is refused, not accepted after 30 s."""
    d = h.tmpdir(prefix="tern-e2e-dl-")
    cfg, port = config(d, listener="proxy_protocol = yes\n")
    with h.Serve(["-c", cfg], name="proxy-default") as srv:
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        try:
            took, got = drip(s, b"PROXY TCP4 192.0.2.1 192.0.2.2 5555 25\r\n",
                             6.0, 25)
            h.check(took is not None and took < 16,
                    "closed after %s s (want about 10)" % took)
            srv.wait_log("what=proxy")
        finally:
            s.close()


def test_tls_handshake_deadline():
    """A TLS handshake dripped a byte a second on an smtps:// listener is
    cut at timeout_tls_handshake (3 s); the idle timer (30 s) alone
    would have let it go on."""
    d = h.tmpdir(prefix="tern-e2e-dl-")
    port = h.free_ports(1)[0]
    cfg = os.path.join(d, "tern.ini")
    h.write(cfg, "[server]\ntimeout_command = 30s\n"
            "timeout_tls_handshake = 3s\n"
            "[listener tls]\nurl = smtps://127.0.0.1:%d\n"
            "[tls]\ncert = %s\nkey = %s\n"
            "[delivery]\nmaildir = %s\nfsync = no\n"
            % (port, h.cert("server.pem"), h.cert("server.key"),
               os.path.join(d, "mail")))
    with h.Serve(["-c", cfg], name="tls-hs") as srv:
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        try:
            # a TLS record header announcing 512 octets of ClientHello
            hello = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + \
                b"\x00" * 40
            took, got = drip(s, hello, 1.0, 15)
            h.check(took is not None, "a dripped TLS handshake stayed open "
                    "15 s with timeout_tls_handshake = 3s")
            h.check(took < 7.0, "closed after %.1f s (want about 3)" % took)
            srv.wait_log("what=tls-handshake")
        finally:
            s.close()


def test_starttls_handshake_deadline():
    """The same after STARTTLS: the handshake dripped a byte a second is
    cut at timeout_tls_handshake (3 s), not kept alive by the 30 s idle
    timer."""
    d = h.tmpdir(prefix="tern-e2e-dl-")
    port = h.free_ports(1)[0]
    cfg = os.path.join(d, "tern.ini")
    h.write(cfg, "[server]\ntimeout_command = 30s\n"
            "timeout_tls_handshake = 3s\n"
            "[listener mx]\nurl = smtp://127.0.0.1:%d\nstarttls = yes\n"
            "[tls]\ncert = %s\nkey = %s\n"
            "[delivery]\nmaildir = %s\nfsync = no\n"
            % (port, h.cert("server.pem"), h.cert("server.key"),
               os.path.join(d, "mail")))
    with h.Serve(["-c", cfg], name="starttls-hs") as srv:
        with h.session(port, "EHLO drip.test", timeout=10) as r:
            r.cmd("STARTTLS", 220)
            hello = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + \
                b"\x00" * 40
            took, got = drip(r.s, hello, 1.0, 15)
            h.check(took is not None, "a dripped STARTTLS handshake stayed "
                    "open 15 s with timeout_tls_handshake = 3s")
            h.check(took < 7.0, "closed after %.1f s (want about 3)" % took)
            srv.wait_log("what=tls-handshake")


if __name__ == "__main__":
    h.main([test_stuck_clients_are_closed, test_sigterm_with_stuck_clients,
            test_command_line_deadline, test_proxy_header_deadline,
            test_proxy_header_default_deadline, test_tls_handshake_deadline,
            test_starttls_handshake_deadline])
