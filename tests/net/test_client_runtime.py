#!/usr/bin/env python3
"""The client runtime (tern_client, through tests/net/client_probe) against
our own capture_server: plain SMTP byte-exact, STARTTLS and smtps:// with
certificate and host-name verification, AUTH with every mechanism, the
error texts of failed connections, LMTP over a unix socket."""

import os
import socket
import subprocess

import harness as h

MSG = (b"From: a@example.org\r\nTo: b@example.org\r\nSubject: client\r\n"
       b"\r\n.leading dot\r\n..two dots\r\nplain line\r\n.\r\n"
       + b"x" * 998 + b"\r\nend\r\n")
USERS = {"alice": "wonder land", "bob": "b0b"}


def probe_path():
    p = os.environ.get("TERN_CLIENT_PROBE")
    if not p:  # next to capture_server in the build tree
        p = os.path.join(os.path.dirname(h.capture_server_path()),
                         "client_probe")
    h.check(os.access(p, os.X_OK), "client_probe not executable: %s" % p)
    return p


def data_file(body=MSG):
    d = h.tmpdir()
    p = os.path.join(d, "msg.eml")
    with open(p, "wb") as f:
        f.write(body)
    return p


def users_file():
    d = h.tmpdir()
    p = os.path.join(d, "users")
    with open(p, "w") as f:
        for u, pw in USERS.items():
            f.write("%s:%s\n" % (u, pw))
    return p


def probe(url, rcpts=("b@example.org",), frm="a@example.org", body=MSG,
          args=(), timeout=60, expect_rc=0):
    cmd = [probe_path(), "--url", url, "--from", frm, "--data",
           data_file(body), "--timeout-ms", "10000"]
    for r in rcpts:
        cmd += ["--to", r]
    cmd += list(args)
    p = h.run(cmd, timeout=timeout, check_rc=False)
    out = p.stdout.decode("utf-8", "replace")
    err = p.stderr.decode("utf-8", "replace")
    if expect_rc is not None and p.returncode != expect_rc:
        h.fail("client_probe exited %d (expected %d)\ncommand: %s\n"
               "stdout:\n%s\nstderr:\n%s" % (p.returncode, expect_rc,
                                             " ".join(cmd), out, err[-3000:]))
    return out


def connect_line(out):
    for line in out.splitlines():
        if line.startswith("connect "):
            return line
    h.fail("no connect line in:\n" + out)


def tls_server(extra=(), listen="smtp://127.0.0.1:0", starttls=True,
               cert="server"):
    args = ["--listen", listen]
    if starttls:
        args.append("--starttls")
    args += list(extra)
    args += ["--tls-cert", h.cert(cert + ".pem"),
             "--tls-key", h.cert(cert + ".key")]
    return h.CaptureServer(args)


# ---- plain -------------------------------------------------------------------

def test_plain_byte_exact():
    with h.CaptureServer(["--listen", "smtp://127.0.0.1:0"]) as srv:
        out = probe("smtp://127.0.0.1:%d" % srv.port,
                    rcpts=["b@example.org", "c@example.org"])
        h.check("connect ok tls=none" in out, out)
        h.check("message 1 code=250 local=0 accepted=2 delivered=2" in out,
                out)
        (m,) = srv.wait_messages(1)
        h.assert_bytes_equal(m.eml, MSG)
        h.check(m.env["from"] == "a@example.org", m.env_text)
        h.check(m.rcpt == ["b@example.org", "c@example.org"], m.env_text)


def test_body_normalised():
    # bare LF lines and no final newline: sent CRLF-normalised, stuffed
    body = b"Subject: lf\n\n.dot\nline\rcr\nlast"
    with h.CaptureServer(["--listen", "smtp://127.0.0.1:0"]) as srv:
        probe("smtp://127.0.0.1:%d" % srv.port, body=body)
        (m,) = srv.wait_messages(1)
        h.assert_bytes_equal(m.eml, b"Subject: lf\r\n\r\n.dot\r\nline\r\ncr"
                             b"\r\nlast\r\n")


def test_rejected_recipient():
    with h.CaptureServer(["--listen", "smtp://127.0.0.1:0"]) as srv:
        out = probe("smtp://127.0.0.1:%d" % srv.port,
                    rcpts=["reject-rcpt@example.org", "ok@example.org"],
                    expect_rc=1)
        h.check("rcpt 0 reject-rcpt@example.org 550" in out, out)
        h.check("rcpt 1 ok@example.org 250" in out, out)
        (m,) = srv.wait_messages(1)
        h.check(m.rcpt == ["ok@example.org"], m.env_text)


def test_several_messages_one_connection():
    with h.CaptureServer(["--listen", "smtp://127.0.0.1:0"]) as srv:
        out = probe("smtp://127.0.0.1:%d" % srv.port, args=["--count", "25"])
        h.check("done messages=25 complete=25" in out, out)
        msgs = srv.wait_messages(25)
        ids = {m.env["id"] for m in msgs}
        h.check(len(ids) == 1, "expected one session, got %d" % len(ids))
        for m in msgs:
            h.assert_bytes_equal(m.eml, MSG)


def test_big_message_backpressure():
    body = b"Subject: big\r\n\r\n" + (b"y" * 76 + b"\r\n") * 60000  # ~4.6 MB
    with h.CaptureServer(["--listen", "smtp://127.0.0.1:0"]) as srv:
        probe("smtp://127.0.0.1:%d" % srv.port, body=body)
        (m,) = srv.wait_messages(1, timeout=30)
        h.assert_bytes_equal(m.eml, body)


def test_connect_refused():
    port = h.free_port()
    out = probe("smtp://127.0.0.1:%d" % port, expect_rc=1)
    line = connect_line(out)
    h.check(line == "connect error TERN_ECONNECT: connect 127.0.0.1:%d: "
            "connection refused" % port, line)


def test_resolve_failure():
    out = probe("smtp://no-such-host.invalid:25", expect_rc=1)
    line = connect_line(out)
    h.check(line.startswith("connect error TERN_ERESOLVE: resolve "
                            "no-such-host.invalid: "), line)


def test_greeting_timeout():
    # a listener that accepts and says nothing
    with socket.socket() as ls:
        ls.bind(("127.0.0.1", 0))
        ls.listen(1)
        port = ls.getsockname()[1]
        cmd = [probe_path(), "--url", "smtp://127.0.0.1:%d" % port,
               "--from", "a@example.org", "--to", "b@example.org",
               "--data", data_file(), "--timeout-ms", "700"]
        p = h.run(cmd, timeout=20, check_rc=False)
        out = p.stdout.decode()
        h.check(p.returncode == 1, out)
        line = connect_line(out)
        h.check(line.startswith("connect error TERN_ETIMEDOUT: timed out "
                                "waiting for"), line)


# ---- TLS ---------------------------------------------------------------------

def test_starttls_with_test_ca():
    with tls_server() as srv:
        out = probe("smtp+starttls://127.0.0.1:%d" % srv.port,
                    args=["--ca-file", h.cert("ca.pem")])
        h.check("connect ok tls=TLSv1.3" in out, out)
        (m,) = srv.wait_messages(1)
        h.check(m.env["tls"] == "TLSv1.3", m.env_text)
        h.assert_bytes_equal(m.eml, MSG)
        # smtp:// upgrades when offered (opportunistic), by host name: SNI
        out = probe("smtp://localhost:%d" % srv.port,
                    args=["--ca-file", h.cert("ca.pem")])
        h.check("connect ok tls=TLSv1.3" in out, out)
        msgs = srv.wait_messages(2)
        h.check(msgs[1].env["sni"] == "localhost", msgs[1].env_text)


def test_starttls_required_not_offered():
    with h.CaptureServer(["--listen", "smtp://127.0.0.1:0"]) as srv:
        out = probe("smtp+starttls://127.0.0.1:%d" % srv.port,
                    args=["--ca-file", h.cert("ca.pem")], expect_rc=1)
        line = connect_line(out)
        h.check(line == "connect error TERN_ETLS: server does not offer "
                "STARTTLS", line)
        h.check(srv.eml_count() == 0, "a message was stored")


def test_self_signed_refused():
    with tls_server(cert="self") as srv:
        url = "smtp+starttls://127.0.0.1:%d" % srv.port
        out = probe(url, args=["--ca-file", h.cert("ca.pem")], expect_rc=1)
        line = connect_line(out)
        h.check(line == "connect error TERN_ETLS: TLS: certificate verify "
                "failed: self-signed certificate", line)
        h.check(srv.eml_count() == 0, "a message was stored")
        # with its own certificate as the trust anchor it verifies
        out = probe(url, args=["--ca-file", h.cert("self.pem")])
        h.check("connect ok tls=TLSv1.3" in out, out)
        # verification off: goes on
        out = probe(url, args=["--no-verify"])
        h.check("connect ok tls=TLSv1.3" in out, out)
        srv.wait_messages(2)


def test_wrong_host_name_refused():
    with tls_server() as srv:
        url = "smtp+starttls://127.0.0.1:%d" % srv.port
        out = probe(url, args=["--ca-file", h.cert("ca.pem"),
                               "--server-name", "wrong.example"],
                    expect_rc=1)
        line = connect_line(out)
        h.check(line == "connect error TERN_ETLS: TLS: certificate verify "
                "failed: hostname mismatch", line)
        h.check(srv.eml_count() == 0, "a message was stored")
        # the system CAs do not know the test CA
        out = probe(url, expect_rc=1)
        h.check("TERN_ETLS: TLS: certificate verify failed:" in
                connect_line(out), out)


def test_smtps():
    with tls_server(listen="smtps://127.0.0.1:0", starttls=False) as srv:
        out = probe("smtps://127.0.0.1:%d" % srv.port,
                    args=["--ca-file", h.cert("ca.pem")])
        h.check("connect ok tls=TLSv1.3" in out, out)
        (m,) = srv.wait_messages(1)
        h.check(m.env["tls"] == "TLSv1.3", m.env_text)
        h.assert_bytes_equal(m.eml, MSG)
        out = probe("smtps://localhost:%d" % srv.port,
                    args=["--ca-file", h.cert("ca.pem"),
                          "--server-name", "mail.example.org"], expect_rc=1)
        h.check("hostname mismatch" in connect_line(out), out)


def test_bad_ca_file():
    out = probe("smtps://127.0.0.1:1", args=["--ca-file", "/nonexistent.pem"],
                expect_rc=1)
    h.check("connect error TERN_ETLS" in out, out)


# ---- AUTH --------------------------------------------------------------------

def auth_server(mechs="PLAIN LOGIN CRAM-MD5 SCRAM-SHA-256 XOAUTH2",
                insecure=False):
    extra = ["--users", users_file(), "--auth-mechs", mechs,
             "--auth-fail-delay-ms", "0"]
    if insecure:
        extra.insert(0, "--insecure-auth")
    return tls_server(extra=extra)


def test_auth_each_mechanism():
    with auth_server() as srv:
        url = "smtp+starttls://127.0.0.1:%d" % srv.port
        n = 0
        for mech in ("PLAIN", "LOGIN", "CRAM-MD5", "SCRAM-SHA-256"):
            out = probe(url, args=["--ca-file", h.cert("ca.pem"),
                                   "--user", "alice",
                                   "--password", USERS["alice"],
                                   "--mechs", mech])
            h.check("connect ok" in out, "%s: %s" % (mech, out))
            n += 1
            msgs = srv.wait_messages(n)
            h.check(msgs[-1].env["auth"] == "alice", msgs[-1].env_text)
        # the default preference picks SCRAM-SHA-256
        out = probe(url, args=["--ca-file", h.cert("ca.pem"), "--user", "bob",
                               "--password", USERS["bob"]])
        h.check("connect ok" in out, out)
        # XOAUTH2 with a token
        out = probe(url, args=["--ca-file", h.cert("ca.pem"),
                               "--user", "bob", "--token", "tok-bob"])
        h.check("connect ok" in out, out)
        msgs = srv.wait_messages(n + 2)
        h.check([m.env["auth"] for m in msgs[-2:]] == ["bob", "bob"],
                repr([m.env_text for m in msgs]))


def test_auth_refused():
    with auth_server() as srv:
        url = "smtp+starttls://127.0.0.1:%d" % srv.port
        out = probe(url, args=["--ca-file", h.cert("ca.pem"),
                               "--user", "alice", "--password", "wrong",
                               "--mechs", "PLAIN"], expect_rc=1)
        line = connect_line(out)
        h.check(line.startswith("connect error TERN_EAUTH: AUTH PLAIN "
                                "refused: 535 5.7.8 "), line)
        h.check(srv.eml_count() == 0, "a message was stored")


def test_auth_plain_not_in_the_clear():
    with h.CaptureServer(["--listen", "smtp://127.0.0.1:0", "--insecure-auth",
                          "--users", users_file(),
                          "--auth-mechs", "PLAIN LOGIN"]) as srv:
        url = "smtp://127.0.0.1:%d" % srv.port
        out = probe(url, args=["--user", "alice", "--password",
                               USERS["alice"]], expect_rc=1)
        line = connect_line(out)
        h.check(line.startswith("connect error TERN_EAUTH: no usable AUTH "
                                "mechanism"), line)
        # allowed explicitly
        out = probe(url, args=["--user", "alice", "--password",
                               USERS["alice"], "--insecure-auth"])
        h.check("connect ok tls=none" in out, out)
        (m,) = srv.wait_messages(1)
        h.check(m.env["auth"] == "alice", m.env_text)


# ---- LMTP --------------------------------------------------------------------

def test_lmtp_unix_socket():
    d = h.tmpdir()
    sock = os.path.join(d, "lmtp.sock")
    with h.CaptureServer(["--listen", "lmtp://" + sock]) as srv:
        out = probe("lmtp://" + sock,
                    rcpts=["one@example.org", "fail-data@example.org",
                           "two@example.org"], expect_rc=1)
        h.check("connect ok tls=none" in out, out)
        h.check("data 0 one@example.org 250" in out, out)
        h.check("data 1 fail-data@example.org 550" in out, out)
        h.check("data 2 two@example.org 250" in out, out)
        h.check("accepted=3 delivered=2" in out, out)
        (m,) = srv.wait_messages(1)
        h.assert_bytes_equal(m.eml, MSG)


# ---- every extension, against tern's own server ------------------------------------

def test_every_extension():
    """PIPELINING, CHUNKING (BDAT), 8BITMIME, BINARYMIME, SMTPUTF8, SIZE
    and DSN from the client library to tern's server, each checked on the
    stored side (bytes and the parameters the server saw)."""
    url = None
    with h.CaptureServer(["--listen", "smtp://127.0.0.1:0"]) as srv:
        url = "smtp://127.0.0.1:%d" % srv.port
        # BDAT: the same bytes as DATA would store
        probe(url, args=["--chunking"])
        # 8BITMIME
        body8 = "Subject: caf\u00e9\r\n\r\ngr\u00fc\u00dfe\r\n".encode()
        probe(url, body=body8, args=["--body", "8BITMIME"])
        # BINARYMIME over BDAT: raw, bare LF and NUL kept as they are
        raw = b"Subject: bin\r\n\r\n\x00\x01 bare\nLF \r lone CR\r\n"
        probe(url, body=raw, args=["--chunking", "--body", "BINARYMIME"])
        # SMTPUTF8 addresses
        probe(url, frm="j\u00f6rg@example.org",
              rcpts=["\u00fc@example.org"], args=["--smtputf8"])
        # SIZE and DSN (RET, ENVID, NOTIFY, ORCPT; xtext round trip)
        probe(url, args=["--size", "1234", "--ret", "HDRS", "--envid",
                         "id+1=x", "--notify", "SUCCESS,FAILURE",
                         "--orcpt", "b@example.org"])
        msgs = srv.wait_messages(5)
        h.assert_bytes_equal(msgs[0].eml, MSG, "BDAT")
        h.assert_bytes_equal(msgs[1].eml, body8, "8BITMIME")
        h.check("body: 8BITMIME" in msgs[1].env_text, msgs[1].env_text)
        h.assert_bytes_equal(msgs[2].eml, raw, "BINARYMIME")
        h.check("body: BINARYMIME" in msgs[2].env_text, msgs[2].env_text)
        h.check("smtputf8: 1" in msgs[3].env_text, msgs[3].env_text)
        h.check("from: j\u00f6rg@example.org" in msgs[3].env_text,
                msgs[3].env_text)
        e = msgs[4].env_text
        h.check("mail_params: size=1234 ret=HDRS envid=id+1=x" in e, e)
        h.check("notify=SUCCESS,FAILURE, orcpt=rfc822;b@example.org" in e, e)


if __name__ == "__main__":
    h.main([
        test_plain_byte_exact,
        test_body_normalised,
        test_rejected_recipient,
        test_several_messages_one_connection,
        test_big_message_backpressure,
        test_connect_refused,
        test_resolve_failure,
        test_greeting_timeout,
        test_starttls_with_test_ca,
        test_starttls_required_not_offered,
        test_self_signed_refused,
        test_wrong_host_name_refused,
        test_smtps,
        test_bad_ca_file,
        test_auth_each_mechanism,
        test_auth_refused,
        test_auth_plain_not_in_the_clear,
        test_lmtp_unix_socket,
        test_every_extension,
    ])
