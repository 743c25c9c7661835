#!/usr/bin/env python3
"""Forwarding (target = smtp) against a scripted next hop and a TLS next
hop: what the next hop is told and what the inbound client hears.

1. Envelope parameters reach the next hop when it offers them: SIZE,
   BODY=8BITMIME, SMTPUTF8, RET, ENVID (MAIL), NOTIFY, ORCPT (RCPT).
2. What the next hop cannot take is refused at MAIL time, and never sent
   to it: SMTPUTF8 (553 5.6.7), BODY=8BITMIME to a 7-bit hop (550 5.6.3),
   BODY=BINARYMIME without CHUNKING+BINARYMIME (554 5.6.1, RFC 3030 §3),
   SIZE over its limit (552 5.3.4).
3. BINARYMIME to a next hop offering CHUNKING+BINARYMIME goes in BDAT,
   byte-exact (bare LF, bare CR, NUL unchanged).
4. A next hop silent after RCPT: the client gets 451 4.4.2 before its
   own session's timeout, and an event=forward line says so; a slow one
   whose every reply comes in time but whose connect-to-MAIL step as a
   whole would outlast the inbound timeout gets 451 4.4.x in time too.
5. A next hop silent after the final dot: the outcome is unknown; the
   client gets 451 4.4.2 (a possible duplicate rather than a loss) and
   the log says step=end-unknown.
6. TLS: smtp:// is opportunistic and not verified (a self-signed next hop
   gets the mail over TLS); smtp+starttls:// verifies (refused without
   the CA, delivered with ca_file); next-hop AUTH (auth_user,
   auth_password_file) works over a verified channel and is refused by
   the configuration check over smtp://.
"""

import os
import re
import smtplib
import socket
import threading
import time

import e2e as h

HOST = "127.0.0.1"

FWD_CONF = """[server]
hostname = fwd.e2e.example
timeout_command = {tc}

[listener in]
url = smtp://127.0.0.1:{port}

[delivery]
target = smtp
url = {url}
queue = no
{extra}
"""


def fwd_conf(d, url, tc="5m", extra="", name="fwd"):
    (p,) = h.free_ports(1)
    return h.write(os.path.join(d, name + ".ini"), FWD_CONF.format(
        port=p, url=url, tc=tc, extra=extra))


class Hop:
    """A scripted SMTP next hop on a loopback port. `caps`: EHLO
    keywords; `silent`: "rcpt" (never answers RCPT) or "dot" (never
    answers the end of data). Records every command line and every
    message body (DATA: unstuffed; BDAT: raw)."""

    def __init__(self, caps, silent=None, delay=0.0):
        self.caps, self.silent, self.delay = caps, silent, delay
        self.cmds, self.bodies = [], []
        self.ls = socket.socket()
        self.ls.bind((HOST, 0))
        self.ls.listen(8)
        self.port = self.ls.getsockname()[1]
        self.stop = False
        self.died = threading.Event()  # silent="die": the reset is sent
        self.t = threading.Thread(target=self.run, daemon=True)

    def __enter__(self):
        self.t.start()
        return self

    def __exit__(self, *a):
        self.stop = True
        self.ls.close()
        return False

    def run(self):
        while not self.stop:
            try:
                c, _ = self.ls.accept()
            except OSError:
                return
            threading.Thread(target=self.session, args=(c,),
                             daemon=True).start()

    def session(self, c):
        f = c.makefile("rb")
        try:
            time.sleep(self.delay)
            c.sendall(b"220 hop.example ESMTP\r\n")
            while True:
                ln = f.readline()
                if not ln:
                    return
                line = ln.rstrip(b"\r\n").decode("utf-8", "replace")
                self.cmds.append(line)
                verb = line.split(" ")[0].upper()
                time.sleep(self.delay)
                if verb == "EHLO":
                    ks = ["hop.example"] + self.caps
                    out = "".join("250%s%s\r\n" % ("-" if i < len(ks) - 1
                                                   else " ", k)
                                  for i, k in enumerate(ks))
                    c.sendall(out.encode())
                elif verb == "RCPT" and self.silent == "rcpt":
                    continue
                elif verb in ("MAIL", "RCPT", "RSET", "NOOP"):
                    c.sendall(b"250 2.0.0 Ok\r\n")
                elif verb == "DATA" and self.silent == "die":
                    c.sendall(b"354 go\r\n")
                    n = 0  # part of the body, then a close with the
                    while n <= 20000:  # rest unread: the peer sees a reset
                        n += len(f.readline())
                    c.close()
                    self.died.set()
                    return
                elif verb == "DATA" and self.silent == "body":
                    c.sendall(b"354 go\r\n")
                    time.sleep(30)  # never reads the body
                    return
                elif verb == "DATA":
                    c.sendall(b"354 go\r\n")
                    body = b""
                    while True:
                        d = f.readline()
                        if not d or d == b".\r\n":
                            break
                        body += d[1:] if d.startswith(b".") else d
                    self.bodies.append(body)
                    if self.silent == "dot":
                        time.sleep(30)
                        return
                    c.sendall(b"250 2.0.0 Ok: got it\r\n")
                elif verb == "BDAT":
                    parts = line.split()
                    n = int(parts[1])
                    data = f.read(n)
                    if not hasattr(self, "bdat"):
                        self.bdat = b""
                    self.bdat += data
                    if len(parts) > 2 and parts[2].upper() == "LAST":
                        self.bodies.append(self.bdat)
                        self.bdat = b""
                        c.sendall(b"250 2.0.0 Ok: got it\r\n")
                    else:
                        c.sendall(b"250 2.0.0 Ok chunk\r\n")
                elif verb == "QUIT":
                    c.sendall(b"221 2.0.0 Bye\r\n")
                    return
                else:
                    c.sendall(b"502 5.5.2 unknown\r\n")
        except OSError:
            return
        finally:
            c.close()

    def verbs(self, verb):
        return [x for x in self.cmds if x.upper().startswith(verb)]


FULL = ["PIPELINING", "SIZE 1000000", "8BITMIME", "SMTPUTF8", "DSN",
        "ENHANCEDSTATUSCODES", "CHUNKING", "BINARYMIME"]


def test_parameters_carried():
    with Hop(FULL) as hop:
        d = h.tmpdir("tern-e2e-hop1-")
        conf = fwd_conf(d, "smtp://127.0.0.1:%d" % hop.port)
        with h.Serve(["-c", conf], name="fwd-params") as srv:
            with h.session(srv.port) as r:
                r.cmd("MAIL FROM:<s@example.net> SIZE=1234 BODY=8BITMIME "
                      "RET=HDRS ENVID=abc+2Bdef SMTPUTF8", 250)
                r.cmd("RCPT TO:<r@example.org> NOTIFY=SUCCESS,FAILURE "
                      "ORCPT=rfc822;orig+2Bx@example.org", 250)
                r.cmd("DATA", 354)
                r.send(b"Subject: x\r\n\r\n\xc3\xa9t\xc3\xa9\r\n.\r\n")
                code, lines = r.reply()
                h.check(code == 250, "end of data: %r" % lines)
        (mail,) = hop.verbs("MAIL")
        (rcpt,) = hop.verbs("RCPT")
        print("  next hop got: %s / %s" % (mail, rcpt))
        for p in ("SIZE=1234", "BODY=8BITMIME", "SMTPUTF8", "RET=HDRS",
                  "ENVID=abc+2Bdef"):
            h.check(p in mail.split(), "MAIL at the next hop lacks %s: %r"
                    % (p, mail))
        for p in ("NOTIFY=SUCCESS,FAILURE",
                  "ORCPT=rfc822;orig+2Bx@example.org"):
            h.check(p in rcpt.split(), "RCPT at the next hop lacks %s: %r"
                    % (p, rcpt))
        h.check(hop.bodies and hop.bodies[0].endswith(
            b"\r\n\r\n\xc3\xa9t\xc3\xa9\r\n"), "body: %r" % hop.bodies)


def test_refused_at_mail():
    with Hop(["PIPELINING", "SIZE 1000", "ENHANCEDSTATUSCODES"]) as hop:
        d = h.tmpdir("tern-e2e-hop2-")
        conf = fwd_conf(d, "smtp://127.0.0.1:%d" % hop.port)
        with h.Serve(["-c", conf], name="fwd-refuse") as srv:
            with h.session(srv.port) as r:
                for args, want in (
                        ("SMTPUTF8", "553 5.6.7"),
                        ("BODY=8BITMIME", "550 5.6.3"),
                        ("BODY=BINARYMIME", "554 5.6.1"),
                        ("SIZE=5000", "552 5.3.4")):
                    code, lines = r.cmd("MAIL FROM:<s@example.net> " + args)
                    print("  MAIL %s: %r" % (args, lines))
                    h.check(lines[0].startswith(want),
                            "MAIL %s: expected %s, got %r"
                            % (args, want, lines))
                # what the next hop can take still goes
                r.cmd("MAIL FROM:<s@example.net> SIZE=500", 250)
                r.cmd("RCPT TO:<r@example.org>", 250)
                r.cmd("DATA", 354)
                r.send(b"Subject: x\r\n\r\nhi\r\n.\r\n")
                code, lines = r.reply()
                h.check(code == 250, "end of data: %r" % lines)
        mails = hop.verbs("MAIL")
        h.check(len(mails) == 1 and "SIZE=500" in mails[0],
                "the refused envelopes reached the next hop: %r" % mails)
        h.check(len(srv.grep("event=forward step=mail")) == 5,
                "forward outcomes not all logged: %s" % srv.log())


def test_binarymime_bdat():
    with Hop(FULL) as hop:
        d = h.tmpdir("tern-e2e-hop3-")
        conf = fwd_conf(d, "smtp://127.0.0.1:%d" % hop.port)
        body = b"Subject: bin\r\n\r\nbare\nLF bare\rCR nul\x00 .\r\n.\r\nend"
        with h.Serve(["-c", conf], name="fwd-bin") as srv:
            with h.session(srv.port) as r:
                r.cmd("MAIL FROM:<s@example.net> BODY=BINARYMIME", 250)
                r.cmd("RCPT TO:<r@example.org>", 250)
                r.send(b"BDAT %d LAST\r\n" % len(body) + body)
                code, lines = r.reply()
                h.check(code == 250, "BDAT LAST: %r" % lines)
        (mail,) = hop.verbs("MAIL")
        h.check("BODY=BINARYMIME" in mail, "MAIL: %r" % mail)
        h.check(not hop.verbs("DATA"), "DATA was used for BINARYMIME")
        h.check(len(hop.bodies) == 1 and hop.bodies[0].endswith(body),
                "not byte-exact: %r" % hop.bodies)


def before_inbound_timeout(r, data, want, what):
    """Sends data: the reply must start with want and come before the
    inbound session's 3 s timeout (tc="3s")."""
    t0 = time.monotonic()
    r.send(data)
    _, lines = r.reply()
    took = time.monotonic() - t0
    print("  %s: %r after %.1f s" % (what, lines, took))
    h.check(lines[0].startswith(want), "expected %s, got %r" % (want, lines))
    h.check(took < 3.0, "answered after %.1f s, not before the inbound 3 s "
            "timeout" % took)


def test_silent_after_rcpt():
    with Hop(["PIPELINING", "ENHANCEDSTATUSCODES"], silent="rcpt") as hop:
        d = h.tmpdir("tern-e2e-hop4-")
        # the inbound session's command timeout is 3 s: the next hop's
        # must run out first
        conf = fwd_conf(d, "smtp://127.0.0.1:%d" % hop.port, tc="3s")
        with h.Serve(["-c", conf], name="fwd-silent") as srv:
            with h.session(srv.port) as r:
                r.cmd("MAIL FROM:<s@example.net>", 250)
                before_inbound_timeout(r, "RCPT TO:<r@example.org>\r\n",
                                       "451 4.4.2",
                                       "RCPT to a silent next hop")
                r.cmd("RSET", 250)
            (ln,) = srv.wait_log("event=forward step=rcpt")
            h.check("result=451" in ln and "timed" in ln, "log: %r" % ln)
            # the line names the message it belongs to (made at MAIL)
            h.check(re.search(r" id=[A-Za-z0-9]+-\d+ ", ln),
                    "no message id in the rcpt line: %r" % ln)


def test_slow_hop_whole_step():
    """A next hop that answers each command just inside the per-reply
    timeout, so that greeting + EHLO + MAIL take longer than the inbound
    session's own timeout: the whole step has a deadline too."""
    with Hop(["PIPELINING", "ENHANCEDSTATUSCODES"], delay=1.2) as hop:
        d = h.tmpdir("tern-e2e-hop4b-")
        conf = fwd_conf(d, "smtp://127.0.0.1:%d" % hop.port, tc="3s")
        with h.Serve(["-c", conf], name="fwd-slow") as srv:
            with h.session(srv.port) as r:
                before_inbound_timeout(r, "MAIL FROM:<s@example.net>\r\n",
                                       "451 4.4.",
                                       "MAIL through a slow next hop")
            (ln,) = srv.wait_log("event=forward step=mail")
            h.check("result=451" in ln, "log: %r" % ln)


def test_hop_stops_reading():
    """A next hop that stops reading in the middle of the body: the
    forwarder gives up within its timeout, reads the rest of the message
    and answers 451 4.4.2 at its end (the inbound session is not left
    paused until it times out)."""
    with Hop(["PIPELINING", "ENHANCEDSTATUSCODES"], silent="body") as hop:
        d = h.tmpdir("tern-e2e-hop4c-")
        conf = fwd_conf(d, "smtp://127.0.0.1:%d" % hop.port, tc="3s")
        with h.Serve(["-c", conf], name="fwd-stall") as srv:
            with h.session(srv.port) as r:
                r.cmd("MAIL FROM:<s@example.net>", 250)
                r.cmd("RCPT TO:<r@example.org>", 250)
                r.cmd("DATA", 354)
                line = b"x" * 78 + b"\r\n"
                r.send(b"Subject: big\r\n\r\n" + line * (12 * 1024 * 1024
                                                          // len(line)))
                r.send(b".\r\n")
                code, lines = r.reply()
                print("  end of data, next hop stopped reading: %r" % lines)
                h.check(lines[0].startswith("451 4.4.2"),
                        "expected 451 4.4.2, got %r" % lines)
                r.cmd("NOOP", 250)
            srv.wait_log("event=message")


def test_hop_dies_mid_body():
    """A next hop that closes in the middle of the body with the rest
    unread (a reset): a later write of the forwarder fails inside the
    body, before the end of data is committed. The client hears 451 4.4.2
    at its dot, not the inbound timeout's 421 (the outcome known at commit
    used to be lost when the hop's close stopped the timer reporting it).
    Three messages, as the failure's timing varies."""
    with Hop(["PIPELINING", "8BITMIME"], silent="die") as hop:
        d = h.tmpdir("tern-e2e-hop4e-")
        conf = fwd_conf(d, "smtp://127.0.0.1:%d" % hop.port, tc="3s")
        with h.Serve(["-c", conf], name="fwd-die") as srv:
            line = b"y" * 998 + b"\r\n"
            for _ in range(3):
                with h.session(srv.port) as r:
                    r.send("MAIL FROM:<s@example.net>\r\n"
                           "RCPT TO:<r@example.org>\r\nDATA\r\n")
                    for want in (250, 250, 354):
                        code, lines = r.reply()
                        h.check(code == want, "expected %d: %r" % (want, lines))
                    before_inbound_timeout(
                        r, b"Subject: dies\r\n\r\n" + line * 100 +
                        b".\r\nQUIT\r\n", "451 4.4.2",
                        "a next hop reset mid-body")
                    r.reply()  # 221 for the QUIT behind the dot
            h.check(hop.died.is_set(), "the next hop never closed")


def test_silent_after_dot():
    with Hop(["PIPELINING", "ENHANCEDSTATUSCODES"], silent="dot") as hop:
        d = h.tmpdir("tern-e2e-hop5-")
        conf = fwd_conf(d, "smtp://127.0.0.1:%d" % hop.port, tc="3s")
        with h.Serve(["-c", conf], name="fwd-silent-dot") as srv:
            with h.session(srv.port) as r:
                r.cmd("MAIL FROM:<s@example.net>", 250)
                r.cmd("RCPT TO:<r@example.org>", 250)
                r.cmd("DATA", 354)
                before_inbound_timeout(r, b"Subject: x\r\n\r\nhi\r\n.\r\n",
                                       "451 4.4.2",
                                       "end of data to a silent next hop")
            srv.wait_log("event=forward step=end-unknown")
            (ln,) = srv.wait_log("event=message")
            h.check("status=451" in ln, "log: %r" % ln)
        h.check(len(hop.bodies) == 1, "the next hop did get the message")


TLS_HOP = """[server]
hostname = hop.e2e.example

[listener hop]
url = smtp://127.0.0.1:{port}
starttls = yes
{auth}

[tls]
cert = {cert}
key = {key}

{users}

[delivery]
maildir = {maildir}
fsync = no
"""


def tls_hop(d, auth=False):
    (p,) = h.free_ports(1)
    users = ""
    if auth:
        uf = h.write(os.path.join(d, "users"),
                     h.passwd_line("relay", "hop pass") + "\n")
        users = "[auth]\nusers = %s\n" % uf
    return h.write(os.path.join(d, "hop.ini"), TLS_HOP.format(
        port=p, cert=h.cert("server.pem"), key=h.cert("server.key"),
        maildir=os.path.join(d, "mail"), users=users,
        auth="auth = required" if auth else ""))


def send_one(port, rcpt="r@example.org"):
    with smtplib.SMTP(HOST, port, timeout=20) as c:
        c.ehlo("client.example")
        code, msg = c.mail("s@example.net")
        if code != 250:
            return code, msg
        code, msg = c.rcpt(rcpt)
        if code != 250:
            return code, msg
        return c.data(b"Subject: tls\r\n\r\nhi\r\n")


def test_tls_policy_and_auth():
    d = h.tmpdir("tern-e2e-hop6-")
    with h.Serve(["-c", tls_hop(d)], name="tls-hop") as hop:
        # smtp://: opportunistic TLS, certificate not verified
        c1 = fwd_conf(d, "smtp://127.0.0.1:%d" % hop.port, name="f1")
        with h.Serve(["-c", c1], name="fwd-may") as srv:
            code, msg = send_one(srv.port)
            h.check(code == 250, "smtp:// to a self-signed next hop: %d %r"
                    % (code, msg))
        hop.wait_log("tls=TLSv1.3")
        # smtp+starttls://: verified: refused without the CA ...
        c2 = fwd_conf(d, "smtp+starttls://127.0.0.1:%d" % hop.port,
                      name="f2")
        with h.Serve(["-c", c2], name="fwd-verify") as srv:
            code, msg = send_one(srv.port)
            print("  smtp+starttls:// without the CA: %d %r" % (code, msg))
            h.check(code == 451 and b"verif" in msg,
                    "expected 451 (certificate verify failed), got %d %r"
                    % (code, msg))
        # ... delivered with it
        c3 = fwd_conf(d, "smtp+starttls://127.0.0.1:%d" % hop.port,
                      extra="ca_file = %s\n" % h.cert("ca.pem"), name="f3")
        with h.Serve(["-c", c3], name="fwd-verify-ca") as srv:
            code, msg = send_one(srv.port)
            h.check(code == 250, "verified: %d %r" % (code, msg))
    # AUTH: refused by the configuration over smtp:// ...
    pwf = h.write(os.path.join(d, "pw"), "hop pass\n")
    c4 = fwd_conf(d, "smtp://127.0.0.1:1", name="f4",
                  extra="auth_user = relay\nauth_password_file = %s\n" % pwf)
    rc, out, err = h.run_serve(["--check", "-c", c4])
    h.check(rc != 0 and "verified TLS" in err,
            "auth_user with smtp:// passed the check: %d %r %r"
            % (rc, out, err))
    # ... and used over a verified channel
    d2 = h.tmpdir("tern-e2e-hop6b-")
    with h.Serve(["-c", tls_hop(d2, auth=True)], name="auth-hop") as hop:
        c5 = fwd_conf(d, "smtp+starttls://127.0.0.1:%d" % hop.port,
                      name="f5", extra="ca_file = %s\nauth_user = relay\n"
                      "auth_password_file = %s\n" % (h.cert("ca.pem"), pwf))
        with h.Serve(["-c", c5], name="fwd-auth") as srv:
            code, msg = send_one(srv.port, "anyone@elsewhere.example")
            h.check(code == 250, "AUTH to the next hop: %d %r" % (code, msg))
        hop.wait_log("auth=relay")


if __name__ == "__main__":
    h.main([
        test_parameters_carried,
        test_refused_at_mail,
        test_binarymime_bdat,
        test_silent_after_rcpt,
        test_slow_hop_whole_step,
        test_hop_stops_reading,
        test_hop_dies_mid_body,
        test_silent_after_dot,
        test_tls_policy_and_auth,
    ])
