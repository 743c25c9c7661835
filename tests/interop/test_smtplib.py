#!/usr/bin/env python3
"""Python smtplib against capture_server: plain, STARTTLS, AUTH (PLAIN,
LOGIN, CRAM-MD5 over STARTTLS), SMTPUTF8, 8BITMIME, a 20 MiB message,
several messages on one connection, dot-stuffing round trip."""

import os
import smtplib
import ssl

import harness as h


def tls_context():
    ctx = ssl.create_default_context(cafile=h.cert("ca.pem"))
    ctx.check_hostname = True
    return ctx


def msg(subject, body=b"Hello.\r\n"):
    return (b"From: a@example.org\r\nTo: b@example.org\r\nSubject: "
            + subject.encode() + b"\r\n\r\n" + body)


def expected(m):
    """What smtplib sends (bytes are not EOL-fixed): m plus a final CRLF
    when missing."""
    return m if m.endswith(b"\r\n") else m + b"\r\n"


def test_plain():
    with h.CaptureServer(["--listen", "smtp://127.0.0.1:0"]) as srv:
        m = msg("plain")
        with smtplib.SMTP("127.0.0.1", srv.port, timeout=10) as c:
            c.ehlo("client.example")
            h.check(c.has_extn("pipelining") and c.has_extn("8bitmime"),
                    "EHLO lacks PIPELINING/8BITMIME: %r" % c.esmtp_features)
            h.check(not c.has_extn("starttls"),
                    "STARTTLS offered without certificates")
            refused = c.sendmail("a@example.org",
                                 ["b@example.org", "c@example.org"], m)
            h.check(refused == {}, "refused: %r" % refused)
        (s,) = srv.wait_messages(1)
        h.assert_bytes_equal(s.eml, expected(m))
        h.check(s.env["from"] == "a@example.org", s.env_text)
        h.check(s.rcpt == ["b@example.org", "c@example.org"], s.env_text)
        h.check(s.env["peer"] == "127.0.0.1", s.env_text)
        h.check(s.env["tls"] == "", "tls without STARTTLS: " + s.env_text)
        h.check(int(s.env["size"]) == len(s.eml), s.env_text)


def test_starttls():
    with h.CaptureServer(["--listen", "smtp://127.0.0.1:0", "--starttls"]
                         + h.tls_args()) as srv:
        m = msg("starttls")
        with smtplib.SMTP("localhost", srv.port, timeout=10) as c:
            c.ehlo()
            h.check(c.has_extn("starttls"), "no STARTTLS: %r"
                    % c.esmtp_features)
            code, _ = c.starttls(context=tls_context())
            h.check(code == 220, "STARTTLS answered %d" % code)
            c.ehlo()
            h.check(not c.has_extn("starttls"),
                    "STARTTLS offered again inside TLS")
            c.sendmail("a@example.org", ["b@example.org"], m)
        (s,) = srv.wait_messages(1)
        h.assert_bytes_equal(s.eml, expected(m))
        h.check(s.env["tls"].startswith("TLSv1."), "tls: " + s.env_text)


def auth_server(extra=()):
    d = h.tmpdir(prefix="tern-users-")
    users = os.path.join(d, "users")
    with open(users, "w") as f:
        f.write("alice:s3cret pass\nbob:hunter2\n")
    return h.CaptureServer(["--listen", "smtp://127.0.0.1:0", "--starttls",
                            "--auth-required"] + h.tls_args()
                           + ["--users", users, "--auth-mechs",
                              "PLAIN LOGIN CRAM-MD5",
                              "--auth-fail-delay-ms", "10"] + list(extra))


def test_auth_mechanisms():
    srv = auth_server()
    with srv:
        # AUTH is not offered, and MAIL is refused, before TLS
        with smtplib.SMTP("localhost", srv.port, timeout=10) as c:
            c.ehlo()
            h.check(not c.has_extn("auth"),
                    "AUTH offered before TLS: %r" % c.esmtp_features)
            code, resp = c.mail("a@example.org")
            h.check(code == 530, "MAIL without AUTH: %d %r" % (code, resp))
        for i, mech in enumerate(["PLAIN", "LOGIN", "CRAM-MD5"]):
            m = msg("auth " + mech)
            with smtplib.SMTP("localhost", srv.port, timeout=10) as c:
                c.starttls(context=tls_context())
                c.ehlo()
                offered = c.esmtp_features.get("auth", "").upper().split()
                h.check(mech in offered, "%s not in AUTH %r"
                        % (mech, offered))
                c.user, c.password = "alice", "s3cret pass"
                code, resp = c.auth(mech, getattr(c, "auth_" + mech.lower()
                                                  .replace("-", "_")))
                h.check(code == 235, "AUTH %s: %d %r" % (mech, code, resp))
                c.sendmail("alice@example.org", ["b@example.org"], m)
            msgs = srv.wait_messages(i + 1)
            h.assert_bytes_equal(msgs[-1].eml, expected(m))
            h.check(msgs[-1].env["auth"] == "alice",
                    "auth user: " + msgs[-1].env_text)
            h.check(msgs[-1].env["tls"].startswith("TLSv1."),
                    msgs[-1].env_text)
        # a wrong password is refused (535) for each mechanism
        for mech in ["PLAIN", "LOGIN", "CRAM-MD5"]:
            with smtplib.SMTP("localhost", srv.port, timeout=10) as c:
                c.starttls(context=tls_context())
                c.ehlo()
                c.user, c.password = "alice", "wrong"
                try:
                    c.auth(mech, getattr(c, "auth_" + mech.lower()
                                         .replace("-", "_")))
                except smtplib.SMTPAuthenticationError as e:
                    h.check(e.smtp_code == 535, "bad password: %r" % (e,))
                else:
                    h.fail("AUTH %s with a wrong password succeeded" % mech)
        h.check(len(srv.messages()) == 3, "unexpected extra messages")


def test_smtputf8():
    with h.CaptureServer(["--listen", "smtp://127.0.0.1:0"]) as srv:
        frm = "jos\u00e9@example.org"
        to = "\u7528\u6237@\u4f8b\u5b50.example"
        m = ("From: " + frm + "\r\nTo: " + to + "\r\nSubject: caf\u00e9"
             "\r\n\r\nUnicode body \u2603\r\n").encode("utf-8")
        with smtplib.SMTP("127.0.0.1", srv.port, timeout=10) as c:
            c.ehlo()
            h.check(c.has_extn("smtputf8"), "no SMTPUTF8")
            c.sendmail(frm, [to], m, mail_options=["SMTPUTF8"])
        (s,) = srv.wait_messages(1)
        h.assert_bytes_equal(s.eml, expected(m))
        h.check(s.env["from"] == frm, "from: %r" % s.env["from"])
        h.check(s.rcpt == [to], "rcpt: %r" % s.rcpt)
        h.check(s.env["smtputf8"] == "1", s.env_text)


def test_8bitmime():
    with h.CaptureServer(["--listen", "smtp://127.0.0.1:0"]) as srv:
        body = "Gr\u00fc\u00dfe aus K\u00f6ln, \u00e7a va?\r\n".encode(
            "latin-1") + bytes(range(0x80, 0x100)) + b"\r\n"
        m = msg("8bit", body)
        with smtplib.SMTP("127.0.0.1", srv.port, timeout=10) as c:
            c.ehlo()
            c.sendmail("a@example.org", ["b@example.org"], m,
                       mail_options=["BODY=8BITMIME"])
        (s,) = srv.wait_messages(1)
        h.assert_bytes_equal(s.eml, expected(m))
        h.check(s.env["body"] == "8BITMIME", s.env_text)


def test_big_message():
    with h.CaptureServer(["--listen", "smtp://127.0.0.1:0"]) as srv:
        line = (b"0123456789abcdefghijklmnopqrstuvwxyz" * 3)[:76] + b"\r\n"
        n = (20 * 1024 * 1024) // len(line) + 1
        m = msg("big", line * n)
        h.check(len(m) > 20 * 1024 * 1024, "message too small")
        with smtplib.SMTP("127.0.0.1", srv.port, timeout=60) as c:
            c.sendmail("a@example.org", ["b@example.org"], m)
        (s,) = srv.wait_messages(1, timeout=30)
        h.assert_bytes_equal(s.eml, expected(m))


def test_many_on_one_connection():
    with h.CaptureServer(["--listen", "smtp://127.0.0.1:0"]) as srv:
        sent = []
        with smtplib.SMTP("127.0.0.1", srv.port, timeout=10) as c:
            for i in range(10):
                m = msg("message %d" % i, b"number %d\r\n" % i * (i + 1))
                c.sendmail("a%d@example.org" % i, ["b%d@example.org" % i], m)
                sent.append(m)
                if i == 4:
                    c.rset()
        msgs = srv.wait_messages(10)
        ids = {s.env["id"] for s in msgs}
        h.check(len(ids) == 1, "not one session: %r" % ids)
        for i, (s, m) in enumerate(zip(msgs, sent)):
            h.assert_bytes_equal(s.eml, expected(m), "message %d" % i)
            h.check(s.env["from"] == "a%d@example.org" % i, s.env_text)
            h.check(s.rcpt == ["b%d@example.org" % i], s.env_text)


def test_dot_stuffing():
    with h.CaptureServer(["--listen", "smtp://127.0.0.1:0"]) as srv:
        m = (b".starts with a dot\r\n.\r\n..\r\n...\r\n. space\r\n"
             b"middle . dot\r\n.\r\n\r\n.\r\nend.\r\n.")
        with smtplib.SMTP("127.0.0.1", srv.port, timeout=10) as c:
            c.sendmail("a@example.org", ["b@example.org"], m)
        (s,) = srv.wait_messages(1)
        h.assert_bytes_equal(s.eml, expected(m))


if __name__ == "__main__":
    h.main([test_plain, test_starttls, test_auth_mechanisms, test_smtputf8,
            test_8bitmime, test_big_message, test_many_on_one_connection,
            test_dot_stuffing])
