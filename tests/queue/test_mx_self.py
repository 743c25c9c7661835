#!/usr/bin/env python3
"""Mail loops, never to itself (docs/configuration.md "Mail loops"): a
domain routed to mx whose MX host is this server (a DNS server of the
test on loopback, [outbound] port = the listener's port, so no port 25
and no DNS of this machine) bounces at once with 5.4.6 "loops back to
myself": one delivery attempt, not a loop ended by the hop count. The
daemon's own addresses (its listener's) reach the mx: client through
tern_client_options.self_addrs.
"""

import os

import qtest as h


SELF_CONF = """[server]
hostname = mail.hops.example
shutdown_timeout = 1s

[listener in]
url = smtp://127.0.0.1:{port}

[domains]
accept = hops.example loop.example   ; [routes] accepts nothing: a backup MX lists the domain here too

[delivery]
target = maildir
maildir = {md}

[routes]
loop.example = mx

[outbound]
resolver = 127.0.0.1:{dns}
dnssec = no
mta_sts = no
port = {port}
connect_timeout = 2s

[queue]
directory = {qd}
retry_min = 1h
retry_max = 2h
fsync = no
"""


def dns_server():
    """loop.example MX 10 mx.loop.example, A 127.0.0.1 (this server);
    anything else NXDOMAIN. UDP and TCP on one loopback port."""
    from dnslib import RR, QTYPE, RCODE, A, MX
    from dnslib.server import BaseResolver, DNSServer

    class Res(BaseResolver):
        def resolve(self, request, handler):
            reply = request.reply()
            name = str(request.q.qname).rstrip(".").lower()
            qt = QTYPE[request.q.qtype]
            if name == "loop.example" and qt == "MX":
                reply.add_answer(RR("loop.example.", QTYPE.MX, ttl=60,
                                    rdata=MX("mx.loop.example.", 10)))
            elif name == "mx.loop.example" and qt == "A":
                reply.add_answer(RR("mx.loop.example.", QTYPE.A, ttl=60,
                                    rdata=A("127.0.0.1")))
            elif name not in ("loop.example", "mx.loop.example"):
                reply.header.rcode = RCODE.NXDOMAIN
            return reply

    class Quiet:
        def __getattr__(self, n):
            return lambda *a, **k: None

    (port,) = h.free_ports(1)
    servers = [DNSServer(Res(), address="127.0.0.1", port=port, tcp=t,
                         logger=Quiet()) for t in (False, True)]
    for sv in servers:
        sv.start_thread()
    return port, servers


def test_never_to_itself():
    d = h.tmpdir()
    port, = h.free_ports(1)
    dport, servers = dns_server()
    conf = h.write(os.path.join(d, "t.ini"), SELF_CONF.format(
        port=port, dns=dport, md=os.path.join(d, "mail"),
        qd=os.path.join(d, "queue")))
    try:
        with h.Serve(["-c", conf], name="self") as s:
            with h.session(port) as r:
                r.cmd("MAIL FROM:<>", 250)
                r.cmd("RCPT TO:<u@loop.example>", 250)
                r.cmd("DATA", 354)
                r.send(b"Subject: loop\r\n\r\nround\r\n.\r\n")
                code, lines = r.reply()
                h.check(code == 250, "queued: %r" % lines)
            (ln,) = s.wait_log("event=delivery rcpt=<u@loop.example>",
                               timeout=15)
            h.check("status=bounced" in ln and "5.4.6" in ln
                    and "loops back to myself" in ln, "delivery: %r" % ln)
            h.check(not s.has("what=hops"), "looped:\n" + s.log())
    finally:
        for sv in servers:
            sv.stop()


if __name__ == "__main__":
    h.main([test_never_to_itself])
