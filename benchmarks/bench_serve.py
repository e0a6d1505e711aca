"""Load test of `automl-tl serve` on loopback, side by side with the Predictor in-process.

    python benchmarks/bench_serve.py [--model RUN_OR_ONNX] [--requests 1000] [--clients 16]
        [--rounds 4] [--max-batch 16] [--max-wait-ms 5] [--threads 0] [--max-seconds 300]
        [--markdown FILE]

1. Starts `automl-tl serve MODEL --port 0` (a subprocess, 127.0.0.1 only) and sends
   `--requests` POST /predict requests in all, one image each, from `--clients` threads with
   keep-alive connections (http.client). Prints requests/second, p50 and p99 latency, the
   error count, and the mean batch the server ran (from the /health counters).
2. Runs the Predictor in this process (the server idle meanwhile) on the same image bytes
   in batches of the server's mean batch: decode + predict_arrays in one thread, as a script
   would, with the server's onnxruntime settings (serve.server.load_predictor). The server
   decodes too, so both sides pay for decoding. The two phases alternate in --rounds
   rounds, so a load change on a shared machine hits both.
3. Prints the ratio server requests/s / in-process images/s (target: at least 0.8), the
   median of the rounds' ratios, and the CPU seconds each side spent per image.

The images are hymenoptera_data's JPEGs from ../shared/datasets when present, else the demo
digits (PNG). Without --model, a model is fitted on that same data first (in a temporary
folder and feature cache). The measured phases stop after --max-seconds in all (each gets
its share). The clients share the machine's cores with the server; the load average is
printed beside the numbers.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import queue
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from common import cli, load_average

from automl_tl.serve.client import multipart_body
from automl_tl.serve.server import load_predictor

DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"
TARGET = 0.8


def _data(tmp: Path) -> tuple[Path, str]:
    """The folder of images to send (and to fit on), and how to name it."""
    hymenoptera = DATASETS / "hymenoptera_data"
    if hymenoptera.is_dir():
        return hymenoptera, "hymenoptera_data (JPEG photos)"
    from automl_tl.data.demo import write_digits

    return write_digits(tmp / "digits"), "demo digits (PNG; hymenoptera_data absent)"


def _images(folder: Path, n: int) -> list[tuple[str, bytes]]:
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    step = max(1, len(files) // n)
    return [(p.name, p.read_bytes()) for p in files[::step][:n]]


def _fit(data: Path, tmp: Path, env: dict) -> Path:
    t0 = time.perf_counter()
    cmd = [*cli(), "fit", str(data), "--out", str(tmp / "run"), "--quiet"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"fitting the model failed: {done.stderr.strip()}")
    print(f"fitted a model on {data.name} in {time.perf_counter() - t0:.0f} s", flush=True)
    return tmp / "run"


class Server:
    """`automl-tl serve` in a subprocess on a free loopback port; stopped on exit."""

    def __init__(self, model: Path, options: list[str], env: dict):
        cmd = [*cli(), "serve", str(model), "--port", "0", *options]
        self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True)
        lines: queue.Queue = queue.Queue()
        threading.Thread(target=lambda: lines.put(self.proc.stdout.readline()), daemon=True).start()
        try:
            line = lines.get(timeout=120)
        except queue.Empty:
            line = ""
        if not line.startswith("serving "):
            self.stop()
            raise SystemExit(f"automl-tl serve did not start (exit {self.proc.returncode})")
        self.port = int(line.split(" at ", 1)[1].split()[0].rsplit(":", 1)[1])

    def health(self) -> dict:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request("GET", "/health")
            return json.loads(conn.getresponse().read())
        finally:
            conn.close()

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def load_test(port: int, bodies: list[tuple[bytes, str]], n: int, clients: int, seconds: float):
    """(latencies in s of the answered requests, errors, first error, wall seconds)."""
    todo: queue.Queue = queue.Queue()
    for i in range(n):
        todo.put(bodies[i % len(bodies)])
    latencies: list[float] = []
    errors: list[str] = []
    deadline = time.monotonic() + seconds

    def client():
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        while time.monotonic() < deadline:
            try:
                body, kind = todo.get_nowait()
            except queue.Empty:
                break
            t0 = time.perf_counter()
            try:
                conn.request("POST", "/predict", body=body, headers={"Content-Type": kind})
                response = conn.getresponse()
                answer = response.read()
                if response.status != 200:
                    errors.append(f"HTTP {response.status}: {answer[:200]!r}")
                    continue
                latencies.append(time.perf_counter() - t0)
            except (OSError, http.client.HTTPException) as e:
                errors.append(f"{type(e).__name__}: {e}")
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        conn.close()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    return latencies, len(errors) + todo.qsize(), errors[0] if errors else "", wall


def in_process(predictor, data: list[bytes], batch: int, seconds: float) -> tuple[float, float]:
    """(images per second, CPU seconds per image) of decode + predict_arrays, one thread,
    `batch` images at a time."""
    done, deadline = 0, time.monotonic() + seconds
    t0, cpu0 = time.perf_counter(), time.process_time()
    for start in range(0, len(data), batch):
        chunk = data[start : start + batch]
        predictor.predict_arrays([predictor.decode(b) for b in chunk])
        done += len(chunk)
        if time.monotonic() > deadline:
            break
    return done / (time.perf_counter() - t0), (time.process_time() - cpu0) / done


def _cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system, every thread) of a process so far; 0 off Linux."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _ms(values: list[float], q: float) -> str:
    if not values:
        return "-"
    ordered = sorted(values)
    return f"{1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))]:.1f} ms"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, help="run folder or model.onnx (default: fit one)")
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--clients", type=int, default=16, help="concurrent client threads")
    ap.add_argument("--rounds", type=int, default=4, help="server / in-process alternations")
    ap.add_argument("--images", type=int, default=64, help="distinct images sent")
    ap.add_argument("--max-batch", type=int, default=16)
    ap.add_argument("--max-wait-ms", type=float, default=5.0)
    ap.add_argument("--threads", type=int, default=0, help="onnxruntime threads, both sides")
    ap.add_argument("--max-seconds", type=float, default=300, help="bound of the whole run")
    ap.add_argument("--markdown", type=Path, help="also write the results as markdown here")
    args = ap.parse_args()
    load_before = load_average()
    with tempfile.TemporaryDirectory(prefix="bench_serve_") as tmp:
        tmp = Path(tmp)
        env = {**os.environ, "AUTOML_TL_CACHE_DIR": str(tmp / "cache")}
        folder, described = _data(tmp)
        images = _images(folder, args.images)
        model = args.model or _fit(folder, tmp, env)
        bodies = [multipart_body([image]) for image in images]
        options = ["--max-batch", str(args.max_batch), "--max-wait-ms", str(args.max_wait_ms)]
        options += ["--threads", str(args.threads)]
        predictor = load_predictor(model, args.threads)
        data = [b for _, b in images]
        latencies: list[float] = []
        errors, first_error, wall, server_cpu, ratios = 0, "", 0.0, 0.0, []
        local_images, local_seconds, local_cpu = 0, 0.0, 0.0
        with Server(model, options, env) as server:
            load_test(server.port, bodies, 2 * args.clients, args.clients, 60)  # warm-up
            in_process(predictor, data[: args.max_batch], args.max_batch, 60)
            before = server.health()["counters"]
            per_round = -(-args.requests // args.rounds)
            bound = args.max_seconds / (2 * args.rounds)
            for r in range(args.rounds):
                n = min(per_round, args.requests - r * per_round)
                cpu0 = _cpu_seconds(server.proc.pid)
                lat, err, first, seconds = load_test(server.port, bodies, n, args.clients, bound)
                server_cpu += _cpu_seconds(server.proc.pid) - cpu0
                latencies += lat
                errors, first_error, wall = errors + err, first_error or first, wall + seconds
                counters = server.health()["counters"]
                batch = max(
                    1,
                    round(
                        (counters["images"] - before["images"])
                        / max(1, counters["batches"] - before["batches"])
                    ),
                )
                sample = [data[i % len(data)] for i in range(n)]
                rate, cpu = in_process(predictor, sample, batch, bound)
                local_images, local_seconds = local_images + n, local_seconds + n / rate
                local_cpu += cpu * n
                ratios.append((len(lat) / seconds) / rate)
            after = server.health()["counters"]
    batches = after["batches"] - before["batches"]
    served = after["images"] - before["images"]
    mean_batch = served / batches if batches else 0.0
    rate = len(latencies) / wall
    local_rate = local_images / local_seconds
    mean_kb = sum(len(b) for b in data) / len(data) / 1024
    mean_ms = 1000 * statistics.fmean(latencies) if latencies else 0.0
    per_request = 1000 * server_cpu / max(1, len(latencies))
    rows = [
        ("images", f"{described}, {len(images)} distinct, {mean_kb:.0f} KB mean"),
        ("model", str(args.model) if args.model else f"fitted on {folder.name} for this run"),
        ("server", " ".join(options)),
        (
            "requests",
            f"{len(latencies)} answered of {args.requests}, {args.clients} clients, "
            f"{args.rounds} rounds",
        ),
        ("server throughput", f"{rate:.1f} requests/s ({wall:.1f} s)"),
        (
            "latency",
            f"p50 {_ms(latencies, 0.5)}, p99 {_ms(latencies, 0.99)}, mean {mean_ms:.1f} ms",
        ),
        ("errors", f"{errors}" + (f" (first: {first_error})" if first_error else "")),
        ("server batches", f"{batches} batches, {served} images, mean batch {mean_batch:.2f}"),
        (
            "in-process",
            f"{local_rate:.1f} images/s (decode + predict_arrays in one thread, batches of "
            "the server's mean, the server's onnxruntime settings)",
        ),
        (
            "CPU per image",
            f"server {per_request:.1f} ms, in-process "
            f"{1000 * local_cpu / max(1, local_images):.1f} ms",
        ),
        (
            "ratio server / in-process",
            f"{statistics.median(ratios):.2f} (median of the rounds: "
            f"{', '.join(f'{x:.2f}' for x in ratios)}; target >= {TARGET})",
        ),
        ("load average", f"{load_before} before, {load_average()} after"),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    if args.markdown:
        lines = ["| measurement | result |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows)]
        args.markdown.write_text("\n".join(lines) + "\n")
    return 0 if errors == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
