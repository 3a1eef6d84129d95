#!/usr/bin/env bash
# Starts the admin console locally after scripts/setup.sh (run scripts/demo.sh beside it for a
# processor that delivers what the console sends): http://127.0.0.1:9465, user `admin`.
#
# The first run makes the first admin: a random password in .local/console-admin-password and
# its argon2 hash (`mgpass-webhooks console hash-password`) in .local/console.toml, which is
# config/local.toml plus the console's settings (plain http:// on loopback, so cookies are not
# marked Secure). It creates the audit topic if it is missing (setup-topics), then serves until
# Ctrl-C.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bin="${MGPASS_BIN:-./target/release/mgpass-webhooks}"
[[ -x "$bin" ]] || { echo "run 'bash scripts/setup.sh' first" >&2; exit 1; }
mkdir -p .local
config=.local/console.toml
if [[ ! -s "$config" ]]; then
  umask 077
  password="$(head -c 18 /dev/urandom | od -An -tx1 | tr -d ' \n')"
  printf '%s\n' "$password" >.local/console-admin-password
  hash="$(printf '%s\n' "$password" | "$bin" console hash-password)"
  {
    cat config/local.toml
    printf '\n[console]\nlisten = "127.0.0.1:9465"\nauth = "accounts"\ncookie_secure = false\n'
    printf '\n[[console.accounts]]\nusername = "admin"\npassword_hash = "%s"\nrole = "admin"\n' "$hash"
  } >"$config"
  echo "first admin: user admin, password in .local/console-admin-password"
fi
"$bin" --config "$config" setup-topics >/dev/null
echo "console: http://127.0.0.1:9465  (user admin, password: $(cat .local/console-admin-password 2>/dev/null || echo 'see .local/console.toml'))"
exec "$bin" --config "$config" console
