#!/usr/bin/env bash
# A cluster CA and one certificate it signs for the coordinator and every worker (server and
# client use: it serves gRPC and calls its peers, and presents itself under --tls-mutual).
#   deploy/tls/make-certs.sh DIR [SAN ...]     SANs like DNS:llmprune (default) or IP:10.0.0.5
# Writes DIR/ca.pem, DIR/ca.key (keep it offline: it signs more nodes), DIR/node.pem and
# DIR/node.key (0600). With one name for the cluster, start every process with
# `--tls-server-name llmprune` so certificates are checked against it, whatever the address.
# CA=NAME reuses DIR/NAME.pem/.key as the CA; NODE=NAME names the node files; DAYS (825).
set -euo pipefail
dir=${1:?usage: make-certs.sh DIR [SAN ...]}
shift
sans=("$@")
[ ${#sans[@]} -gt 0 ] || sans=(DNS:llmprune)
ca=${CA:-ca}
node=${NODE:-node}
days=${DAYS:-825}
mkdir -p "$dir"
cd "$dir"
umask 077
if [ ! -f "$ca.key" ]; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days "$days" \
    -subj "/CN=llmprune cluster CA ($ca)" -keyout "$ca.key" -out "$ca.pem" \
    -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign 2>/dev/null
fi
openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "/CN=$node" -keyout "$node.key" -out "$node.csr" 2>/dev/null
san=$(IFS=,; echo "${sans[*]}")
printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth,clientAuth\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\n' "$san" > "$node.ext"
openssl x509 -req -in "$node.csr" -CA "$ca.pem" -CAkey "$ca.key" -CAcreateserial -days "$days" -extfile "$node.ext" -out "$node.pem" 2>/dev/null
rm -f "$node.csr" "$node.ext" "$ca.srl"
chmod 644 "$ca.pem" "$node.pem"
echo "$dir: $ca.pem, $node.pem, $node.key (SAN $san)"
