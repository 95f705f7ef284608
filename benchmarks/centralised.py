"""Centralised LoRA: the ceiling a federation is compared with.

Usage: .venv/bin/python benchmarks/centralised.py [--config FILE] [--seeds 0,1,2] [--lrs 2e-3,1e-3,5e-4] [--evals 10]
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

The learning rate is the ceiling's own hyperparameter: one optimiser for all the federation's steps is
not the federation's 8-step optimiser, and the federation's rate can be wrong for it (on rt-iid at
2e-3 it fell to the class prior). ``--lrs 2e-3,1e-3,5e-4`` runs each rate on the first seed and keeps
the one with the best final *validation* accuracy (never the test split; a grid needs
``data.validation_fraction``); the other seeds run with that rate only. Every finished run is written
at once, and a rerun with the same config reuses the runs it finds (an interrupted ceiling resumes).
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

from fedpilot.comparison import parse_seeds
from fedpilot.config import Config, load_config
from fedpilot.core.errors import FedpilotError
from fedpilot.data.partition import partition_indices
from fedpilot.data.split import SplitData, TensorSplit
from fedpilot.families.encoding import load_split
from fedpilot.federation import make_model
from fedpilot.runtime.evaluation import evaluate
from fedpilot.runtime.messages import TrainInstructions
from fedpilot.runtime.training import batch_indices, make_optimizer, training_step


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
        "lr": config.train.lr,
        "train_rows": len(train),
        "steps": steps,
        "sample_steps": steps * config.train.batch_size,
        "trained_modules": len(model.modules),
        "final": now,
        "curve": curve,
        "wall_seconds": time.perf_counter() - start,
    }


NEEDS_VALIDATION = ("--lrs: choosing a learning rate needs a validation split; set data.validation_fraction (e.g. 0.1) "
                    "in the config, or give one rate")


def choose_lr(runs: list[dict]) -> float:
    """The learning rate of the run with the best final validation accuracy (the first on a tie)."""
    if any("validation" not in r["final"] for r in runs):
        raise FedpilotError(NEEDS_VALIDATION)
    return max(runs, key=lambda r: r["final"]["validation"]["accuracy"])["lr"]


def parse_floats(text: str, flag: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or any(v <= 0 for v in values):
        raise FedpilotError(f"{flag} {text!r} is not a comma-separated list of positive numbers, e.g. 2e-3,1e-3,5e-4")
    return values


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=None, help="a fedpilot config (default: the embedded default.yaml)")
    parser.add_argument("--seeds", default=None, help="comma-separated seeds (default: the config's seed)")
    parser.add_argument("--lrs", default=None, help="comma-separated learning rates tried on the first seed, the best "
                        "on validation kept for all (default: the config's train.lr only)")
    parser.add_argument("--evals", type=int, default=10, help="evaluations along the run, besides step 0 (default 10)")
    parser.add_argument("--out", default=None, help="folder for centralised.json (default runs/centralised/<config name>)")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
        seeds = [config.seed] if args.seeds is None else parse_seeds(args.seeds)
        lrs = [config.train.lr] if args.lrs is None else parse_floats(args.lrs, "--lrs")
        if len(lrs) > 1 and not config.data.validation_fraction:
            raise FedpilotError(NEEDS_VALIDATION)
    except FedpilotError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    name = Path(args.config).stem if args.config else "default"
    out = Path(args.out or f"runs/centralised/{name}")
    out.mkdir(parents=True, exist_ok=True)
    runs = finished_runs(out, config)
    if runs:
        print(f"resuming: {len(runs)} finished run(s) in {out / 'centralised.json'}", file=sys.stderr)

    def run(seed: int, lr: float) -> dict:
        done = next((r for r in runs if r["seed"] == seed and r["lr"] == lr), None)
        if done is None:
            train = config.train.model_copy(update={"lr": lr})
            done = run_seed(config.model_copy(update={"seed": seed, "train": train}), args.evals)
            runs.append(done)
            write_record(out, config, args.config, runs, chosen=None)  # after every run: an interrupted ceiling keeps it
        final = done["final"]
        print(f"centralised {name} seed {seed} lr {lr:g}: " + ", ".join(f"{n} accuracy {m['accuracy']:.4f}" for n, m in final.items())
              + f" ({done['steps']} steps x {config.train.batch_size} rows on {done['train_rows']} rows, "
              f"{done['wall_seconds']:.0f} s)", flush=True)
        return done

    chosen = choose_lr([run(seeds[0], lr) for lr in lrs]) if len(lrs) > 1 else lrs[0]  # validation checked above
    if len(lrs) > 1:
        print(f"learning rate {chosen:g}: the best final validation accuracy of {', '.join(f'{lr:g}' for lr in lrs)} on seed {seeds[0]}")
    for seed in seeds[1:]:
        run(seed, chosen)
    for split, stats in write_record(out, config, args.config, runs, chosen, seeds).items():
        print(f"centralised {name} (lr {chosen:g}): {split} accuracy {stats['mean']:.4f} ± {stats['std']:.4f} "
              f"over seeds {','.join(str(s) for s in seeds)}")
    print(f"wrote {out / 'centralised.json'}")
    return 0


def finished_runs(out: Path, config: Config) -> list[dict]:
    """The runs of an earlier ``centralised.json`` in ``out`` made with this very config (else none)."""
    path = out / "centralised.json"
    if not path.exists():
        return []
    record = json.loads(path.read_text())
    if record.get("config") != config.model_dump(mode="json"):
        print(f"note: {path} was made with another config; its runs are not reused (it is rewritten)", file=sys.stderr)
        return []
    return [{**r, "lr": r.get("lr", config.train.lr)} for r in record.get("runs", [])]  # runs before --lrs used train.lr


def write_record(out: Path, config: Config, config_file: str | None, runs: list[dict], chosen: float | None,
                 seeds: list[int] | None = None) -> dict[str, dict[str, float]]:
    """Write ``out/centralised.json`` (the config, every finished run, and once a rate is chosen the mean and std
    per split over ``seeds`` at that rate); the summary."""
    summary = {}
    kept = [r for r in runs if r["lr"] == chosen and (seeds is None or r["seed"] in seeds)]
    for split in (kept[0]["final"] if kept else []):
        values = [r["final"][split]["accuracy"] for r in kept]
        summary[split] = {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}
    record = {
        "config": config.model_dump(mode="json"), "config_file": config_file, "chosen_lr": chosen,
        "seeds": [r["seed"] for r in kept], "runs": runs, "summary": summary,
    }
    partial = out / "centralised.json.tmp"
    partial.write_text(json.dumps(record, indent=2))
    partial.replace(out / "centralised.json")
    return summary


if __name__ == "__main__":
    sys.exit(main())
