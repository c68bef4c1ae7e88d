"""A reproducible, checkpointable minibatch order."""

from __future__ import annotations

from typing import Any, Dict, Optional

import torch

__all__ = ["BatchSampler"]


class BatchSampler:
    """Minibatches of ``batch_size`` indices out of ``range(n)``, epoch by epoch.

    Each epoch is a fresh permutation drawn from a private ``torch.Generator`` seeded with
    ``seed`` (the global RNG is never touched); the incomplete last batch of an epoch is
    dropped. A ``batch_size`` of ``n`` or more gives the whole (reshuffled) set every step.
    :meth:`state_dict` holds the generator state, the current permutation and the position
    in it, so that a restored sampler continues with exactly the same batches.
    """

    def __init__(self, n: int, batch_size: int, seed: int = 0) -> None:
        if n < 1:
            raise ValueError(f"need at least one example; got n = {n}")
        self.n = int(n)
        self.batch_size = min(int(batch_size), self.n)
        self.generator = torch.Generator().manual_seed(int(seed))
        self.perm: Optional[torch.Tensor] = None
        self.pos = 0
        self.epoch = 0

    def next(self) -> torch.Tensor:
        """The indices (``batch_size``,) of the next minibatch."""
        if self.perm is None or self.pos + self.batch_size > self.n:
            self.perm = torch.randperm(self.n, generator=self.generator)
            self.pos = 0
            self.epoch += 1
        idx = self.perm[self.pos:self.pos + self.batch_size]
        self.pos += self.batch_size
        return idx

    def state_dict(self) -> Dict[str, Any]:
        return {"n": self.n, "batch_size": self.batch_size, "generator": self.generator.get_state(),
                "perm": None if self.perm is None else self.perm.clone(), "pos": self.pos, "epoch": self.epoch}

    def load_state_dict(self, sd: Dict[str, Any]) -> None:
        if sd["n"] != self.n or sd["batch_size"] != self.batch_size:
            raise ValueError(f"sampler state is for n={sd['n']}, batch {sd['batch_size']}; "
                             f"this sampler has n={self.n}, batch {self.batch_size}")
        self.generator.set_state(sd["generator"])
        self.perm = None if sd["perm"] is None else sd["perm"].clone()
        self.pos, self.epoch = int(sd["pos"]), int(sd["epoch"])
