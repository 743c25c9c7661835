"""A scripted SMTP server for the `tern send` tests (stdlib only).

    with Peer(replies={"MAIL": b"554 5.7.1 no\\r\\n"}) as p:
        ... run tern send against p.url ...
        p.commands()   # every command line the client sent, in order

It answers one reply per command line, in order, so a pipelining client
works. `replies` maps a verb (or "greeting", "END" for the end of data)
to the reply bytes; a verb mapped to None is never answered (the server
goes silent and only reads), one mapped to CLOSE hangs up. With
`tls=(cert, key)` it offers STARTTLS and records the commands sent after
it with the prefix "TLS "; with `implicit=True` as well it speaks TLS
from the start (smtps://). AUTH is
answered 235 at once (the payload is recorded: the tests check that a
password never arrived where it must not).
"""

import socketserver
import ssl
import threading

import harness as h

CLOSE = b"<close>"  # a reply that closes the connection instead


class _Handler(socketserver.StreamRequestHandler):
    def setup(self):
        super().setup()
        self.tls = False

    def _log(self, line):
        with self.server.lock:
            self.server.log.append(("TLS " if self.tls else "") + line)

    def _send(self, b):
        self.wfile.write(b)
        self.wfile.flush()

    def _starttls(self, announce=True):
        if announce:
            self._send(b"220 2.0.0 go ahead\r\n")
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(*self.server.tls)
        conn = ctx.wrap_socket(self.request, server_side=True)
        self.request = conn
        self.rfile = conn.makefile("rb")
        self.wfile = conn.makefile("wb")
        self.tls = True

    def _ehlo(self, name):
        caps = list(self.server.caps)
        if self.server.tls and not self.tls and not self.server.implicit:
            caps.append("STARTTLS")
        if self.server.auth and (self.tls or not self.server.tls):
            caps.append("AUTH PLAIN LOGIN")
        lines = ["peer.test greets " + name] + caps
        out = b""
        for i, l in enumerate(lines):
            sep = "-" if i + 1 < len(lines) else " "
            out += ("250%s%s\r\n" % (sep, l)).encode()
        return out

    def handle(self):
        sc = self.server.replies
        try:
            if self.server.implicit:
                self._starttls(announce=False)
            self._send(sc.get("greeting", b"220 peer.test ESMTP\r\n"))
            while True:
                raw = self.rfile.readline(100000)
                if not raw:
                    return
                line = raw.decode("latin-1").rstrip("\r\n")
                self._log(line)
                verb = line.split(" ")[0].split(":")[0].upper()
                if verb in sc and sc[verb] is None:
                    self._silent()
                    return
                if verb == "QUIT":
                    self._send(b"221 2.0.0 bye\r\n")
                    return
                if verb in ("EHLO", "LHLO"):
                    self._send(sc.get(verb, self._ehlo(line[5:])))
                elif verb == "STARTTLS" and self.server.tls and not self.tls:
                    self._starttls()
                elif verb == "AUTH":
                    self._send(sc.get("AUTH", b"235 2.7.0 ok\r\n"))
                elif verb == "DATA":
                    rep = sc.get("DATA", b"354 go ahead\r\n")
                    self._send(rep)
                    if rep.startswith(b"354"):
                        size = 0
                        while True:
                            l = self.rfile.readline(1000000)
                            if l in (b".\r\n", b""):
                                break
                            size += len(l)
                            with self.server.lock:
                                self.server.data.append(l)
                        self._log("<data %d bytes>" % size)
                        if "END" in sc and sc["END"] is None:
                            self._silent()
                            return
                        self._send(sc.get("END", b"250 2.0.0 queued\r\n"))
                else:
                    rep = sc.get(verb, b"250 2.0.0 ok\r\n")
                    if rep == CLOSE:
                        return
                    self._send(rep)
        except (OSError, ssl.SSLError):
            return

    def _silent(self):
        """Say nothing more; read until the client gives up."""
        self.server.went_silent.set()
        try:
            while self.rfile.read(1):
                pass
        except (OSError, ssl.SSLError):
            pass


class Peer:
    def __init__(self, caps=("PIPELINING", "8BITMIME", "ENHANCEDSTATUSCODES"),
                 replies=None, tls=None, auth=False, implicit=False):
        socketserver.ThreadingTCPServer.allow_reuse_address = True
        self.srv = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Handler)
        self.srv.daemon_threads = True
        self.srv.caps = list(caps)
        self.srv.replies = dict(replies or {})
        self.srv.tls = tls
        self.srv.auth = auth
        self.srv.implicit = implicit
        self.srv.lock = threading.Lock()
        self.srv.log = []
        self.srv.data = []
        self.srv.went_silent = threading.Event()
        self.port = self.srv.server_address[1]
        self.url = "%s://127.0.0.1:%d" % ("smtps" if implicit else "smtp",
                                          self.port)

    def __enter__(self):
        self.t = threading.Thread(target=self.srv.serve_forever, daemon=True)
        self.t.start()
        return self

    def __exit__(self, *a):
        self.srv.shutdown()
        self.srv.server_close()
        return False

    def commands(self):
        with self.srv.lock:
            return list(self.srv.log)

    def message(self):
        """The data lines received (dot-stuffing left as sent)."""
        with self.srv.lock:
            return b"".join(self.srv.data)

    def went_silent(self, timeout=10):
        """Whether the peer stopped answering (waits a bounded time: the
        client may give up before the peer's thread has run)."""
        return self.srv.went_silent.wait(timeout)


def cert_pair(name):
    return (h.cert(name + ".pem"), h.cert(name + ".key"))
