"""``stormguard export nftables|blocklist``, ``stormguard crowdsec pull|push`` and ``stormguard doctor``.

Registered into the main command line by :func:`register`; the store and the Local API are opened only when run.
``--watch`` modes loop every ``--interval`` seconds until ``--duration`` runs out or SIGINT/SIGTERM; a failed
round (store or nft unreachable) is logged and retried at the next one.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import shlex
import signal
import sys
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("stormguard.enforce")
# asyncio is imported by the functions that run: registering these subcommands must stay cheap for every command


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--store", metavar="URL", help="store URL (default: config [store] url)")
    p.add_argument("--config", metavar="TOML", help="configuration file (default: $STORMGUARD_CONFIG)")


def _watch_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--watch", action="store_true", help="keep in sync: repeat every --interval seconds")
    p.add_argument("--interval", type=float, default=2.0, help="seconds between rounds with --watch (default 2)")
    p.add_argument("--duration", type=float, default=0.0,
                   help="stop --watch after this many seconds (default 0: until SIGINT/SIGTERM)")


def register(sub: Any) -> None:
    p = sub.add_parser("export", help="stormguard's blocks to nftables sets or blocklist files",
                       description="Export what stormguard blocks now (the store's blocks and the clients whose "
                                   "score alone refuses them) to enforcement outside the process.")
    ops = p.add_subparsers(dest="op", metavar="TARGET", required=True)
    n = ops.add_parser("nftables", help="an inet table with IPv4/IPv6 sets of blocked addresses",
                       description="Write (default: to stdout or -o FILE) or apply (--apply) an nftables 'inet' "
                                   "table whose sets hold the blocked addresses with per-element timeouts equal to "
                                   "the remaining block. --apply syncs incrementally against what the kernel "
                                   "holds (add/delete element, one atomic nft -f call).")
    _common(n)
    n.add_argument("--table", default="stormguard", help="table name (default stormguard)")
    n.add_argument("--apply", action="store_true", help="run nft instead of printing the script")
    n.add_argument("--dry-run", action="store_true",
                   help="with --apply: read the kernel's sets and print the incremental script, change nothing")
    n.add_argument("--nft-command", default="nft", metavar="CMD",
                   help="how to run nft (default 'nft'; e.g. 'sudo nft', 'ip netns exec NS nft')")
    n.add_argument("--sets-only", action="store_true", help="only the sets: no input chain with drop rules")
    n.add_argument("-o", "--output", metavar="FILE", help="write the script here instead of stdout")
    _watch_args(n)
    n.set_defaults(func=run_nftables)
    b = ops.add_parser("blocklist", help="a file of blocked addresses for proxies",
                       description="Write the blocked addresses as plain lines, an nginx geo include or an "
                                   "HAProxy map (atomically replaced).")
    _common(b)
    b.add_argument("--format", default="plain", choices=("plain", "nginx-geo", "haproxy-map"))
    b.add_argument("-o", "--output", metavar="FILE", help="file to write (default: stdout)")
    _watch_args(b)
    b.set_defaults(func=run_blocklist)

    c = sub.add_parser("crowdsec", help="CrowdSec Local API: pull decisions into the store, push blocks as alerts",
                       description="Run one direction of the CrowdSec bridge against the store without a server "
                                   "(the server runs both when [crowdsec] is configured). Credentials come from "
                                   "the [crowdsec] section and STORMGUARD_CROWDSEC_* variables.")
    cops = c.add_subparsers(dest="op", metavar="OP", required=True)
    for name, helptext in (("pull", "apply the Local API's decisions to the store (bouncer)"),
                           ("push", "push stormguard's blocks to the Local API as alerts (source)")):
        q = cops.add_parser(name, help=helptext, description=helptext[0].upper() + helptext[1:] + ".")
        _common(q)
        q.add_argument("--lapi-url", metavar="URL", help="Local API URL (default: config [crowdsec] lapi_url)")
        q.add_argument("--once", action="store_true", help="one round, then exit (default: keep running)")
        q.add_argument("--duration", type=float, default=0.0,
                       help="stop after this many seconds (default 0: until SIGINT/SIGTERM)")
        q.set_defaults(func=run_crowdsec)

    d = sub.add_parser("doctor", help="check what stormguard is connected to",
                       description="Check the configuration, the store, the model, GeoIP, the CrowdSec Local API "
                                   "and nft, printing one line each; exit 1 when a configured part fails.")
    _common(d)
    d.add_argument("--nft-command", default="nft", metavar="CMD", help="how to run nft (default 'nft')")
    d.set_defaults(func=run_doctor)


# -- helpers ---------------------------------------------------------------------------------------------------
def _engine(args: argparse.Namespace, failover: bool = False) -> tuple[Any, Any]:
    from stormguard.scoring.engine import ReputationEngine
    from stormguard.scoring.stores import open_store

    from stormguard.config import load_config

    config = load_config(args.config)
    url = args.store or config.store.url
    return config, ReputationEngine(open_store(url, config, failover=failover), config)


async def _rounds(args: argparse.Namespace, once: bool, step: Any) -> int:
    """Run ``step()`` once, or every ``--interval`` until ``--duration`` or a signal; errors logged per round."""
    import asyncio

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    deadline = time.monotonic() + args.duration if args.duration > 0 else float("inf")
    failures = 0
    while True:
        try:
            await step()
        except Exception as exc:  # noqa: BLE001 - a watch keeps going; a single run reports and fails
            failures += 1
            if once:
                raise
            print(f"stormguard: round failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        if once or stop.is_set() or time.monotonic() >= deadline:
            break
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), min(args.interval, max(0.0, deadline - time.monotonic())))
        if stop.is_set() or time.monotonic() >= deadline:
            break
    return 0 if once or failures == 0 else 1


def _emit(text: str, output: str | None) -> None:
    from stormguard.scoring.enforce.blocklist import write_atomic

    if output:
        write_atomic(output, text)
    else:
        sys.stdout.write(text)
        sys.stdout.flush()


# -- export nftables / blocklist -------------------------------------------------------------------------------
def run_nftables(args: argparse.Namespace) -> int:
    import asyncio

    from stormguard.scoring.enforce.blocks import current_blocks
    from stormguard.scoring.enforce.nftables import NftSets

    _, engine = _engine(args)
    nft = NftSets(args.table, command=shlex.split(args.nft_command), chain=not args.sets_only)

    async def step() -> None:
        now = time.time()
        blocks = await current_blocks(engine, now)
        if not args.apply:
            _emit(nft.script(blocks, now), args.output)
            return
        plan, text = await asyncio.to_thread(nft.sync, blocks, now, args.dry_run)
        if args.dry_run:
            _emit(text, args.output)
        c = plan.counts
        print(f"nftables inet {args.table}: {len(blocks)} blocked, +{c['add']} -{c['delete']} elements"
              + (" (dry run)" if args.dry_run else ""), file=sys.stderr)

    return _run(args, engine, step)


def _run(args: argparse.Namespace, engine: Any, step: Any) -> int:
    """``step`` once, or in ``--watch`` rounds; the store closed at the end."""
    import asyncio

    async def main() -> int:
        try:
            return await _rounds(args, not args.watch, step)
        finally:
            await engine.store.close()

    return asyncio.run(main())


def run_blocklist(args: argparse.Namespace) -> int:
    from stormguard.scoring.enforce.blocklist import render
    from stormguard.scoring.enforce.blocks import current_blocks

    _, engine = _engine(args)

    async def step() -> None:
        now = time.time()
        text = render(await current_blocks(engine, now), args.format, now)
        _emit(text, args.output)
        if args.output:
            print(f"{args.output}: {text.count(chr(10)) - 1} addresses ({args.format})", file=sys.stderr)

    return _run(args, engine, step)


# -- crowdsec pull / push --------------------------------------------------------------------------------------
def run_crowdsec(args: argparse.Namespace) -> int:
    import asyncio
    import dataclasses

    from stormguard.scoring.enforce.bridge import CrowdsecBridge

    config, engine = _engine(args)
    cfg = config.crowdsec if not args.lapi_url else dataclasses.replace(config.crowdsec, lapi_url=args.lapi_url)
    pull = args.op == "pull"
    bridge = CrowdsecBridge.from_config(cfg, engine, want_import=pull, want_export=not pull)
    part = bridge.importer if pull else bridge.exporter if bridge else None
    if bridge is None or part is None:
        need = "lapi_url and a bouncer key" if pull else "lapi_url and machine credentials"
        print(f"stormguard crowdsec {args.op}: not configured: set {need} in [crowdsec] "
              "(or STORMGUARD_CROWDSEC_* variables)", file=sys.stderr)
        return 2
    args.interval = cfg.pull_interval if pull else cfg.push_interval
    first = [True]

    async def step() -> None:
        if pull:
            n = await bridge.importer.pull(startup=first[0])
            first[0] = False
            st = bridge.importer.stats
            print(f"crowdsec pull: {n} decisions applied, {len(bridge.importer.ranges)} ranges, skipped "
                  f"{dict(sorted(st.skipped.items())) or 0}", file=sys.stderr)
        else:
            queued = await bridge.exporter.scan()
            sent = 0
            while True:
                n = await bridge.exporter.push()
                sent += n
                if n < bridge.exporter.batch:
                    break
            print(f"crowdsec push: {queued} blocks queued, {sent} pushed, {len(bridge.exporter.spool)} "
                  "waiting", file=sys.stderr)

    async def main() -> int:
        try:
            return await _rounds(args, args.once, step)
        finally:
            await bridge.stop()
            await engine.store.close()

    return asyncio.run(main())


# -- doctor ------------------------------------------------------------------------------------------------------
def run_doctor(args: argparse.Namespace) -> int:
    import asyncio

    from stormguard.config import load_config

    results: list[tuple[str, bool | None, str]] = []     # (part, ok / None = not configured, detail)
    try:
        config = load_config(args.config)
        results.append(("config", True, args.config or "defaults" + " + STORMGUARD_* environment"))
    except (ValueError, OSError) as exc:
        print(f"FAIL  config     {exc}")
        return 1
    asyncio.run(_doctor_async(args, config, results))
    results += _doctor_local(args, config)
    failed = 0
    for part, ok, detail in results:
        mark = "ok  " if ok else "--  " if ok is None else "FAIL"
        failed += ok is False
        print(f"{mark}  {part:<10} {detail}")
    return 1 if failed else 0


async def _doctor_async(args: argparse.Namespace, config: Any, results: list[tuple[str, bool | None, str]]) -> None:
    import asyncio

    from stormguard.scoring.stores import open_store

    url = args.store or config.store.url
    shown = url.split("?")[0]
    try:
        store = open_store(url, config, failover=False)
        try:
            async with asyncio.timeout(5):
                n, blocks = await store.count(), await store.blocks()
            results.append(("store", True, f"{shown}: {n} keys, {len(blocks)} blocked"))
        finally:
            await store.close()
    except Exception as exc:  # noqa: BLE001 - doctor reports every failure as a line
        results.append(("store", False, f"{shown}: {type(exc).__name__}: {exc}"))
    cs = config.crowdsec
    from stormguard.scoring.enforce.bridge import bouncer_key, machine
    from stormguard.scoring.enforce.lapi import LapiError, LocalApi

    try:
        creds = machine(cs)
        key = bouncer_key(cs)
    except ValueError as exc:
        results.append(("crowdsec", False, str(exc)))
        return
    lapi = cs.lapi_url or (creds.url if creds else "")
    if not lapi:
        results.append(("crowdsec", None, "not configured ([crowdsec] lapi_url)"))
        return
    probes = []
    if key:
        probes.append((LocalApi(lapi, bouncer_key=key, timeout=cs.timeout), "check_bouncer", "bouncer",
                       f"{lapi}: bouncer key accepted"))
    if creds is not None:
        probes.append((LocalApi(lapi, machine=creds, timeout=cs.timeout), "login", "machine",
                       f"{lapi}: machine {creds.login} logged in"))
    for api, call, role, ok in probes:
        try:
            await getattr(api, call)()
            results.append(("crowdsec", True, ok))
        except LapiError as exc:
            results.append(("crowdsec", False, f"{role}: {exc}"))
        finally:
            await api.close()
    if not key and creds is None:
        results.append(("crowdsec", False, f"{lapi}: no bouncer key and no machine credentials"))


def _doctor_local(args: argparse.Namespace, config: Any) -> list[tuple[str, bool | None, str]]:
    out: list[tuple[str, bool | None, str]] = []
    try:
        from stormguard.server.live.model import check_model, resolve_model

        path = resolve_model(config.server.model)
        if path is None:
            out.append(("model", None, "none (live model scoring off)"))
        else:
            out.append(("model", True, str(check_model(path))))
    except Exception as exc:  # noqa: BLE001
        out.append(("model", False, f"{type(exc).__name__}: {exc}"))
    geo = config.geoip
    paths = [p for p in (getattr(geo, "country_db", ""), getattr(geo, "asn_db", "")) if p]
    if not paths:
        out.append(("geoip", None, "not configured ([geoip])"))
    for p in paths:
        out.append(("geoip", Path(p).is_file(), p if Path(p).is_file() else f"{p}: not found"))
    from stormguard.scoring.enforce.nftables import NftError, NftSets

    try:
        version = NftSets(command=shlex.split(args.nft_command)).run(["--version"]).strip()
        out.append(("nftables", True, version))
    except NftError as exc:
        out.append(("nftables", None, str(exc)))
    return out
