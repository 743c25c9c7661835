#!/usr/bin/env python3
"""Scale-out (DESIGN.md §7): two `tern serve` instances (separate
Maildirs, separate ports, listeners with proxy_protocol = yes) behind
HAProxy (mode tcp, balance roundrobin, send-proxy-v2 to both). Postfix
smtp-source sends 10,000 messages of 1 KiB over 20 sessions through
HAProxy: exactly 10,000 files land across both Maildirs, no name twice,
both instances take a share, and their log lines name the client
127.0.0.1 (from the PROXY header). smtp-source cannot pick its source
address, so smtplib bound to 127.0.0.2 sends a few more messages: those
log lines say client=127.0.0.2, not HAProxy's address.

The instances run with fsync = yes (the default, durable): 10,000
messages take about 13 s here, well inside the time limit."""

import os
import re
import smtplib
import subprocess
import time

import e2e as h

N = 10000

CONF = """[server]
hostname = tern{i}.e2e.example
max_connections = 2000

[listener proxied]
url = smtp://127.0.0.1:{port}
proxy_protocol = yes

[domains]
accept = example.org

[delivery]
maildir = {maildir}
"""

HAPROXY = """global
    maxconn 500
defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s
frontend fe
    bind 127.0.0.1:{fport}
    default_backend be
backend be
    balance roundrobin
    server tern1 127.0.0.1:{p1} send-proxy-v2
    server tern2 127.0.0.1:{p2} send-proxy-v2
"""


def test_haproxy_two_instances():
    haproxy = h.require_tool("haproxy", ["/usr/sbin/haproxy"])
    source = h.require_tool("smtp-source", ["/usr/sbin/smtp-source"])
    d = h.tmpdir(prefix="tern-e2e-scale-")
    fport, p1, p2 = h.free_ports(3)
    mds, srvs = [], []
    for i, port in ((1, p1), (2, p2)):
        md = os.path.join(d, "mail%d" % i)
        mds.append(md)
        conf = h.write(os.path.join(d, "tern%d.ini" % i),
                       CONF.format(i=i, port=port, maildir=md))
        srvs.append(h.Serve(["-c", conf], name="tern%d" % i))
    cfg = h.write(os.path.join(d, "haproxy.cfg"),
                  HAPROXY.format(fport=fport, p1=p1, p2=p2))
    h.run([haproxy, "-c", "-f", cfg], timeout=20)
    hap = None
    try:
        for s in srvs:
            s.start()
        hap = h.Child([haproxy, "-f", cfg, "-db"], stdout=subprocess.DEVNULL,
                      stderr=subprocess.DEVNULL).__enter__()
        h.wait_for(lambda: h.listening(fport) or hap.proc.poll() is not None,
                   10, "haproxy to listen on %d" % fport)
        h.check(hap.proc.poll() is None, "haproxy exited: %s"
                % hap.proc.returncode)
        t0 = time.monotonic()
        p = h.run([source, "-s", "20", "-m", str(N), "-l", "1024",
                   "-f", "load@example.net", "-t", "box@example.org",
                   "127.0.0.1:%d" % fport], timeout=240)
        elapsed = time.monotonic() - t0
        err = p.stderr.decode("utf-8", "replace")
        h.check(not err.strip(), "smtp-source complained:\n" + err[-3000:])
        files = [f for md in mds for f in os.listdir(os.path.join(md, "new"))]
        counts = [len(os.listdir(os.path.join(md, "new"))) for md in mds]
        print("smtp-source: %d messages in %.1f s (%.0f/s); per instance %r"
              % (N, elapsed, N / elapsed, counts))
        h.check(len(files) == N, "%d files across both Maildirs, expected %d "
                "(%r)" % (len(files), N, counts))
        h.check(len(set(files)) == N, "file names repeat across Maildirs")
        h.check(all(c > 0 for c in counts),
                "roundrobin left an instance idle: %r" % counts)
        for md in mds:
            h.check(h.maildir_files(md, "tmp") == [], "files in %s/tmp" % md)
        for s in srvs:
            conns = s.grep("event=connect")
            h.check(conns, "%s: no connect lines" % s.name)
            bad = [ln for ln in conns if " client=127.0.0.1 " not in ln]
            h.check(not bad, "%s: connect lines without client=127.0.0.1: %r"
                    % (s.name, bad[:3]))
            msgs = s.grep("event=message")
            h.check(len(msgs) == counts[srvs.index(s)] and
                    all(" status=250 " in ln for ln in msgs),
                    "%s: %d message lines for %d files"
                    % (s.name, len(msgs), counts[srvs.index(s)]))
        # a few clients from 127.0.0.2: the PROXY header carries it
        before = [len(s.grep("event=connect")) for s in srvs]
        for k in range(4):
            with smtplib.SMTP("127.0.0.1", fport, timeout=10,
                              source_address=("127.0.0.2", 0)) as c:
                c.ehlo("far.client")
                c.sendmail("far@example.net", ["box@example.org"],
                           b"Subject: from 127.0.0.2 #%d\r\n\r\nhi\r\n" % k)
        new = []
        for s, b in zip(srvs, before):
            new += s.grep("event=connect")[b:]
        h.check(len(new) == 4, "expected 4 new connect lines: %r" % new)
        for ln in new:
            h.check(" client=127.0.0.2 " in ln,
                    "log shows %r, expected client=127.0.0.2 (not HAProxy's "
                    "address)" % re.search(r"client=\S+", ln).group(0))
        received = []
        for md in mds:
            for path in h.maildir_files(md):
                data = h.read(path)
                if b"Subject: from 127.0.0.2" in data:
                    received.append(data)
        h.check(len(received) == 4 and all(b"[127.0.0.2]" in x.split(
            b"\r\n\r\n")[0] for x in received),
            "Received lines do not name 127.0.0.2")
        for s in srvs:
            s.stop()
    finally:
        if hap is not None:
            hap.__exit__(None, None, None)
        for s in srvs:
            s.cleanup()


if __name__ == "__main__":
    h.main([test_haproxy_two_instances])
