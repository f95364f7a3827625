#!/usr/bin/env bash
# Install the Debian packages that the tests need beyond Python: chromium for
# tests/test_book_browser.py and npm for scripts/fetch_mathjax.sh. Only missing ones are
# installed. apt-get runs as root, or through sudo when that works without a password.
set -euo pipefail
missing=()
if ! command -v chromium >/dev/null && [ ! -x /usr/bin/chromium ]; then
    missing+=(chromium)
fi
if ! command -v npm >/dev/null; then
    missing+=(npm)
fi
if [ "${#missing[@]}" -eq 0 ]; then
    exit 0
fi
if [ "$(id -u)" -eq 0 ]; then
    run_as_root=()
elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
    run_as_root=(sudo -n)
else
    echo "missing ${missing[*]}, and apt-get needs root: run 'apt-get install ${missing[*]}' as root" >&2
    exit 1
fi
"${run_as_root[@]}" apt-get update -qq
DEBIAN_FRONTEND=noninteractive "${run_as_root[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
