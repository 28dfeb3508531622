"""Command line: ``python -m recsys.data {list,prepare,info}``.

python -m recsys.data prepare ml-100k --source ../shared/data/ml-100k --out data/ml-100k
python -m recsys.data prepare synthetic --out data/synthetic --set num_users=100000
python -m recsys.data info data/ml-100k
"""

from __future__ import annotations

import argparse
import json
import sys

import yaml

from .errors import DataError
from .prepare import prepare_dataset
from .registry import DATASETS
from .store import load_manifest


def _parse_assignment(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise DataError(f"--set expects key=value, got {text!r}.")
    return key.strip(), yaml.safe_load(value)  # "3" -> 3, "0.5" -> 0.5, "all" -> "all"


def _summary(manifest: dict) -> str:
    lengths = manifest["sequence_length"]
    return (
        f"{manifest['dataset']}: {manifest['num_users']:,} users, {manifest['num_items']:,} items, "
        f"{manifest['num_interactions']:,} interactions; sequence length min {lengths['min']}, "
        f"median {lengths['median']:g}, mean {lengths['mean']:g}, max {lengths['max']}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m recsys.data", description=__doc__.splitlines()[0]
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="the datasets prepare knows")

    prepare = commands.add_parser("prepare", help="raw files -> Parquet folder")
    prepare.add_argument("dataset", help=f"one of: {', '.join(DATASETS)}")
    prepare.add_argument("--out", required=True, help="output folder (created; see --overwrite)")
    prepare.add_argument(
        "--source",
        help="folder with the raw files (plain or .gz). Default: $GENREC_DATA_DIR/<dataset> if set, "
        "else download the public copy",
    )
    prepare.add_argument(
        "--set",
        dest="options",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="dataset option, e.g. ratings=all (ml-1m) or num_users=1000 (synthetic)",
    )
    prepare.add_argument("--no-verify", action="store_true", help="do not compare source checksums")
    prepare.add_argument(
        "--overwrite", action="store_true", help="replace an existing output folder"
    )

    info = commands.add_parser("info", help="print the manifest of a prepared folder")
    info.add_argument("folder")
    info.add_argument("--json", action="store_true", help="the whole manifest as JSON")

    args = parser.parse_args(argv)
    try:
        if args.command == "list":
            for spec in DATASETS.values():
                options = f" [options: {', '.join(spec.options)}]" if spec.options else ""
                print(f"{spec.name:14s} {spec.description}{options}")
        elif args.command == "prepare":
            options = dict(_parse_assignment(text) for text in args.options)
            manifest = prepare_dataset(
                args.dataset,
                args.out,
                args.source,
                verify=not args.no_verify,
                overwrite=args.overwrite,
                options=options,
            )
            print(_summary(manifest))
            print(f"written to {args.out} in {manifest['prepare_seconds']} s")
        else:
            manifest = load_manifest(args.folder)
            print(json.dumps(manifest, indent=2) if args.json else _summary(manifest))
    except DataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
