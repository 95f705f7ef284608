"""Why a strategy's accuracy dips: per round, its accuracy beside which layers its clients trained and how
far each layer and the head moved (docs/protocol.md, "Diagnosis").

Usage: .venv/bin/python benchmarks/diagnose.py --config benchmarks/configs/rt-strong.yaml --seed 2 \\
           --strategies fedavg fedpilot layer-pattern exclusive --out runs/diagnose-rt-strong [--split validation] [--jobs 2]

Runs (and resumes: finished runs are kept) the config with one seed, every round evaluated (train.eval_every 1)
on ``--split`` (default validation: a diagnosis chooses nothing, and still never looks at the test split),
through `fedpilot compare`. Then, from each run's round records (``module_updates``: who trained each module,
the Frobenius norm of its effective weight change), prints per strategy and round:

- acc: the round's accuracy (the fixed evaluation subset; the last round the whole split) and its change;
- cover L0..Ln: the share of the round's training rows whose client trained layer L (any of its modules);
- move L0..Ln: the mean over the layer's modules of ||Delta W||_F, and the head's ||Delta||_F;
- rel: the mean over modules of the round's move over the weight it left, ||Delta W|| / ||W||, and the head's;
- the correlation, over rounds, of the accuracy change with the head's move and with the rows' share that
  trained the lowest half of the layers.

Writes OUT/diagnose.json (all of it) and OUT/diagnose.png (accuracy, layer coverage and layer moves per round).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml

from fedpilot.core.keys import HEAD, module_layer

ROOT = Path(__file__).resolve().parents[1]


def derived_config(source: Path, out: Path, split: str) -> Path:
    settings = yaml.safe_load(source.read_text())
    train = settings.setdefault("train", {})
    train["eval_every"], train["evaluate_on"] = 1, split
    settings["output_dir"] = str(out / "run")
    out.mkdir(parents=True, exist_ok=True)
    path = out / "config.yaml"
    path.write_text(f"# {source} with every round evaluated on the {split} split (benchmarks/diagnose.py)\n" + yaml.safe_dump(settings, sort_keys=False))
    return path


def layer_table(results: dict) -> dict:
    """Per round after round 0: accuracy, per-layer coverage (share of training rows) and move, head move."""
    layers = 1 + max(module_layer(m) for m in results["modules"])
    by_layer = [[m for m in results["modules"] if module_layer(m) == layer] for layer in range(layers)]
    rows = []
    for r in results["rounds"][1:]:
        samples = {c["cid"]: c.get("num_samples", 1) for c in r["clients"]}
        total = sum(samples.values()) or 1
        trained = {c["cid"]: {module_layer(m) for m in c["modules"]} for c in r["clients"]}
        updates = r.get("module_updates") or {}
        rows.append({
            "round": r["round"],
            "accuracy": r.get("accuracy"),
            "clients": len(r["clients"]),
            "cover": [sum(n for cid, n in samples.items() if layer in trained[cid]) / total for layer in range(layers)],
            "move": [float(np.mean([updates[m]["change"] for m in mods if m in updates])) if updates else None for mods in by_layer],
            "head_move": updates.get(HEAD, {}).get("change"),
            # the round's move over the weight it left (recorded from when rounds kept the norm too)
            "relative_move": float(np.mean([u["change"] / u["norm"] for m, u in updates.items() if m != HEAD and u.get("norm")]))
            if any(u.get("norm") for u in updates.values()) else None,
            "head_relative_move": updates[HEAD]["change"] / updates[HEAD]["norm"] if updates.get(HEAD, {}).get("norm") else None,
        })
    return {"layers": layers, "rounds": rows}


def correlations(table: dict) -> dict:
    rows = [r for r in table["rounds"] if r["accuracy"] is not None]
    if len(rows) < 4:
        return {}
    gain = np.diff([r["accuracy"] for r in rows])
    lower = table["layers"] // 2
    head = np.array([r["head_move"] or 0.0 for r in rows[1:]])
    low_cover = np.array([np.mean(r["cover"][:lower]) for r in rows[1:]])
    out = {"dips": int((gain < -0.02).sum()), "mean_abs_change": float(np.abs(gain).mean())}
    for name, series in (("head_move", head), ("lower_half_cover", low_cover)):
        out[f"corr_gain_{name}"] = float(np.corrcoef(gain, series)[0, 1]) if series.std() > 0 else None
    return out


def print_table(name: str, table: dict, stats: dict) -> None:
    layers = table["layers"]
    print(f"\n{name}  (dips > 0.02: {stats.get('dips')}, mean |change| {stats.get('mean_abs_change', float('nan')):.3f}, "
          f"corr(change, head move) {stats.get('corr_gain_head_move')}, corr(change, lower-half cover) {stats.get('corr_gain_lower_half_cover')})")
    print("round  acc     " + " ".join(f"c{layer}  " for layer in range(layers)) + "| " + " ".join(f"m{layer}    " for layer in range(layers))
          + "| head  | rel   rel-head")
    for r in table["rounds"]:
        acc = "  -   " if r["accuracy"] is None else f"{r['accuracy']:.3f}"
        moves = " ".join("  -   " if m is None else f"{m:.4f}" for m in r["move"])
        head = "-" if r["head_move"] is None else f"{r['head_move']:.3f}"
        rel = " ".join("  -  " if r.get(k) is None else f"{r[k]:.3f}" for k in ("relative_move", "head_relative_move"))
        print(f"{r['round']:>5}  {acc}  " + " ".join(f"{c:.2f}" for c in r["cover"]) + " | " + moves + " | " + head + " | " + rel)


def plot(tables: dict[str, dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(tables), 3, figsize=(14, 2.6 * len(tables)), squeeze=False)
    for index, (row, (name, table)) in enumerate(zip(axes, tables.items())):
        rounds = [r["round"] for r in table["rounds"]]
        row[0].plot(rounds, [r["accuracy"] for r in table["rounds"]], marker="o")
        row[0].set_ylabel(name)
        row[0].set_title("accuracy" if index == 0 else "")
        cover = np.array([r["cover"] for r in table["rounds"]]).T
        row[1].imshow(cover, aspect="auto", origin="lower", vmin=0, vmax=1, cmap="viridis",
                      extent=(rounds[0] - 0.5, rounds[-1] + 0.5, -0.5, table["layers"] - 0.5))
        row[1].set_title("share of rows training each layer (0 = lowest)" if index == 0 else "")
        moves = np.array([[np.nan if m is None else m for m in r["move"]] for r in table["rounds"]]).T
        row[2].imshow(moves, aspect="auto", origin="lower", cmap="magma",
                      extent=(rounds[0] - 0.5, rounds[-1] + 0.5, -0.5, table["layers"] - 0.5))
        row[2].set_title("||dW|| per layer" if index == 0 else "")
    for ax in axes[-1]:
        ax.set_xlabel("round")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--strategies", nargs="+", required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--split", choices=("validation", "test"), default="validation")
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--no-run", action="store_true", help="only read the runs already in --out")
    args = parser.parse_args()
    config = derived_config(args.config, args.out, args.split)
    strategies = [s for item in args.strategies for s in item.split(",") if s]
    if not args.no_run:
        done = subprocess.run([sys.executable, "-m", "fedpilot", "compare", "--config", str(config), "--strategies", ",".join(strategies),
                               "--seeds", str(args.seed), "--out", str(args.out), "--jobs", str(args.jobs), "--quiet"])
        if done.returncode:
            return done.returncode
    tables, report = {}, {}
    for name in strategies:
        path = args.out / f"{name}-seed{args.seed}" / "results.json"
        if not path.is_file():
            print(f"diagnose.py: no finished run of {name} in {path.parent}", file=sys.stderr)
            continue
        tables[name] = layer_table(json.loads(path.read_text()))
        report[name] = {**tables[name], "stats": correlations(tables[name])}
        print_table(name, tables[name], report[name]["stats"])
    (args.out / "diagnose.json").write_text(json.dumps({"config": str(args.config), "seed": args.seed, "split": args.split, "strategies": report}, indent=1))
    if tables:
        plot(tables, args.out / "diagnose.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
