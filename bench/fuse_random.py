"""fuse_random.py - the random-read part of bench/fuse.sh.

usage: fuse_random.py FILE SOURCE OFFSET...        read 4 KiB at each offset of FILE
       fuse_random.py --http URL SOURCE OFFSET...  ranged GETs on one keep-alive connection
Every read is compared with SOURCE (a wrong byte is an error, not a number).
Prints: total_seconds p50_ms p99_ms
"""
import http.client
import os
import sys
import time
import urllib.parse


def main():
    args = sys.argv[1:]
    use_http = args[0] == "--http"
    if use_http:
        args = args[1:]
    target, source, offsets = args[0], args[1], [int(x) for x in args[2:]]
    src = os.open(source, os.O_RDONLY)
    lat = []
    if use_http:
        u = urllib.parse.urlsplit(target)
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
        read = None
    else:
        fd = os.open(target, os.O_RDONLY)
    t0 = time.perf_counter()
    for off in offsets:
        t = time.perf_counter()
        if use_http:
            conn.request("GET", u.path, headers={"Range": "bytes=%d-%d" % (off, off + 4095)})
            r = conn.getresponse()
            data = r.read()
            if r.status != 206:
                sys.exit("HTTP %d at %d" % (r.status, off))
        else:
            data = os.pread(fd, 4096, off)
        lat.append(time.perf_counter() - t)
        if data != os.pread(src, 4096, off):
            sys.exit("wrong bytes at offset %d" % off)
    total = time.perf_counter() - t0
    if os.environ.get("FUSE_LAT_FILE"):
        # Per-read latencies in read order, for the distribution plot.
        with open(os.environ["FUSE_LAT_FILE"], "w") as f:
            f.write("".join("%.4f\n" % (x * 1000) for x in lat))
    lat.sort()
    p = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] * 1000
    print("%.3f %.2f %.2f" % (total, p(0.50), p(0.99)))


main()
