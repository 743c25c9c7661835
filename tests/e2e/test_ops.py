#!/usr/bin/env python3
"""Operations: privileges dropped after binding (and what that means for
SIGHUP), systemd readiness (sd_notify) and socket activation
(LISTEN_FDS)."""

import os
import pwd
import re
import signal
import smtplib
import socket
import subprocess
import threading

import e2e as h


def uid_gid(pid):
    uids = gids = None
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("Uid:"):
                uids = [int(x) for x in line.split()[1:]]
            elif line.startswith("Gid:"):
                gids = [int(x) for x in line.split()[1:]]
    return uids, gids


def nobody_maildir(prefix):
    """A fresh directory (mode 0755) holding mail/, a directory that
    belongs to nobody: (nobody's passwd entry, directory, mail/)."""
    nobody = pwd.getpwnam("nobody")
    d = h.tmpdir(prefix=prefix)
    os.chmod(d, 0o755)
    md = os.path.join(d, "mail")
    os.mkdir(md)
    os.chown(md, nobody.pw_uid, nobody.pw_gid)
    return nobody, d, md


def test_privdrop():
    """user/group in [server]: every uid and gid of the process is the
    unprivileged one once it is ready, and it still delivers."""
    h.check(os.geteuid() == 0, "this test needs root (it checks the drop)")
    nobody, d, md = nobody_maildir("tern-e2e-priv-")
    (port,) = h.free_ports(1)
    cfg = os.path.join(d, "tern.ini")
    h.write(cfg, "[server]\nuser = nobody\ngroup = nogroup\n"
            "[listener mx]\nurl = smtp://127.0.0.1:%d\n"
            "[delivery]\nmaildir = %s\n" % (port, md))
    srv = h.Serve(["-c", cfg], name="privdrop")
    try:
        srv.start()
        uids, gids = uid_gid(srv.proc.pid)
        h.check(uids == [nobody.pw_uid] * 4,
                "uids after start-up: %r (want nobody=%d)" % (uids,
                                                               nobody.pw_uid))
        h.check(all(g != 0 for g in gids), "a gid is still 0: %r" % gids)
        s = smtplib.SMTP("127.0.0.1", port, timeout=10)
        s.sendmail("a@example.org", ["b@example.org"],
                   "Subject: priv\r\n\r\nbody\r\n")
        s.quit()
        (p,) = h.maildir_files(md)
        h.check(os.stat(p).st_uid == nobody.pw_uid,
                "the message file is not owned by nobody")
    finally:
        srv.cleanup()


def test_reload_after_privdrop():
    """SIGHUP re-reads the files as the dropped user (issue 8, item 21):
    start-up warns about a users file that user cannot read, naming it;
    the reload then fails naming the file, the reason and the user, and
    keeps serving; once the file is readable, the reload succeeds."""
    h.check(os.geteuid() == 0, "this test needs root (it drops to nobody)")
    _, d, md = nobody_maildir("tern-e2e-priv-reload-")
    users = h.write(os.path.join(d, "users"),
                    h.passwd_line("alice", "secret") + "\n", mode=0o600)
    (port,) = h.free_ports(1)
    sock = os.path.join(d, "sub.sock")
    cfg = h.write(os.path.join(d, "tern.ini"),
                  "[server]\nuser = nobody\ngroup = nogroup\n"
                  "[listener mx]\nurl = smtp://127.0.0.1:%d\n"
                  "[listener sub]\nurl = smtp://%s\nauth = yes\n"
                  "[auth]\nusers = %s\n"
                  "[delivery]\nmaildir = %s\n" % (port, sock, users, md),
                  mode=0o644)
    with h.Serve(["-c", cfg], name="privdrop-reload") as srv:
        (warn,) = srv.wait_log("what=reload-unreadable")
        h.check("file=" + users in warn and "user=nobody" in warn,
                "start-up warning: %r" % warn)
        srv.signal(signal.SIGHUP)
        (line,) = srv.wait_log("event=reload")
        h.check("result=failed" in line and users in line
                and "Permission denied" in line and "user=nobody" in line,
                "reload of a root-only users file: %r" % line)
        h.check(srv.alive(), "the daemon exited on a failed reload")
        s = smtplib.SMTP("127.0.0.1", port, timeout=10)
        s.sendmail("a@example.org", ["b@example.org"],
                   "Subject: still\r\n\r\nserving\r\n")
        s.quit()
        os.chmod(users, 0o644)
        srv.signal(signal.SIGHUP)
        lines = srv.wait_log("event=reload", count=2)
        h.check("result=ok" in lines[1], "reload once readable: %r"
                % lines[1])


def test_sd_notify():
    """Type=notify (issue 8, item 33): READY=1 reaches NOTIFY_SOCKET once
    the port listens (a connect right then succeeds), RELOADING=1 with
    MONOTONIC_USEC and READY=1 frame a SIGHUP, STOPPING=1 comes with
    SIGTERM."""
    d = h.tmpdir(prefix="tern-e2e-notify-")
    ns_path = os.path.join(d, "notify")
    ns = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    ns.bind(ns_path)
    ns.settimeout(15)
    (port,) = h.free_ports(1)
    cfg = h.write(os.path.join(d, "tern.ini"),
                  "[listener mx]\nurl = smtp://127.0.0.1:%d\n"
                  "[delivery]\nmaildir = %s\nfsync = no\n"
                  % (port, os.path.join(d, "mail")))

    def recv(what):
        try:
            return ns.recv(4096).decode()
        except socket.timeout:
            h.fail("no datagram on NOTIFY_SOCKET while waiting for %s"
                   % what)

    old = os.environ.get("NOTIFY_SOCKET")
    os.environ["NOTIFY_SOCKET"] = ns_path
    srv = h.Serve(["-c", cfg], name="notify", expect_ready=False)
    try:
        srv.start()
    finally:
        if old is None:
            del os.environ["NOTIFY_SOCKET"]
        else:
            os.environ["NOTIFY_SOCKET"] = old
    try:
        msg = recv("READY=1")
        with socket.create_connection(("127.0.0.1", port), timeout=5) as c:
            banner = c.recv(512)
        h.check(msg == "READY=1", "first notification %r" % msg)
        h.check(banner.startswith(b"220"), "greeting %r" % banner)
        srv.signal(signal.SIGHUP)
        msg = recv("RELOADING=1")
        h.check(msg.split("\n")[0] == "RELOADING=1"
                and re.search(r"^MONOTONIC_USEC=\d+$", msg, re.M),
                "reload notification %r" % msg)
        msg = recv("READY=1 after the reload")
        h.check(msg == "READY=1", "after the reload: %r" % msg)
        srv.wait_log("event=reload")
        srv.signal(signal.SIGTERM)
        msg = recv("STOPPING=1")
        h.check(msg == "STOPPING=1", "at SIGTERM: %r" % msg)
        h.check(srv.wait_exit() == 0, "exit code %r" % srv.returncode)
    finally:
        srv.cleanup()
        ns.close()


def test_socket_activation():
    """A listening socket handed over as fd 3 with LISTEN_PID/LISTEN_FDS
    (as systemd does) is used for the first [listener]; tern binds
    nothing itself for it."""
    d = h.tmpdir(prefix="tern-e2e-sock-")
    md = os.path.join(d, "mail")
    ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    ls.bind(("127.0.0.1", 0))
    ls.listen(16)
    port = ls.getsockname()[1]
    cfg = os.path.join(d, "tern.ini")
    h.write(cfg, "[listener mx]\nurl = smtp://127.0.0.1:%d\n"
            "[delivery]\nmaildir = %s\nfsync = no\n" % (port, md))
    fd = ls.fileno()

    # fd 3 is listed in pass_fds: Popen closes unlisted descriptors after
    # child_setup has run, which would close the dup2'ed one.
    def child_setup():
        os.dup2(fd, 3)
        os.set_inheritable(3, True)
        os.environ["LISTEN_PID"] = str(os.getpid())
        os.environ["LISTEN_FDS"] = "1"

    proc = subprocess.Popen([h.tern_bin(), "serve", "-c", cfg],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, pass_fds=(fd, 3),
                            preexec_fn=child_setup)
    lines = []
    t = threading.Thread(target=lambda: lines.extend(
        l.decode("utf-8", "replace") for l in proc.stdout), daemon=True)
    t.start()
    try:
        h.wait_for(lambda: any("event=ready" in l for l in lines)
                   or proc.poll() is not None, 10, "tern serve ready")
        h.check(proc.poll() is None, "tern serve exited: %s" % "".join(lines))
        ls.close()  # only the daemon holds the listening socket now
        s = smtplib.SMTP("127.0.0.1", port, timeout=10)
        s.sendmail("a@example.org", ["b@example.org"],
                   "Subject: socket\r\n\r\nactivated\r\n")
        s.quit()
        (p,) = h.maildir_files(md)
        h.check(b"activated" in h.read(p), "message not stored")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        h.check(proc.returncode == 0, "exit code %s; log:\n%s"
                % (proc.returncode, "".join(lines)))


def test_port_in_use():
    """A second `tern serve` on a port the first (with 2 workers) listens
    on fails at start with "Address already in use" (exit 69,
    EX_UNAVAILABLE), as net.h promises; the first keeps all the traffic.
    With SO_REUSEPORT the second used to start and take half of it."""
    d = h.tmpdir(prefix="tern-e2e-port-")
    (port,) = h.free_ports(1)
    cfgs = []
    for i in range(2):
        cfg = os.path.join(d, "tern%d.ini" % i)
        h.write(cfg, "[server]\nworkers = 2\nhostname = first%d.example\n"
                "[listener mx]\nurl = smtp://127.0.0.1:%d\n"
                "[delivery]\nmaildir = %s\nfsync = no\n"
                % (i, port, os.path.join(d, "mail%d" % i)))
        cfgs.append(cfg)
    with h.Serve(["-c", cfgs[0]], name="first"):
        rc, out, err = h.run_serve(["-c", cfgs[1]], timeout=20)
        h.check(rc == 69 and "in use" in err,
                "the second tern serve on port %d: rc %s, stderr %r "
                "(want 69 and 'Address already in use')" % (port, rc, err))
        # every connection is the first's (both of its workers accept)
        for _ in range(20):
            r = h.Raw("127.0.0.1", port, timeout=10)
            try:
                code, lines = r.reply()
                h.check(code == 220 and "first0.example" in lines[0],
                        "greeting %r" % lines)
                r.cmd("QUIT", 221)
            finally:
                r.close()


# ---- socket activation: matched by name or address, never by position ----

ACT_CONF = """[listener mx]
url = smtp://127.0.0.1:{mx}
auth = no
[listener sub]
url = smtp://127.0.0.1:{sub}
auth = required
insecure_auth = yes
[auth]
users = {users}
[delivery]
maildir = {md}
fsync = no
"""


class Activated:
    """systemd-socket-activate -l ADDR... [--fdname=...] tern serve -c
    CFG: systemd's own tool binds the sockets, starts tern serve on the
    first connection and hands them over (LISTEN_FDS, LISTEN_FDNAMES)."""

    def __init__(self, cfg, listens, fdnames=None):
        tool = h.require_tool("systemd-socket-activate")
        cmd = [tool]
        for a in listens:
            cmd += ["-l", a]
        if fdnames:
            cmd.append("--fdname=" + ":".join(fdnames))
        cmd += [h.tern_bin(), "serve", "-c", cfg]
        self.lines = []
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT)
        self.t = threading.Thread(target=lambda: self.lines.extend(
            ln.decode("utf-8", "replace") for ln in self.proc.stdout),
            daemon=True)
        self.t.start()
        h.wait_for(lambda: sum("Listening on" in ln for ln in self.lines)
                   == len(listens) or self.proc.poll() is not None, 10,
                   "systemd-socket-activate to listen")

    def log(self):
        return "".join(self.lines)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.t.join(3)


def act_setup():
    d = h.tmpdir(prefix="tern-e2e-act-")
    users = os.path.join(d, "users")
    h.write(users, h.passwd_line("alice", "pw") + "\n")
    mx, sub, other = h.free_ports(3)
    cfg = os.path.join(d, "tern.ini")
    h.write(cfg, ACT_CONF.format(mx=mx, sub=sub, users=users,
                                 md=os.path.join(d, "mail")))
    return cfg, mx, sub, other


def mail_code(port):
    """The reply to MAIL without AUTH on port: 250 (mx) or 530 (sub)."""
    r = h.Raw("127.0.0.1", port, timeout=10)
    try:
        code, lines = r.reply()
        h.check(code == 220, "greeting on %d: %r" % (port, lines))
        r.cmd("EHLO act.test", 250)
        code, _ = r.cmd("MAIL FROM:<a@example.org>")
        r.cmd("QUIT", 221)
        return code
    finally:
        r.close()


def test_socket_activation_by_address():
    """Sockets handed over in the other order than the listeners (fd 3 is
    sub's port, fd 4 mx's): each still gets its own listener's policy
    (it used to be by position: sub's port got mx's, no AUTH needed)."""
    cfg, mx, sub, _ = act_setup()
    a = Activated(cfg, ["127.0.0.1:%d" % sub, "127.0.0.1:%d" % mx])
    try:
        h.check(mail_code(sub) == 530, "MAIL without AUTH on the sub "
                "listener's socket was not refused 530; log:\n" + a.log())
        h.check(mail_code(mx) == 250, "MAIL on the mx listener's socket "
                "was not accepted; log:\n" + a.log())
    finally:
        a.stop()


def test_socket_activation_by_name():
    """LISTEN_FDNAMES (FileDescriptorName=) name the listeners."""
    cfg, mx, sub, _ = act_setup()
    a = Activated(cfg, ["127.0.0.1:%d" % sub, "127.0.0.1:%d" % mx],
                  fdnames=["sub", "mx"])
    try:
        h.check(mail_code(sub) == 530, "sub: log:\n" + a.log())
        h.check(mail_code(mx) == 250, "mx: log:\n" + a.log())
    finally:
        a.stop()


def expect_refusal(a, port, words):
    # the first connection makes systemd-socket-activate start tern
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.settimeout(5)
            try:
                s.recv(100)
            except OSError:
                pass
    except OSError:
        pass
    try:
        rc = a.proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        a.stop()
        h.fail("tern serve started although a socket did not match; log:\n"
               + a.log())
    a.t.join(3)
    h.check(rc == 78, "exit code %s (want 78, EX_CONFIG); log:\n%s"
            % (rc, a.log()))
    for w in words:
        h.check(w in a.log(), "the error does not say %r:\n%s"
                % (w, a.log()))


def test_socket_activation_unknown_socket():
    """A socket on an address no listener has: refused at start, naming
    the socket."""
    cfg, mx, sub, other = act_setup()
    a = Activated(cfg, ["127.0.0.1:%d" % mx, "127.0.0.1:%d" % other])
    try:
        expect_refusal(a, mx, ["127.0.0.1:%d" % other, "matches no listener"])
    finally:
        a.stop()


def test_socket_activation_name_mismatch():
    """A socket named after [listener mx] but on sub's port: refused,
    naming the listener, its url and the socket's address."""
    cfg, mx, sub, _ = act_setup()
    a = Activated(cfg, ["127.0.0.1:%d" % sub], fdnames=["mx"])
    try:
        expect_refusal(a, sub, ["[listener mx]", "127.0.0.1:%d" % sub,
                                "smtp://127.0.0.1:%d" % mx])
    finally:
        a.stop()


def test_unix_socket_owner_mode():
    """[listener] socket_group/socket_mode on an LMTP unix socket: the
    socket is created 0660, group postfix, before the daemon drops to
    nobody (who could not chown it any more); Postfix's lmtp client,
    running as user postfix, can connect (LHLO answered 250), and a user
    outside the group (nobody) gets Permission denied. It used to be
    srwxr-xr-x root, and postfix got Permission denied."""
    import grp
    import stat
    h.check(os.geteuid() == 0, "this test needs root (it changes owners)")
    pf = pwd.getpwnam("postfix")
    pgid = grp.getgrnam("postfix").gr_gid
    d = h.tmpdir(prefix="tern-e2e-unix-")
    os.chmod(d, 0o755)
    sock = os.path.join(d, "lmtp.sock")
    md = os.path.join(d, "mail")
    os.mkdir(md)
    os.chown(md, pwd.getpwnam("nobody").pw_uid, -1)
    cfg = os.path.join(d, "tern.ini")
    h.write(cfg, "[server]\nuser = nobody\ngroup = nogroup\n"
            "[listener lmtp]\nurl = lmtp://%s\nsocket_group = postfix\n"
            "socket_mode = 0660\n"
            "[delivery]\nmaildir = %s\nfsync = no\n" % (sock, md))
    probe = ("import socket,sys\n"
             "s=socket.socket(socket.AF_UNIX)\n"
             "s.settimeout(10)\n"
             "try:\n"
             "    s.connect(sys.argv[1])\n"
             "except PermissionError:\n"
             "    print('EACCES'); sys.exit(0)\n"
             "f=s.makefile('rb')\n"
             "print(f.readline().decode().strip())\n"
             "s.sendall(b'LHLO pf.test\\r\\n')\n"
             "while True:\n"
             "    l=f.readline().decode()\n"
             "    if l[3:4] != '-': print(l.strip()); break\n")
    srv = h.Serve(["-c", cfg], name="unix-perm")
    try:
        srv.start()
        st = os.stat(sock)
        h.check(stat.S_ISSOCK(st.st_mode), "%s is not a socket" % sock)
        h.check(stat.S_IMODE(st.st_mode) == 0o660,
                "socket mode %o (want 0660)" % stat.S_IMODE(st.st_mode))
        h.check(st.st_gid == pgid, "socket group %d (want postfix=%d)"
                % (st.st_gid, pgid))
        p = subprocess.run(["python3", "-c", probe, sock], user=pf.pw_uid,
                           group=pgid, extra_groups=[], capture_output=True,
                           timeout=20)
        out = p.stdout.decode().split("\n")
        h.check(out[0].startswith("220") and out[1].startswith("250"),
                "as user postfix: %r %r" % (out, p.stderr))
        p = subprocess.run(["python3", "-c", probe, sock],
                           user=pwd.getpwnam("nobody").pw_uid,
                           group=grp.getgrnam("nogroup").gr_gid,
                           extra_groups=[], capture_output=True, timeout=20)
        h.check(p.stdout.decode().strip() == "EACCES",
                "as nobody (not in group postfix): %r %r"
                % (p.stdout, p.stderr))
    finally:
        srv.cleanup()


if __name__ == "__main__":
    h.main([test_privdrop, test_reload_after_privdrop, test_sd_notify,
            test_socket_activation, test_port_in_use,
            test_socket_activation_by_address, test_socket_activation_by_name,
            test_socket_activation_unknown_socket,
            test_socket_activation_name_mismatch,
            test_unix_socket_owner_mode])
