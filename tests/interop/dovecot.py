"""A private, throwaway Dovecot LMTP server for tests (stdlib only).

    from dovecot import Dovecot, strip_trace
    with Dovecot(users=["alice", "bob"]) as dc:
        url = "lmtp://" + dc.sock           # unix socket, mode 0666
        # or Dovecot(users=[...], tcp=True): dc.port on 127.0.0.1
        ...
        files = dc.wait_files("alice", 1)   # stored messages, oldest first
        trace, body = strip_trace(h.read(files[0]), files[0])

Everything lives in one temporary directory (base_dir, state, log,
passwd-file, Maildirs), so tests never touch the host's Dovecot and may
run in parallel. Users are given in a passwd-file; any other recipient
is refused by Dovecot itself (550 5.1.1 at RCPT). Dovecot never delivers
as root, so when the tests run as root the mail belongs to `nobody`.

A missing dovecot or dovecot-lmtpd fails the test and says so (DESIGN.md
§8: test peers are installed by scripts/install-deps; never skip).
"""

import glob
import os
import pwd
import subprocess
import threading

import harness as h

DOVECOT = "/usr/sbin/dovecot"
LMTP = "/usr/lib/dovecot/lmtp"

CONF = """\
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
mail_fsync = {fsync}
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
  process_limit = {processes}
  unix_listener {d}/lmtp.sock {{
    mode = 0666
  }}
{inet}}}
"""

INET = """\
  inet_listener lmtp {{
    address = 127.0.0.1
    port = {port}
  }}
"""


class Dovecot:
    """Dovecot LMTP in a temporary directory, as a context manager.

    users      local parts that exist (Maildir {d}/mail/USER)
    tcp        also listen on 127.0.0.1 (self.port), besides self.sock
    fsync      Dovecot's mail_fsync ("never" keeps big tests quick;
               "optimized" is Dovecot's default)
    processes  lmtp process_limit

    Attributes once started: d (the directory), sock (unix socket path),
    port (TCP port or None), url ("lmtp://" + sock), tcp_url.
    """

    def __init__(self, users=("alice", "bob"), tcp=False, fsync="never",
                 processes=10, name="dovecot"):
        self.users = list(users)
        self.tcp = tcp
        self.fsync = fsync
        self.processes = processes
        self.name = name
        self.proc = None
        self.lines = []
        self.port = None
        self.d = None
        self.sock = None

    # -- paths and results ---------------------------------------------------

    @property
    def url(self):
        return "lmtp://" + self.sock

    @property
    def tcp_url(self):
        h.check(self.port is not None, "Dovecot was started without tcp=True")
        return "lmtp://127.0.0.1:%d" % self.port

    def maildir(self, user):
        """The Maildir of a user (created by Dovecot on first delivery)."""
        return os.path.join(self.d, "mail", user)

    def files(self, user):
        """Paths of the user's stored messages (new/ and cur/), sorted by
        delivery time."""
        md = self.maildir(user)
        found = glob.glob(os.path.join(md, "new", "*")) + \
            glob.glob(os.path.join(md, "cur", "*"))
        return sorted(found, key=lambda p: (os.stat(p).st_mtime, p))

    def wait_files(self, user, count, timeout=10.0):
        """Wait (bounded) until the user holds at least count messages;
        fail if more than count arrive. Returns their paths."""
        files = h.wait_for(lambda: len(self.files(user)) >= count and
                           self.files(user), timeout,
                           "%d message(s) in %s's Maildir" % (count, user))
        h.check(len(files) == count, "%s: expected %d message(s), found %d"
                % (user, count, len(files)))
        return files

    def log(self, tail=3000):
        p = os.path.join(self.d, "dovecot.log")
        if not os.path.exists(p):
            return ""
        with open(p, errors="replace") as f:
            return f.read()[-tail:]

    # -- life ------------------------------------------------------------------

    def start(self):
        dovecot = h.require_tool("dovecot", paths=[DOVECOT])
        h.check(os.path.exists(LMTP),
                "dovecot-lmtpd is not installed (%s missing)" % LMTP)
        d = self.d = h.tmpdir("tern-dovecot-")
        os.chmod(d, 0o755)
        uid, gid = os.getuid(), os.getgid()
        if uid == 0:  # Dovecot refuses to deliver as root
            nobody = pwd.getpwnam("nobody")
            uid, gid = nobody.pw_uid, nobody.pw_gid
        for sub in ("mail", "home"):
            os.makedirs(os.path.join(d, sub))
            os.chown(os.path.join(d, sub), uid, gid)
        with open(os.path.join(d, "users"), "w") as f:
            for u in self.users:
                f.write("%s:{PLAIN}x:%d:%d::%s/home/%s::\n"
                        % (u, uid, gid, d, u))
        inet = ""
        if self.tcp:
            self.port = h.free_port()
            inet = INET.format(port=self.port)
        conf = os.path.join(d, "dovecot.conf")
        with open(conf, "w") as f:
            f.write(CONF.format(d=d, fsync=self.fsync, inet=inet,
                                processes=self.processes))
        self.sock = os.path.join(d, "lmtp.sock")
        self.proc = subprocess.Popen([dovecot, "-F", "-c", conf],
                                     stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT)

        def read():
            for raw in self.proc.stdout:
                self.lines.append(raw.decode("utf-8", "replace").rstrip())
        threading.Thread(target=read, daemon=True).start()
        try:
            h.wait_for(lambda: self.ready() or self.proc.poll() is not None,
                       15, "%s to start" % self.name)
            h.check(self.proc.poll() is None, "%s exited (%s): %s\n%s" % (
                self.name, self.proc.returncode, "\n".join(self.lines[-30:]),
                self.log()))
        except BaseException:
            self.stop()
            raise
        return self

    def ready(self):
        if not os.path.exists(self.sock):
            return False
        if self.port is None:
            return True
        import socket
        try:
            socket.create_connection(("127.0.0.1", self.port), 1).close()
            return True
        except OSError:
            return False

    def stop(self):
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def __enter__(self):
        return self.start()

    def __exit__(self, *a):
        self.stop()
        return False


def start_dovecot(users=("alice", "bob"), **kw):
    """A started Dovecot (see the class); call .stop() when done, or use
    `with Dovecot(...) as dc:` instead."""
    return Dovecot(users=users, **kw).start()


TRACE_NAMES = (b"return-path", b"received", b"delivered-to")


def strip_trace(data, what="stored message"):
    """(trace, rest): the trace header fields (Return-Path, Received,
    Delivered-To, with continuation lines) that Dovecot and the relays in
    front of it put before the message, and the message itself."""
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
