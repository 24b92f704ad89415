"""A webhook receiver for the audit tests: records every POST (headers and body) as one JSON line.

Usage: webhook_receiver.py RECORDS_FILE DOWN_FLAG_FILE. Prints the port it listens on (127.0.0.1, ephemeral)
on its first line. While DOWN_FLAG_FILE exists it answers 503 and records nothing (an outage).
"""
import json
import os
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

RECORDS, DOWN = sys.argv[1], sys.argv[2]
LOCK = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        if os.path.exists(DOWN):
            status = 503
        else:
            status = 200
            with LOCK, open(RECORDS, "a") as f:
                f.write(json.dumps({
                    "path": self.path,
                    "headers": {k.lower(): v for k, v in self.headers.items()},
                    "body": body.decode("utf-8"),
                }) + "\n")
        self.send_response(status)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print(server.server_address[1], flush=True)
server.serve_forever()
