"""A real CrowdSec Local API for tests: Debian's ``crowdsec`` binary run from a private configuration.

The Local API listens on a free loopback port, keeps its SQLite database, credentials and profiles in a temporary
folder, runs no acquisition (``-no-cs``) and has no online (Central API) client. ``cscli`` runs against the same
configuration to add machines, bouncers and decisions. ``.ci/run`` unpacks the package into
``$STORMGUARD_CROWDSEC_ROOT`` (the package's post-install needs internet); an installed ``crowdsec`` works too.
Without it the tests skip with the reason, except under CI, where they fail.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from server_harness import free_port

DEFAULT_ROOT = "/opt/stormguard-ci/crowdsec"


def binaries() -> tuple[str, str, Path] | None:
    """(crowdsec, cscli, plugin dir) or None."""
    root = Path(os.environ.get("STORMGUARD_CROWDSEC_ROOT", DEFAULT_ROOT))
    cs, cli = root / "usr/bin/crowdsec", root / "usr/bin/cscli"
    if cs.is_file() and cli.is_file():
        return str(cs), str(cli), root / "usr/lib/crowdsec/plugins"
    cs_path, cli_path = shutil.which("crowdsec"), shutil.which("cscli")
    if cs_path and cli_path:
        return cs_path, cli_path, Path("/usr/lib/crowdsec/plugins")
    return None


def need_crowdsec() -> tuple[str, str, Path]:
    found = binaries()
    if found is None:
        reason = ("crowdsec not found: .ci/run unpacks Debian's crowdsec into $STORMGUARD_CROWDSEC_ROOT "
                  f"(default {DEFAULT_ROOT}); or apt-get download crowdsec && dpkg-deb -x crowdsec_*.deb ROOT")
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    return found


CONFIG = """\
common:
  daemonize: false
  log_media: file
  log_dir: {d}/log/
  log_level: info
  working_dir: .
config_paths:
  config_dir: {d}/
  data_dir: {d}/data/
  simulation_path: {d}/simulation.yaml
  hub_dir: {d}/hub/
  index_path: {d}/hub/.index.json
  notification_dir: {d}/notifications/
  plugin_dir: {plugins}/
crowdsec_service:
  enable: false
  acquisition_path: {d}/acquis.yaml
cscli:
  output: json
db_config:
  log_level: info
  type: sqlite
  db_path: {d}/data/crowdsec.db
  use_wal: true
api:
  client:
    insecure_skip_verify: false
    credentials_path: {d}/cscli_credentials.yaml
  server:
    log_level: info
    listen_uri: 127.0.0.1:{port}
    profiles_path: {d}/profiles.yaml
    trusted_ips: [127.0.0.1, "::1"]
prometheus:
  enabled: false
"""

PROFILES = """\
name: default_ip_remediation
filters:
 - Alert.Remediation == true && Alert.GetScope() == "Ip"
decisions:
 - type: ban
   duration: 4h
on_success: break
"""


class CrowdsecLapi:
    def __init__(self, workdir: Path) -> None:
        self.crowdsec, self.cscli_bin, plugins = need_crowdsec()
        self.dir = workdir
        self.port = free_port()
        for sub in ("data", "hub", "log", "notifications"):
            (workdir / sub).mkdir(parents=True, exist_ok=True)
        self.config = workdir / "config.yaml"
        self.config.write_text(CONFIG.format(d=workdir, plugins=plugins, port=self.port))
        (workdir / "profiles.yaml").write_text(PROFILES)
        (workdir / "simulation.yaml").write_text("simulation: false\n")
        (workdir / "acquis.yaml").write_text("")
        (workdir / "cscli_credentials.yaml").write_text("")
        self.proc: subprocess.Popen[bytes] | None = None
        self.stdout = (workdir / "log" / "stdout.log").open("ab")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> CrowdsecLapi:
        self.proc = subprocess.Popen([self.crowdsec, "-c", str(self.config), "-no-cs"], stdout=self.stdout,
                                     stderr=subprocess.STDOUT, cwd=self.dir)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"crowdsec exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if httpx.get(self.url + "/v1/decisions/stream", timeout=1.0).status_code == 403:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"crowdsec Local API did not answer on {self.url} within {timeout} s:\n{self.log()}")

    def stop(self, timeout: float = 20.0) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=timeout)
        self.proc = None

    def log(self) -> str:
        parts = []
        for f in sorted((self.dir / "log").glob("*.log")):
            parts.append(f.read_text(errors="replace")[-4000:])
        return "\n".join(parts)

    def cscli(self, *args: str) -> str:
        done = subprocess.run([self.cscli_bin, "-c", str(self.config), *args], capture_output=True, text=True,
                              timeout=60)
        if done.returncode != 0:
            raise RuntimeError(f"cscli {' '.join(args)}: exit {done.returncode}: {done.stderr[-2000:]}")
        return done.stdout

    def add_machine(self, name: str = "stormguard") -> Path:
        """``cscli machines add NAME --auto -f FILE``: the credentials file stormguard reads."""
        path = self.dir / f"{name}-credentials.yaml"
        self.cscli("machines", "add", name, "--auto", "-f", str(path), "--url", self.url)
        # cscli itself needs a machine too (decisions add/list log in with its credentials_path)
        if not (self.dir / "cscli_credentials.yaml").read_text().strip():
            self.cscli("machines", "add", "cscli", "--auto", "-f", str(self.dir / "cscli_credentials.yaml"),
                       "--url", self.url)
        return path

    def add_bouncer(self, name: str) -> str:
        return self.cscli("bouncers", "add", name, "-o", "raw").strip()

    def decisions(self) -> list[dict]:
        """Every active decision as ``{value, type, scope, scenario, origin, duration}`` (any origin)."""
        out = json.loads(self.cscli("decisions", "list", "--all", "-o", "json") or "null") or []
        rows = []
        for alert in out:
            for d in alert.get("decisions") or []:
                rows.append(d)
        return rows


def lapi_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CrowdsecLapi]:
    lapi = CrowdsecLapi(tmp_path_factory.mktemp("crowdsec")).start()
    try:
        lapi.add_machine()
        yield lapi
    finally:
        lapi.stop()
