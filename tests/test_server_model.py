"""Live model scoring (server/scoring_task.py) with the real bundled default model, no uvicorn.

The scorer must keep admission free of scikit-learn: observing is a bounded, coalescing enqueue; scoring runs in
micro-batches of at most 256 keys in a worker thread; verdicts land in the reputation store as ``model:<profile>``
and only ever pull a score down (see the module docstring for the blend rule).
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest
from stormguard.features.clients.online import OnlineClientFeatures
from stormguard.models.bundle import BundleError, read_manifest
from stormguard.scoring.engine import ReputationEngine
from stormguard.scoring.stores.memory import MemoryStore
from stormguard.server.live.model import ModelScorer, default_model_path

ROOT = Path(__file__).resolve().parent.parent
BUNDLE = ROOT / "data" / "default-model.skops"
T0 = 1_700_000_000.0


@pytest.fixture(scope="module")
def scorer_model():
    """The default bundle loaded once (a LiveScorer): every test builds its own ModelScorer around it."""
    assert BUNDLE.is_file(), "data/default-model.skops missing: run python data/make_model.py"
    return ModelScorer(str(BUNDLE), MemoryStore()).scorer


def storm(features: OnlineClientFeatures, ip: str, n: int = 30, t0: float = T0) -> None:
    """A reconnect storm: ``n`` connections 0.13 s apart, each dropped 50 ms after opening."""
    for i in range(n):
        h = features.open({"src_ip": ip, "ts": t0 + i * 0.13, "status": 200, "user_agent": "python-requests/2.31.0"})
        features.close(h, t0 + i * 0.13 + 0.05)


def steady(features: OnlineClientFeatures, ip: str, t0: float = T0) -> None:
    for i in range(3):
        h = features.open({"src_ip": ip, "ts": t0 + i * 60, "status": 200, "user_agent": "curl/7.88.1"})
        features.close(h, t0 + i * 60 + 30)


def test_default_bundle_is_small_and_names_its_training_data() -> None:
    assert default_model_path() == BUNDLE
    assert BUNDLE.stat().st_size < 2_000_000
    manifest = read_manifest(BUNDLE)
    assert manifest["kind"] == "behaviour"
    assert manifest["metrics"]["trained_on"][:3] == ["sample.pcap", "sample-access.log", "sample-access.jsonl"]
    # issue 12: the content model is trained on the labelled corpus sources, with its held-out figures
    assert manifest["metrics"]["generator"] == "data/make_model.py --corpus"
    assert manifest["metrics"]["leave_one_source_out"]["roc_auc"] > 0.9
    assert manifest["data_fingerprint"].startswith("sha256:")


def test_missing_or_bad_bundle_is_refused_at_construction(tmp_path: Path) -> None:
    missing = tmp_path / "nope.skops"
    with pytest.raises(BundleError, match=r"nope\.skops refused: no such file"):
        ModelScorer(missing, MemoryStore())
    garbage = tmp_path / "garbage.skops"
    garbage.write_bytes(b"not a model at all")
    with pytest.raises(BundleError, match=r"garbage\.skops refused: not a zip archive"):
        ModelScorer(str(garbage), MemoryStore())
    tampered = tmp_path / "tampered.skops"
    raw = bytearray(BUNDLE.read_bytes())
    raw[len(raw) // 2] ^= 0xFF                                  # inside the payload member
    tampered.write_bytes(bytes(raw))
    with pytest.raises(BundleError, match=r"tampered\.skops refused: .*(corrupt|sha256|not a zip)"):
        ModelScorer(tampered, MemoryStore())
    with pytest.raises(TypeError):
        ModelScorer(object(), MemoryStore())


def test_observe_is_bounded_and_coalesces(scorer_model) -> None:
    drops: list[int] = []
    scorer = ModelScorer(scorer_model, MemoryStore(), max_pending=512, on_drop=lambda: drops.append(1))
    accepted = [scorer.observe(f"10.1.{i // 256}.{i % 256}") for i in range(1000)]
    assert len(scorer) == 512 and sum(accepted) == 512
    assert scorer.dropped == 488 == len(drops)
    assert scorer.observe("10.1.0.0")                      # already pending: coalesced, not dropped
    assert len(scorer) == 512 and scorer.dropped == 488


def test_thousand_keys_score_in_micro_batches_into_the_store(scorer_model) -> None:
    features = OnlineClientFeatures("src_ip", 300.0)
    stormers = [f"10.2.0.{i}" for i in range(1, 21)]
    quiet = [f"10.3.{i // 256}.{i % 256}" for i in range(980)]
    for ip in stormers:
        storm(features, ip)
    for ip in quiet:
        steady(features, ip)
    store = MemoryStore()
    sizes: list[int] = []
    scorer = ModelScorer(scorer_model, ReputationEngine(store), features, clock=lambda: T0 + 200,
                         on_batch=lambda n, w: sizes.append(n))
    for ip in quiet[:500] + stormers + quiet[500:]:
        scorer.observe(ip)
        scorer.observe(ip)                                   # repeats coalesce
    assert len(scorer) == 1000
    assert asyncio.run(scorer.flush()) == 1000
    assert sizes == [256, 256, 256, 232] and scorer.max_batch_seen == 256
    assert len(scorer) == 0 and scorer.scored == 1000
    for ip in stormers:
        rep = asyncio.run(store.get(ip, T0 + 200))
        assert rep.score < -1.0 and rep.reasons[-1].startswith("model:")
    # the model never raises a score: the steady clients (scored above 0) were not written
    assert scorer.written == len(stormers) == len(store)


def test_blend_rule_pulls_down_only_and_does_not_stack(scorer_model) -> None:
    features = OnlineClientFeatures("src_ip", 300.0)
    storm(features, "10.4.0.1")
    storm(features, "10.4.0.2")
    store = MemoryStore()
    now = T0 + 100
    scorer = ModelScorer(scorer_model, store, features, clock=lambda: now)

    async def go():
        await store.set("10.4.0.1", 50.0, "manual", now=now)     # trusted-ish: the model pulls it down
        await store.set("10.4.0.2", -45.0, "rules", now=now)     # already worse than the model: untouched
        scorer.observe("10.4.0.1")
        scorer.observe("10.4.0.2")
        first = {v.key: v for v in await scorer.score_batch()}
        scorer.observe("10.4.0.1")
        again = await scorer.score_batch()
        return first, again, await store.get("10.4.0.1", now), await store.get("10.4.0.2", now)

    first, again, pulled, kept = asyncio.run(go())
    model_score = first["10.4.0.1"].score
    assert first["10.4.0.1"].written and pulled.score == pytest.approx(model_score, abs=1e-6)
    assert pulled.reasons[-1] == f"model:{first['10.4.0.1'].profile}"
    assert not first["10.4.0.2"].written and kept.score == pytest.approx(-45.0) and kept.reasons == ("rules",)
    assert not again[0].written                              # same behaviour again: no second deduction


def test_scoring_runs_in_a_worker_thread_while_the_loop_keeps_ticking(scorer_model) -> None:
    features = OnlineClientFeatures("src_ip", 300.0)
    keys = [f"10.5.{i // 256}.{i % 256}" for i in range(600)]
    for ip in keys:
        storm(features, ip, n=6)
    store = MemoryStore()
    scorer = ModelScorer(scorer_model, store, features, interval=0.05)

    async def go():
        loop_thread = threading.get_ident()
        ticks = 0
        stop = asyncio.Event()

        async def ticker():
            nonlocal ticks
            while not stop.is_set():
                ticks += 1
                await asyncio.sleep(0.001)

        tick_task = asyncio.create_task(ticker())
        task = asyncio.create_task(scorer.run())
        await asyncio.sleep(0)                               # run() creates its wake-up event
        for ip in keys:
            scorer.observe(ip)
        for _ in range(400):                                 # bounded wait (≤ 20 s)
            if scorer.scored >= len(keys):
                break
            await asyncio.sleep(0.05)
        stop.set()
        task.cancel()
        await asyncio.gather(task, tick_task, return_exceptions=True)
        return loop_thread, ticks

    loop_thread, ticks = asyncio.run(go())
    assert scorer.scored == len(keys) and scorer.max_batch_seen <= 256
    assert scorer.score_thread_ids and loop_thread not in scorer.score_thread_ids
    assert ticks > 0


def test_start_subscribes_to_the_runtime_and_registers_metrics(scorer_model) -> None:
    from stormguard.server.layers.reputation_gate import ReputationGateAdapter
    from stormguard.server.ops.metrics import Metrics

    engine = ReputationEngine(MemoryStore())
    features = OnlineClientFeatures("src_ip", 300.0)
    storm(features, "10.6.0.1")
    gate = ReputationGateAdapter(engine)
    rt = SimpleNamespace(observers=[], metrics=Metrics(),
                         reputation=SimpleNamespace(engine=engine, gate=gate, live=SimpleNamespace(features=features)))
    scorer = ModelScorer.for_runtime(scorer_model, rt, interval=0.02)
    assert scorer.engine is engine and scorer.vector_of == features.vector

    async def go():
        scorer.start(rt)
        assert rt.observers == [scorer.observer]
        ctx = SimpleNamespace(identity=SimpleNamespace(ip="10.6.0.1"))
        for obs in rt.observers:
            obs("open", ctx, {})
            obs("refusal", ctx, {"layer": "reputation"})
        for _ in range(200):
            if scorer.scored:
                break
            await asyncio.sleep(0.02)
        await scorer.stop()
        return rt.metrics.render()[0].decode()

    text = asyncio.run(go())
    assert rt.observers == []
    assert scorer.scored == 1 and scorer.written == 1
    assert "stormguard_model_batches_total 1.0" in text
    assert "stormguard_model_batch_seconds_count 1.0" in text
    assert "stormguard_model_pending 0.0" in text


def test_wired_into_a_real_runtime_behind_the_live_rules(scorer_model) -> None:
    """The app's own Runtime and ReputationService (no uvicorn): connection events reach the live rules' online
    features, and the scorer reads its vectors from there, in a worker thread."""
    from stormguard.server.app import create_app
    from stormguard.server.context import ClientIdentity, RequestContext
    from stormguard.server.layers.reputation_gate import ReputationService
    from stormguard.server.ops.settings import ServerSettings

    settings = ServerSettings()
    store = MemoryStore()
    service = ReputationService(ReputationEngine(store), settings)
    app = create_app(settings, reputation=service)
    rt = app.state.stormguard
    verdicts = []

    async def go():
        await service.start()
        scorer = ModelScorer.for_runtime(scorer_model, rt, interval=0.05, on_score=verdicts.append)
        scorer.start(rt)
        await store.set("10.7.0.1", 80.0, "manual")
        for _ in range(8):                                   # eight connections dropped at once
            ctx = RequestContext(ClientIdentity(ip="10.7.0.1"))
            rt.emit("open", ctx, topics=("t",))
            rt.emit("close", ctx, reason="disconnect")
        for _ in range(200):                                 # bounded wait (≤ 10 s)
            if verdicts:
                break
            await asyncio.sleep(0.05)
        await scorer.stop()
        await service.live.flush()
        rep = await store.get("10.7.0.1")
        await service.stop()
        return scorer, rep

    scorer, rep = asyncio.run(go())
    assert [v.key for v in verdicts] == ["10.7.0.1"] and scorer.skipped == 0
    assert threading.get_ident() not in scorer.score_thread_ids
    # both sides wrote: the live rules' deductions and (when lower still) the model's baseline
    assert rep.score < 80.0 and rep.reasons[0] == "manual"
    assert any(not r.startswith("model:") for r in rep.reasons[1:])


def test_keys_wait_for_the_live_rules_to_settle_and_the_setting_resolves(scorer_model, tmp_path: Path) -> None:
    from stormguard.server.live.model import resolve_model

    features = OnlineClientFeatures("src_ip", 300.0)
    storm(features, "10.8.0.1")
    scorer = ModelScorer(scorer_model, MemoryStore(), features, settle=30.0)
    scorer.observe("10.8.0.1")
    assert asyncio.run(scorer.score_batch(wait_settle=True)) == [] and len(scorer) == 1   # not settled yet
    assert [v.key for v in asyncio.run(scorer.score_batch())] == ["10.8.0.1"]           # flush-style: taken
    assert resolve_model("default") == BUNDLE
    assert resolve_model("") is None and resolve_model("none") is None and resolve_model(None) is None
    assert resolve_model(str(tmp_path / "m.skops")) == tmp_path / "m.skops"


def test_check_model_is_the_serve_command_preflight(tmp_path: Path) -> None:
    from stormguard.server.live.model import check_model

    assert check_model(BUNDLE) == BUNDLE
    with pytest.raises(BundleError, match="no such file"):
        check_model(tmp_path / "missing.skops")


def test_serve_scores_live_clients_with_the_bundled_model() -> None:
    """`stormguard serve` out of the box: the default bundle scores clients in micro-batches, visible in /metrics."""
    import time as _time

    from server_harness import SSEClient, running_server

    with running_server({"enable_test_routes": True}) as srv:
        for i in range(6):
            c = SSEClient(srv.port, "/events?topic=m", source=f"127.0.4.{i + 1}")
            c.close()
        deadline = _time.monotonic() + 30
        while srv.metric("stormguard_model_scored_total") < 1 and _time.monotonic() < deadline:
            _time.sleep(0.2)
        assert srv.metric("stormguard_model_scored_total") >= 1
        assert srv.metric("stormguard_model_errors_total") == 0


def test_serve_refuses_a_bad_model_with_one_clear_line(tmp_path) -> None:
    import subprocess
    import sys

    bad = tmp_path / "model.skops"
    bad.write_bytes(b"not a bundle")
    proc = subprocess.run([sys.executable, "-m", "stormguard", "serve", "--port", "1", "--model", str(bad)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "stormguard serve:" in proc.stderr and "model.skops" in proc.stderr
    assert "Traceback" not in proc.stderr
