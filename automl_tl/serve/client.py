"""A small client of the server using the standard library only (the tests and the load
benchmark use it; so can a script that has no HTTP library).

    from automl_tl.serve.client import predict_files
    predict_files("http://127.0.0.1:8000", ["cat.jpg", "dog.png"], top_k=3)
"""

from __future__ import annotations

import http.client
import json
import os
import uuid
from pathlib import Path
from urllib.parse import urlsplit

__all__ = ["multipart_body", "post_images", "predict_files"]


def multipart_body(files: list[tuple[str, bytes]], field: str = "file") -> tuple[bytes, str]:
    """(body, Content-Type) of a multipart/form-data form holding each (filename, bytes) in
    `field`, in order."""
    boundary = uuid.uuid4().hex
    parts = []
    for name, data in files:
        safe = name.replace('"', "_").replace("\r", "_").replace("\n", "_")
        head = (
            f"--{boundary}\r\n"
            f'Content-Disposition: form-data; name="{field}"; filename="{safe}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        )
        parts += [head.encode(), data, b"\r\n"]
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def post_images(
    url: str,
    files: list[tuple[str, bytes]],
    top_k: int = 1,
    timeout: float = 60.0,
    connection: http.client.HTTPConnection | None = None,
) -> tuple[int, dict]:
    """POST (filename, bytes) pairs to `url`/predict: (HTTP status, JSON body). Pass an open
    `connection` to reuse it (keep-alive)."""
    body, kind = multipart_body(files)
    parts = urlsplit(url)
    conn = connection or http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        path = f"{parts.path.rstrip('/')}/predict?top_k={top_k}"
        conn.request("POST", path, body=body, headers={"Content-Type": kind})
        response = conn.getresponse()
        return response.status, json.loads(response.read() or b"{}")
    finally:
        if connection is None:
            conn.close()


def predict_files(url: str, paths: list[str | os.PathLike], top_k: int = 1) -> list[dict]:
    """The server's records for these image files, in order; RuntimeError with the server's
    one-line error otherwise."""
    status, answer = post_images(url, [(Path(p).name, Path(p).read_bytes()) for p in paths], top_k)
    if status != 200:
        raise RuntimeError(f"HTTP {status}: {answer.get('error', answer)}")
    return answer["predictions"]
