"""edgeft: few-data transfer from vision foundation models to edge-ready students."""
from __future__ import annotations

__version__ = "0.1.0"
