"""TLS ClientHello parsing (:mod:`.clienthello`) and the client fingerprints JA3 (:mod:`.ja3`) and JA4 (:mod:`.ja4`)."""
