#!/bin/sh
# `make bench-uffd`: see bench/uffd.py.
exec python3 "$(dirname "$0")/uffd.py" "$@"
