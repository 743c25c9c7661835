#!/usr/bin/env python3
"""`tern send --mx DOMAIN`: delivery to a domain's MX hosts (MX order and
fallback, -v's connection line with the TLS outcome), a null MX (exit
68, 550 5.1.10), a TLS policy that cannot be met (exit 75), and the
option checks (--mx with --server, a bad --tls-policy). A python3-dnslib
server on 127.0.0.1 answers the resolver (--resolver); SMTP sinks listen
on 127.0.0.x at one port (--mx-port). Loopback only. Uses the helpers
of tests/net (mxworld.py)."""

import os
import subprocess
import sys

try:
    import dnslib  # noqa: F401  (Debian's python3-dnslib)
except ImportError:
    if sys.executable != "/usr/bin/python3" and os.path.exists("/usr/bin/python3"):
        os.execv("/usr/bin/python3", ["/usr/bin/python3"] + sys.argv)
    raise

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                "..", "net"))

import harness as h  # noqa: E402
import mxworld as w  # noqa: E402
from test_send import send, tern  # noqa: E402

ADDRS = ["127.0.0.%d" % i for i in range(2, 5)]
MSG = b"From: a@example.org\nTo: bob@dest.example\nSubject: mx\n\nhello\n"
RECS = {
    "dest.example": [w.mx(10, "mx1.dest.example"), w.mx(20, "mx2.dest.example")],
    "mx1.dest.example": [w.a("127.0.0.2")],
    "mx2.dest.example": [w.a("127.0.0.3")],
    "null.example": [w.mx(0, ".")],
}


class World:
    def __init__(self):
        self.dns = w.shared_dns(RECS)
        self.port = w.shared_port(ADDRS)
        self.sinks = []

    def sink(self, addr, **kw):
        s = w.Sink(addr, self.port, **kw)
        self.sinks.append(s)
        return s

    def send(self, domain, extra=()):
        return send(["--mx", domain, "--resolver", self.dns.addr,
                     "--mx-port", str(self.port), "--no-dnssec",
                     "-f", "a@example.org"]
                    + list(extra) + ["bob@" + domain], stdin=MSG)

    def close(self):
        for s in self.sinks:
            s.stop()
        self.dns.stop()


def with_world(fn):
    wd = World()
    try:
        fn(wd)
    finally:
        wd.close()


def test_mx_fallback_verbose():
    """mx1 refuses: mx2 gets the message; -v names the host and TLS."""
    def run(wd):
        s2 = wd.sink("127.0.0.3")
        rc, _, err = wd.send("dest.example", ["-v"])
        h.check(rc == 0, "exit %d: %s" % (rc, err))
        h.check("connected to mx mx2.dest.example [127.0.0.3]" in err, err)
        h.check("policy=may" in err and "tls=none" in err, err)
        h.check(len(s2.messages) == 1 and b"hello" in s2.messages[0]["data"],
                "mx2: %r" % s2.messages)
    with_world(run)


def test_null_mx_exit_68():
    def run(wd):
        rc, _, err = wd.send("null.example")
        h.check(rc == 68, "exit %d: %s" % (rc, err))
        h.check("550 5.1.10" in err, err)
    with_world(run)


def test_encrypt_without_starttls_exit_75():
    def run(wd):
        s1 = wd.sink("127.0.0.2")
        s2 = wd.sink("127.0.0.3")
        rc, _, err = wd.send("dest.example", ["--tls-policy", "encrypt"])
        h.check(rc == 75, "exit %d: %s" % (rc, err))
        h.check("451 4.7.5" in err, err)
        h.check(not s1.messages and not s2.messages, "sent in the clear")
    with_world(run)


def test_option_checks():
    rc, _, err = send(["--mx", "dest.example", "--server", "smtp://127.0.0.1",
                       "bob@dest.example"], stdin=MSG)
    h.check(rc == 64 and "exclude" in err, "exit %d: %s" % (rc, err))
    rc, _, err = send(["--mx", "dest.example", "--tls-policy", "strict",
                       "bob@dest.example"], stdin=MSG)
    h.check(rc == 64 and "--tls-policy" in err, "exit %d: %s" % (rc, err))
    rc, _, err = send(["--tls-policy", "may", "bob@dest.example"], stdin=MSG)
    h.check(rc == 64 and "needs --mx" in err, "exit %d: %s" % (rc, err))
    rc, _, err = send(["--mx", "1.2.3.4", "--resolver", "127.0.0.1:9",
                       "bob@dest.example"], stdin=MSG)
    h.check(rc == 64 and "not a domain" in err, "exit %d: %s" % (rc, err))
    rc, out, _ = send(["--help"])
    h.check(b"--mx DOMAIN" in out and b"--tls-policy" in out, out)


def test_no_trust_anchor_warns():
    """--mx with DNSSEC on and no trust anchor (dns-root-data missing, no
    --trust-anchor): a warning that DANE cannot apply, not silence. Run
    in a private mount namespace with empty directories over the default
    anchor places; with an anchor present there is no warning."""
    def run(wd):
        d = h.tmpdir(prefix="tern-send-noanchor-")
        empty = os.path.join(d, "empty")
        os.mkdir(empty)
        msg = os.path.join(d, "msg")
        with open(msg, "wb") as f:
            f.write(MSG)
        wd.sink("127.0.0.2")
        args = ["--mx", "dest.example", "--resolver", wd.dns.addr,
                "--mx-port", str(wd.port), "-f", "a@example.org",
                "--helo", "client.example", "bob@dest.example"]
        cmd = " ".join([tern(), "send"] + args) + " < " + msg
        mounts = ["mount --bind %s %s" % (empty, dflt)
                  for dflt in ("/usr/share/dns", "/var/lib/unbound")
                  if os.path.isdir(dflt)]
        script = " && ".join(["mount --make-rprivate /"] + mounts +
                             ["exec " + cmd])
        p = h.run(["unshare", "-m", "sh", "-c", script], timeout=30,
                  check_rc=False, stdin=subprocess.DEVNULL)
        err = p.stderr.decode("utf-8", "replace")
        h.check("no DNSSEC trust anchor" in err and "DANE" in err,
                "no warning without an anchor: exit %d %r"
                % (p.returncode, err))
        anchor = os.path.join(d, "ta.keys")
        with open(anchor, "w") as f:
            f.write("example.org. IN DS 12345 13 2 " + "ab" * 32 + "\n")
        rc, _, err = send(args[:-1] + ["--trust-anchor", anchor,
                                       "bob@dest.example"], stdin=MSG)
        h.check("no DNSSEC trust anchor" not in err,
                "warned with an anchor: %r" % err)
    with_world(run)


if __name__ == "__main__":
    h.main([
        test_mx_fallback_verbose,
        test_null_mx_exit_68,
        test_encrypt_without_starttls_exit_75,
        test_option_checks,
        test_no_trust_anchor_warns,
    ])
