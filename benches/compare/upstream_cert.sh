# Sourced by benches/compare/extra.sh and benches/callgrind.sh: a throwaway CA and an ECDSA
# P-256 certificate from it for the TLS mock upstream.
#
#   upstream_cert DIR CN SAN...   # writes DIR/up-ca.crt (trust it), DIR/up.crt, DIR/up.key

upstream_cert() {
  local dir=$1 cn=$2 san="" name
  shift 2
  for name in "$@"; do san+="${san:+,}DNS:$name"; done
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$dir/up-ca.key" \
    -out "$dir/up-ca.crt" -subj "/CN=bench upstream CA" -days 2 2>/dev/null
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$dir/up.key" \
    -out "$dir/up.csr" -subj "/CN=$cn" 2>/dev/null
  printf 'subjectAltName=%s\n' "$san" >"$dir/up.ext"
  openssl x509 -req -in "$dir/up.csr" -CA "$dir/up-ca.crt" -CAkey "$dir/up-ca.key" \
    -CAcreateserial -out "$dir/up.crt" -days 2 -extfile "$dir/up.ext" 2>/dev/null
}
