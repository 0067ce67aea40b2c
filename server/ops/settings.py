"""Server settings: the ``[server]`` section of :mod:`stormguard.config` under the name the server uses.

One dataclass holds every default DESIGN.md gives, so TOML (``[server]``), ``STORMGUARD_SERVER_<FIELD>`` environment
variables and the JSON hand-over to worker processes (``$STORMGUARD_SERVER_SETTINGS``) all map onto its fields. The
stream tiers are derived from the ``[reputation]`` tier table (:func:`stormguard.config.server_tiers_from`).

Kept free of Starlette/uvicorn imports so the command line and config loaders can build it cheaply.
"""

from __future__ import annotations

from stormguard.config import SERVER_SETTINGS_ENV as ENV_VAR
from stormguard.config import ServerConfig as ServerSettings
from stormguard.config import TierLimits, server_tiers_from
from stormguard.config import default_server_tiers as default_tiers

__all__ = ["ENV_VAR", "ServerSettings", "TierLimits", "default_tiers", "server_tiers_from"]
