"""The ``[crowdsec]`` section made concrete: which directions run, with which credentials, as tasks.

Used by ``stormguard serve`` (both directions beside the server, ranges consulted by its gate) and by ``stormguard
crowdsec pull|push`` (one direction against a shared store, no server). Credentials: the bouncer key from
``bouncer_key`` / ``STORMGUARD_CROWDSEC_BOUNCER_KEY`` or ``bouncer_key_file``; the machine from
``credentials_file`` (cscli's format) or ``machine_id`` + ``machine_password`` / ``STORMGUARD_CROWDSEC_MACHINE_PASSWORD``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from pathlib import Path
from typing import Any

from stormguard.scoring.enforce.crowdsec_export import AlertExporter
from stormguard.scoring.enforce.crowdsec_import import DecisionImporter
from stormguard.scoring.enforce.lapi import LapiError, LocalApi, MachineCredentials
from stormguard.scoring.enforce.ranges import RangeTable
from stormguard.scoring.enforce.spool import Spool

from stormguard.config import ConfigError, CrowdsecConfig

log = logging.getLogger("stormguard.crowdsec")


def bouncer_key(cfg: CrowdsecConfig) -> str:
    if cfg.bouncer_key:
        return cfg.bouncer_key.strip()
    if cfg.bouncer_key_file:
        try:
            return Path(cfg.bouncer_key_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"crowdsec.bouncer_key_file: {exc}") from None
    return ""


def machine(cfg: CrowdsecConfig) -> MachineCredentials | None:
    if cfg.credentials_file:
        try:
            creds = MachineCredentials.from_file(cfg.credentials_file)
        except LapiError as exc:
            raise ConfigError(f"crowdsec.credentials_file: {exc}") from None
        return creds if not cfg.lapi_url else MachineCredentials(cfg.lapi_url, creds.login, creds.password)
    if cfg.machine_id and cfg.machine_password:
        return MachineCredentials(cfg.lapi_url, cfg.machine_id, cfg.machine_password)
    if cfg.machine_id or cfg.machine_password:
        raise ConfigError("crowdsec: machine_id and machine_password go together (or use credentials_file)")
    return None


class CrowdsecBridge:
    """Importer and/or exporter as configured; :meth:`start` / :meth:`stop` run them as tasks."""

    def __init__(self, importer: DecisionImporter | None, exporter: AlertExporter | None,
                 apis: list[LocalApi]) -> None:
        self.importer = importer
        self.exporter = exporter
        self.apis = apis
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    @classmethod
    def from_config(cls, cfg: CrowdsecConfig, engine: Any, ranges: RangeTable | None = None, *,
                    want_import: bool = True, want_export: bool = True) -> CrowdsecBridge | None:
        """None when nothing is configured (no ``lapi_url`` and no credentials file)."""
        creds = machine(cfg)
        url = cfg.lapi_url or (creds.url if creds else "")
        if not url:
            return None
        key = bouncer_key(cfg)
        importer = exporter = None
        apis = []
        if want_import and cfg.import_decisions and key:
            api = LocalApi(url, bouncer_key=key, timeout=cfg.timeout)
            apis.append(api)
            importer = DecisionImporter(engine.store, ranges if ranges is not None else RangeTable(), api,
                                        interval=cfg.pull_interval, max_backoff=cfg.max_backoff,
                                        full_pulls=cfg.full_pulls)
        if want_export and cfg.export_blocks and creds is not None:
            api = LocalApi(url, machine=creds, timeout=cfg.timeout)
            apis.append(api)
            exporter = AlertExporter(engine, api, Spool(cfg.queue_path, cfg.queue_max),
                                     scan_interval=cfg.scan_interval, push_interval=cfg.push_interval,
                                     batch=cfg.push_batch, max_backoff=cfg.max_backoff,
                                     hostname=socket.gethostname())
        if importer is None and exporter is None:
            log.warning("crowdsec: lapi_url %s is set but neither a bouncer key nor machine credentials are", url)
            return None
        return cls(importer, exporter, apis)

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        if self.importer is not None:
            self._tasks.append(loop.create_task(self.importer.run(self._stop), name="stormguard-crowdsec-import"))
        if self.exporter is not None:
            self._tasks.append(loop.create_task(self.exporter.run(self._stop), name="stormguard-crowdsec-export"))

    async def stop(self) -> None:
        self._stop.set()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(t, 5.0)
        self._tasks.clear()
        for api in self.apis:
            await api.close()
        if self.exporter is not None:
            self.exporter.spool.close()
