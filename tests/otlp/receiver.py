"""An OTLP/HTTP receiver for lifehook's tests, built on the official
protobuf definitions (PyPI `opentelemetry-proto`).

    receiver.py PORT_FILE OUT_FILE MODE

Listens on a free loopback port (written to PORT_FILE), decodes every
POST to /v1/traces and /v1/metrics, and appends it to OUT_FILE as one JSON
line: {"path", "headers", "body"} with the body as protobuf's own JSON
mapping (ids in lower-case hex). MODE: `ok` answers 200, `refuse`
answers 503, `silent` reads the request and never answers.
"""

import base64
import http.server
import json
import sys
import threading

from google.protobuf.json_format import MessageToDict
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
)

port_file, out_file, mode = sys.argv[1], sys.argv[2], sys.argv[3]
lock = threading.Lock()
KINDS = {"/v1/traces": ExportTraceServiceRequest, "/v1/metrics": ExportMetricsServiceRequest}


def hex_ids(value):
    """protobuf's JSON mapping writes bytes in base64; OTLP ids read in hex."""
    if isinstance(value, dict):
        return {
            k: (base64.b64decode(v).hex() if k in ("traceId", "spanId", "parentSpanId") else hex_ids(v))
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [hex_ids(v) for v in value]
    return value


class Handler(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        length = int(self.headers.get("content-length", "0"))
        raw = self.rfile.read(length)
        kind = KINDS.get(self.path)
        record = {"path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()}}
        if kind is not None:
            message = kind()
            message.ParseFromString(raw)
            record["body"] = hex_ids(MessageToDict(message))
        with lock, open(out_file, "a") as out:
            out.write(json.dumps(record) + "\n")
        if mode == "silent":
            threading.Event().wait()
        code = 200 if mode == "ok" and kind is not None else 503
        self.send_response(code)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
server.daemon_threads = True
with open(port_file + ".tmp", "w") as f:
    f.write(str(server.server_address[1]))
import os

os.rename(port_file + ".tmp", port_file)
server.serve_forever()
