"""Memory model against measurement on the default model, at two batch/sequence settings.

Usage: .venv/bin/python benchmarks/memory_model.py [--sets 20] [--seed 0]

For each setting: calibrate (L + 2 profiled steps), then measure the real peak of 20 random
trainable sets and compare with the calibrated and the analytic predictions. Ends with
``memory-model: calibrated max error X.X %, analytic max error Y.Y %`` and exits 1 if the
calibrated error exceeds 5 % or the analytic one 25 %.
"""

from __future__ import annotations

import argparse
import sys
import time

from fedpilot.cli.profile import analytic_cost_model
from fedpilot.config import Config
from fedpilot.core.sizes import mib
from fedpilot.data.split import load_split
from fedpilot.memory.calibrate import calibrate
from fedpilot.memory.validate import compare_predictions, random_module_sets
from fedpilot.runtime.lora import LoraModel
from fedpilot.runtime.messages import TrainInstructions

SETTINGS = [(16, 128), (8, 64)]
CALIBRATED_LIMIT, ANALYTIC_LIMIT = 0.05, 0.25


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    config = Config()
    worst = {"calibrated": 0.0, "analytic": 0.0}
    for batch_size, seq_len in SETTINGS:
        data = load_split(config.data.model_copy(update={"max_length": seq_len}), config.model.name, args.seed)
        model = LoraModel(config.model, num_labels=len(data.label_names), seed=args.seed)
        batch = data.train.subset(list(range(batch_size)))
        instructions = TrainInstructions.from_settings(config.train, seed=args.seed)
        start = time.perf_counter()
        calibrated = calibrate(model, batch, instructions)
        seconds = time.perf_counter() - start
        analytic = analytic_cost_model(config.model_copy(update={
            "data": config.data.model_copy(update={"max_length": seq_len}),
            "train": config.train.model_copy(update={"batch_size": batch_size}),
        }))
        print(f"\nbatch {batch_size}, seq {seq_len}: calibrated in {seconds:.1f} s")
        print(f"{'trainable set':<58} {'measured':>9} {'calib.':>9} {'err':>6} {'analytic':>9} {'err':>6}  (MiB)")
        sets = random_module_sets(model.modules, args.sets, args.seed)
        for row in compare_predictions(model, batch, instructions, sets, {"calibrated": calibrated, "analytic": analytic}):
            label = ",".join(row["modules"])
            label = label if len(label) <= 58 else label[:55] + "..."
            print(
                f"{label:<58} {mib(row['measured']):9.1f} {mib(row['calibrated']):9.1f} {100 * row['calibrated_error']:5.1f}% "
                f"{mib(row['analytic']):9.1f} {100 * row['analytic_error']:5.1f}%"
            )
            for name in worst:
                worst[name] = max(worst[name], row[f"{name}_error"])
    print(f"memory-model: calibrated max error {100 * worst['calibrated']:.1f} %, analytic max error {100 * worst['analytic']:.1f} %")
    return 0 if worst["calibrated"] <= CALIBRATED_LIMIT and worst["analytic"] <= ANALYTIC_LIMIT else 1


if __name__ == "__main__":
    sys.exit(main())
