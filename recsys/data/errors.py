"""The one exception type data preparation raises for problems a user can fix."""


class DataError(Exception):
    """A dataset file is missing, corrupt or malformed, or an option is wrong.

    The message always names the file (and line, where there is one) and says
    what to do next; the command-line entry point prints it without a traceback.
    """


def malformed(path, line_number: int, problem: str, line: str | None = None) -> DataError:
    """Build the error for a bad line, quoting a short piece of it."""
    quoted = ""
    if line is not None:
        text = line.rstrip("\n")
        quoted = f": {text[:120]!r}" + (" ..." if len(text) > 120 else "")
    return DataError(
        f"{path}, line {line_number}: {problem}{quoted}. "
        "The file looks damaged or is not the expected format; re-download it "
        "(or fix that line) and run prepare again."
    )
