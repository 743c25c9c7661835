#!/usr/bin/env python3
"""examples/client.c, the one-call send (tern_send), against a real
`tern serve` with a Maildir target: the message arrives byte for byte
after the Return-Path and Received lines tern adds, and the example exits
0; a refused recipient makes it exit non-zero and say who and why.

Registered by examples/CMakeLists.txt (the example is built there) as
e2e_example_client. Environment: TERN_BIN, TERN_EXAMPLE_CLIENT."""

import os
import random
import subprocess

import e2e as h

CONF = """[server]
hostname = example-client.e2e.example

[listener mx]
url = smtp://127.0.0.1:{port}

[domains]
accept = example.org

[delivery]
maildir = {maildir}
"""


def client(url, frm, rcpts, message):
    exe = os.environ.get("TERN_EXAMPLE_CLIENT")
    h.check(exe and os.path.exists(exe),
            "TERN_EXAMPLE_CLIENT is not the built examples/client: %r" % exe)
    return subprocess.run([exe, url, frm] + rcpts, input=message,
                          capture_output=True, timeout=60)


def serve():
    d = h.tmpdir(prefix="tern-e2e-example-client-")
    (port,) = h.free_ports(1)
    conf = h.write(os.path.join(d, "tern.ini"), CONF.format(
        port=port, maildir=os.path.join(d, "mail")))
    return d, h.Serve(["-c", conf], name="example-client")


def test_delivered():
    d, srv = serve()
    m = h.make_message("example-client-1@e2e", 200000, random.Random(7))
    with srv:
        p = client("smtp://127.0.0.1:%d" % srv.port, "alice@example.net",
                   ["bob@example.org", "carol@example.org"], m)
        h.check(p.returncode == 0, "client exited %d: %r"
                % (p.returncode, p.stderr))
        h.check(p.stdout.startswith(b"sent to 2 recipients: 250 "),
                "client said %r" % p.stdout)
        files = h.maildir_files(os.path.join(d, "mail"))
        h.check(len(files) == 1, "expected one stored message: %r" % files)
        trace, rest = h.split_trace(h.read(files[0]), files[0])
        h.check(b"Return-Path: <alice@example.net>" in trace,
                "trace lacks the sender: %r" % trace)
        h.assert_bytes_equal(rest, m, files[0])


def test_refused():
    d, srv = serve()
    m = h.make_message("example-client-2@e2e", 3000, random.Random(8))
    with srv:
        url = "smtp://127.0.0.1:%d" % srv.port
        # one recipient refused: the other gets the message, exit 1
        p = client(url, "alice@example.net",
                   ["bob@example.org", "mallory@elsewhere.example"], m)
        err = p.stderr.decode()
        h.check(p.returncode == 1, "client exited %d, not 1: %r"
                % (p.returncode, err))
        h.check("client: <mallory@elsewhere.example> refused: 5" in err and
                "5.7.1" in err, "no clear line for the refusal: %r" % err)
        h.check("bob@example.org" not in err, "bob was delivered: %r" % err)
        h.check(len(h.maildir_files(os.path.join(d, "mail"))) == 1,
                "bob's copy is not stored")
        # the only recipient refused: nothing stored, exit 1
        p = client(url, "alice@example.net", ["eve@elsewhere.example"], m)
        h.check(p.returncode == 1 and b"<eve@elsewhere.example> refused"
                in p.stderr, "client exited %d: %r"
                % (p.returncode, p.stderr))
        h.check(len(h.maildir_files(os.path.join(d, "mail"))) == 1,
                "a refused message was stored")
    # nobody listening: a clear error, exit 1
    p = client(url, "alice@example.net", ["bob@example.org"], m)
    h.check(p.returncode == 1 and b"connection refused" in p.stderr,
            "client exited %d: %r" % (p.returncode, p.stderr))


if __name__ == "__main__":
    h.main([test_delivered, test_refused])
