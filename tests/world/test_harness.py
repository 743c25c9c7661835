#!/usr/bin/env python3
"""The test world itself (tests/world/world.py), before any test relies
on it: inside the namespace, NSD answers for signed and unsigned zones;
libunbound with the world's trust anchor and 127.0.0.53 as forwarder
marks the signed zone's answers secure and the unsigned zone's insecure;
the namespace's resolv.conf points at the test DNS; a sink takes a
message over STARTTLS (recorded as TLS) and one in plain text; a
connection to an address nothing listens on is refused; the 421 host
greets 421; the MTA-STS server serves its policy over HTTPS with a
certificate the test CA vouches for; TLSA data matches the sink's key.
"""

import smtplib
import socket
import ssl
import urllib.request

import world as w
from world import check


def test_dns_and_dnssec():
    W = w.World()
    try:
        cert = W.cert("mx.signed.example")
        a1, a2 = W.addr(), W.addr()
        W.zone("signed.example", {"@": ["MX 10 mx"], "mx": ["A " + a1],
                               "_25._tcp.mx": ["TLSA " + W.tlsa(cert[0])]},
               signed=True)
        W.zone("plain.example", {"@": ["MX 10 mx"], "mx": ["A " + a2],
                              "_25._tcp.mx": ["TLSA 3 1 1 " + "00" * 32]})
        W.start_dns()
        rr = W.query("signed.example", "MX")
        check(rr and "mx.signed.example" in str(rr[0].rdata),
              "NSD MX signed.example: %r" % rr)
        W.check_dnssec(secure=[("signed.example", "MX"),
                               ("mx.signed.example", "A"),
                               ("_25._tcp.mx.signed.example", "TLSA")],
                       insecure=[("plain.example", "MX"),
                                 ("_25._tcp.mx.plain.example", "TLSA")])
        with open("/etc/resolv.conf") as f:
            rc = f.read()
        check("nameserver 127.0.0.53" in rc,
              "resolv.conf in the namespace: %r" % rc)
        # the system's stub resolver (getaddrinfo) reaches the test DNS
        ai = socket.getaddrinfo("mx.plain.example", 25, socket.AF_INET)
        check(ai[0][4][0] == a2, "getaddrinfo mx.plain.example: %r" % ai)
    finally:
        W.close()


def test_sinks_and_https():
    W = w.World()
    try:
        cert = W.cert("mx.tls.example")
        a_tls, a_plain, a_dead, a_421, a_sts = (W.addr() for _ in range(5))
        tls_sink = W.sink(a_tls, tls=cert)
        plain = W.sink(a_plain)
        g = W.greet421(a_421)
        ctx = ssl.create_default_context(cafile=W.ca)
        ctx.check_hostname = False
        with smtplib.SMTP(a_tls, 25, timeout=10) as c:
            c.starttls(context=ctx)
            tlsa = w.tlsa_of_der(c.sock.getpeercert(binary_form=True))
            check(tlsa == W.tlsa(cert[0]),
                  "TLSA of the served cert %s != W.tlsa %s"
                  % (tlsa, W.tlsa(cert[0])))
            c.sendmail("a@local.example", ["b@tls.example"], b"Subject: x\r\n\r\nx\r\n")
        with smtplib.SMTP(a_plain, 25, timeout=10) as c:
            check(not c.has_extn("starttls") if c.ehlo() else True, "")
            check(not c.has_extn("starttls"), "plain sink offers STARTTLS")
            c.sendmail("a@local.example", ["b@plain.example"],
                       b"Subject: y\r\n\r\ny\r\n")
        m1 = tls_sink.wait(1)[0]
        m2 = plain.wait(1)[0]
        check(m1.tls and m1.tls_version.startswith("TLS"), "tls sink: %r" % m1)
        check(not m2.tls, "plain sink: %r" % m2)
        check(tls_sink.connections == 1 and plain.connections == 1,
              "connections %d %d" % (tls_sink.connections, plain.connections))
        check(plain.plaintext_mails() == ["a@local.example"],
              "plaintext mails %r" % plain.plaintext_mails())
        check(tls_sink.plaintext_mails() == [],
              "tls sink saw a plaintext MAIL: %r" % tls_sink.mails)
        try:
            socket.create_connection((a_dead, 25), timeout=5).close()
            w.fail("a connection to %s:25 (nothing there) worked" % a_dead)
        except ConnectionRefusedError:
            pass
        with socket.create_connection((a_421, 25), timeout=5) as s:
            check(s.recv(100).startswith(b"421 "), "421 host")
        w.wait_for(lambda: g.connections == 1, 5, "421 host counted")
        W.zone("sts.example", {"mta-sts": ["A " + a_sts]})
        W.start_dns()
        sts = W.mta_sts("sts.example", "version: STSv1\nmode: testing\n"
                        "mx: mx.sts.example\nmax_age: 600\n", a_sts)
        with urllib.request.urlopen(
                "https://mta-sts.sts.example/.well-known/mta-sts.txt",
                context=ssl.create_default_context(cafile=W.ca),
                timeout=10) as r:
            body = r.read()
        check(b"mode: testing" in body, "policy body %r" % body)
        check(sts.fetches == 1, "fetches %d" % sts.fetches)
    finally:
        W.close()


if __name__ == "__main__":
    w.main([test_dns_and_dnssec, test_sinks_and_https])
