"""A small core/v1 Events API server for the Kubernetes Events tests (not a test module): on 127.0.0.1 with
an ephemeral port it speaks the slice of the API the ``--kube-events`` sink uses (create, strategic-merge
patch, read), records every request, and can hold requests (``gate``) or fail them (``fail_status``)."""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

EVENTS_PATH = re.compile(r"^/api/v1/namespaces/([^/]+)/events(?:/([^/?]+))?(?:\?.*)?$")


@dataclass
class Request:
    method: str
    path: str
    content_type: str
    body: Any


class EventsServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), EventsHandler)
        self.events: dict[tuple[str, str], dict[str, Any]] = {}
        self.requests: list[Request] = []
        self.fail_status: int | None = None  # answer every request with this status
        self.gate = threading.Event()  # requests wait for it
        self.gate.set()
        self.arrived = threading.Event()  # set by every request
        self.lock = threading.Lock()
        self._thread = threading.Thread(
            target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Release held requests, stop serving and close the socket (the thread joined, bounded)."""
        self.gate.set()
        self.shutdown()
        self.server_close()
        self._thread.join(5)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def calls(self) -> list[tuple[str, str]]:
        with self.lock:
            return [(r.method, r.path) for r in self.requests]


class EventsHandler(BaseHTTPRequestHandler):
    server: EventsServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        self.handle_api()

    def do_PATCH(self) -> None:
        self.handle_api()

    def do_GET(self) -> None:
        self.handle_api()

    def handle_api(self) -> None:
        srv = self.server
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        body: Any = json.loads(raw) if raw else None
        with srv.lock:
            srv.requests.append(Request(self.command, self.path, self.headers.get("Content-Type", ""), body))
        srv.arrived.set()
        srv.gate.wait(10)
        match = EVENTS_PATH.match(self.path)
        if srv.fail_status is not None:
            return self.status(srv.fail_status, "injected failure")
        if match is None:
            return self.status(404, f"no route for {self.path}")
        namespace, name = match.groups()
        with srv.lock:
            if self.command == "POST" and name is None:
                name = body["metadata"]["name"]
                if (namespace, name) in srv.events:
                    return self.status(409, f'events "{name}" already exists')
                created = {**body, "metadata": {**body["metadata"], "namespace": namespace, "uid": "u-1"}}
                srv.events[(namespace, name)] = created
                return self.reply(201, created)
            stored = srv.events.get((namespace, name or ""))
            if stored is None:
                return self.status(404, f'events "{name}" not found')
            if self.command == "PATCH":
                stored.update(body)
            return self.reply(200, stored)

    def status(self, code: int, message: str) -> None:
        status = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": message, "code": code}
        self.reply(code, status)

    def reply(self, code: int, obj: dict[str, Any]) -> None:
        data = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
