"""cosyvoice-sidecar: streaming DashScope CosyVoice speech over gRPC from a warm WebSocket pool."""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["__version__"]
