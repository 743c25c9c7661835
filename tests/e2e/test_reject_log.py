#!/usr/bin/env python3
"""Rejections are logged (issue 8, item 22) and the fail2ban filter in
packaging/fail2ban finds them.

Real clients, each from its own loopback address, provoke: relay denied
(554 5.7.1), MAIL without the required AUTH (530), a wrong password
(535, and the password is never logged), a client talking before the
greeting (554 5.5.1), a failed TLS handshake, a client over max_per_ip
and one over max_connections (421 4.7.0). Every one gives an
event=reject line with the client address, the listener, the command,
the code and the enhanced code. Then fail2ban-regex runs the shipped
filter over the real log: it matches exactly the clients that probe or
guess, with their addresses, and nothing else (not max_connections, not
the clients that only sent mail)."""

import base64
import os
import re
import subprocess

import e2e as h

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
FILTER = os.path.join(ROOT, "packaging", "fail2ban", "filter.d", "tern.conf")
PASSWORD = "Sekr1t-never-logged"


def raw(port, src, timeout=10):
    return h.Raw("127.0.0.1", port, timeout=timeout, source=(src, 0))


def session(port, src, hello):
    return h.session(port, hello, timeout=10, source=(src, 0))


def test_rejections_logged_and_filtered():
    f2b = h.require_tool("fail2ban-regex")
    d = h.tmpdir(prefix="tern-e2e-rej-")
    users = os.path.join(d, "users")
    h.write(users, h.passwd_line("alice", "right-password") + "\n")
    mx, sub, tls = h.free_ports(3)
    cfg = os.path.join(d, "tern.ini")
    h.write(cfg, "[server]\nhostname = rej.example\ngreeting_delay = 300ms\n"
            "max_per_ip = 2\nmax_connections = 6\n"
            "[listener mx]\nurl = smtp://127.0.0.1:%d\nauth = no\n"
            "[listener sub]\nurl = smtp://127.0.0.1:%d\nauth = required\n"
            "insecure_auth = yes\n"
            "[listener tls]\nurl = smtps://127.0.0.1:%d\nauth = no\n"
            "[tls]\ncert = %s\nkey = %s\n"
            "[auth]\nusers = %s\n"
            "[domains]\naccept = example.org\n"
            "[delivery]\nmaildir = %s\nfsync = no\n"
            % (mx, sub, tls, h.cert("server.pem"), h.cert("server.key"),
               users, os.path.join(d, "mail")))
    srv = h.Serve(["-c", cfg], name="reject")
    try:
        srv.start()
        # a well-behaved client: delivers, must never be matched
        r = raw(mx, "127.0.0.10")
        r.reply()
        h.transaction(r, "a@example.net", ["b@example.org"], b"hi\r\n")
        r.cmd("QUIT", 221)
        r.close()
        # relay denied
        with session(mx, "127.0.0.11", "EHLO relay.test") as r:
            r.cmd("MAIL FROM:<a@example.net>", 250)
            r.cmd("RCPT TO:<victim@elsewhere.test>", 554)
            r.cmd("QUIT", 221)
        # MAIL without the AUTH the listener requires
        with session(sub, "127.0.0.12", "EHLO noauth.test") as r:
            r.cmd("MAIL FROM:<a@example.net>", 530)
            r.cmd("QUIT", 221)
        # a wrong password
        with session(sub, "127.0.0.13", "EHLO guess.test") as r:
            tok = base64.b64encode(b"\0alice\0" + PASSWORD.encode()).decode()
            r.cmd("AUTH PLAIN " + tok, 535)
            r.cmd("QUIT", 221)
        # talking before the greeting (greeting_delay = 300ms)
        r = raw(mx, "127.0.0.14")
        r.send("EHLO early.test\r\n")
        code, lines = r.reply()
        h.check(code == 554, "early talker: %r" % lines)
        r.close()
        # a TLS handshake that fails (plain text to smtps://)
        r = raw(tls, "127.0.0.15")
        r.send("EHLO notls.test\r\n" * 10)
        h.check(r.closed(10), "smtps:// listener kept a plain-text client")
        r.close()
        # over max_per_ip = 2
        held = [raw(mx, "127.0.0.16") for _ in range(2)]
        for x in held:
            x.reply()
        r = raw(mx, "127.0.0.16")
        code, lines = r.reply()
        h.check(code == 421, "third connection from one address: %r" % lines)
        r.close()
        # over max_connections = 6 (2 held above + 4 more)
        for i in range(2):
            for _ in range(2):
                x = raw(mx, "127.0.0.%d" % (21 + i))
                x.reply()
                held.append(x)
        r = raw(mx, "127.0.0.23")
        code, lines = r.reply()
        h.check(code == 421, "seventh connection: %r" % lines)
        r.close()
        for x in held:
            x.close()
        srv.wait_log("why=conn-limit")
        srv.stop()
    finally:
        srv.cleanup()

    log = srv.snapshot()
    text = "\n".join(log)
    h.check(PASSWORD not in text and tok not in text,
            "the password reached the log:\n" + text)

    def one(pattern, what):
        hits = [ln for ln in log if re.search(pattern, ln)]
        h.check(len(hits) == 1, "want one log line for %s (%r), got %d:\n%s"
                % (what, pattern, len(hits), text))
        ln = hits[0]
        h.check(re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ ", ln),
                "no time stamp: %r" % ln)
        h.check("listener=smtp" in ln, "no listener: %r" % ln)
        return ln

    ln = one(r"client=127\.0\.0\.11 .*code=554 enhanced=5\.7\.1", "relay")
    h.check("RCPT" in ln and "victim" in ln, "relay line without the "
            "command: %r" % ln)
    ln = one(r"client=127\.0\.0\.12 .*code=530 enhanced=5\.7\.0", "530")
    h.check("MAIL" in ln and "listener=smtp://127.0.0.1:%d" % sub in ln,
            "530 line: %r" % ln)
    ln = one(r"client=127\.0\.0\.13 .*code=535 enhanced=5\.7\.8", "535")
    h.check("AUTH" in ln and "PLAIN" in ln, "535 line: %r" % ln)
    one(r"client=127\.0\.0\.14 .*why=pregreet .*code=554 enhanced=5\.5\.1",
        "pregreet")
    ln = one(r"client=127\.0\.0\.15 .*why=tls-failed", "TLS failure")
    h.check("listener=smtps://127.0.0.1:%d" % tls in ln, "TLS line: %r" % ln)
    one(r"client=127\.0\.0\.16 .*why=ip-limit .*code=421 enhanced=4\.7\.0",
        "max_per_ip")
    one(r"client=127\.0\.0\.23 .*why=conn-limit .*code=421 enhanced=4\.7\.0",
        "max_connections")

    # fail2ban on the real log
    path = os.path.join(d, "tern.log")
    with open(path, "w") as f:
        f.write(text + "\n")
    p = subprocess.run([f2b, "-o", "ip", path, FILTER], capture_output=True,
                       timeout=120)
    out = p.stdout.decode()
    h.check(p.returncode == 0, "fail2ban-regex failed: %s%s"
            % (out, p.stderr.decode()))
    ips = sorted(ln.strip() for ln in out.splitlines() if ln.strip())
    want = ["127.0.0.%d" % i for i in (11, 12, 13, 14, 15, 16)]
    h.check(ips == want, "fail2ban-regex matched %r, want %r; log:\n%s"
            % (ips, want, text))


if __name__ == "__main__":
    h.main([test_rejections_logged_and_filtered])
