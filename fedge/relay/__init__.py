"""fedge relay: a device to its parent, a server to its devices (docs/relay.md).

A relay keeps one Fleet stream to its parent (the server or another relay) exactly as a daemon
does (:class:`fedge.client.daemon.EdgeDaemon`), and serves its own devices with the server's
Fleet service (:mod:`fedge.relay.children`). Each instruction it gets is forwarded to its
(sampled) devices and answered with one partial aggregate for the whole subtree
(:mod:`fedge.relay.app`), so the server's work per round grows with the number of relays, not
of devices. Imports both :mod:`fedge.client` and :mod:`fedge.server`, which never import it.
"""
