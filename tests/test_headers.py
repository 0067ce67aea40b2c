"""Header entropy, the header-order fingerprint, UA claims and the JA4-based TLS client class."""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path

import pytest
from stormguard.features.http.headers import (
    VOLATILE_HEADERS,
    header_entropy,
    header_order_fingerprint,
    is_browser_ua,
    split_header_names,
    tls_client_class,
    ua_family,
)

CHROME_H1 = ["Host", "Connection", "Upgrade-Insecure-Requests", "User-Agent", "Accept", "Accept-Encoding",
             "Accept-Language"]
CURL = ["Host", "User-Agent", "Accept"]
FP = re.compile(r"^[ltmn]\d\d[c-][r-]_[0-9a-f]{12}$")


# -- entropy ---------------------------------------------------------------------------------------------------
def test_entropy_hand_computed() -> None:
    assert header_entropy(["ab"]) == pytest.approx(1.0)  # two symbols, equally frequent
    # "a\na": p(a) = 2/3, p(\n) = 1/3
    expected = -(2 / 3) * math.log2(2 / 3) - (1 / 3) * math.log2(1 / 3)
    assert header_entropy(["a", "a"]) == pytest.approx(expected)
    assert header_entropy(["aaaa"]) == 0.0


def test_entropy_empty_is_zero_and_case_insensitive() -> None:
    assert header_entropy([]) == 0.0
    assert header_entropy(CHROME_H1) == header_entropy([n.lower() for n in CHROME_H1])


def test_entropy_separates_browser_from_script() -> None:
    assert header_entropy(CHROME_H1) > header_entropy(CURL) > header_entropy(["Host"])


def test_browser_hars_score_higher_than_scripted_clients(corpus: Path) -> None:
    entropies = []
    for har in sorted((corpus / "har").glob("*.har")):
        for entry in json.loads(har.read_text(encoding="utf-8"))["log"]["entries"]:
            names = [h["name"] for h in entry["request"]["headers"] if not h["name"].startswith(":")]
            if names:
                entropies.append(header_entropy(names))
    assert len(entropies) > 500
    python_requests = ["Host", "User-Agent", "Accept-Encoding", "Accept", "Connection"]
    median = sorted(entropies)[len(entropies) // 2]
    assert median > header_entropy(python_requests) > header_entropy(CURL)


# -- fingerprint -----------------------------------------------------------------------------------------------
def test_fingerprint_layout_and_prefix() -> None:
    fp = header_order_fingerprint(CHROME_H1)
    assert FP.match(fp), fp
    assert fp.startswith("t07--_")
    assert header_order_fingerprint([]).startswith("n00--_")
    assert header_order_fingerprint(["host", "user-agent"]).startswith("l02")
    assert header_order_fingerprint(["Host", "user-agent"]).startswith("m02")


def test_fingerprint_is_order_sensitive_and_deterministic() -> None:
    assert header_order_fingerprint(CURL) == header_order_fingerprint(list(CURL))
    assert header_order_fingerprint(CURL) != header_order_fingerprint(list(reversed(CURL)))


def test_fingerprint_hash_ignores_volatile_headers_and_case() -> None:
    base = header_order_fingerprint(CHROME_H1)
    with_state = header_order_fingerprint([*CHROME_H1[:3], "Cookie", *CHROME_H1[3:], "Referer", "If-None-Match"])
    assert with_state.split("_")[1] == base.split("_")[1]
    assert with_state[:5] == "t07cr"
    assert header_order_fingerprint([n.lower() for n in CHROME_H1]).split("_")[1] == base.split("_")[1]
    assert {"cookie", "referer", "content-length"} <= VOLATILE_HEADERS


def test_split_header_names_round_trip() -> None:
    assert split_header_names(",".join(CURL)) == CURL
    assert split_header_names(None) == []
    assert split_header_names("") == []


# -- UA claims -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("ua", "browser", "family"), [
    ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36",
     True, "chrome"),
    ("Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0", True, "firefox"),
    ("Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)", False, "bot"),
    ("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/120.0 Safari/537.36",
     False, "headless"),
    ("curl/8.4.0", False, "curl"),
    ("python-requests/2.31.0", False, "python"),
    ("Go-http-client/1.1", False, "go"),
    (None, False, "none"),
    ("-", False, "none"),
])
def test_ua_examples(ua: str | None, browser: bool, family: str) -> None:
    assert is_browser_ua(ua) is browser
    assert ua_family(ua) == family


def test_ua_claims_agree_with_labelled_corpus(corpus: Path) -> None:
    with open(corpus / "ua" / "ua_dev.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) > 4000
    agree = sum(is_browser_ua(r["user_agent"].strip('"')) == (r["label"] == "browser") for r in rows)
    # the labels are the lists' own opinions and many bots do claim a browser; the claim must still mostly agree
    assert agree / len(rows) > 0.9


# -- TLS client class ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("ja4", "expected"), [
    ("t13d1516h2_8daaf6152771_e5627efa2ab1", "browser"),  # Chrome / Edge
    ("t13d1715h2_5b57614c22b0_3d5424432f57", "browser"),  # Firefox
    ("t13d2014h2_a09f3c656075_14788d8d241b", "browser"),  # Safari
    ("t13d1516h1_8daaf6152771_e5627efa2ab1", "unknown"),  # Chrome WebSocket: h1 with full extensions
    ("t13d181100_aaaaaaaaaaaa_bbbbbbbbbbbb", "library"),  # no ALPN
    ("t13d3112h2_aaaaaaaaaaaa_bbbbbbbbbbbb", "library"),  # OpenSSL-default long cipher list (curl)
    ("t12d1909h2_aaaaaaaaaaaa_bbbbbbbbbbbb", "library"),  # no TLS 1.3
    ("t13i1516h2_aaaaaaaaaaaa_bbbbbbbbbbbb", "library"),  # no SNI
    ("t13d1209h1_aaaaaaaaaaaa_bbbbbbbbbbbb", "library"),
    ("t13d1312h2_aaaaaaaaaaaa_bbbbbbbbbbbb", "unknown"),  # Go-like: plausible either way
    (None, "unknown"),
    ("", "unknown"),
    ("not-a-ja4", "unknown"),
])
def test_tls_client_class(ja4: str | None, expected: str) -> None:
    assert tls_client_class(ja4) == expected


def test_tls_client_class_on_browser_captures(corpus: Path) -> None:
    """FoxIO's expected JA4s for a browser capture: the browser hellos must mostly classify as browser."""
    data = json.loads((corpus / "expected/foxio/python/browsers-x509.pcapng.json").read_text(encoding="utf-8"))
    ja4s = [v for item in data for k, v in item.items() if k.startswith("JA4.") and k.count(".") == 1]
    assert ja4s
    classes = [tls_client_class(j) for j in ja4s]
    assert classes.count("browser") / len(classes) > 0.8
    assert "library" not in classes or classes.count("library") / len(classes) < 0.1
