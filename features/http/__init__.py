"""HTTP requests: header entropy and the header-order fingerprint (:mod:`.headers`), header set and order against
the browser family a User-Agent claims (:mod:`.families`, rules in the generated :mod:`.header_family_table`),
HTTP/1.x requests read from a reassembled client stream (:mod:`.requests`)."""
