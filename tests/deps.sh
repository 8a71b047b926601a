#!/bin/sh
# deps.sh - install what the build, the tests and the benches need, only when
# missing (so a second run is quick and needs no network).
set -e
need=""
for p in build-essential pkg-config libfuse3-dev fuse3 liburing-dev libxxhash-dev \
         libcurl4-openssl-dev curl bc clang libclang-rt-14-dev gnuplot-nox util-linux-extra; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need="$need $p"
done
# This kind of machine ships Node.js (with npm) from NodeSource; take Debian's
# only where there is none, since the two conflict.
command -v node >/dev/null 2>&1 || need="$need nodejs"
command -v npm >/dev/null 2>&1 || need="$need npm"
if [ -n "$need" ]; then
	echo "deps: installing Debian packages:$need"
	SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
	$SUDO apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $need >/dev/null
fi
cd "$(dirname "$0")"
if [ ! -x node_modules/.bin/s3rver ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
	echo "deps: installing npm packages from tests/package-lock.json"
	npm ci --no-audit --no-fund --loglevel=error >/dev/null
fi
