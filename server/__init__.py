"""stormguard.server — the protected SSE hub: a Starlette app whose defence layers are pure-ASGI middleware.

Layer order (outermost first), as DESIGN.md fixes it: identity → breaker → reputation gate → limiter → quota →
handler. Each layer is usable on its own in any Starlette/FastAPI app; :func:`stormguard.server.app.create_app`
wires them around the hub. Nothing here imports pandas: the server's hot path stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from stormguard.server.ops.settings import ServerSettings

if TYPE_CHECKING:
    from stormguard.server.app import StormguardApp

__all__ = ["ServerSettings", "create_app"]


def create_app(settings: ServerSettings | None = None, **seams: Any) -> StormguardApp:
    """Build the app (imported lazily so that ``import stormguard.server`` does not pull Starlette in)."""
    from stormguard.server.app import create_app as _create_app

    return _create_app(settings, **seams)
