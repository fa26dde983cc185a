"""Request-to-image latency of ``distar serve``: one-step model against the reference, on localhost.

    python bench/bench_serve.py [--rounds 30] [--steps 20] [--n 1] [--model PATH --reference PATH]

Starts ``distar serve`` (default: the shapes world's shipped models, one torch thread) on a free
localhost port, then sends a bounded loop of ``POST /generate`` requests (``format: png``), one at a
time, alternating a one-step request and a reference request (``steps`` sampler steps, the server's CFG
ω) on the same prompt and seed. Prints the median and 90th percentile of the client-side time from
sending the request to holding the PNG, the server-side model time it reports, their ratio, and the
server's resident memory after warm-up and after the loop.
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
import urllib.request

PROMPTS = (
    "two small blue squares on a black background",
    "three red circles on a white background",
    "a large green triangle",
    "one yellow diamond in the center",
    "two pink circles on a gray background",
    "a small orange square",
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(port: int, extra: list[str], threads: int) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "distar", "serve", "--port", str(port), "--threads", str(threads), *extra]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=dict(os.environ, OMP_NUM_THREADS=str(threads)))
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"distar serve exited with {proc.returncode}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/info", timeout=5).read()
            return proc
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("distar serve did not answer within 300 s")


def timed_request(url: str, body: dict) -> tuple[float, float]:
    """(client milliseconds from sending to holding the PNG, server-reported model milliseconds)."""
    data = json.dumps(body | {"format": "png"}).encode()
    request = urllib.request.Request(url, data=data, method="POST", headers={"Content-Type": "application/json"})
    start = time.perf_counter()
    with urllib.request.urlopen(request, timeout=600) as response:
        png = response.read()
        server_ms = float(response.headers.get("X-One-Step-Ms") or response.headers["X-Reference-Ms"])
    client_ms = (time.perf_counter() - start) * 1000
    assert png.startswith(b"\x89PNG"), "not a PNG"
    return client_ms, server_ms


def rss_mib(pid: int) -> float:
    """Resident memory of a process (Linux), MiB."""
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:")) / 1024


def summary(values: list[float]) -> str:
    ordered = sorted(values)
    p90 = ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))]
    return f"median {statistics.median(values):8.1f} ms   p90 {p90:8.1f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30, help="timed (one-step, reference) request pairs")
    parser.add_argument("--warmup", type=int, default=3, help="untimed pairs first")
    parser.add_argument("--steps", type=int, default=20, help="reference sampler steps")
    parser.add_argument("--n", type=int, default=1, help="images per request")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the server")
    parser.add_argument("--model", help="passed to distar serve (default: shapes world)")
    parser.add_argument("--reference", help="passed to distar serve")
    args = parser.parse_args()
    extra = [flag for name in ("model", "reference") if getattr(args, name) for flag in (f"--{name}", getattr(args, name))]
    port = free_port()
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    proc = start_server(port, extra, args.threads)
    startup = time.perf_counter() - t0
    url = f"http://127.0.0.1:{port}/generate"
    times: dict[str, list[tuple[float, float]]] = {"one-step": [], "reference": []}
    try:
        for i in range(args.warmup + args.rounds):
            base = {"prompt": PROMPTS[i % len(PROMPTS)], "seed": i, "n": args.n}
            one = timed_request(url, base)
            ref = timed_request(url, base | {"one_step": False, "reference": True, "steps": args.steps})
            if i == max(args.warmup, 1) - 1:  # warmed up
                rss_start = rss_mib(proc.pid)
            if i >= args.warmup:
                times["one-step"].append(one)
                times["reference"].append(ref)
        rss_end = rss_mib(proc.pid)
    finally:
        proc.terminate()
        proc.wait()
    print(f"distar serve {' '.join(extra) or '(shapes world)'}: {args.rounds} rounds, {args.n} image(s) per request, "
          f"{args.threads} torch thread(s), started in {startup:.1f} s")
    print(f"server resident memory after warm-up {rss_start:.0f} MiB, after the loop {rss_end:.0f} MiB")
    print(f"load average before {load_before[0]:.2f}, after {os.getloadavg()[0]:.2f} ({os.cpu_count()} CPUs)")
    for name, pairs in times.items():
        label = name if name == "one-step" else f"reference {args.steps} steps"
        print(f"{label:>20}  request-to-image {summary([c for c, _ in pairs])}   model {summary([s for _, s in pairs])}")
    one = statistics.median(c for c, _ in times["one-step"])
    ref = statistics.median(c for c, _ in times["reference"])
    print(f"reference / one-step median request-to-image: {ref / one:.1f}x")


if __name__ == "__main__":
    main()
