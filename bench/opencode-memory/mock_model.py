"""A stand-in model for OpenCode's agent: OpenAI-compatible chat completions as SSE.

An agent step (a request with `tools`) streams CHUNKS chunks of about 50 bytes as fast as it
can, then the usage and [DONE]; a title request gets one chunk. Listens on 127.0.0.1 on a free
port and prints it on its first line. Usage: python3 mock_model.py [CHUNKS]
"""
import http.server
import json
import socketserver
import sys

CHUNKS = int(sys.argv[1]) if len(sys.argv) > 1 else 2000


class Handler(http.server.BaseHTTPRequestHandler):
    # The body ends when the connection closes, as a plain SSE answer may.
    protocol_version = "HTTP/1.0"

    def log_message(self, *args):
        pass

    def chunk(self, delta, finish=False):
        body = {
            "id": "mock", "object": "chat.completion.chunk", "created": 0, "model": "m1",
            "choices": [{"index": 0, "delta": delta, "finish_reason": "stop" if finish else None}],
        }
        if finish:
            body["usage"] = {"prompt_tokens": 5, "completion_tokens": 5, "total_tokens": 10}
        self.wfile.write(b"data: " + json.dumps(body).encode() + b"\n\n")

    def do_POST(self):
        length = int(self.headers.get("content-length", 0))
        request = json.loads(self.rfile.read(length) or b"{}")
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.end_headers()
        for i in range(CHUNKS if "tools" in request else 1):
            self.chunk({"role": "assistant", "content": f"word{i} lorem ipsum dolor sit amet consectetur "})
        self.chunk({}, finish=True)
        self.wfile.write(b"data: [DONE]\n\n")


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True


server = Server(("127.0.0.1", 0), Handler)
print(server.server_address[1], flush=True)
server.serve_forever()
