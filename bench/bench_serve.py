"""Load on `eai serve` over loopback: N explain requests, C at a time, from a pool of clips.

Starts `eai serve --model RUN` on a free loopback port (as a child process, so that its memory is its own),
waits for /api/health, sends --warmup requests one at a time (the reference), then every clip once at
--concurrency (warm-up: the allocator's arenas and the caches reach their size), then --requests POSTs of /api/explain (multipart file,
clips cycled from --data or the Bandai folder) from --concurrency client threads. Reports per-request
latency (median, p95, max; seconds from sending the upload to the whole response), errors (any status
but 200, warm-up included), throughput, and the server's resident memory (VmRSS) after loading, after the
warm-up, every --sample-every requests and after the load. The model serves one request at a time (a lock), so latency under load is about
concurrency x the time of one explanation; the reference in the same run is that single-request time.
    python bench/bench_serve.py --model runs/demo [--data DIR] [--requests 200] [--concurrency 4] [--json OUT]
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", help="folder of clips (default ../shared/data/bandai-namco-1/data)")
    ap.add_argument("--clips", type=int, default=20, help="distinct clips cycled through")
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--warmup", type=int, default=4)
    ap.add_argument("--sample-every", type=int, default=40, help="requests between two memory samples")
    ap.add_argument("--json")
    args = ap.parse_args()
    data = Path(args.data) if args.data else Path(__file__).resolve().parents[2] / "shared/data/bandai-namco-1/data"
    files = sorted(p for p in data.rglob("*") if p.suffix.lower() in (".bvh", ".csv", ".npz"))[:args.clips]
    if not files:
        sys.exit(f"no clips under {data}: pass --data")
    blobs = [(f.name, f.read_bytes()) for f in files]
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, "-m", "eai.cli", "serve", "--model", args.model, "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        t0 = time.perf_counter()
        while True:
            try:
                if httpx.get(base + "/api/health").status_code == 200:
                    break
            except httpx.TransportError:
                if proc.poll() is not None or time.perf_counter() - t0 > 300:
                    sys.exit("eai serve did not start")
                time.sleep(0.5)
        load_s = time.perf_counter() - t0
        rss = {"loaded": rss_mb(proc.pid)}
        client = httpx.Client(timeout=300)

        def one(i: int) -> tuple[float, int]:
            name, blob = blobs[i % len(blobs)]
            t = time.perf_counter()
            r = client.post(base + "/api/explain", files={"file": (name, blob)})
            return time.perf_counter() - t, r.status_code

        single = [one(i)[0] for i in range(args.warmup)]  # one at a time: the reference
        with ThreadPoolExecutor(args.concurrency) as pool:
            warm = list(pool.map(one, range(len(blobs))))  # every clip once, as concurrently as the load
            rss["after_warmup"] = rss_mb(proc.pid)
            t, got, trace = time.perf_counter(), [], []
            for a in range(0, args.requests, args.sample_every):  # memory sampled between chunks
                got += list(pool.map(one, range(a, min(args.requests, a + args.sample_every))))
                trace.append([len(got), round(rss_mb(proc.pid))])
        wall = time.perf_counter() - t
        rss["after_load"] = rss_mb(proc.pid)
        rss["trace"] = trace
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    lat = sorted(s for s, _ in got)
    errors = sum(c != 200 for _, c in got + warm)
    out = {"requests": args.requests, "concurrency": args.concurrency, "clips": len(blobs),
           "latency_s": {"median": statistics.median(lat), "p95": lat[min(len(lat) - 1, int(0.95 * len(lat)))],
                         "max": lat[-1]},
           "single_request_s_median": statistics.median(single), "errors": errors,
           "throughput_per_s": args.requests / wall, "server_start_s": load_s, "server_rss_mb": rss,
           "rss_change_after_warmup": rss["after_load"] / rss["after_warmup"] - 1, "cpus": os.cpu_count()}
    print(f"{args.requests} requests, {args.concurrency} at a time, {len(blobs)} clips: latency median "
          f"{out['latency_s']['median']:.3f} s, p95 {out['latency_s']['p95']:.3f} s, max {lat[-1]:.3f} s; errors "
          f"{errors}; {out['throughput_per_s']:.2f} requests/s; one request alone {out['single_request_s_median']:.3f} s")
    print(f"server RSS: {rss['loaded']:.0f} MB loaded, {rss['after_warmup']:.0f} MB after the warm-up "
          f"({args.warmup + len(blobs)} requests), "
          f"{rss['after_load']:.0f} MB after the load ({100 * out['rss_change_after_warmup']:+.1f} %); after n requests: "
          + ", ".join(f"{n}: {m} MB" for n, m in trace))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
