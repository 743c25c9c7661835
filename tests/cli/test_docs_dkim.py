#!/usr/bin/env python3
"""docs/configuration.md "DKIM keys and their DNS records" (review
finding 4): the documented commands, run as written (the sh block marked
dkim-keys) in a temporary directory, make keys tern signs with
(tests/dkim's dkim_sign_helper, over tern/dkim.h) and TXT records that
verify those signatures with dkimpy (python3-dkim): the record text is
taken from the zone-file lines the commands wrote (quoted strings
joined, as a resolver does). The Ed25519 p= is the raw 32-byte key; the
RSA record is split into strings of at most 255 bytes."""

import base64
import os
import re
import subprocess
import sys

try:
    import dkim  # Debian's python3-dkim
except ImportError:
    if sys.executable != "/usr/bin/python3" and os.path.exists("/usr/bin/python3"):
        os.execv("/usr/bin/python3", ["/usr/bin/python3"] + sys.argv)
    raise

import harness as h

SRC = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
DOC = os.path.join(SRC, "docs", "configuration.md")
MSG = (b"From: Alice <alice@example.org>\r\nTo: bob@example.net\r\n"
       b"Subject: signed as documented\r\nDate: Thu, 03 Dec 2026 19:00:00 "
       b"+0000\r\nMessage-ID: <doc-dkim@example.org>\r\n\r\nhello\r\n")


def helper():
    d = os.path.dirname(os.path.abspath(h.env_path("TERN_BIN")))
    while d != "/" and not os.path.exists(os.path.join(d, "CMakeCache.txt")):
        d = os.path.dirname(d)
    p = os.path.join(d, "tests", "dkim", "dkim_sign_helper")
    h.check(os.access(p, os.X_OK), "%s is missing (built with tests/dkim)"
            % p)
    return p


def documented_block():
    text = open(DOC, encoding="utf-8").read()
    m = re.search(r"<!-- dkim-keys[^>]*-->\s*```sh\n(.*?)```", text, re.S)
    h.check(m, "no dkim-keys block in %s" % DOC)
    return m.group(1)


def record(path):
    """(owner, TXT data) of a zone-file line: its strings joined."""
    t = open(path).read()
    owner = t.split()[0]
    h.check(re.search(r"\sIN\s+TXT\s", t), "%s is not a TXT record: %r"
            % (path, t))
    strings = re.findall(r'"((?:[^"\\]|\\.)*)"', t)
    for s in strings:
        h.check(len(s.encode()) <= 255, "%s: a string of %d bytes (a TXT "
                "string holds 255)" % (path, len(s.encode())))
    return owner, "".join(strings).replace('\\"', '"')


def test_documented_dkim_keys():
    d = h.tmpdir("tern-docs-dkim-")
    p = subprocess.run(["sh", "-e", "-c", documented_block()], cwd=d,
                       capture_output=True, timeout=120)
    h.check(p.returncode == 0, "the documented commands failed: %r"
            % p.stderr.decode(errors="replace"))
    records = {}
    for sel, kind in (("2026r", "rsa"), ("2026e", "ed25519")):
        h.check(os.path.exists(os.path.join(d, sel + ".pem")),
                "no %s.pem" % sel)
        owner, txt = record(os.path.join(d, sel + ".txt"))
        h.check(owner == sel + "._domainkey.example.org.",
                "owner %r" % owner)
        m = re.fullmatch(r"v=DKIM1; k=%s; p=([A-Za-z0-9+/=]+)" % kind, txt)
        h.check(m, "%s record: %r" % (sel, txt))
        key = base64.b64decode(m.group(1))
        if kind == "ed25519":
            h.check(len(key) == 32, "Ed25519 p= is %d bytes, not the raw "
                    "32-byte key" % len(key))
        else:
            h.check(len(key) > 256, "RSA p= is %d bytes" % len(key))
        records[(sel + "._domainkey.example.org.").encode()] = txt.encode()

    def dns(name, timeout=5):
        name = name if name.endswith(b".") else name + b"."
        return records.get(name)

    p = subprocess.run([helper(),
                        "example.org,2026r," + os.path.join(d, "2026r.pem"),
                        "example.org,2026e," + os.path.join(d, "2026e.pem")],
                       input=MSG, capture_output=True, timeout=60)
    h.check(p.returncode == 0 and p.stdout, "dkim_sign_helper: %d %r"
            % (p.returncode, p.stderr))
    signed = p.stdout + MSG
    n = signed.count(b"DKIM-Signature:")
    h.check(n == 2, "%d signatures" % n)
    for i in range(n):
        h.check(dkim.DKIM(signed).verify(idx=i, dnsfunc=dns),
                "signature %d does not verify with the documented record:"
                "\n%r" % (i, signed[:1500]))


if __name__ == "__main__":
    h.main([test_documented_dkim_keys])
