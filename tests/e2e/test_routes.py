#!/usr/bin/env python3
"""Routing per recipient (docs/configuration.md "Routing"): each accepted
recipient is queued with its destination, read back with
`tern queue list --json`:

- exact, ".suffix" and "*" lines of [routes]; an accepted domain goes
  "local"; a [routes] line only chooses where mail goes: it accepts
  nothing without AUTH (review finding: it opened an unauthenticated
  relay to that domain); a backup MX lists its domain in [domains]
  accept and [routes]; an authenticated user's mail to another domain goes to
  [delivery] relay: "mx:DOMAIN" (lower case) or "smarthost";
- [delivery] recipients applies to our own domains whatever their
  route, never to an authenticated user's mail to other domains;
- target = mx: every recipient to "mx:DOMAIN";
- a daemon without the queue keeps delivering as before; a reload that
  adds a route needing the queue answers 451 4.3.5 for it;
- a key of outbound mail ([outbound]) makes relay default to mx, and
  brings the queue;
- the worked example of docs/configuration.md passes `tern serve --check`.

Nothing here is delivered: every next hop is a closed loopback port, the
resolver ([outbound] resolver) a loopback socket of the test that answers
every query SERVFAIL at once, and retries are an hour away; no DNS is
asked of this machine.
"""

import json
import os
import re
import signal
import smtplib
import socket
import subprocess
import threading

import e2e as h

HERE = os.path.dirname(os.path.abspath(__file__))
DOC = os.path.join(HERE, "..", "..", "docs", "configuration.md")

COMMON = """[server]
hostname = route.e2e.example

[listener in]
url = smtp://127.0.0.1:{p1}

[listener sub]
url = smtp://127.0.0.1:{p2}
auth = yes
insecure_auth = yes

[auth]
users = {users}

[queue]
directory = {queue}
retry_min = 1h
retry_max = 2h
fsync = no

[outbound]
resolver = 127.0.0.1:{dns}
port = {dead}
connect_timeout = 1s
"""

ROUTES = COMMON + """
[domains]
accept = example.org backup.example

[delivery]
target = smtp
url = smtp://127.0.0.1:{dead}
recipients = {known}

[routes]
partner.example = smtp://127.0.0.1:{dead2}
backup.example = smtp://127.0.0.1:{dead2}
.sub.example = mx
* = mx
"""

SMARTHOST = COMMON + """
[domains]
accept = example.org

[delivery]
target = smtp
url = smtp://127.0.0.1:{dead}
relay = smtp://127.0.0.1:{dead2}
"""

TARGET_MX = COMMON + """
[domains]
accept = example.org

[delivery]
target = mx
"""


class ServFail:
    """A UDP "DNS server" on loopback answering every query SERVFAIL at
    once, so that MX lookups fail fast (a silent one would hold every
    delivery attempt, and the daemon's stop, for the resolver's
    timeouts)."""

    def __init__(self):
        self.s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.s.bind(("127.0.0.1", 0))
        self.s.settimeout(0.2)
        self.port = self.s.getsockname()[1]
        self.stop = False
        self.t = threading.Thread(target=self.run, daemon=True)
        self.t.start()

    def run(self):
        while not self.stop:
            try:
                q, addr = self.s.recvfrom(4096)
            except socket.timeout:
                continue
            except OSError:
                return
            if len(q) < 12:
                continue
            # the query's id and question; QR, RD and RA set, RCODE 2
            flags = bytes([0x80 | (q[2] & 0x01), 0x82])
            self.s.sendto(q[:2] + flags + q[4:6] + b"\0" * 6 + q[12:], addr)

    def close(self):
        self.stop = True
        self.t.join(timeout=5)
        self.s.close()


DNS = ServFail()


def setup(template, **kw):
    d = h.tmpdir(prefix="tern-e2e-routes-")
    users = h.write(os.path.join(d, "users"),
                    h.passwd_line("carol", "pw-carol") + "\n")
    known = h.write(os.path.join(d, "known"),
                    "a@example.org\nf@example.org\n@partner.example\n"
                    "c@x.sub.example\nf@backup.example\n")
    p1, p2, dead, dead2 = h.free_ports(4)
    conf = h.write(os.path.join(d, "tern.ini"), template.format(
        p1=p1, p2=p2, users=users, known=known, dead=dead, dead2=dead2,
        dns=DNS.port,
        queue=os.path.join(d, "queue"), **kw))
    return d, conf, dead2


def rcpt_codes(port, rcpts, login=False, data=True):
    """One transaction: {rcpt: (code, text)}; the queue id or None."""
    res = {}
    qid = None
    with smtplib.SMTP("127.0.0.1", port, timeout=20) as c:
        c.ehlo("client.example")
        if login:
            c.login("carol", "pw-carol")
        h.check(c.mail("sender@example.org")[0] == 250, "MAIL")
        for r in rcpts:
            code, msg = c.rcpt(r)
            res[r] = (code, msg.decode("utf-8", "replace"))
        if data and any(code == 250 for code, _ in res.values()):
            code, msg = c.data(b"Subject: route\r\n\r\nwhere to?\r\n")
            h.check(code == 250, "DATA: %d %r" % (code, msg))
            m = re.search(rb"queued as ([0-9A-Z]+)", msg)
            qid = m.group(1).decode() if m else None
    return res, qid


def expect(res, rcpt, code, enh=None):
    got, text = res[rcpt]
    h.check(got == code and (enh is None or text.startswith(enh)),
            "RCPT %s: %d %r, want %d %s" % (rcpt, got, text, code, enh or ""))


def dests(conf, qid):
    """{address: dest} of message qid in `tern queue list --json`."""
    p = h.run([h.tern_bin(), "queue", "list", "--json", "-c", conf],
              timeout=30, stdin=subprocess.DEVNULL)
    for ln in p.stdout.decode().splitlines():
        m = json.loads(ln)
        if m["id"] == qid:
            return {r["addr"]: r["dest"] for r in m["rcpts"]}
    h.fail("message %s not in tern queue list --json:\n%s"
           % (qid, p.stdout.decode()))


def test_routes_and_accepted_domains():
    d, conf, dead2 = setup(ROUTES)
    with h.Serve(["-c", conf], name="routes") as srv:
        p_in, p_sub = srv.ports
        res, q1 = rcpt_codes(p_in, ["a@Example.org", "b@partner.example",
                                    "c@x.SUB.example", "d@gmail.example",
                                    "nobody@example.org",
                                    "nobody@x.sub.example",
                                    "e@deeper.partner.example",
                                    "f@Backup.example",
                                    "nobody@backup.example"])
        expect(res, "a@Example.org", 250)
        # a route accepts nothing from anyone: no relay to those domains
        expect(res, "b@partner.example", 554, "5.7.1")
        expect(res, "c@x.SUB.example", 554, "5.7.1")
        expect(res, "d@gmail.example", 554, "5.7.1")  # "*" accepts none
        expect(res, "nobody@example.org", 550, "5.1.1")
        expect(res, "nobody@x.sub.example", 554, "5.7.1")
        expect(res, "e@deeper.partner.example", 554, "5.7.1")
        # a backup MX: accepted ([domains]) and routed ([routes]); the
        # recipients file applies to it (an accepted domain)
        expect(res, "f@Backup.example", 250)
        expect(res, "nobody@backup.example", 550, "5.1.1")
        h.check(dests(conf, q1) == {
            "a@Example.org": "local",
            "f@Backup.example": "url:smtp://127.0.0.1:%d" % dead2},
            dests(conf, q1))

        res, q2 = rcpt_codes(p_sub, ["e@Other.Example", "f@example.org",
                                     "g@partner.example.com",
                                     "nobody@example.org",
                                     "b@partner.example", "c@x.SUB.example",
                                     "nobody@x.sub.example"], login=True)
        for r in ("e@Other.Example", "f@example.org",
                  "g@partner.example.com", "b@partner.example",
                  "c@x.SUB.example", "nobody@x.sub.example"):
            expect(res, r, 250)
        expect(res, "nobody@example.org", 550, "5.1.1")
        # authenticated users' mail follows the routes; a routed domain
        # is not ours, so the recipients file does not apply to it
        h.check(dests(conf, q2) == {
            "e@Other.Example": "mx:other.example",  # not in recipients:
            "f@example.org": "local",                # not checked
            "g@partner.example.com": "mx:partner.example.com",
            "b@partner.example": "url:smtp://127.0.0.1:%d" % dead2,
            "c@x.SUB.example": "mx:x.sub.example",
            "nobody@x.sub.example": "mx:x.sub.example"},
            dests(conf, q2))


def test_smarthost():
    d, conf, dead2 = setup(SMARTHOST)
    with h.Serve(["-c", conf], name="smarthost") as srv:
        res, qid = rcpt_codes(srv.ports[1], ["g@other.example",
                                             "h@example.org"], login=True)
        h.check(dests(conf, qid) == {"g@other.example": "smarthost",
                                     "h@example.org": "local"},
                dests(conf, qid))


def test_target_mx():
    d, conf, _ = setup(TARGET_MX)
    with h.Serve(["-c", conf], name="target-mx") as srv:
        res, q1 = rcpt_codes(srv.ports[0], ["a@EXAMPLE.org",
                                            "b@other.example"])
        expect(res, "b@other.example", 554, "5.7.1")
        h.check(dests(conf, q1) == {"a@EXAMPLE.org": "mx:example.org"},
                dests(conf, q1))
        res, q2 = rcpt_codes(srv.ports[1], ["b@other.example"], login=True)
        h.check(dests(conf, q2) == {"b@other.example": "mx:other.example"},
                dests(conf, q2))


MAILDIR = """[server]
hostname = route.e2e.example

[listener sub]
url = smtp://127.0.0.1:{p2}
auth = yes
insecure_auth = yes

[auth]
users = {users}

[domains]
accept = example.org

[delivery]
maildir = {maildir}
"""


def test_no_queue_as_before_then_reload():
    d = h.tmpdir(prefix="tern-e2e-routes-")
    users = h.write(os.path.join(d, "users"),
                    h.passwd_line("carol", "pw-carol") + "\n")
    (p2,) = h.free_ports(1)
    md = os.path.join(d, "mail")
    text = MAILDIR.format(p2=p2, users=users, maildir=md)
    conf = h.write(os.path.join(d, "tern.ini"), text)
    with h.Serve(["-c", conf], name="noqueue") as srv:
        # as before: an authenticated user's mail to another domain is
        # delivered by the target, in the transaction
        res, _ = rcpt_codes(srv.port, ["x@other.example"], login=True)
        expect(res, "x@other.example", 250)
        h.wait_for(lambda: len(h.maildir_files(md)) == 1, 10,
                   "the message in the Maildir")
        h.check(not os.path.exists(os.path.join(d, "queue")),
                "a queue was made")
        h.write(conf, text + "\n[routes]\n* = mx\n")
        srv.signal(signal.SIGHUP)
        srv.wait_log("restart_needed=delivery.queue")
        res, _ = rcpt_codes(srv.port, ["x@other.example", "y@example.org"],
                            login=True, data=False)
        expect(res, "x@other.example", 451, "4.3.5")
        expect(res, "y@example.org", 250)
        srv.wait_log("what=route dest=mx:other.example")


OUTBOUND_ONLY = """[server]
hostname = route.e2e.example

[listener sub]
url = smtp://127.0.0.1:{p2}
auth = yes
insecure_auth = yes

[auth]
users = {users}

[domains]
accept = example.org

[delivery]
maildir = {maildir}

[queue]
directory = {queue}
retry_min = 1h
retry_max = 2h
fsync = no

[outbound]
resolver = 127.0.0.1:{dns}
"""


def test_outbound_keys_bring_mx_and_queue():
    """A file with a key of outbound mail ([outbound] here) and no relay
    key: users' mail to other domains goes to its MX, and the queue is
    on by itself (a maildir target otherwise delivers in the
    transaction)."""
    d = h.tmpdir(prefix="tern-e2e-routes-")
    users = h.write(os.path.join(d, "users"),
                    h.passwd_line("carol", "pw-carol") + "\n")
    (p2,) = h.free_ports(1)
    conf = h.write(os.path.join(d, "tern.ini"), OUTBOUND_ONLY.format(
        p2=p2, users=users, maildir=os.path.join(d, "mail"),
        queue=os.path.join(d, "queue"), dns=DNS.port))
    with h.Serve(["-c", conf], name="outbound-only") as srv:
        res, qid = rcpt_codes(srv.port, ["x@Other.example"], login=True)
        h.check(qid, "not queued: %r" % (res,))
        h.check(dests(conf, qid) == {"x@Other.example": "mx:other.example"},
                dests(conf, qid))


def worked_example():
    """The ini block of docs/configuration.md marked worked-example."""
    text = open(DOC, encoding="utf-8").read()
    m = re.search(r"<!-- worked-example[^>]*-->\s*```ini\n(.*?)```", text,
                  re.S)
    h.check(m, "no worked-example block in %s" % DOC)
    return m.group(1)


def test_worked_example_check():
    d = h.tmpdir(prefix="tern-e2e-example-")
    ini = worked_example()
    rsa = os.path.join(d, "2026r.pem")
    ed = os.path.join(d, "2026e.pem")
    openssl = h.require_tool("openssl")
    h.run([openssl, "genpkey", "-algorithm", "RSA", "-pkeyopt",
           "rsa_keygen_bits:2048", "-out", rsa], timeout=60)
    h.run([openssl, "genpkey", "-algorithm", "ed25519", "-out", ed],
          timeout=30)
    users = h.write(os.path.join(d, "users"),
                    h.passwd_line("alice", "pw-alice") + "\n")
    # the recipients file as the text shows it
    m = re.search(r"`/etc/tern/recipients` lists the mailboxes, one a "
                  r"line:\s*```\n(.*?)```", open(DOC, encoding="utf-8").read(),
                  re.S)
    h.check(m, "the worked example does not show /etc/tern/recipients")
    known = h.write(os.path.join(d, "recipients"), m.group(1))
    os.makedirs(os.path.join(d, "lib"))
    for old, new in (("/etc/tern/recipients", known),
                     ("/etc/tern/mail.example.org.pem", h.cert("server.pem")),
                     ("/etc/tern/mail.example.org.key", h.cert("server.key")),
                     ("/etc/tern/users", users),
                     ("/etc/tern/dkim/2026r.pem", rsa),
                     ("/etc/tern/dkim/2026e.pem", ed),
                     ("/var/mail", os.path.join(d, "mail")),
                     ("/var/lib/tern", os.path.join(d, "lib"))):
        h.check(old in ini, "%s not in the worked example" % old)
        ini = ini.replace(old, new)
    conf = h.write(os.path.join(d, "example.ini"), ini)
    rc, out, err = h.run_serve(["-c", conf, "--check"], cwd=d)
    h.check(rc == 0 and "configuration OK" in out,
            "--check of the worked example: %d %r %r" % (rc, out, err))
    # and says where mail goes
    for line in ("  delivery: target=maildir queue=yes relay=mx\n",
                 "  tls_policy example.net: verify\n",
                 "  dkim rsa: d=example.org s=2026r key=%s\n" % rsa,
                 "  dkim ed25519: d=example.org s=2026e key=%s\n" % ed,
                 "  outbound: helo=mail.example.org resolver=/etc/resolv.conf "
                 "dnssec=yes trust_anchor=/usr/share/dns/root.key "
                 "mta_sts=yes port=25\n"):
        h.check(line in out, "--check output lacks %r:\n%s" % (line, out))
    # and its routing is what the text says: the same file, served on
    # loopback ports, queues a user's mail to gmail.com for mx:gmail.com
    p1, p2, dead = h.free_ports(3)
    ini = (ini.replace("smtp://0.0.0.0:25", "smtp://127.0.0.1:%d" % p1)
              .replace("smtp://0.0.0.0:587", "smtp://127.0.0.1:%d" % p2)
              .replace("[outbound]\n", "[outbound]\nresolver = 127.0.0.1:%d\n"
                       "port = %d\n" % (DNS.port, dead)))
    conf = h.write(os.path.join(d, "served.ini"), ini)
    with h.Serve(["-c", conf], name="example") as srv:
        with smtplib.SMTP("127.0.0.1", srv.ports[1], timeout=20) as c:
            c.starttls()
            c.ehlo("client.example")
            c.login("alice", "pw-alice")
            h.check(c.mail("alice@example.org")[0] == 250, "MAIL")
            h.check(c.rcpt("bob@gmail.com")[0] == 250, "RCPT")
            code, msg = c.data(b"From: alice@example.org\r\n"
                               b"Subject: hi\r\n\r\nhello\r\n")
            h.check(code == 250, "DATA: %d %r" % (code, msg))
            qid = re.search(rb"queued as ([0-9A-Z]+)", msg).group(1).decode()
        with smtplib.SMTP("127.0.0.1", srv.ports[0], timeout=20) as c:
            c.ehlo("client.example")
            h.check(c.mail("x@elsewhere.example")[0] == 250, "MAIL")
            code, msg = c.rcpt("bob@gmail.com")
            h.check(code == 554 and msg.startswith(b"5.7.1"),
                    "port 25 relays: %d %r" % (code, msg))
            # the mailboxes of [delivery] recipients, and no others: an
            # unknown local part is refused, no Maildir made for it
            for rcpt in ("alice@example.org", "postmaster@example.org"):
                code, msg = c.rcpt(rcpt)
                h.check(code == 250, "RCPT %s: %d %r" % (rcpt, code, msg))
            code, msg = c.rcpt("nobody@example.org")
            h.check(code == 550 and msg.startswith(b"5.1.1"),
                    "an unknown user of example.org: %d %r" % (code, msg))
        h.check(dests(conf, qid) == {"bob@gmail.com": "mx:gmail.com"},
                dests(conf, qid))


if __name__ == "__main__":
    h.main([test_routes_and_accepted_domains, test_smarthost,
            test_target_mx, test_no_queue_as_before_then_reload,
            test_outbound_keys_bring_mx_and_queue,
            test_worked_example_check])
