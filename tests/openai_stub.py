"""A loopback stand-in for an OpenAI-compatible chat server (vLLM's API), for the remote generator's unit tests.

It speaks the wire format (`/v1/models`, `/v1/chat/completions` streamed as
server-sent events or whole, `/v1/load_lora_adapter`) and can be told to
shed load, stall, or not know an adapter. What it answers is derived from the
request (the model name and the last message), never hard-coded by a test.
The real server is exercised in tests/scale/.
"""
from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

BASE = "stub-base"


def answer_for(model: str, messages: list[dict]) -> str:
    return f"{model} says: " + " ".join(reversed(messages[-1]["content"].split()))


class Stub:
    def __init__(self):
        self.adapters: set[str] = {"v0001"}  # what the server can serve (the resolver would find)
        self.loadable: set[str] = set()  # what /v1/load_lora_adapter would accept
        self.status: int | None = None  # answer every chat with this status (429, 503, 500, ...)
        self.retry_after: str | None = None
        self.stall_s = 0.0  # wait this long after the first piece
        self.requests: list[dict] = []
        self.loads: list[dict] = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def _json(self, code, body, headers=()):
                raw = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.send_header("Connection", "close")  # a closed stub must not live on in a kept-alive socket
                for k, v in headers:
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(raw)
                self.close_connection = True

            def do_GET(self):
                if self.path == "/v1/models":
                    data = [{"id": BASE, "parent": None}] + [{"id": a, "parent": BASE} for a in sorted(stub.adapters)]
                    return self._json(200, {"object": "list", "data": data})
                self._json(404, {"error": {"message": "no such route"}})

            def do_POST(self):
                try:
                    self._post()
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (a timeout test): nothing to report

            def _post(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if self.path == "/v1/load_lora_adapter":
                    stub.loads.append(body)
                    name = body["lora_name"]
                    if name in stub.adapters:
                        return self._json(400, {"error": {"message": f"The lora adapter '{name}' has already been loaded."}})
                    if name in stub.loadable:
                        stub.adapters.add(name)
                        return self._json(200, {"ok": True})
                    return self._json(400, {"error": {"message": f"cannot load {body['lora_path']}"}})
                stub.requests.append(body)
                if stub.status:
                    headers = [("Retry-After", stub.retry_after)] if stub.retry_after else []
                    return self._json(stub.status, {"error": {"message": f"status {stub.status}"}}, headers)
                model = body["model"]
                if model != BASE and model not in stub.adapters:
                    return self._json(404, {"error": {"message": f"The model `{model}` does not exist."}})
                if body["max_tokens"] > 4096:
                    return self._json(400, {"error": {"message": "maximum context length is 4096 tokens"}})
                words = answer_for(model, body["messages"]).split(" ")[: body["max_tokens"]]
                usage = {"prompt_tokens": sum(len(m["content"]) for m in body["messages"]),
                         "completion_tokens": len(words)}
                if not body.get("stream"):
                    return self._json(200, {"choices": [{"message": {"role": "assistant", "content": " ".join(words)}}],
                                            "usage": usage})
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(b": keep-alive comment\n\n")
                for i, w in enumerate(words):
                    piece = w if i == 0 else " " + w
                    event = {"choices": [{"index": 0, "delta": {"content": piece}}]}
                    self.wfile.write(f"data: {json.dumps(event)}\n\n".encode())
                    self.wfile.flush()
                    if i == 0 and stub.stall_s:
                        time.sleep(stub.stall_s)
                self.wfile.write(f"data: {json.dumps({'choices': [], 'usage': usage})}\n\ndata: [DONE]\n\n".encode())
                self.close_connection = True

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()
