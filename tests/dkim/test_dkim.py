#!/usr/bin/python3
"""DKIM signing (tern/dkim.h) checked by an implementation nobody here
wrote: messages signed through dkim_sign_helper with an RSA 2048 and an
Ed25519 key (made by openssl) are verified by dkimpy, the public keys
served by the DNS function dkimpy takes (no DNS involved).

    test_dkim.py PATH/TO/dkim_sign_helper
"""
import base64
import os
import re
import subprocess
import sys
import tempfile
import traceback

import dkim  # python3-dkim (dkimpy); python3-nacl for Ed25519

HELPER = sys.argv[1]
TMP = tempfile.mkdtemp(prefix="tern-dkim-")


def sh(*args, data=None):
    return subprocess.run(args, input=data, capture_output=True, check=True).stdout


def make_keys():
    keys = {}
    rsa = os.path.join(TMP, "rsa.pem")
    sh("openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt",
       "rsa_keygen_bits:2048", "-out", rsa)
    der = sh("openssl", "pkey", "-in", rsa, "-pubout", "-outform", "DER")
    keys["rsa"] = (rsa, b"v=DKIM1; k=rsa; p=" + base64.b64encode(der))
    ed = os.path.join(TMP, "ed.pem")
    sh("openssl", "genpkey", "-algorithm", "ed25519", "-out", ed)
    der = sh("openssl", "pkey", "-in", ed, "-pubout", "-outform", "DER")
    keys["ed"] = (ed, b"v=DKIM1; k=ed25519; p=" + base64.b64encode(der[-32:]))
    small = os.path.join(TMP, "rsa512.pem")
    sh("openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt",
       "rsa_keygen_bits:512", "-out", small)
    keys["rsa512"] = (small, None)
    ec = os.path.join(TMP, "ec.pem")
    sh("openssl", "genpkey", "-algorithm", "EC", "-pkeyopt",
       "ec_paramgen_curve:P-256", "-out", ec)
    keys["ec"] = (ec, None)
    return keys


KEYS = make_keys()
# selector -> key kind
SELECTORS = {"s1": "rsa", "e1": "ed"}


def dns(name, timeout=5):
    sel = name.decode().split(".")[0]
    return KEYS[SELECTORS[sel]][1] if sel in SELECTORS else None


def sign(msg, *specs, chunk=None, every=False, ok=0):
    args = [HELPER]
    if every:
        args.append("-e")
    elif chunk:
        args += ["-c", str(chunk)]
    args += list(specs)
    p = subprocess.run(args, input=msg, capture_output=True)
    assert p.returncode == ok, (p.returncode, p.stderr)
    return p.stdout, p.stderr.decode()


RSA = "example.org,s1," + KEYS["rsa"][0]
ED = "example.org,e1," + KEYS["ed"][0]

MSG = (b"From: Alice <alice@example.org>\r\n"
       b"To: bob@example.net\r\n"
       b"Subject: a test\r\n"
       b"Date: Thu, 3 Dec 2026 18:00:00 +0000\r\n"
       b"Message-ID: <1@example.org>\r\n"
       b"\r\n"
       b"Hello Bob,\r\n"
       b"  two  spaces   and a trailing one \r\n"
       b"\r\n"
       b"\r\n")


def verify_all(signed, n):
    """Every one of the n signatures verifies."""
    d = dkim.DKIM(signed)
    for i in range(n):
        assert d.verify(idx=i, dnsfunc=dns), ("signature %d fails" % i, signed[:1500])


def verifies(signed, idx):
    """dkimpy's verdict on signature idx (a mismatch may raise)."""
    try:
        return dkim.DKIM(signed).verify(idx=idx, dnsfunc=dns)
    except dkim.ValidationError:
        return False


def check_form(fields, n):
    assert fields.endswith(b"\r\n")
    assert fields.count(b"DKIM-Signature: ") == n, fields
    for line in fields.split(b"\r\n")[:-1]:
        assert len(line) <= 998
        if not re.search(rb"[;\s]h=", line):
            assert len(line) <= 78, line
    assert b"c=relaxed/relaxed" in fields


def case_rsa():
    f, _ = sign(MSG, RSA)
    check_form(f, 1)
    assert b"a=rsa-sha256" in f and b"d=example.org" in f and b"s=s1" in f
    # From over-signed: once more than the message has
    h = re.search(rb"[;\s]h=([^;]*)", f.replace(b"\r\n\t", b" ")).group(1)
    names = [x.strip().lower() for x in h.split(b":")]
    assert names.count(b"from") == 2, names
    assert b"subject" in names and b"to" in names
    verify_all(f + MSG, 1)
    assert dkim.verify(f + MSG, dnsfunc=dns)


def case_ed25519():
    f, _ = sign(MSG, ED)
    check_form(f, 1)
    assert b"a=ed25519-sha256" in f and b"s=e1" in f
    verify_all(f + MSG, 1)


def case_two_keys_two_signatures():
    f, _ = sign(MSG, RSA, ED)
    check_form(f, 2)
    verify_all(f + MSG, 2)


def case_every_split():
    out, _ = sign(MSG, RSA, ED, every=True)
    parts = re.split(rb"=== (\d+)\n", out)[1:]
    assert len(parts) == 2 * len(MSG), len(parts)
    for i in range(0, len(parts), 2):
        f = parts[i + 1]
        check_form(f, 2)
        verify_all(f + MSG, 2)


def case_large_chunked():
    body = b"".join(b"line %06d of a long message, more text here\r\n" % i
                    for i in range(8000))
    msg = MSG.split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n" + body
    f, _ = sign(msg, RSA, ED, chunk=4093)
    verify_all(f + msg, 2)


def case_folded_from():
    msg = (b"from:\r\n \"Alice, (not a comment)\"\r\n\t<alice@EXAMPLE.org.> (x@y)\r\n"
           b"Subject: folded\r\n\r\nbody\r\n")
    f, _ = sign(msg, RSA)
    check_form(f, 1)
    verify_all(f + msg, 1)


def case_no_from_unsigned():
    msg = b"To: bob@example.net\r\nSubject: no from\r\n\r\nbody\r\n"
    f, err = sign(msg, RSA)
    assert f == b"" and "no From field" in err, err


def case_two_from_unsigned():
    msg = (b"From: a@example.org\r\nTo: bob@example.net\r\n"
           b"From: b@example.org\r\n\r\nbody\r\n")
    f, err = sign(msg, RSA)
    assert f == b"" and "several From fields" in err, err


def case_two_mailboxes_unsigned():
    msg = b"From: a@example.org, b@example.org\r\n\r\nbody\r\n"
    f, err = sign(msg, RSA)
    assert f == b"" and "several mailboxes" in err, err


def case_other_domain_unsigned():
    msg = b"From: a@example.com\r\n\r\nbody\r\n"
    f, err = sign(msg, RSA)
    assert f == b"" and "no key for the From domain" in err, err
    # an exact key does not cover a subdomain
    msg = b"From: a@mail.example.org\r\n\r\nbody\r\n"
    f, err = sign(msg, RSA)
    assert f == b"", err


def case_subdomain_key():
    sub = ".example.org,s1," + KEYS["rsa"][0]
    for frm in (b"a@mail.example.org", b"a@x.y.Example.Org", b"a@example.org"):
        msg = b"From: <" + frm + b">\r\nSubject: sub\r\n\r\nbody\r\n"
        f, err = sign(msg, sub)
        assert b"d=example.org;" in f, (frm, err)
        verify_all(f + msg, 1)
    msg = b"From: a@notexample.org\r\n\r\nbody\r\n"
    f, err = sign(msg, sub)
    assert f == b"", err


def case_lf_message_fed_as_crlf():
    lf = (b"From: a@example.org\nTo: b@example.net\nSubject: lf\n\n"
          b"one\ntwo\n\n")
    msg = lf.replace(b"\n", b"\r\n")
    f, _ = sign(msg, RSA, ED, chunk=3)
    verify_all(f + msg, 2)


def case_header_only_message():
    msg = b"From: a@example.org\r\nSubject: no body\r\n"
    f, _ = sign(msg, RSA)
    check_form(f, 1)
    verify_all(f + msg, 1)


EDGE = [
    # white space runs, tabs, trailing white space, space-only lines
    b"From: a@example.org\r\nSubject:  two\t\tspaces  \r\n\r\n"
    b"a  b\t\tc   \r\n   \r\n\t x\r\n \r\n\r\n  \r\n",
    # empty body, and a body of one empty line
    b"From: a@example.org\r\nSubject: e\r\n\r\n",
    b"From: a@example.org\r\nSubject: e\r\n\r\n\r\n",
    # no final CRLF (BDAT may end so). No bare CR or LF: tern's core
    # makes them CRLF before anything signs (decision 0002)
    b"From: a@example.org\r\n\r\nline\r\nlast",
    # repeated fields (a verifier takes them bottom up), an empty value,
    # a folded field with tabs
    b"From: a@example.org\r\nTo: one@example.net\r\nCc:\r\n"
    b"to:two@example.net\r\nSubject: folded\r\n\t  over\r\n"
    b"  lines\r\nX-Other: not signed\r\n\r\nbody\r\n",
    # a long body line, 8-bit text
    b"From: a@example.org\r\nSubject: =?utf-8?q?x?=\r\n\r\n"
    + b"x" * 5000 + b"\r\n\xc3\xa9t\xc3\xa9\r\n",
]


def case_canonicalisation_edges():
    for i, msg in enumerate(EDGE):
        for piece in (1, 3, len(msg)):
            f, err = sign(msg, RSA, ED, chunk=piece)
            assert f, (i, err)
            for idx in range(2):
                assert verifies(f + msg, idx), ("edge case %d, pieces of %d, "
                                                "signature %d" % (i, piece, idx))


def case_custom_headers():
    f, _ = sign(MSG, RSA + ",from:subject", ED + ",subject:to")
    hs = [x.lower() for x in re.findall(rb"[;\s]h=([^;]*)", f)]
    assert hs == [b"from:subject:from", b"from:to:subject:from"], hs
    verify_all(f + MSG, 2)


def case_modified_fails():
    f, _ = sign(MSG, RSA, ED)
    signed = f + MSG
    verify_all(signed, 2)
    bad = signed.replace(b"Hello Bob", b"Hello Bub")
    assert not verifies(bad, 0)
    assert not verifies(bad, 1)
    bad = signed.replace(b"Subject: a test", b"Subject: a tent")
    assert not dkim.verify(bad, dnsfunc=dns)
    # a From added after signing fails too (From is over-signed)
    bad = f + b"From: mallory@example.org\r\n" + MSG
    assert not dkim.verify(bad, dnsfunc=dns)


def case_bad_keys():
    _, err = sign(MSG, "example.org,s1," + KEYS["rsa512"][0], ok=2)
    assert KEYS["rsa512"][0] in err and "1024" in err, err
    _, err = sign(MSG, "example.org,s1," + KEYS["ec"][0], ok=2)
    assert KEYS["ec"][0] in err and "neither" in err, err
    missing = os.path.join(TMP, "missing.pem")
    _, err = sign(MSG, "example.org,s1," + missing, ok=2)
    assert missing in err and "EIO" in err, err
    _, err = sign(MSG, "example.org,s1," + HELPER, ok=2)
    assert HELPER in err, err
    _, err = sign(MSG, "exa mple.org,s1," + KEYS["rsa"][0], ok=2)
    assert "bad DKIM domain" in err, err
    _, err = sign(MSG, RSA + ",from::to", ok=2)
    assert "header list" in err, err


def main(cases):
    passed = failed = 0
    for c in cases:
        try:
            c()
            passed += 1
            print("ok", c.__name__)
        except Exception:
            failed += 1
            print("FAIL", c.__name__)
            traceback.print_exc()
    subprocess.run(["rm", "-rf", TMP])
    print("%d passed, %d failed" % (passed, failed))
    sys.exit(1 if failed else 0)


main([case_rsa, case_ed25519, case_two_keys_two_signatures, case_every_split,
      case_large_chunked, case_folded_from, case_no_from_unsigned,
      case_two_from_unsigned, case_two_mailboxes_unsigned,
      case_other_domain_unsigned, case_subdomain_key,
      case_lf_message_fed_as_crlf, case_header_only_message,
      case_canonicalisation_edges, case_custom_headers, case_modified_fails,
      case_bad_keys])
