#!/usr/bin/env python3
"""The log cannot be forged (issue 8, item 9).

Every value that came from the network (HELO name, addresses, AUTH
identity, ...) is written by logfmt rules: quoted and escaped when it
holds a space, '=', '"', '\\' or a control character. A tiny logfmt
parser below reads every line the daemon wrote: each must parse, each key
must appear once, and the values must be exactly what the client sent.
"""

import base64
import os
import re
import socket

import e2e as h

TS_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ ")
KEY_RE = re.compile(r"[a-z0-9_.]+=")


def logfmt(line):
    """[(key, value)] of one log line (after the time stamp); fails on
    anything that is not strict logfmt."""
    m = TS_RE.match(line)
    h.check(m, "log line without a time stamp: %r" % line)
    s = line[m.end():]
    out = []
    i = 0
    while i < len(s):
        k = KEY_RE.match(s, i)
        h.check(k, "not a key at %d of %r" % (i, s))
        key = s[i:k.end() - 1]
        i = k.end()
        if i < len(s) and s[i] == '"':
            i += 1
            v = []
            while True:
                h.check(i < len(s), "unterminated quoted value in %r" % s)
                c = s[i]
                if c == '"':
                    i += 1
                    break
                if c == "\\":
                    e = s[i + 1]
                    if e == "x":
                        v.append(chr(int(s[i + 2:i + 4], 16)))
                        i += 4
                        continue
                    v.append({"n": "\n", "r": "\r", "t": "\t", '"': '"',
                              "\\": "\\"}[e])
                    i += 2
                    continue
                h.check(ord(c) >= 0x20, "raw control byte in %r" % s)
                v.append(c)
                i += 1
            val = "".join(v)
        else:
            j = s.find(" ", i)
            j = len(s) if j < 0 else j
            val = s[i:j]
            h.check('"' not in val and "=" not in val and "\\" not in val,
                    "bare value %r holds a logfmt special in %r" % (val, s))
            i = j
        out.append((key, val))
        if i < len(s):
            h.check(s[i] == " ", "no space after %s=%r in %r" % (key, val, s))
            i += 1
    return out


def one_each(pairs, line):
    d = {}
    for k, v in pairs:
        h.check(k not in d, "key %r twice (forged?) in %r" % (k, line))
        d[k] = v
    return d


EVIL_HELO = "evil.example tls=TLSv1.3 auth=admin messages=99"
EVIL_FROM = '"x y=z\\"q event=forged"@example.org'
EVIL_RCPT = '"r\\\\cpt to=<x> size=1"@example.org'
EVIL_USER = 'ev"il=x\\auth=admin'


def test_forging():
    d = h.tmpdir(prefix="tern-e2e-log-")
    (port,) = h.free_ports(1)
    sock = os.path.join(d, "sub.sock")
    users = h.write(os.path.join(d, "users"),
                    h.passwd_line(EVIL_USER, "secret") + "\n")
    md = os.path.join(d, "mail")
    cfg = h.write(os.path.join(d, "tern.ini"),
                  "[listener mx]\nurl = smtp://127.0.0.1:%d\n"
                  "[listener sub]\nurl = smtp://%s\nauth = yes\n"
                  "[auth]\nusers = %s\n"
                  "[domains]\naccept = example.org\n"
                  "[delivery]\nmaildir = %s\nfsync = no\n"
                  % (port, sock, users, md))
    with h.Serve(["-c", cfg], name="log") as srv:
        r = h.Raw(port=port)
        r.reply()
        r.cmd("EHLO " + EVIL_HELO)
        r.cmd("MAIL FROM:<%s>" % EVIL_FROM, 250)
        r.cmd("RCPT TO:<%s>" % EVIL_RCPT, 250)
        r.cmd("DATA", 354)
        r.send(b"Subject: log\r\n\r\nbody\r\n.\r\n")
        code, lines = r.reply()
        h.check(code == 250, "DATA: %r" % lines)
        # control bytes the framing lets through, if any: a bare CR
        r.cmd("HELO cr\rinjected=1")
        r.cmd("QUIT")
        r.close()

        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(sock)
        u = h.Raw(sock=s)
        u.reply()
        u.cmd("EHLO auth.example", 250)
        tok = base64.b64encode(b"\0" + EVIL_USER.encode() + b"\0secret")
        u.cmd("AUTH PLAIN " + tok.decode(), 235)
        u.cmd("QUIT")
        u.close()
        # a refused identity with CR LF in it: whatever logs it, escaped
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(sock)
        u = h.Raw(sock=s, timeout=15)
        u.reply()
        u.cmd("EHLO auth2.example", 250)
        tok = base64.b64encode(b"\0x\r\nevent=forged auth=admin\0bad")
        code, _ = u.cmd("AUTH PLAIN " + tok.decode())
        h.check(code == 535, "bad AUTH: %d" % code)
        u.cmd("QUIT")
        u.close()
        closes = srv.wait_log("event=close", count=3)

    lines = srv.snapshot()
    h.check(len(lines) > 4, "log: %r" % lines)
    parsed = [(ln, one_each(logfmt(ln), ln)) for ln in lines]
    msgs = [d for ln, d in parsed if d.get("event") == "message"]
    h.check(len(msgs) == 1, "message lines: %r" % msgs)
    (m,) = msgs
    h.check(m["from"] == "<%s>" % EVIL_FROM, "from= %r" % m["from"])
    h.check(m["to"] == "<%s>" % EVIL_RCPT, "to= %r" % m["to"])
    closes = [d for ln, d in parsed if d.get("event") == "close"]
    helos = [c["helo"] for c in closes]
    h.check(any(x == EVIL_HELO or x == "cr\rinjected=1" for x in helos),
            "helo= values %r, sent %r" % (helos, EVIL_HELO))
    for c in closes:
        h.check(c["tls"] == "no", "tls= forged: %r" % c)
        h.check(c["messages"] in ("0", "1"), "messages= forged: %r" % c)
    auths = [c["auth"] for c in closes]
    h.check(EVIL_USER in auths, "auth= values %r, want %r" % (auths,
                                                              EVIL_USER))
    h.check(all("injected" not in k for _, d in parsed for k in d),
            "a key was injected: %r" % lines)
    h.check(not any(d.get("event") == "forged" for _, d in parsed),
            "an AUTH identity forged an event: %r" % lines)


if __name__ == "__main__":
    h.main([test_forging])
