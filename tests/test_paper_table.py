"""diffpo_jax.paper_table's entry point starts multi-host like the other CLIs."""
import pytest

from diffpo_jax import demo, distributed, paper_table


def test_main_calls_maybe_initialize_before_any_run(monkeypatch, tmp_path):
    """main() calls distributed.maybe_initialize() (a no-op on one host) before the first demo run."""
    calls = []

    class Stop(Exception):
        pass

    def run_demo(*a, **k):
        calls.append("run_demo")
        raise Stop

    monkeypatch.setattr(distributed, "maybe_initialize", lambda *a, **k: calls.append("maybe_initialize") or False)
    monkeypatch.setattr(demo, "run_demo", run_demo)
    with pytest.raises(Stop):
        paper_table.main(["--methods", "d1", "--seeds", "0", "--out_dir", str(tmp_path)])
    assert calls == ["maybe_initialize", "run_demo"]
