#!/usr/bin/env bash
# Put a pinned MathJax 3 into _vendor/mathjax/ (gitignored), so the book typesets its equations
# without network access. _config.yml points Sphinx's mathjax_path at this copy.
# The tarball comes from the npm registry through `npm pack` and must match the registry's
# published sha512 integrity. It is kept in .cache/, so reruns work offline.
set -euo pipefail
cd "$(dirname "$0")/.."

VERSION=3.2.2
# `npm view mathjax@3.2.2 dist.integrity`
INTEGRITY="sha512-Bt+SSVU8eBG27zChVewOicYs7Xsdt40qm4+UpHyX7k0/O9NliPc+x77k1/FEsPsjKPZGJvtRZM1vO+geW0OhGw=="
TARGET=_vendor/mathjax
CACHE=.cache/mathjax
TARBALL="$CACHE/mathjax-$VERSION.tgz"

if [ -f "$TARGET/VERSION" ] && [ "$(cat "$TARGET/VERSION")" = "$VERSION" ]; then
    exit 0
fi

if [ ! -f "$TARBALL" ]; then
    if ! command -v npm >/dev/null; then
        echo "npm not found: install it (bash scripts/install_system_packages.sh) to fetch MathJax $VERSION" >&2
        exit 1
    fi
    mkdir -p "$CACHE"
    (cd "$CACHE" && npm pack "mathjax@$VERSION" --silent >/dev/null)
fi

actual=$(python3 -c 'import base64, hashlib, sys
print("sha512-" + base64.b64encode(hashlib.sha512(open(sys.argv[1], "rb").read()).digest()).decode())' "$TARBALL")
if [ "$actual" != "$INTEGRITY" ]; then
    echo "$TARBALL has integrity $actual, expected $INTEGRITY; delete it and rerun" >&2
    exit 1
fi

# Only what the book uses: the TeX input with CommonHTML output, the fonts, the TeX extensions
# that MathJax loads on demand, and the menu with its assistive MathML (on by default in 3.2).
# The speech rule engine (sre/, 3.9 MB) and the SVG builds stay out.
unpacked=$(mktemp -d)
trap 'rm -rf "$unpacked"' EXIT
tar -xzf "$TARBALL" -C "$unpacked"
staging="$TARGET.partial"
rm -rf "$staging"
mkdir -p "$staging/output"
cp "$unpacked/package/es5/tex-mml-chtml.js" "$unpacked/package/LICENSE" "$staging/"
cp -r "$unpacked/package/es5/input" "$unpacked/package/es5/ui" "$unpacked/package/es5/a11y" "$staging/"
cp -r "$unpacked/package/es5/output/chtml" "$staging/output/"
echo "$VERSION" > "$staging/VERSION"
rm -rf "$TARGET"
mv "$staging" "$TARGET"
echo "MathJax $VERSION copied into $TARGET"
