"""argparse `type=` functions shared by the command-line tools (evaluate, sample): each turns a
bad value into argparse's one-line usage error instead of a traceback later on."""

from __future__ import annotations

import argparse
import os


def local_dir(path: str) -> str:
    """A local directory (--model_dir, --tokenizer_dir): a hub id is refused, as nothing is
    downloaded at run time."""
    if not os.path.isdir(path):
        raise argparse.ArgumentTypeError(f"{path}: not a local directory; download the checkpoint first "
                                         "(no hub downloads at run time)")
    return path


def floats(s: str) -> list[float]:
    """'0.05,0.1,0.3' -> [0.05, 0.1, 0.3] (at least one number)."""
    try:
        out = [float(x) for x in s.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r}: expected comma-separated numbers, e.g. 0.05,0.1,0.3") from None
    if not out:
        raise argparse.ArgumentTypeError(f"{s!r}: expected at least one number")
    return out


def positive_int(s: str) -> int:
    """An integer >= 1."""
    try:
        n = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r} is not an integer") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"{n} must be >= 1")
    return n
