"""Worker process for sympy answer checks: `python -m diffpo_jax.tasks.sympy_worker [MiB]`.

Protocol (bytes on stdin/stdout, one JSON object per line): after importing sympy it writes
`{"ready": true}`; then for each request `{"a": str, "b": str}` it writes `{"r": bool}`
(`sympy_equiv.equivalent(a, b)`). The parent (`math_equiv.SympyWorker`) kills it when a
reply takes longer than the call's time limit. Address space is capped (default 2048 MiB).
"""

import json
import sys


def _limit_memory(mib: int) -> None:
    try:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (mib << 20, mib << 20))
    except (ImportError, ValueError, OSError):
        pass  # not available on this platform: the parent's time limit still applies


def main() -> None:
    _limit_memory(int(sys.argv[1]) if len(sys.argv) > 1 else 2048)
    sys.setrecursionlimit(10_000)
    from diffpo_jax.tasks.sympy_equiv import equivalent

    out = sys.stdout.buffer
    out.write(b'{"ready": true}\n')
    out.flush()
    for line in sys.stdin.buffer:
        try:
            req = json.loads(line)
            result = bool(equivalent(str(req["a"]), str(req["b"])))
        except Exception:  # noqa: BLE001 - any failure means "not shown equal"
            result = False
        out.write(b'{"r": true}\n' if result else b'{"r": false}\n')
        out.flush()


if __name__ == "__main__":
    main()
