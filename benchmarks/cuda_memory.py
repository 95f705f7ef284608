"""Predicted vs measured peak training memory on a GPU for both model families, and two federated rounds
on the device through the same contracts as the simulator.

Usage: .venv/bin/python benchmarks/cuda_memory.py [--family all|bert-classifier|llama-instruct]
                                                  [--device cuda] [--sets 20] [--rounds 2] [--llm-dtypes float32,bfloat16]

Families and their shipped configs (batch size and sequence length as a run uses them): the encoder
on ``default.yaml``, the decoder LLM (SmolLM2-135M-Instruct) on ``smollm2-bbc.yaml``, the LLM once per
dtype of ``--llm-dtypes`` (the frozen weights in that dtype, LoRA in float32). For each: the calibrated
cost model fitted on the device itself (its probes), the analytic one from the model's config alone,
and the real peak of ``--sets`` random trainable sets (seeded), each one steady-state training step read
at the allocator (on CUDA ``torch.cuda.max_memory_allocated``). Then ``--rounds`` rounds of Fed-pilot
with 3 clients whose budgets fit the top layer, the upper half, everything. Prints one line per set and
per family ``cuda-memory <family> [dtype]: calibrated max X % mean Y %, analytic max X % mean Y %``.

About 2 minutes on one H100/H200 for everything (the probes and sets are single GPU steps). With no
CUDA device it stops with one line (exit 2); ``--device cpu`` runs the same on the CPU (slow for the
LLM: a profiled step takes tens of seconds there; ``benchmarks/memory_model.py`` is the CPU check).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from fedpilot.cli.profile import analytic_cost_model
from fedpilot.config import Config, load_config, parse_config
from fedpilot.core.keys import module_layer
from fedpilot.core.sizes import mib
from fedpilot.families.encoding import load_split
from fedpilot.federation import make_model, make_server
from fedpilot.memory.calibrate import calibrate
from fedpilot.memory.validate import compare_predictions, random_module_sets
from fedpilot.runtime.client import Client, StepPeaks
from fedpilot.runtime.messages import TrainInstructions
from fedpilot.runtime.transport import InProcessTransport
from fedpilot.strategies import ClientInfo

CONFIG_DIR = Path(__file__).resolve().parent.parent / "fedpilot" / "configs"
CONFIGS = {"bert-classifier": None, "llama-instruct": CONFIG_DIR / "smollm2-bbc.yaml"}  # None: the embedded default.yaml


def with_model(config: Config, **fields: object) -> Config:
    """``config`` with ``model`` fields replaced, validated like a config file."""
    data = config.model_dump(mode="json")
    data["model"].update(fields)
    return parse_config(data, "cuda_memory")


def check(label: str, config: Config, sets: int, rounds: int, seed: int) -> dict[str, float]:
    """Calibrate on the device, compare predictions with measured peaks, run ``rounds`` rounds; the errors."""
    data = load_split(config.data, config.model.name, config.seed)
    start = time.perf_counter()
    model = make_model(config, data)
    device = model.device
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    batch_size, seq = config.train.batch_size, config.data.max_length
    print(f"\n{label}: {config.model.name} on {device} ({name}), torch {torch.__version__}, base weights {config.model.dtype}, "
          f"batch {batch_size}, seq {seq}; loaded in {time.perf_counter() - start:.1f} s", flush=True)
    batch = data.train.subset(np.arange(min(batch_size, len(data.train))))
    instructions = TrainInstructions.from_settings(config.train, seed=seed)
    start = time.perf_counter()
    calibrated = calibrate(model, batch, instructions)
    print(f"calibrated on the device in {time.perf_counter() - start:.1f} s: fixed {mib(calibrated.fixed):.1f} MiB, "
          f"activation[0] {mib(calibrated.activation[0]):.1f} MiB, full LoRA {mib(calibrated.full()):.1f} MiB", flush=True)
    analytic = analytic_cost_model(config)
    errors: dict[str, list[float]] = {"calibrated": [], "analytic": []}
    chosen = random_module_sets(model.modules, sets, seed)
    for row in compare_predictions(model, batch, instructions, chosen, {"calibrated": calibrated, "analytic": analytic}):
        text = ",".join(row["modules"])
        text = text if len(text) <= 50 else text[:47] + "..."
        print(f"{text:<50} measured {mib(row['measured']):8.1f}  calibrated {mib(row['calibrated']):8.1f} "
              f"({100 * row['calibrated_error']:4.1f}%)  analytic {mib(row['analytic']):8.1f} ({100 * row['analytic_error']:4.1f}%)")
        for key in errors:
            errors[key].append(float(row[f"{key}_error"]))
    summary = {f"{key}_{stat}": float(getattr(np, stat)(values)) for key, values in errors.items() for stat in ("max", "mean")}
    print(f"cuda-memory {label}: calibrated max {100 * summary['calibrated_max']:.1f} % mean {100 * summary['calibrated_mean']:.1f} %, "
          f"analytic max {100 * summary['analytic_max']:.1f} % mean {100 * summary['analytic_mean']:.1f} % "
          f"({len(chosen)} random sets, on {device})", flush=True)
    if rounds:
        summary["violations"] = float(federate(config, model, data, calibrated, rounds, seed))
    return summary


def federate(config: Config, model, data, calibrated, rounds: int, seed: int) -> int:
    """``rounds`` rounds of the config's strategy with 3 clients on the device; the number of budget violations."""
    rng = np.random.default_rng(seed)
    shards = np.array_split(rng.permutation(len(data.train)), 3)
    peaks = StepPeaks()
    clients = {cid: Client(cid, model, data.train.subset(np.sort(s)), peaks) for cid, s in enumerate(shards)}
    top = [m for m in model.modules if module_layer(m) == model.num_layers - 1]
    upper = [m for m in model.modules if module_layer(m) >= model.num_layers // 2]
    budgets = [int(calibrated.cost(top) * 1.1), int(calibrated.cost(upper) * 1.1), None]
    infos = [ClientInfo(cid, c.num_samples, b) for (cid, c), b in zip(clients.items(), budgets, strict=True)]
    server = make_server(config, model, data, infos, calibrated)
    before = server.evaluate()
    transport = InProcessTransport(clients)
    violations = 0
    for server_round in range(1, rounds + 1):
        start = time.perf_counter()
        result = server.run_round(server_round, transport)
        violations += len(result.violations)
        over = [(v["cid"], round(mib(v["peak_bytes"]), 1), round(mib(v["budget_bytes"]), 1)) for v in result.violations]
        print(f"round {server_round}: accuracy {before['accuracy']:.3f} -> {result.metrics['accuracy']:.3f}, "
              f"modules per client {[len(c['modules']) for c in result.clients]}, "
              f"peak/budget {[round(c['peak_bytes'] / c['budget_bytes'], 3) if c['budget_bytes'] else None for c in result.clients]}, "
              f"violations {over}, rejected {len(result.rejected)}, {time.perf_counter() - start:.1f} s", flush=True)
    return violations


def main(argv: Sequence[str] | None = None, configs: dict[str, Config] | None = None) -> int:
    """``configs``: the config of each family instead of the shipped ones (tests pass tiny models)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", choices=["all", *CONFIGS], default="all")
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu (default: cuda)")
    parser.add_argument("--sets", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=2, help="federated rounds on the device after the sets (0: none)")
    parser.add_argument("--llm-dtypes", default="float32,bfloat16", help="dtypes of the LLM's frozen weights to measure")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(f"cuda-memory: no CUDA device here (torch {torch.__version__} sees none); nothing measured. "
              "Run it on a GPU machine, or pass --device cpu", file=sys.stderr)
        return 2
    if args.sets < 1 or args.rounds < 0:
        parser.error("--sets must be at least 1 and --rounds at least 0")
    families = list(CONFIGS) if args.family == "all" else [args.family]
    start = time.perf_counter()
    results = {}
    for family in families:
        base = (configs or {}).get(family) or load_config(CONFIGS[family])
        dtypes = [d.strip() for d in args.llm_dtypes.split(",") if d.strip()] if family == "llama-instruct" else ["float32"]
        for dtype in dtypes:
            label = family if len(dtypes) == 1 else f"{family} {dtype}"
            config = with_model(base, device=args.device, dtype=dtype)
            results[label] = check(label, config, args.sets, args.rounds, args.seed)
    print(f"\ncuda-memory: {len(results)} checks on {args.device} in {time.perf_counter() - start:.0f} s")
    for label, summary in results.items():
        print(f"  {label}: calibrated max {100 * summary['calibrated_max']:.1f} %, analytic max {100 * summary['analytic_max']:.1f} %"
              + (f", budget violations {int(summary['violations'])}" if "violations" in summary else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
