"""The bundled sample (data/) is what the README's main command runs on: it must exist, be readable by an
independent parser (dpkt), hold the client behaviours the features are about, and its logs must describe the same
clients as its capture. When the project's own readers are importable they must agree with dpkt."""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import json
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from itertools import pairwise

import pytest
from conftest import PROJECT_ROOT

dpkt = pytest.importorskip("dpkt")

DATA = PROJECT_ROOT / "data"
PCAP = DATA / "sample.pcap"
LOG = DATA / "sample-access.log"
JSONL = DATA / "sample-access.jsonl"

PCAP_MAGICS = {b"\xd4\xc3\xb2\xa1", b"\xa1\xb2\xc3\xd4", b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d"}
GREASE = {(b << 8) | b for b in range(0x0A, 0x100, 0x10)}
HTTP_REQUEST = re.compile(rb"(GET|HEAD|POST|PUT|DELETE|OPTIONS|PATCH) (\S+) (HTTP/1\.[01])\r\n")
# nginx "combined": $remote_addr - $remote_user [$time_local] "$request" $status $body_bytes_sent
# "$http_referer" "$http_user_agent" (nginx escapes " and \ as \xHH, so fields hold no bare quotes).
COMBINED = re.compile(
    r'^(?P<addr>\S+) (?P<ident>\S+) (?P<user>\S+) \[(?P<time>[^\]]+)\] "(?P<request>[^"]*)" '
    r'(?P<status>\d{3}) (?P<bytes>\d+|-) "(?P<referer>[^"]*)" "(?P<ua>[^"]*)"$'
)


# ------------------------------------------------------------------------------------------------------------
# An independent reading of the capture (dpkt), shared by the tests
# ------------------------------------------------------------------------------------------------------------


def ja3_of(ch: dpkt.ssl.TLSClientHello) -> str:
    """Standard JA3 (GREASE removed), computed here so the project's own code is checked, not reused."""
    exts, curves, fmts = [], [], []
    for etype, edata in ch.extensions:
        if etype in GREASE:
            continue
        exts.append(etype)
        if etype == 10:
            n = int.from_bytes(edata[:2], "big")
            curves = [int.from_bytes(edata[2 + i : 4 + i], "big") for i in range(0, n, 2)]
        elif etype == 11:
            fmts = list(edata[1 : 1 + edata[0]])
    s = ",".join(
        [
            str(ch.version),
            "-".join(str(c.code) for c in ch.ciphersuites if c.code not in GREASE),
            "-".join(map(str, exts)),
            "-".join(str(c) for c in curves if c not in GREASE),
            "-".join(map(str, fmts)),
        ]
    )
    return hashlib.md5(s.encode()).hexdigest()


@dataclass
class Flow:
    client: str
    client_port: int
    server_port: int
    start: float
    segments: dict[int, bytes] = field(default_factory=dict)  # client->server payload by sequence number

    @property
    def stream(self) -> bytes:
        return b"".join(self.segments[k] for k in sorted(self.segments))


@dataclass
class Capture:
    datalink: int
    packets: int
    first_ts: float
    last_ts: float
    flows: list[Flow]
    hellos: list[tuple[Flow, str]]  # (flow, ja3) per ClientHello, HelloRetryRequest ones included
    http: list[tuple[Flow, str, str]]  # (flow, method, target) per plain-HTTP request

    def ja3s(self) -> dict[str, set[str]]:
        out: dict[str, set[str]] = defaultdict(set)
        for f, j in self.hellos:
            out[f.client].add(j)
        return out


def _addr(raw: bytes) -> str:
    return str(ipaddress.ip_address(raw))


@pytest.fixture(scope="module")
def capture() -> Capture:
    flows: dict[tuple, Flow] = {}
    packets, first, last = 0, None, None
    with open(PCAP, "rb") as fh:
        reader = dpkt.pcap.Reader(fh)
        datalink = reader.datalink()
        for ts, frame in reader:
            packets += 1
            first = ts if first is None else first
            last = ts
            ip = dpkt.ethernet.Ethernet(frame).data
            tcp = getattr(ip, "data", None)
            if not isinstance(tcp, dpkt.tcp.TCP):
                continue
            src, dst = _addr(ip.src), _addr(ip.dst)
            key = (src, tcp.sport, dst, tcp.dport)
            if tcp.flags & dpkt.tcp.TH_SYN and not tcp.flags & dpkt.tcp.TH_ACK:
                flows[key] = Flow(src, tcp.sport, tcp.dport, ts)
            elif key in flows and tcp.data:
                flows[key].segments.setdefault(tcp.seq, bytes(tcp.data))
    hellos, http = [], []
    for f in flows.values():
        data = f.stream
        if data[:1] == b"\x16":
            records, _ = dpkt.ssl.tls_multi_factory(data)
            for rec in records:
                if rec.type == 23:  # application data: the handshake is over
                    break
                if rec.type == 22 and rec.data[:1] == b"\x01":
                    hellos.append((f, ja3_of(dpkt.ssl.TLSHandshake(rec.data).data)))
        else:
            http.extend((f, m.group(1).decode(), m.group(2).decode()) for m in HTTP_REQUEST.finditer(data))
    return Capture(datalink, packets, first, last, list(flows.values()), hellos, http)


@pytest.fixture(scope="module")
def log_lines() -> list[re.Match]:
    lines = LOG.read_text(encoding="utf-8").splitlines()
    matches = [COMBINED.match(ln) for ln in lines]
    bad = [ln for ln, m in zip(lines, matches, strict=True) if m is None]
    assert not bad, f"lines not in combined format: {bad[:3]}"
    return matches


@pytest.fixture(scope="module")
def jsonl() -> list[dict]:
    return [json.loads(ln) for ln in JSONL.read_text(encoding="utf-8").splitlines()]


# ------------------------------------------------------------------------------------------------------------
# The files
# ------------------------------------------------------------------------------------------------------------


def test_files_exist_small_and_keyless() -> None:
    for p in (PCAP, LOG, JSONL, DATA / "make_sample.py", DATA / "README.md"):
        assert p.is_file() and p.stat().st_size > 0, f"{p} missing or empty: run python data/make_sample.py"
    total = sum(p.stat().st_size for p in DATA.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    assert total < 2 * 1024 * 1024, f"data/ is {total} bytes; keep the bundled sample under 2 MB"
    for p in DATA.rglob("*"):
        if p.is_file() and p.suffix != ".py":
            assert b"PRIVATE KEY-----" not in p.read_bytes(), f"{p} holds a private key"


def test_pcap_opens(capture: Capture) -> None:
    assert PCAP.read_bytes()[:4] in PCAP_MAGICS
    assert capture.datalink == dpkt.pcap.DLT_EN10MB  # Linux "lo"
    assert capture.packets >= 200
    assert capture.last_ts - capture.first_ts < 120  # a short recording, not an accumulation


# ------------------------------------------------------------------------------------------------------------
# What the capture holds
# ------------------------------------------------------------------------------------------------------------


def test_client_hellos_from_distinct_loopback_clients(capture: Capture) -> None:
    sources = {f.client for f, _ in capture.hellos}
    v4 = {s for s in sources if s.startswith("127.")}
    assert len(v4) >= 5, sources
    assert "::1" in sources  # one IPv6 client
    assert len({j for _, j in capture.hellos}) >= 4  # curl, python, openssl, chromium ... distinct stacks


def test_hello_retry_request_gives_two_hellos_on_one_connection(capture: Capture) -> None:
    per_flow = Counter(id(f) for f, _ in capture.hellos)
    assert max(per_flow.values()) == 2


def test_plain_http_requests(capture: Capture) -> None:
    assert len(capture.http) >= 5
    assert len({f.client for f, _, _ in capture.http}) >= 3
    assert {m for _, m, _ in capture.http} == {"GET"}


def test_reconnect_storm_and_well_behaved_client(capture: Capture) -> None:
    starts: dict[str, list[float]] = defaultdict(list)
    for f, _ in capture.hellos:
        starts[f.client].append(f.start)
    storms = [c for c, ts in starts.items() if len(ts) >= 20 and max(ts) - min(ts) < 15]
    assert storms, {c: len(ts) for c, ts in starts.items()}
    calm = [c for c, ts in starts.items() if len(ts) >= 3 and min(b - a for a, b in pairwise(sorted(ts))) >= 1.0]
    assert calm, "no client that reconnects slowly (>= 3 connections, >= 1 s apart)"


def test_short_lived_connections_without_a_request(capture: Capture) -> None:
    # TLS connections whose client sent only handshake records, and TCP connections that sent nothing at all.
    def record_types(f: Flow) -> set[int]:
        return {r.type for r in dpkt.ssl.tls_multi_factory(f.stream)[0]}

    handshake_only = [f for f in capture.flows if f.stream[:1] == b"\x16" and 23 not in record_types(f)]
    silent = [f for f in capture.flows if not f.segments]
    assert len(handshake_only) >= 3 and len(silent) >= 1


def test_pyja3_agrees_on_ipv4_hellos(capture: Capture) -> None:
    ja3 = pytest.importorskip("ja3.ja3")
    with open(PCAP, "rb") as fh:
        theirs = {(r["source_ip"], r["ja3_digest"]) for r in ja3.process_pcap(dpkt.pcap.Reader(fh), any_port=True)}
    ours = {(f.client, j) for f, j in capture.hellos if ":" not in f.client}
    assert theirs == ours


# ------------------------------------------------------------------------------------------------------------
# The logs, and that they describe the capture
# ------------------------------------------------------------------------------------------------------------


def test_combined_log_parses_and_matches_capture_times(log_lines: list[re.Match], capture: Capture) -> None:
    assert len(log_lines) >= 20
    for m in log_lines:
        t = dt.datetime.strptime(m["time"], "%d/%b/%Y:%H:%M:%S %z").timestamp()
        assert capture.first_ts - 1 <= t <= capture.last_ts + 1, m.string
        method, _target, proto = m["request"].split(" ")
        assert method == "GET" and proto.startswith("HTTP/1.")
        assert 100 <= int(m["status"]) < 600
    assert len({m["ua"] for m in log_lines}) >= 5  # curl, python, bot-like, browser (curl), chromium, none


def test_log_clients_are_capture_clients(log_lines: list[re.Match], capture: Capture) -> None:
    logged = {m["addr"] for m in log_lines}
    captured = {f.client for f in capture.flows}
    assert logged <= captured, logged - captured
    assert len({a for a in logged if a.startswith("127.")}) >= 6


def test_jsonl_is_the_same_requests_with_ordered_headers(log_lines: list[re.Match], jsonl: list[dict]) -> None:
    assert len(jsonl) == len(log_lines)
    orders = set()
    for m, e in zip(log_lines, jsonl, strict=True):
        assert (e["remote_addr"], e["status"], str(e["body_bytes_sent"])) == (m["addr"], int(m["status"]), m["bytes"])
        assert e["request"] == m["request"]
        pairs = e["headers"]
        assert all(isinstance(p, list) and len(p) == 2 and all(isinstance(x, str) for x in p) for p in pairs)
        ua = [v for k, v in pairs if k.lower() == "user-agent"]
        assert ua == ([e["http_user_agent"]] if e["http_user_agent"] else [])
        orders.add(tuple(k for k, _ in pairs))
    assert len(orders) >= 4


def test_requests_in_log_are_in_capture(jsonl: list[dict], capture: Capture) -> None:
    plain_logged = Counter(
        (e["remote_addr"], e["request_method"], e["request_uri"]) for e in jsonl if e["scheme"] == "http"
    )
    plain_captured = Counter((f.client, m, t) for f, m, t in capture.http)
    assert plain_logged == plain_captured
    tls_ports = {f.server_port for f, _ in capture.hellos}
    hello_clients = {f.client for f, _ in capture.hellos}
    for e in jsonl:
        if e["scheme"] == "https":
            assert e["server_port"] in tls_ports and e["remote_addr"] in hello_clients, e


def test_browser_user_agent_over_library_tls(jsonl: list[dict], capture: Capture) -> None:
    """The UA/TLS mismatch feature needs a client whose UA claims a browser while its JA3 is curl's."""
    ja3s = capture.ja3s()
    uas: dict[str, set[str]] = defaultdict(set)
    for e in jsonl:
        uas[e["remote_addr"]].add(e["http_user_agent"] or "")
    curl_ja3 = {j for a, u in uas.items() if any(x.startswith("curl/") for x in u) for j in ja3s.get(a, ())}
    liars = [a for a, u in uas.items() if any("Chrome/" in x for x in u) and ja3s.get(a) and ja3s[a] <= curl_ja3]
    assert liars


# ------------------------------------------------------------------------------------------------------------
# The project's own readers, once they exist
# ------------------------------------------------------------------------------------------------------------


def _reader(module: str, name: str):
    mod = pytest.importorskip(module)
    func = getattr(mod, name, None)
    if func is None:
        pytest.skip(f"{module}.{name} not there yet")
    from stormguard.report import ReplayStats

    return lambda path, **kw: list(func(path, ReplayStats(), **kw))


def test_read_capture_finds_the_same_client_hellos(capture: Capture) -> None:
    rows = _reader("stormguard.features.capture.reader", "read_capture")(PCAP)
    theirs: dict[str, set[str]] = defaultdict(set)
    for r in rows:
        if r.get("ja3"):
            theirs[r["src_ip"]].add(r["ja3"])
    assert {"127.0.0.2", "127.0.0.3", "127.0.0.4"} <= theirs.keys()  # curl, python, openssl
    assert len(theirs) >= 3
    ours = capture.ja3s()
    for src in ("127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5", "127.0.0.7", "::1"):
        assert theirs.get(src) == ours[src], src
    assert sum(1 for r in rows if r.get("ja3") and r["src_ip"] == "127.0.0.4") == Counter(
        f.client for f, _ in capture.hellos
    )["127.0.0.4"]  # the HelloRetryRequest connection counts both ClientHellos


def test_read_log_reads_every_line(log_lines: list[re.Match], jsonl: list[dict]) -> None:
    read = _reader("stormguard.features.logs.reader", "read_log")
    rows = read(LOG, fmt="auto")
    assert len(rows) == len(log_lines)
    assert [r["src_ip"] for r in rows] == [m["addr"] for m in log_lines]
    rows = read(JSONL, fmt="jsonl")
    assert len(rows) == len(jsonl)
    assert [r["src_ip"] for r in rows] == [e["remote_addr"] for e in jsonl]
    for r, e in zip(rows, jsonl, strict=True):
        if r.get("header_names"):  # the JSON-lines log is there so header order can be read from logs
            names = r["header_names"]
            names = names.split(",") if isinstance(names, str) else list(names)
            assert names == [k for k, _ in e["headers"]]
