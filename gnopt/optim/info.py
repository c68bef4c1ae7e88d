"""The statistics of one optimisation step."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Dict, Optional


@dataclass
class StepInfo:
    """What one ``step(x, y)`` did.

    ``loss`` is the minibatch objective before the update (without the weight-decay term);
    ``alpha`` the step size (eq. 40); ``rho`` the reduction ratio (eq. 42), ``None`` on steps
    where it was not computed; ``tau``/``gamma`` the damping after the step; ``rejected``
    marks a step that changed no parameter (``reason`` says why).
    """

    step: int
    loss: float
    alpha: Optional[float] = None
    rho: Optional[float] = None
    tau: Optional[float] = None
    gamma: Optional[float] = None
    grad_norm: Optional[float] = None
    update_norm: Optional[float] = None
    param_norm: Optional[float] = None
    model_decrease: Optional[float] = None
    rejected: bool = False
    reason: str = ""
    extra: Dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> Dict[str, object]:
        """A JSON-able dict (non-finite floats become ``None``)."""
        d = asdict(self)
        extra = d.pop("extra")
        d.update(extra)
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in d.items()}
