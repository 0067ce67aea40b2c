"""The storm lab: a load generator that knows SSE and client behaviours (``stormguard storm``).

* :mod:`.profile` — client classes as data (TOML), the shipped default profile
* :mod:`.wire` — one request over an asyncio protocol, events parsed as they arrive
* :mod:`.behaviours` — what each class does, one coroutine per client
* :mod:`.record` — per-class, per-second counters, the report, convergence, the plot
* :mod:`.runner` — processes, progress, metrics scraping, labels

A client tool: it imports nothing from the rest of stormguard, so it can load any SSE service.
"""
