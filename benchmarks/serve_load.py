"""Load test of the Ray Serve endpoints on loopback: throughput and latency percentiles.

    python benchmarks/serve_load.py                  # trains a demo-size model if needed
    python benchmarks/serve_load.py --model runs/serve-bench --requests 2000 --write

Starts a local Ray and the Serve app (one replica) twice, with dynamic batching
of /recommend (max_batch_size 32) and without (1), and drives POST /recommend
with a bounded number of requests at each fixed concurrency level (asyncio +
httpx, one connection per concurrent client). Histories are real users' from
the generated dataset. Then POST /rank with 64, 256 and 1024 candidates.
Every non-200 answer counts as a failure; zero failures is part of the result.
With --write the table replaces the serve-load section of docs/benchmarks.md.

The client runs on the same machine as the server, so on a small machine it
takes CPU from it: compare rows with each other, not with other machines.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import random
import socket
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.recsys_quality import dirty_note, machine, source_commit, write_section  # noqa: E402

BEGIN, END = "<!-- serve-load:begin -->", "<!-- serve-load:end -->"
BENCH_OVERRIDES = ["model.ranking_head=true", "train.epochs=2", "train.patience=null"]


def ensure_model(folder: Path) -> Path:
    """The demo config's model (20k users, 5k items, d=64), trained briefly if not there yet."""
    if (folder / "model.safetensors").exists():
        return folder
    from recsys.config import load_config
    from recsys.experiment import ExperimentConfig
    from recsys.train import run

    overrides = [*BENCH_OVERRIDES, f"name={folder.name}", f"output_root={folder.parent}"]
    run(load_config(ExperimentConfig, ROOT / "configs/recsys/demo.yaml", overrides))
    return folder


def histories(folder: Path, count: int, seed: int = 0, min_length: int = 1) -> list[list[int]]:
    """``count`` random users' most recent max_len items (only users with >= min_length)."""
    from recsys.config import load_config
    from recsys.data import load_sequences
    from recsys.experiment import ExperimentConfig

    config = load_config(ExperimentConfig, folder / "config.yaml")
    data_dir = config.data.prepared_dir or Path(config.output_root) / "data" / config.data.dataset
    data = load_sequences(data_dir)
    rng = random.Random(seed)
    values, offsets = data.item_ids.values, data.item_ids.offsets
    lengths = np.diff(offsets)
    eligible = np.flatnonzero(lengths >= min_length).tolist()
    if not eligible:
        raise SystemExit(f"no user in {data_dir} has {min_length} or more items")
    rows = [rng.choice(eligible) for _ in range(count)]
    # Each user's most recent max_len items: what the model reads.
    return [
        values[max(offsets[r], offsets[r + 1] - config.data.max_len) : offsets[r + 1]].tolist()
        for r in rows
    ]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


async def drive(url: str, bodies: list[dict], concurrency: int) -> dict:
    """Send every body once with ``concurrency`` clients; latency per request in ms."""
    import httpx

    latencies: list[float] = []
    failures = 0
    queue = iter(bodies)

    async def client():
        nonlocal failures
        async with httpx.AsyncClient(timeout=60) as http:
            for body in queue:  # a shared iterator: each body is sent by exactly one client
                started = time.perf_counter()
                try:
                    response = await http.post(url, json=body)
                    ok = response.status_code == 200
                except httpx.HTTPError:
                    ok = False
                latencies.append((time.perf_counter() - started) * 1e3)
                failures += not ok

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    wall = time.perf_counter() - started
    cuts = statistics.quantiles(latencies, n=100)
    return {
        "requests": len(bodies),
        "failed": failures,
        "throughput": len(bodies) / wall,
        "p50": cuts[49],
        "p95": cuts[94],
        "p99": cuts[98],
    }


def deploy(model: Path, max_batch_size: int, port: int) -> str:
    from ray import serve

    from serving.app import RecommenderService, ServiceArgs

    args = ServiceArgs(model=str(model), max_batch_size=max_batch_size).model_dump()
    serve.run(RecommenderService.bind(args), name="bench", route_prefix="/")
    return f"http://127.0.0.1:{port}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=ROOT / "runs" / "serve-bench")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--rank-requests", type=int, default=200)
    parser.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    args = parser.parse_args()

    import ray
    from ray import serve

    model = ensure_model(args.model.resolve())
    users = histories(model, args.requests)
    num_items = max(max(h) for h in users)
    ray.init(address="local", include_dashboard=False, log_to_driver=False)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    rows = []
    for label, batch in (("on (32)", 32), ("off", 1)):
        base = deploy(model, batch, port)
        warm = [{"history": h, "k": 10} for h in users[:100]]
        asyncio.run(drive(f"{base}/recommend", warm, 8))
        for concurrency in args.concurrency:
            bodies = [{"history": h, "k": 10} for h in users]
            result = asyncio.run(drive(f"{base}/recommend", bodies, concurrency))
            rows.append(("/recommend", label, concurrency, result))
            print(rows[-1], flush=True)
    for candidates in (64, 256, 1024):
        rng = random.Random(candidates)
        bodies = [
            {
                "history": h,
                "candidates": [rng.randrange(1, num_items + 1) for _ in range(candidates)],
            }
            for h in users[: args.rank_requests]
        ]
        result = asyncio.run(drive(f"{base}/rank", bodies, 1))
        rows.append((f"/rank, {candidates} candidates", "n/a", 1, result))
        print(rows[-1], flush=True)
    serve.shutdown()
    ray.shutdown()

    lines = [
        "| route | dynamic batching | concurrency | requests | failed | throughput (req/s) | "
        "p50 (ms) | p95 (ms) | p99 (ms) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for route, label, concurrency, r in rows:
        lines.append(
            f"| {route} | {label} | {concurrency} | {r['requests']} | {r['failed']} | "
            f"{r['throughput']:.0f} | {r['p50']:.1f} | {r['p95']:.1f} | {r['p99']:.1f} |"
        )
    body = "\n".join(
        [
            f"`python benchmarks/serve_load.py --requests {args.requests}` on "
            f"{dt.date.today().isoformat()}, commit {source_commit()}{dirty_note()}, "
            f"{machine()}; one replica, client on the same machine.",
            "",
            *lines,
        ]
    )
    print(body)
    if args.write:
        write_section(ROOT / "docs" / "benchmarks.md", body, BEGIN, END)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
