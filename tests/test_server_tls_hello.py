"""``stormguard serve --tls-cert/--tls-key``: TLS terminated in process, each ClientHello fingerprinted for identity.

The real server runs under uvicorn on 127.0.0.1 with a self-signed certificate; tshark records the loopback
interface meanwhile. curl and Python's ssl module each make a request to ``/_test/whoami`` (which echoes the
identity the server built) from a known client port, and headless Chromium loads it. For each, the JA3/JA4/SNI/ALPN the server saw must equal what
``read_capture`` computes from the recorded handshake, and the JA3 must equal tshark's own for that packet.
"""

from __future__ import annotations

import datetime
import errno
import html
import http.client
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from server_harness import ServerProcess, free_port, wait_healthy
from stormguard.features.capture.reader import read_capture

from stormguard.report import ReplayStats

HOST = "stormguard.test"


def _self_signed(tmp: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, HOST)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(HOST)]), critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp / "cert.pem", tmp / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


class TlsServer(ServerProcess):
    """The harness's server process, over HTTPS (self-signed: health checks do not verify the certificate)."""

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def start(self, timeout: float = 120.0) -> TlsServer:
        env = {**os.environ, "STORMGUARD_SERVER_SETTINGS": json.dumps(self.settings)}
        cmd = [sys.executable, "-m", "stormguard.server.cli", "serve", "--host", "127.0.0.1", "--port",
               str(self.port), "--log-level", "warning", *self.args]
        self.proc = subprocess.Popen(cmd, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        if wait_healthy(self.url + "/healthz", self.proc, timeout, verify=False):
            return self
        self.stop()
        raise RuntimeError(f"TLS server did not become healthy within {timeout} s:\n{self.output()}")


class Recorder:
    """tshark on the loopback interface, writing a pcapng of one TCP port; stops on SIGINT."""

    def __init__(self, port: int, out: Path) -> None:
        tshark = shutil.which("tshark")
        if tshark is None:
            pytest.skip("tshark not installed (Debian package tshark; .ci/run installs it)")
        self.out = out
        self.proc = subprocess.Popen([tshark, "-i", "lo", "-f", f"tcp port {port}", "-w", str(out)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 30
        assert self.proc.stderr is not None
        while time.monotonic() < deadline:  # "Capturing on 'Loopback: lo'" once the capture runs
            line = self.proc.stderr.readline()
            if "Capturing on" in line:
                return
            if not line and self.proc.poll() is not None:
                pytest.skip(f"tshark cannot capture on lo here (exit {self.proc.returncode})")
        self.proc.kill()
        pytest.fail("tshark did not start capturing within 30 s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            self.proc.wait(timeout=30)


def _python_client(port: int, cport: int) -> dict:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["http/1.1"])
    sock = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=("127.0.0.1", cport))
    conn = http.client.HTTPSConnection(HOST, port, context=ctx, timeout=10)
    conn.sock = ctx.wrap_socket(sock, server_hostname=HOST)
    conn.request("GET", "/_test/whoami", headers={"host": HOST})
    body = json.loads(conn.getresponse().read())
    conn.close()
    return body


def _curl_client(port: int, cport: int) -> dict:
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("curl not installed (.ci/run installs it)")
    out = subprocess.run([curl, "-sS", "-k", "--local-port", str(cport), "--resolve", f"{HOST}:{port}:127.0.0.1",
                          f"https://{HOST}:{port}/_test/whoami"], capture_output=True, text=True, timeout=30,
                         check=True).stdout
    return json.loads(out)


def _chromium_client(port: int) -> dict:
    """Headless Chromium loads /_test/whoami (its client port is its own choice; matched by fingerprint)."""
    chromium = shutil.which("chromium")
    if chromium is None:
        if os.environ.get("STORMGUARD_CORPUS"):
            pytest.fail("chromium not installed — required in CI ($STORMGUARD_CORPUS is set)")
        pytest.skip("chromium not installed (.ci/run installs it)")
    with tempfile.TemporaryDirectory(prefix="stormguard-chromium-") as profile:
        out = subprocess.run([chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                              "--no-first-run", "--disable-background-networking", "--disable-component-update",
                              "--disable-sync", "--disable-dev-shm-usage", "--ignore-certificate-errors",
                              f"--user-data-dir={profile}", f"--host-resolver-rules=MAP {HOST} 127.0.0.1",
                              "--dump-dom", f"https://{HOST}:{port}/_test/whoami"],
                             capture_output=True, text=True, timeout=90, check=True).stdout
    m = re.search(r"<pre[^>]*>(.*?)</pre>", out, flags=re.S)
    assert m, out[:500]
    return json.loads(html.unescape(m.group(1)))


def _hellos(path: Path, port: int) -> dict[int, dict]:
    if not path.exists():
        return {}
    return {r["src_port"]: r for r in read_capture(path, ReplayStats()) if r["proto"] == "tls" and r["dst_port"] == port}


def test_server_fingerprints_the_hello_it_received(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    conn_log = tmp_path / "conn.jsonl"
    server = TlsServer({"enable_test_routes": True},
                       args=("--tls-cert", str(cert), "--tls-key", str(key), "--conn-log", str(conn_log)))
    recorder = Recorder(server.port, tmp_path / "lo.pcapng")
    seen: dict[int, dict] = {}
    try:
        server.start()
        for client in (_python_client, _curl_client):
            for attempt in range(5):  # a free port can be taken by another process before the client binds it
                cport = free_port()
                try:
                    seen[cport] = client(server.port, cport)
                    break
                except (subprocess.CalledProcessError, OSError) as exc:
                    in_use = getattr(exc, "returncode", None) == 45 or getattr(exc, "errno", None) == errno.EADDRINUSE
                    if not in_use or attempt == 4:
                        raise
        browser = _chromium_client(server.port)
        # the capture lags the sockets: wait (bounded) until the handshakes are in the file before stopping it
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            recorded = _hellos(recorder.out, server.port)
            if set(seen) <= set(recorded) and any(r["ja3"] == browser["ja3"] for r in recorded.values()):
                break
            time.sleep(0.1)
    finally:
        server.stop()
        os.unlink(server.log.name)
        recorder.stop()
    rows = _hellos(recorder.out, server.port)
    tshark = subprocess.run(["tshark", "-n", "-r", str(recorder.out), "-d", f"tcp.port=={server.port},tls",
                             "-Y", "tls.handshake.type == 1", "-T", "fields", "-e", "tcp.srcport",
                             "-e", "tls.handshake.ja3"], capture_output=True, text=True, timeout=60,
                            check=True).stdout
    theirs = {int(p): j for p, j in (line.split("\t") for line in tshark.splitlines())}
    for cport, who in seen.items():
        assert who["ja3"] and who["ja4"] and who["sni"] == HOST and who["alpn"] in ("http/1.1", "h2,http/1.1"), who
        r = rows[cport]
        assert (who["ja3"], who["ja4"], who["sni"], who["alpn"]) == (r["ja3"], r["ja4"], r["sni"], r["alpn"])
        assert theirs[cport] == who["ja3"]
    assert len({w["ja3"] for w in seen.values()}) == 2  # curl and Python's ssl really differ
    # the server's connection log (written off the hot path, flushed at shutdown) holds the same fingerprints
    logged = {}
    for line in conn_log.read_text().splitlines():
        row = json.loads(line)
        if row.get("path") == "/_test/whoami":
            logged[row["src_port"]] = row
    for cport, who in seen.items():
        row = logged[cport]
        assert (row["ja3"], row["ja4"], row["sni"], row["alpn"]) == (who["ja3"], who["ja4"], who["sni"], who["alpn"])
        assert row["proto"] == "https"
    assert any(r["ja3"] == browser["ja3"] and r["ja4"] == browser["ja4"] for r in logged.values())
    # Chromium: its own client ports, several connections, and it permutes its extensions per connection (the
    # JA3s of its connections differ): the hello the server answered is the recorded one with the same JA3
    others = [r for p, r in rows.items() if p not in seen and r["sni"] == HOST]  # (health checks have no SNI)
    assert browser["sni"] == HOST and browser["alpn"] == "h2,http/1.1", browser
    same = [r for r in others if r["ja3"] == browser["ja3"]]
    assert same and all((r["ja4"], r["alpn"]) == (browser["ja4"], browser["alpn"]) for r in same), (browser, others)
    assert browser["ja3"] in {theirs[r["src_port"]] for r in others}
