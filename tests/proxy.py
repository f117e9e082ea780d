"""The demo's fault proxy (:class:`crm_demo.crm.faults.FaultProxy`) with what tests watch:
the bytes clients sent, and replies held back on the connections open at a given moment."""

from __future__ import annotations

import threading
import time

from crm_demo.crm.faults import FaultProxy

#: django-redis's connect and read timeouts on the ``redis_proxy`` fixture's alias, in seconds.
PROXY_SOCKET_TIMEOUT = 0.25


class Proxy(FaultProxy):
    def __init__(self, target_host: str, target_port: int) -> None:
        super().__init__(target_host, target_port)
        self.bytes_up = 0  # client -> server
        self.upstream = bytearray()  # everything clients sent, for tests that read it
        #: Replies on connections numbered up to this wait in the proxy, and arrive late, all
        #: at once, when it goes back to 0 (see hold_replies).
        self.held_up_to = 0
        self._counting = threading.Lock()

    def url(self, scheme: str = "redis", path: str = "/1") -> str:
        return f"{scheme}://127.0.0.1:{self.port}{path}"

    def hold_replies(self, held: bool = True) -> None:
        """Hold the replies of every connection open now (commands still reach the server);
        connections opened later are not held. ``hold_replies(False)`` lets them through."""
        self.held_up_to = self.connections if held else 0

    def relay(self, data: bytes, upstream: bool, number: int) -> None:
        if upstream:
            with self._counting:
                self.bytes_up += len(data)
                self.upstream += data
            return
        while number <= self.held_up_to and not self._closed:
            time.sleep(0.005)


class RoundTrips(Proxy):
    """A proxy that counts round trips: each burst of bytes a client sends after the server
    last answered on that connection (or first) is one, however many commands or messages
    it holds (pipelined ones included)."""

    def __init__(self, target_host: str, target_port: int) -> None:
        super().__init__(target_host, target_port)
        self.round_trips = 0
        self._sent_last: dict[int, bool] = {}

    def relay(self, data: bytes, upstream: bool, number: int) -> None:
        with self._counting:
            if upstream and not self._sent_last.get(number, False):
                self.round_trips += 1
            self._sent_last[number] = upstream
        super().relay(data, upstream, number)

    def reset(self) -> None:
        with self._counting:
            self.round_trips = 0
            self.upstream.clear()
