"""evaluate.padded_batches: one shared prompt width, or d1's per-batch width."""
import numpy as np
import pytest

from diffpo_jax.evaluate import padded_batches

PROMPTS = [[1] * 3, [2] * 9, [3] * 4, [4] * 2, [5] * 5]  # lengths 3, 9, 4, 2, 5


def _widths(**kw):
    return [(s, p.shape, n) for s, p, _, n in padded_batches(PROMPTS, 2, pad_id=0, **kw)]


def test_one_shared_width_by_default():
    assert _widths() == [(0, (2, 9), 2), (2, (2, 9), 2), (4, (2, 9), 1)]


def test_per_batch_width_like_d1_and_rounded_up():
    assert [shape for _, shape, _ in _widths(pad_multiple=1)] == [(2, 9), (2, 4), (2, 5)]
    assert [shape for _, shape, _ in _widths(pad_multiple=4)] == [(2, 12), (2, 4), (2, 8)]
    s, prompt, mask, n_real = list(padded_batches(PROMPTS, 2, pad_id=0, pad_multiple=1))[1]
    np.testing.assert_array_equal(prompt, [[3, 3, 3, 3], [0, 0, 4, 4]])  # left-padded
    np.testing.assert_array_equal(mask.sum(1), [4, 2])
    last = list(padded_batches(PROMPTS, 2, pad_id=0, pad_multiple=1))[-1]
    assert last[3] == 1 and last[1].tolist() == [[5] * 5, [5] * 5]  # filled by repeating the last prompt


def test_negative_pad_multiple_is_refused():
    with pytest.raises(ValueError, match="pad_multiple=-1"):
        list(padded_batches(PROMPTS, 2, pad_id=0, pad_multiple=-1))
