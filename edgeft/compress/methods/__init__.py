"""Transfer methods, one module each, registered in `METHODS`."""
from __future__ import annotations

from edgeft.compress.methods.base import METHODS, Method, TransferContext
from edgeft.compress.methods import baselines  # noqa: F401  (registers the baselines)
from edgeft.compress.methods import aft, kdep  # noqa: F401  (registers aft, kdep)
from edgeft.compress.methods import irf  # noqa: F401  (registers irf)
from edgeft.compress.methods import digg, ota  # noqa: F401  (registers digg, ota, digg-irf)

__all__ = ["METHODS", "Method", "TransferContext"]
