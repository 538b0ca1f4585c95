"""Sequence-length-aware batching with a dynamic batch size, and the naive baseline.

The S3-DiT computes on packed tokens (``model.packing``): a batch costs the sum of its items'
token counts, never batch size x the longest item. So instead of a fixed batch size, a batch
holds as many samples as fit a per-rank ``token_budget``: few long (1024^2 = 4096-token)
samples or many short (256^2 = 256-token) ones, every step about the same work and memory.

``length_aware_batches`` -- one epoch, deterministic for ``(seed, epoch)``:

1. Shuffle all indices with ``np.random.default_rng([seed, epoch])``.
2. Cut the shuffled order into windows of about ``window`` budgets' worth of tokens.
3. Within a window, take the samples longest first (stable sort, so equal lengths stay in
   shuffled order) and place each by best fit: into the open batch with the least room that
   still fits it, else into a new batch. Long samples thus open batches and shorter ones fill
   their leftover room (first/best-fit decreasing bin packing); batches hold samples of one
   window, plus any room left open from earlier windows: a batch closes once its room is
   smaller than the shortest sample of the epoch or it has ``max_batch_size`` samples, and
   the batches still open at the end of the epoch close as they are (the only partly filled
   ones). A sample longer than the budget is a batch of its own (counted by ``batch_stats``).
4. Deal batches to ranks: each step has ``world_size`` batches, one per rank. The
   ``n_batches % world_size`` remainder is dropped (the lowest-cost batches, usually the
   epoch's partly filled last ones); ``dropped`` lists their samples, and another epoch
   reshuffles, so no sample is dropped systematically. Batches are sorted by cost and dealt in
   consecutive groups, so the ranks of one step get batches of nearly equal token totals (no
   rank waits long for another); the steps are then shuffled and, within a step, the batches
   rotated by a random offset.

``cost`` is what the budget counts per sample: ``linear`` the token count as given (the
caller passes image + caption tokens, padded per segment if it wants the model's exact count),
``packed`` the count rounded up to ``SEQ_MULTIPLE`` (32) -- what the packed model computes for
one segment; for an image + caption sample the caller's exact per-segment count is better.

``naive_batches`` is the baseline: shuffled fixed-size batches, the last incomplete batch and
the ``% world_size`` remainder dropped (``drop_last``).

``padding_fraction`` measures both as the fraction of computed token slots that hold no real
token (see its docstring), ``batch_stats`` summarises a plan for the trainer's logs.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from infra.config import require
from model.packing import SEQ_MULTIPLE

Steps = list[list[np.ndarray]]  # steps -> one index array per rank
COSTS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "linear": lambda n: n,
    "packed": lambda n: n + (-n) % SEQ_MULTIPLE,
}
LAYOUTS = ("budget", "padded", "packed")


def length_aware_batches(
    lengths: np.ndarray,
    *,
    token_budget: int,
    seed: int,
    epoch: int = 0,
    world_size: int = 1,
    max_batch_size: int | None = None,
    cost: str = "linear",
    window: int = 64,
) -> Steps:
    """One epoch of token-budget batches (the algorithm in the module docstring).

    ``lengths``: (N,) tokens per sample (>= 1); ``token_budget``: tokens per batch per rank;
    ``window``: budgets' worth of shuffled samples sorted together. -> steps, each a list of
    ``world_size`` int64 index arrays. Every index appears at most once; ``dropped`` gives the
    rest.
    """
    lengths = _check_lengths(lengths)
    require(_int_at_least(token_budget, 1), "token_budget", token_budget, "must be an int >= 1")
    _check_common(seed, epoch, world_size)
    ok = max_batch_size is None or _int_at_least(max_batch_size, 1)
    require(ok, "max_batch_size", max_batch_size, "must be None or an int >= 1")
    require(cost in COSTS, "cost", cost, f"must be one of {sorted(COSTS)}")
    require(_int_at_least(window, 1), "window", window, "must be an int >= 1")
    rng = np.random.default_rng([seed, epoch])
    costs = COSTS[cost](lengths)
    order = rng.permutation(len(lengths))
    cut = np.cumsum(costs[order]) // (window * token_budget)  # window of each shuffled sample
    bounds = np.flatnonzero(np.diff(cut)) + 1
    windows = [w[np.argsort(-costs[w], kind="stable")] for w in np.split(order, bounds)]
    max_size = max_batch_size or len(lengths) + 1
    batches = _best_fit(np.concatenate(windows), costs, token_budget, max_size)
    return _deal(batches, costs, world_size, rng)


def naive_batches(
    lengths: np.ndarray, *, batch_size: int, seed: int, epoch: int = 0, world_size: int = 1
) -> Steps:
    """The baseline: a shuffled order cut into ``batch_size`` batches; the last incomplete batch
    and the ``% world_size`` remainder are dropped. ``lengths`` only gives the sample count."""
    lengths = _check_lengths(lengths)
    require(_int_at_least(batch_size, 1), "batch_size", batch_size, "must be an int >= 1")
    _check_common(seed, epoch, world_size)
    order = np.random.default_rng([seed, epoch]).permutation(len(lengths))
    n_steps = len(order) // (batch_size * world_size)
    used = order[: n_steps * world_size * batch_size].reshape(n_steps, world_size, batch_size)
    return [list(step) for step in used]


BATCHERS: dict[str, Callable[..., Steps]] = {
    "length_aware": length_aware_batches,
    "naive": naive_batches,
}


def get_batches(name: str, lengths: np.ndarray, **kwargs) -> Steps:
    """``BATCHERS[name](lengths, **kwargs)``."""
    require(name in BATCHERS, "name", name, f"must be one of {sorted(BATCHERS)}")
    return BATCHERS[name](lengths, **kwargs)


def flatten(batches: Steps | Sequence[np.ndarray]) -> list[np.ndarray]:
    """Steps (lists of per-rank arrays) or a flat list of batches -> a flat list of batches."""
    if len(batches) and not isinstance(batches[0], np.ndarray):
        return [b for step in batches for b in step]
    return list(batches)


def dropped(batches: Steps | Sequence[np.ndarray], n_samples: int) -> np.ndarray:
    """Sorted indices in ``range(n_samples)`` that no batch holds."""
    flat = flatten(batches)
    seen = np.zeros(n_samples, bool)
    if flat:
        seen[np.concatenate(flat)] = True
    return np.flatnonzero(~seen)


def padding_fraction(
    batches: Steps | Sequence[np.ndarray],
    lengths: np.ndarray,
    *,
    layout: str,
    token_budget: int | None = None,
    real_lengths: np.ndarray | None = None,
) -> float:
    """Fraction of the token slots a trainer computes (or reserves) that hold no real token:
    ``1 - sum(real tokens) / sum(slots)`` over all batches. Comparable across strategies.

    Slots per batch, from ``lengths`` (the tokens each sample occupies):

    * ``budget`` (dynamic batches): ``max(token_budget, sum(lengths))`` -- the batch's unused
      budget counts as padding, as if every step were padded to the budget (static shapes);
      for a packed trainer it is throughput lost to under-filled steps, never computed.
    * ``padded`` (a padded trainer): ``len(batch) * max(lengths)`` -- every item padded to the
      batch's longest.
    * ``packed`` (the packed model, no batch padding): ``sum(lengths)``.

    ``real_lengths`` (default ``lengths``) are the real tokens: pass the unpadded image +
    caption counts with ``lengths`` = the model's per-segment padded counts (multiples of 32)
    to count the model's own segment pads as padding too (``packed`` then measures only them).
    """
    require(layout in LAYOUTS, "layout", layout, f"must be one of {LAYOUTS}")
    ok = layout != "budget" or _int_at_least(token_budget, 1)
    require(ok, "token_budget", token_budget, "must be an int >= 1 with layout='budget'")
    lengths = np.asarray(lengths)
    real = lengths if real_lengths is None else np.asarray(real_lengths)
    flat = [b for b in flatten(batches) if len(b)]
    slots = sum(_slots(lengths[b], layout, token_budget) for b in flat)
    return 1.0 - float(sum(int(real[b].sum()) for b in flat)) / slots if slots else 0.0


def _slots(lens: np.ndarray, layout: str, budget: int | None) -> int:
    if layout == "padded":
        return len(lens) * int(lens.max())
    total = int(lens.sum())
    return max(budget, total) if layout == "budget" else total


@dataclass(frozen=True, kw_only=True)
class BatchStats:
    """A summary of one epoch's batches for the trainer's logs."""

    steps: int
    """Optimizer steps (each with one batch per rank)."""
    batches: int
    """Batches over all ranks."""
    samples: int
    """Samples scheduled."""
    dropped: int
    """Samples of ``range(N)`` that no batch holds (rank remainder, drop_last)."""
    oversize: int
    """Single-sample batches longer than the budget (0 without a budget)."""
    mean_batch_size: float
    """Mean samples per batch."""
    mean_tokens: float
    """Mean tokens (``lengths``) per batch."""
    max_tokens: int
    """Tokens of the largest batch."""
    padding_fraction: float
    """``padding_fraction`` under ``layout``."""
    layout: str
    """The padding layout used."""


def batch_stats(
    batches: Steps,
    lengths: np.ndarray,
    *,
    layout: str,
    token_budget: int | None = None,
    real_lengths: np.ndarray | None = None,
) -> BatchStats:
    """Summary of ``batches`` (steps as the batchers return them) over ``lengths``."""
    lengths = np.asarray(lengths)
    flat = flatten(batches)
    tokens = np.array([int(lengths[b].sum()) for b in flat], dtype=np.int64)
    sizes = np.array([len(b) for b in flat], dtype=np.int64)
    budget = token_budget if token_budget is not None else np.iinfo(np.int64).max
    frac = padding_fraction(
        batches, lengths, layout=layout, token_budget=token_budget, real_lengths=real_lengths
    )
    return BatchStats(
        steps=len(batches),
        batches=len(flat),
        samples=int(sizes.sum()),
        dropped=len(dropped(flat, len(lengths))),
        oversize=int(((sizes == 1) & (tokens > budget)).sum()),
        mean_batch_size=float(sizes.mean()) if len(flat) else 0.0,
        mean_tokens=float(tokens.mean()) if len(flat) else 0.0,
        max_tokens=int(tokens.max()) if len(flat) else 0,
        padding_fraction=frac,
        layout=layout,
    )


def _best_fit(order: np.ndarray, costs: np.ndarray, budget: int, max_size: int) -> list[list]:
    """Best-fit placement of ``order`` (see step 3); -> batches of sample indices."""
    smallest = int(costs.min()) if len(costs) else 0
    batches: list[list[int]] = []
    room: list[int] = []
    open_keys: list[tuple[int, int]] = []  # (room, batch id), sorted
    for i in order.tolist():
        c = int(costs[i])
        if c > budget:  # oversize: a batch of its own
            batches.append([i])
            room.append(0)
            continue
        pos = bisect.bisect_left(open_keys, (c, -1))  # least room that still fits c
        if pos < len(open_keys):
            b = open_keys.pop(pos)[1]
        else:
            b = len(batches)
            batches.append([])
            room.append(budget)
        batches[b].append(i)
        room[b] -= c
        if room[b] >= smallest and len(batches[b]) < max_size:
            bisect.insort(open_keys, (room[b], b))
    return batches


def _deal(batches: list[list], costs: np.ndarray, world_size: int, rng) -> Steps:
    """Shuffle, drop the remainder, group batches of similar cost into steps (step 4)."""
    arrays = [np.asarray(b, dtype=np.int64) for b in batches]
    perm = rng.permutation(len(arrays))
    totals = np.array([int(costs[arrays[k]].sum()) for k in perm], dtype=np.int64)
    by_cost = perm[np.argsort(-totals, kind="stable")]  # ties keep the shuffled order
    n_steps = len(arrays) // world_size
    kept = by_cost[: n_steps * world_size].reshape(n_steps, world_size)
    steps = []
    for row in kept[rng.permutation(n_steps)]:
        shift = int(rng.integers(world_size))
        steps.append([arrays[k] for k in np.roll(row, shift)])
    return steps


def _check_lengths(lengths: np.ndarray) -> np.ndarray:
    arr = np.asarray(lengths)
    ok = arr.ndim == 1 and (arr.size == 0 or np.issubdtype(arr.dtype, np.integer))
    require(ok, "lengths", lengths, "must be a 1-D integer array")
    require(bool((arr >= 1).all()), "lengths", lengths, "must all be >= 1")
    return arr.astype(np.int64)


def _check_common(seed: int, epoch: int, world_size: int) -> None:
    require(_int_at_least(seed, 0), "seed", seed, "must be an int >= 0")
    require(_int_at_least(epoch, 0), "epoch", epoch, "must be an int >= 0")
    require(_int_at_least(world_size, 1), "world_size", world_size, "must be an int >= 1")


def _int_at_least(value: object, low: int) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool) and value >= low
