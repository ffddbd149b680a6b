#!/usr/bin/env bash
# Install the Debian packages the test suite needs, if they are missing.
# Runs as root in CI; for other users it only reports what is missing.
set -euo pipefail
packages=(
  chromium                  # the JupyterLab end-to-end check (tests/test_browser.py)
  postgresql                # a real PostgreSQL server (15 on Debian 12): bgwlab.pg, tests/test_pg*.py
  postgresql-server-dev-15  # PGXS, to build bgwlab.pg's probe extension at run time
  make gcc                  # ... which PGXS drives
  shellcheck                # binder/postBuild linted (tests/test_environments.py)
)
missing=()
for p in "${packages[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
  echo "system-deps: missing Debian packages: ${missing[*]} (install them as root)" >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}"
