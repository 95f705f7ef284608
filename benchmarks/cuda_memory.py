"""Predicted vs measured peak training memory on a device (CUDA by default), and two federated
rounds there through the same contracts as the simulator.

Usage: .venv/bin/python benchmarks/cuda_memory.py [--device cuda] [--sets 20] [--batch 16] [--seq 128]

On CUDA the peak is torch.cuda.max_memory_allocated over one steady-state training step; the
calibrated cost model is fitted on the device itself (its L + 2 probes), the analytic one comes
from the model's config alone. Prints one line per random trainable set and a summary line:
`cuda-memory: calibrated max error X %, analytic max error Y %`.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch

from fedpilot.cli.profile import analytic_cost_model
from fedpilot.config import Config
from fedpilot.core.keys import module_layer
from fedpilot.core.sizes import mib
from fedpilot.data.split import load_split
from fedpilot.memory.calibrate import calibrate
from fedpilot.memory.validate import compare_predictions, random_module_sets
from fedpilot.runtime.client import Client, StepPeaks
from fedpilot.runtime.evaluation import Evaluator
from fedpilot.runtime.lora import LoraModel
from fedpilot.runtime.messages import TrainInstructions
from fedpilot.runtime.server import Server
from fedpilot.runtime.transport import InProcessTransport
from fedpilot.strategies import STRATEGIES, ClientInfo, FederationContext


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--sets", type=int, default=20)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("cuda-memory: no CUDA device here; nothing measured", file=sys.stderr)
        return 2

    base = Config()
    config = base.model_copy(update={
        "data": base.data.model_copy(update={"max_length": args.seq}),
        "train": base.train.model_copy(update={"batch_size": args.batch, "local_steps": 4}),
    })
    data = load_split(config.data, config.model.name, args.seed)
    model = LoraModel(config.model, num_labels=len(data.label_names), seed=args.seed, device=args.device)
    name = torch.cuda.get_device_name(model.device) if model.device.type == "cuda" else "cpu"
    print(f"device {model.device} ({name}), torch {torch.__version__}, batch {args.batch}, seq {args.seq}")
    batch = data.train.subset(list(range(args.batch)))
    instructions = TrainInstructions.from_settings(config.train, seed=args.seed)
    start = time.perf_counter()
    calibrated = calibrate(model, batch, instructions)
    print(f"calibrated on the device in {time.perf_counter() - start:.1f} s: fixed {mib(calibrated.fixed):.1f} MiB, "
          f"activation[0] {mib(calibrated.activation[0]):.1f} MiB, full LoRA {mib(calibrated.full()):.1f} MiB")
    analytic = analytic_cost_model(config)
    worst = {"calibrated": 0.0, "analytic": 0.0}
    sets = random_module_sets(model.modules, args.sets, args.seed)
    for row in compare_predictions(model, batch, instructions, sets, {"calibrated": calibrated, "analytic": analytic}):
        label = ",".join(row["modules"])
        label = label if len(label) <= 50 else label[:47] + "..."
        print(f"{label:<50} measured {mib(row['measured']):8.1f}  calibrated {mib(row['calibrated']):8.1f} "
              f"({100 * row['calibrated_error']:4.1f}%)  analytic {mib(row['analytic']):8.1f} ({100 * row['analytic_error']:4.1f}%)")
        for key in worst:
            worst[key] = max(worst[key], row[f"{key}_error"])
    print(f"cuda-memory: calibrated max error {100 * worst['calibrated']:.1f} %, analytic max error {100 * worst['analytic']:.1f} %")

    # Two rounds of Fed-pilot on the device: budgets that fit the top layer, the upper half, everything.
    rng = np.random.default_rng(args.seed)
    shards = np.array_split(rng.permutation(len(data.train)), 3)
    peaks = StepPeaks()
    clients = {cid: Client(cid, model, data.train.subset(np.sort(s)), peaks) for cid, s in enumerate(shards)}
    top = [m for m in model.modules if module_layer(m) == model.num_layers - 1]
    upper = [m for m in model.modules if module_layer(m) >= model.num_layers // 2]
    budgets = [int(calibrated.cost(top) * 1.1), int(calibrated.cost(upper) * 1.1), None]
    infos = [ClientInfo(cid, c.num_samples, b) for (cid, c), b in zip(clients.items(), budgets)]
    context = FederationContext(model.modules, model.module_keys, model.shapes, model.num_layers, model.rank, calibrated,
                                memory_margin=0.01, seed=args.seed)
    server = Server(STRATEGIES["fedpilot"](context), infos, model.state(), config.train, args.seed,
                    Evaluator(model, data.test.subset(list(range(min(256, len(data.test))))), 64), update_norm_bound=10.0)
    server.check_budgets()
    before = server.evaluate()
    transport = InProcessTransport(clients)
    for server_round in (1, 2):
        result = server.run_round(server_round, transport)
        over = [(v["cid"], round(mib(v["peak_bytes"]), 1), round(mib(v["budget_bytes"]), 1)) for v in result.violations]
        print(f"round {server_round}: accuracy {before['accuracy']:.3f} -> {result.metrics['accuracy']:.3f}, "
              f"modules per client {[len(c['modules']) for c in result.clients]}, "
              f"peak/budget {[round(c['peak_bytes'] / c['budget_bytes'], 3) if c['budget_bytes'] else None for c in result.clients]}, "
              f"violations {over}, rejected {len(result.rejected)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
