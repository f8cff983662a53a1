"""The project's errors and how command lines report them (the bottom layer: imports nothing of
the package).

Two families, told apart by their exit status:

* :class:`UserError` (exit 2): what the user passed is wrong (config, paths, datasets,
  checkpoints, arguments). The message says how to fix it.
* :class:`RunError` (exit 1): a fault during a run (bad training data, a diverged loss).

Every command line prints such an error as one ``ERROR:`` line (:func:`exit_on_error`), and
parses its arguments with :class:`OneLineArgumentParser`, whose usage errors are one line too.
"""

import argparse
import functools
import sys
from typing import Optional

__all__ = [
    "NrdRspError",
    "UserError",
    "RunError",
    "ConfigError",
    "DatasetNotFoundError",
    "CheckpointError",
    "CorruptCheckpointError",
    "CheckpointMismatchError",
    "UnsafeCheckpointError",
    "WeightsHashMismatchError",
    "UnsafeConfigError",
    "BadSampleError",
    "TooManyBadSamplesError",
    "NonFiniteLossError",
    "DiskFullError",
    "one_line",
    "exit_code",
    "report_error",
    "exit_on_error",
    "OneLineArgumentParser",
]


class NrdRspError(Exception):
    """Base of the project's errors; ``exit_status`` is what a command line exits with.

    ``all_ranks`` (keyword-only): the error is raised alike on every rank of a multi-process
    run, at the same point (so only the main process needs to print it)."""

    exit_status = 1
    all_ranks: bool = False

    def __init__(self, *args, all_ranks: bool = False):
        super().__init__(*args)
        self.all_ranks = bool(all_ranks)


class UserError(NrdRspError):
    """What the user passed is wrong; exit status 2."""

    exit_status = 2


class RunError(NrdRspError):
    """A fault during a run; exit status 1."""

    exit_status = 1


class ConfigError(UserError, ValueError):
    """A config, a path in it, or a command-line override is wrong."""


class DatasetNotFoundError(UserError, FileNotFoundError):
    """A registered dataset's files are not where its metadata says they are."""


class CheckpointError(UserError, RuntimeError):
    """A checkpoint cannot be used (unreadable, none readable at ``--resume``, or another model)."""


class CorruptCheckpointError(CheckpointError):
    """The file cannot be read as a checkpoint (truncated, corrupt, missing)."""


class CheckpointMismatchError(CheckpointError):
    """The checkpoint's tensors do not fit the model. ``table`` lists the mismatched keys."""

    def __init__(self, message: str, table: str = ""):
        super().__init__(message)
        self.table = table


class UnsafeCheckpointError(CheckpointError):
    """A weights file would call a Python global that weight files never need (it could run
    code); refused before anything in it was called."""


class WeightsHashMismatchError(CheckpointError):
    """A downloaded weights file does not have the sha256 its name or the model zoo records."""


class UnsafeConfigError(ConfigError):
    """A config file uses a YAML tag that ``yaml.safe_load`` refuses (Python tags can run code)."""


class BadSampleError(RunError, ValueError):
    """One sample cannot be used: unreadable/corrupt image or label, or inconsistent sizes.

    Takes a single message (so that PyTorch can re-raise it from a data loader worker); the
    offending path is in ``file_name`` and in the message.
    """

    def __init__(self, message: str, file_name: Optional[str] = None):
        super().__init__(message)
        self.file_name = file_name


class TooManyBadSamplesError(RunError, RuntimeError):
    """More than ``DATALOADER.MAX_SKIPPED_FRACTION`` of the training samples were unusable."""


class NonFiniteLossError(RunError, FloatingPointError):
    """A loss term became NaN/inf, or Detectron2 found non-finite predictions while training."""


class DiskFullError(RunError, OSError):
    """The disk filled up while a file was written; the file's previous version is intact."""


def one_line(e: BaseException) -> str:
    """The message of ``e`` as one line. An exception re-raised by a DataLoader worker carries
    the worker's whole traceback; its last line holds the original message."""
    msg = str(e).strip()
    if "Original Traceback" in msg:
        last = msg.splitlines()[-1]
        head, sep, rest = last.partition(": ")
        msg = rest if sep and head.endswith(("Error", "Exception")) else last
    return " ".join(line.strip() for line in msg.splitlines() if line.strip())


def exit_code(e: BaseException) -> int:
    """The exit status for ``e``: 2 for a :class:`UserError`, 1 otherwise."""
    return getattr(e, "exit_status", 1)


def report_error(e: BaseException) -> None:
    """Print ``e`` for a user on stderr: its details (e.g. a table of mismatched checkpoint
    keys), then ``ERROR: <one line>``."""
    table = getattr(e, "table", "")
    if table:
        print(table, file=sys.stderr)
    print(f"ERROR: {one_line(e)}", file=sys.stderr)


def exit_on_error(fn):
    """Decorator for command-line entry points: an :class:`NrdRspError` becomes
    ``ERROR: <message>`` on stderr and its exit status, instead of a stack trace."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except NrdRspError as e:
            report_error(e)
            sys.exit(exit_code(e))

    return wrapper


class OneLineArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose usage errors are one ``ERROR:`` line (exit 2) instead of
    the usage text, and which can fail with one such line on bad input data (:meth:`fail`,
    exit 1)."""

    def error(self, message):
        self.exit(2, f"ERROR: {self.prog}: {message} (see --help)\n")

    def fail(self, message):
        self.exit(1, f"ERROR: {self.prog}: {message}\n")

    @classmethod
    def adopt(cls, parser: argparse.ArgumentParser) -> "OneLineArgumentParser":
        """``parser`` (built elsewhere, e.g. Detectron2's ``default_argument_parser()``) with
        the one-line errors of this class; its arguments, help and epilog are kept."""
        parser.__class__ = cls
        return parser
