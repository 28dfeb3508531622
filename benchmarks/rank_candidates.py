"""Candidate ranking, cached (M-FALCON style) vs naive: time per request and agreement.

    python benchmarks/rank_candidates.py [--model runs/serve-bench] [--write]

Cached: the history is encoded once, its per-block keys/values kept, and the
candidates scored in micro-batches of 256 against them (what POST /rank runs).
Naive: each candidate appended alone to the history and the whole sequence
encoded again. Both run on the same histories and candidates, alternating in
rounds so a noisy machine slows both alike; the table gives median
milliseconds per request, their ratio, and the largest score difference.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import random
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.recsys_quality import dirty_note, machine, source_commit, write_section  # noqa: E402
from benchmarks.serve_load import ensure_model, histories  # noqa: E402

BEGIN, END = "<!-- rank-candidates:begin -->", "<!-- rank-candidates:end -->"


def _compare(model, users, count: int, num_items: int):
    """(candidates, cached ms, naive ms, ratio, max abs difference) over ``users``."""
    import torch

    rng = random.Random(count)
    cached_ms, naive_ms, worst = [], [], 0.0
    for history in users:
        ids = torch.tensor(history)
        candidates = torch.tensor([rng.randrange(1, num_items + 1) for _ in range(count)])
        with torch.inference_mode():
            started = time.perf_counter()
            cache = model.history_cache(ids)
            cached = model.score_candidates(cache, candidates, micro_batch=256)
            cached_ms.append((time.perf_counter() - started) * 1e3)
            started = time.perf_counter()
            naive = model.score_candidates_naive(ids, candidates)
            naive_ms.append((time.perf_counter() - started) * 1e3)
        worst = max(worst, float((cached - naive).abs().max()))
    cached_median, naive_median = statistics.median(cached_ms), statistics.median(naive_ms)
    return count, cached_median, naive_median, naive_median / cached_median, worst


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=ROOT / "runs" / "serve-bench")
    parser.add_argument("--requests", type=int, default=10, help="histories per candidate count")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    args = parser.parse_args()

    import torch

    from serving.loading import load_bundle

    torch.set_num_threads(args.threads)
    folder = ensure_model(args.model.resolve())
    bundle = load_bundle(str(folder))
    model, max_len = bundle.model, bundle.config.data.max_len
    num_items = model.item_embeddings.num_item_ids - 1
    groups = {
        "real users": histories(folder, args.requests, seed=1),
        f"{max_len - 1} items": histories(folder, args.requests, seed=2, min_length=max_len - 1),
    }
    rows = []
    for group, users in groups.items():
        users = [h[-(max_len - 1) :] for h in users]  # one slot is the candidate's
        for count in (64, 256, 1024):
            rows.append((group, *_compare(model, users, count, num_items)))
            print(rows[-1], flush=True)

    config = bundle.config.model
    lines = [
        "| histories | candidates | cached (ms) | naive (ms) | naive / cached | max abs score diff |",
        "|---|---|---|---|---|---|",
        *(f"| {g} | {c} | {a:.1f} | {b:.1f} | {r:.1f}x | {d:.1e} |" for g, c, a, b, r, d in rows),
    ]
    body = "\n".join(
        [
            f"`python benchmarks/rank_candidates.py --requests {args.requests}` on "
            f"{dt.date.today().isoformat()}, commit {source_commit()}{dirty_note()}, {machine()}, "
            f"{args.threads} thread(s). Model: {config.family}, d={config.embedding_dim}, "
            f"{config.num_blocks} blocks; histories: random users of the generated dataset "
            f"(mean length ~25), or users with at least {max_len - 1} items (their most "
            "recent ones); median over requests.",
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
