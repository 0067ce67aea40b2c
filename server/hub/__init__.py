"""The SSE hub: topics and fan-out (:mod:`.topics`), event history in memory or Redis Streams
(:mod:`.history`, :mod:`.history_redis`), the SSE wire and publisher endpoint (:mod:`.sse`), the demo page
(:mod:`.page`)."""
