"""Rerun the recommender quality table and write it into docs/benchmarks.md.

    python benchmarks/recsys_quality.py                 # every experiment, 2 at a time
    python benchmarks/recsys_quality.py --only beauty-hstu --jobs 1
    python benchmarks/recsys_quality.py --collect-only  # rebuild the table from finished runs

Each experiment is one ``python -m recsys.train`` run (a config plus
overrides) in its own process. Protocol B's first phase (choosing the epoch
count on the second-to-last item) is exactly protocol A's training, so when
the protocol A run of the same config has finished, its selection checkpoint
is copied and resumed instead of trained twice. Test metrics are computed
once, with the epoch chosen on validation.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# name -> (config, protocol); chains run in order (A before B of the same config).
CHAINS = {
    "beauty-hstu": ("configs/recsys/hstu-beauty.yaml", ["A", "B"]),
    "beauty-sasrec": ("configs/recsys/sasrec-beauty.yaml", ["A", "B"]),
}

# Published full-ranking numbers on the same S3-Rec Beauty file: (HR@10, NDCG@10).
PUBLISHED = {
    "A": [
        ("SASRec (BCE), S3-Rec paper", 0.0605, 0.0318),
        ("S3-Rec", 0.0647, 0.0327),
        ("BSARec (best verified)", 0.1008, 0.0611),
    ],
    "B": [
        ("SASRec, sampled softmax (eSASRec paper)", 0.0921, 0.0531),
        ("eSASRec", 0.0928, 0.0523),
        ("HSTU (eSASRec paper)", 0.0788, 0.0439),
    ],
}
TARGETS = {
    ("A", "hstu"): "HR@10 >= 0.080",
    ("A", "sasrec"): "HR@10 >= 0.080",
    ("B", "hstu"): "HR@10 >= 0.0788, NDCG@10 >= 0.0439",
    ("B", "sasrec"): "HR@10 >= 0.090",
}

BEGIN, END = "<!-- recsys-quality:begin -->", "<!-- recsys-quality:end -->"


def run_name(chain: str, protocol: str) -> str:
    return f"{chain}-{protocol}"


def run_chain(chain: str, output_root: Path, threads: int) -> None:
    config, protocols = CHAINS[chain]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    env.setdefault("GENREC_DATA_DIR", str(ROOT.parent / "shared" / "data"))
    output_root.mkdir(parents=True, exist_ok=True)
    for protocol in protocols:
        name = run_name(chain, protocol)
        run_dir = output_root / name
        first = run_name(chain, protocols[0])
        if protocol != protocols[0] and (output_root / first / "metrics.json").exists():
            run_dir.mkdir(parents=True, exist_ok=True)
            for part in ("select-last.pt", "select-best.safetensors"):
                if not (run_dir / part).exists():
                    shutil.copy(output_root / first / part, run_dir / part)
        log = output_root / f"{name}.log"
        command = [
            sys.executable,
            "-m",
            "recsys.train",
            config,
            f"name={name}",
            f"output_root={output_root}",
            f"eval.protocol={protocol}",
        ]
        print(f"[bench] {' '.join(command[1:])} > {log}", flush=True)
        with open(log, "w") as handle:
            subprocess.run(
                command, cwd=ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT, check=True
            )
        print(f"[bench] {name} done", flush=True)


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()


def source_commit() -> str:
    """The commit the runs used: this checkout's, or $GENREC_SOURCE_COMMIT for an exported tree."""
    return (
        os.environ.get("GENREC_SOURCE_COMMIT") or _git("rev-parse", "--short", "HEAD") or "unknown"
    )


def dirty_note() -> str:
    if os.environ.get("GENREC_SOURCE_COMMIT"):
        return ""  # an exported tree is exactly that commit
    dirty = _git("status", "--porcelain", "--", "recsys", "kernels", "configs")
    return " (with uncommitted changes)" if dirty else ""


def machine() -> str:
    cores = os.cpu_count()
    try:
        import torch

        gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
        version = torch.__version__
    except ImportError:
        gpu, version = "?", "?"
    return f"{platform.machine()}, {cores} cores, {gpu}, torch {version}"


def table(output_root: Path) -> str:
    lines = [
        "| dataset | protocol | model | HR@10 | NDCG@10 | HR@50 | NDCG@50 | HR@200 | NDCG@200 | MRR | "
        "best epoch | users | wall (s) | target |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for chain, (_, protocols) in CHAINS.items():
        for protocol in protocols:
            path = output_root / run_name(chain, protocol) / "metrics.json"
            if not path.exists():
                continue
            m = json.loads(path.read_text())
            t = m["test"]
            lines.append(
                f"| {m['dataset']} | {protocol} | {m['model']} | {t['hr@10']:.4f} | {t['ndcg@10']:.4f} | "
                f"{t['hr@50']:.4f} | {t['ndcg@50']:.4f} | {t['hr@200']:.4f} | {t['ndcg@200']:.4f} | "
                f"{t['mrr']:.4f} | {m['best_epoch']} | {t['num_users']} | {m['wall_seconds']} | "
                f"{TARGETS.get((protocol, m['model']), '')} |"
            )
    lines += ["", "Published on the same file (HR@10 / NDCG@10):", ""]
    for protocol, rows in PUBLISHED.items():
        lines.append(
            f"- protocol {protocol}: " + "; ".join(f"{n} {h:.4f} / {d:.4f}" for n, h, d in rows)
        )
    return "\n".join(lines)


def write_section(doc: Path, body: str, begin: str = BEGIN, end: str = END) -> None:
    """Replace the text between the two markers (or append the section)."""
    text = doc.read_text() if doc.exists() else "# Benchmarks\n"
    section = f"{begin}\n{body}\n{end}"
    if begin in text:
        head, rest = text.split(begin, 1)
        text = head + section + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    doc.write_text(text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", choices=sorted(CHAINS), help="experiments to run")
    parser.add_argument(
        "--jobs", type=int, default=2, help="experiments in parallel (1 thread each if > 1)"
    )
    parser.add_argument("--output-root", type=Path, default=ROOT / "runs" / "bench")
    parser.add_argument("--doc", type=Path, default=ROOT / "docs" / "benchmarks.md")
    parser.add_argument("--collect-only", action="store_true", help="only rebuild the table")
    args = parser.parse_args()
    chains = args.only or list(CHAINS)
    if not args.collect_only:
        threads = 1 if args.jobs > 1 else (os.cpu_count() or 1)
        with ThreadPoolExecutor(args.jobs) as pool:
            for future in [pool.submit(run_chain, c, args.output_root, threads) for c in chains]:
                future.result()
    header = (
        f"Command: `python benchmarks/recsys_quality.py{' --only ' + ' '.join(args.only) if args.only else ''}`  \n"
        f"Machine: {machine()}  \nDate: {dt.date.today()}  \nCommit: {source_commit()}"
        f"{dirty_note()}\n"
    )
    body = header + "\n" + table(args.output_root)
    print(body)
    write_section(args.doc, body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
