"""stormguard.features — from raw traffic to connection records, and from records to client feature vectors.

Readers (one module per input kind) yield plain ``dict`` rows keyed by :data:`stormguard.schema.RECORD_COLUMNS`
and report every skipped packet or line to a :class:`stormguard.report.ReplayStats`; they never raise on bad
input.

* :mod:`.sniff` — what kind of file is this (by content, not by name)
* :mod:`.replay` — many inputs → one record table
* :mod:`.capture` — pcap/pcapng → packets → flows → TLS / QUIC / DTLS / HTTP records
* :mod:`.tls` — ClientHello parsing, JA3, JA4
* :mod:`.http` — header entropy, the header-order fingerprint, HTTP/1.x requests
* :mod:`.logs` — access logs (combined, common, JSON lines, named formats) and HAR files
* :mod:`.clients` — the client feature vector: one definition, computed in batch and online
"""
