"""A client of the CrowdSec Local API (LAPI), the two roles stormguard plays there.

* **bouncer**: ``GET /v1/decisions/stream`` with the ``X-Api-Key`` header (a key from ``cscli bouncers add``).
  ``startup=true`` returns every active decision, later pulls only what changed since this bouncer's last pull.
* **machine** (a "watcher"): ``POST /v1/watchers/login`` with the credentials ``cscli machines add`` wrote, then
  ``POST /v1/alerts`` with a bearer token (it expires: a 401 logs in again once).

Errors are :class:`LapiError` with a message that says what was asked, what came back and what to check: a wrong
key, a Local API that answers garbage, a timeout. The caller decides whether to retry (it backs off).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx


def _user_agent() -> str:
    # name/version: the Local API parses it, and refuses a machine login whose User-Agent has no version
    from stormguard import __version__

    return f"stormguard/{__version__}"


_DURATION = re.compile(r"(-?\d+(?:\.\d+)?)(h|ms|us|µs|ns|m|s)")
_UNIT = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}


class LapiError(OSError):
    """A Local API call that failed; ``status`` is the HTTP status when there was one (401: wrong credentials)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def parse_duration(text: str) -> float:
    """Seconds of a Go duration as the Local API writes them (``"3h59m58.5s"``, ``"-9.4ms"``, ``"90s"``)."""
    if not isinstance(text, str) or not text:
        raise ValueError(f"not a duration: {text!r}")
    sign = -1.0 if text.startswith("-") else 1.0
    body = text.lstrip("+-")
    pos, total = 0, 0.0
    for m in _DURATION.finditer(body):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNIT[m.group(2)]
        pos = m.end()
    if pos != len(body) or pos == 0:
        raise ValueError(f"not a duration: {text!r}")
    return sign * total


def go_duration(seconds: float) -> str:
    """``seconds`` as a Go duration the Local API accepts (whole seconds, at least 1)."""
    return f"{max(1, int(round(seconds)))}s"


@dataclass(frozen=True)
class MachineCredentials:
    url: str
    login: str
    password: str

    @classmethod
    def from_file(cls, path: str | Path) -> MachineCredentials:
        """cscli's ``local_api_credentials.yaml`` (``url:``, ``login:``, ``password:``)."""
        import yaml

        p = Path(path)
        try:
            data = yaml.safe_load(p.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as exc:
            raise LapiError(f"{p}: cannot read machine credentials: {exc}") from None
        if not isinstance(data, dict):
            raise LapiError(f"{p}: expected url/login/password keys (a file written by cscli machines add)")
        missing = [k for k in ("url", "login", "password") if not data.get(k)]
        if missing:
            raise LapiError(f"{p}: missing {', '.join(missing)} (a file written by cscli machines add -f)")
        return cls(str(data["url"]), str(data["login"]), str(data["password"]))


class LocalApi:
    """Async Local API client. ``bouncer_key`` for :meth:`stream`, ``machine`` for :meth:`push_alerts`."""

    def __init__(self, url: str, *, bouncer_key: str | None = None, machine: MachineCredentials | None = None,
                 timeout: float = 5.0, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.url = url.rstrip("/")
        self.bouncer_key = bouncer_key
        self.machine = machine
        self._client = httpx.AsyncClient(base_url=self.url, timeout=timeout, transport=transport,
                                         headers={"User-Agent": _user_agent()})
        self._token: str | None = None

    async def close(self) -> None:
        await self._client.aclose()

    async def _request(self, method: str, path: str, **kw: Any) -> Any:
        try:
            r = await self._client.request(method, path, **kw)
        except httpx.TimeoutException:
            raise LapiError(f"{method} {self.url}{path}: timed out") from None
        except httpx.HTTPError as exc:
            raise LapiError(f"{method} {self.url}{path}: {type(exc).__name__}: {exc or 'connection failed'}") \
                from None
        if r.status_code in (401, 403):
            raise LapiError(f"{method} {self.url}{path}: {r.status_code} {_snippet(r.text)} "
                            "(check the bouncer key / machine credentials)", r.status_code)
        if r.status_code >= 300:
            raise LapiError(f"{method} {self.url}{path}: HTTP {r.status_code}: {_snippet(r.text)}", r.status_code)
        if not r.content:
            return None
        try:
            return r.json()
        except ValueError:
            raise LapiError(f"{method} {self.url}{path}: not JSON: {_snippet(r.text)}", r.status_code) from None

    # -- bouncer ---------------------------------------------------------------------------------------------
    async def stream(self, startup: bool = False) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """``(new, deleted)`` decisions since this bouncer's last pull (every active one with ``startup``)."""
        if not self.bouncer_key:
            raise LapiError("no bouncer key (cscli bouncers add NAME; [crowdsec] bouncer_key or "
                            "STORMGUARD_CROWDSEC_BOUNCER_KEY)")
        body = await self._request("GET", "/v1/decisions/stream", params={"startup": "true" if startup else "false"},
                                   headers={"X-Api-Key": self.bouncer_key})
        if not isinstance(body, dict):
            raise LapiError(f"GET {self.url}/v1/decisions/stream: expected an object with new/deleted, "
                            f"got {_snippet(repr(body))}")
        new, deleted = body.get("new") or [], body.get("deleted") or []
        if not isinstance(new, list) or not isinstance(deleted, list):
            raise LapiError(f"GET {self.url}/v1/decisions/stream: new/deleted are not lists")
        return new, deleted

    # -- machine ---------------------------------------------------------------------------------------------
    async def login(self) -> str:
        if self.machine is None:
            raise LapiError("no machine credentials (cscli machines add NAME --auto -f FILE; "
                            "[crowdsec] credentials_file)")
        body = await self._request("POST", "/v1/watchers/login",
                                   json={"machine_id": self.machine.login, "password": self.machine.password,
                                         "scenarios": []})
        token = body.get("token") if isinstance(body, dict) else None
        if not isinstance(token, str) or not token:
            raise LapiError(f"POST {self.url}/v1/watchers/login: no token in {_snippet(repr(body))}")
        self._token = token
        return token

    async def push_alerts(self, alerts: list[dict[str, Any]]) -> list[str]:
        """POST the alerts (one call); the ids the Local API gave them."""
        if self._token is None:
            await self.login()
        try:
            ids = await self._request("POST", "/v1/alerts", json=alerts,
                                      headers={"Authorization": f"Bearer {self._token}"})
        except LapiError as exc:
            if exc.status != 401:
                raise
            await self.login()            # the token expired (an hour by default): once more with a new one
            ids = await self._request("POST", "/v1/alerts", json=alerts,
                                      headers={"Authorization": f"Bearer {self._token}"})
        return [str(i) for i in ids] if isinstance(ids, list) else []

    async def check_bouncer(self, probe: str = "127.0.0.1") -> int:
        """Validate the bouncer key without moving its stream position (``stormguard doctor``): the number of
        active decisions on ``probe``."""
        if not self.bouncer_key:
            raise LapiError("no bouncer key")
        body = await self._request("GET", "/v1/decisions", params={"ip": probe},
                                   headers={"X-Api-Key": self.bouncer_key})
        return len(body) if isinstance(body, list) else 0


def _snippet(text: str, n: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[:n] + "…"
