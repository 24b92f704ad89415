"""A small HTTPS upstream for the TLS tests: answers GET /v1/models with the SNI name and Host header it saw.

Usage: tls_upstream.py PORT CERTFILE KEYFILE
Prints "ready" once listening.
"""
import http.server
import json
import ssl
import sys

seen = {"sni": None}


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        body = json.dumps({
            "object": "list",
            "data": [{"id": "tls-model", "object": "model", "created": 0, "owned_by": "tls"}],
            "sni": seen["sni"],
            "host": self.headers.get("host"),
        }).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def main():
    port, cert, key = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)

    def on_sni(sock, name, _ctx):
        seen["sni"] = name

    ctx.sni_callback = on_sni
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    print("ready", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
