#!/usr/bin/env python3
"""tern serve signs the mail it originates (Step 8, DKIM): [dkim NAME]
keys (RSA 2048 s1, Ed25519 e1) for example.org, a listener with AUTH,
the queue relaying to an aiosmtpd next hop on loopback. Verified there by
dkimpy, the public keys given by the test's DNS function (no DNS).

1. An authenticated session's message arrives with two DKIM-Signature
   fields in front (then our Received field, then the message as sent)
   and both verify; the queued log line says dkim=d=example.org,s=s1;...
2. The same message from an unauthenticated session arrives unsigned.
3. An authenticated message whose From: is another domain: unsigned,
   logged dkim=none why="no key for the From domain"; one the signer
   fails on (a header line without a colon): queued unsigned, logged
   dkim=failed why=...
4. A reload whose key file is missing fails, naming the file, and the
   old keys go on signing; a reload to a new selector (key rotation)
   signs with it.
"""

import base64
import os
import re
import signal
import smtplib
import subprocess

import dkim  # python3-dkim

import qtest as h

CONF = """[server]
hostname = mta.example.org
shutdown_timeout = 5s

[listener in]
url = smtp://127.0.0.1:{port}
auth = yes
insecure_auth = yes

[auth]
users = {users}

[delivery]
target = smtp
url = smtp://127.0.0.1:{hop}

[queue]
directory = {qdir}
retry_min = 1s
retry_max = 2s

{dkim}
"""

PUB = {}  # selector -> TXT record


def keypair(d, kind, selector):
    path = os.path.join(d, "%s.pem" % selector)
    if kind == "rsa":
        subprocess.run(["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt",
                        "rsa_keygen_bits:2048", "-out", path], check=True,
                       capture_output=True)
    else:
        subprocess.run(["openssl", "genpkey", "-algorithm", "ed25519",
                        "-out", path], check=True, capture_output=True)
    der = subprocess.run(["openssl", "pkey", "-in", path, "-pubout",
                          "-outform", "DER"], check=True,
                         capture_output=True).stdout
    if kind == "rsa":
        PUB[selector] = b"v=DKIM1; k=rsa; p=" + base64.b64encode(der)
    else:
        PUB[selector] = b"v=DKIM1; k=ed25519; p=" + base64.b64encode(der[-32:])
    os.chmod(path, 0o600)
    return path


def dns(name, timeout=5):
    return PUB.get(name.decode().split(".")[0])


def dkim_sections(keys):
    return "\n".join("[dkim %s]\ndomain = example.org\nselector = %s\n"
                     "key = %s\n" % (sel, sel, path) for sel, path in keys)


def message(frm, n):
    return ("From: Sender <%s>\r\nTo: rcpt@example.net\r\n"
            "Subject: dkim test %d\r\nMessage-ID: <%d@example.org>\r\n"
            "\r\nHello,\r\nthis is message %d.\r\n" % (frm, n, n, n)).encode()


def send(port, msg, login=True):
    with smtplib.SMTP(h.HOST, port, timeout=20) as c:
        c.ehlo("client.example")
        if login:
            c.login("alice", "alice pass")
        code, _ = c.mail("alice@example.org")
        h.check(code == 250, "MAIL %d" % code)
        code, _ = c.rcpt("rcpt@example.net")
        h.check(code == 250, "RCPT %d" % code)
        code, reply = c.data(msg)
        h.check(code == 250, "DATA %d %r" % (code, reply))
        return re.search(rb"queued as (\w+)", reply).group(1).decode()


def arrived(sink, n):
    h.wait_for(lambda: len(sink.messages()) >= n, 20,
               "%d message(s) at the next hop" % n, interval=0.1)
    return sink.messages()[n - 1][2]


def verify_all(data, selectors):
    d = dkim.DKIM(data)
    sigs = re.findall(rb"(?m)^DKIM-Signature:", data)
    h.check(len(sigs) == len(selectors), "%d signatures, expected %d:\n%r"
            % (len(sigs), len(selectors), data[:2000]))
    for i, sel in enumerate(selectors):
        ok = d.verify(idx=i, dnsfunc=dns)
        h.check(ok, "signature %d (s=%s) does not verify:\n%r"
                % (i, sel, data[:2000]))


def test_serve_signs_authenticated_mail():
    dd = h.tmpdir("tern-dkim-serve-")
    users = h.write(os.path.join(dd, "users"),
                    h.passwd_line("alice", "alice pass") + "\n")
    s1 = keypair(dd, "rsa", "s1")
    e1 = keypair(dd, "ed", "e1")
    port, = h.free_ports(1)
    sink = h.AioSink().start()
    qdir = os.path.join(dd, "queue")

    def write_conf(keys):
        return h.write(os.path.join(dd, "tern.ini"), CONF.format(
            port=port, users=users, hop=sink.port, qdir=qdir,
            dkim=dkim_sections(keys)))

    conf = write_conf([("s1", s1), ("e1", e1)])
    try:
        with h.Serve(["-c", conf], name="dkim") as srv:
            # 1. authenticated: signed by both keys
            msg = message("alice@example.org", 1)
            qid = send(port, msg)
            data = arrived(sink, 1)
            verify_all(data, ["s1", "e1"])
            head, rest = data.split(b"Received: ", 1)
            h.check(head.startswith(b"DKIM-Signature: "), "order: %r" % head)
            trace, body = h.strip_received(b"Received: " + rest)
            h.assert_bytes_equal(body, msg, "the message after our fields")
            (ln,) = srv.wait_log("id=%s event=queued" % qid)
            h.check('dkim="d=example.org,s=s1;d=example.org,s=e1"' in ln,
                    "queued line: %r" % ln)
            # a changed body fails (the check can fail)
            bad = data.replace(b"this is message 1", b"this is message 7")
            try:
                ok = dkim.DKIM(bad).verify(idx=0, dnsfunc=dns)
            except dkim.ValidationError:
                ok = False
            h.check(not ok, "a modified message still verifies")

            # 2. unauthenticated: unsigned
            msg = message("alice@example.org", 2)
            qid = send(port, msg, login=False)
            data = arrived(sink, 2)
            h.check(b"DKIM-Signature" not in data, "signed: %r" % data[:600])
            (ln,) = srv.wait_log("id=%s event=queued" % qid)
            h.check("dkim=" not in ln, "queued line: %r" % ln)

            # 3. authenticated, another From domain: unsigned, logged why
            qid = send(port, message("alice@example.com", 3))
            data = arrived(sink, 3)
            h.check(b"DKIM-Signature" not in data, "signed: %r" % data[:600])
            (ln,) = srv.wait_log("id=%s event=queued" % qid)
            h.check('dkim=none why="no key for the From domain"' in ln,
                    "queued line: %r" % ln)

            # 3b. a signing failure (libopendkim refuses a header line
            # without a colon): queued unsigned all the same, logged
            bad = (b"From: alice@example.org\r\nnot a field\r\n"
                   b"Subject: broken\r\n\r\nbody\r\n")
            qid = send(port, bad)
            data = arrived(sink, 4)
            h.check(b"DKIM-Signature" not in data, "signed: %r" % data[:600])
            trace, body = h.strip_received(data)
            h.assert_bytes_equal(body, bad, "the unsigned message")
            (ln,) = srv.wait_log("id=%s event=queued" % qid)
            h.check("dkim=failed why=" in ln and "status=250" in ln,
                    "queued line: %r" % ln)

            # 4a. a reload with a missing key: refused, naming the file;
            # the old keys still sign
            missing = os.path.join(dd, "missing.pem")
            write_conf([("s1", s1), ("e1", missing)])
            srv.signal(signal.SIGHUP)
            (ln,) = srv.wait_log("event=reload result=failed")
            h.check(missing in ln and "[dkim e1]" in ln, "reload: %r" % ln)
            send(port, message("alice@example.org", 4))
            verify_all(arrived(sink, 5), ["s1", "e1"])

            # 4b. key rotation: a new selector, by reload
            s2 = keypair(dd, "rsa", "s2")
            write_conf([("s2", s2)])
            srv.signal(signal.SIGHUP)
            srv.wait_log("event=reload result=ok")
            qid = send(port, message("alice@example.org", 5))
            verify_all(arrived(sink, 6), ["s2"])
            (ln,) = srv.wait_log("id=%s event=queued" % qid)
            h.check('dkim="d=example.org,s=s2"' in ln, "queued line: %r" % ln)
    finally:
        sink.stop()


if __name__ == "__main__":
    h.main([test_serve_signs_authenticated_mail])
