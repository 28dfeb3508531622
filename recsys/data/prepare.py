"""``prepare_dataset``: raw files (local or downloaded) -> a prepared folder."""

from __future__ import annotations

import datetime as dt
import json
import os
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from .errors import DataError
from .registry import DATASETS
from .schema import SEQUENCES_FILE
from .sources import ResolvedFile, download, resolve_local
from .tables import length_summary
from .writer import PreparedDatasetWriter


def get_spec(name: str):
    try:
        return DATASETS[name]
    except KeyError:
        raise DataError(
            f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}."
        ) from None


def prepare_dataset(
    name: str,
    out_dir: str | Path,
    source: str | Path | None = None,
    *,
    verify: bool = True,
    overwrite: bool = False,
    options: dict | None = None,
) -> dict:
    """Prepare ``name`` into ``out_dir`` and return its manifest.

    ``source`` is a local folder with the raw files. Without it the folder
    ``$GENREC_DATA_DIR/<name>`` is used when that variable is set, and otherwise
    the public copy is downloaded into ``$GENREC_CACHE_DIR`` (``~/.cache/genrec``).
    ``options`` are dataset-specific (``ratings`` for ml-1m, the generator's
    parameters for synthetic).
    """
    spec = get_spec(name)
    options = dict(options or {})
    unknown = sorted(set(options) - set(spec.options))
    if unknown:
        allowed = ", ".join(spec.options) or "none"
        raise DataError(
            f"{name}: unknown option(s) {', '.join(unknown)}; this dataset takes: {allowed}."
        )

    started = time.perf_counter()
    resolved: dict[str, ResolvedFile] = {}
    if spec.source is None:
        if source:
            raise DataError(f"{name} is generated; it takes no --source.")
    else:
        source = source or _shared_data_folder(name)
        if source:
            resolved = resolve_local(spec.source, Path(source), verify)
        else:
            resolved = download(spec.source, name, verify=verify)

    with PreparedDatasetWriter(Path(out_dir), overwrite=overwrite) as writer:
        notes = spec.prepare(
            {raw: found.path for raw, found in resolved.items()}, writer, **options
        )
        stats = _sequence_stats(writer.path(SEQUENCES_FILE))
        manifest = {
            "dataset": name,
            "description": spec.description,
            "licence": spec.licence,
            "options": options,
            "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "sources": {
                raw: {"file": str(found.path.resolve()), "sha256": found.sha256}
                for raw, found in sorted(resolved.items())
            },
            **stats,
            **notes,
        }
        manifest["prepare_seconds"] = round(time.perf_counter() - started, 2)
        return writer.finish(manifest)


def _shared_data_folder(name: str) -> Path | None:
    """``$GENREC_DATA_DIR/<name>`` when that variable is set (tests and CI use it)."""
    root = os.environ.get("GENREC_DATA_DIR")
    if not root:
        return None
    folder = Path(root) / name
    if not folder.is_dir():
        raise DataError(
            f"GENREC_DATA_DIR={root} has no folder {name}/. Put the raw files there, pass --source, "
            "or unset GENREC_DATA_DIR to download the public copy."
        )
    return folder


def _sequence_stats(path: Path) -> dict:
    """Counts straight from the written file, one row group at a time."""
    lengths, max_item, users = [], 0, 0
    for batch in pq.ParquetFile(path).iter_batches(columns=["item_ids"]):
        column = batch.column(0)
        lengths.append(np.diff(column.offsets.to_numpy()))
        values = column.values.to_numpy()
        if len(values):
            if values.min() < 1:
                raise DataError(f"{path}: item ids must be >= 1 (0 is reserved for padding).")
            max_item = max(max_item, int(values.max()))
        users += batch.num_rows
    all_lengths = np.concatenate(lengths) if lengths else np.zeros(0, np.int64)
    return {
        "num_users": users,
        "num_interactions": int(all_lengths.sum()),
        "max_item_id": max_item,
        "sequence_length": length_summary(all_lengths),
    }


def ensure_prepared(
    name: str, out_dir: str | Path, source=None, options: dict | None = None
) -> dict:
    """Reuse ``out_dir`` if it holds ``name`` prepared with the same options, else prepare it."""
    manifest_path = Path(out_dir) / "manifest.json"
    if manifest_path.is_file():
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("dataset") == name and manifest.get("options") == dict(options or {}):
            return manifest
    return prepare_dataset(name, out_dir, source, overwrite=True, options=options)
