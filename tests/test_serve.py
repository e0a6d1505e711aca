"""`automl-tl serve`: a real server process on a loopback port, the session's fitted model,
real images over real HTTP. Good uploads give the Predictor's own records; every hostile
upload gets its exact 4xx and a one-line JSON error while the server keeps serving;
concurrent requests share batches; the serving process never loads torch."""

from __future__ import annotations

import http.client
import io
import json
import queue
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path

import pytest
from PIL import Image

from automl_tl.serve.client import multipart_body, post_images

from .helpers import CLI, assert_one_line_error, run

LIMIT_MB = 1  # the test server's --max-upload-mb


@contextmanager
def serving(model, *options, timeout: float = 60.0, sigint: bool = False):
    """A running `automl-tl serve MODEL --port 0 ...`: yields (url, process); terminated and
    waited for on the way out, whatever happened. `sigint`: the process takes SIGINT as from
    a terminal, even when the tests run in a background job (which ignores it)."""
    cmd = [CLI, "serve", str(model), "--port", "0", *map(str, options)]
    log = tempfile.TemporaryFile("w+")  # stderr: a pipe nobody reads could fill and block it
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
        preexec_fn=(lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)) if sigint else None,
    )
    proc.log = log
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: lines.put(proc.stdout.readline()), daemon=True).start()
    try:
        try:
            line = lines.get(timeout=timeout)
        except queue.Empty:
            pytest.fail(f"automl-tl serve printed nothing in {timeout} s")
        assert line.startswith("serving "), (line, proc.poll(), _read(log))
        url = line.split(" at ", 1)[1].split()[0]
        assert url.startswith("http://127.0.0.1:")
        yield url, proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        log.close()


def _read(log) -> str:
    log.seek(0)
    return log.read()


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def get(url: str, path: str) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", _port(url), timeout=30)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def send(url: str, body: bytes, headers: dict, method: str = "POST", path: str = "/predict"):
    """(status, JSON body) of a raw request; a body sent chunked when headers say so."""
    conn = http.client.HTTPConnection("127.0.0.1", _port(url), timeout=30)
    try:
        if headers.get("Transfer-Encoding") == "chunked":
            conn.putrequest(method, path)
            for key, value in headers.items():
                conn.putheader(key, value)
            conn.endheaders()
            for at in range(0, len(body), 64 * 1024):
                piece = body[at : at + 64 * 1024]
                conn.send(b"%x\r\n%s\r\n" % (len(piece), piece))
            conn.send(b"0\r\n\r\n")
        else:
            conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


@pytest.fixture(scope="module")
def images(digits_dir, tmp_path_factory) -> dict[str, bytes]:
    """Real images: eight digit PNGs and two JPEGs encoded from digits with Pillow."""
    files = sorted(digits_dir.rglob("*.png"))[::6][:8]
    out = {f"{f.parent.name}_{f.name}": f.read_bytes() for f in files}
    for f in files[:2]:
        buffer = io.BytesIO()
        Image.open(f).convert("RGB").save(buffer, "JPEG", quality=90)
        out[f"{f.parent.name}_{f.stem}.jpg"] = buffer.getvalue()
    return out


@pytest.fixture(scope="module")
def server(fitted):
    """The server of the session's fitted run folder: 1 MB upload limit, batches of 8."""
    with serving(fitted.run_dir_, "--max-upload-mb", LIMIT_MB, "--max-batch", 8,
                 "--max-wait-ms", 20) as (url, proc):  # fmt: skip
        status, health = get(url, "/health")
        assert status == 200 and health["status"] == "ok"
        yield url, proc


@pytest.fixture(scope="module")
def reference(fitted):
    from automl_tl.export.predictor import Predictor

    return Predictor(fitted.run_dir_)


def _expected(reference, images: dict[str, bytes], top_k: int) -> list[dict]:
    arrays = [reference.decode(data) for data in images.values()]
    records = reference.predict_arrays(arrays, top_k)
    return [{"filename": name, **r} for name, r in zip(images, records, strict=True)]


def _assert_same(got: list[dict], want: list[dict]) -> None:
    assert [g["filename"] for g in got] == [w["filename"] for w in want]
    for g, w in zip(got, want, strict=True):
        assert [label for label, _ in g["top"]] == [label for label, _ in w["top"]]
        assert [p for _, p in g["top"]] == pytest.approx([p for _, p in w["top"]], abs=1e-5)
        assert (g["ood"], g["ood_pvalue"] is None) == (w["ood"], w["ood_pvalue"] is None)


def test_health_and_openapi(server, fitted):
    url, _ = server
    status, health = get(url, "/health")
    assert status == 200 and health["status"] == "ok"
    assert health["model"] == str((fitted.run_dir_ / "model.onnx").resolve())
    assert health["classes"] == fitted.classes_
    status, spec = get(url, "/openapi.json")
    assert status == 200 and spec["openapi"].startswith("3.")
    assert {"/predict", "/health", "/openapi.json"} <= set(spec["paths"])


def test_one_image_and_several_in_order_match_the_predictor(server, images, reference):
    url, _ = server
    first = dict(list(images.items())[:1])
    status, answer = post_images(url, list(first.items()))
    assert status == 200
    _assert_same(answer["predictions"], _expected(reference, first, 1))
    status, answer = post_images(url, list(images.items()), top_k=2)  # 10 files: two batches
    assert status == 200 and len(answer["predictions"]) == len(images)
    _assert_same(answer["predictions"], _expected(reference, images, 2))
    assert all(len(r["top"]) == 2 for r in answer["predictions"])


def test_concurrent_requests_share_batches(server, images, reference):
    url, _ = server
    _, before = get(url, "/health")
    names = list(images)
    n = 16
    barrier, results = threading.Barrier(n), [None] * n

    def client(i):
        name = names[i % len(names)]
        barrier.wait()
        results[i] = post_images(url, [(name, images[name])])

    threads = [threading.Thread(target=client, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert [status for status, _ in results] == [200] * n
    want = {r["filename"]: r for r in _expected(reference, images, 1)}
    for _, answer in results:
        (record,) = answer["predictions"]
        _assert_same([record], [want[record["filename"]]])
    _, after = get(url, "/health")
    batches = after["counters"]["batches"] - before["counters"]["batches"]
    served = after["counters"]["images"] - before["counters"]["images"]
    assert served == n and batches < n, (batches, served)


def _jpeg_and_png(images: dict[str, bytes]) -> tuple[bytes, bytes]:
    jpeg = next(v for k, v in images.items() if k.endswith(".jpg"))
    png = next(v for k, v in images.items() if k.endswith(".png"))
    return jpeg, png


def test_hostile_uploads_get_their_4xx_and_the_server_keeps_serving(server, images, reference):
    url, proc = server
    jpeg, png = _jpeg_and_png(images)
    _, before = get(url, "/health")
    big = bytes(range(256)) * (LIMIT_MB * 4096 + 1024)  # 1.25 MB
    form = multipart_body
    cases = {
        "not an image": (422, *form([("notes.txt", b"just some text, not pixels\n" * 20)])),
        "truncated jpeg": (422, *form([("cut.jpg", jpeg[: len(jpeg) // 2])])),
        "truncated png": (422, *form([("cut.png", png[: len(png) // 2])])),
        "empty file": (422, *form([("empty.png", b"")])),
        "one bad file among good ones": (422, *form([("a.png", png), ("b.txt", b"no")])),
        "too large": (413, *form([("big.jpg", big)])),
        "wrong field": (400, *form([("a.png", png)], field="image")),
        "malformed multipart": (400, b"--x\r\nnot a part", "multipart/form-data; boundary=y"),
        "no boundary": (400, *form([("a.png", png)])[:1], "multipart/form-data"),
        "json body": (415, b'{"file": "a.png"}', "application/json"),
        "raw image body": (415, png, "image/png"),
    }
    for what, (status, body, kind) in cases.items():
        got, answer = send(url, body, {"Content-Type": kind})
        assert (what, got) == (what, status), answer
        assert list(answer) == ["error"] and "\n" not in answer["error"], (what, answer)
    # a text field named `file`, no Content-Type, bad top_k, a chunked body past the limit
    big_form, big_kind = multipart_body([("big.jpg", big)])
    text_field = b'--b\r\nContent-Disposition: form-data; name="file"\r\n\r\nhello\r\n--b--\r\n'
    more = [
        (400, send(url, text_field, {"Content-Type": "multipart/form-data; boundary=b"})),
        (415, send(url, png, {})),
        (400, send(url, *_form_and_headers(png), path="/predict?top_k=zero")),
        (413, send(url, big_form, {"Content-Type": big_kind, "Transfer-Encoding": "chunked"})),
        (405, send(url, b"", {}, method="GET")),
        (404, send(url, b"", {}, method="GET", path="/nowhere")),
    ]
    for status, (got, answer) in more:
        assert got == status and list(answer) == ["error"], (status, got, answer)
    said = send(url, big, {"Content-Type": "multipart/form-data"})[1]["error"]
    assert said == "request body above the upload limit of 1 MB (--max-upload-mb)"
    # still serving, with nothing in its log, and counting what it refused
    assert proc.poll() is None and "Traceback" not in _read(proc.log)
    status, health = get(url, "/health")
    assert status == 200 and health["status"] == "ok"
    refused = health["counters"]["rejected"] - before["counters"]["rejected"]
    assert refused == len(cases) + len(more) + 1 - 2  # 404 and 405 are not uploads
    good = dict(list(images.items())[:2])
    status, answer = post_images(url, list(good.items()))
    assert status == 200
    _assert_same(answer["predictions"], _expected(reference, good, 1))


def test_an_upload_past_the_limit_is_refused_before_its_body_ends(server):
    url, _ = server
    body, kind = multipart_body([("big.jpg", bytes(2 * LIMIT_MB * 2**20))])
    part = body[: LIMIT_MB * 2**20 + 100_000]
    head = f"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: {kind}\r\n"
    with socket.create_connection(("127.0.0.1", _port(url)), timeout=30) as sock:
        sock.sendall(f"{head}Transfer-Encoding: chunked\r\n\r\n".encode())
        sock.sendall(b"%x\r\n%s\r\n" % (len(part), part))  # no last chunk: the body goes on
        response = http.client.HTTPResponse(sock)
        response.begin()
        assert response.status == 413
        assert "upload limit" in json.loads(response.read())["error"]


def _form_and_headers(png: bytes) -> tuple[bytes, dict]:
    body, kind = multipart_body([("a.png", png)])
    return body, {"Content-Type": kind}


def test_a_model_onnx_is_served_too(fitted, images, reference):
    with serving(fitted.run_dir_ / "model.onnx") as (url, _):
        status, answer = post_images(url, list(images.items()), top_k=3)
        assert status == 200
        _assert_same(answer["predictions"], _expected(reference, images, 3))


def test_the_serving_process_loads_no_torch(server, fitted):
    url, proc = server
    assert post_images(url, [])[0] == 400  # a form with no file: refused, nothing loaded
    maps = Path(f"/proc/{proc.pid}/maps")
    if maps.exists():  # Linux: the shared libraries the running server has mapped
        loaded = maps.read_text()
        assert "onnxruntime" in loaded and "libtorch" not in loaded
    code = (
        "import sys, automl_tl.cli, automl_tl.serve.app as a, automl_tl.serve.server, uvicorn\n"
        "from automl_tl.export.predictor import Predictor\n"
        f"a.create_app(Predictor({str(fitted.run_dir_)!r}))\n"
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.split() == ["False"], out.stderr


def test_startup_errors_are_one_line(tmp_path):
    assert_one_line_error(run("serve", tmp_path / "nothing"), "not found")
    assert_one_line_error(run("serve", tmp_path), "without model.onnx")
    (tmp_path / "model.onnx").write_bytes(b"not a model")
    assert_one_line_error(run("serve", tmp_path), "not a loadable ONNX model")
    assert_one_line_error(run("serve", tmp_path, "--port", "99999"), "--port")
    assert_one_line_error(run("serve", tmp_path, "--max-upload-mb", "0"), "--max-upload-mb")


def test_a_busy_port_is_one_line(server, fitted):
    url, _ = server
    res = run("serve", fitted.run_dir_, "--port", _port(url))
    assert_one_line_error(res, "port is in use", str(_port(url)))


def test_ctrl_c_stops_with_one_line(fitted):
    with serving(fitted.run_dir_, sigint=True) as (_, proc):
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=15) == 130
        assert _read(proc.log).strip() == "stopped serving"
