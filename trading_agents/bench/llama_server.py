"""A real llama.cpp server on loopback for ``bench engines`` and the tests: llama.cpp's own
server code through ``xllamacpp`` (the ``bench`` and ``dev`` extras), run in a child process
so that its ggml never shares a process with llama-cpp-python's.

    with running_llama_server(model_path, parallel=2) as url:
        ...   # url = http://127.0.0.1:PORT, the model listed as ``smollm2``

``python trading_agents/bench/llama_server.py MODEL PORT PARALLEL ALIAS [API_KEY]`` is the child: it serves
until its stdin closes or it is terminated.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

ALIAS = "smollm2"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def running_llama_server(
    model: Path, *, parallel: int = 2, alias: str = ALIAS, api_key: str | None = None, log: Path | None = None
) -> Iterator[str]:
    """Start the server, wait until it lists its model, yield its URL, stop it on exit."""
    import httpx2

    port = free_port()
    args = [sys.executable, __file__, str(model), str(port), str(parallel), alias, api_key or ""]
    out = log.open("w") if log is not None else subprocess.DEVNULL
    proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        deadline = time.monotonic() + 300
        while True:
            assert proc.poll() is None, "the llama.cpp server exited" + (
                f":\n{log.read_text()}" if log else ""
            )
            with contextlib.suppress(httpx2.HTTPError):
                if httpx2.get(url + "/v1/models", headers=headers, timeout=5).status_code == 200:
                    break
            assert time.monotonic() < deadline, "the llama.cpp server did not come up"
            time.sleep(0.3)
        yield url
    finally:
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if log is not None:
            out.close()  # type: ignore[union-attr]


def _serve(model: str, port: int, parallel: int, alias: str, api_key: str) -> None:
    import xllamacpp

    params = xllamacpp.CommonParams()
    params.model.path = model
    params.model_alias = {alias}
    params.hostnames = ["127.0.0.1"]
    params.port = port
    params.n_parallel = parallel
    params.n_ctx = 2048 * parallel  # 2048 a slot, the desk's context
    params.cpuparams.n_threads = int(os.environ.get("LLAMA_SERVER_THREADS", "2"))
    params.cpuparams_batch.n_threads = params.cpuparams.n_threads
    if api_key:
        params.api_keys = [api_key]
    server = xllamacpp.Server(params)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    stop.wait()
    del server


if __name__ == "__main__":
    _serve(
        sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5] if len(sys.argv) > 5 else ""
    )
