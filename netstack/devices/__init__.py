"""Devices that wrap any Netif and are themselves Netifs.

``link`` joins two in-memory ends for tests, ``pcap`` records what crosses a
device, ``faults`` makes a device lossy on purpose. Because each one takes a
``Netif`` and is one, they stack in the wiring in any order, e.g.
``PcapNetif(FaultInjector(tap, config, clock=clock), "run.pcap")`` records
what the stack saw after the faults.
"""
