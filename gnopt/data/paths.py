"""Where dataset files are read from and cached to.

Resolution order: an explicit ``data_dir`` argument, else the ``GNOPT_DATA``
environment variable, else ``$XDG_CACHE_HOME/gnopt`` (``~/.cache/gnopt`` when
``XDG_CACHE_HOME`` is unset or empty).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Union

__all__ = ["ENV_VAR", "PathLike", "resolve_data_dir", "default_data_dir"]

ENV_VAR = "GNOPT_DATA"
PathLike = Union[str, "os.PathLike[str]"]


def default_data_dir(environ: Mapping[str, str] | None = None) -> Path:
    """The per-user cache folder: ``$XDG_CACHE_HOME/gnopt`` or ``~/.cache/gnopt``."""
    env = os.environ if environ is None else environ
    base = env.get("XDG_CACHE_HOME") or ""
    root = Path(base).expanduser() if base else Path("~").expanduser() / ".cache"
    return root / "gnopt"


def resolve_data_dir(
    data_dir: PathLike | None = None, environ: Mapping[str, str] | None = None
) -> Path:
    """Return the data directory (argument > ``GNOPT_DATA`` > user cache).

    The directory is not created here; writers create it when they cache.
    ``environ`` defaults to ``os.environ`` (injectable for tests).
    """
    if data_dir is not None and str(data_dir) != "":
        return Path(data_dir).expanduser()
    env = os.environ if environ is None else environ
    from_env = env.get(ENV_VAR) or ""
    if from_env:
        return Path(from_env).expanduser()
    return default_data_dir(env)
