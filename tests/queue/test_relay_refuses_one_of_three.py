#!/usr/bin/env python3
"""The next hop refuses one recipient of three (issue 10, "Must show" 2).

The next hop is a private Postfix instance (tests/queue/qtest.py
Postfix): its smtpd on a loopback port takes alice@ and bob@example.org
and sender@example.net into Maildirs and refuses nobody@example.org with
its own "550 5.1.1 ... User unknown in virtual mailbox table". tern
relays everything to it through the queue, so the bounce to
sender@example.net goes the same way and lands in sender's Maildir.

1. RET=HDRS, ENVID, ORCPT, NOTIFY=FAILURE: the client gets 250 (queued)
   for the three; alice and bob get the message once each; sender gets
   one bounce that Python's email package parses as multipart/report;
   report-type=delivery-status, with Original-Envelope-Id, and for
   nobody alone: Final-Recipient, Original-Recipient (the ORCPT),
   Action: failed, Status 5.1.1, Remote-MTA, Diagnostic-Code holding
   Postfix's 550 reply; the third part is text/rfc822-headers (the
   headers, not the body).
2. RET=FULL: the third part is message/rfc822, the whole message.
3. NOTIFY=NEVER on nobody: no bounce (checked once tern's queue and
   Postfix's are empty).
4. The null sender: alice gets it, nobody fails, no bounce is sent and a
   log line about the message (id=ID) says so; with no postmaster set
   the message is kept in the queue (held) for the postmaster.
"""

import email
import email.policy
import random
import re
import smtplib

import qtest as h

ALICE, BOB, NOBODY = ("alice@example.org", "bob@example.org",
                      "nobody@example.org")
SENDER = "sender@example.net"
QUEUED_RE = re.compile(rb"^2\.0\.0 Ok: queued as ([0-9A-Z]{1,23})$")


def send(port, frm, rcpts, msg, mail_opts=(), rcpt_opts=None):
    """One transaction; every reply must be 250; returns the queue id."""
    with smtplib.SMTP(h.HOST, port, timeout=30) as c:
        c.ehlo("client.example")
        h.check(c.has_extn("dsn"), "tern does not offer DSN")
        code, r = c.mail(frm, list(mail_opts))
        h.check(code == 250, "MAIL: %d %r" % (code, r))
        for t in rcpts:
            code, r = c.rcpt(t, list((rcpt_opts or {}).get(t, ())))
            h.check(code == 250, "RCPT %s: %d %r (the queue takes every "
                    "recipient; the next hop decides later)" % (t, code, r))
        code, r = c.data(msg)
    print("  end of data: %d %r" % (code, r))
    h.check(code == 250, "end of data: %d %r" % (code, r))
    m = QUEUED_RE.match(r)
    h.check(m, "not 'queued as ID': %r" % r)
    return m.group(1).decode()


def parse_bounce(path):
    raw = h.read(path)
    h.check(re.match(rb"Return-Path: <>\r?\n", raw),
            "the bounce's envelope sender is not <>: %r" % raw[:200])
    b = email.message_from_bytes(raw, policy=email.policy.compat32)
    h.check(b.get_content_type() == "multipart/report",
            "bounce Content-Type %r" % b.get_content_type())
    h.check(b.get_param("report-type") == "delivery-status",
            "report-type %r" % b.get_param("report-type"))
    parts = b.get_payload()
    h.check(isinstance(parts, list) and len(parts) == 3,
            "expected 3 parts (text, delivery-status, message), got %r"
            % [p.get_content_type() for p in parts])
    h.check(parts[0].get_content_type() == "text/plain",
            "first part %r" % parts[0].get_content_type())
    h.check(parts[1].get_content_type() == "message/delivery-status",
            "second part %r" % parts[1].get_content_type())
    blocks = parts[1].get_payload()
    h.check(len(blocks) >= 2, "delivery-status: %d blocks" % len(blocks))
    return b, parts, blocks[0], blocks[1:]


def check_report(b, permsg, rcpts, envids, orcpt):
    h.check(b["To"] and SENDER in b["To"], "bounce To: %r" % b["To"])
    print("  bounce: Subject %r; per-message %r" % (b["Subject"],
                                                    permsg.items()))
    h.check(permsg["Reporting-MTA"], "no Reporting-MTA")
    h.check((permsg["Original-Envelope-Id"] or "").strip() in envids,
            "Original-Envelope-Id %r, sent ENVID=%s"
            % (permsg["Original-Envelope-Id"], envids[-1]))
    h.check(len(rcpts) == 1, "the report names %d recipients (only nobody "
            "failed): %r" % (len(rcpts), [r.items() for r in rcpts]))
    r = rcpts[0]
    print("  per-recipient: %r" % r.items())
    fr = re.sub(r"\s+", "", r["Final-Recipient"] or "").lower()
    h.check(fr == "rfc822;" + NOBODY, "Final-Recipient %r"
            % r["Final-Recipient"])
    orr = re.sub(r"\s+", "", r["Original-Recipient"] or "").lower()
    h.check(orr == "rfc822;" + orcpt, "Original-Recipient %r, ORCPT was %s"
            % (r["Original-Recipient"], orcpt))
    h.check((r["Action"] or "").strip().lower() == "failed",
            "Action %r" % r["Action"])
    h.check(re.match(r"5\.\d{1,3}\.\d{1,3}$", (r["Status"] or "").strip()),
            "Status %r" % r["Status"])
    h.check((r["Status"] or "").strip() == "5.1.1",
            "Status %r (Postfix said 5.1.1)" % r["Status"])
    h.check(r["Remote-MTA"] and re.match(r"\s*dns\s*;", r["Remote-MTA"],
                                         re.I),
            "Remote-MTA %r" % r["Remote-MTA"])
    dc = re.sub(r"\s+", " ", r["Diagnostic-Code"] or "")
    h.check(re.match(r"\s*smtp\s*;\s*550[ -]5\.1\.1", dc, re.I),
            "Diagnostic-Code %r" % r["Diagnostic-Code"])
    h.check("Recipient address rejected" in dc and "User unknown" in dc,
            "Diagnostic-Code lacks Postfix's reply text: %r" % dc)


def delivered_once(pf, who, msg, before):
    """who's Maildir holds one more file than `before`, the message."""
    for u in who:
        h.wait_for(lambda: len(pf.files(u)) > before[u], 30,
                   "Postfix to deliver to %s" % u)
    for u in who:
        fs = pf.files(u)
        h.check(len(fs) == before[u] + 1, "%s got %d copies"
                % (u, len(fs) - before[u]))
        new = [f for f in fs if f not in before["files"]]
        h.check(len(new) == 1, "%s: new files %r" % (u, new))
        data = h.crlf(h.read(new[0]))  # virtual(8) stores LF line ends
        h.check(data.endswith(msg), "%s's copy does not end with the "
                "message as sent" % u)


def counts(pf):
    c = {u: len(pf.files(u)) for u in (ALICE, BOB, SENDER)}
    c["files"] = set(pf.all_files())
    return c


def new_files(pf, addr, before):
    """The files of addr's Maildir not in `before` (Maildir names do not
    sort by arrival within a second)."""
    return [f for f in pf.files(addr) if f not in before]


def test_refuses_one_of_three():
    rng = random.Random(702)
    with h.Postfix([ALICE, BOB, SENDER]) as pf:
        d = h.tmpdir("tern-queue-refuse-")
        conf = h.queue_conf(d, pf.port)
        with h.Serve(["-c", conf.path], name="refuse") as srv:
            # 1. RET=HDRS
            before = counts(pf)
            m1 = h.make_message("refuse-hdrs@queue.e2e", 8000, rng,
                                frm=SENDER, to=ALICE)
            q1 = send(conf.port, SENDER, [ALICE, NOBODY, BOB], m1,
                      ["RET=HDRS", "ENVID=env-hdrs+2B1"],
                      {NOBODY: ["NOTIFY=FAILURE",
                                "ORCPT=rfc822;orig-nobody@example.org"]})
            delivered_once(pf, [ALICE, BOB], m1, before)
            h.wait_for(lambda: len(pf.files(SENDER)) > before[SENDER], 30,
                       "the bounce in sender's Maildir")
            h.wait_queue_empty(conf, 30)
            pf.wait_idle()
            fs = new_files(pf, SENDER, before["files"])
            h.check(len(fs) == 1, "%d bounces" % len(fs))
            b, parts, permsg, rcpts = parse_bounce(fs[0])
            # ENVID is xtext on the wire: "env-hdrs+2B1" is "env-hdrs+1"
            # (Postfix writes it decoded; the xtext form is fine too)
            check_report(b, permsg, rcpts, ["env-hdrs+1", "env-hdrs+2B1"],
                         "orig-nobody@example.org")
            h.check(parts[2].get_content_type() == "text/rfc822-headers",
                    "RET=HDRS: third part %r" % parts[2].get_content_type())
            hdrs = parts[2].get_payload(decode=True) or b""
            h.check(b"refuse-hdrs@queue.e2e" in hdrs,
                    "the headers part lacks the Message-ID: %r" % hdrs[:500])
            body = m1.split(b"\r\n\r\n", 1)[1]
            h.check(body[:200].strip() not in hdrs,
                    "RET=HDRS but the body is in the bounce")
            h.check(srv.grep("id=" + q1), "no log line with id=" + q1)

            # 2. RET=FULL
            before = counts(pf)
            m2 = h.make_message("refuse-full@queue.e2e", 5000, rng,
                                frm=SENDER, to=ALICE)
            send(conf.port, SENDER, [ALICE, NOBODY, BOB], m2,
                 ["RET=FULL", "ENVID=env-full"],
                 {NOBODY: ["ORCPT=rfc822;nobody@example.org"]})
            delivered_once(pf, [ALICE, BOB], m2, before)
            h.wait_for(lambda: len(pf.files(SENDER)) > before[SENDER], 30,
                       "the RET=FULL bounce in sender's Maildir")
            h.wait_queue_empty(conf, 30)
            pf.wait_idle()
            fs = new_files(pf, SENDER, before["files"])
            h.check(len(fs) == 1, "%d bounces" % len(fs))
            b, parts, permsg, rcpts = parse_bounce(fs[0])
            check_report(b, permsg, rcpts, ["env-full"], NOBODY)
            h.check(parts[2].get_content_type() == "message/rfc822",
                    "RET=FULL: third part %r" % parts[2].get_content_type())
            inner = parts[2].get_payload()[0]
            h.check(inner["Message-ID"] == "<refuse-full@queue.e2e>",
                    "returned message's Message-ID %r" % inner["Message-ID"])
            h.check(h.crlf(inner.as_bytes()).rstrip().endswith(
                m2.rstrip()[-300:]), "RET=FULL: the body is not returned")

            # 3. NOTIFY=NEVER: no bounce
            before = counts(pf)
            m3 = h.make_message("refuse-never@queue.e2e", 3000, rng,
                                frm=SENDER, to=ALICE)
            q3 = send(conf.port, SENDER, [ALICE, NOBODY, BOB], m3, [],
                      {NOBODY: ["NOTIFY=NEVER"]})
            delivered_once(pf, [ALICE, BOB], m3, before)
            h.wait_queue_empty(conf, 30)
            pf.wait_idle()
            h.check(len(pf.files(SENDER)) == before[SENDER],
                    "NOTIFY=NEVER, yet a bounce came")
            print("  NOTIFY=NEVER (%s): no bounce" % q3)

            # 4. the null sender: no bounce, a log line, kept held
            before = counts(pf)
            nfiles = len(pf.all_files())
            m4 = h.make_message("refuse-null@queue.e2e", 2000, rng,
                                frm="mailer-daemon@example.net", to=ALICE)
            q4 = send(conf.port, "", [ALICE, NOBODY], m4)
            delivered_once(pf, [ALICE], m4, before)

            def settled():
                mine = [mm for mm in h.queue_json(conf) if mm["id"] == q4]
                if not mine:
                    return "gone"
                st = {r["addr"]: r["state"] for r in mine[0]["rcpts"]}
                return (st.get(NOBODY) == "failed"
                        and st.get(ALICE) == "delivered") and mine[0]
            got = h.wait_for(settled, 30, "the null-sender message's "
                             "recipients to be settled", interval=0.2)
            print("  null sender %s after failing: %r" % (q4, got))
            lines = [ln for ln in srv.grep("id=" + q4)
                     if re.search(r"null|<>|no bounce|double|postmaster",
                                  ln, re.I)]
            print("  log: %r" % lines)
            h.check(lines, "no log line about %s says a bounce is not sent "
                    "for the null sender; its lines:\n%s"
                    % (q4, "\n".join(srv.grep("id=" + q4))))
            h.check(got != "gone" and got.get("held"),
                    "postmaster is not set, so the failed null-sender "
                    "message must be kept (held) for the postmaster; "
                    "queue: %r" % got)
            pf.wait_idle()
            h.check(len(pf.all_files()) == nfiles + 1,
                    "the null sender's failure sent mail somewhere: %r"
                    % pf.all_files()[nfiles:])
            h.tern_queue(conf, "delete", q4)
            h.wait_queue_empty(conf, 10)
            # once each, all told: alice 4 messages, bob 3, sender 2 bounces
            pf.wait_idle()
            final = {u: len(pf.files(u)) for u in (ALICE, BOB, SENDER)}
            h.check(final == {ALICE: 4, BOB: 3, SENDER: 2},
                    "Maildirs at the end: %r" % final)
        log = pf.log()
        h.check(log.count("<nobody@example.org>: Recipient address "
                          "rejected") >= 4,
                "Postfix's log does not show the 4 refusals")


if __name__ == "__main__":
    h.main([test_refuses_one_of_three])
