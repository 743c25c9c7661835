#!/usr/bin/env python3
"""Bad configuration files stop `tern serve` (with and without --check)
with EX_CONFIG (78) and a message naming FILE:LINE: where a line applies;
nothing is bound. A listener port already in use is a clear error naming
the address."""

import os
import re
import socket
import subprocess

import e2e as h

EX_CONFIG = 78

# name: (text, the line the message must name or None, a word it contains)
BAD = {
    "unknown-key": ("[server]\nhostname = a.example\nmax_size = 10M\n",
                    3, "max_size"),
    "bad-value": ("[server]\n\nmax_message_size = 30X\n", 3, "30X"),
    "bad-bool": ("[listener mx]\nurl = smtp://127.0.0.1:{port}\n"
                 "starttls = perhaps\n", 3, "perhaps"),
    "duplicate-key": ("[server]\nworkers = 1\nhostname = a.example\n"
                      "workers = 2\n", 4, "workers"),
    "duplicate-reopened": ("[server]\nworkers = 1\n[delivery]\nfsync = yes\n"
                           "[server]\nworkers = 2\n", 6, "workers"),
    "unknown-section": ("[server]\nworkers = 1\n[mail]\nx = 1\n", 3, "mail"),
    "syntax": ("[server]\nthis is not ini\n", 2, None),
    # a whole-listener check names the listener's [listener] line
    "starttls-without-certs": ("[server]\nworkers = 1\n[listener mx]\n"
                               "url = smtp://127.0.0.1:{port}\n"
                               "starttls = yes\n", 3, "starttls"),
    "missing-users-file": ("[listener sub]\nurl = smtp://127.0.0.1:{port}\n"
                           "auth = yes\ninsecure_auth = yes\n[auth]\n"
                           "users = {dir}/no-such-users\n", None,
                           "no-such-users"),
    "pipe-without-command": ("[delivery]\ntarget = pipe\n", None, "command"),
    "text-after-section": ("[server]\nworkers = 1\n[server] workers = 99\n",
                           3, "workers = 99"),
    # [queue] (Step 7): the schedule checked as a whole, on the later
    # line; the postmaster an address; days only in [queue]
    "queue-retry-order": ("[queue]\nretry_max = 10m\nretry_min = 2h\n", 3,
                          "retry_min"),
    "queue-lifetime": ("[queue]\nlifetime = 1m\nretry_min = 2m\n", 3,
                       "lifetime"),
    "queue-postmaster": ("[queue]\npostmaster = nobody\n", 2, "postmaster"),
    "queue-concurrency": ("[queue]\n\nconcurrency = 0\n", 3, "concurrency"),
    "days-outside-queue": ("[server]\ntimeout_command = 1d\n", 2, "1d"),
    "delivery-queue": ("[delivery]\ntarget = maildir\nqueue = maybe\n", 3,
                       "maybe"),
    "cr-line-ends": ("[server]\rworkers = 1\rhostname = a b\r", 1,
                     "carriage return"),
    "password-too-long": ("[delivery]\ntarget = smtp\n"
                          "url = smtps://relay.example.net:465\n"
                          "verify = yes\nauth_user = bob\n"
                          "auth_password_file = {dir}/long-password\n",
                          None, "longer than"),
    # no open relay: a forwarding target for any domain on a public
    # listener without AUTH (the whole file: no one line is to blame)
    "open-relay": ("[listener mx]\nurl = smtp://0.0.0.0:{port}\n"
                   "[delivery]\ntarget = smtp\n"
                   "url = smtp://relay.example.net:25\n", None,
                   "open relay"),
    # [queue] paths that would fail at start: a control socket longer
    # than a sockaddr_un holds, a spool whose parent is missing
    "queue-control-long": ("[delivery]\ntarget = smtp\n"
                           "url = smtp://relay.example.net:25\n[queue]\n"
                           "control = /tmp/" + "c" * 110 + "\n", 5,
                           "unix socket path"),
    "queue-directory-parent": ("[delivery]\ntarget = smtp\n"
                               "url = smtp://relay.example.net:25\n"
                               "[queue]\n\ndirectory = {dir}/none/queue\n",
                               6, "does not exist"),
    # Step 8: routing, [outbound], [tls_policy], [dkim NAME]
    "route-bad-domain": ("[routes]\nexample..org = mx\n", 2,
                         "example..org"),
    "route-duplicate": ("[routes]\nexample.org = local\n\n"
                        "EXAMPLE.org = mx\n", 4, "line 2"),
    "route-bad-url": ("[routes]\n* = http://example.org/\n", 2,
                      "http://example.org/"),
    "outbound-bind6": ("[outbound]\nbind6 = 192.0.2.1\n", 2, "bind6"),
    "outbound-resolver": ("[outbound]\nresolver = 127.0.0.1:53 dns.example\n",
                          2, "dns.example"),
    "tls-policy-level": ("[tls_policy]\nexample.net = strict\n", 2,
                         "strict"),
    "dkim-no-key": ("[server]\nworkers = 1\n[dkim s1]\ndomain = example.org\n"
                    "selector = s1\n", 3, "no key"),
    "dkim-key-missing": ("[dkim s1]\ndomain = example.org\nselector = s1\n"
                         "key = {dir}/no-such-key.pem\n", 1,
                         "no-such-key.pem"),
    "mx-without-queue": ("[delivery]\ntarget = mx\nqueue = no\n", None,
                         "needs the queue"),
    "open-relay-mx": ("[listener mx]\nurl = smtp://0.0.0.0:{port}\n"
                      "[delivery]\ntarget = mx\n", None, "open relay"),
    "open-relay-star-route": ("[listener mx]\nurl = smtp://0.0.0.0:{port}\n"
                              "[routes]\n* = mx\n", None, "open relay"),
    "relay-auth-cleartext": ("[delivery]\nrelay = smtp://smarthost.example:25\n"
                             "relay_auth_user = bob\n"
                             "relay_auth_password_file = {dir}/long-password\n",
                             3, "verified TLS"),
    # DNSSEC on (the default) with an anchor file holding no DS/DNSKEY
    # record: DANE would be silently off (review finding, Step 8)
    "outbound-anchor-no-keys": ("[delivery]\ntarget = mx\n[outbound]\n"
                                "trust_anchor = {dir}/comments.keys\n",
                                None, "no DS or DNSKEY"),
    "bad-users-line": ("[listener sub]\nurl = smtp://127.0.0.1:{port}\n"
                       "auth = yes\ninsecure_auth = yes\n[auth]\n"
                       "users = {dir}/users-md5\n", None, "users-md5"),
}


def test_bad_files():
    d = h.tmpdir(prefix="tern-e2e-badcfg-")
    h.write(os.path.join(d, "users-md5"),
            "alice:$1$abcdefgh$Cq7NnTEPm7UaY2bo1pT2v/\n")
    h.write(os.path.join(d, "long-password"), "p" * 3000 + "\n", 0o600)
    h.write(os.path.join(d, "comments.keys"),
            "; the root's keys go here\n\n; . IN DS 20326 8 2 E06D...\n")
    port = h.free_ports(1)[0]
    problems = []
    for name, (text, line, word) in sorted(BAD.items()):
        path = h.write(os.path.join(d, name + ".ini"),
                       text.format(port=port, dir=d))
        for args in (["-c", path, "--check"], ["-c", path]):
            rc, out, err = h.run_serve(args, cwd=d, timeout=20)
            what = "tern serve %s (%s)" % (" ".join(args[2:]) or "", name)
            if rc != EX_CONFIG:
                problems.append("%s: exit %d, expected %d; stderr %r"
                                % (what, rc, EX_CONFIG, err))
                continue
            if line is not None:
                want = "%s:%d:" % (path, line)
            else:
                want = "%s" % path
            if want not in err:
                problems.append("%s: stderr does not name %r: %r"
                                % (what, want, err))
            if word and word not in err:
                problems.append("%s: stderr does not mention %r: %r"
                                % (what, word, err))
            if "event=listening" in err or "event=ready" in err:
                problems.append("%s: it started listening: %r" % (what, err))
            if "missing-users-file" == name and not re.search(
                    r"No such file|cannot open|does not exist", err):
                problems.append("%s: no reason given: %r" % (what, err))
    if problems:
        h.fail("%d problem(s):\n  %s" % (len(problems), "\n  ".join(problems)))


def test_open_relay_by_listen():
    """--listen replaces the file's listeners after cfg_check looked at
    them: a relay file that is safe on loopback must not open a public
    relay with --listen (it did, --check said "configuration OK")."""
    d = h.tmpdir(prefix="tern-e2e-badcfg-relay-listen-")
    (port,) = h.free_ports(1)
    path = h.write(os.path.join(d, "r.ini"),
                   "[listener mx]\nurl = smtp://127.0.0.1:%d\n"
                   "[delivery]\ntarget = smtp\n"
                   "url = smtp://relay.example.net:25\n" % port)
    rc, out, err = h.run_serve(["-c", path, "--check"], cwd=d, timeout=20)
    h.check(rc == 0, "loopback relay: exit %d: %r" % (rc, err))
    for url in ("smtp://0.0.0.0:%d" % port, "smtp://[::]:%d" % port):
        for extra in (["--check"], []):
            rc, out, err = h.run_serve(["-c", path, "--listen", url] + extra,
                                       cwd=d, timeout=20)
            h.check(rc == EX_CONFIG and "open relay" in err,
                    "--listen %s %s: exit %d: %r" % (url, extra, rc, err))
            h.check("event=listening" not in err, "it listened: %r" % err)


def test_unknown_user_check():
    """--check answers for the privilege drop too: a [server] user that
    does not exist is EX_CONFIG there, naming the file and the user."""
    d = h.tmpdir(prefix="tern-e2e-badcfg-user-")
    (port,) = h.free_ports(1)
    path = h.write(os.path.join(d, "u.ini"),
                   "[server]\nuser = tern-no-such-user\n[listener mx]\n"
                   "url = smtp://127.0.0.1:%d\n" % port)
    rc, out, err = h.run_serve(["-c", path, "--check"], cwd=d, timeout=20)
    h.check(rc == EX_CONFIG, "exit %d, expected %d: %r" % (rc, EX_CONFIG, err))
    h.check(path in err and "tern-no-such-user" in err, "stderr: %r" % err)


def test_listen_host_name():
    """--listen takes what url = takes (addresses, not host names; and
    port 0): a host name is a usage error (64) naming the URL."""
    d = h.tmpdir(prefix="tern-e2e-badcfg-listen-")
    rc, out, err = h.run_serve(["--listen", "smtp://localhost:25999",
                                "--check"], cwd=d, timeout=20)
    h.check(rc == 64, "exit %d, expected 64: %r" % (rc, err))
    h.check("smtp://localhost:25999" in err, "stderr: %r" % err)
    rc, out, err = h.run_serve(["--listen", "smtp://127.0.0.1:0", "--check"],
                               cwd=d, timeout=20)
    h.check(rc == 0, "port 0 with --listen: exit %d: %r" % (rc, err))


def test_relay_policy_and_queue_path():
    """A forwarding target without a [domains] list is fine when every
    listener is loopback (a smarthost for this host) or when the domains
    are listed; and the spool's default ./queue is made absolute from
    the working directory: the daemon's log names the real place."""
    d = h.tmpdir(prefix="tern-e2e-relay-")
    port, port2 = h.free_ports(2)
    local = h.write(os.path.join(d, "local.ini"),
                    "[listener lo]\nurl = smtp://127.0.0.1:%d\n"
                    "[listener lo6]\nurl = smtp://[::1]:%d\n"
                    "[delivery]\ntarget = smtp\n"
                    "url = smtp://127.0.0.1:%d\n" % (port, port, port2))
    listed = h.write(os.path.join(d, "listed.ini"),
                     "[listener mx]\nurl = smtp://0.0.0.0:%d\n"
                     "[domains]\naccept = example.org\n"
                     "[delivery]\ntarget = smtp\n"
                     "url = smtp://127.0.0.1:%d\n" % (port, port2))
    for path in (local, listed):
        rc, out, err = h.run_serve(["-c", path, "--check"], cwd=d)
        h.check(rc == 0 and "configuration OK" in out,
                "--check %s: %d %r %r" % (path, rc, out, err))
    one = h.write(os.path.join(d, "one.ini"),
                  "[listener lo]\nurl = smtp://127.0.0.1:%d\n"
                  "[delivery]\ntarget = smtp\n"
                  "url = smtp://127.0.0.1:%d\n" % (port, port2))
    with h.Serve(["-c", one], cwd=d, name="relay-local") as srv:
        srv.wait_log("event=queue-open")
        want = "dir=%s/queue " % os.path.realpath(d)
        h.check(srv.has(want) or srv.has("dir=%s/queue " % d),
                "queue-open does not name the absolute spool %r: %s"
                % (want, srv.log()))
    h.check(os.path.isfile(os.path.join(d, "queue", "queue.db")),
            "no spool in the working directory")


def test_no_trust_anchor():
    """dnssec = yes (the default) with mail leaving and no trust anchor
    (no trust_anchor key, no /usr/share/dns/root.key nor
    /var/lib/unbound/root.key) is a configuration error: DANE would be
    silently off (delivered verified=no policy=may, --check said OK).
    Run in a private mount namespace with empty directories over the
    default places. With an anchor, --check names the file in use; with
    dnssec = no, it is fine."""
    d = h.tmpdir(prefix="tern-e2e-noanchor-")
    empty = os.path.join(d, "empty")
    os.mkdir(empty)
    (port,) = h.free_ports(1)
    base = ("[listener mx]\nurl = smtp://127.0.0.1:%d\n"
            "[delivery]\ntarget = mx\n" % port)
    none = h.write(os.path.join(d, "none.ini"), base)
    off = h.write(os.path.join(d, "off.ini"),
                  base + "[outbound]\ndnssec = no\n")
    anchor = h.write(os.path.join(d, "ta.keys"),
                     "example.org. IN DS 12345 13 2 " + "ab" * 32 + "\n")
    given = h.write(os.path.join(d, "given.ini"),
                    base + "[outbound]\ntrust_anchor = %s\n" % anchor)
    mounts = []
    for dflt in ("/usr/share/dns", "/var/lib/unbound"):
        if os.path.isdir(dflt):
            mounts.append("mount --bind %s %s" % (empty, dflt))

    def serve_in_ns(path, extra):
        script = " && ".join(
            ["mount --make-rprivate /"] + mounts +
            ["exec %s serve -c %s %s" % (h.tern_bin(), path, extra)])
        p = h.run(["unshare", "-m", "sh", "-c", script], timeout=20,
                  check_rc=False, cwd=d, stdin=subprocess.DEVNULL)
        return (p.returncode, p.stdout.decode("utf-8", "replace"),
                p.stderr.decode("utf-8", "replace"))

    for extra in ("--check", ""):
        rc, out, err = serve_in_ns(none, extra)
        h.check(rc == EX_CONFIG, "no anchor %s: exit %d: %r %r"
                % (extra, rc, out, err))
        h.check(none in err and "dnssec = yes but no trust anchor" in err
                and "dns-root-data" in err, "no anchor: stderr %r" % err)
        h.check("event=listening" not in err, "it listened: %r" % err)
    rc, out, err = serve_in_ns(off, "--check")
    h.check(rc == 0 and "dnssec=no" in out and "trust_anchor=none" in out,
            "dnssec = no: %d %r %r" % (rc, out, err))
    rc, out, err = serve_in_ns(given, "--check")
    h.check(rc == 0 and "trust_anchor=%s" % anchor in out,
            "trust_anchor given: %d %r %r" % (rc, out, err))
    if os.path.exists("/usr/share/dns/root.key"):
        rc, out, err = h.run_serve(["-c", none, "--check"], cwd=d)
        h.check(rc == 0 and "trust_anchor=/usr/share/dns/root.key" in out,
                "default anchor not named: %d %r %r" % (rc, out, err))


def test_good_file_check():
    d = h.tmpdir(prefix="tern-e2e-goodcfg-")
    path = h.write(os.path.join(d, "ok.ini"),
                   "[listener mx]\nurl = smtp://127.0.0.1:%d\n"
                   % h.free_ports(1)[0])
    rc, out, err = h.run_serve(["-c", path, "--check"], cwd=d)
    h.check(rc == 0 and "configuration OK" in out,
            "--check of a good file: %d %r %r" % (rc, out, err))
    h.check(not os.path.exists(os.path.join(d, "mail")),
            "--check created the Maildir")
    rc, out, err = h.run_serve(["-c", os.path.join(d, "missing.ini"),
                                "--check"], cwd=d)
    h.check(rc == EX_CONFIG and "missing.ini" in err,
            "a missing file: %d %r" % (rc, err))


def test_port_in_use():
    d = h.tmpdir(prefix="tern-e2e-inuse-")
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        for args in (["--listen", "smtp://127.0.0.1:%d" % port],):
            rc, out, err = h.run_serve(args, cwd=d, timeout=20)
            h.check(rc != 0, "tern serve on a busy port exited 0: %r" % err)
            h.check("127.0.0.1:%d" % port in err,
                    "message does not name the address 127.0.0.1:%d: %r"
                    % (port, err))
            h.check(re.search(r"in use", err, re.I),
                    "message does not say the address is in use: %r" % err)
        path = h.write(os.path.join(d, "busy.ini"),
                       "[listener a]\nurl = smtp://127.0.0.1:%d\n" % port)
        rc, out, err = h.run_serve(["-c", path], cwd=d, timeout=20)
        h.check(rc != 0 and "127.0.0.1:%d" % port in err,
                "config with a busy port: %d %r" % (rc, err))
    finally:
        s.close()


if __name__ == "__main__":
    h.main([test_bad_files, test_open_relay_by_listen,
            test_unknown_user_check, test_listen_host_name,
            test_relay_policy_and_queue_path, test_no_trust_anchor,
            test_good_file_check,
            test_port_in_use])
