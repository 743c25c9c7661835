#!/usr/bin/env python3
"""tern serve signs what it delivers (Step 8, DKIM; deliver_queue.c): BDAT
lets a client send a body with bare CR, bare LF or no final CRLF, which
DATA never carries. The queue stores such a body with its line ends made
CRLF and a final CRLF added, and the signer sees those same bytes, so:

1. for each odd body, the message that arrives at the next hop has both
   signatures (RSA s1 through libopendkim, Ed25519 e1 through tern's
   own) verifying under dkimpy, with equal bh= values, and its body is
   the CRLF form of what was sent;
2. a BODY=BINARYMIME message is queued as it came and not signed:
   dkim=none why="binarymime".

The keys and dkimpy's DNS function are test_serve_dkim.py's (no DNS).
"""

import base64
import os
import re
import socket

import dkim  # python3-dkim

import qtest as h
import test_serve_dkim as t

HDR = (b"From: Alice <alice@example.org>\r\nTo: rcpt@example.net\r\n"
       b"Subject: odd body\r\n\r\n")

BODIES = [b"x\r", b"x\n", b"a\nb\n", b"a\rb", b"a\r\nno final",
          b"\r", b"\n", b" \t\r\n \r\nq", b"x\r\r\n", b"x \n\ny\r",
          b"last\r\n\r"]


def crlf(body):
    out = re.sub(rb"\r\n|\r|\n", b"\r\n", body)
    return out if not out or out.endswith(b"\r\n") else out + b"\r\n"


class Client:
    def __init__(self, port, user=b"alice", password=b"alice pass"):
        self.s = socket.create_connection((h.HOST, port), timeout=20)
        self.f = self.s.makefile("rb")
        self.reply(220)
        self.cmd(b"EHLO client.example", 250)
        auth = base64.b64encode(b"\0" + user + b"\0" + password)
        self.cmd(b"AUTH PLAIN " + auth, 235)

    def reply(self, want=None):
        lines = []
        while True:
            ln = self.f.readline()
            h.check(ln, "connection closed; %r" % lines)
            lines.append(ln)
            if ln[3:4] != b"-":
                break
        code = int(lines[-1][:3])
        h.check(want is None or code == want, "want %s: %r" % (want, lines))
        return code, b"".join(lines)

    def cmd(self, c, want=None):
        self.s.sendall(c + b"\r\n")
        return self.reply(want)

    def bdat(self, msg, body=b"", frm=b"alice@example.org"):
        self.cmd(b"MAIL FROM:<" + frm + b">" + body, 250)
        self.cmd(b"RCPT TO:<rcpt@example.net>", 250)
        half = len(msg) // 2  # two chunks: the state crosses them
        self.s.sendall(b"BDAT %d\r\n" % half + msg[:half])
        self.reply(250)
        self.s.sendall(b"BDAT %d LAST\r\n" % (len(msg) - half) + msg[half:])
        code, text = self.reply(250)
        return re.search(rb"queued as (\w+)", text).group(1).decode()

    def close(self):
        try:
            self.cmd(b"QUIT")
        finally:
            self.s.close()


def bh_values(data):
    return [re.sub(rb"\s", b"", v) for v in
            re.findall(rb"\bbh=([A-Za-z0-9+/=\s]+);", data)]


def test_odd_bodies_verify():
    dd = h.tmpdir("tern-dkim-bodies-")
    users = h.write(os.path.join(dd, "users"),
                    h.passwd_line("alice", "alice pass") + "\n")
    s1 = t.keypair(dd, "rsa", "s1")
    e1 = t.keypair(dd, "ed", "e1")
    port, = h.free_ports(1)
    sink = h.AioSink().start()
    conf = h.write(os.path.join(dd, "tern.ini"), t.CONF.format(
        port=port, users=users, hop=sink.port,
        qdir=os.path.join(dd, "queue"),
        dkim=t.dkim_sections([("s1", s1), ("e1", e1)])))
    try:
        with h.Serve(["-c", conf], name="dkim-bodies") as srv:
            c = Client(port)
            for n, body in enumerate(BODIES, 1):
                qid = c.bdat(HDR + body)
                (ln,) = srv.wait_log("id=%s event=queued" % qid)
                h.check('dkim="d=example.org,s=s1;d=example.org,s=e1"' in ln,
                        "body %r: %r" % (body, ln))
                data = t.arrived(sink, n)
                t.verify_all(data, ["s1", "e1"])
                bh = bh_values(data)
                h.check(len(bh) == 2 and bh[0] == bh[1],
                        "body %r: bh= differ: %r" % (body, bh))
                got = data.split(b"\r\n\r\n", 1)[1]
                h.assert_bytes_equal(got, crlf(body),
                                     "body %r as delivered" % body)
            # BINARYMIME: as it came, unsigned
            qid = c.bdat(HDR + b"bin\rary\n", b" BODY=BINARYMIME")
            (ln,) = srv.wait_log("id=%s event=queued" % qid)
            h.check('dkim=none why=binarymime' in ln or
                    'dkim=none why="binarymime"' in ln, "queued: %r" % ln)
            c.close()
    finally:
        sink.stop()


if __name__ == "__main__":
    h.main([test_odd_bodies_verify])
