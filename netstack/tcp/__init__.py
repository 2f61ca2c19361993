"""TCP: a sans-IO connection core, the layer that demultiplexes it, and the asyncio adapter.

``connection.py``  one connection's state machine, windows and timers (sans-IO)
``states.py``      the RFC 9293 state table
``seq.py``         32-bit sequence arithmetic
``rtt.py``         RFC 6298 retransmission timer estimation
``congestion.py``  congestion control behind a small interface (NewReno)
``buffers.py``     out-of-order reassembly with SACK reporting, and the SACK scoreboard
``layer.py``       demultiplexing, listeners, SYN cookies, ISNs, ephemeral ports
``transport.py``   asyncio Transports, servers, streams over the layer
"""
