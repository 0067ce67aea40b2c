"""stormguard — keep a Server-Sent-Events service alive and fair under reconnect storms and abusive clients.

This package holds what every part shares: the connection-record schema (:mod:`stormguard.schema`), replay
counters (:mod:`stormguard.report`) and the command line (:mod:`stormguard.cli`). The pipeline lives in
``stormguard.features`` (parse, fingerprint, client vectors), ``stormguard.models``, ``stormguard.scoring`` and
``stormguard.server``.
"""

__version__ = "0.1.0"
