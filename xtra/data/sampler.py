"""The order in which pretraining reads a dataset: an endless stream of seeded epoch permutations.

A batch is a pure function of (samples seen, batch size, dataset size, seed), so a resumed run reads
exactly the batches an uninterrupted one would, whichever loader (in memory or streamed) serves it.
"""

from __future__ import annotations

import torch


def step_seed(seed: int, step: int) -> int:
    return (seed * 1_000_003 + step * 7_919 + 17) % (2**63 - 1)


def batch_indices(samples_seen: int, batch_size: int, n: int, seed: int) -> torch.Tensor:
    """Indices of the next batch in an endless stream of seeded epoch permutations."""
    parts, pos, end = [], samples_seen, samples_seen + batch_size
    while pos < end:
        epoch, offset = divmod(pos, n)
        take = _epoch_permutation(n, seed, epoch)[offset: offset + end - pos]
        parts.append(take)
        pos += len(take)
    return torch.cat(parts)


_perm_cache: dict[tuple[int, int, int], torch.Tensor] = {}


def _epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    key = (n, seed, epoch)
    if key not in _perm_cache:
        if len(_perm_cache) > 4:
            _perm_cache.clear()
        _perm_cache[key] = torch.randperm(n, generator=torch.Generator().manual_seed(step_seed(seed, -1 - epoch)))
    return _perm_cache[key]
