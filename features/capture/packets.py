"""Link layer → IP → TCP/UDP, decoded in place with ``struct.unpack_from`` (no per-layer objects).

:meth:`Decoder.decode` returns ``(ipproto, src, dst, sport, dport, tcp_flags, tcp_seq, payload)`` for a TCP or UDP
packet (addresses as packed bytes, ``payload`` a ``bytes`` slice), or ``None`` for anything that cannot carry a
ClientHello or HTTP request. Handles Ethernet with 802.1Q/QinQ VLAN tags, MPLS and PPPoE, Linux SLL/SLL2, raw
IP, BSD null/loopback (either byte order), PPP, IEEE 802.11 (bare, radiotap, Prism, AVS, PPI; LLC/SNAP data
frames), IPv4 (fragments reassembled, bounded), IPv6 extension headers (hop-by-hop, routing, fragment, destination
options, AH), and tunnels: IP-in-IP/6in4, GRE (keys, sequence numbers, transparent Ethernet bridging, ERSPAN
I/II/III), VXLAN (UDP 4789), Geneve (UDP 6081), GTP-U (UDP 2152), CAPWAP (UDP 5247 data in clear: 802.3 or
802.11 frames; UDP 5246/5247 DTLS: the DTLS records, for the ClientHello) and Teredo (UDP 3544).

A packet that cannot be used is counted in :attr:`Decoder.skipped` under the reason it stopped at (link type,
non-IP ethertype, encrypted 802.11 frame, fragmented CAPWAP, truncated header, ...), so a replay can say which
encapsulations it skipped instead of dropping them silently.
"""

from __future__ import annotations

from struct import unpack_from

Decoded = tuple[int, bytes, bytes, int, int, int, int, bytes]

LT_NULL = 0
LT_ETHERNET = 1
LT_PPP = 9
LT_RAW = 101
LT_LINUX_SLL = 113
LT_LINUX_SLL2 = 276
LT_IEEE802_11 = 105
LT_PRISM = 119
LT_RADIOTAP = 127
LT_AVS = 163
LT_PPI = 192

#: UDP ports of the tunnels unwrapped here (a packet to or from one of them goes through the general decoder).
TUNNEL_PORTS = frozenset((4789, 4790, 6081, 2152, 5246, 5247, 3544))
_CAPWAP = (5246, 5247)  # control and data channels
_SNAP = b"\xaa\xaa\x03\x00\x00\x00"
_SNAP_BRIDGE = b"\xaa\xaa\x03\x00\x00\xf8"  # 802.1H bridge tunnel encapsulation
#: Distinct skip reasons kept at most (the rest are counted under one catch-all reason).
MAX_REASONS = 256

_VLAN = frozenset((0x8100, 0x88A8, 0x9100, 0x9200))
MAX_DEPTH = 4
MAX_FRAG_KEYS = 4096
MAX_FRAG_BYTES = 65535 + 1500
MAX_FRAG_TOTAL = 16 << 20  # bytes of incomplete datagrams kept at most


class Decoder:
    """Packet decoder with the little state it needs (IP fragment reassembly)."""

    __slots__ = ("frags", "fragments", "frag_bytes", "skipped")

    def __init__(self) -> None:
        self.frags: dict[tuple, list] = {}
        self.fragments = 0  # fragments seen (for the stats)
        self.frag_bytes = 0  # bytes held over all incomplete datagrams
        self.skipped: dict[str, int] = {}  # reason -> packets not decoded for it

    def skip(self, reason: str) -> None:
        """Count one packet that cannot be used, under ``reason`` (returns nothing: callers return ``None``)."""
        sk = self.skipped
        if reason not in sk and len(sk) >= MAX_REASONS:
            reason = "not decoded (other reasons)"
        sk[reason] = sk.get(reason, 0) + 1

    def decode(self, lt: int, buf: bytes, off: int, end: int) -> Decoded | None:
        try:
            if lt == 1:
                return self.ether(buf, off, end, 0)
            if lt == 113:  # Linux cooked v1: 16-byte header, protocol last
                if end - off < 16:
                    return None
                return self.l3((buf[off + 14] << 8) | buf[off + 15], buf, off + 16, end, 0)
            if lt == 276:  # Linux cooked v2: protocol first, 20-byte header
                if end - off < 20:
                    return None
                return self.l3((buf[off] << 8) | buf[off + 1], buf, off + 20, end, 0)
            if lt in (101, 12, 14, 228, 229):
                return self.ip(buf, off, end, 0)
            if lt == 0 or lt == 108:
                if end - off < 4:
                    return None
                fam = unpack_from("<I", buf, off)[0]
                if fam > 0xFFFF:
                    fam = unpack_from(">I", buf, off)[0]
                if fam == 2:
                    return self.ipv4(buf, off + 4, end, 0)
                if fam in (10, 24, 28, 30):
                    return self.ipv6(buf, off + 4, end, 0)
                return None
            if lt in (9, 50, 51, 104):
                return self.ppp(buf, off, end, 0)
            if lt == LT_IEEE802_11:
                return self.dot11(buf, off, end, 0)
            if lt == LT_RADIOTAP:  # little-endian header length at byte 2
                return self.dot11(buf, off + unpack_from("<H", buf, off + 2)[0], end, 0)
            if lt == LT_PRISM:
                return self.dot11(buf, off + 144, end, 0)
            if lt == LT_AVS:  # big-endian header length at byte 4
                return self.dot11(buf, off + unpack_from(">I", buf, off + 4)[0], end, 0)
            if lt == LT_PPI:  # little-endian header length at byte 2, the link type of what follows at byte 4
                hlen, dlt = unpack_from("<HI", buf, off + 2)
                if dlt == LT_IEEE802_11:
                    return self.dot11(buf, off + hlen, end, 0)
                if dlt == LT_ETHERNET:
                    return self.ether(buf, off + hlen, end, 0)
                return self.skip(f"PPI carrying link type {dlt}")
            return self.skip(f"link type {lt} not decoded")
        except Exception:  # struct.error on a cut header, ...: not a packet we can use
            self.skip("truncated or malformed header")
            return None

    # --- link layers -------------------------------------------------------------------------------------
    def ether(self, buf: bytes, off: int, end: int, depth: int) -> Decoded | None:
        if end - off < 14:
            return None
        et = (buf[off + 12] << 8) | buf[off + 13]
        off += 14
        while et in _VLAN:
            if end - off < 4:
                return None
            et = (buf[off + 2] << 8) | buf[off + 3]
            off += 4
        if et == 0x0800:
            return self.ipv4(buf, off, end, depth)
        if et == 0x86DD:
            return self.ipv6(buf, off, end, depth)
        if et <= 1500:  # an 802.3 length field: LLC follows (SNAP carries an ethertype)
            if buf[off:off + 6] in (_SNAP, _SNAP_BRIDGE):
                return self.l3((buf[off + 6] << 8) | buf[off + 7], buf, off + 8, end, depth)
            return self.skip("802.3/LLC frame without SNAP (not IP)")
        return self.l3(et, buf, off, end, depth)

    def dot11(self, buf: bytes, off: int, end: int, depth: int, swap: bool = False) -> Decoded | None:
        """An IEEE 802.11 frame: data frames with an LLC/SNAP header carry IP; the rest is counted and skipped.

        ``swap``: the two frame-control bytes may be swapped (some access points send them so in CAPWAP;
        Wireshark's ``capwap.swap_fc`` is on by default): read them swapped when only that makes a data frame.
        """
        if end - off < 24:
            return self.skip("802.11 frame too short")
        fc, flags = buf[off], buf[off + 1]
        if swap and (fc >> 2) & 3 != 2 and (flags >> 2) & 3 == 2:
            fc, flags = flags, fc
        if (fc >> 2) & 3 != 2:
            return self.skip("802.11 management/control frame")
        sub = fc >> 4
        if sub & 4:
            return self.skip("802.11 data frame without payload (null data)")
        if flags & 0x40:
            return self.skip("802.11 protected (encrypted) data frame")
        p = off + 24
        if flags & 3 == 3:
            p += 6  # four addresses (WDS / mesh)
        if sub & 8:  # QoS data: QoS control, and an HT control field when the order bit is set
            p += 2
            if flags & 0x80:
                p += 4
        if end - p < 8:
            return self.skip("802.11 frame too short")
        if buf[p:p + 6] not in (_SNAP, _SNAP_BRIDGE):
            return self.skip("802.11 data frame without LLC/SNAP (A-MSDU or not IP)")
        return self.l3((buf[p + 6] << 8) | buf[p + 7], buf, p + 8, end, depth)

    def l3(self, et: int, buf: bytes, off: int, end: int, depth: int) -> Decoded | None:
        if et == 0x0800:
            return self.ipv4(buf, off, end, depth)
        if et == 0x86DD:
            return self.ipv6(buf, off, end, depth)
        if et in _VLAN:
            if end - off < 4:
                return None
            return self.l3((buf[off + 2] << 8) | buf[off + 3], buf, off + 4, end, depth)
        if et == 0x8847 or et == 0x8848:  # MPLS: labels until bottom of stack, then guess by IP version
            while end - off >= 4:
                bos = buf[off + 2] & 1
                off += 4
                if bos:
                    return self.ip(buf, off, end, depth)
            return None
        if et == 0x8864:  # PPPoE session
            if end - off < 8:
                return None
            return self.ppp_proto((buf[off + 6] << 8) | buf[off + 7], buf, off + 8, end, depth)
        return self.skip(f"ethertype 0x{et:04x} (not IP)")

    def ppp(self, buf: bytes, off: int, end: int, depth: int) -> Decoded | None:
        if end - off < 4:
            return None
        if buf[off] == 0xFF and buf[off + 1] == 0x03:
            off += 2
        elif buf[off] == 0x0F and buf[off + 1] == 0x00:  # Cisco HDLC: address, control, ethertype
            return self.l3((buf[off + 2] << 8) | buf[off + 3], buf, off + 4, end, depth)
        if buf[off] & 1:  # compressed protocol field
            return self.ppp_proto(buf[off], buf, off + 1, end, depth)
        return self.ppp_proto((buf[off] << 8) | buf[off + 1], buf, off + 2, end, depth)

    def ppp_proto(self, proto: int, buf: bytes, off: int, end: int, depth: int) -> Decoded | None:
        if proto == 0x21:
            return self.ipv4(buf, off, end, depth)
        if proto == 0x57:
            return self.ipv6(buf, off, end, depth)
        return self.skip(f"PPP protocol 0x{proto:04x} (not IP)")

    # --- IP ----------------------------------------------------------------------------------------------
    def ip(self, buf: bytes, off: int, end: int, depth: int) -> Decoded | None:
        if off >= end:
            return None
        v = buf[off] >> 4
        if v == 4:
            return self.ipv4(buf, off, end, depth)
        if v == 6:
            return self.ipv6(buf, off, end, depth)
        return self.skip("not IPv4/IPv6 where IP was expected")

    def ipv4(self, buf: bytes, off: int, end: int, depth: int) -> Decoded | None:
        if end - off < 20:
            return None
        vihl = buf[off]
        ihl = (vihl & 15) << 2
        if vihl >> 4 != 4 or ihl < 20:
            return None
        tot = (buf[off + 2] << 8) | buf[off + 3]
        if tot >= ihl and off + tot < end:
            end = off + tot  # drop Ethernet padding
        proto = buf[off + 9]
        src = buf[off + 12:off + 16]
        dst = buf[off + 16:off + 20]
        fo = ((buf[off + 6] & 0x3F) << 8) | buf[off + 7]
        if fo:  # MF set or offset non-zero: a fragment
            ident = (buf[off + 4] << 8) | buf[off + 5]
            data = self.defrag((4, src, dst, ident, proto), (fo & 0x1FFF) << 3, bool(fo & 0x2000),
                               buf[off + ihl:end])
            if data is None:
                return None
            return self.l4(proto, src, dst, data, 0, len(data), depth)
        return self.l4(proto, src, dst, buf, off + ihl, end, depth)

    def ipv6(self, buf: bytes, off: int, end: int, depth: int) -> Decoded | None:
        if end - off < 40 or buf[off] >> 4 != 6:
            return None
        plen = (buf[off + 4] << 8) | buf[off + 5]
        if plen and off + 40 + plen < end:
            end = off + 40 + plen
        nh = buf[off + 6]
        src = buf[off + 8:off + 24]
        dst = buf[off + 24:off + 40]
        p = off + 40
        for _ in range(8):
            if nh == 6 or nh == 17:
                break
            if nh in (0, 43, 60):
                if end - p < 2:
                    return None
                nh, p = buf[p], p + ((buf[p + 1] + 1) << 3)
            elif nh == 51:
                if end - p < 2:
                    return None
                nh, p = buf[p], p + ((buf[p + 1] + 2) << 2)
            elif nh == 44:
                if end - p < 8:
                    return None
                nh2 = buf[p]
                fo = (buf[p + 2] << 8) | buf[p + 3]
                ident = unpack_from("!I", buf, p + 4)[0]
                p += 8
                if fo & 0xFFF9:
                    data = self.defrag((6, src, dst, ident, nh2), fo & 0xFFF8, bool(fo & 1), buf[p:end])
                    if data is None:
                        return None
                    return self.l4(nh2, src, dst, data, 0, len(data), depth)
                nh = nh2
            else:
                break
        if p > end:
            return None
        return self.l4(nh, src, dst, buf, p, end, depth)

    def defrag(self, key: tuple, offset: int, more: bool, data: bytes) -> bytes | None:
        """Collect one fragment; returns the reassembled payload once every byte is there."""
        self.fragments += 1
        frags = self.frags
        entry = frags.get(key)
        if entry is None:
            while frags and (len(frags) >= MAX_FRAG_KEYS or self.frag_bytes > MAX_FRAG_TOTAL):
                self.frag_bytes -= frags.pop(next(iter(frags)))[2]  # drop the oldest datagram
            entry = frags[key] = [None, {}, 0]
        if not more:
            entry[0] = offset + len(data)
        old = entry[1].get(offset)
        grow = len(data) - (len(old) if old is not None else 0)
        entry[2] += grow
        self.frag_bytes += grow
        entry[1][offset] = data
        if entry[2] > MAX_FRAG_BYTES or len(entry[1]) > 256:  # too big, or too many tiny pieces
            self.frag_bytes -= entry[2]
            del frags[key]
            return None
        total = entry[0]
        if total is None:
            return None
        have = 0
        parts = []
        for o in sorted(entry[1]):
            d = entry[1][o]
            if o > have:
                return None  # a hole
            if o + len(d) > have:
                parts.append(d[have - o:])
                have = o + len(d)
        if have < total:
            return None
        self.frag_bytes -= entry[2]
        del frags[key]
        return b"".join(parts)[:total]

    # --- transport / tunnels -----------------------------------------------------------------------------
    def l4(self, proto: int, src: bytes, dst: bytes, buf: bytes, off: int, end: int, depth: int) -> Decoded | None:
        if proto == 6:
            if end - off < 20:
                return None
            sport, dport, seq = unpack_from("!HHI", buf, off)
            doff = (buf[off + 12] >> 4) << 2
            if doff < 20:
                return None
            p = off + doff
            return 6, src, dst, sport, dport, buf[off + 13], seq, (buf[p:end] if p < end else b"")
        if proto == 17:
            if end - off < 8:
                return None
            sport, dport = unpack_from("!HH", buf, off)
            p = off + 8
            if depth < MAX_DEPTH and (dport in TUNNEL_PORTS or sport in TUNNEL_PORTS):
                r = self.udp_tunnel(sport, dport, buf, p, end, depth + 1)
                if r is not False:
                    return r
                if (sport in _CAPWAP or dport in _CAPWAP) and end - p > 5 and buf[p] == 1 and buf[p + 4] == 22:
                    p += 4  # CAPWAP DTLS header (preamble type 1): the DTLS records (a ClientHello) follow
            return 17, src, dst, sport, dport, 0, 0, buf[p:end]
        if depth >= MAX_DEPTH:
            return self.skip("tunnels nested too deep")
        if proto == 47:
            return self.gre(buf, off, end, depth + 1)
        if proto == 4:
            return self.ipv4(buf, off, end, depth + 1)
        if proto == 41:
            return self.ipv6(buf, off, end, depth + 1)
        return self.skip(f"IP protocol {proto} (not TCP/UDP)")

    def udp_tunnel(self, sport: int, dport: int, buf: bytes, p: int, end: int, depth: int
                   ) -> Decoded | None | bool:
        """The packet inside a UDP tunnel, ``None`` if it holds nothing usable, ``False`` if it is no tunnel."""
        if (dport == 4789 or dport == 4790) and end - p >= 22 and buf[p] & 0x08:  # VXLAN / VXLAN-GPE
            if buf[p] & 0x04:  # GPE: next-protocol byte (1 IPv4, 2 IPv6, 3 Ethernet)
                nxt = buf[p + 3]
                if nxt == 3:
                    return self.ether(buf, p + 8, end, depth)
                return self.ip(buf, p + 8, end, depth) if nxt in (1, 2) else self.skip("VXLAN-GPE not IP/Ethernet")
            return self.ether(buf, p + 8, end, depth)
        if dport == 6081 and end - p >= 8 and buf[p] >> 6 == 0:  # Geneve
            et = (buf[p + 2] << 8) | buf[p + 3]
            q = p + 8 + ((buf[p] & 0x3F) << 2)
            if et == 0x6558:
                return self.ether(buf, q, end, depth)
            return self.l3(et, buf, q, end, depth)
        if (dport == 2152 or sport == 2152) and end - p >= 8 and buf[p] >> 5 == 1 and buf[p] & 0x10:  # GTP-U v1
            if buf[p + 1] != 0xFF:
                return self.skip("GTP-U message other than G-PDU")
            flags = buf[p]
            q = p + 8
            if flags & 7:  # sequence number, N-PDU number and next-extension type follow
                q += 4
                nxt = buf[q - 1]
                while nxt and q < end:  # extension headers: length in 4-byte units, next type last
                    n = buf[q] << 2
                    if not n:
                        return self.skip("malformed GTP-U extension header")
                    q += n
                    nxt = buf[q - 1]
            return self.ip(buf, q, end, depth)
        if (dport == 5247 or sport == 5247) and end - p >= 8 and buf[p] == 0:  # CAPWAP data channel, in clear
            b1, b2, b3 = buf[p + 1], buf[p + 2], buf[p + 3]
            q = p + ((b1 >> 3) << 2)
            if b3 & 0x80:
                return self.skip("fragmented CAPWAP data")
            if b2 & 1:  # T: native frame of the wireless binding (WBID 1: IEEE 802.11)
                if (b2 >> 1) & 0x1F != 1:
                    return self.skip("CAPWAP wireless binding other than 802.11")
                return self.dot11(buf, q, end, depth, swap=True)
            return self.ether(buf, q, end, depth)
        if dport == 3544 or sport == 3544:  # Teredo: optional authentication and origin headers, then IPv6
            q = p
            if end - q >= 4 and buf[q] == 0 and buf[q + 1] == 1:
                q += 4 + buf[q + 2] + buf[q + 3] + 9
            if end - q >= 8 and buf[q] == 0 and buf[q + 1] == 0:
                q += 8
            if end - q >= 40 and buf[q] >> 4 == 6:
                return self.ipv6(buf, q, end, depth)
            return False  # a Teredo bubble or some other UDP on that port: plain UDP
        return False

    def gre(self, buf: bytes, off: int, end: int, depth: int) -> Decoded | None:
        if end - off < 4:
            return None
        flags = buf[off]
        ver = buf[off + 1] & 7
        et = (buf[off + 2] << 8) | buf[off + 3]
        p = off + 4
        if flags & 0x80 or flags & 0x40:  # checksum (and offset) present
            p += 4
        if flags & 0x20:
            p += 4  # key
        if flags & 0x10:
            p += 4  # sequence number
        if ver == 1 and buf[off + 1] & 0x80:
            p += 4  # PPTP acknowledgment
        if p > end:
            return None
        if et == 0x6558:
            return self.ether(buf, p, end, depth)
        if et == 0x88BE:  # ERSPAN type II has an 8-byte header (sequence flag set); type I has none
            return self.ether(buf, p + 8 if flags & 0x10 else p, end, depth)
        if et == 0x22EB:  # ERSPAN type III: 12 bytes, +8 with the platform-specific subheader
            if end - p < 12:
                return None
            return self.ether(buf, p + (20 if buf[p + 11] & 1 else 12), end, depth)
        if et == 0x880B:  # PPP in (enhanced) GRE
            return self.ppp(buf, p, end, depth)
        return self.l3(et, buf, p, end, depth)
