"""A stand-in for vLLM's OpenAI server, to test the launcher's process handling without vLLM.

The tests copy this file to ``<tmp>/vllm/entrypoints/openai/api_server.py`` (with package
metadata for a "vllm" 0.32.0) and put ``<tmp>`` on PYTHONPATH, so the launcher's real command,
``python -m vllm.entrypoints.openai.api_server --model M --host H --port P …``, runs it.

It serves ``/health`` and ``/v1/models`` (checking ``--api-key``) and exits 0 on SIGTERM, as vLLM
does. ``--fake-*`` flags script the ways a real server misbehaves.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--api-key")
    parser.add_argument("--fake-lines", type=int, default=0, help="print N numbered lines first")
    parser.add_argument("--fake-exit-code", type=int, help="exit with it instead of serving")
    parser.add_argument("--fake-startup-delay", type=float, default=0.0, help="seconds")
    parser.add_argument("--fake-exit-after", type=float, help="exit 7 this long after serving")
    parser.add_argument("--fake-unhealthy", action="store_true", help="/health answers 503")
    parser.add_argument("--fake-ignore-sigterm", action="store_true")
    parser.add_argument("--fake-child", action="store_true", help="leave a child behind")
    args = parser.parse_known_args()[0]  # vLLM flags a test passes through are ignored

    print(f"fake vLLM pid={os.getpid()} argv={json.dumps(sys.argv[1:])}")
    print(f"fake vLLM env FAKE_MARK={os.environ.get('FAKE_MARK')}")
    print("fake vLLM says hello on stderr", file=sys.stderr)
    for number in range(1, args.fake_lines + 1):
        print(f"fake line {number:02d} of {args.fake_lines:02d}")
    if args.fake_exit_code is not None:
        print(f"fake vLLM: exiting with code {args.fake_exit_code}")
        return int(args.fake_exit_code)
    if args.fake_child:
        # Inherits stdout, like vLLM's engine-core process: it holds the output pipe open.
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        print(f"fake vLLM child pid={child.pid}")
    if args.fake_ignore_sigterm:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    time.sleep(args.fake_startup_delay)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/health":
                self._answer(503 if args.fake_unhealthy else 200, {})
            elif self.path == "/v1/models":
                if args.api_key and self.headers.get("Authorization") != f"Bearer {args.api_key}":
                    self._answer(401, {"error": "bad key"})
                else:
                    self._answer(200, {"object": "list", "data": [{"id": args.model}]})
            else:
                self._answer(404, {"error": self.path})

        def _answer(self, status: int, body: dict[str, object]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *values: object) -> None:
            print(f"fake vLLM request: {format % values}")

    server = ThreadingHTTPServer((args.host, args.port), Handler)
    exit_code = 0

    def shut_down(signum: int, frame: object) -> None:
        print("fake vLLM: SIGTERM, shutting down")
        threading.Thread(target=server.shutdown).start()

    def exit_later() -> None:
        nonlocal exit_code
        time.sleep(args.fake_exit_after)
        print("fake vLLM: exiting by itself")
        exit_code = 7
        server.shutdown()

    if not args.fake_ignore_sigterm:
        signal.signal(signal.SIGTERM, shut_down)
    if args.fake_exit_after is not None:
        threading.Thread(target=exit_later, daemon=True).start()
    print(f"fake vLLM serving on http://{args.host}:{args.port}")
    server.serve_forever()
    server.server_close()
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
