"""Bad input stops with a message naming the file, the line and what to do; nothing half-written."""

from __future__ import annotations

import gzip
import hashlib
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from recsys.data import DataError, prepare_dataset
from recsys.data.sources import Download, RawFile, SourceSpec, download

pytestmark = pytest.mark.shared_data


@pytest.fixture
def ml100k_copy(tmp_path, shared) -> Path:
    """A private, decompressed copy of ML-100K that a test may damage."""
    folder = tmp_path / "raw"
    folder.mkdir()
    for gz in shared("ml-100k").glob("u.*.gz"):
        with gzip.open(gz, "rb") as src, open(folder / gz.name[:-3], "wb") as dst:
            shutil.copyfileobj(src, dst)
    return folder


def _damage_line(path: Path, line_number: int, new_text: str) -> None:
    lines = path.read_bytes().split(b"\n")
    lines[line_number - 1] = new_text.encode()
    path.write_bytes(b"\n".join(lines))


def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def test_unknown_dataset_lists_the_known_ones(tmp_path):
    with pytest.raises(DataError, match=r"unknown dataset 'ml-20m'.*amazon-beauty.*synthetic"):
        prepare_dataset("ml-20m", tmp_path / "out")


def test_unknown_option_is_named(tmp_path):
    with pytest.raises(DataError, match=r"unknown option\(s\) num_user\b.*num_users"):
        prepare_dataset("synthetic", tmp_path / "out", options={"num_user": 5})
    with pytest.raises(DataError, match="mean_length"):
        prepare_dataset("synthetic", tmp_path / "out", options={"mean_length": 1, "min_length": 5})


def test_missing_file_is_named(ml100k_copy, tmp_path):
    (ml100k_copy / "u.item").unlink()
    with pytest.raises(DataError, match=r"missing u\.item \(plain or \.gz\)"):
        prepare_dataset("ml-100k", tmp_path / "out", ml100k_copy)
    assert not (tmp_path / "out").exists()


def test_missing_source_folder(tmp_path):
    with pytest.raises(DataError, match=r"does not exist.*--source"):
        prepare_dataset("ml-100k", tmp_path / "out", tmp_path / "nowhere")


def test_checksum_mismatch_names_file_and_offers_no_verify(ml100k_copy, tmp_path):
    _damage_line(ml100k_copy / "u.data", 5, "1\t2\t3\t881250949")
    with pytest.raises(DataError, match=r"u\.data: checksum mismatch.*--no-verify"):
        prepare_dataset("ml-100k", tmp_path / "out", ml100k_copy)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("file", "line", "text", "message"),
    [
        ("u.data", 17, "196\t242\t3", r"u\.data, line 17: expected 4 fields"),
        (
            "u.data",
            18,
            "196\tabc\t3\t881250949",
            r"u\.data, line 18: item id is not an integer \('abc'\)",
        ),
        ("u.data", 19, "196\t0\t3\t881250949", r"u\.data, line 19: item id must be >= 1"),
        ("u.item", 3, "3|Four Rooms (1995)|01-Jan-1995", r"u\.item, line 3: expected 24 fields"),
        ("u.user", 2, "2|x|F|other|94043", r"u\.user, line 2: age is not an integer"),
    ],
)
def test_malformed_line_names_file_and_line(ml100k_copy, tmp_path, file, line, text, message):
    _damage_line(ml100k_copy / file, line, text)
    with pytest.raises(DataError, match=message):
        prepare_dataset("ml-100k", tmp_path / "out", ml100k_copy, verify=False)
    assert not (tmp_path / "out").exists()
    assert _leftovers(tmp_path) == []  # the temporary folder is gone too


def test_duplicate_rating_is_reported(ml100k_copy, tmp_path):
    first = (ml100k_copy / "u.data").read_text().splitlines()[0]
    with open(ml100k_copy / "u.data", "a") as handle:
        handle.write(first + "\n")
    with pytest.raises(DataError, match=r"rated item \d+ more than once"):
        prepare_dataset("ml-100k", tmp_path / "out", ml100k_copy, verify=False)


def test_failed_overwrite_keeps_the_previous_output(ml100k_copy, tmp_path):
    out = tmp_path / "out"
    prepare_dataset("ml-100k", out, ml100k_copy)
    before = (out / "manifest.json").read_bytes()
    with pytest.raises(DataError, match=r"already exists.*--overwrite"):
        prepare_dataset("ml-100k", out, ml100k_copy)
    _damage_line(ml100k_copy / "u.data", 3, "garbage")
    with pytest.raises(DataError, match="line 3"):
        prepare_dataset("ml-100k", out, ml100k_copy, verify=False, overwrite=True)
    assert (out / "manifest.json").read_bytes() == before
    assert _leftovers(tmp_path) == []


def test_bad_json_names_line_and_column(tmp_path, shared):
    raw = tmp_path / "raw"
    raw.mkdir()
    shutil.copy(shared("amazon-beauty") / "Beauty.txt.gz", raw)
    (raw / "Beauty_item2attributes.json").write_text('{"1": [1, 2],\n "2": [3,, 4]}')
    with pytest.raises(
        DataError, match=r"Beauty_item2attributes\.json, line 2, column \d+: not valid JSON"
    ):
        prepare_dataset("amazon-beauty", tmp_path / "out", raw, verify=False)


def test_truncated_gzip_is_reported(tmp_path, shared):
    raw = tmp_path / "raw"
    raw.mkdir()
    data = (shared("amazon-beauty") / "Beauty.txt.gz").read_bytes()
    (raw / "Beauty.txt.gz").write_bytes(data[: len(data) // 2])
    shutil.copy(shared("amazon-beauty") / "Beauty_item2attributes.json.gz", raw)
    with pytest.raises(DataError, match=r"Beauty\.txt\.gz: cannot be read.*damaged"):
        prepare_dataset("amazon-beauty", tmp_path / "out", raw)


def test_cli_prints_the_error_and_exits_2(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "recsys.data",
            "prepare",
            "ml-100k",
            "--source",
            str(tmp_path / "none"),
            "--out",
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and "Traceback" not in result.stderr


def test_download_path_with_a_local_url(ml100k_copy, tmp_path):
    """The download code, exercised against a file:// URL (no network here)."""
    archive = tmp_path / "ml-100k.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        for name in ("u.data", "u.item", "u.user", "u.genre"):
            bundle.write(ml100k_copy / name, f"ml-100k/{name}")
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    files = (
        RawFile("u.data", hashlib.sha256((ml100k_copy / "u.data").read_bytes()).hexdigest()),
        RawFile("u.item", None),
    )
    spec = SourceSpec(
        files, (Download(archive.as_uri(), archive_md5=md5, member_prefix="ml-100k/"),)
    )
    found = download(spec, "ml-100k", cache_dir=tmp_path / "cache")
    assert (
        set(found) == {"u.data", "u.item"}
        and found["u.data"].path.parent == tmp_path / "cache" / "ml-100k"
    )

    wrong = SourceSpec(
        files, (Download(archive.as_uri(), archive_md5="0" * 32, member_prefix="ml-100k/"),)
    )
    with pytest.raises(DataError, match=r"downloaded file has md5 .* expected 0+; it was deleted"):
        download(wrong, "ml-100k", cache_dir=tmp_path / "cache2")
    assert not (tmp_path / "cache2" / "ml-100k" / "ml-100k.zip").exists()
