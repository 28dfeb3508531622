"""Line-by-line parsing that reports the file and line of the first bad record."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from ..errors import malformed
from ..sources import open_text


def iter_records(
    path: Path, separator: str, num_fields: int | None = None, encoding: str = "utf-8"
) -> Iterator[tuple[int, list[str], str]]:
    """Yield (line number, fields, raw line) for each non-empty line.

    ``num_fields`` is the exact count a record must have (None: any count >= 1).
    """
    try:
        with open_text(path, encoding=encoding) as handle:
            for line_number, line in enumerate(handle, start=1):
                stripped = line.rstrip("\r\n")
                if not stripped.strip():
                    continue
                fields = stripped.split(separator)
                if num_fields is not None and len(fields) != num_fields:
                    raise malformed(
                        path,
                        line_number,
                        f"expected {num_fields} fields separated by {separator!r}, found {len(fields)}",
                        line,
                    )
                yield line_number, fields, line
    except UnicodeDecodeError as error:
        raise malformed(
            path, _line_of_byte(path, error), f"not valid {encoding} text ({error.reason})"
        ) from error


def parse_int(
    value: str, path: Path, line_number: int, what: str, line: str, minimum: int | None = None
) -> int:
    try:
        number = int(value)
    except ValueError:
        raise malformed(path, line_number, f"{what} is not an integer ({value!r})", line) from None
    if minimum is not None and number < minimum:
        raise malformed(path, line_number, f"{what} must be >= {minimum}, found {number}", line)
    return number


def parse_float(value: str, path: Path, line_number: int, what: str, line: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise malformed(path, line_number, f"{what} is not a number ({value!r})", line) from None


def _line_of_byte(path: Path, error: UnicodeDecodeError) -> int:
    """Best effort: the decoder reports a position inside its buffer, not the file.

    Re-read in binary and find the first line that fails to decode.
    """
    import gzip

    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        for line_number, raw in enumerate(handle, start=1):
            try:
                raw.decode(error.encoding)
            except UnicodeDecodeError:
                return line_number
    return 0
