"""A small aiosmtpd server for the client runtime tests (run it with the
interpreter that has aiosmtpd, e.g. Debian's /usr/bin/python3).

    aiosmtpd_server.py --out DIR --cert F --key F --users FILE [--port N]

STARTTLS required, AUTH (PLAIN, LOGIN) required and only after TLS.
Users file: "user:password" lines. Each message is stored as
DIR/<n>.eml (envelope.original_content: the bytes after dot-unstuffing)
and DIR/<n>.env ("from:", "rcpt:", "auth:" lines), the .env last.
Prints "READY <port>" once listening; exits on SIGTERM/SIGINT.
"""

import argparse
import os
import signal
import socket
import ssl
import sys
import threading

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword


class Store:
    def __init__(self, out):
        self.out = out
        self.n = 0
        self.lock = threading.Lock()

    async def handle_DATA(self, server, session, envelope):
        with self.lock:
            self.n += 1
            n = self.n
        with open(os.path.join(self.out, "%d.eml" % n), "wb") as f:
            f.write(envelope.original_content)
        user = session.auth_data.login.decode() if isinstance(
            session.auth_data, LoginPassword) else ""
        with open(os.path.join(self.out, "%d.env.tmp" % n), "w") as f:
            f.write("from: %s\n" % envelope.mail_from)
            for r in envelope.rcpt_tos:
                f.write("rcpt: %s\n" % r)
            f.write("auth: %s\n" % user)
            f.write("tls: %d\n" % (1 if session.ssl else 0))
        os.rename(os.path.join(self.out, "%d.env.tmp" % n),
                  os.path.join(self.out, "%d.env" % n))
        return "250 2.0.0 OK stored"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--cert", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--users", required=True)
    ap.add_argument("--port", type=int, default=0)
    a = ap.parse_args()

    users = {}
    with open(a.users) as f:
        for line in f:
            u, _, p = line.rstrip("\n").partition(":")
            users[u.encode()] = p.encode()

    def authenticator(server, session, envelope, mechanism, auth_data):
        ok = (isinstance(auth_data, LoginPassword)
              and users.get(auth_data.login) == auth_data.password)
        return AuthResult(success=ok, handled=False,
                          auth_data=auth_data if ok else None)

    port = a.port
    if port == 0:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(a.cert, a.key)
    ctl = Controller(Store(a.out), hostname="127.0.0.1", port=port,
                     server_hostname="localhost",
                     tls_context=ctx, require_starttls=True,
                     authenticator=authenticator, auth_required=True,
                     auth_require_tls=True)
    ctl.start()
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *x: done.set())
    signal.signal(signal.SIGINT, lambda *x: done.set())
    print("READY %d" % port, flush=True)
    done.wait()
    ctl.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
