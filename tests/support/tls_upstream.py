"""A minimal OpenAI-style upstream over TLS, for the gateway's TLS tests.

Usage: tls_upstream.py CERT_FILE KEY_FILE

It listens on 127.0.0.1 and [::1] on the same free port, prints
"listening on PORT" once, and answers POST /v1/chat/completions with a
fixed completion. The response header x-tls-sni carries the server name
the client sent in its TLS handshake ("none" without SNI).
"""

import json
import socket
import ssl
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

USAGE = {"prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12}
last_sni = {"name": "none"}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        length = int(self.headers.get("content-length", "0"))
        self.rfile.read(length)
        body = json.dumps(
            {
                "id": "chatcmpl-tls",
                "object": "chat.completion",
                "model": "gpt-4o-mini",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "over TLS"},
                        "finish_reason": "stop",
                    }
                ],
                "usage": USAGE,
            }
        ).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.send_header("x-tls-sni", last_sni["name"])
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def remember_sni(ssl_socket, server_name, context):
    last_sni["name"] = server_name or "none"


class Server4(ThreadingHTTPServer):
    address_family = socket.AF_INET


class Server6(ThreadingHTTPServer):
    address_family = socket.AF_INET6


def main():
    cert, key = sys.argv[1], sys.argv[2]
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    context.sni_callback = remember_sni

    v4 = Server4(("127.0.0.1", 0), Handler)
    port = v4.server_address[1]
    servers = [v4]
    try:
        servers.append(Server6(("::1", port), Handler))
    except OSError:
        pass  # No IPv6 loopback: "localhost" then resolves to 127.0.0.1 only.
    for server in servers:
        server.socket = context.wrap_socket(server.socket, server_side=True)
        threading.Thread(target=server.serve_forever, daemon=True).start()

    print(f"listening on {port}", flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()
