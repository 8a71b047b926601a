#!/usr/bin/env python3
"""bench/uffd.py - `make bench-uffd`: thaw's userfaultfd server side by side with
a bare per-page handler and an eager load, in one run.

 (1) 1 GiB image in a file:// store on tmpfs: touch every page sequentially and
     at random; total time and p50/p99 per touch, for the bare handler
     (tests/tools/barehandler: one UFFDIO_COPY of one page per fault), the eager
     load (pread the whole image into fresh memory, then touch: the floor) and
     thaw uffd-serve.
 (2) the same with the image in s3rver (eager = thaw pull + load).
 (3) KVM guest: time from launch to the first guest instruction and to the whole
     image being local, 1 GiB and 4 GiB, against thaw pull + start (Vm/R).
 (4) demand faults and time of a second run with --prefetch of the recorded
     working set, against the same second run without it.
Prints ratios, writes bench/uffd-latency.png, and the numbers in JSON to
build/bench-uffd.json.  BENCH_GIB=1 BENCH_BIG_GIB=4 set the sizes."""
import json, os, shutil, socket, subprocess, sys, tempfile, time

TOP = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD = os.environ.get("BUILD", os.path.join(TOP, "build"))
THAW, FCVM, BARE = BUILD + "/thaw", BUILD + "/tools/fcvm", BUILD + "/tools/barehandler"
# Sizes in MiB (BENCH_MB, BENCH_BIG_MB) for quick runs; GiB by default.
MB = int(os.environ.get("BENCH_MB", str(1024 * int(os.environ.get("BENCH_GIB", "1")))))
BIG_MB = int(os.environ.get("BENCH_BIG_MB", str(1024 * int(os.environ.get("BENCH_BIG_GIB", "4")))))
GIB = MB / 1024
results = {}


def sh(args, **kw):
    return subprocess.run(args, check=True, stdout=subprocess.PIPE, text=True, **kw).stdout


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def wait_file(path, proc, what, timeout=20):
    t = time.time() + timeout
    while not os.path.exists(path):
        if proc.poll() is not None or time.time() > t:
            raise SystemExit(f"bench-uffd: {what} did not start")
        time.sleep(0.005)


def fcvm(args, timeout=600):
    out = subprocess.run([FCVM, "--quiet", "--timeout", str(timeout)] + args, check=True,
                         stdout=subprocess.PIPE, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def thaw_run(tmp, url, vmm_args, extra=(), tag="t"):
    """One resume under thaw uffd-serve; returns (vmm report, server metrics)."""
    sock, ready, metrics = f"{tmp}/{tag}.sock", f"{tmp}/{tag}.ready", f"{tmp}/{tag}.json"
    for p in (ready, metrics):
        if os.path.exists(p):
            os.unlink(p)
    srv = subprocess.Popen([THAW, "uffd-serve", "--socket", sock, "--mem", url, "--metrics", metrics,
                            "--exit-when-done", "--ready-file", ready] + list(extra),
                           stderr=open(f"{tmp}/server.log", "a"))
    wait_file(ready, srv, "uffd-serve")
    v = fcvm(["--socket", sock] + vmm_args)
    srv.wait(timeout=600)
    return v, json.load(open(metrics))["connections"][0]


def bare_run(tmp, image, vmm_args):
    sock, ready = f"{tmp}/bare.sock", f"{tmp}/bare.ready"
    if os.path.exists(ready):
        os.unlink(ready)
    srv = subprocess.Popen([BARE, "--socket", sock, "--image", image, "--ready-file", ready],
                           stderr=subprocess.DEVNULL)
    wait_file(ready, srv, "barehandler")
    v = fcvm(["--socket", sock] + vmm_args)
    srv.wait(timeout=600)
    return v


def row(name, total, p50, p99, ref=None):
    r = f"  {name:<28} {total:9.2f} s  p50 {p50:9.1f} us  p99 {p99:10.1f} us"
    if ref:
        r += f"   {total / ref:6.2f}x eager"
    print(r, flush=True)


def touch_section(tmp, label, url, image, eager_prefix_s=0.0):
    out = {}
    for order in ("seq", "random"):
        args = ["--touch", order, "--check", image]
        e = fcvm(["--no-uffd"] + args)
        eager = e["preload_s"] + e["touch_s"] + eager_prefix_s
        print(f" {order} touch of {GIB:g} GiB ({label}):")
        row("eager load (the floor)", eager, e["lat_us"]["p50"], e["lat_us"]["p99"], eager)
        res = {"eager_s": eager}
        if image and label.startswith("file"):
            b = bare_run(tmp, image, args)
            row("bare per-page handler", b["touch_s"], b["lat_us"]["p50"], b["lat_us"]["p99"], eager)
            res["bare_s"] = b["touch_s"]
            res["bare_hist"] = b["hist_log2_ns"]
        v, m = thaw_run(tmp, url, args)
        row("thaw uffd-serve", v["touch_s"], v["lat_us"]["p50"], v["lat_us"]["p99"], eager)
        res.update(thaw_s=v["touch_s"], thaw_p50=v["lat_us"]["p50"], thaw_p99=v["lat_us"]["p99"],
                   thaw_hist=v["hist_log2_ns"], faults=m["faults"], complete_ms=m["complete_ms"])
        if "bare_s" in res:
            print(f"  thaw / bare handler: {v['touch_s'] / res['bare_s']:.3f}   thaw / eager: "
                  f"{v['touch_s'] / eager:.2f} (target <= 1.5)")
        print(f"  thaw faults: {m['faults']}", flush=True)
        out[order] = res
    return out


def pull_time(url, dest):
    t = time.time()
    sh([THAW, "pull", url, dest])
    return time.time() - t


def main():
    for b in (THAW, FCVM, BARE):
        if not os.access(b, os.X_OK):
            raise SystemExit(f"bench-uffd: {b} missing; run make")
    shm = tempfile.mkdtemp(prefix="thaw-bench-uffd.", dir="/dev/shm")
    disk = tempfile.mkdtemp(prefix="thaw-bench-uffd.", dir="/var/tmp")
    s3 = None
    try:
        size = MB << 20
        image = f"{shm}/vm.mem"
        sh([FCVM, "--make-image", image, "--size", str(size)])
        url = f"file://{shm}/store/vm.mem"
        sh([THAW, "push", image, url])
        print(f"== (1) {GIB:g} GiB image, file:// store on tmpfs", flush=True)
        results["file"] = touch_section(shm, "file:// on tmpfs", url, image)

        print(f"== (2) {GIB:g} GiB image in s3rver", flush=True)
        port = free_port()
        env = dict(os.environ, NODE_OPTIONS="--openssl-legacy-provider")
        s3 = subprocess.Popen([TOP + "/tests/node_modules/.bin/s3rver", "-d", f"{disk}/s3", "-a", "127.0.0.1",
                               "-p", str(port), "-s", "--configure-bucket", "thaw"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.environ.update(AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}", AWS_ACCESS_KEY_ID="S3RVER",
                          AWS_SECRET_ACCESS_KEY="S3RVER", AWS_REGION="us-east-1")
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        s3url = "s3://thaw/vm.mem"
        sh([THAW, "push", image, s3url])
        pull_s = pull_time(s3url, f"{disk}/pulled.mem")
        print(f" thaw pull of the image: {pull_s:.2f} s (eager rows below include it)")
        results["s3"] = touch_section(disk, "s3rver", s3url, image, eager_prefix_s=pull_s)

        print("== (3) KVM guest: launch -> first instruction, and whole image local", flush=True)
        results["kvm"] = {}
        kvm = os.access("/dev/kvm", os.W_OK)
        if not kvm:
            print("  (skipped: no /dev/kvm)")
        for mb in sorted({MB, BIG_MB}) if kvm else []:
            gib = mb / 1024
            img = image if mb == MB else f"{disk}/vm{mb}.mem"
            u = url if mb == MB else f"file://{disk}/store/vm{mb}.mem"
            if mb != MB:
                sh([FCVM, "--make-image", img, "--size", str(mb << 20)])
                sh([THAW, "push", img, u])
            subprocess.run(["sync"])
            ps = pull_time(u, f"{disk}/p{mb}.mem")
            sc = fcvm(["--no-uffd", "--kvm", "--check", f"{disk}/p{mb}.mem"])
            os.unlink(f"{disk}/p{mb}.mem")
            v, m = thaw_run(disk, u, ["--kvm", "--check", img])
            vm_r = ps  # Vm/R with R = Vm / (pull time) measured just now
            lazy_first = v["launch_to_first_insn_us"] / 1e3
            sc_first = ps * 1e3 + sc["launch_to_first_insn_us"] / 1e3
            complete = m["complete_ms"] / 1e3
            print(f"  {gib:g} GiB: first instruction thaw {lazy_first:.1f} ms vs pull+start {sc_first:.0f} ms; "
                  f"whole image local {complete:.2f} s vs Vm/R {vm_r:.2f} s ({complete / vm_r:.2f}x, target <= 1.1)",
                  flush=True)
            results["kvm"][mb] = dict(first_ms=lazy_first, sc_first_ms=sc_first, complete_s=complete, vm_r_s=vm_r,
                                       faults=m["faults"])
            if mb != MB:
                os.unlink(img)

        print("== (4) second resume from s3rver with and without --prefetch (random touch)", flush=True)
        args = ["--touch", "random", "--check", image]
        ws = "s3://thaw/vm.mem.ws"
        thaw_run(disk, s3url, args, ["--record", ws, "--no-push"], tag="rec")
        v0, m0 = thaw_run(disk, s3url, args, ["--no-push"], tag="nop")
        v1, m1 = thaw_run(disk, s3url, args, ["--no-push", "--prefetch", "--prefetch-from", ws], tag="pre")
        v2, m2 = thaw_run(disk, s3url, args, ["--no-push", "--prefetch-wait", "--prefetch-from", ws], tag="prew")
        d0, d1, d2 = m0["faults"]["store"], m1["faults"]["store"], m2["faults"]["store"]
        cut = lambda d: (1 - d / d0) * 100 if d0 else 0
        print(f"  without prefetch:           {d0} faults waited for the store, touch {v0['touch_s']:.2f} s")
        print(f"  --prefetch (streamed):      {d1} faults waited for the store, touch {v1['touch_s']:.2f} s "
              f"({cut(d1):.0f}% fewer demand faults)")
        print(f"  --prefetch-wait (REAP):     {d2} faults waited for the store, touch {v2['touch_s']:.2f} s "
              f"({cut(d2):.0f}% fewer demand faults, target >= 90%)")
        results["prefetch"] = dict(demand_without=d0, demand_with=d1, demand_wait=d2, touch_without=v0["touch_s"],
                                   touch_with=v1["touch_s"], touch_wait=v2["touch_s"])
    finally:
        if s3:
            s3.terminate()
        shutil.rmtree(shm, ignore_errors=True)
        shutil.rmtree(disk, ignore_errors=True)
    os.makedirs(BUILD, exist_ok=True)
    json.dump(results, open(BUILD + "/bench-uffd.json", "w"), indent=1)
    plot()


def plot():
    """Per-touch latency distributions (random touch) as a PNG."""
    series = [("bare handler (file)", results["file"]["random"].get("bare_hist")),
              ("thaw (file:// tmpfs)", results["file"]["random"]["thaw_hist"]),
              ("thaw (s3rver)", results["s3"]["random"]["thaw_hist"])]
    dat = os.path.join(BUILD, "bench-uffd-lat.dat")
    with open(dat, "w") as f:
        for name, h in series:
            f.write(f'"{name}"\n')
            for ns, n in h or []:
                f.write(f"{ns / 1000.0} {n}\n")
            f.write("\n\n")
    png = os.path.join(TOP, "bench", "uffd-latency.png")
    gp = (f"set terminal png size 900,500; set output '{png}'; set logscale x 2; set logscale y;"
          "set xlabel 'time blocked per page touch (us, log2 buckets)'; set ylabel 'touches';"
          f"set title 'Random touch of {GIB:g} GiB: per-touch latency'; set key top right;"
          f"plot for [i=0:2] '{dat}' index i using 1:2 with linespoints title columnheader(1)")
    if shutil.which("gnuplot"):
        subprocess.run(["gnuplot", "-e", gp], check=False)
        print(f"wrote {png}")


if __name__ == "__main__":
    main()
