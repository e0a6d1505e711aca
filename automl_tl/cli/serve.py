"""`automl-tl serve`: an HTTP JSON endpoint for an exported model (onnxruntime only)."""

from __future__ import annotations

import click

from .common import LimitType, clean_errors, verbose_option

__all__ = ["COMMANDS"]


@click.command()
@click.argument("model", type=str)
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (0.0.0.0: every interface).")  # fmt: skip
@click.option("--port", type=LimitType("port"), default=8000, show_default=True,
              help="TCP port (0: a free one, printed at startup).")  # fmt: skip
@click.option("--max-batch", type=LimitType("max_batch"), default=16, show_default=True,
              help="Images per onnxruntime call, from all waiting requests.")  # fmt: skip
@click.option("--max-wait-ms", type=LimitType("max_wait_ms"), default=5.0, show_default=True,
              help="How long a batch waits for more images once one is queued.")  # fmt: skip
@click.option("--max-upload-mb", type=LimitType("max_upload_mb"), default=20.0,
              show_default=True, help="Largest request body (HTTP 413 above).")  # fmt: skip
@click.option("--threads", type=LimitType("threads"), default=0, show_default=True,
              help="onnxruntime threads (0: one per physical core); 1 when running one "
                   "process per core.")  # fmt: skip
@verbose_option
@clean_errors
def serve(model, host, port, max_batch, max_wait_ms, max_upload_mb, threads, verbose):
    """Serve MODEL (a run folder or its model.onnx) over HTTP: POST /predict with images in
    multipart field `file`, GET /health, GET /openapi.json."""
    from ..core.errors import Interrupted
    from ..serve.server import serve as run_server

    try:
        run_server(
            model,
            host,
            port,
            max_batch=max_batch,
            max_wait_ms=max_wait_ms,
            max_upload_mb=max_upload_mb,
            threads=threads,
            announce=lambda line: click.echo(line),
        )
    except KeyboardInterrupt:
        raise Interrupted("stopped serving") from None


COMMANDS = (serve,)
