#!/usr/bin/env python3
"""Learn the header rules per browser family from the corpus' real browser HARs; write them as a Python module.

Usage::

    python data/make_header_families.py ../shared/corpus              # rewrites features/http/header_family_table.py
    python data/make_header_families.py ../shared/corpus --evaluate   # also prints the transfer figures (JSON)
    python data/make_header_families.py ../shared/corpus --check      # exit 1 if the committed table is stale
    python data/make_header_families.py ../shared/corpus --evaluate --captures  # + plain HTTP of the pcaps

Inputs: ``CORPUS/har/*.har`` (sitespeedio/pagexray test files: Chrome 44/48/63, Firefox 43). The evaluation also
reads this folder's ``sample-access.jsonl`` (the project's own loopback recording: curl, Python urllib,
python-requests, ``openssl s_client``, curl with a Chrome UA, headless Chromium 156). How the rules generalise and
what is skipped: :mod:`stormguard.models.header_families`; how they are applied:
:mod:`stormguard.features.http.families`. Takes about a second.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent
TABLE = DATA_DIR.parent / "features" / "http" / "header_family_table.py"
SAMPLE = DATA_DIR / "sample-access.jsonl"


def main(argv: list[str] | None = None) -> int:
    from stormguard.models.header_families import evaluate, learn_from_files, table_source

    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("corpus", type=Path, help="the reference corpus (its har/ folder is read)")
    parser.add_argument("-o", "--output", type=Path, default=TABLE, help="module to write (default: %(default)s)")
    parser.add_argument("--evaluate", action="store_true", help="print the transfer figures as JSON")
    parser.add_argument("--captures", action="store_true",
                        help="with --evaluate: also judge the plain-HTTP requests of CORPUS/pcap (slower, ~1 min)")
    parser.add_argument("--check", action="store_true", help="only compare with the committed table")
    args = parser.parse_args(argv)
    hars = sorted((args.corpus / "har").glob("*.har"))
    if not hars:
        parser.error(f"no HAR files in {args.corpus / 'har'}")
    table, summary = learn_from_files(hars)
    text = table_source(table, summary, [f"har/{p.name}" for p in hars])
    if args.check:
        same = args.output.is_file() and args.output.read_text(encoding="utf-8") == text
        print(f"{args.output}: {'up to date' if same else 'STALE (rerun without --check)'}")
        return 0 if same else 1
    args.output.write_text(text, encoding="utf-8")
    print(f"wrote {args.output}: " + ", ".join(f"{f} {len(r['required'])} required, {len(r['before'])} pairs"
                                                for f, r in table.items()) + f"; {summary}")
    if args.evaluate:
        captures = sorted(p for p in (args.corpus / "pcap").rglob("*") if p.suffix in (".pcap", ".pcapng")) \
            if args.captures else []
        print(json.dumps(evaluate(hars, [SAMPLE] if SAMPLE.is_file() else [], captures), indent=1, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
