"""stormguard's blocks as files that proxies read.

* ``plain`` — one address per line (``#`` comments): ipset restore scripts, ``deny`` lists, most WAFs.
* ``nginx-geo`` — ``ADDRESS 1;`` lines for nginx's ``geo`` module:
  ``geo $stormguard_blocked { default 0; include /etc/nginx/stormguard-blocked.geo; }`` then
  ``if ($stormguard_blocked) { return 403; }``.
* ``haproxy-map`` — ``ADDRESS blocked`` lines for ``map_ip``: ``http-request deny if { src,map_ip(/etc/haproxy/
  stormguard.map) -m found }``.

Only IP keys are written (a key that is not an address cannot be matched by a proxy). Files are replaced
atomically (written beside, then renamed), so a proxy reloading at any moment reads a whole list.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

from stormguard.scoring.enforce.blocks import Block

FORMATS = ("plain", "nginx-geo", "haproxy-map")


def render(blocks: Iterable[Block], fmt: str, now: float) -> str:
    if fmt not in FORMATS:
        raise ValueError(f"blocklist format {fmt!r}: use one of {', '.join(FORMATS)}")
    addrs = sorted({b.address for b in blocks if b.version is not None and b.until > now},
                   key=lambda a: (":" in a, a))
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))
    head = f"# stormguard blocklist ({fmt}), {len(addrs)} addresses, {stamp}\n"
    if fmt == "plain":
        return head + "".join(f"{a}\n" for a in addrs)
    if fmt == "nginx-geo":
        return head + "".join(f"{a} 1;\n" for a in addrs)
    return head + "".join(f"{a} blocked\n" for a in addrs)


def write_atomic(path: str | Path, text: str) -> None:
    p = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", dir=p.parent or ".")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
