"""A local server that speaks the Redis protocol and answers scripts with a chosen error, as a
Redis that is busy (BUSY), cannot persist (MISCONF) or is out of memory (OOM) does, or with
a chosen raw reply (one that is not what the script returns).

The connection handshake (HELLO, CLIENT, SELECT, AUTH, PING) is answered as Redis would, so
the error reaches the store's script call, over a real socket, as the real one's would.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from typing import Any

HANDSHAKE = {b"CLIENT", b"SELECT", b"AUTH", b"PING", b"READONLY"}
#: Redis 6+'s answer to ``HELLO 3`` (the RESP3 handshake redis-py opens with), cut down.
HELLO = b"%2\r\n$6\r\nserver\r\n$5\r\nredis\r\n$5\r\nproto\r\n:3\r\n"


def _read_command(reader: Any) -> list[bytes] | None:
    """One RESP array of bulk strings, or ``None`` when the client has gone."""
    header = reader.readline()
    if not header.startswith(b"*"):
        return None
    parts = []
    for _ in range(int(header[1:])):
        length = int(reader.readline()[1:])
        parts.append(reader.read(length + 2)[:-2])
    return parts


class ErrorRedis:
    def __init__(self, error: str = "", reply: bytes = b"") -> None:
        """Answer every script with ``-error``, or with ``reply`` (raw RESP) when given."""
        self.error = error
        self.reply = reply
        self.scripts_refused = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def url(self) -> str:
        return f"redis://127.0.0.1:{self._listener.getsockname()[1]}/0"

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        with client, client.makefile("rb") as reader:
            while (command := _read_command(reader)) is not None:
                if command and command[0].upper() == b"HELLO":
                    client.sendall(HELLO)
                elif command and command[0].upper() in HANDSHAKE:
                    client.sendall(b"+OK\r\n")
                else:
                    self.scripts_refused += 1
                    client.sendall(self.reply or f"-{self.error}\r\n".encode())

    def __enter__(self) -> ErrorRedis:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        with contextlib.suppress(OSError):
            self._listener.close()
