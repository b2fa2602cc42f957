#!/usr/bin/env bash
# Sets up a fresh Debian / Raspberry Pi OS machine for Anju: the Debian packages the hub and its
# tests need (installed with apt when run as root, otherwise the one command to run is printed),
# then a virtual environment in .venv with the project and its test extras.
# Called by `make setup`; `make demo` and `make test` call that first. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v mosquitto >/dev/null 2>&1 || [[ -x /usr/sbin/mosquitto ]] || missing+=(mosquitto)
command -v espeak-ng >/dev/null 2>&1 || missing+=(espeak-ng)
command -v aplay >/dev/null 2>&1 || missing+=(alsa-utils)
command -v dbus-daemon >/dev/null 2>&1 || missing+=(dbus)   # the simulator's private D-Bus (fake bluetoothd)
# The installer's web app: WeasyPrint renders the commissioning report with Pango; a CJK font so
# Chinese never shows as boxes; Debian's Chromium drives the browser tests (Playwright's own
# browser download is never used).
ldconfig -p 2>/dev/null | grep -q libpangoft2-1.0 || missing+=(libpangoft2-1.0-0)
{ command -v fc-list >/dev/null 2>&1 && fc-list :lang=zh family | grep -q .; } || missing+=(fonts-wqy-microhei)
[[ -x /usr/bin/chromium ]] || missing+=(chromium)
[[ -x /usr/bin/chromedriver ]] || missing+=(chromium-driver)
# The centre's PostgreSQL store: its tests start the local server when it is not running.
command -v pg_ctlcluster >/dev/null 2>&1 || missing+=(postgresql)
PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "Anju needs Python 3.11 or newer; $PYTHON is $("$PYTHON" --version 2>&1). Set PYTHON=/path/to/python3.11." >&2
  exit 1
fi
if [[ ! -x .venv/bin/python ]] && ! "$PYTHON" -c 'import ensurepip' 2>/dev/null; then
  missing+=(python3-venv)
fi

if ((${#missing[@]})); then
  if [[ $(id -u) -eq 0 ]]; then
    echo "Installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "Missing Debian packages: ${missing[*]}" >&2
    echo "Run:  sudo apt-get install -y ${missing[*]}   then run make again." >&2
    exit 1
  fi
fi

stamp=.venv/.installed
if [[ ! -f $stamp || pyproject.toml -nt $stamp ]]; then
  [[ -x .venv/bin/python ]] || "$PYTHON" -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e '.[test,fleet]'
  touch "$stamp"
fi
