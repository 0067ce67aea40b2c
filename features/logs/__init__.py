"""Access logs and HAR files → connection records: CLF-style formats (:mod:`.clf`), JSON lines (:mod:`.jsonl`),
the per-file reader that picks between them (:mod:`.reader`), HAR (:mod:`.har`), and byte-range splitting of
large logs across processes (:mod:`.split`)."""
