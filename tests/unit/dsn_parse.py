#!/usr/bin/python3
"""dsn_parse.py DSN_SAMPLE — the reports tern_dsn_head()/tern_dsn_tail()
compose (written by tests/unit/dsn_sample.c) read back by Python's email
package, as a mail reader would: multipart/report with report-type, the
delivery-status fields per message and per recipient (RFC 3464), the
original as message/rfc822 or its header as text/rfc822-headers, and the
RFC 6533 types for a UTF-8 message. Every line ends with CRLF and none is
longer than 998 octets (RFC 5322 §2.1.1)."""

import email
import email.policy
import subprocess
import sys

SAMPLE = sys.argv[1]
failures = []


def check(cond, what):
    if not cond:
        failures.append(what)
        print("FAIL:", what)


def compose(kind):
    out = subprocess.run([SAMPLE, kind], capture_output=True, timeout=30)
    if out.returncode != 0:
        raise SystemExit("dsn_sample %s: %s" % (kind, out.stderr.decode()))
    raw = out.stdout
    lines = raw.split(b"\r\n")
    check(lines[-1] == b"", kind + ": ends with CRLF")
    check(all(b"\r" not in l and b"\n" not in l for l in lines),
          kind + ": CRLF line ends only")
    check(all(len(l) <= 998 for l in lines), kind + ": lines <= 998")
    return raw, email.message_from_bytes(raw, policy=email.policy.default)


def status_blocks(part):
    """Per-message block, then one block per recipient."""
    payload = part.get_payload()
    check(isinstance(payload, list), "delivery-status parsed into blocks")
    return payload


def top(msg, kind, report_type="delivery-status"):
    check(msg.get_content_type() == "multipart/report",
          kind + ": multipart/report, got " + msg.get_content_type())
    check(msg.get_param("report-type") == report_type,
          kind + ": report-type " + str(msg.get_param("report-type")))
    check(msg["Auto-Submitted"] == "auto-replied", kind + ": Auto-Submitted")
    check(msg["MIME-Version"] == "1.0", kind + ": MIME-Version")
    check(msg["Message-ID"] == "<dsn-1@mx.example.org>", kind + ": Message-ID")
    check(str(msg["From"]) == "MAILER-DAEMON@mx.example.org", kind + ": From")
    check(msg["Date"].datetime is not None, kind + ": Date parses")
    check(not msg.defects, kind + ": no defects " + repr(msg.defects))
    return list(msg.iter_parts())


# ---- the whole original, three recipients --------------------------------
raw, msg = compose("full")
parts = top(msg, "full")
check(len(parts) == 3, "full: three parts")
check(str(msg["To"]) == "alice@example.org", "full: To is the sender")
check(msg["Subject"] == "Undelivered Mail Returned to Sender",
      "full: default subject")
human = parts[0]
check(human.get_content_type() == "text/plain", "full: text/plain first")
check(human.get_content_charset() == "us-ascii", "full: us-ascii")
text = human.get_content()
check("bob@example.net" in text and "User unknown" in text,
      "full: the human part names the recipient and the diagnostic")
check("Will retry until" in text, "full: the human part says until when")

ds = parts[1]
check(ds.get_content_type() == "message/delivery-status",
      "full: message/delivery-status second")
blocks = status_blocks(ds)
check(len(blocks) == 4, "full: per-message + 3 recipient blocks, got %d"
      % len(blocks))
pm = blocks[0]
check(pm["Reporting-MTA"] == "dns; mx.example.org", "full: Reporting-MTA")
check(pm["Original-Envelope-Id"] == "ENV-42", "full: Original-Envelope-Id")
check(pm["Received-From-MTA"] == "dns; client.example.org",
      "full: Received-From-MTA")
check(pm["Arrival-Date"] == "Tue, 1 Dec 2026 09:00:00 +0000",
      "full: Arrival-Date")
b = blocks[1]
check(b["Final-Recipient"] == "rfc822; bob@example.net", "full: Final-Recipient")
check(b["Original-Recipient"] is None, "full: no ORCPT, no Original-Recipient")
check(b["Action"] == "failed", "full: Action")
check(b["Status"] == "5.1.1", "full: Status")
check(b["Remote-MTA"] == "dns; mx.example.net", "full: Remote-MTA")
check(b["Diagnostic-Code"] ==
      "smtp; 550 5.1.1 <bob@example.net>: Recipient address rejected: "
      "User unknown in virtual mailbox table",
      "full: Diagnostic-Code unfolds to the reply: %r" % b["Diagnostic-Code"])
check(b["Last-Attempt-Date"] == "Tue, 1 Dec 2026 09:59:00 +0000",
      "full: Last-Attempt-Date")
check(b["Will-Retry-Until"] is None, "full: no Will-Retry-Until when failed")
c = blocks[2]
check(c["Original-Recipient"] == "rfc822;Carol@Example.NET",
      "full: Original-Recipient from ORCPT")
check(c["Diagnostic-Code"] ==
      "smtp; 552-5.2.2 The mailbox is full. 552-5.2.2 Please ask carol to "
      "make room 552 5.2.2 and try again later.",
      "full: a multi-line reply joined with spaces: %r" % c["Diagnostic-Code"])
dd = blocks[3]
check(dd["Action"] == "delayed" and dd["Status"] == "4.4.1",
      "full: delayed recipient")
check(dd["Will-Retry-Until"] == "Sun, 6 Dec 2026 09:00:00 +0000",
      "full: Will-Retry-Until")
check(dd["Remote-MTA"] is None, "full: no Remote-MTA when not given")

orig = parts[2]
check(orig.get_content_type() == "message/rfc822", "full: message/rfc822")
inner = orig.get_content()
check(inner["Subject"] == "Lunch on Friday", "full: the original's Subject")
check(inner.get_content().strip() == "Shall we meet at noon?",
      "full: the original's body")
check(b"Shall we meet at noon?\r\n\r\n--tern-dsn=_0123456789--\r\n" in raw,
      "full: the closing delimiter after the original")

# ---- the header only -------------------------------------------------------
raw, msg = compose("hdrs")
parts = top(msg, "hdrs")
check(len(parts) == 3, "hdrs: three parts")
check(parts[2].get_content_type() == "text/rfc822-headers",
      "hdrs: text/rfc822-headers, got " + parts[2].get_content_type())
check("Subject: Lunch on Friday" in parts[2].get_content(),
      "hdrs: the original's header in the third part")
check(b"noon" not in raw, "hdrs: not the body")

# ---- nothing included --------------------------------------------------------
raw, msg = compose("none")
parts = top(msg, "none")
check(len(parts) == 2, "none: two parts")
check(msg["Subject"] == "Successful Mail Delivery Report", "none: subject")
blocks = status_blocks(parts[1])
check(blocks[1]["Action"] == "delivered" and blocks[1]["Status"] == "2.0.0",
      "none: delivered 2.0.0")

# ---- an original without a final CRLF ---------------------------------------
raw, msg = compose("noeol")
parts = top(msg, "noeol")
check(len(parts) == 3, "noeol: three parts")
check(parts[2].get_content()["Subject"] == "Lunch on Friday",
      "noeol: the original's Subject")

# ---- RFC 6533 ----------------------------------------------------------------
raw, msg = compose("utf8")
parts = top(msg, "utf8", "global-delivery-status")
check(len(parts) == 3, "utf8: three parts")
check(parts[0].get_content_charset() == "utf-8", "utf8: human part utf-8")
check("用户@example.net" in parts[0].get_content(),
      "utf8: the human part names the recipient")
check(parts[1].get_content_type() == "message/global-delivery-status",
      "utf8: message/global-delivery-status")
# Python's email package knows message/delivery-status, not its RFC 6533
# sibling (it reads it as one nested message): the blocks are taken from
# the raw part and each parsed as a header.
start = raw.index(b"Content-Type: message/global-delivery-status\r\n")
start = raw.index(b"\r\n\r\n", start) + 4
end = raw.index(b"\r\n--tern-dsn=_0123456789", start)
gblocks = [email.message_from_bytes(blk + b"\r\n", policy=email.policy.default)
           for blk in raw[start:end].split(b"\r\n\r\n")]
check(len(gblocks) == 2, "utf8: two blocks")
check(gblocks[0]["Reporting-MTA"] == "dns; mx.example.org",
      "utf8: Reporting-MTA")
check(gblocks[1]["Final-Recipient"] == "utf-8; 用户@example.net",
      "utf8: utf-8 address type: %r" % gblocks[1]["Final-Recipient"])
check(gblocks[1]["Original-Recipient"] == "utf-8;用户@example.net",
      "utf8: Original-Recipient")
check(gblocks[1]["Diagnostic-Code"] == "smtp; 550 5.1.1 用户: no such user",
      "utf8: Diagnostic-Code")
check(parts[2].get_content_type() == "message/global", "utf8: message/global")
check(b"Subject: Gr\xc3\xbc\xc3\x9fe\r\n" in raw, "utf8: the original as is")

if failures:
    print("%d check(s) failed" % len(failures))
    sys.exit(1)
print("ok")
