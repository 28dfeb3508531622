"""Time and peak memory of ``python -m recsys.data prepare`` for each dataset.

    python benchmarks/data_prepare.py     # writes its table into docs/benchmarks.md

Each preparation runs in its own process; peak memory is that process's
maximum resident set size. The synthetic row is the scale case: 10M events.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.recsys_quality import _git, machine, write_section

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- data-prepare:begin -->", "<!-- data-prepare:end -->"
CASES = [
    ("amazon-beauty", []),
    ("ml-100k", []),
    ("ml-1m", []),
    ("ml-1m", ["--set", "ratings=all"]),
    (
        "synthetic",
        ["--set", "num_users=400000", "--set", "num_items=200000", "--set", "mean_length=25"],
    ),
]


def main() -> int:
    env = {**os.environ}
    env.setdefault("GENREC_DATA_DIR", str(ROOT.parent / "shared" / "data"))
    rows = [
        "| dataset | options | users | interactions | wall (s) | peak RSS (MB) |",
        "|---|---|---|---|---|---|",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        for index, (dataset, options) in enumerate(CASES):
            out = Path(tmp) / f"{index}-{dataset}"
            command = [
                sys.executable,
                "-m",
                "recsys.data",
                "prepare",
                dataset,
                "--out",
                str(out),
                *options,
            ]
            started = time.perf_counter()
            # RUSAGE_CHILDREN's max RSS is the largest child so far, so each case is
            # measured by its own small wrapper process that reports its one child.
            wrapper = (
                "import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, "
                "stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL); "
                "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
            )
            result = subprocess.run(
                [sys.executable, "-c", wrapper, *command],
                cwd=ROOT,
                env=env,
                capture_output=True,
                text=True,
                check=True,
            )
            seconds = time.perf_counter() - started
            peak_mb = int(result.stdout.strip()) / 1024
            manifest = json.loads((out / "manifest.json").read_text())
            rows.append(
                f"| {dataset} | {' '.join(options[1::2]) or '-'} | {manifest['num_users']:,} | "
                f"{manifest['num_interactions']:,} | {seconds:.1f} | {peak_mb:.0f} |"
            )
            print(rows[-1], flush=True)
    body = "\n".join(
        [
            "Command: `python benchmarks/data_prepare.py`  ",
            f"Machine: {machine()}  ",
            f"Date: {dt.date.today()}  ",
            f"Commit: {_git('rev-parse', '--short', 'HEAD')}",
            "",
            *rows,
            "",
            "Wall time includes starting Python and verifying the source checksums.",
        ]
    )
    write_section(ROOT / "docs" / "benchmarks.md", body, BEGIN, END)
    print(body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
