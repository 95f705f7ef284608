"""How well the calibrated cost model prices the small, top-layer sets that tight budgets buy.

Usage: .venv/bin/python benchmarks/top_layer_error.py [--config benchmarks/configs/screens/rt-screen-low.yaml] [--cid 0]

The cost model is position-aware per *layer*: a set pays the activation term of its lowest trained layer
plus a term per module. Within a layer, though, the modules sit at different depths of the block (query,
key and value first, attn_out after attention, ffn_in and ffn_out in the feed-forward part), and backward
stores and recomputes different things depending on which of them is the lowest trained. Near the fixed
cost this matters: this script trains one client of the config one step on each of a few top-layer sets
(every single module of the top layer, the attention inputs, a pair seen in the screen, the whole top
layer, one module of the layer below) and prints the predicted peak, the measured training peak and the
measured IG-scoring peak (the runtime's meter, as a client measures its steps), with the error in %.
"""

from __future__ import annotations

import argparse
import warnings

from fedpilot.config import load_config
from fedpilot.core.keys import module_layer
from fedpilot.federation import build_federation
from fedpilot.runtime.messages import ScoreInstructions, TrainInstructions
from fedpilot.strategies.base import Assignment

warnings.filterwarnings("ignore")
MIB = 1 << 20


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="benchmarks/configs/screens/rt-screen-low.yaml")
    parser.add_argument("--cid", type=int, default=0)
    args = parser.parse_args(argv)
    config = load_config(args.config)
    config = config.model_copy(update={"train": config.train.model_copy(update={"local_steps": 1})})
    federation = build_federation(config, progress=False)
    client, cost_model, tensors = federation.clients[args.cid], federation.cost_model, federation.model.state()
    instructions = TrainInstructions.from_settings(config.train, config.seed)
    scoring = ScoreInstructions(batches=2, batch_size=config.train.batch_size, seed=config.seed, payload="full",
                                logit_adjustment=config.train.logit_adjustment)
    top = max(module_layer(m) for m in cost_model.module)
    top_modules = [m for m in cost_model.module if module_layer(m) == top]
    sets = [[m] for m in top_modules]
    sets += [top_modules[:2], [top_modules[2], top_modules[4]] if len(top_modules) > 4 else top_modules[-2:], top_modules]
    sets += [[next(m for m in cost_model.module if module_layer(m) == top - 1)]]
    print(f"{config.model.name}, batch {config.train.batch_size}, sequence {config.data.max_length}; fixed cost "
          f"{cost_model.fixed / MIB:.1f} MiB; cost model: {cost_model.source}")
    print(f"{'set':<48} {'predicted':>9} {'train':>8} {'error':>7} {'score':>8} {'error':>7}")
    worst = 0.0
    for modules in sets:
        predicted = cost_model.cost(modules)
        _, trained = client.train(Assignment(modules), tensors, instructions)
        _, scored = client.score(modules, tensors, scoring)
        errors = [100 * (predicted - m["peak_bytes"]) / m["peak_bytes"] for m in (trained, scored)]
        worst = min(worst, *errors)
        print(f"{','.join(modules):<48} {predicted / MIB:9.2f} {trained['peak_bytes'] / MIB:8.2f} {errors[0]:+6.1f}% "
              f"{scored['peak_bytes'] / MIB:8.2f} {errors[1]:+6.1f}%")
    print(f"largest under-prediction: {worst:+.1f}% (a budget needs at least that much margin at these sizes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
