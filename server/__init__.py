"""stormguard.server — the protected SSE hub: a Starlette app whose defence layers are pure-ASGI middleware.

Layer order (outermost first), as DESIGN.md fixes it: identity → breaker → reputation gate → limiter → quota →
handler. Each layer is usable on its own in any Starlette/FastAPI app; :func:`create_app` wires them around the
hub. The public names below are importable from here and load lazily, so ``import stormguard.server`` pulls in
neither Starlette nor any layer until one is used. Nothing here imports pandas: the server's hot path stays light.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from stormguard.server.ops.settings import ServerSettings

if TYPE_CHECKING:
    from stormguard.server.app import StormguardApp

#: Public name → the module that defines it.
_LAZY = {
    "IdentityMiddleware": "stormguard.server.layers.identity",
    "BreakerMiddleware": "stormguard.server.layers.breaker",
    "CircuitBreaker": "stormguard.server.layers.breaker",
    "ReputationGateMiddleware": "stormguard.server.layers.gate",
    "LimiterMiddleware": "stormguard.server.layers.limiter",
    "QuotaMiddleware": "stormguard.server.layers.quota",
    "TenantMiddleware": "stormguard.server.layers.tenants",
    "protect": "stormguard.server.mount",
    "build_stack": "stormguard.server.app",
}

__all__ = ["ServerSettings", "create_app", *_LAZY]


def create_app(settings: ServerSettings | None = None, **seams: Any) -> StormguardApp:
    """Build the app (imported lazily so that ``import stormguard.server`` does not pull Starlette in)."""
    from stormguard.server.app import create_app as _create_app

    return _create_app(settings, **seams)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'stormguard.server' has no attribute {name!r}")
