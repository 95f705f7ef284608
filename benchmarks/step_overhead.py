"""What a fedpilot client step costs against a plain PEFT loop with LoRA only on the trained modules.

Usage: .venv/bin/python benchmarks/step_overhead.py [--reps 5] [--steps 4] [--threads 1] [--unfolded]

On the default config's model and shapes (all-MiniLM-L6-v2, batch 16, sequence 64, rank 8, LoRA
dropout 0.05, AdamW), for four trainable sets (full LoRA, the top layer, the top two layers, three
modules scattered over layers 1, 3 and 5):

- fedpilot: ``Client.train`` on the shared ``LoraModel`` holding a trained-looking global adapter
  (every LoRA tensor non-zero), ``--steps`` local steps, no peak measurement (that is measured
  separately below): loading the adapter, the fold of the frozen modules, the steps, the upload copy;
- PEFT: a model built by ``get_peft_model`` with LoRA on the trained modules only (the same head),
  a fresh AdamW and the same ``--steps`` steps on the same batches.

The two are timed alternately ``--reps`` times (after one warm-up each); each set prints
``ratio <set>: <value>``, the median of the paired ratios fedpilot / PEFT (target <= 1.10).
``--unfolded`` also times, in the same alternation, fedpilot with its frozen modules left on PEFT's
path (LoRA dropout and dispatch: the runtime before issue 13) and prints that ratio on an
``unfolded <set>`` line.

Then the cost of measuring a step's peak at the allocator (CPU): a plain step, a step under the
runtime's meter (allocation events, counted from the resident tensors) and a step under the full
memory profile the runtime used before (shapes, stacks, the profiler's memory timeline), alternated;
printed as ``measured step / plain step`` for both meters (top layer and full LoRA).
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import numpy as np
import torch
from peft import LoraConfig, get_peft_model

from fedpilot.config import load_config
from fedpilot.core.keys import parse_module
from fedpilot.families.encoding import load_split
from fedpilot.runtime.client import Client
from fedpilot.runtime.lora import LoraModel
from fedpilot.runtime.measure import PeakMeter, optimizer_tensors, peak_of_timeline, release_gradients
from fedpilot.runtime.messages import TrainInstructions
from fedpilot.runtime.training import batch_indices, make_optimizer, training_step
from fedpilot.strategies.base import Assignment
from contextlib import contextmanager

warnings.filterwarnings("ignore")


def trainable_sets(modules: list[str]) -> dict[str, list[str]]:
    return {
        "full-lora": list(modules),
        "top-layer": [m for m in modules if m.startswith("5.")],
        "top-two-layers": [m for m in modules if m.startswith(("4.", "5."))],
        "scattered-1v-3q-5v": ["1.value", "3.query", "5.value"],
    }


class PeftLoop:
    """The reference: plain PEFT, LoRA on ``modules`` only, the same head, the same batches and optimiser."""

    def __init__(self, model: LoraModel, modules: list[str], tensors: dict[str, np.ndarray]) -> None:
        spec, family = model.spec, model.spec.family
        torch.manual_seed(0)
        base = model.runtime.load_model(spec, model.peft.base_model.model.config.num_labels, model.settings.base_dropout)
        paths = []
        for m in modules:
            layer, target = parse_module(m)
            paths.append(f"{family.layer_prefix}.{layer}.{family.targets[target]}")
        lora = model.settings.lora
        config = LoraConfig(
            r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=paths or None,
            modules_to_save=list(family.head_modules) or None,
        )
        self.peft = get_peft_model(base, config)
        self.runtime = model.runtime
        self.params = [p for p in self.peft.parameters() if p.requires_grad]

    def train(self, data, config: TrainInstructions) -> float:
        optimizer = make_optimizer(self.params, config)
        torch.manual_seed(config.seed)
        generator = torch.Generator().manual_seed(config.seed)
        self.peft.train()
        loss = 0.0
        for rows in batch_indices(len(data), config.batch_size, config.local_steps, generator):
            features, labels = data.batch(rows, torch.device("cpu"))
            out = self.runtime.loss(self.runtime.forward(self.peft, features), labels)
            optimizer.zero_grad(set_to_none=True)
            out.backward()
            optimizer.step()
            loss = out.item()
        return loss


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def meter_cost(model: LoraModel, data, modules: list[str], instructions: TrainInstructions, reps: int) -> tuple[float, float]:
    """(cheap meter / plain, full-profile meter / plain) for one step of ``modules``, medians of paired ratios."""
    from torch.profiler import ProfilerActivity, profile
    from torch.profiler._memory_profiler import MemoryProfile

    rows = torch.arange(instructions.batch_size)
    model.set_ranks({})
    cheap, full = [], []
    with model.fold_frozen(modules):
        optimizer = make_optimizer(model.set_trainable(modules), instructions)
        model.peft.train()
        step = lambda: training_step(model, optimizer, data, rows)  # noqa: E731
        step()
        for _ in range(reps):
            plain = timed(step)
            release_gradients(optimizer)

            def measured() -> None:
                with PeakMeter(resident=[*model.resident_tensors(), *optimizer_tensors(optimizer)]):
                    step()

            cheap.append(timed(measured) / plain)
            release_gradients(optimizer)

            def profiled() -> None:
                with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True) as prof:
                    step()
                peak_of_timeline(MemoryProfile(prof.profiler.kineto_results).timeline)

            full.append(timed(profiled) / plain)
    model.set_trainable([])
    return statistics.median(cheap), statistics.median(full)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--unfolded", action="store_true", help="also time the frozen modules on PEFT's path (before)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = load_config(None)
    data = load_split(config.data, config.model.name, config.seed)
    shard = data.train.subset(np.arange(200))
    model = LoraModel(config.model, num_labels=len(data.label_names), seed=0)
    rng = np.random.default_rng(0)
    tensors = {k: (0.02 * rng.standard_normal(v.shape)).astype(v.dtype) for k, v in model.state().items()}
    client = Client(0, model, shard, peaks=None)
    instructions = TrainInstructions.from_settings(config.train.model_copy(update={"local_steps": args.steps}), seed=0)
    print(f"{args.steps} local steps of batch {config.train.batch_size} x {data.train.seq_len} tokens, {args.reps} paired runs, "
          f"{args.threads} thread(s)")
    for name, modules in trainable_sets(model.modules).items():
        reference = PeftLoop(model, modules, tensors)
        assignment = Assignment(tuple(modules))
        fedpilot_run = lambda: client.train(assignment, tensors, instructions)  # noqa: E731
        peft_run = lambda: reference.train(shard, instructions)  # noqa: E731
        fold = model.fold_frozen

        @contextmanager
        def not_folded(trained, merge=False):
            yield []

        def unfolded_run() -> None:
            model.fold_frozen = not_folded
            try:
                client.train(assignment, tensors, instructions)
            finally:
                model.fold_frozen = fold

        fedpilot_run(), peft_run()  # warm-up
        ratios, ours, theirs, before = [], [], [], []
        for rep in range(args.reps):
            a, b = (timed(fedpilot_run), timed(peft_run)) if rep % 2 == 0 else tuple(reversed((timed(peft_run), timed(fedpilot_run))))
            ours.append(a), theirs.append(b), ratios.append(a / b)
            if args.unfolded:
                before.append(timed(unfolded_run) / b)
        if args.unfolded:
            print(f"  unfolded {name} (frozen modules on PEFT's path, before): {statistics.median(before):.3f} x PEFT")
        print(f"  {name}: fedpilot {statistics.median(ours) / args.steps * 1e3:.0f} ms/step, PEFT {statistics.median(theirs) / args.steps * 1e3:.0f} ms/step")
        print(f"ratio {name}: {statistics.median(ratios):.3f}")
        reference = None  # frees its model copy before the next set
    for name in ("top-layer", "full-lora"):
        modules = trainable_sets(model.modules)[name]
        cheap, full = meter_cost(model, shard, modules, instructions, args.reps)
        print(f"measured step / plain step, {name}: runtime meter {cheap:.2f}x, full memory profile (before) {full:.2f}x")


if __name__ == "__main__":
    main()
