#!/bin/sh
# The Debian packages the test suite needs, named once, here. `npm test` runs this first (so does CI, through
# `npm test`): what is installed is left alone; what is missing is installed with apt-get when this runs as
# root on a machine that has it, otherwise one line says what to install and the script exits 1.
#   python3-fastapi python3-uvicorn python3-websockets: the real upstream app and the Python client
#   python3-socketio python3-engineio: a real Socket.IO app (python-socketio under uvicorn) behind the guard
#   chromium: the browser tests (Debian's build; no browser is ever downloaded)
#   nginx-light: /usr/sbin/nginx running nginx.example.conf in front of ws-guard
#   openssl: test certificates
#   redis-server: the cluster-wide limit store (store.redis), started by the tests on ports they pick
# Only shell builtins and dpkg-query, id and apt-get are used (test/setup.test.ts runs it against stand-ins).
PACKAGES="python3-fastapi python3-uvicorn python3-websockets python3-socketio python3-engineio chromium nginx-light openssl redis-server"

if ! command -v dpkg-query >/dev/null 2>&1; then
  echo "ws-guard tests need Debian's packages (dpkg-query not found): $PACKAGES" >&2
  exit 1
fi

missing() {
  out=""
  for p in $PACKAGES; do
    case "$(dpkg-query -W -f='${db:Status-Abbrev}' "$p" 2>/dev/null)" in
      ii*) ;;
      *) out="$out $p" ;;
    esac
  done
  echo "${out# }"
}

need=$(missing)
[ -z "$need" ] && exit 0

if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "ws-guard tests need: apt-get install $need" >&2
  exit 1
fi

echo "ws-guard tests: installing $need" >&2
export DEBIAN_FRONTEND=noninteractive
# $need is a list of package names from $PACKAGES: split on spaces on purpose.
# shellcheck disable=SC2086
apt-get update -q >&2 && apt-get install -y -q --no-install-recommends $need >&2 || {
  echo "ws-guard tests need: apt-get install $need (apt-get failed)" >&2
  exit 1
}

still=$(missing)
if [ -n "$still" ]; then
  echo "ws-guard tests need: apt-get install $still (still missing after apt-get)" >&2
  exit 1
fi
