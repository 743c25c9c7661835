#!/usr/bin/env python3
"""swaks against capture_server: PIPELINING, STARTTLS with certificate
verification, AUTH PLAIN / LOGIN / CRAM-MD5, implicit TLS (smtps).

swaks sends --data @FILE with its line ends turned into CRLF, dot-stuffed,
followed by CRLF "." CRLF; so the stored bytes must be crlf(FILE) + CRLF.
"""

import os

import harness as h

BODY = (b"From: a@example.org\nTo: b@example.org\nSubject: swaks test\n\n"
        b".leading dot\n..two dots\nplain line\n.\n"
        b"8bit: \xc3\xa9t\xc3\xa9\nlast line without newline")


def data_file():
    d = h.tmpdir(prefix="tern-swaks-")
    p = os.path.join(d, "msg.eml")
    with open(p, "wb") as f:
        f.write(BODY)
    return p


def expected():
    return h.crlf(BODY) + b"\r\n"


def swaks(port, *extra, host="127.0.0.1"):
    exe = h.require_tool("swaks")
    cmd = [exe, "--server", "%s:%d" % (host, port), "--from", "a@example.org",
           "--to", "b@example.org", "--helo", "swaks.example",
           "--data", "@" + data_file(), "--timeout", "20"] + list(extra)
    return h.run(cmd, timeout=60)


def check_stored(srv, n, auth="", tls=False):
    msgs = srv.wait_messages(n)
    s = msgs[-1]
    h.assert_bytes_equal(s.eml, expected())
    h.check(s.env["from"] == "a@example.org" and s.rcpt == ["b@example.org"],
            s.env_text)
    h.check(s.env["auth"] == auth, "auth: " + s.env_text)
    h.check(s.env["tls"].startswith("TLSv1.") == tls, "tls: " + s.env_text)


def test_pipelining():
    with h.CaptureServer(["--listen", "smtp://127.0.0.1:0"]) as srv:
        p = swaks(srv.port, "--pipeline")
        out = p.stdout.decode("utf-8", "replace")
        h.check("PIPELINING" in out, "server did not offer PIPELINING:\n"
                + out)
        check_stored(srv, 1)


def test_starttls_verify():
    with h.CaptureServer(["--listen", "smtp://127.0.0.1:0", "--starttls"]
                         + h.tls_args()) as srv:
        swaks(srv.port, "--tls", "--tls-verify", "--tls-ca-path",
              h.cert("ca.pem"), "--pipeline", host="localhost")
        check_stored(srv, 1, tls=True)


def test_starttls_verify_fails_with_wrong_ca():
    # the same client, trusting only the self-signed cert: must fail
    with h.CaptureServer(["--listen", "smtp://127.0.0.1:0", "--starttls"]
                         + h.tls_args()) as srv:
        exe = h.require_tool("swaks")
        p = h.run([exe, "--server", "localhost:%d" % srv.port, "--from",
                   "a@example.org", "--to", "b@example.org", "--tls",
                   "--tls-verify", "--tls-ca-path", h.cert("self.pem"),
                   "--timeout", "20"], timeout=60, check_rc=False)
        h.check(p.returncode != 0, "swaks verified a chain it should not")
        h.check(srv.messages() == [], "message stored after failed TLS")


def test_auth():
    d = h.tmpdir(prefix="tern-users-")
    users = os.path.join(d, "users")
    with open(users, "w") as f:
        f.write("carol:pa55word\n")
    with h.CaptureServer(["--listen", "smtp://127.0.0.1:0", "--starttls",
                          "--auth-required"] + h.tls_args()
                         + ["--users", users, "--auth-mechs",
                            "PLAIN LOGIN CRAM-MD5"]) as srv:
        for i, mech in enumerate(["PLAIN", "LOGIN", "CRAM-MD5"]):
            swaks(srv.port, "--tls", "--tls-verify", "--tls-ca-path",
                  h.cert("ca.pem"), "--auth", mech, "--auth-user", "carol",
                  "--auth-password", "pa55word", host="localhost")
            check_stored(srv, i + 1, auth="carol", tls=True)


def test_tls_on_connect():
    with h.CaptureServer(["--listen", "smtps://127.0.0.1:0"]
                         + h.tls_args()) as srv:
        swaks(srv.port, "--tls-on-connect", "--tls-verify", "--tls-ca-path",
              h.cert("ca.pem"), host="localhost")
        check_stored(srv, 1, tls=True)


if __name__ == "__main__":
    h.main([test_pipelining, test_starttls_verify,
            test_starttls_verify_fails_with_wrong_ca, test_auth,
            test_tls_on_connect])
