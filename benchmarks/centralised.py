"""Centralised LoRA: the ceiling a federation is compared with.

Usage: .venv/bin/python benchmarks/centralised.py [--config FILE] [--seeds 0,1,2] [--evals 10]
                                                   [--out runs/centralised/<config name>]

For each seed, one model with every LoRA module of the config (its ``model.lora.targets`` at every
layer) and the head trains on the union of the clients' data: the train split exactly as the
configured federation partitions it (validation and proxy rows held out as the run would hold them out,
rows the partitioner leaves unassigned left out), with the federation's batch size, optimiser and
learning rate, for as many sample-steps as the federation makes:

    steps = rounds x clients per round x local_steps      (each of train.batch_size rows)

It is one optimiser over all those steps (no reset per round: a centralised run has no rounds), with
the runtime's own model, batches and step (:class:`~fedpilot.runtime.lora.LoraModel`,
:func:`~fedpilot.runtime.training.batch_indices`, :func:`~fedpilot.runtime.training.training_step`).
Every ``steps / evals`` steps and at the end it evaluates on the test split (and on the validation
split if ``data.validation_fraction`` is set). Writes ``centralised.json`` into ``--out`` (per seed:
the curve, the final metrics, wall time; and the mean and spread over seeds) and prints the final
accuracy of each seed and their mean.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from fedpilot.config import Config, load_config
from fedpilot.core.errors import FedpilotError
from fedpilot.data.partition import partition_indices
from fedpilot.data.split import SplitData, TensorSplit, load_split
from fedpilot.runtime.evaluation import evaluate
from fedpilot.runtime.messages import TrainInstructions
from fedpilot.runtime.training import batch_indices, make_optimizer, training_step
from fedpilot.simulation import make_model


def union_of_shards(config: Config, data: SplitData) -> TensorSplit:
    """The rows of the train split that the configured federation hands to its clients."""
    shards = partition_indices(data.train.labels.numpy(), config.federation.num_clients, config.data.partition, config.seed)
    return data.train.subset(np.unique(np.concatenate([np.asarray(s, dtype=np.int64) for s in shards])))


def federation_steps(config: Config) -> int:
    """Optimiser steps of batch ``train.batch_size`` the federation makes in all: rounds x clients per round x local steps."""
    federation = config.federation
    per_round = federation.clients_per_round or federation.num_clients
    return federation.rounds * per_round * config.train.local_steps


def run_seed(config: Config, evals: int) -> dict:
    """Centralised LoRA for ``config`` (its seed): the curve and the final metrics."""
    data = load_split(config.data, config.model.name, config.seed, config.proxy_fraction())
    train = union_of_shards(config, data)
    model = make_model(config, data)
    splits = {"test": data.test, **({"validation": data.validation} if data.validation is not None else {})}
    steps = federation_steps(config)
    instructions = TrainInstructions.from_settings(config.train, config.seed)
    batch = config.train.eval_batch_size

    def metrics_now() -> dict[str, dict[str, float]]:
        out = {name: evaluate(model, model.state(), split, batch) for name, split in splits.items()}
        model.peft.train()  # evaluate() leaves the model in eval mode
        return out

    params = model.set_trainable(model.modules)
    optimizer = make_optimizer(params, instructions)
    torch.manual_seed(config.seed)  # LoRA dropout
    generator = torch.Generator().manual_seed(config.seed)
    every = max(1, steps // max(1, evals))
    curve = [{"step": 0, **{f"{name}_accuracy": m["accuracy"] for name, m in metrics_now().items()}}]
    model.peft.train()
    start, losses = time.perf_counter(), []
    for step, rows in enumerate(batch_indices(len(train), config.train.batch_size, steps, generator), start=1):
        losses.append(training_step(model, optimizer, train, rows))
        if step % every == 0 or step == steps:
            now = metrics_now()  # evaluate() copies the model's own state back in place: training goes on unchanged
            curve.append({
                "step": step, "train_loss": float(np.mean(losses[-every:])),
                **{f"{name}_accuracy": m["accuracy"] for name, m in now.items()},
            })
            print(f"  seed {config.seed} step {step}/{steps}: loss {curve[-1]['train_loss']:.3f}, "
                  + ", ".join(f"{n} accuracy {m['accuracy']:.3f}" for n, m in now.items()), file=sys.stderr, flush=True)
    return {
        "seed": config.seed,
        "train_rows": len(train),
        "steps": steps,
        "sample_steps": steps * config.train.batch_size,
        "trained_modules": len(model.modules),
        "final": now,
        "curve": curve,
        "wall_seconds": time.perf_counter() - start,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=None, help="a fedpilot config (default: the embedded default.yaml)")
    parser.add_argument("--seeds", default=None, help="comma-separated seeds (default: the config's seed)")
    parser.add_argument("--evals", type=int, default=10, help="evaluations along the run, besides step 0 (default 10)")
    parser.add_argument("--out", default=None, help="folder for centralised.json (default runs/centralised/<config name>)")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
        seeds = [config.seed] if args.seeds is None else [int(s) for s in args.seeds.split(",") if s.strip()]
    except FedpilotError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    except ValueError:
        print(f"error: --seeds {args.seeds!r} is not a comma-separated list of integers, e.g. 0,1,2", file=sys.stderr)
        return 2
    name = Path(args.config).stem if args.config else "default"
    out = Path(args.out or f"runs/centralised/{name}")
    out.mkdir(parents=True, exist_ok=True)
    runs = []
    for seed in seeds:
        runs.append(run_seed(config.model_copy(update={"seed": seed}), args.evals))
        final = runs[-1]["final"]
        print(f"centralised {name} seed {seed}: " + ", ".join(f"{n} accuracy {m['accuracy']:.4f}" for n, m in final.items())
              + f" ({runs[-1]['steps']} steps x {config.train.batch_size} rows on {runs[-1]['train_rows']} rows, "
              f"{runs[-1]['wall_seconds']:.0f} s)", flush=True)
        write_record(out, config, args.config, runs)  # after every seed: an interrupted run keeps what finished
    for split, stats in write_record(out, config, args.config, runs).items():
        print(f"centralised {name}: {split} accuracy {stats['mean']:.4f} ± {stats['std']:.4f} "
              f"over seeds {','.join(str(r['seed']) for r in runs)}")
    print(f"wrote {out / 'centralised.json'}")
    return 0


def write_record(out: Path, config: Config, config_file: str | None, runs: list[dict]) -> dict[str, dict[str, float]]:
    """Write ``out/centralised.json`` (the config, every finished seed, mean and std per split); the summary."""
    summary = {}
    for split in runs[0]["final"]:
        values = [r["final"][split]["accuracy"] for r in runs]
        summary[split] = {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}
    record = {
        "config": config.model_dump(mode="json"), "config_file": config_file, "seeds": [r["seed"] for r in runs],
        "runs": runs, "summary": summary,
    }
    partial = out / "centralised.json.tmp"
    partial.write_text(json.dumps(record, indent=2))
    partial.replace(out / "centralised.json")
    return summary


if __name__ == "__main__":
    sys.exit(main())
