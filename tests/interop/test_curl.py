#!/usr/bin/env python3
"""curl's SMTP client against capture_server: smtp:// (plain),
smtp:// with --ssl-reqd (STARTTLS) and smtps:// (implicit TLS), with the
test CA; AUTH through --user. curl sends the upload as is (the file uses
CRLF), dot-stuffed, and ends it with CRLF "." CRLF."""

import os

import harness as h

BODY = (b"From: a@example.org\r\nTo: b@example.org\r\nSubject: curl\r\n\r\n"
        b"line one\r\n.\r\n.leading dot\r\n" + b"x" * 998 + b"\r\n"
        + b"last\r\n")


def body_file():
    d = h.tmpdir(prefix="tern-curl-")
    p = os.path.join(d, "msg.eml")
    with open(p, "wb") as f:
        f.write(BODY)
    return p


def curl(url, *extra):
    exe = h.require_tool("curl")
    return h.run([exe, "--silent", "--show-error", "--max-time", "30",
                  url, "--mail-from", "a@example.org",
                  "--mail-rcpt", "b@example.org",
                  "--mail-rcpt", "c@example.org",
                  "-T", body_file()] + list(extra), timeout=60)


def check(srv, tls, auth=""):
    (s,) = srv.wait_messages(1)
    h.assert_bytes_equal(s.eml, BODY)
    h.check(s.rcpt == ["b@example.org", "c@example.org"], s.env_text)
    h.check(s.env["tls"].startswith("TLSv1.") == tls, s.env_text)
    h.check(s.env["auth"] == auth, s.env_text)


def test_smtp():
    with h.CaptureServer(["--listen", "smtp://127.0.0.1:0"]) as srv:
        curl("smtp://127.0.0.1:%d/curl.example" % srv.port)
        check(srv, False)


def test_starttls():
    with h.CaptureServer(["--listen", "smtp://127.0.0.1:0", "--starttls"]
                         + h.tls_args()) as srv:
        curl("smtp://localhost:%d/curl.example" % srv.port, "--ssl-reqd",
             "--cacert", h.cert("ca.pem"))
        check(srv, True)


def test_smtps():
    with h.CaptureServer(["--listen", "smtps://127.0.0.1:0"]
                         + h.tls_args()) as srv:
        curl("smtps://localhost:%d/curl.example" % srv.port,
             "--cacert", h.cert("ca.pem"))
        check(srv, True)


def test_smtps_auth():
    d = h.tmpdir(prefix="tern-users-")
    users = os.path.join(d, "users")
    with open(users, "w") as f:
        f.write("dave:c0rrect-horse\n")
    with h.CaptureServer(["--listen", "smtps://127.0.0.1:0",
                          "--auth-required"] + h.tls_args()
                         + ["--users", users]) as srv:
        curl("smtps://localhost:%d/curl.example" % srv.port,
             "--cacert", h.cert("ca.pem"), "--user", "dave:c0rrect-horse")
        check(srv, True, auth="dave")


def test_smtps_wrong_ca_fails():
    with h.CaptureServer(["--listen", "smtps://127.0.0.1:0"]
                         + h.tls_args()) as srv:
        exe = h.require_tool("curl")
        p = h.run([exe, "--silent", "--max-time", "30",
                   "smtps://localhost:%d/x" % srv.port, "--mail-from",
                   "a@example.org", "--mail-rcpt", "b@example.org", "-T",
                   body_file(), "--cacert", h.cert("self.pem")],
                  timeout=60, check_rc=False)
        h.check(p.returncode != 0, "curl accepted an untrusted chain")
        h.check(srv.messages() == [], "stored a message anyway")


if __name__ == "__main__":
    h.main([test_smtp, test_starttls, test_smtps, test_smtps_auth,
            test_smtps_wrong_ca_fails])
