#!/usr/bin/env python3
"""The client runtime (tests/net/client_probe) against servers nobody here
wrote: aiosmtpd (STARTTLS + AUTH PLAIN/LOGIN), Postfix smtp-sink (1,000
messages on one connection with pipelining), and Dovecot LMTP over a unix
socket (per-recipient results, delivery byte-compared in the Maildir)."""

import glob
import os
import pwd
import re
import subprocess
import threading
import time

import harness as h
from test_client_runtime import MSG, connect_line, probe

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "..", "data")


class Proc:
    """A server child: waits for a READY line (or a condition), killed on
    exit."""

    def __init__(self, cmd, ready_re=None, ready=None, name="server"):
        self.cmd = cmd
        self.ready_re = ready_re
        self.ready = ready
        self.name = name
        self.lines = []
        self.port = None

    def __enter__(self):
        self.p = subprocess.Popen(self.cmd, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL)

        def read():
            for raw in self.p.stdout:
                line = raw.decode("utf-8", "replace").rstrip()
                self.lines.append(line)
                if self.ready_re:
                    m = re.match(self.ready_re, line)
                    if m and m.groups():
                        self.port = int(m.group(1))
        self.t = threading.Thread(target=read, daemon=True)
        self.t.start()
        try:
            if self.ready_re:
                h.wait_for(lambda: self.port is not None or
                           self.p.poll() is not None, 15,
                           "%s to start" % self.name)
                h.check(self.port is not None, "%s exited: %s"
                        % (self.name, "\n".join(self.lines[-30:])))
            elif self.ready:
                h.wait_for(lambda: self.ready() or self.p.poll() is not None,
                           15, "%s to start" % self.name)
                h.check(self.p.poll() is None, "%s exited: %s"
                        % (self.name, "\n".join(self.lines[-30:])))
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self):
        if self.p.poll() is None:
            self.p.terminate()
            try:
                self.p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()

    def __exit__(self, *a):
        self.stop()
        return False


# ---- aiosmtpd ------------------------------------------------------------------

def test_aiosmtpd_starttls_auth():
    py = h.require_tool("python3 with aiosmtpd", paths=["/usr/bin/python3"])
    r = subprocess.run([py, "-c", "import aiosmtpd"], capture_output=True)
    h.check(r.returncode == 0, "aiosmtpd is not installed for %s "
            "(Debian: python3-aiosmtpd)" % py)
    out_dir = h.tmpdir()
    users = os.path.join(h.tmpdir(), "users")
    with open(users, "w") as f:
        f.write("alice:wonder land\nbob:b0b\n")
    cmd = [py, os.path.join(DATA, "aiosmtpd_server.py"), "--out", out_dir,
           "--cert", h.cert("server.pem"), "--key", h.cert("server.key"),
           "--users", users]
    with Proc(cmd, ready_re=r"READY (\d+)$", name="aiosmtpd") as srv:
        url = "smtp+starttls://127.0.0.1:%d" % srv.port
        for i, mech in enumerate(("PLAIN", "LOGIN")):
            out = probe(url, rcpts=["x@example.org", "y@example.org"],
                        args=["--ca-file", h.cert("ca.pem"),
                              "--user", "alice", "--password", "wonder land",
                              "--mechs", mech])
            h.check("connect ok tls=TLSv1" in out, out)
            env = os.path.join(out_dir, "%d.env" % (i + 1))
            h.wait_for(lambda: os.path.exists(env), 10, env)
            with open(env) as f:
                e = f.read()
            h.check("auth: alice\n" in e and "tls: 1\n" in e, e)
            h.check("rcpt: x@example.org\nrcpt: y@example.org\n" in e, e)
            with open(os.path.join(out_dir, "%d.eml" % (i + 1)), "rb") as f:
                h.assert_bytes_equal(f.read(), MSG)
        # a wrong password: the reason is aiosmtpd's reply
        out = probe(url, args=["--ca-file", h.cert("ca.pem"),
                               "--user", "alice", "--password", "nope",
                               "--mechs", "PLAIN"], expect_rc=1)
        line = connect_line(out)
        h.check(line.startswith("connect error TERN_EAUTH: AUTH PLAIN "
                                "refused: 535"), line)
        # without the test CA the certificate does not verify
        out = probe(url, args=["--user", "alice", "--password",
                               "wonder land"], expect_rc=1)
        h.check("TERN_ETLS: TLS: certificate verify failed" in
                connect_line(out), out)


# ---- Postfix smtp-sink ------------------------------------------------------------

def test_smtp_sink_1000_pipelined():
    sink = h.require_tool("smtp-sink", paths=["/usr/sbin/smtp-sink"])
    port = h.free_port()
    user = pwd.getpwuid(os.getuid()).pw_name
    cmd = [sink, "-u", user, "127.0.0.1:%d" % port, "100"]

    def listening():
        import socket
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return True
        except OSError:
            return False
    with Proc(cmd, ready=listening, name="smtp-sink"):
        t0 = time.monotonic()
        out = probe("smtp://127.0.0.1:%d" % port,
                    rcpts=["a@example.org", "b@example.org"],
                    args=["--count", "1000"], timeout=240)
        dt = time.monotonic() - t0
        h.check("done messages=1000 complete=1000" in out, out[-2000:])
        h.check("message 1000 code=250" in out, out[-2000:])
        print("  1000 messages in %.2f s" % dt)


# ---- Dovecot LMTP -----------------------------------------------------------------

DOVECOT_CONF = """\
base_dir = {d}/run
state_dir = {d}/state
log_path = {d}/dovecot.log
info_log_path = {d}/dovecot.log
protocols = lmtp
ssl = no
first_valid_uid = 0
auth_username_format = %Ln
mail_location = maildir:{d}/mail/%n
mail_save_crlf = yes
lmtp_save_to_detail_mailbox = no
passdb {{
  driver = passwd-file
  args = {d}/users
}}
userdb {{
  driver = passwd-file
  args = {d}/users
}}
service lmtp {{
  unix_listener {d}/lmtp.sock {{
    mode = 0666
  }}
}}
"""


def test_dovecot_lmtp():
    dovecot = h.require_tool("dovecot", paths=["/usr/sbin/dovecot"])
    h.check(os.path.exists("/usr/lib/dovecot/lmtp"),
            "dovecot-lmtpd is not installed")
    d = h.tmpdir("tern-dovecot-")
    os.chmod(d, 0o755)
    uid, gid = os.getuid(), os.getgid()
    if uid == 0:  # Dovecot never delivers as root: use nobody
        nobody = pwd.getpwnam("nobody")
        uid, gid = nobody.pw_uid, nobody.pw_gid
    os.makedirs(os.path.join(d, "mail"))
    os.makedirs(os.path.join(d, "home"))
    for sub in ("mail", "home"):
        os.chown(os.path.join(d, sub), uid, gid)
    with open(os.path.join(d, "users"), "w") as f:
        for u in ("alice", "bob"):
            f.write("%s:{PLAIN}x:%d:%d::%s/home/%s::\n" % (u, uid, gid, d, u))
    conf = os.path.join(d, "dovecot.conf")
    with open(conf, "w") as f:
        f.write(DOVECOT_CONF.format(d=d))
    sock = os.path.join(d, "lmtp.sock")
    cmd = [dovecot, "-F", "-c", conf]
    with Proc(cmd, ready=lambda: os.path.exists(sock), name="dovecot"):
        try:
            out = probe("lmtp://" + sock,
                        rcpts=["alice@example.org", "nobody@example.org",
                               "bob@example.org"], expect_rc=1)
        except h.TestFailure:
            log = os.path.join(d, "dovecot.log")
            if os.path.exists(log):
                print(open(log).read()[-3000:])
            raise
        h.check("connect ok tls=none" in out, out)
        h.check(re.search(r"^rcpt 1 nobody@example.org 550", out, re.M), out)
        h.check(re.search(r"^data 0 alice@example.org 250", out, re.M), out)
        h.check(re.search(r"^data 2 bob@example.org 250", out, re.M), out)
        h.check("accepted=2 delivered=2" in out, out)
        for u in ("alice", "bob"):
            files = h.wait_for(
                lambda: glob.glob(os.path.join(d, "mail", u, "new", "*")),
                10, "a message in %s's Maildir" % u)
            h.check(len(files) == 1, repr(files))
            with open(files[0], "rb") as f:
                got = f.read()
            # Dovecot adds its trace headers in front; the rest is ours
            head, sep, rest = got.partition(MSG[:20])
            h.check(sep, "message not found in %r" % got[:500])
            h.assert_bytes_equal(sep + rest, MSG, "%s's Maildir file" % u)
            for line in head.split(b"\r\n"):
                h.check(not line or line[:1] in (b" ", b"\t") or
                        line.split(b":")[0] in (b"Return-Path",
                                                b"Delivered-To", b"Received"),
                        "unexpected header %r" % line)


if __name__ == "__main__":
    h.main([
        test_aiosmtpd_starttls_auth,
        test_smtp_sink_1000_pipelined,
        test_dovecot_lmtp,
    ])
