#!/usr/bin/env python3
"""The lmtp and smtp delivery targets (src/cli/deliver_forward.c): tern
serve forwards each message to a next hop within the same transaction.

1. lmtp target into a private Dovecot LMTP (unix socket), inbound SMTP:
   Dovecot's own RCPT replies; one recipient per transaction (452 4.5.3)
   so that the one end-of-data reply is true; byte-exact in the Maildirs.
2. Inbound LMTP (tern listener lmtp://127.0.0.1:PORT) to Dovecot: each
   RCPT gets Dovecot's own answer (250, 550, 250), each accepted
   recipient its own after DATA.
2b. smtp target into Postfix's real smtpd refusing one of three
   recipients: Postfix's RCPT replies and its 250, checked against
   Postfix's Maildirs and log.
3. smtp target into Postfix smtp-sink (-d dumps): 50 messages, all 250,
   byte-exact in the dumps (smtp-sink writes LF line ends).
4. Next hop down: 451 4.4.1 at MAIL; the daemon stays up and forwards
   once the next hop is there.
5. 5 MiB forwarded (smtp target) to a second tern serve with a Maildir:
   byte-exact, the forwarding daemon's VmRSS grows < 20 MiB (streamed).
"""

import glob
import os
import pwd
import random
import re
import smtplib
import subprocess
import threading
import time

import e2e as h
from dovecot import Dovecot  # tests/interop/dovecot.py

HOST = "127.0.0.1"

FWD_CONF = """[server]
hostname = fwd.e2e.example
max_message_size = 0

[listener {lname}]
url = {listen}

[delivery]
target = {target}
url = {url}
queue = no
"""

MAILDIR_CONF = """[server]
hostname = final.e2e.example
max_message_size = 0

[listener final]
url = smtp://127.0.0.1:{port}

[delivery]
target = maildir
maildir = {maildir}
fsync = no
"""


def fwd_conf(d, target, url, listen=None, name="fwd"):
    if listen is None:
        (p,) = h.free_ports(1)
        listen = "smtp://127.0.0.1:%d" % p
    return h.write(os.path.join(d, name + ".ini"), FWD_CONF.format(
        lname="in", listen=listen, target=target, url=url))


# ---- child servers ---------------------------------------------------------------

class Proc:
    """A server child (dovecot, smtp-sink) with its output collected;
    terminated (then killed) on exit."""

    def __init__(self, cmd, ready, name):
        self.cmd, self.ready, self.name = cmd, ready, name
        self.lines = []
        self.p = None

    def __enter__(self):
        self.p = subprocess.Popen(self.cmd, stdin=subprocess.DEVNULL,
                                  stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT)

        def read():
            for raw in self.p.stdout:
                self.lines.append(raw.decode("utf-8", "replace").rstrip())
        self.t = threading.Thread(target=read, daemon=True)
        self.t.start()
        try:
            h.wait_for(lambda: self.ready() or self.p.poll() is not None, 15,
                       "%s to start" % self.name)
            h.check(self.p.poll() is None, "%s exited (%s): %s" % (
                self.name, self.p.returncode, "\n".join(self.lines[-30:])))
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self):
        if self.p is None or self.p.poll() is not None:
            return
        self.p.terminate()
        try:
            self.p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait(timeout=10)

    def __exit__(self, *a):
        self.stop()
        return False


KNOWN = ("alice", "bob")


TRACE_NAMES = (b"return-path", b"received", b"delivered-to", b"x-original-to")


def strip_trace(data, what):
    """(trace, rest): the trace header fields (Return-Path, Received,
    Delivered-To, with continuation lines) in front of the message."""
    pos = 0
    while True:
        end = data.find(b"\r\n", pos)
        h.check(end >= 0, "%s: no end of line after %r" % (what, data[:pos]))
        line = data[pos:end]
        name = line.split(b":", 1)[0].lower()
        if line[:1] in (b" ", b"\t") and pos > 0:
            pass
        elif name not in TRACE_NAMES:
            return data[:pos], data[pos:]
        pos = end + 2


def check_dovecot_copy(dc, user, msg, count=1):
    files = h.wait_for(lambda: len(dc.files(user)) >= count and dc.files(user),
                       10, "%d message(s) in %s's Maildir" % (count, user))
    h.check(len(files) == count, "%s: expected %d file(s): %r"
            % (user, count, files))
    got = h.read(files[-1])
    trace, rest = strip_trace(got, "%s's Maildir file" % user)
    # RFC 3848: "with LMTP" when the inbound listener spoke LMTP
    h.check(b"(tern) with ESMTP" in trace or b"(tern) with LMTP" in trace,
            "%s: tern's Received line missing in trace %r" % (user, trace))
    h.check(b"Dovecot" in trace or b"LMTP" in trace,
            "%s: Dovecot's Received line missing in trace %r" % (user, trace))
    h.assert_bytes_equal(rest, msg, "%s's Maildir file (after trace)" % user)


# ---- 1. lmtp target, inbound SMTP ------------------------------------------------

def test_lmtp_target_smtp_inbound():
    """Dovecot LMTP behind an SMTP listener, three recipients, Dovecot
    refusing one: each RCPT is answered with Dovecot's own RCPT reply;
    a second accepted recipient gets 452 4.5.3 (one recipient per
    transaction: one end-of-data reply cannot tell LMTP's per-recipient
    outcomes), the client sends it again in its own transaction. Every
    reply matches the Maildirs on Dovecot's side."""
    rng = random.Random(101)
    with Dovecot() as dc:
        d = h.tmpdir("tern-e2e-fwd1-")
        conf = fwd_conf(d, "lmtp", "lmtp://" + dc.sock)
        with h.Serve(["-c", conf], name="fwd-lmtp") as srv:
            m1 = h.make_message("fwd1-a@e2e", 20000, rng)
            with smtplib.SMTP(HOST, srv.port, timeout=20) as c:
                c.ehlo("client.example")
                h.check(c.mail("sender@example.net")[0] == 250, "MAIL")
                replies = [c.rcpt(r) for r in ("nobody@example.org",
                                                "alice@example.org",
                                                "bob@example.org")]
                print("  RCPT replies: %r" % replies)
                h.check(replies[1][0] == 250, "alice: %r" % (replies[1],))
                h.check(replies[0][0] == 550 and
                        replies[0][1].startswith(b"5.1.1"),
                        "nobody: expected Dovecot's 550 5.1.1 at RCPT, got %r"
                        % (replies[0],))
                h.check(replies[2][0] == 452 and
                        replies[2][1].startswith(b"4.5.3"),
                        "bob: expected 452 4.5.3 (one recipient per "
                        "transaction), got %r" % (replies[2],))
                code, msg = c.data(m1)
                h.check(code == 250, "DATA for alice: %d %r%s"
                        % (code, msg, dc.log()))
                # the client sends the deferred recipient again
                h.check(c.mail("sender@example.net")[0] == 250, "MAIL 2")
                code, msg = c.rcpt("bob@example.org")
                h.check(code == 250, "bob again: %d %r" % (code, msg))
                code, msg = c.data(m1)
                h.check(code == 250, "DATA for bob: %d %r" % (code, msg))
            for u in KNOWN:  # each exactly once, byte-exact
                check_dovecot_copy(dc, u, m1)
            h.check(not glob.glob(os.path.join(dc.d, "mail", "nobody*")),
                    "a Maildir for the refused recipient exists")
            lines = srv.wait_log("event=message", count=2)
            h.check(all("status=250" in ln for ln in lines), "log: %r" % lines)
            fw = srv.grep("event=forward step=rcpt")
            h.check(len(fw) == 3 and any("result=550" in ln for ln in fw),
                    "expected the three forwarded RCPT outcomes logged: %r"
                    % fw)


# ---- 2. inbound LMTP -------------------------------------------------------------

def test_lmtp_inbound_per_recipient():
    rng = random.Random(102)
    with Dovecot() as dc:
        d = h.tmpdir("tern-e2e-fwd2-")
        (p,) = h.free_ports(1)
        conf = fwd_conf(d, "lmtp", "lmtp://" + dc.sock,
                        listen="lmtp://127.0.0.1:%d" % p)
        with h.Serve(["-c", conf], name="fwd-lmtp-in") as srv:
            m = h.make_message("fwd2@e2e", 30000, rng)
            with h.session(srv.port, "LHLO client.example") as r:
                r.cmd("MAIL FROM:<sender@example.net>", 250)
                rr = [r.cmd("RCPT TO:<%s>" % t) for t in
                      ("alice@example.org", "nobody@example.org",
                       "bob@example.org")]
                print("  RCPT replies: %r" % rr)
                h.check([c for c, _ in rr] == [250, 550, 250],
                        "expected RCPT replies 250, 550 (Dovecot's), 250: %r"
                        % rr)
                h.check(rr[1][1][0].startswith("550 5.1.1"),
                        "nobody@: expected Dovecot's 550 5.1.1, got %r"
                        % (rr[1],))
                r.cmd("DATA", 354)
                r.send(h.dot_stuff(m) + b".\r\n")
                replies = [r.reply() for _ in range(2)]
                r.cmd("QUIT", 221)
            print("  per-recipient data replies: %r" % replies)
            h.check([c for c, _ in replies] == [250, 250],
                    "expected a 250 for alice and bob, got %r" % replies)
            for u in KNOWN:
                check_dovecot_copy(dc, u, m)


# ---- 2b. smtp target: Postfix's real smtpd as the next hop -----------------------

POSTFIX_MAIN = """\
compatibility_level = 3.6
queue_directory = {d}/queue
data_directory = {d}/data
command_directory = /usr/sbin
daemon_directory = /usr/lib/postfix/sbin
mail_owner = postfix
myhostname = hop.e2e.example
mydomain = e2e.example
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
maillog_file_prefixes = {d}
maillog_file = {d}/maillog
virtual_mailbox_domains = example.org
virtual_mailbox_base = {d}/mail
virtual_mailbox_maps = texthash:{d}/conf/vmailbox
virtual_uid_maps = static:{uid}
virtual_gid_maps = static:{gid}
virtual_transport = virtual
smtpd_recipient_restrictions = reject_unlisted_recipient,
  permit_mynetworks, reject_unauth_destination
mynetworks = 127.0.0.0/8
alias_maps =
alias_database =
"""

POSTFIX_MASTER = """\
127.0.0.1:{port} inet n - n - - smtpd
pickup    unix  n - n 60 1 pickup
cleanup   unix  n - n -  0 cleanup
qmgr      unix  n - n 300 1 qmgr
rewrite   unix  - - n -  - trivial-rewrite
bounce    unix  - - n -  0 bounce
defer     unix  - - n -  0 bounce
trace     unix  - - n -  0 bounce
verify    unix  - - n -  1 verify
proxymap  unix  - - n -  - proxymap
smtp      unix  - - n -  - smtp
relay     unix  - - n -  - smtp
error     unix  - - n -  - error
retry     unix  - - n -  - error
discard   unix  - - n -  - discard
virtual   unix  - n n -  - virtual
anvil     unix  - - n -  1 anvil
scache    unix  - - n -  1 scache
postlog   unix-dgram n - n - 1 postlogd
"""


class Postfix:
    """A private Postfix instance (its own config, queue and log
    directories) whose smtpd listens on a loopback port and delivers
    alice@ and bob@example.org to Maildirs; any other recipient is
    refused at RCPT time (reject_unlisted_recipient)."""

    def __init__(self):
        self.postfix = h.require_tool("postfix", paths=["/usr/sbin/postfix"])
        h.check(os.path.exists("/usr/lib/postfix/sbin/smtpd"),
                "Postfix's smtpd is not installed (Debian: postfix)")
        h.check(os.getuid() == 0, "a private Postfix instance needs root")
        d = self.d = h.tmpdir("tern-e2e-fwd-postfix-")
        os.chmod(d, 0o755)
        (self.port,) = h.free_ports(1)
        nobody = pwd.getpwnam("nobody")
        for sub in ("conf", "queue", "data", "mail"):
            os.makedirs(os.path.join(d, sub))
        pf = pwd.getpwnam("postfix")
        os.chown(os.path.join(d, "data"), pf.pw_uid, pf.pw_gid)
        os.chown(os.path.join(d, "mail"), nobody.pw_uid, nobody.pw_gid)
        h.write(os.path.join(d, "conf", "main.cf"), POSTFIX_MAIN.format(
            d=d, uid=nobody.pw_uid, gid=nobody.pw_gid))
        h.write(os.path.join(d, "conf", "master.cf"),
                POSTFIX_MASTER.format(port=self.port))
        h.write(os.path.join(d, "conf", "vmailbox"),
                "alice@example.org example.org/alice/\n"
                "bob@example.org example.org/bob/\n")
        self.conf = os.path.join(d, "conf")

    def __enter__(self):
        r = subprocess.run([self.postfix, "-c", self.conf, "start"],
                           capture_output=True, timeout=60)
        h.check(r.returncode == 0, "postfix start: %r %r%s" % (
            r.stdout, r.stderr, self.log()))
        try:
            h.wait_for(lambda: h.listening(self.port), 20, "Postfix's smtpd")
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self):
        subprocess.run([self.postfix, "-c", self.conf, "stop"],
                       capture_output=True, timeout=60)

    def __exit__(self, *a):
        self.stop()
        return False

    def files(self, user):
        return sorted(glob.glob(os.path.join(self.d, "mail", "example.org",
                                             user, "new", "*")))

    def log(self):
        p = os.path.join(self.d, "maillog")
        return open(p, errors="replace").read() if os.path.exists(p) else ""


def test_smtp_target_postfix():
    """Postfix's smtpd as the SMTP next hop, three recipients, Postfix
    refusing one at RCPT: the inbound client gets Postfix's own RCPT
    replies (250, 550 5.1.1, 250) and Postfix's own 250 for the data,
    and exactly alice and bob hold the message on Postfix's side."""
    rng = random.Random(106)
    with Postfix() as pf:
        d = h.tmpdir("tern-e2e-fwd6-")
        conf = fwd_conf(d, "smtp", "smtp://127.0.0.1:%d" % pf.port)
        with h.Serve(["-c", conf], name="fwd-postfix") as srv:
            m = h.make_message("fwd6@e2e", 30000, rng)
            with smtplib.SMTP(HOST, srv.port, timeout=30) as c:
                c.ehlo("client.example")
                h.check(c.mail("sender@example.net")[0] == 250, "MAIL")
                rr = [c.rcpt(r) for r in ("alice@example.org",
                                           "nobody@example.org",
                                           "bob@example.org")]
                print("  RCPT replies: %r" % rr)
                h.check([x for x, _ in rr] == [250, 550, 250],
                        "expected 250, 550, 250: %r" % rr)
                h.check(rr[1][1].startswith(b"5.1.1") and
                        b"User unknown" in rr[1][1],
                        "nobody: expected Postfix's own refusal: %r"
                        % (rr[1],))
                code, msg = c.data(m)
                print("  DATA: %d %r" % (code, msg))
                h.check(code == 250 and b"queued as" in msg,
                        "expected Postfix's 250 ... queued as, got %d %r"
                        % (code, msg))
            for u in KNOWN:
                files = h.wait_for(lambda: pf.files(u), 20,
                                   "Postfix to deliver to %s" % u)
                h.check(len(files) == 1, "%s: %r" % (u, files))
                # Postfix's virtual(8) stores LF line ends
                _, rest = strip_trace(h.crlf(h.read(files[0])), files[0])
                h.assert_bytes_equal(rest, m, "%s's copy at Postfix" % u)
        # An LMTP listener in front of the same Postfix: the one reply
        # Postfix gives after the data is each accepted recipient's.
        (lp,) = h.free_ports(1)
        conf2 = fwd_conf(d, "smtp", "smtp://127.0.0.1:%d" % pf.port,
                         listen="lmtp://127.0.0.1:%d" % lp, name="fwd-lmtp")
        m2 = h.make_message("fwd6-lmtp@e2e", 5000, rng)
        with h.Serve(["-c", conf2], name="fwd-postfix-lmtp") as srv:
            with h.session(srv.port, "LHLO client.example") as r:
                r.cmd("MAIL FROM:<sender@example.net>", 250)
                rr = [r.cmd("RCPT TO:<%s>" % t)[0] for t in
                      ("alice@example.org", "nobody@example.org",
                       "bob@example.org")]
                h.check(rr == [250, 550, 250], "LMTP RCPT replies %r" % rr)
                r.cmd("DATA", 354)
                r.send(h.dot_stuff(m2) + b".\r\n")
                replies = [r.reply() for _ in range(2)]
            print("  LMTP listener, Postfix next hop: %r" % replies)
            h.check(all(c == 250 and "queued as" in ls[0]
                        for c, ls in replies), "data replies %r" % replies)
            for u in KNOWN:
                h.wait_for(lambda: len(pf.files(u)) == 2, 20,
                           "Postfix to deliver the second message to %s" % u)
        log = pf.log()
        h.check("<nobody@example.org>: Recipient address rejected" in log,
                "Postfix's log does not show the refusal:\n" + log[-2000:])
        h.check(not glob.glob(os.path.join(pf.d, "mail", "example.org",
                                           "nobody*")),
                "the refused recipient got mail")


# ---- 3. smtp target into smtp-sink ----------------------------------------------

def sink_cmd(port, dump_dir):
    sink = h.require_tool("smtp-sink", paths=["/usr/sbin/smtp-sink"])
    user = pwd.getpwuid(os.getuid()).pw_name
    return [sink, "-u", user, "-d", os.path.join(dump_dir, "m."),
            "%s:%d" % (HOST, port), "100"]


def sink_message(path):
    """The message in an smtp-sink dump: after its own X-* and three-line
    Received header, without the trailing empty line (LF line ends)."""
    data = h.read(path)
    m = re.match(rb"(?:X-[A-Za-z-]+: [^\n]*\n)*Received: [^\n]*\n"
                 rb"(?:[ \t][^\n]*\n)*", data)
    h.check(m, "not an smtp-sink dump: %r" % data[:300])
    rest = data[m.end():]
    h.check(rest.endswith(b"\n\n"), "dump does not end with an empty line")
    return data[:m.end()], rest[:-1]


def test_smtp_target_smtp_sink():
    rng = random.Random(103)
    d = h.tmpdir("tern-e2e-fwd3-")
    dump = os.path.join(d, "dump")
    os.makedirs(dump)
    (sp,) = h.free_ports(1)
    with Proc(sink_cmd(sp, dump), lambda: h.listening(sp), "smtp-sink"):
        conf = fwd_conf(d, "smtp", "smtp://127.0.0.1:%d" % sp)
        with h.Serve(["-c", conf], name="fwd-smtp") as srv:
            sent = {}
            with smtplib.SMTP(HOST, srv.port, timeout=30) as c:
                c.ehlo("client.example")
                for i in range(50):
                    mid = "fwd3-%d@e2e" % i
                    m = h.make_message(mid, rng.randint(200, 40000), rng)
                    c.mail("sender%d@example.net" % i)
                    code, msg = c.rcpt("rcpt%d@example.org" % i)
                    h.check(code == 250, "RCPT %d: %d %r" % (i, code, msg))
                    code, msg = c.data(m)
                    h.check(code == 250, "message %d: %d %r" % (i, code, msg))
                    sent[mid] = m
            files = h.wait_for(lambda: len(os.listdir(dump)) >= 50 and
                               os.listdir(dump), 15, "50 smtp-sink dumps")
            h.check(len(files) == 50, "expected 50 dumps, got %d" % len(files))
            seen = set()
            for f in files:
                _, body = sink_message(os.path.join(dump, f))
                trace, rest = strip_trace(h.crlf(body), f)
                h.check(b"(tern) with ESMTP" in trace,
                        "%s: no Received line by tern: %r" % (f, trace))
                mid = h.message_id(rest)
                h.check(mid in sent and mid not in seen,
                        "%s: unexpected Message-ID %r" % (f, mid))
                seen.add(mid)
                # smtp-sink stores lines with LF ends: compare that way
                h.assert_bytes_equal(rest.replace(b"\r\n", b"\n"),
                                     sent[mid].replace(b"\r\n", b"\n"),
                                     "smtp-sink dump of %s" % mid)
            srv.wait_log("event=message", count=50)
            h.check(len(srv.grep("status=250")) == 50,
                    "log: %s" % srv.log(10))


# ---- 4. next hop down ------------------------------------------------------------

def test_next_hop_down():
    rng = random.Random(104)
    d = h.tmpdir("tern-e2e-fwd4-")
    dump = os.path.join(d, "dump")
    os.makedirs(dump)
    (sp,) = h.free_ports(1)  # nothing listens there yet
    conf = fwd_conf(d, "smtp", "smtp://127.0.0.1:%d" % sp)
    with h.Serve(["-c", conf], name="fwd-down") as srv:
        m = h.make_message("fwd4@e2e", 5000, rng)
        with h.session(srv.port) as r:
            code, lines = r.cmd("MAIL FROM:<sender@example.net>")
            h.check(code == 451 and lines[0].startswith("451 4.4.1"),
                    "MAIL with the next hop down: expected 451 4.4.1, got %r"
                    % lines)
            srv.wait_log("event=forward step=mail")
            # the session goes on: a new transaction on the same connection
            r.cmd("RSET", 250)
            r.cmd("NOOP", 250)
        h.check(srv.alive(), "tern serve died: %s" % srv.log())
        with Proc(sink_cmd(sp, dump), lambda: h.listening(sp), "smtp-sink"):
            with smtplib.SMTP(HOST, srv.port, timeout=20) as c:
                c.ehlo("client.example")
                c.mail("sender@example.net")
                c.rcpt("rcpt@example.org")
                code, msg = c.data(m)
                h.check(code == 250, "after the next hop started: %d %r"
                        % (code, msg))
            (f,) = h.wait_for(lambda: os.listdir(dump), 10, "a dump")
            _, body = sink_message(os.path.join(dump, f))
            _, rest = strip_trace(h.crlf(body), f)
            h.assert_bytes_equal(rest.replace(b"\r\n", b"\n"),
                                 m.replace(b"\r\n", b"\n"), "dump")
        h.check(srv.alive(), "tern serve died: %s" % srv.log())


# ---- 5. 5 MiB, streamed ------------------------------------------------------------

def vmrss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for ln in f:
            if ln.startswith("VmRSS:"):
                return int(ln.split()[1])
    h.fail("no VmRSS for pid %d" % pid)


def test_big_message_streamed():
    rng = random.Random(105)
    d = h.tmpdir("tern-e2e-fwd5-")
    maildir = os.path.join(d, "mail")
    (p2,) = h.free_ports(1)
    conf2 = h.write(os.path.join(d, "final.ini"),
                    MAILDIR_CONF.format(port=p2, maildir=maildir))
    with h.Serve(["-c", conf2], name="final") as final:
        conf = fwd_conf(d, "smtp", "smtp://127.0.0.1:%d" % final.port)
        with h.Serve(["-c", conf], name="fwd-big") as srv:
            pid = srv.proc.pid
            small = h.make_message("fwd5-warm@e2e", 3000, rng)
            big = h.make_message("fwd5-big@e2e", 5 * 1024 * 1024, rng)
            with smtplib.SMTP(HOST, srv.port, timeout=60) as c:
                c.ehlo("client.example")
                c.mail("sender@example.net")
                c.rcpt("rcpt@example.org")
                code, msg = c.data(small)
                h.check(code == 250, "warm-up: %d %r" % (code, msg))
            base = vmrss_kib(pid)
            peak = [base]
            stop = threading.Event()

            def sample():
                while not stop.is_set():
                    try:
                        peak[0] = max(peak[0], vmrss_kib(pid))
                    except (OSError, h.TestFailure):
                        return
                    time.sleep(0.005)
            t = threading.Thread(target=sample, daemon=True)
            t.start()
            try:
                with smtplib.SMTP(HOST, srv.port, timeout=60) as c:
                    c.ehlo("client.example")
                    c.mail("sender@example.net")
                    c.rcpt("rcpt@example.org")
                    code, msg = c.data(big)
                    h.check(code == 250, "5 MiB: %d %r" % (code, msg))
            finally:
                stop.set()
                t.join(5)
            peak[0] = max(peak[0], vmrss_kib(pid))
            growth = (peak[0] - base) / 1024.0
            print("  forwarding daemon VmRSS %d KiB, peak %d KiB (+%.1f MiB)"
                  % (base, peak[0], growth))
            h.check(growth < 20, "VmRSS grew by %.1f MiB (< 20 expected): "
                    "not streamed" % growth)
            files = h.wait_for(lambda: len(h.maildir_files(maildir)) >= 2 and
                               h.maildir_files(maildir), 10, "2 stored")
            got = None
            for f in files:
                # both daemons' trace lines (final's, then the forwarder's)
                trace, rest = strip_trace(h.read(f), f)
                h.check(trace.count(b"(tern) with ESMTP") == 2,
                        "%s: expected two tern Received lines: %r" % (f, trace))
                if h.message_id(rest) == "fwd5-big@e2e":
                    got = rest
            h.check(got is not None, "the 5 MiB message was not stored")
            h.assert_bytes_equal(got, big, "the forwarded 5 MiB message")


if __name__ == "__main__":
    h.main([
        test_lmtp_target_smtp_inbound,
        test_lmtp_inbound_per_recipient,
        test_smtp_target_postfix,
        test_smtp_target_smtp_sink,
        test_next_hop_down,
        test_big_message_streamed,
    ])
