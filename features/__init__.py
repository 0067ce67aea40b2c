"""stormguard.features — from raw traffic to connection records, and from records to client feature vectors.

Readers (one module per input kind) yield plain ``dict`` rows keyed by :data:`stormguard.schema.RECORD_COLUMNS`
and report every skipped packet or line to a :class:`stormguard.report.ReplayStats`; they never raise on bad
input.

* :mod:`.sniff` — what kind of file is this (by content, not by name)
* :mod:`.capture` — pcap/pcapng → packets → flows → TLS / QUIC / DTLS / HTTP records
* :mod:`.tls`, :mod:`.ja3`, :mod:`.ja4`, :mod:`.quic` — ClientHello parsing and fingerprints
* :mod:`.logs`, :mod:`.har` — access logs (combined, common, JSON lines) and HAR files
* :mod:`.headers` — header entropy and the header-order fingerprint
* :mod:`.replay` — many inputs → one record table
* :mod:`.windows` (batch) and :mod:`.online` (incremental) — the client feature vector, one definition
"""
