#!/usr/bin/env python3
"""Mail to the world without a namespace (issue 11, Deliver 1, 2, 5):
`tern serve` with [delivery] target = mx, its resolver pointed at a
test DNS server (python3-dnslib) on 127.0.0.1:RANDOM, and mail hosts
on 127.0.0.2, .3, .4 at one random port ([outbound] port = SINKPORT;
Linux answers every 127.0.0.0/8 address on lo without configuration).
The namespace tests with NSD and port 25 are tests/world's.

    127.0.0.2:SINKPORT  nothing listens (connection refused)
    127.0.0.3:SINKPORT  an aiosmtpd sink that counts connections
    127.0.0.4:SINKPORT  a black hole: takes the connection, never greets

Cases:
  test_mx_fallback      the first MX refuses the connection, the second
                        takes the message; another domain's single MX;
                        the delivery line names dest, mx, addr, tls
  test_null_mx          a null MX (RFC 7505): bounced at once with
                        5.1.10 in the DSN, no retry
  test_requiretls_no_starttls  REQUIRETLS to an MX without STARTTLS:
                        bounced at once with 5.7.30
  test_route_url        a [routes] URL: dest url:URL, no DNS asked
  test_smarthost        an authenticated user's mail to another domain
                        goes to [delivery] relay: dest smarthost
  test_reload_resolver  SIGHUP with another [outbound] resolver: new
                        connections use the new one
  test_servfail_expires SERVFAIL: deferred (4.4.3), then expired at the
                        end of a short [queue] lifetime, with a DSN
  test_dead_domain      a domain whose MX never greets and a live one in
                        one run: the live one's mail arrives at once
  test_concurrency      200 messages to one domain: never more than
                        [queue] concurrency connections at the sink
"""

import asyncio
import os
import re
import signal
import smtplib
import socket
import threading
import time

import qtest as h

try:
    from dnslib import A, MX, QTYPE, RCODE, RR, DNSRecord
    from dnslib.server import BaseResolver, DNSServer
except ImportError:
    h.fail("python3-dnslib is missing (Debian: python3-dnslib)")

DEAD, SINK, HOLE = "127.0.0.2", "127.0.0.3", "127.0.0.4"

# name -> list of (type, data); "servfail" and "nullmx" are special
ZONE = {
    "fall.example": [("MX", (10, "a.fall.example")), ("MX", (20, "b.fall.example"))],
    "a.fall.example": [("A", DEAD)],
    "b.fall.example": [("A", SINK)],
    "direct.example": [("MX", (10, "mx.direct.example"))],
    "mx.direct.example": [("A", SINK)],
    "home.example": [("MX", (10, "mx.home.example"))],
    "mx.home.example": [("A", SINK)],
    "null.example": [("MX", (0, "."))],
    "live.example": [("MX", (10, "mx.live.example"))],
    "mx.live.example": [("A", SINK)],
    "dead.example": [("MX", (10, "mx.dead.example"))],
    "mx.dead.example": [("A", HOLE)],
    "conc.example": [("MX", (10, "mx.conc.example"))],
    "mx.conc.example": [("A", SINK)],
    "sf.example": "servfail",
}


class Resolver(BaseResolver):
    """Answers from a zone (ZONE): the records asked for, NOERROR
    without them when the name exists (NODATA), NXDOMAIN else, SERVFAIL
    for names marked so. Counts queries by name."""

    def __init__(self, zone):
        self.zone = zone
        self.asked = {}
        self.lock = threading.Lock()

    def resolve(self, request, handler):
        reply = request.reply()
        reply.header.ra = 1
        name = str(request.q.qname).rstrip(".").lower()
        qt = QTYPE[request.q.qtype]
        with self.lock:
            self.asked[name] = self.asked.get(name, 0) + 1
        recs = self.zone.get(name)
        if recs is None:
            reply.header.rcode = RCODE.NXDOMAIN
            return reply
        if recs == "servfail":
            reply.header.rcode = RCODE.SERVFAIL
            return reply
        for t, data in recs:
            if t != qt:
                continue
            if t == "MX":
                rd = MX(data[1] if data[1] == "." else data[1] + ".",
                        data[0])
            else:
                rd = A(data)
            reply.add_answer(RR(request.q.qname, QTYPE.reverse[t], rdata=rd,
                                ttl=60))
        return reply


class Dns:
    """dnslib on 127.0.0.1:port, UDP and TCP."""

    def __init__(self, zone=None):
        self.resolver = Resolver(ZONE if zone is None else zone)
        self.port = free_port_udp_tcp("127.0.0.1")
        self.udp = DNSServer(self.resolver, address="127.0.0.1",
                             port=self.port, logger=Quiet())
        self.tcp = DNSServer(self.resolver, address="127.0.0.1",
                             port=self.port, tcp=True, logger=Quiet())

    def __enter__(self):
        self.udp.start_thread()
        self.tcp.start_thread()
        # bounded wait until it answers
        q = DNSRecord.question("direct.example", "MX")

        def answers():
            try:
                return DNSRecord.parse(q.send("127.0.0.1", self.port,
                                              timeout=0.5)).rr
            except (socket.timeout, OSError):
                return None
        h.wait_for(answers, 10, "the test DNS server to answer")
        return self

    def __exit__(self, *a):
        self.udp.stop()
        self.tcp.stop()
        return False


class Quiet:
    def __getattr__(self, name):
        return lambda *a, **k: None


def free_port_udp_tcp(host):
    for _ in range(50):
        t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            t.bind((host, 0))
            port = t.getsockname()[1]
            u.bind((host, port))
            return port
        except OSError:
            continue
        finally:
            t.close()
            u.close()
    h.fail("no port free for both UDP and TCP")


def free_port_on(hosts):
    """A port free on every address of hosts (the MX port is one)."""
    for _ in range(50):
        (p,) = h.free_ports(1)
        socks = []
        try:
            for a in hosts:
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                socks.append(s)
                s.bind((a, p))
            return p
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    h.fail("no port free on %s" % hosts)


class Sink:
    """aiosmtpd on SINK:port storing every message and counting
    connections (all of them, and the most open at once)."""

    def __init__(self, port):
        from aiosmtpd.controller import Controller
        from aiosmtpd.smtp import SMTP
        self.port = port
        self.got = []
        self.connects = 0
        self.open = 0
        self.max_open = 0
        self.lock = threading.Lock()
        sink = self

        class Counting(SMTP):
            def connection_made(self, transport):
                with sink.lock:
                    sink.connects += 1
                    sink.open += 1
                    sink.max_open = max(sink.max_open, sink.open)
                super().connection_made(transport)

            def connection_lost(self, exc):
                with sink.lock:
                    sink.open -= 1
                super().connection_lost(exc)

        class Ctl(Controller):
            def factory(self):
                return Counting(self.handler, **self.SMTP_kwargs)

        self.ctl = Ctl(self, hostname=SINK, port=port, ready_timeout=10)

    async def handle_DATA(self, server, session, envelope):
        with self.lock:
            self.got.append((envelope.mail_from, list(envelope.rcpt_tos),
                             bytes(envelope.original_content)))
        return "250 2.0.0 Ok stored"

    def to(self, domain):
        with self.lock:
            return [m for m in self.got
                    if any(r.endswith("@" + domain) for r in m[1])]

    def counts(self):
        with self.lock:
            return self.connects, self.max_open

    def reset(self):
        with self.lock:
            self.connects = 0
            self.max_open = self.open

    def __enter__(self):
        self.ctl.start()
        return self

    def __exit__(self, *a):
        self.ctl.stop()
        return False


class Hole:
    """HOLE:port takes connections and says nothing (a dead MX whose
    greeting never comes); keeps them open until stopped."""

    def __init__(self, port):
        self.ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.ls.bind((HOLE, port))
        self.ls.listen(64)
        self.ls.settimeout(0.2)
        self.conns = []
        self.stop = False
        self.t = threading.Thread(target=self.run, daemon=True)

    def run(self):
        while not self.stop:
            try:
                c, _ = self.ls.accept()
                self.conns.append(c)
            except socket.timeout:
                continue
            except OSError:
                return

    def __enter__(self):
        self.t.start()
        return self

    def __exit__(self, *a):
        self.stop = True
        self.t.join(5)
        self.ls.close()
        for c in self.conns:
            c.close()
        return False


CONF = """[server]
hostname = tern.e2e.example
shutdown_timeout = 2s

[listener in]
url = smtp://127.0.0.1:{port}
starttls = yes
{listener}

[tls]
cert = {certs}/server.pem
key = {certs}/server.key

[delivery]
target = mx

{extra}
[outbound]
resolver = 127.0.0.1:{dns}
dnssec = no
mta_sts = no
port = {mxport}
connect_timeout = 3s
timeout = {timeout}

[queue]
directory = {qdir}
retry_min = 1s
retry_max = {retry_max}
lifetime = {lifetime}
concurrency = {concurrency}
max_active = {max_active}
"""


class World:
    def __init__(self):
        self.d = h.tmpdir("tern-mx-")
        self.dns = Dns()
        self.mxport = free_port_on([DEAD, SINK, HOLE])
        self.sink = Sink(self.mxport)
        self.hole = Hole(self.mxport)

    def __enter__(self):
        self.dns.__enter__()
        self.sink.__enter__()
        self.hole.__enter__()
        return self

    def __exit__(self, *a):
        self.hole.__exit__()
        self.sink.__exit__()
        self.dns.__exit__()
        return False

    def conf(self, name, timeout="10s", lifetime="1d", retry_max="2s",
             concurrency=20, max_active=200, extra="", dns=None, port=None,
             listener=""):
        if port is None:
            (port,) = h.free_ports(1)
        qdir = os.path.join(self.d, name + "-queue")
        path = h.write(os.path.join(self.d, name + ".ini"), CONF.format(
            port=port, dns=dns or self.dns.port, certs=certs_dir(),
            extra=extra, listener=listener, mxport=self.mxport, qdir=qdir,
            timeout=timeout, lifetime=lifetime, retry_max=retry_max,
            concurrency=concurrency, max_active=max_active))
        return h.Conf(path, port, qdir, os.path.join(qdir, "control"))


def certs_dir():
    d = os.environ.get("TERN_TEST_CERTS")
    h.check(d and os.path.exists(os.path.join(d, "server.pem")),
            "TERN_TEST_CERTS does not hold server.pem: %r" % d)
    return d


QUEUED_RE = re.compile(r"queued as ([0-9A-Z]+)")


def send(conf, frm, rcpt, n=1, subject="hello"):
    """n messages from frm to rcpt on one connection (each 250)."""
    ids = []
    with smtplib.SMTP(h.HOST, conf.port, timeout=30) as c:
        c.ehlo("client.example")
        for i in range(n):
            msg = ("From: <%s>\r\nTo: <%s>\r\nSubject: %s %d\r\n"
                   "Message-ID: <%s-%d-%f@client.example>\r\n\r\n"
                   "Hello %d.\r\n" % (frm, rcpt, subject, i, subject, i,
                                      time.time(), i))
            refused = c.sendmail(frm, [rcpt], msg)
            h.check(refused == {}, "refused: %r" % refused)
            ids.append(i)
    return ids


def delivery_lines(srv, rcpt):
    return [ln for ln in srv.snapshot()
            if "event=delivery" in ln and "rcpt=<%s>" % rcpt in ln]


def wait_line(srv, rcpt, status, timeout):
    return h.wait_for(
        lambda: [ln for ln in delivery_lines(srv, rcpt)
                 if "status=%s" % status in ln],
        timeout, "a status=%s line for %s" % (status, rcpt),
        interval=0.05)[0]


def test_mx_fallback():
    with World() as w:
        conf = w.conf("fallback")
        with h.Serve(["-c", conf.path], name="mx-fallback") as srv:
            send(conf, "s@home.example", "u@fall.example")
            send(conf, "s@home.example", "v@direct.example")
            got = h.wait_for(lambda: w.sink.to("fall.example"), 20,
                             "the message for fall.example at its second MX")
            h.wait_for(lambda: w.sink.to("direct.example"), 20,
                       "the message for direct.example at its MX")
            h.check(len(got) == 1, "delivered %d times" % len(got))
            frm, rcpts, data = got[0]
            h.check(frm == "s@home.example" and rcpts == ["u@fall.example"],
                    "envelope %r %r" % (frm, rcpts))
            ln = wait_line(srv, "u@fall.example", "sent", 10)
            print("  " + ln)
            for want in ("dest=mx:fall.example", "mx=b.fall.example",
                         "addr=127.0.0.3", "tls=none", "tried=2",
                         "relay=b.fall.example"):
                h.check(want in ln, "no %s in %r" % (want, ln))
            ln = wait_line(srv, "v@direct.example", "sent", 10)
            h.check("mx=mx.direct.example" in ln and "dest=mx:direct.example" in ln,
                    "direct.example's line: %r" % ln)
            h.check(w.dns.resolver.asked.get("fall.example"),
                    "tern never asked the test DNS about fall.example")


def test_null_mx():
    with World() as w:
        conf = w.conf("nullmx")
        with h.Serve(["-c", conf.path], name="mx-null") as srv:
            t0 = time.monotonic()
            send(conf, "s@home.example", "x@null.example")
            ln = wait_line(srv, "x@null.example", "bounced", 20)
            print("  " + ln)
            h.check("5.1.10" in ln, "not 5.1.10: %r" % ln)
            h.check(not [x for x in delivery_lines(srv, "x@null.example")
                         if "status=deferred" in x],
                    "a null MX was deferred:\n%s" % srv.log())
            # the DSN goes to the sender's domain's MX (the sink)
            dsn = h.wait_for(lambda: w.sink.to("home.example"), 20,
                             "the DSN at home.example's MX")
            frm, rcpts, data = dsn[0]
            h.check(frm in ("", "<>") and rcpts == ["s@home.example"],
                    "DSN envelope %r %r" % (frm, rcpts))
            h.check(b"5.1.10" in data and b"x@null.example" in data,
                    "the DSN does not say 5.1.10 for x@null.example:\n%s"
                    % data.decode("utf-8", "replace")[:3000])
            took = time.monotonic() - t0
            h.check(took < 10, "the bounce took %.1f s" % took)


def test_requiretls_no_starttls():
    """REQUIRETLS (RFC 8689) to an MX without STARTTLS: bounced at once
    with 5.7.30, nothing sent in the clear; the DSN goes with REQUIRETLS
    too (§5), so to the sender's MX without TLS it fails the same way:
    neither the message nor its report leaves in the clear."""
    import ssl
    with World() as w:
        conf = w.conf("requiretls")
        with h.Serve(["-c", conf.path], name="mx-requiretls") as srv:
            with smtplib.SMTP(h.HOST, conf.port, timeout=30) as c:
                c.ehlo("client.example")
                ctx = ssl.create_default_context()
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
                c.starttls(context=ctx)
                c.ehlo("client.example")
                h.check(c.has_extn("requiretls"),
                        "no REQUIRETLS offered over TLS: %r"
                        % c.esmtp_features)
                msg = ("From: <s@home.example>\r\nTo: <t@direct.example>\r\n"
                       "Subject: secret\r\n\r\nOnly over TLS.\r\n")
                refused = c.sendmail("s@home.example", ["t@direct.example"],
                                     msg, mail_options=["REQUIRETLS"])
                h.check(refused == {}, "refused: %r" % refused)
            ln = wait_line(srv, "t@direct.example", "bounced", 20)
            print("  " + ln)
            h.check("5.7.30" in ln, "not 5.7.30: %r" % ln)
            ln = wait_line(srv, "s@home.example", "bounced", 20)
            print("  " + ln)
            h.check("5.7.30" in ln, "the DSN: not 5.7.30: %r" % ln)
            h.check(not w.sink.to("home.example"),
                    "the DSN went to an MX without TLS")
            h.check(not w.sink.to("direct.example"),
                    "the message went to an MX without TLS")


def test_route_url():
    """A [routes] URL: dest url:URL, delivered there without any DNS."""
    with World() as w:
        url = "smtp://%s:%d" % (SINK, w.mxport)
        conf = w.conf("route", extra="[routes]\npartner.example = %s\n" % url)
        with h.Serve(["-c", conf.path], name="mx-route") as srv:
            send(conf, "s@home.example", "p@partner.example")
            h.wait_for(lambda: w.sink.to("partner.example"), 20,
                       "the message at the route's URL")
            ln = wait_line(srv, "p@partner.example", "sent", 10)
            print("  " + ln)
            h.check("dest=url:" + url in ln, "dest: %r" % ln)
            h.check("addr=127.0.0.3" in ln, "addr: %r" % ln)
            h.check(not w.dns.resolver.asked.get("partner.example"),
                    "a routed domain was looked up in the DNS")
            qs = h.queue_json(conf)
            h.check(qs == [], "left in the queue: %r" % qs)


def test_smarthost():
    """An authenticated user's mail to a domain not ours goes to the
    [delivery] relay URL: dest smarthost."""
    import ssl
    with World() as w:
        url = "smtp://%s:%d" % (SINK, w.mxport)
        users = h.write(os.path.join(w.d, "users"),
                        h.passwd_line("dana", "secret-pw") + "\n")
        conf = w.conf("smarthost", listener="auth = yes", extra=(
            "relay = %s\n\n[auth]\nusers = %s\n\n[domains]\n"
            "accept = home.example\n" % (url, users)))
        with h.Serve(["-c", conf.path], name="mx-smarthost") as srv:
            with smtplib.SMTP(h.HOST, conf.port, timeout=30) as c:
                ctx = ssl.create_default_context()
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
                c.starttls(context=ctx)
                c.login("dana", "secret-pw")
                msg = ("From: <dana@home.example>\r\nTo: <f@far.example>\r\n"
                       "Subject: out\r\n\r\nTo the smarthost.\r\n")
                refused = c.sendmail("dana@home.example", ["f@far.example"],
                                     msg)
                h.check(refused == {}, "refused: %r" % refused)
            h.wait_for(lambda: w.sink.to("far.example"), 20,
                       "the message at the smarthost")
            ln = wait_line(srv, "f@far.example", "sent", 10)
            print("  " + ln)
            h.check("dest=smarthost" in ln, "dest: %r" % ln)
            h.check(not w.dns.resolver.asked.get("far.example"),
                    "the smarthost's mail was looked up in the DNS")


def test_reload_resolver():
    """A reload that changes [outbound] resolver: new connections use
    the new one (a domain only it knows is delivered)."""
    zone2 = dict(ZONE)
    zone2["moved.example"] = [("MX", (10, "mx.moved.example"))]
    zone2["mx.moved.example"] = [("A", SINK)]
    with World() as w, Dns(zone2) as dns2:
        conf = w.conf("reload")
        with h.Serve(["-c", conf.path], name="mx-reload") as srv:
            send(conf, "s@home.example", "a@direct.example")
            h.wait_for(lambda: w.sink.to("direct.example"), 20,
                       "mail through the first resolver")
            w.conf("reload", dns=dns2.port, port=conf.port)  # rewrites it
            srv.signal(signal.SIGHUP)
            srv.wait_log("event=reload result=ok")
            srv.wait_log("event=resolver result=renewed")
            send(conf, "s@home.example", "b@moved.example")
            h.wait_for(lambda: w.sink.to("moved.example"), 20,
                       "mail for a domain only the new resolver knows")
            h.check(dns2.resolver.asked.get("moved.example"),
                    "the new resolver was not asked")
            h.check(not w.dns.resolver.asked.get("moved.example"),
                    "the old resolver was asked after the reload")


def test_servfail_expires():
    with World() as w:
        conf = w.conf("servfail", lifetime="4s", retry_max="1s")
        with h.Serve(["-c", conf.path], name="mx-servfail") as srv:
            send(conf, "s@home.example", "y@sf.example")
            ln = wait_line(srv, "y@sf.example", "deferred", 30)
            print("  " + ln)
            h.check(re.search(r"reply=\"?4\d\d 4\.4\.\d", ln),
                    "not a 4.4.x deferral: %r" % ln)
            # tern queue list names the destination
            listed = [r for m in h.queue_json(conf) for r in m["rcpts"]]
            h.check([r.get("dest") for r in listed] == ["mx:sf.example"],
                    "tern queue list --json: %r" % listed)
            h.check("via mx:sf.example" in h.queue_text(conf),
                    "tern queue list: %r" % h.queue_text(conf))
            ln = wait_line(srv, "y@sf.example", "expired", 40)
            print("  " + ln)
            dsn = h.wait_for(lambda: w.sink.to("home.example"), 20,
                             "the expiry DSN at home.example's MX")
            frm, rcpts, data = dsn[0]
            h.check(frm in ("", "<>") and b"y@sf.example" in data,
                    "DSN %r %r %r" % (frm, rcpts, data[:300]))


def test_dead_domain():
    with World() as w:
        # two connections per destination, four in all: the dead domain
        # can take its two, never the live one's
        conf = w.conf("dead", timeout="20s", concurrency=2, max_active=4)
        with h.Serve(["-c", conf.path], name="mx-dead") as srv:
            send(conf, "s@home.example", "z@dead.example", n=5, subject="dead")
            h.wait_for(lambda: w.hole.conns, 10,
                       "tern to connect to the dead MX")
            t0 = time.monotonic()
            send(conf, "s@home.example", "l@live.example", n=5, subject="live")
            h.wait_for(lambda: len(w.sink.to("live.example")) >= 5, 15,
                       "the live domain's 5 messages")
            took = time.monotonic() - t0
            print("  live domain: 5 messages in %.2f s; dead MX has %d "
                  "connections" % (took, len(w.hole.conns)))
            h.check(took < 8, "the live domain waited %.1f s" % took)
            h.check(not [x for x in delivery_lines(srv, "z@dead.example")
                         if "status=sent" in x], "sent to a dead MX?")
            h.check(len(w.hole.conns) <= 2,
                    "%d connections to the dead MX (concurrency 2)"
                    % len(w.hole.conns))


def test_concurrency():
    with World() as w:
        conf = w.conf("conc", concurrency=3)
        with h.Serve(["-c", conf.path], name="mx-conc") as srv:
            w.sink.reset()
            send(conf, "s@home.example", "c@conc.example", n=200, subject="conc")
            h.wait_for(lambda: len(w.sink.to("conc.example")) >= 200, 60,
                       "200 messages at conc.example's MX", interval=0.1)
            connects, max_open = w.sink.counts()
            print("  200 messages: %d connections, at most %d at once"
                  % (connects, max_open))
            h.check(max_open <= 3, "%d connections at once (concurrency 3)"
                    % max_open)
            h.check(connects <= 3, "%d connections for 200 messages "
                    "(concurrency 3, kept and reused)" % connects)
            h.check(len(w.sink.to("conc.example")) == 200, "duplicates")
            del srv


if __name__ == "__main__":
    h.main([test_mx_fallback, test_null_mx, test_requiretls_no_starttls,
            test_route_url, test_smarthost, test_reload_resolver, test_servfail_expires,
            test_dead_domain, test_concurrency])
