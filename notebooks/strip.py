"""Strip notebook outputs before committing (what `nbstripout` does, without the dependency).

    python notebooks/strip.py                 # rewrite every notebooks/*.ipynb in place
    python notebooks/strip.py --check [FILES] # exit 1 and list the files that still hold outputs

Code cells lose their outputs and execution counts; per-cell run metadata (timings, collapsed /
scrolled state) and notebook-level widget state go too. Files are written the way Jupyter writes
them (JSON, indent 1, sorted keys, UTF-8), so a stripped notebook saved by Jupyter stays unchanged.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys

CELL_RUN_KEYS = ("execution", "ExecuteTime", "collapsed", "scrolled")


def strip(nb: dict) -> dict:
    """The notebook dict with outputs, execution counts and run metadata removed (in place)."""
    for cell in nb.get("cells", []):
        meta = cell.get("metadata", {})
        for key in CELL_RUN_KEYS:
            meta.pop(key, None)
        if cell.get("cell_type") == "code":
            cell["outputs"] = []
            cell["execution_count"] = None
    nb.get("metadata", {}).pop("widgets", None)
    return nb


def dumps(nb: dict) -> str:
    return json.dumps(nb, indent=1, ensure_ascii=False, sort_keys=True) + "\n"


def needs_strip(path: str) -> bool:
    with open(path, encoding="utf-8") as f:
        text = f.read()
    return dumps(strip(json.loads(text))) != text


def main(argv=None) -> int:
    here = os.path.dirname(os.path.abspath(__file__))
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", action="store_true", help="only report notebooks that are not stripped")
    p.add_argument("files", nargs="*", help="notebooks (default: notebooks/*.ipynb)")
    args = p.parse_args(argv)
    files = args.files or sorted(glob.glob(os.path.join(here, "*.ipynb")))
    dirty = []
    for path in files:
        if not needs_strip(path):
            continue
        dirty.append(path)
        if not args.check:
            with open(path, encoding="utf-8") as f:
                nb = strip(json.load(f))
            with open(path, "w", encoding="utf-8") as f:
                f.write(dumps(nb))
    for path in dirty:
        print(("not stripped: " if args.check else "stripped: ") + path)
    return 1 if (args.check and dirty) else 0


if __name__ == "__main__":
    sys.exit(main())
