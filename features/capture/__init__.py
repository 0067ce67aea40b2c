"""Capture files → packets → flows: pcap/pcapng readers, link layers and tunnels, IP and TCP reassembly,
QUIC and DTLS carriers, and the reader that turns a capture into connection records (:mod:`.reader`)."""
