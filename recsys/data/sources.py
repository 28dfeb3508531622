"""Finding, checking and (when asked) downloading the raw files of a dataset.

A dataset's raw files come either from a local directory (``--source PATH``,
what tests and CI use) or from the dataset's public URL, downloaded into a
cache. Files may be stored plain or gzip-compressed (``u.data`` or
``u.data.gz``); checksums are always of the decompressed content, so both
forms verify against the same value.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import shutil
import tempfile
import urllib.request
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from .errors import DataError

_CHUNK = 1 << 20


@dataclass(frozen=True)
class RawFile:
    """One file a dataset reader needs; ``sha256`` is of the decompressed bytes."""

    name: str
    sha256: str | None
    required: bool = True


@dataclass(frozen=True)
class Download:
    """Where the public copy lives and how to check it.

    ``archive_md5`` is the checksum the publisher (or every mirror) quotes for
    the archive; members are checked again against ``RawFile.sha256``.
    """

    url: str
    archive_md5: str | None = None
    archive_sha256: str | None = None
    member_prefix: str = ""  # folder inside a zip archive, e.g. "ml-100k/"


@dataclass(frozen=True)
class SourceSpec:
    files: tuple[RawFile, ...]
    downloads: tuple[Download, ...] = field(default_factory=tuple)


def default_cache_dir() -> Path:
    return Path(os.environ.get("GENREC_CACHE_DIR", Path.home() / ".cache" / "genrec")) / "raw"


def find_file(directory: Path, name: str) -> Path | None:
    """Return ``directory/name`` or ``directory/name.gz``, whichever exists."""
    for candidate in (directory / name, directory / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def open_text(path: Path, encoding: str = "utf-8") -> io.TextIOBase:
    """Open a plain or gzip'd text file; newlines are left as they are."""
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding=encoding, newline="")
    return open(path, encoding=encoding, newline="")


def _open_bytes(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def sha256_of(path: Path) -> str:
    """sha256 of the decompressed content of ``path``."""
    digest = hashlib.sha256()
    try:
        with _open_bytes(path) as handle:
            while block := handle.read(_CHUNK):
                digest.update(block)
    except (OSError, EOFError) as error:  # truncated or not really gzip
        raise DataError(
            f"{path}: cannot be read ({error}). The file is damaged; replace it and run prepare again."
        ) from error
    return digest.hexdigest()


@dataclass(frozen=True)
class ResolvedFile:
    path: Path
    sha256: str  # of the decompressed content, recorded in the manifest


def resolve_local(
    spec: SourceSpec, directory: Path, verify: bool = True
) -> dict[str, ResolvedFile]:
    """Find each raw file in ``directory`` and hash it (checking the hash if ``verify``).

    Optional files that are absent are left out of the result; a required one
    that is absent, or any file whose checksum differs, is a ``DataError``.
    Every file is hashed even without ``verify``, so the manifest always says
    exactly which bytes a prepared dataset came from.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise DataError(
            f"source directory {directory} does not exist. Pass --source with the folder that "
            "holds the dataset's files, or omit --source to download the public copy."
        )
    missing = [
        raw.name for raw in spec.files if raw.required and find_file(directory, raw.name) is None
    ]
    if missing:
        raise DataError(
            f"{directory}: missing {', '.join(missing)} (plain or .gz). Point --source at the folder "
            "that holds them, or omit --source to download the public copy."
        )
    found: dict[str, ResolvedFile] = {}
    for raw in spec.files:
        path = find_file(directory, raw.name)
        if path is None:
            continue
        actual = sha256_of(path)
        if verify and raw.sha256 is not None and actual != raw.sha256:
            raise DataError(
                f"{path}: checksum mismatch (sha256 of its content is {actual}, expected "
                f"{raw.sha256}). The file is damaged or a different version; replace it with "
                "the original, or pass --no-verify if you changed it on purpose."
            )
        found[raw.name] = ResolvedFile(path, actual)
    return found


def _hash_file(path: Path, algorithm: str) -> str:
    digest = hashlib.new(algorithm)
    with open(path, "rb") as handle:
        while block := handle.read(_CHUNK):
            digest.update(block)
    return digest.hexdigest()


def _fetch(url: str, destination: Path) -> None:
    """Download ``url`` to ``destination`` via a temporary name (never half-written)."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=destination.parent, delete=False, suffix=".part") as out:
        tmp = Path(out.name)
        try:
            with urllib.request.urlopen(url, timeout=60) as response:
                shutil.copyfileobj(response, out, _CHUNK)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    tmp.replace(destination)


def _check_archive(path: Path, download: Download) -> None:
    for algorithm, expected in (("md5", download.archive_md5), ("sha256", download.archive_sha256)):
        if expected is None:
            continue
        actual = _hash_file(path, algorithm)
        if actual != expected:
            path.unlink()
            raise DataError(
                f"{download.url}: downloaded file has {algorithm} {actual}, expected {expected}; "
                "it was deleted. Try again, or download it by hand and pass --source."
            )


def _iter_zip_members(archive: Path, prefix: str) -> Iterator[tuple[str, zipfile.ZipInfo]]:
    with zipfile.ZipFile(archive) as bundle:
        for info in bundle.infolist():
            if info.filename.startswith(prefix) and not info.is_dir():
                yield info.filename[len(prefix) :], info


def download(
    spec: SourceSpec, dataset: str, cache_dir: Path | None = None, verify: bool = True
) -> dict[str, ResolvedFile]:
    """Fetch the public copy into the cache (once) and resolve it like a local folder."""
    if not spec.downloads:
        raise DataError(f"{dataset} has no public download; pass --source with a local folder.")
    target = (cache_dir or default_cache_dir()) / dataset
    target.mkdir(parents=True, exist_ok=True)
    wanted = {raw.name for raw in spec.files}
    for item in spec.downloads:
        filename = item.url.rstrip("/").rsplit("/", 1)[-1]
        if filename.endswith(".zip"):
            if _complete(spec, target):
                continue
            archive = target / filename
            if not archive.exists():
                print(f"downloading {item.url} -> {archive}")
                try:
                    _fetch(item.url, archive)
                except OSError as error:
                    raise DataError(
                        f"{item.url}: download failed ({error}). Check the network, or download the "
                        "file by hand, unpack it and pass --source with that folder."
                    ) from error
                _check_archive(archive, item)
            with zipfile.ZipFile(archive) as bundle:
                for name, info in _iter_zip_members(archive, item.member_prefix):
                    if name in wanted:
                        with bundle.open(info) as src, open(target / name, "wb") as dst:
                            shutil.copyfileobj(src, dst, _CHUNK)
        elif find_file(target, filename) is None:
            print(f"downloading {item.url} -> {target / filename}")
            try:
                _fetch(item.url, target / filename)
            except OSError as error:
                raise DataError(
                    f"{item.url}: download failed ({error}). Check the network, or download the "
                    "file by hand and pass --source with its folder."
                ) from error
            _check_archive(target / filename, item)
    return resolve_local(spec, target, verify=verify)


def _complete(spec: SourceSpec, directory: Path) -> bool:
    return all(find_file(directory, raw.name) for raw in spec.files if raw.required)
