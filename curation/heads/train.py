"""Fit a scoring head on stored embeddings: seeded split, AdamW on CPU, held-out metrics.

Classifier heads train with ``BCEWithLogitsLoss`` on a class-stratified split and report
held-out ROC AUC (:func:`roc_auc`); regressor heads train with MSE and report held-out
Spearman correlation. The same inputs and seed give bit-identical weights on the same
machine (the torch RNG is forked, so the caller's global RNG state is left untouched).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from curation.heads.modules import Head, head_class

__all__ = ["average_ranks", "fit_head", "roc_auc", "split_indices"]

MIN_PER_CLASS = 2


def average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of ``x``; tied values share the average of their ranks."""
    x = np.asarray(x)
    n = x.shape[0]
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    bounds = np.flatnonzero(xs[1:] != xs[:-1]) + 1
    starts = np.concatenate(([0], bounds))
    ends = np.concatenate((bounds, [n]))
    ranks = np.empty(n, dtype=np.float64)
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)
    return ranks


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """ROC AUC = P(score of a random positive > a random negative), ties counted 1/2,
    via the Mann-Whitney rank sum (average ranks for ties)."""
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    labels = np.asarray(labels).reshape(-1)
    if scores.shape != labels.shape:
        raise ValueError(f"scores {scores.shape} and labels {labels.shape} differ in length")
    if not np.isfinite(scores).all():
        raise ValueError(f"scores contain {int((~np.isfinite(scores)).sum())} non-finite values")
    pos = labels == 1
    n_pos, n_neg = int(pos.sum()), int((labels == 0).sum())
    if n_pos + n_neg != labels.size or n_pos == 0 or n_neg == 0:
        raise ValueError(f"labels must be 0/1 with both classes present, got {np.unique(labels)}")
    rank_sum = average_ranks(scores)[pos].sum()
    return float((rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def split_indices(
    labels: np.ndarray, *, seed: int, holdout: float, stratified: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded (train, holdout) index arrays, sorted; stratified per label if asked."""
    rng = np.random.default_rng(seed)
    groups = (
        [np.flatnonzero(labels == c) for c in np.unique(labels)]
        if stratified
        else [np.arange(labels.shape[0])]
    )
    train, hold = [], []
    for idx in groups:
        idx = rng.permutation(idx)
        n_hold = round(holdout * idx.size)
        hold.append(idx[:n_hold])
        train.append(idx[n_hold:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(hold))


def _validate(
    cls: type[Head], embeddings: Any, labels: Any, holdout: float, kwargs: Mapping[str, Any]
) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(embeddings), np.asarray(labels)
    if x.ndim != 2 or not np.issubdtype(x.dtype, np.number):
        raise ValueError(f"embeddings must be a numeric (N, D) array, got {x.dtype} {x.shape}")
    if y.ndim != 1 or y.shape[0] != x.shape[0]:
        raise ValueError(f"labels must have shape (N,) = ({x.shape[0]},), got {y.shape}")
    if kwargs.get("input_size", x.shape[1]) != x.shape[1]:
        raise ValueError(
            f"embeddings have D={x.shape[1]} but the head's input_size={kwargs['input_size']}"
        )
    if not 0.0 < holdout < 1.0:
        raise ValueError(f"holdout: must be in (0, 1), got {holdout!r}")
    bad_rows = np.flatnonzero(~np.isfinite(x).all(axis=1))
    if bad_rows.size:
        raise ValueError(f"embeddings: {bad_rows.size} rows hold NaN/inf, e.g. rows {bad_rows[:5]}")
    if not np.issubdtype(y.dtype, np.number) and y.dtype != np.bool_:
        raise ValueError(f"labels must be numeric, got dtype {y.dtype}")
    y = y.astype(np.float64)
    if not np.isfinite(y).all():
        raise ValueError(f"labels: {int((~np.isfinite(y)).sum())} are NaN/inf")
    if cls.kind == "classifier":
        bad = np.setdiff1d(np.unique(y), [0.0, 1.0])
        if bad.size:
            raise ValueError(f"classifier labels must be 0 or 1, got other values {bad[:10]}")
    return x.astype(np.float32), y.astype(np.float32)


def _check_split(y: np.ndarray, train: np.ndarray, hold: np.ndarray, classifier: bool) -> None:
    for split, idx in (("train", train), ("holdout", hold)):
        if classifier:
            counts = {c: int((y[idx] == c).sum()) for c in (0, 1)}
            if min(counts.values()) < MIN_PER_CLASS:
                raise ValueError(
                    f"{split} split has class counts {counts}; need >= {MIN_PER_CLASS} "
                    f"examples of each class (labels hold {int((y == 0).sum())} zeros, "
                    f"{int((y == 1).sum())} ones)"
                )
        elif idx.size < 3:
            raise ValueError(f"{split} split has {idx.size} examples; need >= 3")


def _train(module, x, y, loss_fn, seed, epochs, lr, weight_decay, batch_size) -> float:
    """Minibatch AdamW over (x, y) with a seeded shuffle; returns the last epoch's mean loss."""
    opt = torch.optim.AdamW(module.parameters(), lr=lr, weight_decay=weight_decay)
    gen = torch.Generator().manual_seed(seed)
    module.train()
    n, total = x.shape[0], 0.0
    for _ in range(epochs):
        perm, total = torch.randperm(n, generator=gen), 0.0
        for start in range(0, n, batch_size):
            idx = perm[start : start + batch_size]
            loss = loss_fn(module(x[idx]), y[idx])  # (b,) vs (b,)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * idx.numel()
    return total / n


def fit_head(
    name: str,
    embeddings: np.ndarray,
    labels: np.ndarray,
    *,
    seed: int = 0,
    holdout: float = 0.2,
    epochs: int = 100,
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
    batch_size: int = 128,
    head_kwargs: Mapping[str, Any] | None = None,
    num_threads: int | None = 1,
) -> tuple[Head, dict[str, Any]]:
    """Train head ``name`` on ``embeddings`` (N, D) -> ``labels`` (N,); returns the module (eval
    mode, CPU) and held-out metrics: ``auc`` (classifiers) or ``spearman`` + ``mse``
    (regressors), plus ``n_train``, ``n_holdout`` (``n_holdout_positive`` for classifiers),
    the last epoch's mean ``train_loss`` and the fit settings.

    ``head_kwargs`` go to the head's constructor (``input_size`` defaults to D).
    ``num_threads``: torch intra-op threads while fitting (restored afterwards; ``None`` keeps
    the current setting). One thread is fastest for these small heads and robust on shared
    CPUs, where spinning OpenMP workers can make a fit 10x slower.
    """
    cls = head_class(name)
    kwargs = dict(head_kwargs or {})
    x, y = _validate(cls, embeddings, labels, holdout, kwargs)
    for field, value in (("epochs", epochs), ("batch_size", batch_size)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{field}: must be a positive int, got {value!r}")
    if not lr > 0:
        raise ValueError(f"lr: must be > 0, got {lr!r}")
    classifier = cls.kind == "classifier"
    train, hold = split_indices(y, seed=seed, holdout=holdout, stratified=classifier)
    _check_split(y, train, hold, classifier)
    kwargs.setdefault("input_size", x.shape[1])
    x_tr, y_tr = torch.from_numpy(x[train]), torch.from_numpy(y[train])
    loss_fn = torch.nn.BCEWithLogitsLoss() if classifier else torch.nn.MSELoss()

    threads = torch.get_num_threads()
    try:
        if num_threads is not None:
            torch.set_num_threads(num_threads)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            module = cls(**kwargs)
            train_loss = _train(
                module, x_tr, y_tr, loss_fn, seed, epochs, lr, weight_decay, batch_size
            )
            module.eval()
            with torch.no_grad():
                pred = module(torch.from_numpy(x[hold])).double().numpy()  # (n_holdout,)
    finally:
        torch.set_num_threads(threads)

    metrics: dict[str, Any] = {"n_train": int(train.size), "n_holdout": int(hold.size)}
    if classifier:
        metrics["auc"] = roc_auc(pred, y[hold])
        metrics["n_holdout_positive"] = int(y[hold].sum())
    else:
        from scipy.stats import spearmanr

        metrics["spearman"] = float(spearmanr(pred, y[hold]).statistic)
        metrics["mse"] = float(np.mean((pred - y[hold]) ** 2))
    metrics.update(
        train_loss=train_loss,
        seed=seed,
        holdout=holdout,
        epochs=epochs,
        lr=lr,
        weight_decay=weight_decay,
        batch_size=batch_size,
    )
    return module, metrics
