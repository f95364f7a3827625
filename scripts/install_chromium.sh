#!/usr/bin/env bash
# Install Debian's chromium for tests/test_book_browser.py when it is missing. apt-get runs as
# root, or through sudo when that is available without a password.
set -euo pipefail
if command -v chromium >/dev/null || [ -x /usr/bin/chromium ]; then
    exit 0
fi
if [ "$(id -u)" -eq 0 ]; then
    run_as_root=()
elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
    run_as_root=(sudo -n)
else
    echo "chromium is missing and apt-get needs root: run 'apt-get install chromium' as root" >&2
    exit 1
fi
"${run_as_root[@]}" apt-get update -qq
DEBIAN_FRONTEND=noninteractive "${run_as_root[@]}" apt-get install -y -qq --no-install-recommends chromium
