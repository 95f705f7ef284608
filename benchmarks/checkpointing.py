"""What activation checkpointing saves and costs, per lowest trained layer, on this machine.

Usage: .venv/bin/python benchmarks/checkpointing.py [--config benchmarks/configs/rt-iid.yaml] [--reps 3] [--calibrate]

On the config's model and shapes (default: the rt protocol, all-MiniLM-L6-v2 with LoRA r=8 on all six
targets, batch 16, sequence 48, AdamW), for each layer l the set of every module of layers l..L-1 is
trained one step plainly and one step with the blocks l..L-1 checkpointed (``LoraModel.checkpointed``,
what a client runs for an assignment with ``checkpointing``). Per l it prints the measured peaks (the
runtime's meter, as a client measures its step), the memory saved, and the step-time ratio
checkpointed / plain (the median of ``--reps`` paired, alternated steps after a warm-up).
``--calibrate`` also calibrates the cost model and prints its prediction error for both steps.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import numpy as np
import torch

from fedpilot.config import load_config
from fedpilot.core.keys import module_layer
from fedpilot.families.encoding import load_split
from fedpilot.memory.calibrate import calibrate, measure_peak
from fedpilot.runtime.lora import LoraModel
from fedpilot.runtime.messages import TrainInstructions
from fedpilot.runtime.training import make_optimizer, training_step

warnings.filterwarnings("ignore")
MIB = 1 << 20


def step_times(model: LoraModel, modules: list[str], batch, instructions: TrainInstructions, reps: int) -> float:
    """Median of paired step-time ratios checkpointed / plain (one warm-up step each first)."""
    rows = torch.arange(len(batch))
    model.set_ranks({})
    ratios = []
    with model.fold_frozen(modules):
        optimizer = make_optimizer(model.set_trainable(modules), instructions)
        model.peft.train()

        def timed(checkpointing: bool) -> float:
            with model.checkpointed(modules, checkpointing):
                start = time.perf_counter()
                training_step(model, optimizer, batch, rows)
                return time.perf_counter() - start

        timed(False), timed(True)
        for _ in range(reps):
            plain = timed(False)
            ratios.append(timed(True) / plain)
    model.set_trainable([])
    return statistics.median(ratios)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="benchmarks/configs/rt-iid.yaml")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--calibrate", action="store_true")
    args = parser.parse_args()
    config = load_config(args.config)
    data = load_split(config.data, config.model.name, config.seed)
    model = LoraModel(config.model, num_labels=len(data.label_names), seed=0)
    batch = data.train.subset(np.arange(config.train.batch_size))
    instructions = TrainInstructions.from_settings(config.train, config.seed)
    print(f"model {config.model.name}, batch {len(batch)}, sequence {batch.seq_len}, targets {', '.join(config.model.lora.targets)}, "
          f"{config.train.optimizer}, torch threads {torch.get_num_threads()}")
    cost_model = calibrate(model, batch, instructions, checkpointing=True) if args.calibrate else None
    header = "| lowest layer | modules | plain peak MiB | checkpointed peak MiB | saved MiB | saved % | time checkpointed / plain |"
    if cost_model is not None:
        header += " calibrated error plain | calibrated error checkpointed |"
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for lowest in range(model.num_layers):
        modules = [m for m in model.modules if module_layer(m) >= lowest]
        plain = measure_peak(model, modules, batch, instructions)
        checkpointed = measure_peak(model, modules, batch, instructions, checkpointing=True)
        ratio = step_times(model, modules, batch, instructions, args.reps)
        row = (f"| {lowest} | {len(modules)} | {plain / MIB:.1f} | {checkpointed / MIB:.1f} | {(plain - checkpointed) / MIB:.1f} "
               f"| {100 * (plain - checkpointed) / plain:.1f} | {ratio:.2f} |")
        if cost_model is not None:
            errors = [(cost_model.cost(modules, checkpointing=c) - peak) / peak for c, peak in ((False, plain), (True, checkpointed))]
            row += f" {100 * errors[0]:+.1f} % | {100 * errors[1]:+.1f} % |"
        print(row, flush=True)


if __name__ == "__main__":
    main()
