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


def test_privdrop():
    """user/group in [server]: every uid and gid of the process is the
    unprivileged one once it is ready, and it still delivers."""
    h.check(os.geteuid() == 0, "this test needs root (it checks the drop)")
    nobody = pwd.getpwnam("nobody")
    d = h.tmpdir(prefix="tern-e2e-priv-")
    os.chmod(d, 0o755)
    md = os.path.join(d, "mail")
    os.mkdir(md)
    os.chown(md, nobody.pw_uid, nobody.pw_gid)
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
    nobody = pwd.getpwnam("nobody")
    d = h.tmpdir(prefix="tern-e2e-priv-reload-")
    os.chmod(d, 0o755)
    md = os.path.join(d, "mail")
    os.mkdir(md)
    os.chown(md, nobody.pw_uid, nobody.pw_gid)
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


if __name__ == "__main__":
    h.main([test_privdrop, test_reload_after_privdrop, test_sd_notify,
            test_socket_activation])
