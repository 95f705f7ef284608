"""The position-aware memory cost of a training step: the one formula every planner uses.

    cost(S) = fixed + activation[lowest layer of S] + sum over m in S of module_r[m]
    module_r[m] = module[m] + (r_m - rank) * rank_bytes[m]

``fixed`` is what any step holds (weights, the head and its optimiser state, forward-pass buffers);
``activation[l]`` is what backpropagation from the loss down to layer l stores; ``module[m]`` is what
module m adds at the base LoRA rank (parameters, gradients, optimiser state, its own saved inputs);
``rank_bytes[m]`` is what each unit of rank adds to it, so a module trained at rank r_m costs
``module_r[m]``. A smaller rank shrinks only the module term, never the activations.

The allocator, ``fedpilot solve``, ``fedpilot plan``, the start-up budget check and the strategies all
price sets with :meth:`CostModel.cost` and plan within :func:`usable` of a budget.

**Stages within a layer** (optional terms, from calibration): the targets of a transformer block sit at
different stages of it (query, key and value read the block's input; attn_out comes after attention; the
feed-forward projections after that), and backward from the loss to a module stores more of the block
the earlier its stage. With ``stage[m]`` (module m's stage in its layer, 0 first) and ``stage_extra[l][s]``
(what a set whose lowest trained module sits at layer l, stage s stores beyond ``activation[l]``):

    cost(S) = fixed + activation[l*] + stage_extra[l*][s*] + sum of module_r[m],  (l*, s*) = min over S of (layer, stage)

**Inference** (optional terms, from calibration when clients evaluate: ``train.evaluate: clients``): the peak of
a client's evaluation pass (every module merged into a copy of its weight, no gradient), affine in the batch rows:

    inference(rows) = inference_fixed + rows * inference_row

A model without them (analytic models, calibrations made before them) predicts nothing (None) and a
client is then asked to evaluate whatever its budget.

A planner sees one depth index per (layer, stage) (:meth:`CostModel.depth`, :meth:`CostModel.depth_activation`):
the same position-aware problem on a finer grid. Without them (analytic models, ``fedpilot solve``
inputs) every module is at stage 0 and the extra is 0.

**The forward floor** (optional, ``floor``): a step's peak is the larger of its forward pass's peak and its
backward's; the terms above price backward (every saved activation alive). Where the forward pass holds a large
transient of its own (DeBERTa's relative-position scores), a step that stores little peaks in forward instead:
``cost(S) = max(floor, ...)``. A planner only checks ``floor <= budget`` first: below it nothing fits, above it the
optimum is the additive problem's.

**Activation checkpointing** (optional terms; a model without them cannot price it, and asking is an
error): a step that recomputes the transformer blocks from the lowest trained layer up keeps only each
block's input, and holds one block's full activations (its trained modules' saved inputs included)
while that block is recomputed in backward:

    cost(S, checkpointing) = fixed + activation_checkpointed[lowest layer of S] + sum of module_checkpointed_r[m]

``activation_checkpointed[l]`` = the inputs of the blocks l..L-1 plus one block's recompute with every
target trained (an upper bound for fewer); ``module_checkpointed[m]`` = the module's parameters,
gradients and optimiser state (its saved inputs are recomputed, not kept). Per unit of rank a
checkpointed module is priced with ``rank_bytes`` too (a slight overestimate: part of it is a saved input).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

from fedpilot.core.errors import FedpilotError
from fedpilot.core.keys import module_id, module_layer
from fedpilot.core.sizes import mib

FLOAT_BYTES = 4
OPTIMIZER_STATES = {"adamw": 2, "sgd": 0}


def lora_module_bytes(d_in: int, d_out: int, rank: int, tokens: int, optimizer: str, dtype_bytes: int = FLOAT_BYTES) -> int:
    """Analytic bytes one trained LoRA module adds to a step: its parameters with gradient and optimiser
    state, plus what it saves itself for backward (its dropped-out input and the rank-r projection)."""
    return lora_param_bytes(d_in, d_out, rank, optimizer, dtype_bytes) + dtype_bytes * tokens * (d_in + rank)


def lora_param_bytes(d_in: int, d_out: int, rank: int, optimizer: str, dtype_bytes: int = FLOAT_BYTES) -> int:
    """Analytic bytes of one trained LoRA module's parameters with their gradient and optimiser state
    (what it costs in a checkpointed step, where its saved inputs are recomputed instead of kept)."""
    return dtype_bytes * rank * (d_in + d_out) * (2 + OPTIMIZER_STATES[optimizer])


def usable(budget: int, margin: float) -> int:
    """The part of a budget a planner may fill: the rest absorbs the cost model's error."""
    return int(budget * (1 - margin))


@dataclass(frozen=True)
class CostModel:
    fixed: int
    activation: tuple[int, ...]
    module: Mapping[str, int]
    layer: Mapping[str, int] = field(default_factory=dict)
    rank: int | None = None
    rank_bytes: Mapping[str, int] = field(default_factory=dict)
    source: str = "calibrated"
    settings: Mapping[str, object] = field(default_factory=dict)
    activation_checkpointed: tuple[int, ...] | None = None  # None: checkpointing not priced
    module_checkpointed: Mapping[str, int] | None = None
    stage: Mapping[str, int] = field(default_factory=dict)  # module -> its stage within its layer (absent: 0)
    stage_extra: tuple[tuple[int, ...], ...] | None = None  # per layer, per stage; None: one stage, no extra
    floor: int = 0  # the forward pass's own peak: no step costs less, whatever it trains (0: none priced apart)
    # micro-batches (optional, from calibration): the rows the terms were fitted at, the fixed cost of a one-row step,
    # and each module's batch-independent bytes (parameters, gradient, optimiser state); see at_batch
    batch_rows: int | None = None
    fixed_one_row: int | None = None
    module_state: Mapping[str, int] = field(default_factory=dict)
    inference_fixed: int | None = None  # an evaluation pass: bytes at 0 rows (extrapolated); None: not priced
    inference_row: int | None = None  # an evaluation pass: bytes per batch row

    def __post_init__(self) -> None:
        if not self.layer:  # module ids name their layer
            object.__setattr__(self, "layer", {m: module_layer(m) for m in self.module})
        missing = set(self.module) - set(self.layer)
        if missing:
            raise ValueError(f"cost model: no layer given for modules {sorted(missing)}")
        for m, layer in self.layer.items():
            if not 0 <= layer < len(self.activation):
                raise ValueError(f"cost model: module {m!r} sits at layer {layer}, outside the {len(self.activation)} layers")
        if (self.activation_checkpointed is None) != (self.module_checkpointed is None):
            raise ValueError("cost model: activation_checkpointed and module_checkpointed come together (both or neither)")
        if self.activation_checkpointed is not None:
            if len(self.activation_checkpointed) != len(self.activation):
                raise ValueError(f"cost model: {len(self.activation_checkpointed)} checkpointed activation terms for {len(self.activation)} layers")
            if set(self.module_checkpointed) != set(self.module):
                raise ValueError("cost model: module_checkpointed must price exactly the modules of module")
        if self.stage_extra is not None:
            if len(self.stage_extra) != len(self.activation) or len({len(row) for row in self.stage_extra}) != 1 or not self.stage_extra[0]:
                raise ValueError(f"cost model: stage_extra needs one row per layer ({len(self.activation)}), all of one non-zero length")
        if (self.inference_fixed is None) != (self.inference_row is None):
            raise ValueError("cost model: inference_fixed and inference_row come together (both or neither)")
        stages = self.stages
        for m, s in self.stage.items():
            if m not in self.module or not 0 <= s < stages:
                raise ValueError(f"cost model: module {m!r} at stage {s}, not a module of the model or outside its {stages} stages")

    @property
    def stages(self) -> int:
        """Stages per layer the model prices (1 without stage terms)."""
        return 1 if self.stage_extra is None else len(self.stage_extra[0])

    def depth(self, module: str) -> int:
        """The module's depth index: its layer times :attr:`stages` plus its stage (without stages: its layer)."""
        return self.layer[module] * self.stages + self.stage.get(module, 0)

    def depth_activation(self) -> tuple[int, ...]:
        """What backward stores for a set whose lowest module is at each depth index (see :meth:`depth`)."""
        if self.stage_extra is None:
            return tuple(self.activation)
        return tuple(a + extra for a, row in zip(self.activation, self.stage_extra) for extra in row)

    @property
    def prices_inference(self) -> bool:
        """Whether this model has the inference terms (else :meth:`inference` predicts None)."""
        return self.inference_fixed is not None

    def inference(self, rows: int) -> int | None:
        """Predicted peak bytes of an evaluation pass in batches of ``rows`` rows (None: not priced)."""
        if self.inference_fixed is None or self.inference_row is None:
            return None
        if rows < 1:
            raise ValueError(f"an evaluation batch has at least one row, got {rows}")
        return self.inference_fixed + rows * self.inference_row

    def without_inference(self) -> CostModel:
        """This model without the inference terms (what a run that evaluates on the server records)."""
        return replace(self, inference_fixed=None, inference_row=None)

    @property
    def prices_checkpointing(self) -> bool:
        """Whether this model has the activation-checkpointing terms (else it cannot price a checkpointed step)."""
        return self.activation_checkpointed is not None

    def checkpointed(self) -> CostModel:
        """The cost model of checkpointed steps: the checkpointed terms as the plain ones (the solver's view)."""
        if self.activation_checkpointed is None or self.module_checkpointed is None:
            raise FedpilotError(
                f"cost model ({self.source}) cannot price activation checkpointing: it has no checkpointed terms "
                "(recalibrate with this fedpilot version, or leave checkpointing off)"
            )
        return CostModel(
            self.fixed, self.activation_checkpointed, self.module_checkpointed, self.layer, self.rank, self.rank_bytes,
            source=f"{self.source}, checkpointed", settings=self.settings, floor=self.floor,
        )  # no stage terms: a checkpointed block is recomputed whole, priced with every target trained

    @property
    def prices_micro_batches(self) -> bool:
        return self.batch_rows is not None and self.fixed_one_row is not None and set(self.module_state) == set(self.module)

    def at_batch(self, rows: int) -> CostModel:
        """The cost model of a step that runs its batch as micro-batches of ``rows`` rows (gradient accumulation):
        every stored activation, saved input and forward buffer scales with the rows a forward pass holds; the
        weights, the modules' parameters, gradients and optimiser state do not. ``fixed`` runs linearly through the
        calibrated batch and the one-row probe; activation, stage and checkpointed terms scale by rows / batch; a
        module keeps its state and scales the rest. An error if the model was not calibrated for it."""
        if not self.prices_micro_batches:
            raise FedpilotError(f"cost model ({self.source}) cannot price micro-batches (no one-row probe); recalibrate it "
                                "with this fedpilot version, or leave micro_batching off")
        batch = int(self.batch_rows)  # type: ignore[arg-type]
        if not 1 <= rows <= batch:
            raise ValueError(f"micro-batch of {rows} rows: give 1 to the calibrated batch of {batch}")
        if rows == batch:
            return self
        scale = rows / batch
        one = int(self.fixed_one_row)  # type: ignore[arg-type]
        fixed = one if batch == 1 else int(math.ceil(one + (self.fixed - one) * (rows - 1) / (batch - 1)))
        up = lambda b: int(math.ceil(b * scale))  # noqa: E731  (rounded up: never under the linear estimate)
        state = self.module_state
        return replace(
            self, fixed=fixed, activation=tuple(up(a) for a in self.activation),
            module={m: state[m] + up(b - state[m]) for m, b in self.module.items()},
            stage_extra=None if self.stage_extra is None else tuple(tuple(up(e) for e in row) for row in self.stage_extra),
            activation_checkpointed=None if self.activation_checkpointed is None else tuple(up(a) for a in self.activation_checkpointed),
            floor=0 if not self.floor else max(fixed, up(self.floor)),
            batch_rows=rows, fixed_one_row=one, source=f"{self.source}, micro-batch {rows}",
            settings={**self.settings, "micro_batch": rows},
        )

    def module_cost(self, module: str, rank: int | None = None) -> int:
        """What training ``module`` at ``rank`` (default: the base rank) adds to a step."""
        base = self.module[module]
        if rank is None or rank == self.rank:
            return base
        if self.rank is None or module not in self.rank_bytes:
            raise ValueError(f"cost model ({self.source}) cannot price module {module!r} at rank {rank}: it has no per-rank term")
        if rank < 1:
            raise ValueError(f"rank must be >= 1, got {rank} for module {module!r}")
        return base + (rank - self.rank) * self.rank_bytes[module]

    def cost(self, modules: Iterable[str], ranks: Mapping[str, int] | None = None, checkpointing: bool = False) -> int:
        """Predicted peak bytes of a step that trains ``modules`` (and the head) at ``ranks``, with activation
        checkpointing from its lowest trained layer up when ``checkpointing`` (an error if not priced)."""
        if checkpointing:
            return self.checkpointed().cost(modules, ranks)
        chosen = list(modules)
        if not chosen:
            return max(self.floor, self.fixed)
        ranks = ranks or {}
        layer, stage = min((self.layer[m], self.stage.get(m, 0)) for m in chosen)  # the lowest (layer, stage): depth order
        extra = 0 if self.stage_extra is None else self.stage_extra[layer][stage]
        return max(self.floor, self.fixed + self.activation[layer] + extra + sum(self.module_cost(m, ranks.get(m)) for m in chosen))

    def cheapest(self) -> tuple[str, int]:
        """The cheapest trainable set (one module; ties broken by name) and its cost."""
        best = min(self.module, key=lambda m: (self.cost([m]), m))
        return best, self.cost([best])

    def full(self) -> int:
        return self.cost(self.module)

    def without_position(self) -> CostModel:
        """The additive model a plain knapsack assumes: activation terms (checkpointed ones too) dropped (an ablation)."""
        checkpointed = self.activation_checkpointed is not None
        return CostModel(
            self.fixed, tuple(0 for _ in self.activation), self.module, self.layer, self.rank, self.rank_bytes,
            source=f"{self.source}, additive", settings=self.settings, floor=self.floor,  # stage terms dropped too
            activation_checkpointed=tuple(0 for _ in self.activation) if checkpointed else None,
            module_checkpointed=self.module_checkpointed if checkpointed else None,
            batch_rows=self.batch_rows, fixed_one_row=self.fixed_one_row, module_state=self.module_state,  # still priced at a micro-batch
        )

    def to_dict(self) -> dict[str, object]:
        return {
            "source": self.source,
            "settings": dict(self.settings),
            "fixed": self.fixed,
            "activation": list(self.activation),
            "module": dict(self.module),
            "layer": dict(self.layer),
            "rank": self.rank,
            "rank_bytes": dict(self.rank_bytes),
        } | ({} if self.activation_checkpointed is None else {
            "activation_checkpointed": list(self.activation_checkpointed),
            "module_checkpointed": dict(self.module_checkpointed or {}),
        }) | ({} if self.stage_extra is None else {
            "stage": dict(self.stage),
            "stage_extra": [list(row) for row in self.stage_extra],
        }) | ({"floor": self.floor} if self.floor else {}) | ({} if not self.prices_micro_batches else {
            "batch_rows": self.batch_rows, "fixed_one_row": self.fixed_one_row, "module_state": dict(self.module_state),
        }) | ({} if self.inference_fixed is None else {
            "inference_fixed": self.inference_fixed,
            "inference_row": self.inference_row,
        })

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> CostModel:
        return cls(
            fixed=int(data["fixed"]),
            activation=tuple(int(a) for a in data["activation"]),
            module={str(k): int(v) for k, v in dict(data["module"]).items()},
            layer={str(k): int(v) for k, v in dict(data.get("layer") or {}).items()},
            rank=None if data.get("rank") is None else int(data["rank"]),
            rank_bytes={str(k): int(v) for k, v in dict(data.get("rank_bytes") or {}).items()},
            source=str(data.get("source", "calibrated")),
            settings=dict(data.get("settings", {})),
            activation_checkpointed=None if data.get("activation_checkpointed") is None
            else tuple(int(a) for a in data["activation_checkpointed"]),
            module_checkpointed=None if data.get("module_checkpointed") is None
            else {str(k): int(v) for k, v in dict(data["module_checkpointed"]).items()},
            stage={str(k): int(v) for k, v in dict(data.get("stage") or {}).items()},
            stage_extra=None if data.get("stage_extra") is None else tuple(tuple(int(e) for e in row) for row in data["stage_extra"]),
            floor=int(data.get("floor", 0)),
            batch_rows=None if data.get("batch_rows") is None else int(data["batch_rows"]),
            fixed_one_row=None if data.get("fixed_one_row") is None else int(data["fixed_one_row"]),
            module_state={m: int(b) for m, b in (data.get("module_state") or {}).items()},
            inference_fixed=None if data.get("inference_fixed") is None else int(data["inference_fixed"]),
            inference_row=None if data.get("inference_row") is None else int(data["inference_row"]),
        )


def analytic_layers(
    fixed: int,
    per_layer: int,
    layers: int,
    shapes: Mapping[str, tuple[int, int]],
    targets: Iterable[str],
    rank: int,
    tokens: int,
    optimizer: str,
    settings: Mapping[str, object],
    layer_input: int | None = None,
    stages: Mapping[str, int] | None = None,
    stored: Mapping[str, int] | None = None,
    floor: int = 0,
) -> CostModel:
    """The analytic cost model of a stack of ``layers`` identical layers: backpropagating to layer l
    stores ``per_layer`` bytes for each of the layers - l above it; each target t of ``shapes``
    ((in, out) features) costs :func:`lora_module_bytes` at ``rank`` in every layer.

    ``layer_input`` (bytes of one layer's input hidden state) prices activation checkpointing too: the
    inputs of the layers - l blocks kept, plus one block's ``per_layer`` and its modules' saved inputs
    while it is recomputed; a checkpointed module costs :func:`lora_param_bytes`.

    ``stages`` (target -> its stage in the block, :attr:`ModelFamily.stages`) and ``stored`` (target -> what
    backward stores of the lowest layer when that target is the set's lowest module there) price the stages
    within a layer: a later stage stores less of its layer than ``per_layer``, ``stage_extra[l][s] = stored - per_layer``
    (the targets of one stage store the same; the run's stages numbered densely as calibration numbers them)."""
    targets = list(targets)
    staged: dict[str, object] = {}
    if stages is not None and stored is not None:
        used = sorted({stages.get(t, 0) for t in targets})
        dense = {t: used.index(stages.get(t, 0)) for t in targets}
        row = tuple(max(stored[t] for t in targets if dense[t] == s) - per_layer for s in range(len(used)))
        staged = {"stage": {module_id(l, t): dense[t] for l in range(layers) for t in targets}, "stage_extra": (row,) * layers}
    modules = [(module_id(l, t), l, shapes[t]) for l in range(layers) for t in targets]
    checkpointed: dict[str, object] = {}
    if layer_input is not None:
        recompute = per_layer + sum(FLOAT_BYTES * tokens * (shapes[t][0] + rank) for t in targets)
        checkpointed = {
            "activation_checkpointed": tuple((layers - l) * layer_input + recompute for l in range(layers)),
            "module_checkpointed": {m: lora_param_bytes(*shape, rank, optimizer) for m, _, shape in modules},
        }
    return CostModel(
        fixed=fixed,
        activation=tuple((layers - l) * per_layer for l in range(layers)),
        module={m: lora_module_bytes(*shape, rank, tokens, optimizer) for m, _, shape in modules},
        layer={m: l for m, l, _ in modules},
        rank=rank,
        rank_bytes={m: lora_module_bytes(*shape, rank + 1, tokens, optimizer) - lora_module_bytes(*shape, rank, tokens, optimizer)
                    for m, _, shape in modules},
        source="analytic",
        settings=dict(settings),
        **checkpointed,
        **staged,
        floor=floor,
    )


def nothing_fits(cost_model: CostModel, cid: object, budget: int, margin: float) -> FedpilotError:
    """The one-line error for a client whose usable budget fits no trainable set."""
    cheapest, cheapest_cost = cost_model.cheapest()
    room = usable(budget, margin)
    below = "the fixed cost" if room < cost_model.fixed else "the cheapest trainable set"
    return FedpilotError(
        f"federation.budgets: client {cid} has {mib(budget):.1f} MiB ({mib(room):.1f} MiB usable after the "
        f"{margin:.0%} memory margin), below {below}: training {cheapest} alone needs {mib(cheapest_cost):.1f} MiB "
        f"(fixed {mib(cost_model.fixed):.1f} MiB); raise its budget or lower train.batch_size / data.max_length"
    )


def fits_something(cost_model: CostModel, budget: int | None, margin: float) -> bool:
    """Whether a client of this budget can train at least its cheapest module."""
    return budget is None or cost_model.cheapest()[1] <= usable(budget, margin)
