"""TLS handshake rate of the server with and without in-process ClientHello fingerprinting, in one run.

    python bench/tls_handshake.py                  # 5 interleaved runs of 400 handshakes each, 2 client threads
    python bench/tls_handshake.py --runs 7 --handshakes 1000 --threads 4

Two servers of the same app on 127.0.0.1, both uvicorn (uvloop + httptools), one worker each:

* baseline: uvicorn terminating TLS itself (``--ssl-certfile/--ssl-keyfile``), no fingerprint;
* stormguard: ``stormguard serve --tls-cert/--tls-key`` (server/tls_hello.py: the ClientHello is read and
  fingerprinted, then the same TLS stack takes over).

Each run, for each server in turn: ``--handshakes`` new TLS connections (Python's ssl client, ``--threads``
threads), each one request ``GET /healthz`` with ``Connection: close``. Timed: wall time of the run, and the server
process's CPU time (user + sys from /proc) — on a loaded machine the CPU time per handshake is the steadier figure.
Reported: medians over the runs and the overhead of fingerprinting (target <= 5 %). Every loop is bounded in count
and time (``--timeout`` per run). A measurement, not a test: exits 0 and prints MISSED when the target is missed.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

TARGET_OVERHEAD = 0.05


def _cert(tmp: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench.test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1)).sign(key, hashes.SHA256()))
    (tmp / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                    serialization.NoEncryption()))
    return tmp / "cert.pem", tmp / "key.pem"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Server:
    def __init__(self, name: str, cmd: list[str], port: int) -> None:
        self.name, self.port = name, port
        env = {**os.environ, "STORMGUARD_SERVER_SETTINGS": json.dumps({"ip_rate": 1e9, "ip_burst": 1e9})}
        self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"{name}: server exited with {self.proc.returncode}")
            try:
                _one(port, _client_context(), 2.0)
                return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise SystemExit(f"{name}: server did not answer within 60 s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def _client_context() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _one(port: int, ctx: ssl.SSLContext, timeout: float) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as raw:
        with ctx.wrap_socket(raw, server_hostname="bench.test") as s:
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: bench.test\r\nConnection: close\r\n\r\n")
            while s.recv(65536):
                pass


def _run(server: Server, handshakes: int, threads: int, timeout: float) -> tuple[float, float, int]:
    """(wall s, server CPU s, handshakes done) for one run."""
    ctx = _client_context()
    per = handshakes // threads
    done = [0] * threads
    deadline = time.monotonic() + timeout

    def work(i: int) -> None:
        for _ in range(per):
            if time.monotonic() > deadline:
                return
            _one(server.port, ctx, 10.0)
            done[i] += 1

    cpu0 = _cpu_seconds(server.proc.pid)
    t0 = time.perf_counter()
    pool = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return time.perf_counter() - t0, _cpu_seconds(server.proc.pid) - cpu0, sum(done)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--handshakes", type=int, default=400)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds one run may take at most")
    args = ap.parse_args(argv)
    print(f"tls handshake bench  {time.strftime('%Y-%m-%d %H:%M:%S')}  load {' '.join(f'{x:.1f}' for x in os.getloadavg())}"
          f"  runs {args.runs} x {args.handshakes} handshakes, {args.threads} client threads")
    with tempfile.TemporaryDirectory() as tmp:
        cert, key = _cert(Path(tmp))
        p1, p2 = _free_port(), _free_port()
        base = Server("uvicorn TLS (baseline)", [sys.executable, "-m", "uvicorn",
                                                 "stormguard.server.app:create_app_from_env", "--factory",
                                                 "--host", "127.0.0.1", "--port", str(p1), "--loop", "uvloop",
                                                 "--http", "httptools", "--no-access-log", "--log-level", "warning",
                                                 "--ssl-certfile", str(cert), "--ssl-keyfile", str(key)], p1)
        try:
            fp = Server("stormguard --tls-cert (fingerprinting)", [
                sys.executable, "-m", "stormguard.server.cli", "serve", "--host", "127.0.0.1", "--port", str(p2),
                "--log-level", "warning", "--tls-cert", str(cert), "--tls-key", str(key)], p2)
        except BaseException:
            base.stop()
            raise
        results: dict[str, list[tuple[float, float, int]]] = {base.name: [], fp.name: []}
        try:
            for i in range(args.runs):
                for server in (base, fp) if i % 2 == 0 else (fp, base):
                    wall, cpu, n = _run(server, args.handshakes, args.threads, args.timeout)
                    results[server.name].append((wall, cpu, n))
                    print(f"  run {i + 1}: {server.name:<40} {n} handshakes  {n / wall:8.1f}/s  "
                          f"server CPU {1000 * cpu / max(n, 1):.3f} ms/handshake")
        finally:
            base.stop()
            fp.stop()
    med = {}
    for name, rs in results.items():
        rate = statistics.median(n / w for w, _, n in rs)
        cpu = statistics.median(c / max(n, 1) for _, c, n in rs)
        med[name] = (rate, cpu)
        print(f"{name:<42} median {rate:8.1f} handshakes/s   median server CPU {1000 * cpu:.3f} ms/handshake")
    (b_rate, b_cpu), (f_rate, f_cpu) = med[base.name], med[fp.name]
    over_rate = 1 - f_rate / b_rate
    over_cpu = f_cpu / b_cpu - 1
    ok = "ok" if over_rate <= TARGET_OVERHEAD else "MISSED"
    print(f"fingerprinting overhead: {100 * over_rate:+.1f} % handshake rate (target <= {100 * TARGET_OVERHEAD:.0f} %) "
          f"{ok}   [server CPU per handshake {100 * over_cpu:+.1f} %]")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
