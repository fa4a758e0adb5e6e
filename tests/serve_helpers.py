"""A `nexus-real serve` on loopback inside the test process, on a thread of its own."""
from __future__ import annotations

import asyncio
import threading
from contextlib import contextmanager

from real.cli import build_parser
from real.serve import Server, build_server


def make_server(*extra: str, out=None) -> Server:
    argv = ["serve", "--device", "cpu", "--model", "tiny-llama", "--port", "0", "--num-blocks", "512", *extra]
    if out is not None:
        argv += ["--out", str(out)]
    return build_server(build_parser().parse_args(argv))


@contextmanager
def serving(server: Server):
    """Yield the base URL while `server` listens; stop it (and write --out) on the way out."""
    thread = threading.Thread(target=lambda: asyncio.run(server.serve("127.0.0.1", 0, say=lambda m: None)),
                              daemon=True)
    thread.start()
    assert server.ready.wait(60) and server.port, "the server did not start"
    try:
        yield f"http://127.0.0.1:{server.port}"
    finally:
        server.shutdown()
        thread.join(60)
        assert not thread.is_alive(), "the server did not stop"
