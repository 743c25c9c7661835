#!/usr/bin/env python3
"""`tern send` / `sendmail` against capture_server on loopback: byte-exact
delivery with -t/-i/-f/-F, the lone-"." rule, and every error path with its
sysexits code and its one-line message (see the top of src/cli/send.c)."""

import os
import re
import socket
import socketserver
import subprocess
import threading

import harness as h

RUN_TIMEOUT = 30


def tern():
    p = h.env_path("TERN_BIN")
    h.check(os.access(p, os.X_OK), "tern binary not executable: %s" % p)
    return p


def send(args, stdin=b"", env=None, argv0=None, timeout=RUN_TIMEOUT):
    """Run `tern send ARGS` (or the program under another name); return
    (rc, stdout, stderr text)."""
    if argv0:
        cmd = [argv0] + args
    else:
        cmd = [tern(), "send"] + args
    e = dict(os.environ)
    e.pop("TERN_SERVER", None)
    if env:
        e.update(env)
    p = h.run(cmd, input=stdin, timeout=timeout, check_rc=False, env=e)
    return p.returncode, p.stdout, p.stderr.decode("utf-8", "replace")


def expect_rc(rc, err, want, what):
    h.check(rc == want, "%s: exit %d, expected %d; stderr: %r"
            % (what, rc, want, err))


def server_url(srv):
    return "smtp://127.0.0.1:%d" % srv.port


def host():
    return socket.gethostname()


DATE_RE = re.compile(rb"Date: (Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d\d "
                     rb"(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) "
                     rb"\d{4} \d\d:\d\d:\d\d [+-]\d{4}")
MSGID_RE = re.compile(rb"Message-ID: <\d{14}\.[0-9a-f]{32}@[^<>@\s]+>")


def strip_added(eml):
    """The stored message without the Date: and Message-ID: that tern send
    adds to a message lacking them: each must be there exactly once, as
    the last two fields of the header block."""
    head, sep, body = eml.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    h.check(len(lines) >= 2 and DATE_RE.fullmatch(lines[-2]) and
            MSGID_RE.fullmatch(lines[-1]),
            "Date:/Message-ID: not added at the end of the header: %r"
            % head[-200:])
    for name in (b"date:", b"message-id:"):
        n = sum(1 for l in lines if l.lower().startswith(name))
        h.check(n == 1, "%r appears %d times" % (name, n))
    rest = lines[:-2]
    return b"\r\n".join(rest) + (b"\r\n" if rest else b"") + sep[2:] + body


# ---- delivery -----------------------------------------------------------------

MSG_T = (b"From: Alice <alice@example.org>\n"
         b"To: Bob <bob@example.org>, \"Carol, C.\" <carol@example.org>\n"
         b"Cc: dave@example.org (Dave)\n"
         b"Bcc: eve@example.org,\n"
         b"  frank@example.org\n"
         b"Subject: sendmail -t -i\n"
         b"\n"
         b"first line\n"
         b".\n"
         b"..two dots\n"
         b".leading dot\n"
         b"last line\n")


def test_sendmail_t_i_bcc():
    """A script calls `sendmail -t -i` (a symlink named sendmail): Bcc is
    removed, every header recipient is in the envelope, the bytes match."""
    d = h.tmpdir()
    link = os.path.join(d, "sendmail")
    os.symlink(tern(), link)
    script = os.path.join(d, "notify.sh")
    with open(script, "w") as f:
        f.write('#!/bin/sh\nexec sendmail -t -i "$@"\n')
    os.chmod(script, 0o755)
    with h.CaptureServer(["--listen", "smtp://127.0.0.1:0"]) as srv:
        env = {"PATH": d + os.pathsep + os.environ.get("PATH", ""),
               "TERN_SERVER": server_url(srv)}
        rc, _, err = send([], stdin=MSG_T, env=env, argv0=script)
        expect_rc(rc, err, 0, "sendmail -t -i")
        h.check(err == "", "unexpected stderr: %r" % err)
        (m,) = srv.wait_messages(1)
        want = h.crlf(MSG_T.replace(b"Bcc: eve@example.org,\n"
                                    b"  frank@example.org\n", b""))
        h.assert_bytes_equal(strip_added(m.eml), want)
        h.check(m.rcpt == ["bob@example.org", "carol@example.org",
                           "dave@example.org", "eve@example.org",
                           "frank@example.org"], "envelope: %r" % m.rcpt)
        h.check(m.env["from"].endswith("@" + host()),
                "default sender %r" % m.env["from"])


def test_t_adds_argument_recipients():
    """Postfix semantics: with -t the command-line recipients are added."""
    msg = b"To: bob@example.org\nSubject: x\n\nbody\n"
    with h.CaptureServer(["--listen", "smtp://127.0.0.1:0"]) as srv:
        rc, _, err = send(["--server", server_url(srv), "-t", "-i",
                           "zed@example.org", "bob@example.org"], stdin=msg)
        expect_rc(rc, err, 0, "-t with arguments")
        (m,) = srv.wait_messages(1)
        h.check(m.rcpt == ["zed@example.org", "bob@example.org"],
                "envelope: %r" % m.rcpt)
        h.assert_bytes_equal(strip_added(m.eml), h.crlf(msg))


def test_resent_headers():
    """With Resent-To/Cc/Bcc present, -t uses only those."""
    msg = (b"To: old@example.org\nResent-To: new@example.org\n"
           b"Resent-Bcc: hidden@example.org\nSubject: r\n\nbody\n")
    with h.CaptureServer(["--listen", "smtp://127.0.0.1:0"]) as srv:
        rc, _, err = send(["--server", server_url(srv), "-t"], stdin=msg)
        expect_rc(rc, err, 0, "-t with Resent-")
        (m,) = srv.wait_messages(1)
        h.check(m.rcpt == ["new@example.org", "hidden@example.org"],
                "envelope: %r" % m.rcpt)
        h.assert_bytes_equal(strip_added(m.eml), h.crlf(msg.replace(
            b"Resent-Bcc: hidden@example.org\n", b"")))


def test_f_and_F():
    with h.CaptureServer(["--listen", "smtp://127.0.0.1:0"]) as srv:
        url = server_url(srv)
        # no From: in the message: -F adds one, with the -f address
        msg = b"Subject: hello\nTo: bob@example.org\n\nbody\n"
        rc, _, err = send(["--server", url, "-f", "jane@example.org",
                           "-F", "Jane Q. Doe", "bob@example.org"],
                          stdin=msg)
        expect_rc(rc, err, 0, "-f -F")
        # a From: exists: -F adds nothing; -r is -f
        msg2 = b"From: x@example.org\nSubject: two\n\nbody\n"
        rc, _, err = send(["--server", url, "-r", "<jim@example.org>",
                           "-FJim", "bob@example.org"], stdin=msg2)
        expect_rc(rc, err, 0, "-r -F with From:")
        # the null sender
        rc, _, err = send(["--server", url, "-f", "<>", "bob@example.org"],
                          stdin=msg2)
        expect_rc(rc, err, 0, "-f <>")
        m1, m2, m3 = srv.wait_messages(3)
        h.check(m1.env["from"] == "jane@example.org", repr(m1.env))
        h.assert_bytes_equal(strip_added(m1.eml), h.crlf(
            b"Subject: hello\nTo: bob@example.org\n"
            b"From: \"Jane Q. Doe\" <jane@example.org>\n\nbody\n"))
        h.check(m2.env["from"] == "jim@example.org", repr(m2.env))
        h.assert_bytes_equal(strip_added(m2.eml), h.crlf(msg2))
        h.check(m3.env["from"] == "", repr(m3.env))


def test_lone_dot_ends_input():
    """Without -i a line with a single "." ends the input; with -i (or
    -oi) it is text and is sent (stuffed) as such."""
    msg = b"Subject: dot\n\nline one\n.\nnot sent\n"
    with h.CaptureServer(["--listen", "smtp://127.0.0.1:0"]) as srv:
        url = server_url(srv)
        rc, _, err = send(["--server", url, "bob@example.org"], stdin=msg)
        expect_rc(rc, err, 0, "lone dot")
        rc, _, err = send(["--server", url, "-oi", "bob@example.org"],
                          stdin=msg)
        expect_rc(rc, err, 0, "lone dot with -oi")
        # CRLF input, dot at the very end without a newline
        rc, _, err = send(["--server", url, "bob@example.org"],
                          stdin=b"Subject: crlf\r\n\r\nx\r\n.")
        expect_rc(rc, err, 0, "final lone dot")
        m1, m2, m3 = srv.wait_messages(3)
        h.assert_bytes_equal(strip_added(m1.eml),
                             h.crlf(b"Subject: dot\n\nline one\n"))
        h.assert_bytes_equal(strip_added(m2.eml), h.crlf(msg))
        h.assert_bytes_equal(strip_added(m3.eml),
                             b"Subject: crlf\r\n\r\nx\r\n")


def test_large_message_streams():
    """8 MiB through a pipe: spooled, not held; byte-exact."""
    line = b"0123456789" * 7 + b"abcd\n"
    body = line * (8 * 1024 * 1024 // len(line))
    msg = b"Subject: big\n\n" + body
    with h.CaptureServer(["--listen", "smtp://127.0.0.1:0"]) as srv:
        rc, _, err = send(["--server", server_url(srv), "-i",
                           "bob@example.org"], stdin=msg, timeout=60)
        expect_rc(rc, err, 0, "8 MiB")
        (m,) = srv.wait_messages(1, timeout=30)
        h.check(strip_added(m.eml) == h.crlf(msg),
                "8 MiB message differs (%d bytes)" % len(m.eml))


def test_verbose_prints_dialogue():
    with h.CaptureServer(["--listen", "smtp://127.0.0.1:0"]) as srv:
        rc, _, err = send(["--server", server_url(srv), "-v",
                           "bob@example.org"], stdin=b"Subject: v\n\nx\n")
        expect_rc(rc, err, 0, "-v")
        for want in ("[greeting] 220", "[EHLO] 250", "[MAIL] 250",
                     "[RCPT bob@example.org] 250", "[end of data] 250"):
            h.check(want in err, "-v output lacks %r: %r" % (want, err))


def test_auth_over_starttls():
    d = h.tmpdir()
    users = os.path.join(d, "users")
    with open(users, "w") as f:
        f.write("alice:s3cret\n")
    pw = os.path.join(d, "pw")
    with open(pw, "w") as f:
        f.write("s3cret\n")
    with h.CaptureServer(["--listen", "smtp://127.0.0.1:0", "--starttls",
                          "--auth-required"] + h.tls_args() +
                         ["--users", users]) as srv:
        rc, _, err = send(["--server", server_url(srv), "--starttls",
                           "--ca-file", h.cert("ca.pem"), "--user", "alice",
                           "--password-file", pw, "bob@example.org"],
                          stdin=b"Subject: auth\n\nx\n")
        expect_rc(rc, err, 0, "AUTH over STARTTLS")
        (m,) = srv.wait_messages(1)
        h.check(m.env["auth"] == "alice", repr(m.env))
        h.check(m.env["tls"].startswith("TLS"), repr(m.env))


def test_lmtp_per_recipient():
    """LMTP: one reply per recipient after the data; a refused one is
    printed, the others got the message, exit 67."""
    with h.CaptureServer(["--listen", "lmtp://127.0.0.1:0"]) as srv:
        rc, _, err = send(["--server", "lmtp://127.0.0.1:%d" % srv.port,
                           "bob@example.org", "fail-data@example.org",
                           "Carol <carol@[127.0.0.1]>"],
                          stdin=b"Subject: lmtp\n\nx\n")
        expect_rc(rc, err, 67, "LMTP with a data failure")
        h.check(err.strip() == "tern send: <fail-data@example.org> refused: "
                "550 5.2.1 Error: per-recipient test failure", repr(err))
        (m,) = srv.wait_messages(1)
        h.check(m.rcpt == ["bob@example.org", "fail-data@example.org",
                           "carol@[127.0.0.1]"], repr(m.rcpt))


# ---- errors --------------------------------------------------------------------

def test_connection_refused():
    port = h.free_port()
    rc, _, err = send(["--server", "smtp://127.0.0.1:%d" % port,
                       "bob@example.org"], stdin=b"Subject: x\n\nx\n")
    expect_rc(rc, err, 75, "connection refused")
    h.check(err.strip() == "tern send: connection refused by 127.0.0.1:%d"
            % port, "message: %r" % err)


def test_unknown_host():
    """A name under .invalid (RFC 6761) never resolves. Here resolution
    fails at once (no DNS): 68. Where a resolver would hang, --timeout
    bounds it and 75 (timed out) is the documented alternative."""
    rc, _, err = send(["--server", "smtp://no-such-host.invalid:25",
                       "--timeout", "10", "bob@example.org"],
                      stdin=b"Subject: x\n\nx\n")
    h.check(rc in (68, 75), "unknown host: exit %d; %r" % (rc, err))
    if rc == 68:
        h.check(err.startswith("tern send: cannot resolve the host name of "
                               "no-such-host.invalid:25"), repr(err))
    h.check(err.count("\n") == 1, "one line expected: %r" % err)


def test_all_recipients_refused():
    with h.CaptureServer(["--listen", "smtp://127.0.0.1:0"]) as srv:
        rc, _, err = send(["--server", server_url(srv),
                           "reject-rcpt1@example.org",
                           "reject-rcpt2@example.org"],
                          stdin=b"Subject: x\n\nx\n")
        expect_rc(rc, err, 67, "all recipients refused")
        lines = err.strip().split("\n")
        h.check(len(lines) == 2, "two lines expected: %r" % err)
        h.check(lines[0].startswith("tern send: <reject-rcpt1@example.org> "
                                    "refused: 550 5.1.1 "), repr(lines))
        h.check(srv.eml_count() == 0, "a message was stored")


def test_some_recipients_refused():
    """No queue: delivered to the accepted one, the refused one printed,
    exit 67."""
    with h.CaptureServer(["--listen", "smtp://127.0.0.1:0"]) as srv:
        rc, _, err = send(["--server", server_url(srv), "bob@example.org",
                           "reject-rcpt@example.org"],
                          stdin=b"Subject: x\n\nx\n")
        expect_rc(rc, err, 67, "one recipient refused")
        h.check(err.startswith("tern send: <reject-rcpt@example.org> "
                               "refused: 550 5.1.1"), repr(err))
        (m,) = srv.wait_messages(1)
        h.check(m.rcpt == ["bob@example.org"], repr(m.rcpt))


class FakeSMTP(socketserver.StreamRequestHandler):
    """A scripted server: replies from self.server.script by command."""

    def handle(self):
        sc = self.server.script
        self.wfile.write(sc.get("greeting", b"220 fake ESMTP\r\n"))
        while True:
            line = self.rfile.readline(1024)
            if not line:
                return
            verb = line.split(b" ")[0].split(b":")[0].strip().upper()
            if verb == b"QUIT":
                self.wfile.write(b"221 bye\r\n")
                return
            if verb == b"EHLO":
                self.wfile.write(sc.get("EHLO", b"250-fake\r\n250 8BITMIME\r\n"))
            elif verb == b"DATA":
                self.wfile.write(sc.get("DATA", b"354 go\r\n"))
                if sc.get("DATA", b"354").startswith(b"354"):
                    while self.rfile.readline(100000) not in (b".\r\n", b""):
                        pass
                    self.wfile.write(sc.get("END", b"250 ok\r\n"))
            else:
                self.wfile.write(sc.get(verb.decode(), b"250 ok\r\n"))


class Fake:
    def __init__(self, **script):
        socketserver.ThreadingTCPServer.allow_reuse_address = True
        self.srv = socketserver.ThreadingTCPServer(("127.0.0.1", 0), FakeSMTP)
        self.srv.daemon_threads = True
        self.srv.script = {k: v for k, v in script.items()}
        self.port = self.srv.server_address[1]

    def __enter__(self):
        self.t = threading.Thread(target=self.srv.serve_forever, daemon=True)
        self.t.start()
        return self

    def __exit__(self, *a):
        self.srv.shutdown()
        self.srv.server_close()
        return False


def test_4xx_tempfail():
    with Fake(RCPT=b"451 4.3.0 try later\r\n") as f:
        rc, _, err = send(["--server", "smtp://127.0.0.1:%d" % f.port,
                           "--timeout", "10", "bob@example.org"],
                          stdin=b"Subject: x\n\nx\n")
        expect_rc(rc, err, 75, "RCPT 451")
        h.check(err.strip() == "tern send: <bob@example.org> refused: "
                "451 4.3.0 try later", repr(err))
    with Fake(END=b"452 4.3.1 out of space\r\n") as f:
        rc, _, err = send(["--server", "smtp://127.0.0.1:%d" % f.port,
                           "--timeout", "10", "bob@example.org"],
                          stdin=b"Subject: x\n\nx\n")
        expect_rc(rc, err, 75, "end of data 452")
        h.check("452 4.3.1 out of space" in err, repr(err))
    with Fake(greeting=b"421 4.3.2 busy\r\n") as f:
        rc, _, err = send(["--server", "smtp://127.0.0.1:%d" % f.port,
                           "--timeout", "10", "bob@example.org"],
                          stdin=b"Subject: x\n\nx\n")
        expect_rc(rc, err, 75, "greeting 421")
        h.check(err.count("\n") == 1, repr(err))


def test_timeout():
    """A server that never greets: --timeout bounds the wait, exit 75."""
    with socket.socket() as ls:
        ls.bind(("127.0.0.1", 0))
        ls.listen(4)
        rc, _, err = send(["--server", "smtp://127.0.0.1:%d"
                           % ls.getsockname()[1], "--timeout", "1",
                           "bob@example.org"], stdin=b"Subject: x\n\nx\n",
                          timeout=20)
        expect_rc(rc, err, 75, "silent server")
        h.check(err.startswith("tern send: timed out talking to 127.0.0.1:")
                and err.count("\n") == 1, repr(err))


def test_5xx_unavailable():
    with Fake(MAIL=b"553 5.7.1 sender not allowed\r\n") as f:
        rc, _, err = send(["--server", "smtp://127.0.0.1:%d" % f.port,
                           "--timeout", "10", "-f", "x@example.org",
                           "bob@example.org"], stdin=b"Subject: x\n\nx\n")
        expect_rc(rc, err, 69, "MAIL 553")
        h.check(err.strip() == "tern send: sender <x@example.org> refused: "
                "553 5.7.1 sender not allowed", repr(err))


def test_starttls_not_offered():
    with h.CaptureServer(["--listen", "smtp://127.0.0.1:0"]) as srv:
        rc, _, err = send(["--server", server_url(srv), "--starttls",
                           "bob@example.org"], stdin=b"Subject: x\n\nx\n")
        expect_rc(rc, err, 78, "STARTTLS not offered")
        h.check(err.strip() == "tern send: server does not offer STARTTLS",
                repr(err))
        h.check(srv.eml_count() == 0, "a message was stored")


def test_tls_verification():
    self_signed = ["--tls-cert", h.cert("self.pem"),
                   "--tls-key", h.cert("self.key")]
    with h.CaptureServer(["--listen", "smtp://127.0.0.1:0", "--starttls"]
                         + self_signed) as srv:
        url = server_url(srv)
        rc, _, err = send(["--server", url, "--starttls", "bob@example.org"],
                          stdin=b"Subject: x\n\nx\n")
        expect_rc(rc, err, 78, "self-signed certificate")
        h.check(err.strip() == "tern send: TLS certificate verification "
                "failed: self-signed certificate", repr(err))
        # --no-verify goes on; so does opportunistic smtp:// without
        # --starttls (RFC 7435)
        rc, _, err = send(["--server", url, "--starttls", "--no-verify",
                           "bob@example.org"], stdin=b"Subject: x\n\nx\n")
        expect_rc(rc, err, 0, "--no-verify")
        rc, _, err = send(["--server", url, "bob@example.org"],
                          stdin=b"Subject: x\n\nx\n")
        expect_rc(rc, err, 0, "opportunistic")
        m1, m2 = srv.wait_messages(2)
        h.check(m1.env["tls"].startswith("TLS") and
                m2.env["tls"].startswith("TLS"), "%r %r" % (m1.env, m2.env))
    with h.CaptureServer(["--listen", "smtp://127.0.0.1:0", "--starttls"]
                         + h.tls_args()) as srv:
        rc, _, err = send(["--server", server_url(srv), "--starttls",
                           "--ca-file", h.cert("ca.pem"), "bob@example.org"],
                          stdin=b"Subject: x\n\nx\n")
        expect_rc(rc, err, 0, "verified with --ca-file")
        srv.wait_messages(1)


def test_bad_arguments():
    cases = [
        (["--bogus", "bob@example.org"], "unknown option"),
        (["-Z", "bob@example.org"], "unknown option"),
        ([], "no recipients"),
        (["-bs"], "-bs is not supported"),
        (["-bd"], "-bd is not supported"),
        (["-q30m"], "-q30m is not supported"),
        (["-bv"], "-bv is not supported"),
        (["-f"], "needs a value"),
        (["--user", "alice", "bob@example.org"], "go together"),
        (["--timeout", "soon", "bob@example.org"], "bad --timeout"),
        (["-f", "a@b@c", "bob@example.org"], "invalid sender"),
        (["bad address@example.org@x"], "invalid recipient"),
        (["--server", "gopher://x", "bob@example.org"], "invalid server URL"),
    ]
    for args, want in cases:
        rc, _, err = send(args, stdin=b"Subject: x\n\nx\n")
        expect_rc(rc, err, 64, " ".join(args) or "(no arguments)")
        h.check(want in err, "%r: message %r lacks %r" % (args, err, want))
    # -t finding nothing is a data error
    rc, _, err = send(["-t"], stdin=b"Subject: x\n\nx\n")
    expect_rc(rc, err, 65, "-t without recipients")
    h.check("no recipient addresses found" in err, repr(err))


def test_missing_password_file():
    rc, _, err = send(["--user", "alice", "--password-file",
                       "/nonexistent/pw", "bob@example.org"],
                      stdin=b"Subject: x\n\nx\n")
    expect_rc(rc, err, 66, "missing password file")
    h.check(err.strip() == "tern send: cannot read the password file "
            "/nonexistent/pw: No such file or directory", repr(err))


def test_sendmail_name_in_messages():
    d = h.tmpdir()
    link = os.path.join(d, "sendmail")
    os.symlink(tern(), link)
    rc, _, err = send(["-bs"], argv0=link)
    expect_rc(rc, err, 64, "sendmail -bs")
    h.check(err.startswith("sendmail: -bs is not supported"), repr(err))


if __name__ == "__main__":
    h.main([test_sendmail_t_i_bcc, test_t_adds_argument_recipients,
            test_resent_headers, test_f_and_F, test_lone_dot_ends_input,
            test_large_message_streams, test_verbose_prints_dialogue,
            test_auth_over_starttls, test_lmtp_per_recipient,
            test_connection_refused, test_timeout,
            test_unknown_host, test_all_recipients_refused,
            test_some_recipients_refused, test_4xx_tempfail,
            test_5xx_unavailable, test_starttls_not_offered,
            test_tls_verification, test_bad_arguments,
            test_missing_password_file, test_sendmail_name_in_messages])
