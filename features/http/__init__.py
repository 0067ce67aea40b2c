"""HTTP requests: header entropy and the header-order fingerprint (:mod:`.headers`), HTTP/1.x requests read
from a reassembled client stream (:mod:`.requests`)."""
