"""Write a prepared dataset so that a folder that looks complete is complete.

Everything goes into a hidden temporary folder next to the target; only when
every file and the manifest are written is it renamed into place. A crash or
an error leaves the old output (if any) untouched and no partial folder.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from .errors import DataError
from .schema import MANIFEST_FILE, SCHEMA_VERSION


class PreparedDatasetWriter:
    """Context manager: ``with PreparedDatasetWriter(out) as w: w.write_table(...)``."""

    def __init__(self, out_dir: Path, overwrite: bool = False):
        self.out_dir = Path(out_dir)
        self.overwrite = overwrite
        self.tmp_dir: Path | None = None
        self.row_counts: dict[str, int] = {}

    def __enter__(self) -> PreparedDatasetWriter:
        if self.out_dir.exists() and not self.overwrite:
            raise DataError(
                f"{self.out_dir} already exists. Pass --overwrite to replace it, or choose another --out."
            )
        self.out_dir.parent.mkdir(parents=True, exist_ok=True)
        self.tmp_dir = Path(
            tempfile.mkdtemp(prefix=f".{self.out_dir.name}.tmp-", dir=self.out_dir.parent)
        )
        umask = os.umask(0)
        os.umask(umask)
        self.tmp_dir.chmod(0o777 & ~umask)  # mkdtemp makes it private; the result should not be
        return self

    def path(self, name: str) -> Path:
        assert self.tmp_dir is not None, "use PreparedDatasetWriter as a context manager"
        return self.tmp_dir / name

    def write_table(self, name: str, table: pa.Table) -> None:
        pq.write_table(table, self.path(name), compression="zstd")
        self.row_counts[name] = table.num_rows

    def open_parquet(self, name: str, schema: pa.Schema) -> pq.ParquetWriter:
        """A writer for tables too big to hold at once (written in row groups)."""
        return pq.ParquetWriter(self.path(name), schema, compression="zstd")

    def finish(self, manifest: dict) -> dict:
        """Write the manifest, move the folder into place, return the manifest as written."""
        manifest = {"schema_version": SCHEMA_VERSION, **manifest}
        manifest.setdefault("files", {}).update(
            {name: {"rows": rows} for name, rows in self.row_counts.items()}
        )
        with open(self.path(MANIFEST_FILE), "w") as handle:
            json.dump(manifest, handle, indent=2, sort_keys=True)
            handle.write("\n")
        # Swap in two renames so the old output survives until the new one is whole.
        old = None
        if self.out_dir.exists():
            old = self.out_dir.with_name(f".{self.out_dir.name}.old-{os.getpid()}")
            self.out_dir.rename(old)
        os.rename(self.tmp_dir, self.out_dir)
        self.tmp_dir = None
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return manifest

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.tmp_dir is not None:  # finish() was not reached: drop the partial output
            shutil.rmtree(self.tmp_dir, ignore_errors=True)
            self.tmp_dir = None
