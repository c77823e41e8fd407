#!/usr/bin/env bash
# Set up (or refresh) what the front-end tests drive ComfyUI's real web page with: headless Chromium + playwright-core.
#
#   /usr/bin/chromium                       Debian's chromium package (apt; the only browser build we may install)
#   .cache/frontend/node_modules/           playwright-core from npm (a library only: it never downloads browsers)
#
# Needs Node.js >= 20 (playwright-core's engines field); Debian's nodejs/npm packages are installed when node is
# missing or too old. Idempotent: a stamp records the hash of this script, so a second run returns at once.
# tests/frontend_harness.py finds the result; scripts/test.sh calls this unless FIRERED_SKIP_COMFYUI=1.
set -euo pipefail
cd "$(dirname "$0")/.."

root=.cache/frontend
playwright_spec=playwright-core@1.65.1
want=$(sha256sum scripts/frontend_env.sh | cut -c1-16)
stamp=$root/.stamp
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x /usr/bin/chromium ] \
        && [ -f "$root/node_modules/playwright-core/package.json" ]; then
    exit 0
fi
start=$(date +%s)
mkdir -p "$root"
rm -f "$stamp"

node_major() { node -e 'process.stdout.write(process.versions.node.split(".")[0])' 2>/dev/null || echo 0; }
apt_packages=()
[ -x /usr/bin/chromium ] || apt_packages+=(chromium)
[ "$(node_major)" -ge 20 ] && command -v npm >/dev/null || apt_packages+=(nodejs npm)
if [ ${#apt_packages[@]} -gt 0 ]; then
    sudo=""
    [ "$(id -u)" = 0 ] || sudo=sudo
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${apt_packages[@]}" >/dev/null
fi
[ "$(node_major)" -ge 20 ] || { echo "frontend_env.sh: Node.js >= 20 is needed, found $(node --version)" >&2; exit 1; }

# playwright-core only: the `playwright` package would try to download its own browser builds
export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1
npm install --silent --no-audit --no-fund --no-save --prefix "$root" --cache "$PWD/.cache/npm" "$playwright_spec"

echo "$want" > "$stamp"
echo "front-end test tools ready ($(( $(date +%s) - start )) s: $(/usr/bin/chromium --version 2>/dev/null | head -1)," \
     "$playwright_spec)" >&2
