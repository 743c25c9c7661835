#!/usr/bin/env python3
"""tern serve with the queue: the operator review's findings, one test
each (src/cli/queue_deliver.c, serve.c, serve_log.c, config.c).

1. A next hop that accepts connections but never greets: 50 queued
   messages cost a few connection attempts, not 50 (the queue suspends
   the destination: tern_queue_job_unreachable); every message is
   deferred all the same.
2. Reload: a running queue is kept when the reloaded file says
   queue = no (restart_needed=delivery.queue), and a daemon started
   without one does not start using one.
3. recipient_check with target = smtp through the queue: the refused
   recipient gets 550 at RCPT, the other is accepted and relayed.
4. SIGTERM while a relay job is running: its log line names the next
   hop and says the delivery was cut short by the shutdown.
5. A recipient whose queue lifetime ended is logged status=expired.
6. pipe through the queue: the command's output ("no such mailbox")
   is in the failed recipient's reply and in the DSN's Diagnostic-Code.

Peers: /usr/bin/python3 with aiosmtpd (python3-aiosmtpd); missing, the
test fails.
"""

import os
import re
import signal
import smtplib
import threading

import e2e as h
import test_queue_serve as qs

HOST = "127.0.0.1"


class SilentHop(qs.ScriptedHop):
    """Accepts connections, counts them, never says a word."""

    def __init__(self):
        super().__init__(backlog=64)


SILENT_CONF = """[server]
hostname = queue.e2e.example
timeout_command = 1s

[listener in]
url = smtp://127.0.0.1:{port}

[delivery]
target = smtp
url = smtp://127.0.0.1:{hop}

[queue]
directory = {queue}
retry_min = 10m
retry_max = 1h
concurrency = 2
fsync = no
"""


def test_unreachable_hop_costs_few_connections():
    d = h.tmpdir()
    (port,) = h.free_ports(1)
    hop = SilentHop()
    n = 50
    try:
        conf = h.write(os.path.join(d, "q.ini"), SILENT_CONF.format(
            port=port, hop=hop.port, queue=os.path.join(d, "queue")))
        with h.Serve(["-c", conf], name="queue-silent") as srv:
            with smtplib.SMTP(HOST, srv.port, timeout=20) as s:
                s.ehlo("client.example")
                for i in range(n):
                    refused = s.sendmail(
                        "s@example.net", ["r%d@example.org" % i],
                        ("Subject: %d\r\n\r\nbody\r\n" % i).encode())
                    h.check(not refused, "refused: %r" % refused)
            for i in range(n):
                srv.wait_log("event=delivery rcpt=<r%d@example.org>" % i,
                             timeout=60)
            lines = srv.grep("event=delivery")
            h.check(all("status=deferred" in ln for ln in lines),
                    "a delivery line that is not deferred:\n%s"
                    % "\n".join(lines))
            h.check([ln for ln in lines if "relay=none" in ln and
                     'why="destination suspended, not tried"' in ln],
                    "no line for a recipient deferred untried:\n%s"
                    % "\n".join(lines))
            with hop.lock:
                accepts = hop.conns
            h.check(accepts <= 6,
                    "%d messages to a next hop that never greets cost %d "
                    "connection attempts (want a few: the destination is "
                    "suspended)" % (n, accepts))
    finally:
        hop.close()


RELOAD_CONF = """[server]
hostname = queue.e2e.example

[listener in]
url = smtp://127.0.0.1:{port}

[delivery]
target = smtp
url = smtp://127.0.0.1:{sink}
queue = {queue_on}

[queue]
directory = {queue}
retry_min = 1s
fsync = no
"""


def send_text(port, rcpt, body):
    """One message; the text of the 250 after DATA."""
    with smtplib.SMTP(HOST, port, timeout=20) as s:
        s.ehlo("client.example")
        s.mail("s@example.net")
        code, msg = s.rcpt(rcpt)
        h.check(code == 250, "RCPT %s: %d %r" % (rcpt, code, msg))
        code, msg = s.data(body)
        h.check(code == 250, "DATA: %d %r" % (code, msg))
        return msg.decode()


def test_reload_keeps_the_start_decision():
    d = h.tmpdir()
    port, sport = h.free_ports(2)
    sink = qs.Sink(d, sport).start()
    qdir = os.path.join(d, "queue")
    path = os.path.join(d, "r.ini")
    try:
        # started with the queue; the reload says queue = no
        h.write(path, RELOAD_CONF.format(port=port, sink=sport, queue=qdir,
                                         queue_on="yes"))
        with h.Serve(["-c", path], name="reload-queue-off") as srv:
            srv.wait_log("event=queue-open")
            t = send_text(srv.port, "a@example.org", b"Subject: 1\r\n\r\n1\r\n")
            qs.queued_id(t[6:])
            h.write(path, RELOAD_CONF.format(port=port, sink=sport,
                                             queue=qdir, queue_on="no"))
            srv.signal(signal.SIGHUP)
            ln = srv.wait_log("event=reload result=")[0]
            h.check("delivery.queue" in ln, "reload line: %s" % ln)
            t = send_text(srv.port, "b@example.org", b"Subject: 2\r\n\r\n2\r\n")
            h.check(qs.QUEUED_RE.match(t[6:]),
                    "after a reload to queue = no the running queue was "
                    "bypassed: %r" % t)
            qid = qs.queued_id(t[6:])
            srv.wait_log("id=%s event=delivery rcpt=<b@example.org>" % qid)
        # started without the queue; the reload says queue = yes
        h.write(path, RELOAD_CONF.format(port=port, sink=sport, queue=qdir,
                                         queue_on="no"))
        with h.Serve(["-c", path], name="reload-queue-on") as srv:
            h.write(path, RELOAD_CONF.format(port=port, sink=sport,
                                             queue=qdir, queue_on="yes"))
            srv.signal(signal.SIGHUP)
            ln = srv.wait_log("event=reload result=")[0]
            h.check("delivery.queue" in ln, "reload line: %s" % ln)
            t = send_text(srv.port, "c@example.org", b"Subject: 3\r\n\r\n3\r\n")
            h.check(not qs.QUEUED_RE.match(t[6:]),
                    "a daemon started without a queue queued after a "
                    "reload: %r" % t)
            h.check(not srv.grep("event=queue-open"), srv.log())
    finally:
        sink.stop()


CHECK_SCRIPT = """#!/bin/sh
case "$1" in bad*) exit 67;; esac
exit 0
"""

CHECK_CONF = """[server]
hostname = queue.e2e.example

[listener in]
url = smtp://127.0.0.1:{port}

[delivery]
target = smtp
url = smtp://127.0.0.1:{sink}
recipient_check = {script} %r

[queue]
directory = {queue}
fsync = no
"""


def test_recipient_check_with_queue_and_smtp():
    d = h.tmpdir()
    port, sport = h.free_ports(2)
    sink = qs.Sink(d, sport).start()
    try:
        script = h.write(os.path.join(d, "check.sh"), CHECK_SCRIPT, 0o755)
        conf = h.write(os.path.join(d, "c.ini"), CHECK_CONF.format(
            port=port, sink=sport, script=script,
            queue=os.path.join(d, "queue")))
        with h.Serve(["-c", conf], name="queue-rcheck") as srv:
            with smtplib.SMTP(HOST, srv.port, timeout=20) as s:
                s.ehlo("client.example")
                s.mail("s@example.net")
                code, msg = s.rcpt("bad@example.org")
                h.check(code == 550, "RCPT bad@: %d %r" % (code, msg))
                code, msg = s.rcpt("good@example.org")
                h.check(code == 250, "RCPT good@: %d %r" % (code, msg))
                code, msg = s.data(b"Subject: check\r\n\r\nchecked\r\n")
                h.check(code == 250, "DATA: %d %r" % (code, msg))
                qid = qs.queued_id(msg.decode()[6:])
            msgs = sink.wait(1)
            h.check(msgs[0][0]["rcpt"] == ["good@example.org"],
                    "relayed to %r" % msgs[0][0]["rcpt"])
            srv.wait_log("id=%s event=delivery rcpt=<good@example.org>"
                         % qid)
            h.check(srv.grep("event=recipient-check to=<bad@example.org> "
                             "status=550"), srv.log())
    finally:
        sink.stop()


class StallHop(qs.ScriptedHop):
    """Takes the message and never answers its end of data."""

    def __init__(self):
        self.got_data = threading.Event()
        super().__init__()

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
                    c.sendall(b"250-hop\r\n250 8BITMIME\r\n")
                elif verb in (b"MAIL", b"RCPT", b"RSET", b"NOOP"):
                    c.sendall(b"250 ok\r\n")
                elif verb == b"DATA":
                    c.sendall(b"354 go\r\n")
                    while ln not in (b".\r\n", b""):
                        ln = f.readline()
                    self.got_data.set()
                    f.read()  # silent until the peer goes
                    return
                else:
                    c.sendall(b"502 no\r\n")
        except OSError:
            return


STALL_CONF = """[server]
hostname = queue.e2e.example
shutdown_timeout = 1s

[listener in]
url = smtp://127.0.0.1:{port}

[delivery]
target = smtp
url = smtp://127.0.0.1:{hop}

[queue]
directory = {queue}
fsync = no
"""


def test_sigterm_cancelled_job_names_the_relay():
    d = h.tmpdir()
    (port,) = h.free_ports(1)
    hop = StallHop()
    try:
        conf = h.write(os.path.join(d, "s.ini"), STALL_CONF.format(
            port=port, hop=hop.port, queue=os.path.join(d, "queue")))
        srv = h.Serve(["-c", conf], name="queue-sigterm").start()
        try:
            qid = qs.send(srv.port, "s@example.net", ["x@example.org"],
                          b"Subject: stall\r\n\r\nstalled\r\n")
            h.check(hop.got_data.wait(15), "the hop never got the data")
            srv.signal(signal.SIGTERM)
            srv.wait_exit()
            lines = srv.grep("id=%s event=delivery rcpt=<x@example.org>"
                             % qid)
            h.check(len(lines) == 1, "delivery lines: %r\n%s"
                    % (lines, srv.log()))
            ln = lines[0]
            h.check("status=deferred" in ln and "relay=127.0.0.1" in ln and
                    "delivery cut short by shutdown" in ln,
                    "cancelled job's line: %s" % ln)
        finally:
            srv.cleanup()
    finally:
        hop.close()


EXPIRE_CONF = """[server]
hostname = queue.e2e.example

[listener in]
url = smtp://127.0.0.1:{port}

[delivery]
target = smtp
url = smtp://127.0.0.1:{hop}

[queue]
directory = {queue}
lifetime = 2s
retry_min = 1s
retry_max = 1s
fsync = no
"""


def test_expired_is_logged_as_expired():
    d = h.tmpdir()
    port, dead = h.free_ports(2)  # nothing listens on `dead`
    conf = h.write(os.path.join(d, "e.ini"), EXPIRE_CONF.format(
        port=port, hop=dead, queue=os.path.join(d, "queue")))
    with h.Serve(["-c", conf], name="queue-expire") as srv:
        qid = qs.send(srv.port, "", ["x@example.org"],
                      b"Subject: expire\r\n\r\nnever delivered\r\n")
        ln = srv.wait_log("status=expired", timeout=20)[0]
        h.check("id=%s event=delivery rcpt=<x@example.org>" % qid in ln,
                "expired line: %s" % ln)
        h.check(not [x for x in srv.grep("id=%s event=delivery" % qid)
                     if "status=bounced" in x],
                "an expired recipient logged as bounced:\n%s" % srv.log())


PIPE_SCRIPT = """#!/bin/sh
case "$RECIPIENT" in
nouser*) echo "no such mailbox" >&2; exit 67;;
esac
# whole files only: the test reads a file as soon as its name appears
cat > "{out}/.tmp.$$" && mv "{out}/.tmp.$$" "{out}/$RECIPIENT.$$"
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
fsync = no
"""


def test_pipe_output_in_the_bounce():
    d = h.tmpdir()
    (port,) = h.free_ports(1)
    out = os.path.join(d, "runs")
    os.makedirs(out)
    script = h.write(os.path.join(d, "deliver.sh"),
                     PIPE_SCRIPT.format(out=out), 0o755)
    conf = h.write(os.path.join(d, "p.ini"), PIPE_CONF.format(
        port=port, script=script, queue=os.path.join(d, "queue")))
    with h.Serve(["-c", conf], name="queue-pipe-output") as srv:
        qid = qs.send(srv.port, "s@example.net", ["nouser@example.org"],
                      b"Subject: pipe\r\n\r\nto nobody\r\n")
        ln = srv.wait_log("id=%s event=delivery rcpt=<nouser@example.org>"
                          % qid)[0]
        h.check("status=bounced" in ln and
                "command output: no such mailbox" in ln,
                "failed recipient's line: %s" % ln)
        h.wait_for(lambda: any(f.startswith("s@example.net.")
                               for f in os.listdir(out)), 15,
                   "the bounce delivered to the sender")
        (f,) = [f for f in os.listdir(out) if f.startswith("s@example.net.")]
        dsn = re.sub(rb"\r?\n[ \t]+", b" ", h.read(os.path.join(out, f)))
        h.check(b"Diagnostic-Code: smtp; 550" in dsn and
                b"no such mailbox" in dsn,
                "DSN without the command's output: %r" % dsn[:3000])


if __name__ == "__main__":
    h.main([test_unreachable_hop_costs_few_connections,
            test_reload_keeps_the_start_decision,
            test_recipient_check_with_queue_and_smtp,
            test_sigterm_cancelled_job_names_the_relay,
            test_expired_is_logged_as_expired,
            test_pipe_output_in_the_bounce])
