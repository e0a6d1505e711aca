"""Fine-tune a tiny conv backbone on a digits folder; run under torchrun or plain python.

    torchrun --nproc_per_node 2 --standalone tests/ddp_finetune_script.py DATA OUT

Every process writes OUT/rank<r>.json (its final weights' checksum and validation accuracy);
each checkpoint write appends the writer's rank to OUT/writers.log. Also the tiny model and
the item split used by tests/test_finetune.py.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from unittest import mock

import torch

from automl_tl.core.distributed import init_distributed
from automl_tl.train import tune_full as ft
from automl_tl.train import tune_full_run

if __package__ in (None, ""):  # run as a script (torchrun): make the `tests` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.helpers import TINY_CONFIG, TINY_PREP, split_items, tiny_model  # noqa: E402


def run(data: Path, out: Path, epochs: int = TINY_CONFIG.epochs) -> dict:
    """Fine-tune the tiny model on `data` in this process (one rank of a group, or alone);
    write OUT/rank<r>.json and log every checkpoint write's rank to OUT/writers.log."""
    rank, world = init_distributed()
    out.mkdir(parents=True, exist_ok=True)
    write = tune_full_run.write_checkpoint

    def logged_write(path, payload):
        with open(out / "writers.log", "a") as fh:
            fh.write(f"{rank}\n")
        write(path, payload)

    train, val, classes = split_items(data)
    config = ft.FinetuneConfig(**{**TINY_CONFIG.to_dict(), "epochs": epochs})
    model = tiny_model(len(classes))
    with mock.patch.object(tune_full_run, "write_checkpoint", logged_write):
        result = ft.finetune(model, train, val, len(classes), TINY_PREP, config, out / "ckpt")
    checksum = float(sum(p.double().sum() for p in result.model.state_dict().values()))
    summary = {
        "rank": rank,
        "world": world,
        "pid": os.getpid(),
        "best_epoch": result.best_epoch,
        "best_val_acc": result.history[result.best_epoch - 1]["val_acc"],
        "history": result.history,
        "checksum": checksum,
    }
    (out / f"rank{rank}.json").write_text(json.dumps(summary))
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--epochs", type=int, default=TINY_CONFIG.epochs)
    args = parser.parse_args()
    torch.set_num_threads(1)
    run(args.data, args.out, args.epochs)
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
