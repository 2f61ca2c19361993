"""Host-side Linux facilities shared by the platforms that run on a Linux host.

``tap``    tap interfaces through ``/dev/net/tun`` (the unix platform's netif,
           and the hvt tender's network devices)
``netns``  network namespaces for tests and benchmarks

``platforms.unix`` and ``platforms.hvt`` never import each other; what both
need from the host lives here, and nothing here imports either of them.
"""
