#!/usr/bin/env python3
"""tern serve with the durable queue ([delivery] queue = yes): 250 with
the queue id once the message is queued, then delivery from the queue
through each target (src/cli/deliver_queue.c, src/cli/queue_deliver.c).

1. smtp target to an aiosmtpd sink: "250 2.0.0 Ok: queued as ID" at
   once; every message arrives byte-exact after our Received line (whose
   "id" is the queue id); the log has id=ID on the queued line and on
   each recipient's status=sent line; three messages go over ONE kept
   connection (connection reuse); a recipient the sink refuses (550) is
   status=bounced while the others of the message are delivered.
2. smtp target, next hop down: 250 queued at once, status=deferred with
   451 4.4.1; the sink comes back: the message arrives on a retry.
3. maildir target (template %u) with queue = yes: each recipient's
   Maildir gets Return-Path + Received (id = queue id) + the message.
4. pipe target with queue = yes: three recipients in ONE SMTP
   transaction (no 452 one-per-message rule with the queue), one command
   per recipient; an exit 67 recipient is status=bounced, the others sent.
5. lmtp target via the queue into a second tern serve (LMTP listener,
   pipe target answering per recipient): per-recipient results.
6. A kept connection the next hop drops when the next MAIL comes (no
   reply): the message goes over a fresh connection at once, delivered
   once, never deferred.

Peers: /usr/bin/python3 with aiosmtpd (python3-aiosmtpd); missing, the
test fails.
"""

import os
import re
import smtplib
import socket
import subprocess
import sys
import threading

import e2e as h

HOST = "127.0.0.1"
PY = "/usr/bin/python3"

SINK = r'''
import os, signal, sys
from aiosmtpd.controller import Controller
port, out = int(sys.argv[1]), sys.argv[2]
class H:
    n = 0
    async def handle_RCPT(self, server, session, envelope, address, opts):
        if address.startswith("refuse"):
            return "550 5.1.1 refused by sink"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"
    async def handle_DATA(self, server, session, envelope):
        H.n += 1
        p = os.path.join(out, "%d" % H.n)
        with open(p + ".eml", "wb") as f:
            f.write(envelope.original_content)
        with open(p + ".tmp", "w") as f:
            f.write("peer: %s\nfrom: %s\n" % (session.peer[1],
                                             envelope.mail_from))
            for r in envelope.rcpt_tos:
                f.write("rcpt: %s\n" % r)
        os.rename(p + ".tmp", p + ".env")
        return "250 2.0.0 sink stored %d" % H.n
c = Controller(H(), hostname="127.0.0.1", port=port)
c.start()
print("READY", flush=True)
signal.sigwait([signal.SIGTERM, signal.SIGINT])
c.stop()
'''

SMTP_CONF = """[server]
hostname = queue.e2e.example

[listener in]
url = smtp://127.0.0.1:{port}

[delivery]
target = smtp
url = smtp://127.0.0.1:{sink}

[queue]
directory = {queue}
retry_min = 1s
retry_max = 2s
fsync = no
"""

QUEUED_RE = re.compile(r"^Ok: queued as ([0-9A-Z]{1,23})$")
RECEIVED_RE = re.compile(rb"\AReceived: [^\r\n]*\r\n(?:[ \t][^\r\n]*\r\n)*")


class Sink:
    """The aiosmtpd sink as a child; .messages() -> [(env dict, eml)]."""

    def __init__(self, d, port):
        self.d, self.port = d, port
        self.out = os.path.join(d, "sink-out")
        os.makedirs(self.out, exist_ok=True)
        self.script = h.write(os.path.join(d, "sink.py"), SINK)
        self.p = None

    def start(self):
        if not os.access(PY, os.X_OK):
            h.fail("%s is missing (install python3-aiosmtpd)" % PY)
        self.log = os.path.join(self.d, "sink.log")
        with open(self.log, "ab") as lf:
            self.p = subprocess.Popen([PY, self.script, str(self.port),
                                       self.out], stdout=lf, stderr=lf)
        h.wait_for(lambda: b"READY" in h.read(self.log) or
                   self.p.poll() is not None, 15, "the aiosmtpd sink")
        h.check(self.p.poll() is None,
                "aiosmtpd sink did not start (python3-aiosmtpd installed?): "
                "%r" % h.read(self.log)[-2000:])
        return self

    def stop(self):
        if self.p and self.p.poll() is None:
            self.p.terminate()
            self.p.wait(timeout=10)
        self.p = None

    def messages(self):
        res = []
        names = sorted((int(f[:-4]) for f in os.listdir(self.out)
                        if f.endswith(".env")))
        for n in names:
            env = {"rcpt": []}
            for ln in h.read(os.path.join(self.out, "%d.env" % n)).decode() \
                    .splitlines():
                k, v = ln.split(": ", 1)
                if k == "rcpt":
                    env["rcpt"].append(v)
                else:
                    env[k] = v
            res.append((env, h.read(os.path.join(self.out, "%d.eml" % n))))
        return res

    def wait(self, n, timeout=15):
        h.wait_for(lambda: len(self.messages()) >= n, timeout,
                   "%d message(s) at the sink" % n)
        return self.messages()


def queued_id(reply_text):
    m = QUEUED_RE.match(reply_text)
    h.check(m, "reply text %r is not 'Ok: queued as ID'" % reply_text)
    return m.group(1)


def send(port, frm, rcpts, body):
    """smtplib: the message; returns the queue id from the 250."""
    with smtplib.SMTP(HOST, port, timeout=20) as s:
        s.ehlo("client.example")
        s.mail(frm)
        for r in rcpts:
            code, msg = s.rcpt(r)
            h.check(code == 250, "RCPT %s: %d %r" % (r, code, msg))
        code, msg = s.data(body)
        h.check(code == 250, "DATA: %d %r" % (code, msg))
        text = msg.decode()
        h.check(text.startswith("2.0.0 "), "no 2.0.0 in %r" % text)
        return queued_id(text[6:])


def strip_received(eml, qid, what):
    """The stored message without our Received field (which must name
    the queue id); Return-Path is not added on the way to a relay."""
    m = RECEIVED_RE.match(eml)
    h.check(m, "%s does not start with a Received field: %r"
            % (what, eml[:200]))
    h.check(re.search(rb" id " + qid.encode() + rb"[;\r]", m.group(0)),
            "%s: Received does not carry id %s: %r" % (what, qid, m.group(0)))
    return eml[m.end():]


def body_of(i, rng):
    return h.make_message("q%d@test.example" % i, 2000 + 700 * i, rng)


def test_smtp_queue_byte_exact_and_reuse():
    import random
    rng = random.Random(7)
    d = h.tmpdir()
    port, sport = h.free_ports(2)
    sink = Sink(d, sport).start()
    try:
        conf = h.write(os.path.join(d, "q.ini"), SMTP_CONF.format(
            port=port, sink=sport, queue=os.path.join(d, "queue")))
        with h.Serve(["-c", conf], name="queue-smtp") as srv:
            srv.wait_log("event=queue-open")
            sent = []
            for i in range(3):
                body = body_of(i, rng)
                rcpts = ["a%d@example.org" % i, "b%d@example.org" % i]
                if i == 1:
                    rcpts.append("refuse@example.org")
                qid = send(srv.port, "sender@example.net", rcpts, body)
                sent.append((qid, rcpts, body))
                # one after the other (at once they would run in parallel
                # over several connections): each then finds the kept one
                srv.wait_log("id=%s event=removed" % qid)
                if i == 1:  # and its bounce, which goes to the relay too
                    srv.wait_log("event=delivery rcpt=<sender@example.net>")
            def ours():
                by = {}
                for env, eml in sink.messages():
                    if not eml.startswith(b"Received: "):
                        continue  # the bounce for refuse@ (to the relay)
                    m = re.search(rb" id ([0-9A-Z]+)[;\r]", eml)
                    h.check(m, "no id in %r" % eml[:300])
                    by[m.group(1).decode()] = (env, eml)
                return by
            h.wait_for(lambda: len(ours()) >= 3, 15,
                       "3 messages at the sink")
            by_id = ours()
            for qid, rcpts, body in sent:
                h.check(qid in by_id, "message %s not at the sink (%s)"
                        % (qid, sorted(by_id)))
                env, eml = by_id[qid]
                h.assert_bytes_equal(strip_received(eml, qid, qid),
                                     h.crlf(body), "message %s at the sink"
                                     % qid)
                want = [r for r in rcpts if not r.startswith("refuse")]
                h.check(env["rcpt"] == want,
                        "%s: sink recipients %r, want %r"
                        % (qid, env["rcpt"], want))
                h.check(env["from"] == "sender@example.net",
                        "%s: sender %r" % (qid, env["from"]))
                h.check(srv.grep("id=%s event=queued" % qid),
                        "no queued line for %s:\n%s" % (qid, srv.log()))
                for r in want:
                    srv.wait_log("id=%s event=delivery rcpt=<%s> "
                                 "relay=127.0.0.1" % (qid, r))
                    ln = srv.grep("id=%s event=delivery rcpt=<%s>"
                                  % (qid, r))[0]
                    h.check("status=sent" in ln and "delay=" in ln and
                            'reply="250 2.0.0 sink stored' in ln,
                            "delivery line: %s" % ln)
            qid1 = sent[1][0]
            ln = srv.wait_log("id=%s event=delivery rcpt=<refuse@example.org>"
                              % qid1)[0]
            h.check("status=bounced" in ln and "550 5.1.1 refused by sink"
                    in ln, "refused recipient's line: %s" % ln)
            # kept connection: the three messages and the bounce came over
            # one connection
            peers = {env["peer"] for env, _ in sink.messages()}
            h.check(len(peers) == 1,
                    "messages came over %d connections (%r), want 1 kept"
                    % (len(peers), peers))
    finally:
        sink.stop()


def test_smtp_next_hop_down_then_back():
    d = h.tmpdir()
    port, sport = h.free_ports(2)
    sink = Sink(d, sport)
    try:
        conf = h.write(os.path.join(d, "q.ini"), SMTP_CONF.format(
            port=port, sink=sport, queue=os.path.join(d, "queue")))
        with h.Serve(["-c", conf], name="queue-down") as srv:
            body = b"Subject: down\r\n\r\nwhile the next hop is down\r\n"
            qid = send(srv.port, "sender@example.net", ["x@example.org"],
                       body)
            ln = srv.wait_log("id=%s event=delivery rcpt=<x@example.org>"
                              % qid)[0]
            h.check("status=deferred" in ln and "451 4.4.1" in ln and
                    "retry=" in ln, "deferral line: %s" % ln)
            sink.start()
            msgs = sink.wait(1, timeout=20)
            h.assert_bytes_equal(strip_received(msgs[0][1], qid, qid), body,
                                 "message after the retry")
            srv.wait_log("id=%s event=delivery rcpt=<x@example.org> "
                         "relay=127.0.0.1" % qid, count=2)
            srv.wait_log("id=%s event=removed" % qid)
    finally:
        sink.stop()


MAILDIR_CONF = """[server]
hostname = queue.e2e.example

[listener in]
url = smtp://127.0.0.1:{port}

[delivery]
target = maildir
maildir = {md}/%u
queue = yes

[queue]
directory = {queue}
"""


def test_maildir_via_queue():
    import random
    d = h.tmpdir()
    (port,) = h.free_ports(1)
    md = os.path.join(d, "mail")
    conf = h.write(os.path.join(d, "m.ini"), MAILDIR_CONF.format(
        port=port, md=md, queue=os.path.join(d, "queue")))
    body = body_of(1, random.Random(3))
    with h.Serve(["-c", conf], name="queue-maildir") as srv:
        qid = send(srv.port, "s@example.net",
                   ["anna@example.org", "bert@example.org"], body)
        for u in ("anna", "bert"):
            h.wait_for(lambda: h.maildir_files(os.path.join(md, u)), 10,
                       "a message in %s's Maildir" % u)
            (f,) = h.maildir_files(os.path.join(md, u))
            trace, rest = h.split_trace(h.read(f), f)
            h.check(trace.startswith(b"Return-Path: <s@example.net>\r\n"),
                    "trace %r" % trace)
            h.check(re.search(rb" id " + qid.encode() + rb"[;\r]", trace),
                    "Received without the queue id %s: %r" % (qid, trace))
            h.assert_bytes_equal(rest, h.crlf(body), "%s's message" % u)
            srv.wait_log("id=%s event=delivery rcpt=<%s@example.org> "
                         "relay=local" % (qid, u))
        h.check(all("status=sent" in ln for ln in
                    srv.grep("id=%s event=delivery" % qid)),
                "delivery lines:\n%s" % srv.log())


PIPE_SCRIPT = """#!/bin/sh
# one run per recipient: record it, answer by the local part
cat > "{out}/$RECIPIENT.$$"
case "$RECIPIENT" in nouser*) exit 67;; esac
exit 0
"""

PIPE_CONF = """[server]
hostname = queue.e2e.example

[listener in]
url = smtp://127.0.0.1:{port}

[delivery]
target = pipe
command = {script} %r
queue = yes

[queue]
directory = {queue}
"""


def test_pipe_via_queue_once_per_recipient():
    d = h.tmpdir()
    (port,) = h.free_ports(1)
    out = os.path.join(d, "runs")
    os.makedirs(out)
    script = h.write(os.path.join(d, "deliver.sh"),
                     PIPE_SCRIPT.format(out=out), 0o755)
    conf = h.write(os.path.join(d, "p.ini"), PIPE_CONF.format(
        port=port, script=script, queue=os.path.join(d, "queue")))
    body = b"Subject: pipe\r\n\r\none command per recipient\r\n"
    rcpts = ["one@example.org", "two@example.org", "nouser@example.org"]
    with h.Serve(["-c", conf], name="queue-pipe") as srv:
        qid = send(srv.port, "s@example.net", rcpts, body)
        for r in rcpts:
            srv.wait_log("id=%s event=delivery rcpt=<%s>" % (qid, r))
        for r in rcpts[:2]:
            ln = srv.grep("id=%s event=delivery rcpt=<%s>" % (qid, r))[0]
            h.check("status=sent" in ln and "relay=local" in ln, ln)
        ln = srv.grep("id=%s event=delivery rcpt=<nouser@example.org>"
                      % qid)[0]
        h.check("status=bounced" in ln and "550 5.1.1" in ln, ln)
        runs = {}
        for f in os.listdir(out):
            runs.setdefault(f.rsplit(".", 1)[0], []).append(f)
        for r in rcpts:
            h.check(len(runs.get(r, [])) == 1,
                    "%s: %d command runs (%r)" % (r, len(runs.get(r, [])),
                                                  runs))
            data = h.read(os.path.join(out, runs[r][0]))
            h.check(data.startswith(b"Return-Path: <s@example.net>\r\n"
                                    b"Received: "),
                    "%s got %r" % (r, data[:200]))
            h.check(data.endswith(body), "%s body: %r" % (r, data[-100:]))


LMTP_FINAL = """[server]
hostname = final.e2e.example

[listener l]
url = lmtp://127.0.0.1:{port}

[delivery]
target = pipe
command = {script} %r
queue = no
"""

LMTP_CONF = """[server]
hostname = queue.e2e.example

[listener in]
url = smtp://127.0.0.1:{port}

[delivery]
target = lmtp
url = lmtp://127.0.0.1:{final}

[queue]
directory = {queue}
"""


def test_lmtp_via_queue():
    d = h.tmpdir()
    port, fport = h.free_ports(2)
    out = os.path.join(d, "runs")
    os.makedirs(out)
    script = h.write(os.path.join(d, "deliver.sh"),
                     PIPE_SCRIPT.format(out=out), 0o755)
    fconf = h.write(os.path.join(d, "final.ini"),
                    LMTP_FINAL.format(port=fport, script=script))
    conf = h.write(os.path.join(d, "l.ini"), LMTP_CONF.format(
        port=port, final=fport, queue=os.path.join(d, "queue")))
    body = b"Subject: lmtp\r\n\r\nper recipient over LMTP\r\n"
    rcpts = ["one@example.org", "nouser@example.org", "two@example.org"]
    with h.Serve(["-c", fconf], name="lmtp-final"), \
            h.Serve(["-c", conf], name="queue-lmtp") as srv:
        qid = send(srv.port, "s@example.net", rcpts, body)
        for r in rcpts:
            srv.wait_log("id=%s event=delivery rcpt=<%s>" % (qid, r))
        for r in ("one@example.org", "two@example.org"):
            ln = srv.grep("id=%s event=delivery rcpt=<%s>" % (qid, r))[0]
            h.check("status=sent" in ln and "relay=127.0.0.1" in ln, ln)
        ln = srv.grep("id=%s event=delivery rcpt=<nouser@example.org>"
                      % qid)[0]
        h.check("status=bounced" in ln and "550 5.1.1" in ln, ln)
        for r in ("one@example.org", "two@example.org"):
            h.wait_for(lambda: any(f.startswith(r + ".")
                                   for f in os.listdir(out)), 10,
                       "the final's command for %s" % r)


class ScriptedHop:
    """A next hop on loopback for scripted behaviour: it counts and keeps
    every connection and runs self.serve(conn) on a thread of its own
    (a subclass without serve only holds connections open)."""

    serve = None

    def __init__(self, backlog=8):
        self.ls = socket.socket()
        self.ls.bind((HOST, 0))
        self.ls.listen(backlog)
        self.port = self.ls.getsockname()[1]
        self.conns = 0
        self.socks = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                c, _ = self.ls.accept()
            except OSError:
                return
            with self.lock:
                self.conns += 1
                self.socks.append(c)
            if self.serve:
                threading.Thread(target=self.serve, args=(c,),
                                 daemon=True).start()

    def close(self):
        self.ls.close()
        with self.lock:
            for c in self.socks:
                try:
                    c.close()
                except OSError:
                    pass


class DroppingHop(ScriptedHop):
    """A scripted next hop (no PIPELINING): each connection takes one
    message; at the next MAIL on it, it closes without a word (a kept
    connection found dead only when used)."""

    def __init__(self):
        self.messages = []
        super().__init__()

    def serve(self, c):
        f = c.makefile("rb")
        done = 0
        try:
            c.sendall(b"220 hop ESMTP\r\n")
            while True:
                ln = f.readline()
                if not ln:
                    return
                verb = ln[:4].upper()
                if verb == b"EHLO":
                    c.sendall(b"250-hop\r\n250 8BITMIME\r\n")
                elif verb == b"MAIL" and done:
                    return  # dead, without a reply
                elif verb in (b"MAIL", b"RCPT", b"RSET", b"NOOP"):
                    c.sendall(b"250 ok\r\n")
                elif verb == b"DATA":
                    c.sendall(b"354 go\r\n")
                    data = b""
                    while True:
                        ln = f.readline()
                        if ln in (b".\r\n", b""):
                            break
                        data += ln[1:] if ln.startswith(b".") else ln
                    with self.lock:
                        self.messages.append(data)
                    done += 1
                    c.sendall(b"250 2.0.0 hop took it\r\n")
                elif verb == b"QUIT":
                    c.sendall(b"221 bye\r\n")
                    return
                else:
                    c.sendall(b"502 no\r\n")
        finally:
            c.close()


def test_dead_kept_connection_replaced_once():
    d = h.tmpdir()
    (port,) = h.free_ports(1)
    hop = DroppingHop()
    try:
        conf = h.write(os.path.join(d, "q.ini"), SMTP_CONF.format(
            port=port, sink=hop.port, queue=os.path.join(d, "queue")))
        with h.Serve(["-c", conf], name="queue-dead-kept") as srv:
            ids = []
            for i in range(2):
                body = ("Subject: kept %d\r\n\r\nbody %d\r\n"
                        % (i, i)).encode()
                qid = send(srv.port, "s@example.net", ["r@example.org"], body)
                ids.append(qid)
                srv.wait_log("id=%s event=removed" % qid)
            for qid in ids:
                lines = srv.grep("id=%s event=delivery" % qid)
                h.check(len(lines) == 1 and "status=sent" in lines[0],
                        "%s: %r" % (qid, lines))
            with hop.lock:
                h.check(hop.conns == 2, "hop saw %d connections, want 2 "
                        "(the kept one, dead, then a fresh one)" % hop.conns)
                h.check(len(hop.messages) == 2,
                        "hop got %d messages" % len(hop.messages))
    finally:
        hop.close()


class FullMailboxHop(ScriptedHop):
    """A next hop that answers 552 5.2.2 to RCPT for full@ and takes
    everything else."""

    def serve(self, c):
        f = c.makefile("rb")
        try:
            c.sendall(b"220 hop ESMTP\r\n")
            while True:
                ln = f.readline()
                if not ln:
                    return
                verb = ln[:4].upper()
                if verb == b"EHLO":
                    c.sendall(b"250-hop\r\n250 ENHANCEDSTATUSCODES\r\n")
                elif verb == b"RCPT" and b"full@" in ln:
                    c.sendall(b"552 5.2.2 mailbox full\r\n")
                elif verb in (b"MAIL", b"RCPT", b"RSET", b"NOOP"):
                    c.sendall(b"250 ok\r\n")
                elif verb == b"DATA":
                    c.sendall(b"354 go\r\n")
                    while f.readline() not in (b".\r\n", b""):
                        pass
                    c.sendall(b"250 2.0.0 took it\r\n")
                elif verb == b"QUIT":
                    c.sendall(b"221 bye\r\n")
                    return
                else:
                    c.sendall(b"502 no\r\n")
        finally:
            c.close()


def test_rcpt_552_is_temporary():
    """RFC 5321 §4.5.3.1.10: a 552 to RCPT is retried as 452, not bounced;
    the other recipient is delivered."""
    d = h.tmpdir()
    (port,) = h.free_ports(1)
    hop = FullMailboxHop()
    try:
        conf = h.write(os.path.join(d, "q.ini"), SMTP_CONF.format(
            port=port, sink=hop.port, queue=os.path.join(d, "queue")))
        with h.Serve(["-c", conf], name="queue-552") as srv:
            qid = send(srv.port, "s@example.net",
                       ["full@example.org", "ok@example.org"],
                       b"Subject: 552\r\n\r\nbody\r\n")
            ln = srv.wait_log("id=%s event=delivery rcpt=<full@example.org>"
                              % qid)[0]
            h.check("status=deferred" in ln and "452 4.2.2" in ln,
                    "552 to RCPT: %s" % ln)
            ln = srv.wait_log("id=%s event=delivery rcpt=<ok@example.org>"
                              % qid)[0]
            h.check("status=sent" in ln, ln)
            h.check(not srv.grep("id=%s event=bounce" % qid) and
                    not srv.grep("status=bounced"), "bounced:\n" + srv.log())
    finally:
        hop.close()


if __name__ == "__main__":
    h.main([test_smtp_queue_byte_exact_and_reuse,
            test_smtp_next_hop_down_then_back,
            test_maildir_via_queue,
            test_pipe_via_queue_once_per_recipient,
            test_lmtp_via_queue,
            test_dead_kept_connection_replaced_once,
            test_rcpt_552_is_temporary])
