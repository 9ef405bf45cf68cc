#!/usr/bin/env python3
"""A stand-in upstream for trying keygate by hand: answers every request with 200 and a
JSON echo of what arrived (method, path, the x-keygate-* identity headers keygate added).

    python3 scripts/echo-upstream.py [PORT]     # default 8080, on 127.0.0.1

Not for production: one thread, no TLS, bodies read by Content-Length only.
"""
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Echo(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def answer(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        echo = {
            "method": self.command,
            "path": self.path,
            "identity": {k.lower(): v for k, v in self.headers.items() if k.lower().startswith("x-keygate-")},
            "body_bytes": len(body),
        }
        data = (json.dumps(echo, indent=2) + "\n").encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = answer

    def log_message(self, *args):
        pass


if __name__ == "__main__":
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 8080
    server = ThreadingHTTPServer(("127.0.0.1", port), Echo)
    print(f"echo upstream on http://127.0.0.1:{port}", flush=True)
    server.serve_forever()
