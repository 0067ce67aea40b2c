"""stormguard.scoring — reputations: rules and tiers, decay, the store (memory or Redis), dynamic thresholds.

Modules, each named for what it holds:

* :mod:`.reputation` — the ``Reputation`` entry and the shared arithmetic (decay, clamp, rank, ``apply_op``);
* :mod:`.rules`, :mod:`.evidence`, :mod:`.tiers` — rules as data, list-based evidence and allow-lists, tiers;
* :mod:`.engine` — evidence → store update, entry → admission ``Decision`` (what the server's gate calls);
* :mod:`.stores` — ``open_store(url)``: ``memory://`` (bounded LRU) and ``redis://`` (Lua, failover), plus a
  blocking facade (:mod:`.stores.sync`) for the CLI;
* :mod:`.threshold`, :mod:`.geo` — the dynamic block threshold and GeoIP/ASN heat (optional databases);
* :mod:`.cli` — ``stormguard reputation ...``.

Algorithms never import a storage backend and stores know nothing of rules, as in the ``limits`` library.
"""

from importlib import import_module
from typing import Any

# Loaded on first use (PEP 562): ``stormguard --help`` and the capture parser must not pay for asyncio, redis and
# the rule engine just because the command line registers ``stormguard reputation``.
_EXPORTS = {
    "Decision": "stormguard.scoring.engine",
    "ReputationEngine": "stormguard.scoring.engine",
    "Reputation": "stormguard.scoring.reputation",
    "MemoryStore": "stormguard.scoring.stores",
    "ReputationStore": "stormguard.scoring.stores",
    "open_store": "stormguard.scoring.stores",
    "SyncStore": "stormguard.scoring.stores.sync",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'stormguard.scoring' has no attribute {name!r}")
    return getattr(import_module(module), name)
