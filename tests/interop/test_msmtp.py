#!/usr/bin/env python3
"""msmtp against capture_server, configured by a file: plain, STARTTLS
with tls_trust_file, implicit TLS (tls_starttls off), AUTH (plain and
cram-md5). The message goes on stdin with LF line ends; msmtp sends it
with CRLF, so the stored bytes must be crlf(message)."""

import os

import harness as h

MSG = (b"From: a@example.org\nTo: b@example.org\n"
       b"Date: Mon, 01 Jan 2024 00:00:00 +0000\n"
       b"Message-ID: <msmtp-test@example.org>\nSubject: msmtp\n\n"
       b".dot first\n.\n..\nBody text\n" + b"y" * 900 + b"\n")


def msmtp(port, **opts):
    exe = h.require_tool("msmtp")
    d = h.tmpdir(prefix="tern-msmtp-")
    cfg = os.path.join(d, "msmtprc")
    conf = {"host": "localhost", "port": str(port), "from": "a@example.org",
            "tls": "off", "auth": "off", "timeout": "20",
            "logfile": os.path.join(d, "log")}
    conf.update(opts)
    with open(cfg, "w") as f:
        f.write("defaults\n")
        f.write("account test\n")
        for k, v in conf.items():
            f.write("%s %s\n" % (k, v))
        f.write("account default : test\n")
    os.chmod(cfg, 0o600)
    p = h.run([exe, "-C", cfg, "b@example.org", "c@example.org"],
              input=MSG, timeout=60, check_rc=False)
    if p.returncode != 0:
        log = ""
        if os.path.exists(conf["logfile"]):
            log = open(conf["logfile"]).read()
        h.fail("msmtp exited %d: %s\n%s\nlog:\n%s"
               % (p.returncode, p.stdout.decode(errors="replace"),
                  p.stderr.decode(errors="replace"), log))
    return p


def check(srv, tls, auth=""):
    (s,) = srv.wait_messages(1)
    h.assert_bytes_equal(s.eml, h.crlf(MSG))
    h.check(s.env["from"] == "a@example.org", s.env_text)
    h.check(s.rcpt == ["b@example.org", "c@example.org"], s.env_text)
    h.check(s.env["tls"].startswith("TLSv1.") == tls, s.env_text)
    h.check(s.env["auth"] == auth, s.env_text)


def test_plain():
    with h.CaptureServer(["--listen", "smtp://127.0.0.1:0"]) as srv:
        msmtp(srv.port)
        check(srv, False)


def test_starttls():
    with h.CaptureServer(["--listen", "smtp://127.0.0.1:0", "--starttls"]
                         + h.tls_args()) as srv:
        msmtp(srv.port, tls="on", tls_starttls="on",
              tls_trust_file=h.cert("ca.pem"))
        check(srv, True)


def test_implicit_tls():
    with h.CaptureServer(["--listen", "smtps://127.0.0.1:0"]
                         + h.tls_args()) as srv:
        msmtp(srv.port, tls="on", tls_starttls="off",
              tls_trust_file=h.cert("ca.pem"))
        check(srv, True)


def users_file():
    d = h.tmpdir(prefix="tern-users-")
    p = os.path.join(d, "users")
    with open(p, "w") as f:
        f.write("erin:Secr3t!\n")
    return p


def test_auth():
    for mech in ("plain", "cram-md5", "login"):
        with h.CaptureServer(["--listen", "smtp://127.0.0.1:0", "--starttls",
                              "--auth-required"] + h.tls_args()
                             + ["--users", users_file(), "--auth-mechs",
                                "PLAIN LOGIN CRAM-MD5"]) as srv:
            msmtp(srv.port, tls="on", tls_starttls="on",
                  tls_trust_file=h.cert("ca.pem"), auth=mech, user="erin",
                  password="Secr3t!")
            check(srv, True, auth="erin")


if __name__ == "__main__":
    h.main([test_plain, test_starttls, test_implicit_tls, test_auth])
