"""MATH answer equivalence: Hendrycks `strip_string` normalisation, then a sympy check that
runs in a separate worker process under a hard wall-clock limit.

    is_equiv(pred, gold, timeout=2.0) -> bool

1. Both strings are normalised as d1/Hendrycks do (`\\dfrac`->`\\frac`, `\\left`/`\\right`,
   degrees, units after `\\text{ `, spaces, `\\frac12`->`\\frac{1}{2}`, `0.5`->`\\frac{1}{2}`,
   `a/b`->`\\frac{a}{b}`, short `x=` prefixes); equal strings are equivalent (no sympy).
2. Otherwise `sympy_equiv.equivalent` decides in the worker (`python -m
   diffpo_jax.tasks.sympy_worker`, memory-capped). A reply later than `timeout` seconds kills
   the worker (a new one starts at once, in the background) and the answer counts as not
   equivalent. The time limit covers the check, not the worker's one-time start (sympy import).

The worker is a plain subprocess (no fork of a JAX process, no re-import of `__main__`).
"""

from __future__ import annotations

import atexit
import json
import os
import select
import subprocess
import sys
import threading
import time
from collections import OrderedDict
from typing import Optional

DEFAULT_TIMEOUT = 2.0
STARTUP_TIMEOUT = 120.0
MAX_ANSWER_CHARS = 1000
_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


# ------------------------------------------------------------ Hendrycks normalisation
def _fix_fracs(s: str) -> str:
    parts = s.split("\\frac")
    out = parts[0]
    for part in parts[1:]:
        out += "\\frac"
        if not part or part[0] == "{":
            out += part
            continue
        if len(part) < 2:
            return s
        a, b, rest = part[0], part[1], part[2:]
        out += "{" + a + "}" + ("{" + b + "}" + rest if b != "{" else b + rest)
    return out


def _fix_sqrt(s: str) -> str:
    parts = s.split("\\sqrt")
    out = parts[0]
    for part in parts[1:]:
        out += "\\sqrt" + (part if not part or part[0] == "{" else "{" + part[0] + "}" + part[1:])
    return out


def _fix_a_slash_b(s: str) -> str:
    parts = s.split("/")
    if len(parts) == 2 and all(p.isascii() and p.isdigit() and len(p) < 30 for p in parts):
        return "\\frac{" + str(int(parts[0])) + "}{" + str(int(parts[1])) + "}"
    return s


def strip_string(s: str) -> str:
    """Hendrycks-MATH answer normalisation (the one d1's `is_equiv` uses)."""
    s = s.replace("\n", "").replace("\\!", "").replace("\\\\", "\\")
    s = s.replace("tfrac", "frac").replace("dfrac", "frac")
    s = s.replace("\\left", "").replace("\\right", "")
    s = s.replace("^{\\circ}", "").replace("^\\circ", "").replace("\\$", "")
    if "\\text{ " in s:  # units on the right
        s = s.split("\\text{ ")[0]
    s = s.replace("\\%", "").replace(" .", " 0.").replace("{.", "{0.")
    if not s:
        return s
    if s[0] == ".":
        s = "0" + s
    parts = s.split("=")
    if len(parts) == 2 and len(parts[0]) <= 2:
        s = parts[1]
    s = _fix_sqrt(s).replace(" ", "")
    s = _fix_fracs(s)
    if s == "0.5":
        s = "\\frac{1}{2}"
    return _fix_a_slash_b(s)


# ---------------------------------------------------------------------- worker client
class SympyWorker:
    """One sympy subprocess answering `equivalent(a, b)` requests; thread-safe."""

    def __init__(self, memory_mib: int = 2048, startup_timeout: float = STARTUP_TIMEOUT):
        self.memory_mib, self.startup_timeout = memory_mib, startup_timeout
        self._proc: Optional[subprocess.Popen] = None
        self._buf = b""
        self._ready = False
        self._lock = threading.Lock()
        self.kills = 0  # how many checks hit the time limit

    def _spawn(self) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = _ROOT + os.pathsep + env.get("PYTHONPATH", "")
        env.setdefault("JAX_PLATFORMS", "cpu")
        self._proc = subprocess.Popen(
            [sys.executable, "-u", "-m", "diffpo_jax.tasks.sympy_worker", str(self.memory_mib)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
        self._buf, self._ready = b"", False

    def _kill(self) -> None:
        if self._proc is not None:
            try:
                self._proc.kill()
                self._proc.wait(timeout=5)
            except (OSError, subprocess.TimeoutExpired):
                pass
        self._proc = None

    def _readline(self, deadline: float) -> Optional[bytes]:
        fd = self._proc.stdout.fileno()
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    return None  # worker died
                self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return line

    def _ensure_ready(self) -> bool:
        if self._proc is None or self._proc.poll() is not None:
            self._spawn()
        if not self._ready:
            line = self._readline(time.monotonic() + self.startup_timeout)
            if line is None or b"ready" not in line:
                self._kill()
                return False
            self._ready = True
        return True

    def equivalent(self, a: str, b: str, timeout: float = DEFAULT_TIMEOUT) -> bool:
        """`sympy_equiv.equivalent(a, b)` in the worker; False after `timeout` seconds."""
        with self._lock:
            if not self._ensure_ready():
                raise RuntimeError("sympy worker did not start: run `python -m "
                                   "diffpo_jax.tasks.sympy_worker` to see the error")
            try:
                self._proc.stdin.write(json.dumps({"a": a, "b": b}).encode() + b"\n")
                self._proc.stdin.flush()
            except OSError:
                self._kill()
                return False
            line = self._readline(time.monotonic() + timeout)
            if line is None:
                self.kills += 1
                self._kill()
                self._spawn()  # start the next worker now; its import overlaps other work
                return False
            return line.strip() == b'{"r": true}'

    def close(self) -> None:
        with self._lock:
            self._kill()


_WORKER: Optional[SympyWorker] = None
_CACHE: "OrderedDict[tuple[str, str], bool]" = OrderedDict()
_CACHE_SIZE = 8192


def worker() -> SympyWorker:
    """The process-wide worker (started on first use, stopped at exit)."""
    global _WORKER
    if _WORKER is None:
        _WORKER = SympyWorker()
        atexit.register(_WORKER.close)
    return _WORKER


def is_equiv(pred: Optional[str], gold: Optional[str], *, timeout: float = DEFAULT_TIMEOUT,
             use_sympy: bool = True) -> bool:
    """Whether the answer `pred` equals `gold` (both LaTeX strings without `\\boxed`)."""
    if not isinstance(pred, str) or not isinstance(gold, str):
        return False
    pred, gold = pred.strip(), gold.strip()
    if not pred or len(pred) > MAX_ANSWER_CHARS:
        return False
    if strip_string(pred) == strip_string(gold):
        return True
    if not use_sympy:
        return False
    key = (pred, gold)
    if key in _CACHE:
        _CACHE.move_to_end(key)
        return _CACHE[key]
    result = worker().equivalent(pred, gold, timeout)
    _CACHE[key] = result
    if len(_CACHE) > _CACHE_SIZE:
        _CACHE.popitem(last=False)
    return result
