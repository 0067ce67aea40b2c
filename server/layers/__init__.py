"""The defence layers, one per module, outermost first: identity, breaker, reputation gate (seam in
:mod:`.gate`, store-backed decisions in :mod:`.reputation_gate`, known-blocked fast path in :mod:`.fastpath`),
limiter (local and Redis GCRA), quota and tenant pools; how a layer refuses (:mod:`.refuse`) and what
``retry:`` it hands out (:mod:`.retry`)."""
