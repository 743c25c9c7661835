#!/bin/sh
# make-certs.sh DIR — test certificates for the TLS unit and interop tests,
# made with the openssl command (EC P-256 keys: fast). Writes into DIR:
#
#   ca.pem, ca.key           test CA ("tern test CA")
#   server.pem, server.key   CN=localhost, SAN DNS:localhost, IP:127.0.0.1,
#                            IP:::1, signed by the CA; server.pem holds the
#                            chain (server certificate, then the CA)
#   sni.pem, sni.key         CN=mail.example.org, SAN DNS:mail.example.org,
#                            DNS:*.example.net, signed by the CA (chain too)
#   self.pem, self.key       CN=localhost, self-signed, same SANs as server
#   expired.pem, expired.key CN=localhost, signed by the CA, valid only in
#                            January 2020
#
# Idempotent: when DIR already holds a complete set made by this version
# of the script, it does nothing. Quiet unless something fails.
set -eu

if [ $# -ne 1 ]; then
  echo "usage: $0 DIR" >&2
  exit 2
fi
dir=$1
stamp="$dir/.make-certs-v1"

if [ -f "$stamp" ]; then
  exit 0
fi

mkdir -p "$dir"
tmp=$(mktemp -d "${TMPDIR:-/tmp}/tern-certs.XXXXXX")
trap 'rm -rf "$tmp"' EXIT INT TERM

# A config of our own, so the system's openssl.cnf changes nothing.
cat >"$tmp/openssl.cnf" <<'EOF'
[req]
distinguished_name = dn
prompt = no
[dn]
CN = unused
[ca]
default_ca = ca_default
[ca_default]
database = index.txt
new_certs_dir = .
serial = serial
default_md = sha256
policy = policy_any
unique_subject = no
copy_extensions = none
[policy_any]
commonName = supplied
EOF
OPENSSL_CONF="$tmp/openssl.cnf"
export OPENSSL_CONF

cat >"$tmp/ca.ext" <<'EOF'
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
EOF

leaf_ext() { # leaf_ext FILE SAN
  cat >"$1" <<EOF
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
subjectAltName = $2
EOF
}
leaf_ext "$tmp/server.ext" "DNS:localhost, IP:127.0.0.1, IP:::1"
leaf_ext "$tmp/sni.ext" "DNS:mail.example.org, DNS:*.example.net"

key() { # key NAME
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 \
    -out "$tmp/$1.key" 2>"$tmp/err" || { cat "$tmp/err" >&2; exit 1; }
}

run() { # run CMD... — openssl, quiet unless it fails
  "$@" >"$tmp/out" 2>&1 || { cat "$tmp/out" >&2; exit 1; }
}

serial() { echo "0x$(openssl rand -hex 8)"; }

csr() { # csr NAME CN
  key "$1"
  run openssl req -new -key "$tmp/$1.key" -subj "/CN=$2" -out "$tmp/$1.csr"
}

# The CA (self-signed).
csr ca "tern test CA"
run openssl x509 -req -in "$tmp/ca.csr" -signkey "$tmp/ca.key" \
  -days 3650 -sha256 -set_serial "$(serial)" -extfile "$tmp/ca.ext" \
  -out "$tmp/ca.pem"

signed() { # signed NAME CN EXTFILE
  csr "$1" "$2"
  run openssl x509 -req -in "$tmp/$1.csr" -CA "$tmp/ca.pem" \
    -CAkey "$tmp/ca.key" -days 825 -sha256 -set_serial "$(serial)" \
    -extfile "$3" -out "$tmp/$1.leaf"
  cat "$tmp/$1.leaf" "$tmp/ca.pem" >"$tmp/$1.pem"
}
signed server localhost "$tmp/server.ext"
signed sni mail.example.org "$tmp/sni.ext"

# Self-signed (not a CA, so clients that verify must refuse it).
csr self localhost
run openssl x509 -req -in "$tmp/self.csr" -signkey "$tmp/self.key" \
  -days 825 -sha256 -set_serial "$(serial)" -extfile "$tmp/server.ext" \
  -out "$tmp/self.pem"

# Expired: `openssl x509` cannot set dates in the past; `openssl ca` can.
csr expired localhost
: >"$tmp/index.txt"
serial | sed 's/^0x//' >"$tmp/serial"
(cd "$tmp" && run openssl ca -batch -notext -cert ca.pem -keyfile ca.key \
  -startdate 20200101000000Z -enddate 20200131000000Z \
  -extfile server.ext -in expired.csr -out expired.leaf)
cat "$tmp/expired.leaf" "$tmp/ca.pem" >"$tmp/expired.pem"

chmod 600 "$tmp"/*.key
for f in ca server sni self expired; do
  mv -f "$tmp/$f.pem" "$dir/$f.pem"
  mv -f "$tmp/$f.key" "$dir/$f.key"
done
: >"$stamp"
