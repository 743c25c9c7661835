"""A small world for the client's "mx:" tests, on loopback, without a
namespace: a DNS server (python3-dnslib) on 127.0.0.1 that the tern
resolver forwards to, SMTP sinks on 127.0.0.x at one shared port (the
client's mx_port), and a test CA with certificates made by openssl.

Nothing here touches this machine's resolver: the client gets its
resolver's forwarder (--resolver) from the test.
"""

import os
import random
import socket
import ssl
import subprocess
import threading

import harness as h

from dnslib import QTYPE, RCODE, RR, A, AAAA, MX, TXT, TLSA
from dnslib.server import BaseResolver, DNSServer


# ---- DNS -----------------------------------------------------------------------

class Zone(BaseResolver):
    """Answers from a dict {name: [(type, rdata), ...]}; a name in the
    dict with no record of the asked type is NODATA, any other NXDOMAIN."""

    def __init__(self, records):
        self.records = {}
        for name, recs in records.items():
            self.records[name.lower().rstrip(".") + "."] = recs
        self.queries = []

    def resolve(self, request, handler):
        reply = request.reply()
        reply.header.aa = 1
        qname = str(request.q.qname).lower()
        qtype = QTYPE[request.q.qtype]
        self.queries.append((qname, qtype))
        recs = self.records.get(qname)
        if recs is None:
            reply.header.rcode = RCODE.NXDOMAIN
            return reply
        for rtype, rdata in recs:
            if rtype == qtype:
                reply.add_answer(RR(qname, getattr(QTYPE, rtype), rdata=rdata,
                                    ttl=60))
        return reply


class QuietLogger:
    """dnslib logs every query to stdout by default: not here."""

    def __getattr__(self, name):
        return lambda *a, **k: None


def free_udp_tcp_port():
    for _ in range(50):
        port = random.randint(20000, 60000)
        try:
            u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            u.bind(("127.0.0.1", port))
            t = socket.socket()
            t.bind(("127.0.0.1", port))
        except OSError:
            continue
        u.close()
        t.close()
        return port
    h.fail("no free port for the DNS server")


_shared_dns = None


def shared_dns(records):
    """One DNS server for a whole script (stopping one costs a second):
    its records are replaced by `records`; stop() does nothing."""
    global _shared_dns
    if _shared_dns is None:
        _shared_dns = DNS(records)
        _shared_dns.stop = lambda: None
    else:
        _shared_dns.zone.__init__(records)
    return _shared_dns


class DNS:
    def __init__(self, records):
        self.zone = Zone(records)
        self.port = free_udp_tcp_port()
        self.udp = DNSServer(self.zone, port=self.port, address="127.0.0.1",
                             logger=QuietLogger())
        self.tcp = DNSServer(self.zone, port=self.port, address="127.0.0.1",
                             tcp=True, logger=QuietLogger())
        self.udp.start_thread()
        self.tcp.start_thread()

    @property
    def addr(self):
        return "127.0.0.1:%d" % self.port

    def stop(self):
        self.udp.stop()
        self.tcp.stop()


def mx(pref, host):
    return ("MX", MX(host, pref))


def a(addr):
    return ("A", A(addr))


def aaaa(addr):
    return ("AAAA", AAAA(addr))


def txt(text):
    return ("TXT", TXT(text))


def tlsa(usage, selector, mtype, data_hex):
    return ("TLSA", TLSA(usage, selector, mtype, bytes.fromhex(data_hex)))


# ---- certificates ---------------------------------------------------------------

class CA:
    """A test CA (EC P-256) in a temporary directory; leaf(names) makes a
    certificate for those DNS names signed by it."""

    def __init__(self):
        self.dir = h.tmpdir("tern-mx-ca-")
        self.cert = os.path.join(self.dir, "ca.pem")
        self.key = os.path.join(self.dir, "ca.key")
        self._openssl("req", "-x509", "-newkey", "ec", "-pkeyopt",
                      "ec_paramgen_curve:P-256", "-nodes", "-keyout",
                      self.key, "-out", self.cert, "-subj", "/CN=tern mx test CA",
                      "-days", "2", "-addext",
                      "basicConstraints=critical,CA:TRUE", "-addext",
                      "keyUsage=critical,keyCertSign,cRLSign")
        self.n = 0

    def _openssl(self, *args):
        p = subprocess.run(["openssl"] + list(args), stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, timeout=60)
        h.check(p.returncode == 0, "openssl %s failed: %s"
                % (args[0], p.stderr.decode(errors="replace")))
        return p.stdout

    def leaf(self, *names):
        self.n += 1
        base = os.path.join(self.dir, "leaf%d" % self.n)
        ext = base + ".ext"
        with open(ext, "w") as f:
            f.write("subjectAltName=" + ",".join("DNS:" + n for n in names)
                    + "\nbasicConstraints=CA:FALSE\n"
                    "extendedKeyUsage=serverAuth\n")
        self._openssl("req", "-newkey", "ec", "-pkeyopt",
                      "ec_paramgen_curve:P-256", "-nodes", "-keyout",
                      base + ".key", "-out", base + ".csr", "-subj",
                      "/CN=" + names[0])
        self._openssl("x509", "-req", "-in", base + ".csr", "-CA", self.cert,
                      "-CAkey", self.key, "-CAcreateserial", "-out",
                      base + ".pem", "-days", "2", "-extfile", ext)
        return base + ".pem", base + ".key"

    def chain(self, leaf):
        """(pem, key) of the leaf with the CA after it (for DANE-TA)."""
        pem, key = leaf
        out = pem[:-4] + "-chain.pem"
        with open(out, "w") as f:
            f.write(open(pem).read() + open(self.cert).read())
        return out, key

    def cert_sha256_hex(self):
        """TLSA 2 0 1 data of the CA certificate, hex."""
        der = subprocess.run(["openssl", "x509", "-in", self.cert, "-outform",
                              "DER"], stdout=subprocess.PIPE, check=True).stdout
        import hashlib
        return hashlib.sha256(der).hexdigest()

    def spki_sha256(self, cert_pem):
        """TLSA 3 1 1 data of a certificate, hex."""
        der = subprocess.run(
            "openssl x509 -in '%s' -noout -pubkey | openssl pkey -pubin "
            "-outform DER | openssl dgst -sha256 -binary" % cert_pem,
            shell=True, stdout=subprocess.PIPE, check=True).stdout
        return der.hex()


# ---- SMTP sinks ------------------------------------------------------------------

def shared_port(addrs):
    """A port free on every one of `addrs` (127.0.0.x)."""
    for _ in range(100):
        port = random.randint(20000, 60000)
        socks = []
        try:
            for ad in addrs:
                s = socket.socket()
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind((ad, port))
                socks.append(s)
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
        return port
    h.fail("no port free on %s" % addrs)


class Sink:
    """An SMTP server on (addr, port) that records what it saw:
    conns (peer addresses), messages (dicts: tls, mail, data).
    greeting: the greeting's code; cert=(pem, key): STARTTLS offered with
    it; broken_tls: STARTTLS offered, then junk instead of a handshake;
    requiretls: REQUIRETLS offered (over TLS)."""

    def __init__(self, addr, port, greeting=220, cert=None, broken_tls=False,
                 requiretls=False):
        self.addr, self.port = addr, port
        self.greeting = greeting
        self.ctx = None
        if cert:
            self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self.ctx.load_cert_chain(cert[0], cert[1])
        self.broken_tls = broken_tls
        self.requiretls = requiretls
        self.conns = []
        self.messages = []
        self.quits = 0
        self.lock = threading.Lock()
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((addr, port))
        self.sock.listen(16)
        self.stopped = False
        self.t = threading.Thread(target=self._accept, daemon=True)
        self.t.start()

    def _accept(self):
        while not self.stopped:
            try:
                c, peer = self.sock.accept()
            except OSError:
                return
            with self.lock:
                self.conns.append(peer[0])
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def stop(self):
        self.stopped = True
        try:
            self.sock.close()
        except OSError:
            pass

    def _serve(self, c):
        c.settimeout(20)
        try:
            self._session(c)
        except (OSError, ssl.SSLError, ValueError):
            pass
        finally:
            try:
                c.close()
            except OSError:
                pass

    def _session(self, c):
        f = c.makefile("rwb")

        def say(line):
            f.write(line.encode() + b"\r\n")
            f.flush()

        say("%d sink.test %s" % (self.greeting,
                                 "ESMTP" if self.greeting == 220 else "go away"))
        if self.greeting != 220:
            f.readline()
            say("221 bye")
            return
        tls = False
        mail = None
        while True:
            line = f.readline()
            if not line:
                return
            cmd = line.decode(errors="replace").strip()
            verb = cmd.split(" ")[0].upper()
            if verb in ("EHLO", "HELO"):
                ext = ["sink.test"]
                if self.ctx and not tls:
                    ext.append("STARTTLS")
                if self.requiretls and tls:
                    ext.append("REQUIRETLS")
                ext.append("8BITMIME")
                for e in ext[:-1]:
                    say("250-" + e)
                say("250 " + ext[-1])
            elif verb == "STARTTLS" and self.ctx and not tls:
                say("220 go ahead")
                if self.broken_tls:
                    c.sendall(b"this is not TLS\r\n" * 4)
                    return
                c = self.ctx.wrap_socket(c, server_side=True)
                f = c.makefile("rwb")
                tls = True
            elif verb == "MAIL":
                mail = cmd
                say("250 2.1.0 ok")
            elif verb == "RCPT":
                say("250 2.1.5 ok")
            elif verb == "DATA":
                say("354 go on")
                data = b""
                while True:
                    l = f.readline()
                    if not l or l == b".\r\n":
                        break
                    data += l
                with self.lock:
                    self.messages.append({"tls": tls, "mail": mail,
                                          "data": data})
                say("250 2.0.0 queued")
            elif verb == "QUIT":
                with self.lock:
                    self.quits += 1
                say("221 2.0.0 bye")
                return
            elif verb in ("RSET", "NOOP"):
                say("250 ok")
            else:
                say("502 5.5.2 no")


# ---- MTA-STS policy host -----------------------------------------------------------

class PolicyServer:
    """https://mta-sts.DOMAIN/.well-known/mta-sts.txt on (addr, port) with
    `cert`; serves `policy` (text) as text/plain; counts fetches."""

    def __init__(self, addr, port, cert, policy):
        import http.server

        outer = self
        self.fetches = 0
        self.policy = policy.encode()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                if self.path != "/.well-known/mta-sts.txt":
                    self.send_error(404)
                    return
                outer.fetches += 1
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(outer.policy)))
                self.end_headers()
                self.wfile.write(outer.policy)

            def log_message(self, *a):
                pass

        self.httpd = http.server.ThreadingHTTPServer((addr, port), Handler)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert[0], cert[1])
        self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.t = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.t.start()

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def sts_policy(mode, *mx_patterns, max_age=86400):
    lines = ["version: STSv1", "mode: " + mode]
    lines += ["mx: " + m for m in mx_patterns]
    lines.append("max_age: %d" % max_age)
    return "\r\n".join(lines) + "\r\n"


# ---- a DNSSEC-signed zone: NSD serving what ldns-signzone signed ------------------

class SignedDNS:
    """NSD on 127.0.0.1:PORT serving `zone` (name) signed with
    ldns-keygen/ldns-signzone; `records` are zone-file lines relative to
    nothing (absolute names). trust_anchor: the KSK's DNSKEY file, for the
    resolver. A missing nsd or ldns tool fails the test."""

    def __init__(self, zone, records, tamper=()):
        """tamper: (old, new) text replacements made in the zone file
        after signing (an RRset changed that way fails validation:
        bogus, as an on-path forger would make it)."""
        tools = {t: h.require_tool(t, ("/usr/sbin/" + t, "/usr/bin/" + t))
                 for t in ("nsd", "ldns-keygen", "ldns-signzone")}
        self.dir = h.tmpdir("tern-mx-nsd-")
        self.zone = zone.rstrip(".")
        d = self.dir
        self.port = free_udp_tcp_port()

        def run(*cmd):
            p = subprocess.run(list(cmd), cwd=d, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, timeout=60)
            h.check(p.returncode == 0, "%s failed: %s" % (
                cmd[0], p.stderr.decode(errors="replace")))
            return p.stdout.decode().strip()

        zsk = run(tools["ldns-keygen"], "-a", "ECDSAP256SHA256", self.zone)
        ksk = run(tools["ldns-keygen"], "-a", "ECDSAP256SHA256", "-k",
                  self.zone)
        origin = self.zone + "."
        zf = os.path.join(d, self.zone + ".zone")
        with open(zf, "w") as f:
            f.write("$ORIGIN %s\n$TTL 60\n" % origin)
            f.write("@ IN SOA ns.%s hostmaster.%s 1 3600 600 86400 60\n"
                    % (origin, origin))
            f.write("@ IN NS ns.%s\n" % origin)
            f.write("ns IN A 127.0.0.1\n")
            for r in records:
                f.write(r + "\n")
        run(tools["ldns-signzone"], zf, zsk, ksk)
        if tamper:
            signed = zf + ".signed"
            text = open(signed).read()
            for old, new in tamper:
                h.check(old in text, "nothing to tamper: %r" % old)
                text = text.replace(old, new)
            with open(signed, "w") as f:
                f.write(text)
        self.trust_anchor = os.path.join(d, ksk + ".key")
        conf = os.path.join(d, "nsd.conf")
        with open(conf, "w") as f:
            f.write("server:\n"
                    "  ip-address: 127.0.0.1@%d\n"
                    "  port: %d\n"
                    "  zonesdir: \"%s\"\n"
                    "  pidfile: \"%s/nsd.pid\"\n"
                    "  database: \"\"\n"
                    "  username: \"\"\n"
                    "  chroot: \"\"\n"
                    "  xfrdfile: \"%s/xfrd.state\"\n"
                    "  zonelistfile: \"%s/zone.list\"\n"
                    "  logfile: \"%s/nsd.log\"\n"
                    "  verbosity: 1\n"
                    "remote-control:\n"
                    "  control-enable: no\n"
                    "zone:\n"
                    "  name: \"%s\"\n"
                    "  zonefile: \"%s.zone.signed\"\n"
                    % (self.port, self.port, d, d, d, d, d, self.zone,
                       self.zone))
        self.proc = subprocess.Popen([tools["nsd"], "-d", "-c", conf],
                                     stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
        self._wait_ready()

    def _wait_ready(self):
        from dnslib import DNSRecord
        q = DNSRecord.question(self.zone, "SOA")

        def answers():
            if self.proc.poll() is not None:
                h.fail("nsd exited: %s" % self.proc.stderr.read().decode(
                    errors="replace"))
            try:
                r = DNSRecord.parse(q.send("127.0.0.1", self.port, timeout=0.2))
                return len(r.rr) > 0
            except (OSError, socket.timeout, Exception):
                return False
        h.wait_for(answers, 15, "nsd answering for %s" % self.zone)

    @property
    def addr(self):
        return "127.0.0.1:%d" % self.port

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class FailingProxy:
    """A DNS proxy on 127.0.0.1 in front of `upstream` ("127.0.0.1:PORT")
    that answers SERVFAIL to the questions `fails(qname, qtype)` picks
    (qname lower case with its final dot, qtype "AAAA"...) and passes
    every other one through unchanged (DNSSEC records included).
    local(qname, qtype), when given, answers questions itself (names
    outside the signed zone: insecure): a list of addresses (A or AAAA),
    "SERVFAIL", or None to go on as above."""

    def __init__(self, upstream, fails, local=None):
        from dnslib import DNSRecord
        host, port = upstream.rsplit(":", 1)

        class Fwd(BaseResolver):
            def resolve(self, request, handler):
                qname = str(request.q.qname).lower()
                qtype = QTYPE[request.q.qtype]
                mine = local(qname, qtype) if local else None
                if mine == "SERVFAIL":
                    reply = request.reply()
                    reply.header.rcode = RCODE.SERVFAIL
                    return reply
                if mine is not None:
                    reply = request.reply()
                    reply.header.aa = 1
                    for a in mine:
                        reply.add_answer(RR(
                            request.q.qname, request.q.qtype, ttl=60,
                            rdata=AAAA(a) if qtype == "AAAA" else A(a)))
                    return reply
                if fails(str(request.q.qname).lower(),
                         QTYPE[request.q.qtype]):
                    reply = request.reply()
                    reply.header.rcode = RCODE.SERVFAIL
                    return reply
                return DNSRecord.parse(request.send(
                    host, int(port), tcp=handler.protocol == "tcp",
                    timeout=5))

        self.port = free_udp_tcp_port()
        self.udp = DNSServer(Fwd(), port=self.port, address="127.0.0.1",
                             logger=QuietLogger())
        self.tcp = DNSServer(Fwd(), port=self.port, address="127.0.0.1",
                             tcp=True, logger=QuietLogger())
        self.udp.start_thread()
        self.tcp.start_thread()

    @property
    def addr(self):
        return "127.0.0.1:%d" % self.port

    def stop(self):
        self.udp.stop()
        self.tcp.stop()
