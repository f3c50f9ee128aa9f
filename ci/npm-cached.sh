#!/usr/bin/env bash
# Installs the npm packages of a committed lockfile into a cache outside the repo, once:
#   ci/npm-cached.sh SRC_DIR CACHE_DIR CHECK_PACKAGE
# SRC_DIR holds package.json and package-lock.json (exact versions, integrity hashes); they are
# installed with `npm ci` into CACHE_DIR/node_modules when either file changed since the last
# install or CHECK_PACKAGE (a path under node_modules) is missing. node and npm come from
# Debian (apt) if the machine has none. Used by ci/ton-differential.sh and ci/e2e.sh.
set -euo pipefail
[ $# -eq 3 ] || { echo "usage: $0 SRC_DIR CACHE_DIR CHECK_PACKAGE" >&2; exit 2; }
src=$1 cache=$2 check=$3

if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  echo "npm-cached: installing nodejs and npm (apt)"
  apt-get update -qq && apt-get install -y -qq nodejs npm >/dev/null
fi
mkdir -p "$cache"
if ! cmp -s "$src/package.json" "$cache/package.json" \
  || ! cmp -s "$src/package-lock.json" "$cache/.committed-lock.json" \
  || [ ! -e "$cache/node_modules/$check" ]; then
  echo "npm-cached: installing $src/package-lock.json into $cache (npm ci)"
  cp "$src/package.json" "$src/package-lock.json" "$cache/"
  (cd "$cache" && npm ci --no-audit --no-fund --loglevel=error)
  cp "$src/package-lock.json" "$cache/.committed-lock.json"
fi
