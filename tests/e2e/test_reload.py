#!/usr/bin/env python3
"""SIGHUP reload: a changed [domains] accept applies to new sessions (a
session already open keeps the rules it started with); the daemon logs
event=reload result=ok. A broken file on SIGHUP keeps the old rules
(event=reload result=failed, naming the file and line), and the daemon
goes on serving."""

import os
import signal
import smtplib

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


if __name__ == "__main__":
    h.main([test_sighup, test_sighup_keeps_command_line_flags])
