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

from stormguard.scoring.engine import Decision, ReputationEngine
from stormguard.scoring.reputation import Reputation
from stormguard.scoring.stores import MemoryStore, ReputationStore, open_store
from stormguard.scoring.stores.sync import SyncStore

__all__ = ["Decision", "MemoryStore", "Reputation", "ReputationEngine", "ReputationStore", "SyncStore",
           "open_store"]
