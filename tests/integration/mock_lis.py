"""A stand-in for the hospital's LIS: a real MLLP listener on 127.0.0.1 (TCP, threads) that parses each
ORU^R01 with hl7apy, stores results once per control id (MSH-10, as a LIS de-duplicates) and answers an
HL7 ACK (AA). ``hold()`` makes it read messages without answering (a sender then waits for its ACK)."""

from __future__ import annotations

import socket
import socketserver
import threading
import time
from typing import Any

from hl7apy.core import Message

from analysis.report_messages import parse_hl7
from workers.lis import END, frame, read_frame


def ack_message(control_id: str, code: str = "AA") -> str:
    ack = Message("ACK", version="2.5.1")
    ack.msh.msh_3, ack.msh.msh_5 = "MOCK-LIS", "HEP2"
    ack.msh.msh_9 = "ACK^R01^ACK"
    ack.msh.msh_10 = f"ACK-{control_id}"[:20]
    ack.msh.msh_11 = "P"
    ack.msa.msa_1, ack.msa.msa_2 = code, control_id
    return ack.to_er7()


class MockLis:
    def __init__(self, port: int) -> None:
        self.port = port
        self.received: list[dict[str, Any]] = []  # every message that arrived, repeats included
        self.results: dict[str, dict[str, Any]] = {}  # control id -> result (stored once)
        self.raw: dict[str, str] = {}
        self.holding = threading.Event()
        self._server: socketserver.ThreadingTCPServer | None = None
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ control
    def start(self) -> MockLis:
        lis = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                sock: socket.socket = self.request
                sock.settimeout(60)
                try:
                    while True:
                        payload = read_frame(sock)
                        lis._store(payload.decode())
                        if lis.holding.is_set():
                            while lis.holding.is_set():  # read, never answer: the sender waits
                                time.sleep(0.05)
                            return
                        parsed = parse_hl7(payload.decode())
                        sock.sendall(frame(ack_message(parsed["control_id"])))
                except (ConnectionError, OSError):
                    return

        socketserver.ThreadingTCPServer.allow_reuse_address = True
        self._server = socketserver.ThreadingTCPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def hold(self) -> None:
        self.holding.set()

    def release(self) -> None:
        self.holding.clear()

    # ------------------------------------------------------------------ data
    def _store(self, text: str) -> None:
        parsed = parse_hl7(text)
        with self._lock:
            self.received.append(parsed)
            self.results.setdefault(parsed["control_id"], parsed)
            self.raw.setdefault(parsed["control_id"], text)

    def count(self, control_id: str) -> int:
        return sum(1 for m in self.received if m["control_id"] == control_id)


__all__ = ["END", "MockLis", "ack_message"]
