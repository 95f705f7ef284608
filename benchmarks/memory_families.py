"""Memory model against measurement on a tiny random checkpoint of every model type a family covers.

Usage: .venv/bin/python benchmarks/memory_families.py [--model-types bert,llama,...] [--sets 8] [--batch 16]
                                                      [--seq 16] [--decoder-seq 32] [--all-targets]

For each model type: a tiny random checkpoint built locally (tests/checkpoints.py: 2 layers, hidden 32),
loaded by path as a user's own model is, the family's default LoRA targets (``--all-targets``: every one)
at rank 8, sequence ``--seq`` (encoders) or ``--decoder-seq`` (decoders: the instruction prompt needs 24
tokens of the tiny tokenizer); the calibrated
cost model (fitted now on one batch), the analytic one (from the checkpoint's config.json alone) and the
measured peak of ``--sets`` random trainable sets (seeded), each measured at the allocator as the runtime
measures a client's step. Prints one line per model type (max and mean relative error of each model) and
exits 1 if a calibrated error exceeds 5 % or an analytic one 25 %.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from checkpoints import DECODERS, MODEL_TYPES, WORDS, tiny_checkpoint  # noqa: E402

from fedpilot.config import parse_config  # noqa: E402
from fedpilot.data.split import TensorSplit  # noqa: E402
from fedpilot.families import MODELS  # noqa: E402
from fedpilot.memory.calibrate import calibrate  # noqa: E402
from fedpilot.memory.validate import compare_predictions, random_module_sets  # noqa: E402
from fedpilot.runtime.lora import LoraModel  # noqa: E402
from fedpilot.runtime.messages import TrainInstructions  # noqa: E402

CALIBRATED_LIMIT, ANALYTIC_LIMIT = 0.05, 0.25
LABELS = ["positive", "negative", "mixed"]


def check_model_type(model_type: str, root: Path, sets: int, batch_size: int, seq: int, seed: int = 0, all_targets: bool = False) -> dict[str, list[float]]:
    """Relative errors of the calibrated and analytic cost models on ``sets`` random trainable sets."""
    folder = tiny_checkpoint(model_type, root)
    family = MODELS[str(folder.resolve())].family
    config = parse_config({
        "model": {"name": str(folder), "lora": {"targets": list(family.targets) if all_targets else []}},
        "train": {"batch_size": batch_size},
    })
    spec = MODELS[config.model.name]
    runtime = family.load_runtime()
    rng = np.random.default_rng(seed)
    texts = [" ".join(rng.choice(WORDS, size=seq)) for _ in range(batch_size)]  # long enough to fill max_length
    features = runtime.encode_task(runtime.load_tokenizer(spec), texts, LABELS, seq)
    batch = TensorSplit(features, torch.tensor([i % len(LABELS) for i in range(batch_size)]))
    model = LoraModel(config.model, num_labels=len(LABELS), seed=seed)
    instructions = TrainInstructions.from_settings(config.train, seed)
    calibrated = calibrate(model, batch, instructions)
    analytic = family.analytic(spec, config.model, len(LABELS), batch_size, seq, config.train.optimizer)
    rows = compare_predictions(model, batch, instructions, random_module_sets(model.modules, sets, seed),
                               {"calibrated": calibrated, "analytic": analytic})
    return {name: [float(r[f"{name}_error"]) for r in rows] for name in ("calibrated", "analytic")} | {
        "measured_mib": [r["measured"] / 2**20 for r in rows]
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-types", default=",".join(MODEL_TYPES))
    parser.add_argument("--sets", type=int, default=8)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=16)
    parser.add_argument("--decoder-seq", type=int, default=32)
    parser.add_argument("--all-targets", action="store_true")
    args = parser.parse_args()
    ok = True
    print(f"{'model type':<12} {'family':<16} {'measured MiB':>12} {'calibrated max/mean':>20} {'analytic max/mean':>18}")
    with tempfile.TemporaryDirectory() as root:
        for model_type in args.model_types.split(","):
            seq = args.decoder_seq if model_type in DECODERS else args.seq
            errors = check_model_type(model_type, Path(root), args.sets, args.batch, seq, all_targets=args.all_targets)
            cal, ana = np.array(errors["calibrated"]), np.array(errors["analytic"])
            family = MODELS[str((Path(root) / model_type).resolve())].family.name
            measured = errors["measured_mib"]
            print(f"{model_type:<12} {family:<16} {min(measured):5.2f}-{max(measured):5.2f}  "
                  f"{100 * cal.max():8.1f} % / {100 * cal.mean():4.1f} %  {100 * ana.max():7.1f} % / {100 * ana.mean():4.1f} %", flush=True)
            ok &= cal.max() <= CALIBRATED_LIMIT and ana.max() <= ANALYTIC_LIMIT
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
