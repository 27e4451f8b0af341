"""`python -m bench.serve`: requests/s and p50 / p99 latency of `python -m mf.serve` on loopback.

For /recommend (k=10) and /predict (100 pairs a request), with 1, 8 and 32 concurrent clients, each
over its own keep-alive connection, against the same work called in-process (the Recommender, and
the JSON encoding, without HTTP). The load generator runs in a process of its own (asyncio +
aiohttp); every response is checked for status 200. Beside each figure: the CPU time per request
that the load generator, Serve's HTTP proxy and the replicas spent (from /proc), which says where a
2-core machine's time goes.

    python -m bench.serve                                   # trains a tuned-looking export first (s)
    python -m bench.serve --model runs/mf-tune/best --seconds 10 --json bench-serve.json
    python -m bench.serve --configs haproxy:1 --max-ongoing-requests 16

Target (issue 15): 2 cores, 32 clients, /recommend: >= 300 requests/s with p99 under 100 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench import DEFAULT_DATA

# The README's tuned-looking configuration (seconds to train): what a tuning run exports.
TUNED = ["--emb-dim", "32", "--lr", "0.034", "--l2", "0.135", "--weight-decay", "0.25"]
TUNED += ["--init-range", "0.001", "--epochs", "17"]
PAIRS_PER_REQUEST = 100
TARGET_RPS, TARGET_P99_MS = 300.0, 100.0


# ---------------------------------------------------------------- the load generator (own process)
Request = tuple[str, "bytes | None"]
"""(url, body): a GET where body is None, else a POST of that JSON body."""


async def _load(requests: list[Request], clients: int, seconds: float, warmup: float) -> dict:
    import aiohttp

    latencies: list[float] = []
    errors = 0
    started = time.perf_counter()
    measure_from, stop_at = started + warmup, started + warmup + seconds

    async def client(n: int, session: aiohttp.ClientSession) -> None:
        nonlocal errors
        i = n
        while True:
            url, body = requests[i % len(requests)]
            i += clients
            t0 = time.perf_counter()
            if t0 >= stop_at:
                return
            if body is None:
                resp = await session.get(url)
            else:
                resp = await session.post(url, data=body, headers={"content-type": "application/json"})
            async with resp:
                await resp.read()
                ok = resp.status == 200
            t1 = time.perf_counter()
            if t0 >= measure_from:
                latencies.append(t1 - t0)
                errors += not ok

    connector = aiohttp.TCPConnector(limit=clients, force_close=False)
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(client(n, session) for n in range(clients)))
    return {"latencies": latencies, "errors": errors, "seconds": seconds}


def _load_process(requests: list[Request], clients: int, seconds: float, warmup: float, out: Any) -> None:
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    result = asyncio.run(_load(requests, clients, seconds, warmup))
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    result["client_cpu_s"] = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    out.put(result)


# ---------------------------------------------------------------- where the CPU goes
def serve_processes() -> dict[str, list[int]]:
    """PIDs of Serve's proxy, replicas and controller (Ray names its worker processes ray::<Actor>)."""
    found: dict[str, list[int]] = {"proxy": [], "haproxy": [], "replica": [], "controller": []}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if cmd.startswith("ray::ProxyActor"):
            found["proxy"].append(int(entry.name))
        elif cmd.startswith("ray::ServeReplica"):
            found["replica"].append(int(entry.name))
        elif cmd.startswith("ray::ServeController"):
            found["controller"].append(int(entry.name))
        elif Path(cmd.split(" ", 1)[0]).name == "haproxy":
            found["haproxy"].append(int(entry.name))
    return found


def cpu_seconds(pids: list[int]) -> float:
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / ticks  # utime + stime
    return total


def run_cell(requests: list[Request], clients: int, seconds: float, warmup: float) -> dict:
    """One figure: `clients` concurrent clients for `seconds` (after `warmup`), in a process of its own."""
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = serve_processes()
    proc = ctx.Process(target=_load_process, args=(requests, clients, seconds, warmup, out))
    proc.start()
    time.sleep(warmup + 0.5)  # the child's interpreter start-up and warm-up are not measured
    before = {k: cpu_seconds(v) for k, v in procs.items()}
    result = out.get()
    after = {k: cpu_seconds(v) for k, v in procs.items()}
    proc.join()
    lat = np.array(result["latencies"]) * 1000.0
    n = len(lat)
    row = {
        "clients": clients,
        "requests": n,
        "errors": result["errors"],
        "rps": n / result["seconds"],
        "p50_ms": float(np.percentile(lat, 50)) if n else float("nan"),
        "p99_ms": float(np.percentile(lat, 99)) if n else float("nan"),
    }
    # CPU per request (ms): approximate, the sampling windows differ by the child's start-up.
    row["cpu_ms_per_request"] = {
        "load generator": 1000.0 * result["client_cpu_s"] / max(n, 1),
        **{k: 1000.0 * (after[k] - before[k]) / max(n, 1) for k in procs},
    }
    return row


# ---------------------------------------------------------------- in-process: the same work, no HTTP
def in_process(recommender, user_ids: np.ndarray, bodies: list[bytes], seconds: float) -> dict[str, dict]:
    from mf.serving import parse_pairs

    def timed(call) -> dict:
        lat, stop_at, i = [], time.perf_counter() + seconds, 0
        while (t0 := time.perf_counter()) < stop_at:
            call(i)
            lat.append(time.perf_counter() - t0)
            i += 1
        a = np.array(lat) * 1000.0
        return {
            "clients": 1,
            "requests": len(a),
            "errors": 0,
            "rps": len(a) / seconds,
            "p50_ms": float(np.percentile(a, 50)),
            "p99_ms": float(np.percentile(a, 99)),
        }

    def recommend(i: int) -> None:
        recs = recommender.recommend(int(user_ids[i % len(user_ids)]), 10)
        json.dumps([r.as_dict() for r in recs])

    def predict(i: int) -> None:
        json.dumps(recommender.predict(parse_pairs(json.loads(bodies[i % len(bodies)]))))

    return {"recommend": timed(recommend), "predict": timed(predict)}


# ---------------------------------------------------------------- the whole bench
CONFIGS = "haproxy:1,haproxy:2,proxy:1"
"""ingress:replicas. mf.serve's default (HAProxy, one replica), two replicas (one per core), and
Serve's Python proxy, the ingress the target was first measured with."""


def parse_configs(text: str) -> list[tuple[str, int]]:
    out = []
    for item in text.split(","):
        ingress, _, replicas = item.partition(":")
        out.append((ingress, int(replicas or 1)))
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.serve", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--model", help="export folder; default: train the tuned-looking config into a temp dir"
    )
    parser.add_argument("--data", default=DEFAULT_DATA, help="data for that training (default: %(default)s)")
    parser.add_argument(
        "--configs", default=CONFIGS, help=f"ingress:replicas, comma-separated (default {CONFIGS})"
    )
    parser.add_argument("--clients", default="1,8,32", help="concurrent clients per cell (default 1,8,32)")
    parser.add_argument("--seconds", type=float, default=8.0, help="measured seconds per cell (default 8)")
    parser.add_argument("--warmup", type=float, default=1.5, help="unmeasured seconds before each cell")
    parser.add_argument("--port", type=int, default=8123)
    parser.add_argument(
        "--max-ongoing-requests", type=int, default=None, help="per replica (default: mf.serve's)"
    )
    parser.add_argument("--routes", default="recommend,predict")
    parser.add_argument("--json", type=Path, help="also write the results here")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import ray

    from mf import serve as mf_serve
    from mf import train as mf_train
    from mf.serving import Recommender

    tmp = tempfile.TemporaryDirectory(prefix="bench-serve-")
    model = args.model
    if model is None:
        model = str(Path(tmp.name) / "best")
        print(f"training the tuned-looking config into {model} ...", flush=True)
        assert mf_train.main(["--data", args.data, *TUNED, "--out", model, "--quiet"]) == 0
    recommender = Recommender.from_export(model)
    d = recommender.dataset
    rng = np.random.default_rng(0)
    user_ids = rng.permutation(np.asarray(d.user_ids))
    pair_bodies = [
        json.dumps(
            [
                {"user": int(u), "movie": int(m)}
                for u, m in zip(
                    rng.choice(d.user_ids, PAIRS_PER_REQUEST),
                    rng.choice(d.item_ids, PAIRS_PER_REQUEST),
                    strict=True,
                )
            ]
        ).encode()
        for _ in range(64)
    ]
    clients = [int(c) for c in args.clients.split(",")]
    routes = args.routes.split(",")
    results: dict[str, Any] = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "load_average_at_start": os.getloadavg(),
        },
        "model": model,
        "settings": {k: str(v) for k, v in vars(args).items() if k != "json"},
        "in_process": in_process(recommender, user_ids, pair_bodies, min(args.seconds, 3.0)),
        "http": {},
    }
    for route, r in results["in_process"].items():
        print(
            f"in-process {route}: {r['rps']:.0f} calls/s, p50 {r['p50_ms']:.3f} ms, p99 {r['p99_ms']:.3f} ms"
        )
    extra = {} if args.max_ongoing_requests is None else {"max_ongoing_requests": args.max_ongoing_requests}
    base = f"http://127.0.0.1:{args.port}"
    requests: dict[str, list[Request]] = {
        "recommend": [(f"{base}/recommend/{int(u)}?k=10", None) for u in user_ids],  # every user in turn
        "predict": [(f"{base}/predict", body) for body in pair_bodies],
    }
    # A Ray of its own (never a `ray start` cluster that ray.init() would find), shut down at the end.
    ray.init(address="local", include_dashboard=False, log_to_driver=False)
    for ingress, replicas in parse_configs(args.configs):
        config = f"{ingress}:{replicas}"
        print(f"starting Serve on {base} (ingress {ingress}, {replicas} replica(s)) ...", flush=True)
        # One CPU per replica is what a deployment reserves by default; two replicas share two cores.
        started = mf_serve.start(
            model, port=args.port, replicas=replicas, num_cpus=1 / replicas, ingress=ingress, **extra
        )
        try:
            for route in routes:
                cells = results["http"].setdefault(config, {}).setdefault(route, [])
                for c in clients:
                    cells.append(run_cell(requests[route], c, args.seconds, args.warmup))
                    print(format_row(f"{config} {route}", cells[-1]), flush=True)
        finally:
            mf_serve.stop(started_serve=started)
    ray.shutdown()
    print()
    print(markdown(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    tmp.cleanup()
    return 0


def format_row(label: str, r: dict) -> str:
    cpu = ", ".join(f"{k} {v:.2f}" for k, v in r["cpu_ms_per_request"].items())
    return (
        f"{label:22s} {r['clients']:3d} clients: {r['rps']:7.1f} req/s  p50 {r['p50_ms']:6.2f} ms  "
        f"p99 {r['p99_ms']:6.2f} ms  errors {r['errors']}  (CPU ms/request: {cpu})"
    )


def markdown(results: dict[str, Any]) -> str:
    """The table for bench/README.md: every cell, with the CPU each part spent per request."""
    lines = [
        "| ingress:replicas | route | clients | requests/s | p50 ms | p99 ms | CPU ms/request: "
        "load generator / proxy / HAProxy / replicas |",
        "| --- | --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for config, routes in results["http"].items():
        for route, cells in routes.items():
            for r in cells:
                c = r["cpu_ms_per_request"]
                cpu = " / ".join(f"{c[k]:.2f}" for k in ("load generator", "proxy", "haproxy", "replica"))
                lines.append(
                    f"| {config} | /{route} | {r['clients']} | {r['rps']:.0f} | {r['p50_ms']:.2f} | "
                    f"{r['p99_ms']:.2f} | {cpu} |"
                )
    for route, r in results["in_process"].items():
        lines.append(
            f"| in-process | {route} | 1 | {r['rps']:.0f} | {r['p50_ms']:.3f} | {r['p99_ms']:.3f} | |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
