"""Token-budget batching: determinism, no sample twice, budgets, rank balance, padding."""

from __future__ import annotations

import numpy as np
import pytest

from trainer.batching import (
    batch_stats,
    dropped,
    flatten,
    get_batches,
    length_aware_batches,
    naive_batches,
    padding_fraction,
)


def mixed_lengths(n: int, seed: int = 0, captions: bool = True) -> np.ndarray:
    """40% 256-token, 40% 1024-token, 20% 4096-token images (+ 20-120 caption tokens padded to
    32, as the model computes them)."""
    rng = np.random.default_rng(seed)
    lengths = rng.choice([256, 1024, 4096], size=n, p=[0.4, 0.4, 0.2])
    if captions:
        cap = rng.integers(20, 121, size=n)
        lengths = lengths + cap + (-cap) % 32
    return lengths


def _same(a, b) -> bool:
    return len(a) == len(b) and all(
        len(x) == len(y) and all(np.array_equal(u, v) for u, v in zip(x, y, strict=True))
        for x, y in zip(a, b, strict=True)
    )


CASES = [  # (lengths, token_budget, world_size, max_batch_size)
    (mixed_lengths(700), 16384, 1, None),
    (mixed_lengths(700, seed=1), 16384, 4, None),
    (mixed_lengths(500, seed=2, captions=False), 8192, 3, 7),
    (np.random.default_rng(3).integers(1, 9000, size=300), 4096, 2, None),  # some oversize
    (np.full(50, 100), 1000, 8, None),
]


def test_deterministic_per_seed_and_different_per_epoch_and_seed():
    lengths = mixed_lengths(600)
    kwargs = {"token_budget": 16384, "world_size": 2}
    a = length_aware_batches(lengths, seed=5, epoch=1, **kwargs)
    assert _same(a, length_aware_batches(lengths.copy(), seed=5, epoch=1, **kwargs))
    assert not _same(a, length_aware_batches(lengths, seed=5, epoch=2, **kwargs))
    assert not _same(a, length_aware_batches(lengths, seed=6, epoch=1, **kwargs))
    n = naive_batches(lengths, batch_size=8, seed=5, epoch=1)
    assert _same(n, naive_batches(lengths, batch_size=8, seed=5, epoch=1))
    assert not _same(n, naive_batches(lengths, batch_size=8, seed=5, epoch=2))


@pytest.mark.parametrize("case", range(len(CASES)))
def test_each_sample_at_most_once_and_dropped_reported(case):
    lengths, budget, world, max_bs = CASES[case]
    for epoch in range(3):
        steps = length_aware_batches(
            lengths, token_budget=budget, seed=0, epoch=epoch, world_size=world,
            max_batch_size=max_bs,
        )  # fmt: skip
        flat = flatten(steps)
        used = np.concatenate(flat) if flat else np.array([], np.int64)
        assert len(np.unique(used)) == len(used)  # at most once
        missing = dropped(steps, len(lengths))
        assert sorted([*used.tolist(), *missing.tolist()]) == list(range(len(lengths)))
        stats = batch_stats(steps, lengths, layout="budget", token_budget=budget)
        assert stats.samples == len(used) and stats.dropped == len(missing)
        # only the % world_size remainder of batches is dropped (here: all if < world batches)
        per_batch = min(max_bs or len(lengths), max(1, budget // int(lengths.min())))
        assert stats.batches % world == 0 and len(missing) <= (world - 1) * per_batch
        if world == 1:
            assert len(missing) == 0


@pytest.mark.parametrize("case", range(len(CASES)))
def test_budget_batch_size_and_ranks(case):
    lengths, budget, world, max_bs = CASES[case]
    steps = length_aware_batches(
        lengths, token_budget=budget, seed=1, world_size=world, max_batch_size=max_bs
    )
    oversize = 0
    for step in steps:
        assert len(step) == world  # one batch per rank in every step
        for batch in step:
            assert len(batch) >= 1 and batch.dtype == np.int64
            tokens = int(lengths[batch].sum())
            assert tokens <= budget or len(batch) == 1  # over budget only alone
            oversize += tokens > budget
            assert max_bs is None or len(batch) <= max_bs
    stats = batch_stats(steps, lengths, layout="budget", token_budget=budget)
    assert stats.oversize == oversize and stats.steps == len(steps)
    if case == 3:
        assert oversize > 0
    # ranks of a step get batches adjacent in cost order: the steps' token ranges never overlap
    ranges = [sorted(int(lengths[b].sum()) for b in step) for step in steps]
    for a in ranges:
        for b in ranges:
            assert a is b or a[0] >= b[-1] or b[0] >= a[-1]


def test_mixed_resolutions_waste_at_most_5_percent_of_the_budget():
    for captions in (False, True):
        for seed, budget, world in [(0, 16384, 1), (1, 16384, 4), (2, 32768, 2), (3, 65536, 1)]:
            lengths = mixed_lengths(3000, seed=seed, captions=captions)
            steps = length_aware_batches(lengths, token_budget=budget, seed=seed, world_size=world)
            frac = padding_fraction(steps, lengths, layout="budget", token_budget=budget)
            assert 0 <= frac <= 0.05, (captions, seed, budget, world, frac)
            # the naive baseline with the same mean batch size pads far more
            size = round(budget / lengths.mean())
            naive = naive_batches(lengths, batch_size=size, seed=seed, world_size=world)
            assert padding_fraction(naive, lengths, layout="padded") > 0.4


def test_batches_hold_more_short_samples_than_long_ones():
    lengths = np.array([256] * 400 + [4096] * 100)
    steps = length_aware_batches(lengths, token_budget=8192, seed=0)
    sizes = {len(b) for b in flatten(steps) if (lengths[b] == 256).all()}
    assert max(sizes) == 32 and max(len(b) for b in flatten(steps) if lengths[b].max() > 256) <= 2


def test_padding_fraction_hand_examples():
    lengths = np.array([10, 20, 30, 40])
    batches = [np.array([0, 1]), np.array([2, 3])]
    # padded to each batch's longest: slots 2*20 + 2*40 = 120, real 100
    assert padding_fraction(batches, lengths, layout="padded") == pytest.approx(1 - 100 / 120)
    assert padding_fraction([batches], lengths, layout="padded") == pytest.approx(1 - 100 / 120)
    # budget 50: slots max(50, 30) + max(50, 70) = 120 as well; packed: none
    assert padding_fraction(batches, lengths, layout="budget", token_budget=50) == pytest.approx(
        1 - 100 / 120
    )
    assert padding_fraction(batches, lengths, layout="packed") == 0.0
    # the model's per-segment pads: computed 32/32/32/64 slots for 10/20/30/40 real tokens
    padded = np.array([32, 32, 32, 64])
    frac = padding_fraction(batches, padded, layout="packed", real_lengths=lengths)
    assert frac == pytest.approx(1 - 100 / 160)
    assert padding_fraction(batches, padded, layout="padded", real_lengths=lengths) == (
        pytest.approx(1 - 100 / (2 * 32 + 2 * 64))
    )
    with pytest.raises(ValueError, match="token_budget"):
        padding_fraction(batches, lengths, layout="budget")
    with pytest.raises(ValueError, match="layout"):
        padding_fraction(batches, lengths, layout="nope")


def test_naive_batches_fixed_size_drop_last():
    steps = naive_batches(np.ones(103, dtype=int), batch_size=10, seed=0, world_size=3)
    assert len(steps) == 3 and all(len(s) == 3 and all(len(b) == 10 for b in s) for s in steps)
    assert len(dropped(steps, 103)) == 13
    assert _same(
        steps, get_batches("naive", np.ones(103, int), batch_size=10, seed=0, world_size=3)
    )


def test_packed_cost_rounds_each_sample_to_32():
    lengths = np.array([33] * 40)  # 64 slots each in the packed model
    steps = length_aware_batches(lengths, token_budget=640, seed=0, cost="packed")
    assert {len(b) for b in flatten(steps)} == {10}
    steps = length_aware_batches(lengths, token_budget=640, seed=0, cost="linear")
    assert max(len(b) for b in flatten(steps)) == 19


def test_errors_name_the_argument_and_value():
    good = {"token_budget": 100, "seed": 0}
    for lengths, kwargs, name in [
        (np.array([1, 0]), {}, "lengths"),
        (np.array([1.5]), {}, "lengths"),
        (np.ones((2, 2), int), {}, "lengths"),
        (np.ones(3, int), {"token_budget": 0}, "token_budget"),
        (np.ones(3, int), {"seed": -1}, "seed"),
        (np.ones(3, int), {"epoch": -2}, "epoch"),
        (np.ones(3, int), {"world_size": 0}, "world_size"),
        (np.ones(3, int), {"max_batch_size": 0}, "max_batch_size"),
        (np.ones(3, int), {"cost": "quadratic"}, "cost"),
    ]:
        with pytest.raises(ValueError, match=rf"^{name}: .*got"):
            length_aware_batches(lengths, **{**good, **kwargs})
    with pytest.raises(ValueError, match=r"batch_size: .*got 0"):
        naive_batches(np.ones(3, int), batch_size=0, seed=0)
    assert length_aware_batches(np.array([], dtype=int), **good) == []
