#!/usr/bin/env bash
# Make sure an `etcd` binary is available for the cluster tests and the
# failover benchmark: Debian's etcd-server package, installed with apt-get
# when missing (as root, or with sudo if there is one).
set -euo pipefail
if command -v etcd >/dev/null 2>&1 || [ -x /usr/bin/etcd ]; then
  exit 0
fi
SUDO=""
if [ "$(id -u)" != 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo -n"; else
    echo "ensure_etcd: etcd is missing and this user cannot install packages" >&2; exit 1
  fi
fi
echo "ensure_etcd: installing Debian's etcd-server" >&2
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q >/dev/null
$SUDO apt-get install -y -q --no-install-recommends etcd-server >/dev/null
# The package may start a system etcd on the default ports; the tests run
# their own on free ports, so that one is not needed.
if command -v systemctl >/dev/null 2>&1; then $SUDO systemctl stop etcd >/dev/null 2>&1 || true; fi
command -v etcd >/dev/null 2>&1 || [ -x /usr/bin/etcd ]
