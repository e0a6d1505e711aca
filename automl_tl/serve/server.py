"""The serving process: load the model, bind the port (a busy port is one line, before any
serving starts), run the app under uvicorn and say the URL in one line once it listens."""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
from collections.abc import Callable

from ..core.errors import AutoTLError

__all__ = ["listen", "load_predictor", "serve", "url_of"]


def listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (port 0: a free one); AutoTLError with one line when
    the address is taken, unknown or not allowed."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise AutoTLError(f"cannot listen on {host}:{port}: unknown host ({e.strerror})") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        if os.name == "posix":  # a restart need not wait for the old connections' TIME_WAIT
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise AutoTLError(
                f"cannot listen on {host}:{port}: the port is in use; stop the process using it "
                "or pick another with --port"
            ) from None
        raise AutoTLError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    sock.set_inheritable(True)
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    try:
        if ipaddress.ip_address(host).version == 6:
            host = f"[{host}]"
    except ValueError:
        pass
    return f"http://{host}:{port}"


def load_predictor(model, threads: int = 0):
    """The Predictor of `model` with its onnxruntime session set up for a server: `threads`
    compute threads (0: onnxruntime's default, one per physical core) that sleep between
    batches instead of spinning, since the decoding threads and the event loop need the same
    cores."""
    import onnxruntime as ort

    from ..export.predictor import Predictor

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return Predictor(model, options=options)


def serve(
    model,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    max_batch: int = 16,
    max_wait_ms: float = 5.0,
    max_upload_mb: float = 20.0,
    threads: int = 0,
    announce: Callable[[str], None] = print,
) -> None:
    """Serve `model` (a run folder or its model.onnx) until SIGINT / SIGTERM. The model is
    loaded and the port bound before uvicorn starts, so either failing is an AutoTLError."""
    import uvicorn

    from .app import create_app

    predictor = load_predictor(model, threads)
    sock = listen(host, port)
    url = url_of(sock)
    app = create_app(
        predictor, max_batch=max_batch, max_wait_ms=max_wait_ms, max_upload_mb=max_upload_mb
    )
    line = (
        f"serving {predictor.path} ({len(predictor.classes)} classes) at {url} "
        "(POST /predict with images in field 'file', GET /health, GET /openapi.json; "
        "Ctrl-C stops)"
    )

    class _Server(uvicorn.Server):
        async def startup(self, sockets=None):
            await super().startup(sockets=sockets)
            if self.started and not self.should_exit:
                announce(line)

    config = uvicorn.Config(
        app,
        log_level="warning",
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=5,
        server_header=False,
    )
    try:
        _Server(config).run(sockets=[sock])
    finally:
        sock.close()
