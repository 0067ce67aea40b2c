#!/usr/bin/env python3
"""Record the bundled sample: a loopback capture plus the matching access logs, made by real clients.

Why recorded rather than synthesised: the JA3/JA4 of a capture are only worth testing when real TLS stacks wrote
the ClientHellos (curl's OpenSSL, CPython's ``ssl``, ``openssl s_client``, Chromium's BoringSSL), and the log
readers are only worth testing on lines that a server wrote for requests that are also in the capture.

What it does, all on loopback (nothing leaves the machine):

1. makes a throwaway self-signed certificate with ``cryptography`` in a temporary directory (deleted at the end;
   no key is ever written into ``data/``);
2. starts a TLS HTTP/1.1 server (ALPN ``http/1.1``, an SSE endpoint ``/events``) and a plain HTTP server on free
   ports of 127.0.0.1, a second TLS server on [::1], and a TLS server that only accepts the P-384 group (so TLS 1.3
   clients get a HelloRetryRequest and send two ClientHellos on one connection);
3. records them with ``tcpdump -i lo`` (full snaplen, BPF filter on those ports) into ``data/sample.pcap``;
4. drives a fixed cast of clients, each from its own 127.0.0.x source address (see ``CLIENTS`` below), including a
   well-behaved slow client, a reconnect storm, handshake-only connections and a browser User-Agent sent over
   curl's TLS;
5. writes what the servers saw as ``data/sample-access.log`` (nginx "combined") and ``data/sample-access.jsonl``
   (one JSON object per request, header names in wire order).

Run it as root (tcpdump needs to capture on ``lo``): ``python data/make_sample.py``. Clients whose program is not
installed are skipped with a note. Timestamps, ports and TLS randoms differ from run to run; the client cast,
addresses and request counts do not.
"""

from __future__ import annotations

import argparse
import datetime as dt
import http.client
import http.server
import json
import os
import shutil
import signal
import socket
import socketserver
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent
SNI_NAME = "stormguard.test"

BROWSER_UA = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0.0.0 Safari/537.36"
)
BOT_UA = "python-requests/2.31.0"
PY_UA = f"Python-urllib/{sys.version_info.major}.{sys.version_info.minor}"

# Who is who in the sample (source address -> role). Chromium cannot bind a source address, so it gets the
# kernel's default for loopback, 127.0.0.1; every other client binds its own address explicitly.
CLIENTS = {
    "127.0.0.1": "chromium (headless) - real browser TLS (BoringSSL, GREASE) and headers",
    "127.0.0.2": "curl, default UA - well-behaved: a few requests, seconds apart",
    "127.0.0.3": "python ssl + http.client by IP (no SNI), UA Python-urllib - TLS and plain HTTP, keep-alive",
    "127.0.0.4": "openssl s_client - hand-written requests, no User-Agent; one HelloRetryRequest",
    "127.0.0.5": f"storm: python ssl, UA {BOT_UA} - 30 quick /events connections, each dropped after 1st event",
    "127.0.0.6": "curl with a Chrome User-Agent - UA says browser, TLS says curl",
    "127.0.0.7": "short-lived: TLS 1.2-only handshakes closed without a request, plus bare TCP connect/close",
    "127.0.0.8": "plain-HTTP scanner, bot-like UA - probes a few paths (404s)",
    "::1": "curl over IPv6 to the [::1] TLS server",
}

STORM_CONNECTIONS = 30
WELL_BEHAVED_REQUESTS = 4
WELL_BEHAVED_PAUSE_S = 1.5
HANDSHAKE_ONLY = 5
BARE_TCP = 3

INDEX_HTML = b"""<!doctype html>
<html><head><meta charset="utf-8"><title>stormguard sample</title>
<link rel="icon" href="data:,"></head>
<body><h1>stormguard sample</h1><p>Events are at <a href="/events">/events</a>.</p></body></html>
"""


# ----------------------------------------------------------------------------------------------------------------
# Certificate
# ----------------------------------------------------------------------------------------------------------------


def make_cert(workdir: Path) -> tuple[Path, Path]:
    """A throwaway self-signed EC certificate for stormguard.test, localhost, 127.0.0.1 and ::1."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, SNI_NAME)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName(SNI_NAME),
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    x509.IPAddress(ipaddress.ip_address("::1")),
                ]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = workdir / "cert.pem", workdir / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    os.chmod(key_path, 0o600)
    return cert_path, key_path


def server_context(cert: Path, key: Path, *, only_group: str | None = None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    ctx.set_alpn_protocols(["http/1.1"])

    def remember_sni(sock: ssl.SSLSocket, name: str | None, _ctx: ssl.SSLContext) -> None:
        sock._sg_sni = name  # read back by the access log

    ctx.sni_callback = remember_sni
    if only_group:
        ctx.set_ecdh_curve(only_group)  # OpenSSL 3: the only group -> HelloRetryRequest for x25519-first clients
    return ctx


def client_context(*, max_tls12: bool = False) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # our own throwaway certificate
    ctx.set_alpn_protocols(["http/1.1"])
    if max_tls12:
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    return ctx


# ----------------------------------------------------------------------------------------------------------------
# Servers and their logs
# ----------------------------------------------------------------------------------------------------------------


class AccessLog:
    """Collects one entry per request; written sorted by request start."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.entries: list[dict] = []

    def add(self, entry: dict) -> None:
        with self._lock:
            self.entries.append(entry)

    @staticmethod
    def combined(e: dict) -> str:
        def q(s: str | None) -> str:  # nginx's default escaping: " \ and non-printable bytes as \xHH
            if not s:
                return "-"
            return "".join(
                f"\\x{b:02X}" if b in (0x22, 0x5C) or b < 0x20 or b > 0x7E else chr(b) for b in s.encode()
            )

        t = dt.datetime.fromtimestamp(e["msec"], dt.UTC).strftime("%d/%b/%Y:%H:%M:%S +0000")
        return (
            f'{e["remote_addr"]} - - [{t}] "{q(e["request"])}" {e["status"]} {e["body_bytes_sent"]} '
            f'"{q(e["http_referer"])}" "{q(e["http_user_agent"])}"'
        )

    def write(self, log_path: Path, jsonl_path: Path) -> None:
        self.entries.sort(key=lambda e: e["msec"])  # by request start, the time both files show
        with open(log_path, "w", encoding="utf-8", newline="\n") as fh:
            for e in self.entries:
                fh.write(self.combined(e) + "\n")
        with open(jsonl_path, "w", encoding="utf-8", newline="\n") as fh:
            for e in self.entries:
                fh.write(json.dumps(e, separators=(",", ":")) + "\n")


class SampleHandler(http.server.BaseHTTPRequestHandler):
    """``/`` (HTML), ``/events`` (a short SSE stream), anything else 404; every request logged by the server."""

    protocol_version = "HTTP/1.1"
    server_version = "stormguard-sample/0.1"
    sys_version = ""

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - base-class signature
        pass  # our own access log below replaces the stderr one

    def setup(self) -> None:
        super().setup()
        self._conn_start = time.time()

    def do_GET(self) -> None:  # noqa: N802 - http.server naming
        start = time.time()
        sent = 0
        status = 200
        try:
            path = self.path.split("?", 1)[0]
            if path == "/events":
                sent = self._events()
            elif path in ("/", "/index.html"):
                sent = self._reply(200, "text/html; charset=utf-8", INDEX_HTML)
            else:
                status = 404
                sent = self._reply(404, "text/plain; charset=utf-8", b"not found\n")
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
            self.close_connection = True
            sent = getattr(self, "_partial", sent)
        finally:
            self._log(start, status, sent)

    def _reply(self, status: int, ctype: str, body: bytes) -> int:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        return len(body)

    def _events(self) -> int:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        self._partial = 0
        for chunk in (b"retry: 3000\n\n", b"id: 1\ndata: hello\n\n", b"id: 2\ndata: tick\n\n"):
            self.wfile.write(chunk)
            self.wfile.flush()
            self._partial += len(chunk)
            time.sleep(0.1)
        return self._partial

    def _log(self, start: float, status: int, sent: int) -> None:
        # Key names are nginx's variable names (as in a ``log_format ... escape=json`` JSON log), plus
        # ``headers``: every request header as [name, value], in wire order, name case as sent.
        conn = self.connection
        tls = isinstance(conn, ssl.SSLSocket)
        cipher = conn.cipher() if tls else None
        host, port = self.client_address[:2]
        self.server.access_log.add(
            {
                "msec": round(start, 6),
                "time_iso8601": dt.datetime.fromtimestamp(start, dt.UTC).isoformat(timespec="microseconds"),
                "remote_addr": host,
                "remote_port": port,
                "server_addr": self.server.server_address[0],
                "server_port": self.server.server_address[1],
                "scheme": "https" if tls else "http",
                "request": self.requestline,
                "request_method": self.command,
                "request_uri": self.path,
                "server_protocol": self.request_version,
                "status": status,
                "body_bytes_sent": sent,
                "request_time": round(time.time() - start, 6),
                "http_referer": self.headers.get("Referer"),
                "http_user_agent": self.headers.get("User-Agent"),
                "ssl_protocol": conn.version() if tls else None,
                "ssl_cipher": cipher[0] if cipher else None,
                "ssl_server_name": getattr(conn, "_sg_sni", None) if tls else None,
                "ssl_alpn_protocol": conn.selected_alpn_protocol() if tls else None,
                "headers": [[k, v] for k, v in self.headers.items()],
            }
        )


class _Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, addr: tuple, access_log: AccessLog, ctx: ssl.SSLContext | None = None) -> None:
        self.address_family = socket.AF_INET6 if ":" in addr[0] else socket.AF_INET
        self.access_log = access_log
        self.tls_ctx = ctx
        self.handshake_failures: Counter[str] = Counter()
        super().__init__(addr, SampleHandler)

    def server_bind(self) -> None:  # HTTPServer.server_bind does a reverse DNS lookup; skip it
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = "localhost", self.server_address[1]

    def finish_request(self, request, client_address) -> None:
        # The TLS handshake runs here, in the per-connection thread, so one slow or broken client
        # (handshake-only, bare TCP) never holds up accept().
        if self.tls_ctx is not None:
            request.settimeout(10)
            try:
                request = self.tls_ctx.wrap_socket(request, server_side=True)
            except (ssl.SSLError, OSError) as exc:
                self.handshake_failures[type(exc).__name__] += 1
                return
        super().finish_request(request, client_address)

    def handle_error(self, request, client_address) -> None:
        pass  # clients in this sample hang up mid-stream on purpose


def start_server(addr: tuple, log: AccessLog, ctx: ssl.SSLContext | None = None) -> _Server:
    srv = _Server(addr, log, ctx)
    threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return srv


# ----------------------------------------------------------------------------------------------------------------
# Capture
# ----------------------------------------------------------------------------------------------------------------


class Capture:
    """tcpdump on ``lo`` with a port filter; stopped with SIGINT so the last packets are flushed."""

    def __init__(self, out: Path, ports: list[int]) -> None:
        self.out = out
        bpf = "tcp and (" + " or ".join(f"port {p}" for p in ports) + ")"
        cmd = ["tcpdump", "-i", "lo", "-s", "0", "-U", "-n", "-Z", "root", "-w", str(out), bpf]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 10
        assert self.proc.stderr is not None
        while time.time() < deadline:
            line = self.proc.stderr.readline()
            if "listening on" in line:
                break
            if not line and self.proc.poll() is not None:
                raise SystemExit(f"tcpdump failed to start (exit {self.proc.returncode}); are you root?")
        else:
            self.proc.kill()
            raise SystemExit("tcpdump did not start listening within 10 s")
        self.stats = ""

    def stop(self) -> None:
        time.sleep(0.5)  # let the last FIN/ACKs reach the capture
        self.proc.send_signal(signal.SIGINT)
        try:
            _, err = self.proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        self.stats = " ".join(ln.strip() for ln in err.splitlines() if "packets" in ln)


# ----------------------------------------------------------------------------------------------------------------
# Clients
# ----------------------------------------------------------------------------------------------------------------


def run(cmd: list[str], *, stdin: bytes | None = None, timeout: float = 20) -> int:
    try:
        p = subprocess.run(cmd, input=stdin, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=timeout)
        return p.returncode
    except subprocess.TimeoutExpired:
        print(f"  ! timed out: {cmd[0]}")
        return -1


def have(program: str) -> bool:
    if shutil.which(program):
        return True
    print(f"  - skipped: {program} is not installed")
    return False


def curl_clients(tls_port: int, http_port: int, tls6_port: int) -> None:
    if not have("curl"):
        return
    resolve = ["--resolve", f"{SNI_NAME}:{tls_port}:127.0.0.1"]
    base = ["curl", "-sS", "-k", "-o", os.devnull, "--max-time", "5", "--http1.1"]
    # Well-behaved: a few requests, seconds apart, one connection each; an SSE read that runs to the end.
    for i in range(WELL_BEHAVED_REQUESTS):
        url = f"https://{SNI_NAME}:{tls_port}/" if i % 2 == 0 else f"https://{SNI_NAME}:{tls_port}/events"
        run([*base, "--interface", "127.0.0.2", *resolve, url])
        if i < WELL_BEHAVED_REQUESTS - 1:
            time.sleep(WELL_BEHAVED_PAUSE_S)
    run([*base, "--interface", "127.0.0.2", f"http://127.0.0.1:{http_port}/"])
    # Browser UA over curl's TLS, with a referer; two URLs on one keep-alive connection.
    run(
        [
            *base, "--interface", "127.0.0.6", *resolve, "-A", BROWSER_UA,
            "-H", "Accept: text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
            "-H", "Accept-Language: en-US,en;q=0.9",
            "-e", f"https://{SNI_NAME}:{tls_port}/",
            f"https://{SNI_NAME}:{tls_port}/", "-o", os.devnull, f"https://{SNI_NAME}:{tls_port}/events",
        ]
    )
    run([*base, "--interface", "127.0.0.6", "-A", BROWSER_UA, f"http://127.0.0.1:{http_port}/events"])
    # IPv6 (the source is ::1 - the only IPv6 loopback address).
    run([*base, "-6", f"https://[::1]:{tls6_port}/"])


def python_client(tls_port: int, http_port: int) -> None:
    # Connects by IP address, so (like many scripts) it sends no SNI. http.client sends no User-Agent by
    # default; send the one urllib would.
    conn = http.client.HTTPSConnection(
        "127.0.0.1", tls_port, context=client_context(), source_address=("127.0.0.3", 0), timeout=5
    )
    for path in ("/", "/index.html"):  # keep-alive: two requests, one connection
        conn.request("GET", path, headers={"User-Agent": PY_UA, "Accept": "*/*"})
        conn.getresponse().read()
    conn.close()
    conn = http.client.HTTPConnection("127.0.0.1", http_port, source_address=("127.0.0.3", 0), timeout=5)
    conn.request("GET", "/", headers={"User-Agent": PY_UA})
    conn.getresponse().read()
    conn.close()


def storm_client(tls_port: int) -> None:
    """A reconnect storm: open /events, read the first event, hang up, repeat (bounded)."""
    ctx = client_context()
    for _ in range(STORM_CONNECTIONS):
        raw = socket.create_connection(("127.0.0.1", tls_port), 5, ("127.0.0.5", 0))
        with ctx.wrap_socket(raw, server_hostname=SNI_NAME) as s:
            s.sendall(
                (
                    f"GET /events HTTP/1.1\r\nHost: {SNI_NAME}:{tls_port}\r\nUser-Agent: {BOT_UA}\r\n"
                    "Accept-Encoding: gzip, deflate\r\nAccept: text/event-stream\r\nConnection: keep-alive\r\n\r\n"
                ).encode()
            )
            buf = b""
            while b"data:" not in buf:
                chunk = s.recv(4096)
                if not chunk:
                    break
                buf += chunk
        time.sleep(0.02)


def short_lived_client(tls_port: int) -> None:
    """TLS 1.2-only handshakes with no request, then bare TCP connect/close (no ClientHello at all)."""
    ctx = client_context(max_tls12=True)
    for _ in range(HANDSHAKE_ONLY):
        raw = socket.create_connection(("127.0.0.1", tls_port), 5, ("127.0.0.7", 0))
        with ctx.wrap_socket(raw, server_hostname=SNI_NAME):
            pass
        time.sleep(0.05)
    for _ in range(BARE_TCP):
        socket.create_connection(("127.0.0.1", tls_port), 5, ("127.0.0.7", 0)).close()
        time.sleep(0.05)


def openssl_client(tls_port: int, hrr_port: int) -> None:
    if not have("openssl"):
        return
    for port, path in ((tls_port, "/"), (tls_port, "/events"), (hrr_port, "/")):
        req = f"GET {path} HTTP/1.1\r\nHost: {SNI_NAME}\r\nConnection: close\r\n\r\n".encode()
        run(
            [
                "openssl", "s_client", "-quiet", "-connect", f"127.0.0.1:{port}", "-bind", "127.0.0.4:0",
                "-servername", SNI_NAME, "-alpn", "http/1.1",
            ],
            stdin=req,
        )


def scanner_client(http_port: int) -> None:
    for path in ("/", "/.env", "/wp-login.php", "/admin", "/events"):
        conn = http.client.HTTPConnection("127.0.0.1", http_port, source_address=("127.0.0.8", 0), timeout=5)
        conn.request("GET", path, headers={"User-Agent": "Mozilla/5.0 (compatible; SampleScanner/1.0)"})
        conn.getresponse().read()
        conn.close()


def chromium_client(tls_port: int) -> None:
    exe = next((p for p in ("chromium", "chromium-browser", "google-chrome") if shutil.which(p)), None)
    if exe is None:
        print("  - skipped: chromium is not installed")
        return
    with tempfile.TemporaryDirectory(prefix="sg-chromium-") as profile:
        run(
            [
                exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-default-apps", "--disable-domain-reliability", "--disable-breakpad",
                "--metrics-recording-only", "--no-pings", "--no-proxy-server",
                # Our name resolves to loopback; every other name fails, so nothing can leave the machine.
                f"--host-resolver-rules=MAP {SNI_NAME} 127.0.0.1, MAP * ~NOTFOUND",
                f"--user-data-dir={profile}", "--ignore-certificate-errors", "--dump-dom",
                f"https://{SNI_NAME}:{tls_port}/",
            ],
            timeout=60,
        )


# ----------------------------------------------------------------------------------------------------------------
# Summary (JA3 only when dpkt happens to be installed; the script itself needs only the stdlib + cryptography)
# ----------------------------------------------------------------------------------------------------------------


def ja3_summary(pcap: Path) -> dict[str, Counter]:
    try:
        import dpkt
        from dpkt.ssl import TLSClientHello, TLSHandshake
    except ImportError:
        return {}
    import hashlib

    grease = {(b << 8) | b for b in range(0x0A, 0x100, 0x10)}
    out: dict[str, Counter] = {}
    hellos: list = []
    with open(pcap, "rb") as fh:
        for _ts, frame in dpkt.pcap.Reader(fh):
            ip = dpkt.ethernet.Ethernet(frame).data  # Linux "lo" captures as DLT_EN10MB
            tcp = getattr(ip, "data", None)
            if not isinstance(tcp, dpkt.tcp.TCP) or len(tcp.data) < 6 or tcp.data[0] not in (0x14, 0x16):
                continue
            try:  # after a HelloRetryRequest the 2nd ClientHello follows a ChangeCipherSpec record
                records, _ = dpkt.ssl.tls_multi_factory(tcp.data)
            except (dpkt.NeedData, dpkt.UnpackError, dpkt.ssl.SSL3Exception):
                continue
            for rec in records:
                if rec.type != 22 or not rec.data or rec.data[0] != 1:
                    continue
                try:
                    hs = TLSHandshake(rec.data)
                except (dpkt.NeedData, dpkt.UnpackError):
                    continue
                if isinstance(hs.data, TLSClientHello):
                    hellos.append((ip, hs.data))
    for ip, ch in hellos:
        exts, curves, fmts = [], [], []
        for etype, edata in ch.extensions:
            if etype in grease:
                continue
            exts.append(etype)
            if etype == 10:
                n = int.from_bytes(edata[:2], "big")
                curves = [int.from_bytes(edata[2 + i : 4 + i], "big") for i in range(0, n, 2)]
            elif etype == 11:
                fmts = list(edata[1 : 1 + edata[0]])
        ciphers = [c.code for c in ch.ciphersuites if c.code not in grease]
        ja3 = ",".join(
            [
                str(ch.version),
                "-".join(map(str, ciphers)),
                "-".join(map(str, exts)),
                "-".join(str(c) for c in curves if c not in grease),
                "-".join(map(str, fmts)),
            ]
        )
        src = socket.inet_ntop(socket.AF_INET6 if len(ip.src) == 16 else socket.AF_INET, ip.src)
        out.setdefault(src, Counter())[hashlib.md5(ja3.encode()).hexdigest()] += 1
    return out


# ----------------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=DATA_DIR, help="output directory (default: data/)")
    ap.add_argument("--no-chromium", action="store_true", help="skip the headless Chromium client")
    args = ap.parse_args(argv)
    if not shutil.which("tcpdump"):
        print("tcpdump is required (apt-get install -y tcpdump)", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    pcap = args.out / "sample.pcap"
    t0 = time.time()

    with tempfile.TemporaryDirectory(prefix="sg-sample-") as tmp:
        tmpdir = Path(tmp)
        cert, key = make_cert(tmpdir)
        log = AccessLog()
        tls = start_server(("127.0.0.1", 0), log, server_context(cert, key))
        plain = start_server(("127.0.0.1", 0), log)
        tls6 = start_server(("::1", 0), log, server_context(cert, key))
        hrr = start_server(("127.0.0.1", 0), log, server_context(cert, key, only_group="secp384r1"))
        servers = [tls, plain, tls6, hrr]
        ports = [s.server_address[1] for s in servers]
        print(f"servers: tls=127.0.0.1:{ports[0]} http=127.0.0.1:{ports[1]} tls6=[::1]:{ports[2]} "
              f"tls-hrr=127.0.0.1:{ports[3]}")

        tmp_pcap = tmpdir / "sample.pcap"
        cap = Capture(tmp_pcap, ports)
        try:
            print("clients:")
            steps = [
                ("curl (127.0.0.2, 127.0.0.6, ::1)", lambda: curl_clients(ports[0], ports[1], ports[2])),
                ("python http.client (127.0.0.3)", lambda: python_client(ports[0], ports[1])),
                ("openssl s_client (127.0.0.4)", lambda: openssl_client(ports[0], ports[3])),
                (f"storm x{STORM_CONNECTIONS} (127.0.0.5)", lambda: storm_client(ports[0])),
                ("short-lived (127.0.0.7)", lambda: short_lived_client(ports[0])),
                ("scanner (127.0.0.8)", lambda: scanner_client(ports[1])),
            ]
            if not args.no_chromium:
                steps.append(("chromium (127.0.0.1)", lambda: chromium_client(ports[0])))
            for label, fn in steps:
                t = time.time()
                try:
                    fn()
                except OSError as exc:
                    print(f"  ! {label}: {exc}")
                print(f"  {label}: {time.time() - t:.1f}s")
            time.sleep(0.5)  # let the SSE handlers finish and log
        finally:
            cap.stop()
            for s in servers:
                s.shutdown()
                s.server_close()
        shutil.move(tmp_pcap, pcap)
        # cert/key vanish with the temporary directory

    log.write(args.out / "sample-access.log", args.out / "sample-access.jsonl")

    print(f"\ncapture: {pcap} ({pcap.stat().st_size} bytes); tcpdump: {cap.stats}")
    by_client = Counter(e["remote_addr"] for e in log.entries)
    print(f"logged requests: {len(log.entries)} from {len(by_client)} clients")
    fails = sum((s.handshake_failures for s in servers), Counter())
    if fails:
        print(f"handshakes that did not complete (expected: bare TCP connects): {dict(fails)}")
    ja3 = ja3_summary(pcap)
    for addr, role in CLIENTS.items():
        hashes = ", ".join(f"{h} x{n}" for h, n in sorted(ja3.get(addr, {}).items())) or "-"
        print(f"  {addr:<10} requests={by_client.get(addr, 0):<3} ja3: {hashes}\n             {role}")
    if not ja3:
        print("  (install dpkt to see JA3 hashes per client)")
    for p in ("sample.pcap", "sample-access.log", "sample-access.jsonl"):
        print(f"  {p}: {(args.out / p).stat().st_size} bytes")
    print(f"done in {time.time() - t0:.1f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
