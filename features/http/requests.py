"""HTTP/1.x requests from the client side of a reassembled TCP stream.

:class:`HttpRequestStream` takes in-order client bytes and returns one dict per complete request head (method,
path, version, User-Agent, header names in wire order). Bodies with a ``Content-Length`` are skipped; anything the
parser cannot follow (chunked bodies, a CONNECT tunnel, junk) ends HTTP parsing for the stream (``done``), after
which the capture layer only looks for a new protocol at segment starts (e.g. TLS inside CONNECT).
"""

from __future__ import annotations

METHODS = (b"GET ", b"POST ", b"HEAD ", b"PUT ", b"DELETE ", b"OPTIONS ", b"PATCH ", b"CONNECT ", b"TRACE ",
           b"PROPFIND ", b"PROPPATCH ", b"MKCOL ", b"COPY ", b"MOVE ", b"LOCK ", b"UNLOCK ", b"SEARCH ",
           b"REPORT ", b"PURGE ")
MAX_HEAD = 64 * 1024


def looks_like_http_request(b: bytes) -> bool:
    return b.startswith(METHODS)


def parse_request_head(head: bytes) -> dict | None:
    """Parse a request head (request line + header lines, without the final blank line)."""
    lines = head.split(b"\n")
    parts = lines[0].rstrip(b"\r").split(b" ")
    if len(parts) < 2:
        return None
    method = parts[0].decode("ascii", "replace")
    version = parts[-1].decode("ascii", "replace") if len(parts) >= 3 else "HTTP/0.9"
    path = b" ".join(parts[1:-1] if len(parts) >= 3 else parts[1:]).decode("utf-8", "backslashreplace")
    names: list[str] = []
    ua = None
    clen = 0
    chunked = False
    for line in lines[1:]:
        line = line.rstrip(b"\r")
        if not line:
            continue
        if line[:1] in (b" ", b"\t"):  # obsolete line folding: continuation of the previous value
            continue
        colon = line.find(b":")
        if colon <= 0:
            continue
        name = line[:colon].strip().decode("latin-1")
        if not name or "," in name:
            continue
        names.append(name)
        lname = name.lower()
        if lname == "user-agent":
            ua = line[colon + 1:].strip().decode("utf-8", "backslashreplace")
        elif lname == "content-length":
            try:
                clen = max(0, int(line[colon + 1:].strip()))
            except ValueError:
                clen = -1
        elif lname == "transfer-encoding" and b"chunked" in line[colon + 1:].lower():
            chunked = True
    return {
        "method": method,
        "path": path,
        "http_version": version,
        "user_agent": ua,
        "header_names": ",".join(names) or None,
        "_body": -1 if chunked or clen < 0 else clen,
    }


class HttpRequestStream:
    """Successive requests on one client stream (keep-alive, pipelining)."""

    __slots__ = ("buf", "skip", "done")

    def __init__(self) -> None:
        self.buf = bytearray()
        self.skip = 0  # body bytes still to skip
        self.done = False

    def feed(self, data: bytes) -> list[dict]:
        out: list[dict] = []
        if self.done:
            return out
        if self.skip:
            if len(data) <= self.skip:
                self.skip -= len(data)
                return out
            data = data[self.skip:]
            self.skip = 0
        buf = self.buf
        buf += data
        while buf:
            if not looks_like_http_request(bytes(buf[:10])):
                # a partial method token at the start is fine while the first bytes trickle in
                if len(buf) >= 10 or not any(m.startswith(bytes(buf)) for m in METHODS):
                    self.done = True
                break
            end = buf.find(b"\r\n\r\n")
            sep = 4
            if end < 0:
                end = buf.find(b"\n\n")
                sep = 2
            if end < 0:
                if len(buf) > MAX_HEAD:
                    self.done = True
                break
            req = parse_request_head(bytes(buf[:end]))
            del buf[:end + sep]
            if req is None:
                self.done = True
                break
            body = req.pop("_body")
            out.append(req)
            if req["method"] == "CONNECT" or body < 0:
                self.done = True
                break
            if body:
                if body >= len(buf):
                    self.skip = body - len(buf)
                    buf.clear()
                else:
                    del buf[:body]
        if self.done:
            self.buf = bytearray()
        return out

    def pending(self) -> dict | None:
        """A request head cut short by the end of the stream, parsed as far as it goes."""
        if self.done or not self.buf or not looks_like_http_request(bytes(self.buf[:10])):
            return None
        req = parse_request_head(bytes(self.buf))
        if req is not None:
            req.pop("_body")
        return req
