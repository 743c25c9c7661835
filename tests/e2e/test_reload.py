#!/usr/bin/env python3
"""SIGHUP reload: a changed [domains] accept applies to new sessions (a
session already open keeps the rules it started with); the daemon logs
event=reload result=ok. A broken file on SIGHUP keeps the old rules
(event=reload result=failed, naming the file and line), and the daemon
goes on serving. What can change live does (hostname, sizes, limits,
certificates, also from other files); what needs a restart is logged by
key; --check loads certificates and the users file (issue 8, item 24)."""

import os
import re
import signal
import smtplib
import socket

import e2e as h

CONF = """[listener mx]
url = smtp://127.0.0.1:{port}

[domains]
accept = {accept}

[delivery]
maildir = {maildir}
"""


def rcpt_code(port, rcpt):
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as c:
        c.ehlo("reload.client")
        c.mail("s@example.net")
        return c.rcpt(rcpt)[0]


def test_sighup():
    d = h.tmpdir(prefix="tern-e2e-reload-")
    port = h.free_ports(1)[0]
    path = os.path.join(d, "tern.ini")
    md = os.path.join(d, "mail")
    h.write(path, CONF.format(port=port, accept="old.example", maildir=md))
    with h.Serve(["-c", path], name="reload") as srv:
        h.check(rcpt_code(port, "u@old.example") == 250, "old domain before")
        h.check(rcpt_code(port, "u@new.example") in (550, 554),
                "new domain refused before the reload")
        early = smtplib.SMTP("127.0.0.1", port, timeout=10)
        try:
            early.ehlo("early.client")
            h.wait_for(lambda: len(srv.grep("event=connect")) >= 3, 10,
                       "the early session's connect line")
            h.write(path, CONF.format(port=port, accept="new.example",
                                      maildir=md))
            srv.signal(signal.SIGHUP)
            (line,) = srv.wait_log("event=reload")
            h.check("result=ok" in line, "reload: %r" % line)
            h.check(rcpt_code(port, "u@new.example") == 250,
                    "new domain refused after the reload")
            h.check(rcpt_code(port, "u@old.example") in (550, 554),
                    "old domain still accepted by a new session after the "
                    "reload")
            # the session opened before the reload keeps its rules
            early.mail("s@example.net")
            code, msg = early.rcpt("u@old.example")
            h.check(code == 250, "a session from before the reload lost its "
                    "rules: %d %r" % (code, msg))
            code, msg = early.data(b"Subject: early\r\n\r\nkept\r\n")
            h.check(code == 250, "early DATA: %d %r" % (code, msg))
        finally:
            early.close()

        # a broken file keeps the current rules
        h.write(path, CONF.format(port=port, accept="broken.example",
                                  maildir=md) + "[server]\nbogus_key = 1\n")
        srv.signal(signal.SIGHUP)
        lines = srv.wait_log("event=reload", count=2)
        h.check("result=failed" in lines[1], "broken reload: %r" % lines[1])
        h.check("bogus_key" in lines[1] and "tern.ini:" in lines[1],
                "the failed reload does not say why/where: %r" % lines[1])
        h.check(srv.alive(), "the daemon exited on a broken reload")
        h.check(rcpt_code(port, "u@new.example") == 250,
                "rules lost after a failed reload")
        h.check(rcpt_code(port, "u@broken.example") in (550, 554),
                "a broken file was applied")
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as c:
            c.sendmail("s@example.net", ["x@new.example"],
                       b"Subject: after\r\n\r\nok\r\n")
        # and a good file again
        h.write(path, CONF.format(port=port, accept="third.example",
                                  maildir=md))
        srv.signal(signal.SIGHUP)
        lines = srv.wait_log("event=reload", count=3)
        h.check("result=ok" in lines[2], "third reload: %r" % lines[2])
        h.check(rcpt_code(port, "u@third.example") == 250, "third domain")
    h.check(len(h.maildir_files(md)) == 2, "stored: %r" % h.maildir_files(md))


def test_reload_cannot_open_a_relay():
    """Listeners do not change on a reload: a file that moves its
    listener to loopback and drops [domains] must not turn the running
    public listener (here: behind a PROXY header, so not local) into an
    open relay. The reload fails and the old rules stay."""
    d = h.tmpdir(prefix="tern-e2e-reload-relay-")
    port = h.free_ports(1)[0]
    path = os.path.join(d, "tern.ini")
    q = os.path.join(d, "queue")
    h.write(path, "[listener mx]\nurl = smtp://127.0.0.1:%d\n"
            "proxy_protocol = yes\n[domains]\naccept = example.org\n"
            "[delivery]\ntarget = smtp\nurl = smtp://127.0.0.1:9\n"
            "[queue]\ndirectory = %s\n" % (port, q))
    with h.Serve(["-c", path], name="reload-relay") as srv:
        h.write(path, "[listener mx]\nurl = smtp://127.0.0.1:%d\n"
                "[delivery]\ntarget = smtp\nurl = smtp://127.0.0.1:9\n"
                "[queue]\ndirectory = %s\n" % (port, q))
        srv.signal(signal.SIGHUP)
        (line,) = srv.wait_log("event=reload")
        h.check("result=failed" in line and "open relay" in line,
                "reload to an open relay on the running listener: %r" % line)


def test_sighup_keeps_command_line_flags():
    """`tern serve -c FILE --maildir DIR --hostname NAME`: the flags
    override the file, also after SIGHUP."""
    d = h.tmpdir(prefix="tern-e2e-reload-")
    port = h.free_ports(1)[0]
    path = os.path.join(d, "tern.ini")
    file_md = os.path.join(d, "file-mail")
    flag_md = os.path.join(d, "flag-mail")
    h.write(path, CONF.format(port=port, accept="a.example", maildir=file_md)
            + "[server]\nhostname = file.example\n")
    with h.Serve(["-c", path, "--maildir", flag_md, "--hostname",
                  "flag.example"], name="reload-flags") as srv:
        def send(tag):
            with smtplib.SMTP("127.0.0.1", port, timeout=10) as c:
                c.sendmail("s@example.net", ["x@a.example"],
                           b"Subject: " + tag + b"\r\n\r\nbody\r\n")
        send(b"before")
        srv.signal(signal.SIGHUP)
        (line,) = srv.wait_log("event=reload")
        h.check("result=ok" in line, "reload: %r" % line)
        send(b"after")
        where = {}
        for md in (file_md, flag_md):
            for p in h.maildir_files(md):
                trace, rest = h.split_trace(h.read(p), p)
                where[rest.split(b"\r\n")[0]] = (md, trace)
        for tag in (b"Subject: before", b"Subject: after"):
            h.check(tag in where, "%r not stored" % tag)
            md, trace = where[tag]
            h.check(md == flag_md and b"by flag.example" in trace,
                    "%r went to %s with trace %r: the --maildir/--hostname "
                    "flags (%s, flag.example) were lost on SIGHUP"
                    % (tag, md, trace, flag_md))


LIVE = """[server]
hostname = {host}
max_message_size = {size}
max_recipients = {rcpts}

[listener mx]
url = smtp://127.0.0.1:{port}
starttls = yes
{extra}
[tls]
cert = {cert}
key = {key}

[delivery]
maildir = {maildir}
fsync = no
"""


def peer_cn(port):
    """The CN of the certificate the server shows after STARTTLS."""
    import ssl
    ctx = ssl.create_default_context(cafile=h.cert("ca.pem"))
    ctx.check_hostname = False
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as c:
        c.starttls(context=ctx)
        der = c.sock.getpeercert()
        return dict(x[0] for x in der["subject"])["commonName"]


def greeting_and_size(port):
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as c:
        code, banner = c.ehlo("live.client")
        return c.sock and banner.decode(), int(c.esmtp_features["size"])


def send_size(port, n, rcpts=1):
    body = b"Subject: size\r\n\r\n" + (b"x" * 70 + b"\r\n") * (n // 72)
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as c:
        c.ehlo("live.client")
        c.mail("s@example.net")
        for i in range(rcpts):
            code, msg = c.rcpt("r%d@example.org" % i)
            if code != 250:
                return code
        code, msg = c.data(body)
        return code


def test_sighup_applies_live():
    """hostname, max_message_size, max_recipients and certificates (other
    files) apply to new sessions after SIGHUP: result=ok, and the new
    values are what a client sees (issue 8, item 24)."""
    d = h.tmpdir(prefix="tern-e2e-reload-live-")
    (port,) = h.free_ports(1)
    path = os.path.join(d, "tern.ini")
    md = os.path.join(d, "mail")
    conf = dict(host="old.example", size="2K", rcpts=2, port=port,
                cert=h.cert("server.pem"), key=h.cert("server.key"),
                maildir=md, extra="")
    h.write(path, LIVE.format(**conf))
    with h.Serve(["-c", path], name="reload-live") as srv:
        h.check(peer_cn(port) == "localhost", "first certificate")
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as c:
            code, msg = c.ehlo("x")
            h.check(msg.startswith(b"old.example"), "EHLO: %r" % msg)
            h.check(c.esmtp_features["size"] == "2048", c.esmtp_features)
        h.check(send_size(port, 5000) == 552, "5000 octets over 2K")
        h.check(send_size(port, 10, rcpts=3) == 452, "3 rcpts over 2")

        conf.update(host="new.example", size="64K", rcpts=5,
                    cert=h.cert("sni.pem"), key=h.cert("sni.key"))
        h.write(path, LIVE.format(**conf))
        srv.signal(signal.SIGHUP)
        (line,) = srv.wait_log("event=reload")
        h.check("result=ok" in line, "reload: %r" % line)
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as c:
            code, msg = c.ehlo("x")
            h.check(msg.startswith(b"new.example"),
                    "hostname not applied: EHLO %r" % msg)
            h.check(c.esmtp_features["size"] == "65536",
                    "max_message_size not applied: SIZE %r"
                    % c.esmtp_features.get("size"))
        h.check(send_size(port, 5000) == 250, "5000 octets under 64K")
        h.check(send_size(port, 10, rcpts=3) == 250,
                "max_recipients not applied")
        h.check(peer_cn(port) == "mail.example.org",
                "the new certificate file is not used")

        # a missing key file: nothing changes, the failure names the file
        missing = os.path.join(d, "missing.key")
        conf.update(host="third.example", key=missing)
        h.write(path, LIVE.format(**conf))
        srv.signal(signal.SIGHUP)
        lines = srv.wait_log("event=reload", count=2)
        h.check("result=failed" in lines[1] and missing in lines[1],
                "reload with a missing key: %r" % lines[1])
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as c:
            code, msg = c.ehlo("x")
            h.check(msg.startswith(b"new.example"),
                    "a failed reload changed the hostname: %r" % msg)
        h.check(peer_cn(port) == "mail.example.org", "certificate kept")


def test_sighup_restart_needed():
    """What a running server cannot change (a new listener, workers, a
    listener's url) is logged by key (result=partial restart_needed=...);
    the rest applies."""
    d = h.tmpdir(prefix="tern-e2e-reload-restart-")
    port, port2 = h.free_ports(2)
    path = os.path.join(d, "tern.ini")
    md = os.path.join(d, "mail")
    conf = dict(host="a.example", size="2K", rcpts=2, port=port,
                cert=h.cert("server.pem"), key=h.cert("server.key"),
                maildir=md, extra="")
    h.write(path, LIVE.format(**conf))
    with h.Serve(["-c", path], name="reload-restart") as srv:
        conf.update(size="64K", extra="[listener sub]\nurl = smtp://127.0.0.1:"
                    "%d\n" % port2)
        h.write(path, LIVE.format(**conf).replace(
            "[server]\n", "[server]\nworkers = 2\n"))
        srv.signal(signal.SIGHUP)
        (line,) = srv.wait_log("event=reload")
        h.check("result=partial" in line, "reload: %r" % line)
        m = re.search(r"restart_needed=(\S+)", line)
        h.check(m, "no restart_needed= in %r" % line)
        keys = set(m.group(1).strip('"').split(","))
        h.check(keys == {"server.workers", "listener.sub"},
                "restart_needed=%r" % keys)
        h.check(send_size(port, 5000) == 250, "the size still applied")
        with socket.socket() as s:
            h.check(s.connect_ex(("127.0.0.1", port2)) != 0,
                    "a new listener appeared without a restart?")
        # again: still reported against what runs
        srv.signal(signal.SIGHUP)
        lines = srv.wait_log("event=reload", count=2)
        h.check("restart_needed=" in lines[1], lines[1])


def test_check_loads_files():
    """--check loads the certificates and the users file: a missing key
    file or users file fails (EX_CONFIG, 78), naming the file."""
    d = h.tmpdir(prefix="tern-e2e-check-")
    (port,) = h.free_ports(1)
    path = os.path.join(d, "tern.ini")
    md = os.path.join(d, "mail")
    missing = os.path.join(d, "nokey.pem")
    h.write(path, LIVE.format(host="c.example", size="2K", rcpts=2, port=port,
                              cert=h.cert("server.pem"), key=missing,
                              maildir=md, extra=""))
    rc, out, err = h.run_serve(["--check", "-c", path])
    h.check(rc == 78 and missing in err,
            "--check with a missing key file: rc %d, %r" % (rc, err))
    h.write(path, LIVE.format(host="c.example", size="2K", rcpts=2, port=port,
                              cert=h.cert("server.pem"),
                              key=h.cert("server.key"), maildir=md,
                              extra="auth = yes\n")
            + "[auth]\nusers = %s\n" % os.path.join(d, "nousers"))
    rc, out, err = h.run_serve(["--check", "-c", path])
    h.check(rc == 78 and "nousers" in err,
            "--check with a missing users file: rc %d, %r" % (rc, err))
    h.write(path, LIVE.format(host="c.example", size="2K", rcpts=2, port=port,
                              cert=h.cert("server.pem"),
                              key=h.cert("server.key"), maildir=md, extra=""))
    rc, out, err = h.run_serve(["--check", "-c", path])
    h.check(rc == 0 and "configuration OK" in out, "good file: %d %r %r"
            % (rc, out, err))


if __name__ == "__main__":
    h.main([test_sighup, test_reload_cannot_open_a_relay,
            test_sighup_keeps_command_line_flags,
            test_sighup_applies_live, test_sighup_restart_needed,
            test_check_loads_files])
