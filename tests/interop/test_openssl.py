#!/usr/bin/env python3
"""OpenSSL s_client against capture_server: -starttls smtp and implicit
TLS, verifying the chain (-CAfile, -verify_return_error) and the host
name, a whole session driven from stdin (-crlf turns its LF into CRLF)."""

import harness as h

BODY_LINES = ["From: a@example.org", "To: b@example.org",
              "Subject: s_client", "", "..escaped dot", "body line", "end"]


def session():
    lines = ["EHLO s-client.example", "MAIL FROM:<a@example.org>",
             "RCPT TO:<b@example.org>", "DATA"] + BODY_LINES + [".", "QUIT"]
    return ("\n".join(lines) + "\n").encode()


def expected():
    # the client's bytes after -crlf, dot-unstuffed by the server
    body = [l[1:] if l.startswith(".") else l for l in BODY_LINES]
    return ("\r\n".join(body) + "\r\n").encode()


def s_client(port, *mode, ca="ca.pem"):
    exe = h.require_tool("openssl")
    return h.run([exe, "s_client"] + list(mode)
                 + ["-connect", "127.0.0.1:%d" % port,
                    "-CAfile", h.cert(ca), "-verify_return_error",
                    "-verify_hostname", "localhost", "-servername",
                    "localhost", "-crlf", "-quiet"],
                 input=session(), timeout=30, check_rc=False)


def check_session(p, srv):
    out = p.stdout.decode("utf-8", "replace")
    err = p.stderr.decode("utf-8", "replace")
    h.check("250 2.0.0" in out and "221 2.0.0" in out,
            "no 250 after the data / no 221:\n" + out + err)
    (s,) = srv.wait_messages(1)
    h.assert_bytes_equal(s.eml, expected())
    h.check(s.env["tls"].startswith("TLSv1."), s.env_text)
    h.check(s.env["sni"] == "localhost", "sni: " + s.env_text)
    # last: a clean TLS close. After "221" the server must send its
    # close_notify (RFC 8446 §6.1) before closing TCP; OpenSSL 3 reports
    # "unexpected eof while reading" and exits 1 otherwise.
    h.check(p.returncode == 0, "s_client exited %d (after 221: %s)\n%s"
            % (p.returncode, "no close_notify from the server"
               if "unexpected eof" in err else "?", err))


def test_starttls():
    with h.CaptureServer(["--listen", "smtp://127.0.0.1:0", "--starttls"]
                         + h.tls_args()) as srv:
        check_session(s_client(srv.port, "-starttls", "smtp"), srv)


def test_implicit_tls():
    with h.CaptureServer(["--listen", "smtps://127.0.0.1:0"]
                         + h.tls_args()) as srv:
        check_session(s_client(srv.port), srv)


def test_untrusted_chain_refused():
    with h.CaptureServer(["--listen", "smtp://127.0.0.1:0", "--starttls"]
                         + h.tls_args()) as srv:
        p = s_client(srv.port, "-starttls", "smtp", ca="self.pem")
        h.check(p.returncode != 0, "s_client accepted a chain it does not "
                "trust:\n" + p.stdout.decode(errors="replace"))
        h.check(srv.messages() == [], "stored a message anyway")


if __name__ == "__main__":
    h.main([test_starttls, test_implicit_tls, test_untrusted_chain_refused])
