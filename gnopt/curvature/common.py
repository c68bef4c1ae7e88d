"""Input checks and the shared set-up of every curvature function."""

from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor, nn

from ..layers import Network, parse_model
from ..losses import Loss, get_loss
from .trace import Trace, check_input, forward_trace


def prepare(model: nn.Module, x: Tensor, y: Tensor, loss: "str | Loss") -> Tuple[Network, Loss, Trace]:
    """Parse the model, check the batch, run a forward pass without autograd.

    Raises ``ValueError`` for an unsupported model, a bad input, targets that do not fit the
    loss, or a non-finite model output.
    """
    net = parse_model(model)
    lossfn = get_loss(loss)
    check_input(net, x)
    if not isinstance(y, Tensor):
        raise ValueError(f"targets must be a torch.Tensor; got {type(y).__name__}")
    if y.shape[:1] != x.shape[:1]:
        raise ValueError(f"{y.shape[0] if y.dim() else 'scalar'} targets for a batch of {x.shape[0]} inputs")
    if torch.is_floating_point(y) and not torch.isfinite(y).all():
        raise ValueError("the targets contain NaN or infinite values")
    with torch.no_grad():
        trace = forward_trace(net, x)
    lossfn.check(trace.output, y)
    if not torch.isfinite(trace.output).all():
        raise ValueError("the model output is not finite for this batch (check the parameters and input scale)")
    return net, lossfn, trace
