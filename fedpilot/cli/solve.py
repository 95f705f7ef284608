"""``fedpilot solve [--time-limit SECONDS]``: the exact allocator on a problem read as JSON from stdin.

Input, one JSON object:
    {"budget_bytes": int, "fixed_bytes": int, "activation_bytes": [int per layer, at least one],
     "modules": [{"name": str, "layer": int, "bytes": int, "value": number}, ... at least one]}
The schema is strict: no other keys; every int is a JSON integer (not a string, a bool or a float
such as 1.0) in [0, 2**63); a layer is below len(activation_bytes); a value is a JSON number (not a
bool or a string) in [0, 1e300], so that sums stay finite; names are non-empty and unique.

Output, one line of JSON:
    {"modules": [names], "predicted_bytes": int, "value": number, "solve_ms": number, "optimal": bool}

Ranks (the joint allocation, :mod:`fedpilot.planning.joint`): two optional top-level keys,
    "rank_options": [int, ...]   the ranks a module may train at (0, not trained, is always one),
    "full_rank": int             the rank a module's "bytes" and "value" are given at (default: the
                                 largest rank option; at least that),
and per module either "rank_bytes": int (what each unit of rank adds to its bytes; needs
"rank_options") or "ranks": [{"rank": int >= 1, "bytes": int, "value": number}, ...] in place of
its "bytes" and "value" (its own options, as given). With "rank_options", a module at rank r costs
``bytes + (r - full_rank) * rank_bytes`` (at least 0) and is worth
``value * rank_share(r, full_rank)`` (:func:`fedpilot.planning.scoring.rank_share`). The answer
then also holds "ranks": {name: rank} for the trained modules. An input with none of these keys is
the module-set problem, answered exactly as before.

Activation checkpointing (:mod:`fedpilot.planning.checkpointing`; module-set problems only): one
optional top-level key "checkpointed_activation_bytes": [int per layer] (what a checkpointed step
stores from each lowest trained layer up) and, with it, "checkpointed_bytes": int on every module
(its cost in a checkpointed step). The solver then picks the best of the plain and the checkpointed
optimum (a tie keeps checkpointing off: the same value, a faster step), and the answer also holds
"checkpointing": bool. The cost of a checkpointed set S is
``fixed_bytes + checkpointed_activation_bytes[lowest layer of S] + sum of checkpointed_bytes``.

Exit codes:
    0  the optimal set;
    1  nothing fits: one line on stderr with the cheapest trainable set's cost;
    2  malformed input (or an internal error): one line on stderr;
    3  the time limit was hit: the best set found is printed with "optimal": false; it fits the
       budget but may not be optimal.
"""

from __future__ import annotations

import argparse
import json
import math
import reprlib
import sys
from typing import TYPE_CHECKING, Any

from fedpilot.core.errors import FedpilotError

if TYPE_CHECKING:
    from fedpilot.planning.allocation import Problem
    from fedpilot.planning.joint import JointProblem

MAX_INT = 2**63  # integers (bytes, layers) lie in [0, MAX_INT)
MAX_VALUE = 1e300  # values lie in [0, MAX_VALUE]
EXIT_OPTIMAL, EXIT_NOTHING_FITS, EXIT_BAD_INPUT, EXIT_TIME_LIMIT = 0, 1, 2, 3

PROBLEM_KEYS = ("budget_bytes", "fixed_bytes", "activation_bytes", "modules", "rank_options", "full_rank", "checkpointed_activation_bytes")
MODULE_KEYS = ("name", "layer", "bytes", "value", "rank_bytes", "ranks", "checkpointed_bytes")
OPTION_KEYS = ("rank", "bytes", "value")


class NothingFits(FedpilotError):
    exit_code = EXIT_NOTHING_FITS


class InputError(FedpilotError):
    exit_code = EXIT_BAD_INPUT


# -- the command ---------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``solve`` verb's options."""
    parser.add_argument(
        "--time-limit", type=_seconds, metavar="SECONDS", default=None,
        help="stop searching after SECONDS and print the best set found; exit 3 if the limit was hit",
    )


def run(args: argparse.Namespace) -> int:
    """Read the problem from stdin, print the answer (stdout) or one error line (stderr), return the exit code."""
    try:
        text = getattr(sys.stdin, "buffer", sys.stdin).read()
    except (AttributeError, OSError, ValueError) as err:  # no stdin, or a closed one
        code, out, err_line = EXIT_BAD_INPUT, "", f"fedpilot: error: cannot read the problem from stdin ({type(err).__name__})\n"
    else:
        code, out, err_line = respond(text, getattr(args, "time_limit", None))
    try:
        sys.stdout.write(out)
        sys.stdout.flush()
    except OSError as err:  # e.g. a closed pipe: the answer did not get out
        code, err_line = EXIT_BAD_INPUT, f"fedpilot: error: cannot write the answer to stdout ({type(err).__name__})\n"
    sys.stderr.write(err_line)
    return code


def respond(text: str | bytes, time_limit_s: float | None = None) -> tuple[int, str, str]:
    """What ``fedpilot solve`` does with ``text`` on stdin: (exit code, stdout, stderr), never raising."""
    try:
        answer = solve_text(text, time_limit_s)
        out = json.dumps(answer, allow_nan=False)
    except FedpilotError as err:
        return err.exit_code, "", f"fedpilot: error: {_one_line(str(err))}\n"
    except Exception as err:  # noqa: BLE001 - a bug must not look like "nothing fits" (exit 1)
        return EXIT_BAD_INPUT, "", f"fedpilot: error: {_internal(err)}\n"
    return (EXIT_OPTIMAL if answer["optimal"] else EXIT_TIME_LIMIT), out + "\n", ""


def solve_text(text: str | bytes, time_limit_s: float | None = None) -> dict[str, Any]:
    """The answer to the problem in ``text`` as a dict (the printed JSON); FedpilotError otherwise
    (NothingFits: exit 1; anything else, including an unexpected failure: exit 2)."""
    try:
        return _solve_text(text, time_limit_s)
    except FedpilotError:
        raise
    except Exception as err:  # noqa: BLE001
        raise InputError(_internal(err)) from None


def _solve_text(text: str | bytes, time_limit_s: float | None) -> dict[str, Any]:
    from fedpilot.core.sizes import mib
    from fedpilot.planning.allocation import Problem, solve

    if time_limit_s is not None and not (type(time_limit_s) in (int, float) and math.isfinite(time_limit_s) and time_limit_s > 0):
        raise InputError(f"the time limit must be a positive, finite number of seconds, got {time_limit_s!r}")
    problem = parse_any(text)
    if not isinstance(problem, Problem):
        return _solve_joint(problem, time_limit_s)
    priced = problem.cost_model.prices_checkpointing
    if priced:
        from fedpilot.planning.checkpointing import solve_planned

        allocation = solve_planned(problem, time_limit_s=time_limit_s)
    else:
        allocation = solve(problem, time_limit_s=time_limit_s)
    if allocation is None:
        name, cost = problem.cost_model.cheapest()
        if priced:
            cheap_name, cheap_cost = problem.cost_model.checkpointed().cheapest()
            if cheap_cost < cost:
                name, cost = f"{cheap_name} (checkpointed)", cheap_cost
        raise NothingFits(
            f"nothing fits in {problem.budget_bytes} bytes ({mib(problem.budget_bytes):.1f} MiB): "
            f"the cheapest trainable set, {_one_line(name)}, costs {cost} bytes ({mib(cost):.1f} MiB)"
        )
    return {
        "modules": allocation.modules,
        "predicted_bytes": allocation.predicted_bytes,
        "value": allocation.value,
        "solve_ms": allocation.solve_ms,
        "optimal": allocation.optimal,
    } | ({"checkpointing": allocation.checkpointing} if priced else {})


def _solve_joint(problem: JointProblem, time_limit_s: float | None) -> dict[str, Any]:
    from fedpilot.core.sizes import mib
    from fedpilot.planning.joint import solve_joint

    answer = solve_joint(problem, time_limit_s=time_limit_s)
    if answer is None:
        cost, name, rank = min((problem.cost({m.name: o.rank}), m.name, o.rank) for m in problem.modules for o in m.options)
        raise NothingFits(
            f"nothing fits in {problem.budget_bytes} bytes ({mib(problem.budget_bytes):.1f} MiB): "
            f"the cheapest trainable set, {_one_line(name)} at rank {rank}, costs {cost} bytes ({mib(cost):.1f} MiB)"
        )
    return {
        "modules": answer.modules,
        "ranks": answer.ranks,
        "predicted_bytes": answer.predicted_bytes,
        "value": answer.value,
        "solve_ms": answer.solve_ms,
        "optimal": answer.optimal,
    }


# -- the input schema ----------------------------------------------------------------------------
def parse_problem(text: str | bytes) -> Problem:
    """The module-set problem in ``text``, checked against the schema; InputError (one line) otherwise
    (also for a problem with ranks: :func:`parse_any` reads those)."""
    from fedpilot.planning.allocation import Problem

    problem = parse_any(text)
    if not isinstance(problem, Problem):
        raise InputError("input: this problem has ranks; read it with parse_any")
    return problem


def parse_any(text: str | bytes) -> Problem | JointProblem:
    """The problem in ``text``: a module-set :class:`Problem`, or a :class:`JointProblem` when it has ranks."""
    from fedpilot.planning.allocation import Item, Problem

    data = _load_json(text)
    if not isinstance(data, dict):
        raise InputError(f"input must be a JSON object, got {_json_type(data)}")
    _check_keys(data, "", PROBLEM_KEYS)
    listed = data.get("modules") if isinstance(data.get("modules"), list) else []
    checkpointed = "checkpointed_activation_bytes" in data or any(isinstance(m, dict) and "checkpointed_bytes" in m for m in listed)
    if "rank_options" in data or "full_rank" in data or any(isinstance(m, dict) and ("ranks" in m or "rank_bytes" in m) for m in listed):
        if checkpointed:
            raise InputError("input: checkpointing and ranks cannot be solved together yet; drop checkpointed_activation_bytes "
                             "and checkpointed_bytes, or the rank keys")
        return _parse_joint(data)
    budget, fixed, activation = _header(data)
    if checkpointed and "checkpointed_activation_bytes" not in data:
        raise InputError("input: checkpointed_activation_bytes is missing: modules give checkpointed_bytes, so give the "
                         "checkpointed activation bytes per layer too")
    checkpointed_activation = None
    if checkpointed:
        given = _array(data, "checkpointed_activation_bytes", "checkpointed_activation_bytes")
        checkpointed_activation = [_integer(given, i, f"checkpointed_activation_bytes.{i}") for i in range(len(given))]
        if len(checkpointed_activation) != len(activation):
            raise InputError(f"input: checkpointed_activation_bytes has {len(checkpointed_activation)} layers, "
                             f"activation_bytes {len(activation)}; give one per layer")
    modules = _array(data, "modules", "modules")
    items, seen, module_checkpointed = [], set(), {}
    for i, module in enumerate(modules):
        where = f"modules.{i}"
        name, layer = _module_head(module, i, len(activation))
        size = _integer(module, "bytes", f"{where}.bytes")
        value = _number(module, "value", f"{where}.value")
        if checkpointed:
            module_checkpointed[name] = _integer(module, "checkpointed_bytes", f"{where}.checkpointed_bytes")
        if name in seen:
            raise InputError(f"input: module name {_show(name)} appears twice; names must be unique")
        seen.add(name)
        items.append(Item(name, layer, size, value))
    return Problem.from_items(budget, fixed, activation, items, checkpointed_activation, module_checkpointed if checkpointed else None)


def _header(data: dict[str, Any]) -> tuple[int, int, list[int]]:
    """The budget, fixed bytes and per-layer activation bytes every input states."""
    budget = _integer(data, "budget_bytes", "budget_bytes")
    fixed = _integer(data, "fixed_bytes", "fixed_bytes")
    activation = _array(data, "activation_bytes", "activation_bytes")
    return budget, fixed, [_integer(activation, i, f"activation_bytes.{i}") for i in range(len(activation))]


def _module_head(module: Any, i: int, layers: int) -> tuple[str, int]:
    """``modules[i]``'s name and layer, checked (an object with known keys, a non-empty name, a layer that exists)."""
    where = f"modules.{i}"
    if not isinstance(module, dict):
        raise _invalid(where, "Input should be a JSON object", module)
    _check_keys(module, where, MODULE_KEYS)
    name = _required(module, "name", f"{where}.name")
    if not isinstance(name, str) or not name:
        raise _invalid(f"{where}.name", "Input should be a non-empty string", name)
    layer = _integer(module, "layer", f"{where}.layer")
    if layer >= layers:
        raise InputError(f"input: modules[{i}].layer is {layer} but activation_bytes has {layers} layers")
    return name, layer


def _parse_joint(data: dict[str, Any]) -> JointProblem:
    from fedpilot.planning.joint import JointProblem, RankedModule, RankOption
    from fedpilot.planning.scoring import rank_share

    budget, fixed, activation = _header(data)
    rank_options: list[int] = []
    if "rank_options" in data:
        given = _array(data, "rank_options", "rank_options")
        rank_options = sorted({_integer(given, i, f"rank_options.{i}") for i in range(len(given))} - {0})
        if not rank_options:
            raise InputError("input: rank_options: give at least one rank >= 1 (0, not trained, is always an option)")
    if "full_rank" in data:
        if not rank_options:
            raise InputError("input: full_rank says which rank the modules' bytes and values are given at; it needs rank_options")
        full_rank = _integer(data, "full_rank", "full_rank")
        if full_rank < rank_options[-1]:
            raise InputError(f"input: full_rank is {full_rank}, below the largest rank option {rank_options[-1]}; raise it")
    else:
        full_rank = rank_options[-1] if rank_options else 0
    modules = _array(data, "modules", "modules")
    parsed, seen = [], set()
    for i, module in enumerate(modules):
        where = f"modules.{i}"
        name, layer = _module_head(module, i, len(activation))
        if "ranks" in module:
            mixed = sorted(set(module) & {"bytes", "value", "rank_bytes"})
            if mixed:
                raise InputError(f"input: {where}: give either ranks or {', '.join(mixed)}, not both")
            given = _array(module, "ranks", f"{where}.ranks")
            options = []
            for j, option in enumerate(given):
                at = f"{where}.ranks.{j}"
                if not isinstance(option, dict):
                    raise _invalid(at, "Input should be a JSON object", option)
                _check_keys(option, at, OPTION_KEYS)
                rank = _integer(option, "rank", f"{at}.rank")
                if rank < 1:
                    raise _invalid(f"{at}.rank", "Input should be a rank >= 1 (rank 0, not trained, is implicit)", rank)
                options.append(RankOption(rank, _integer(option, "bytes", f"{at}.bytes"), _number(option, "value", f"{at}.value")))
            if len({o.rank for o in options}) != len(options):
                raise InputError(f"input: {where}.ranks: a rank appears twice; give each rank once")
        else:
            if not rank_options:
                raise InputError(f"input: {where}: give its ranks, or rank_options at the top level and its rank_bytes")
            size = _integer(module, "bytes", f"{where}.bytes")
            value = _number(module, "value", f"{where}.value")
            per_rank = _integer(module, "rank_bytes", f"{where}.rank_bytes")
            options = []
            for rank in rank_options:
                cost = size + (rank - full_rank) * per_rank
                if cost < 0:
                    raise InputError(f"input: {where}: at rank {rank} its bytes come to {cost} (bytes + (rank - full_rank) * rank_bytes); "
                                     f"lower rank_bytes or drop rank {rank}")
                options.append(RankOption(rank, cost, value * rank_share(rank, full_rank)))
        if name in seen:
            raise InputError(f"input: module name {_show(name)} appears twice; names must be unique")
        seen.add(name)
        parsed.append(RankedModule(name, layer, tuple(options)))
    return JointProblem(budget, fixed, tuple(activation), tuple(parsed))


class _Constant(ValueError):
    pass


def _reject_constant(name: str) -> None:
    raise _Constant(name)


def _load_json(text: str | bytes) -> Any:
    if isinstance(text, (bytes, bytearray)):
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError as err:
            raise InputError(f"input is not valid UTF-8: byte {err.start} cannot be decoded") from None
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as err:
        raise InputError(f"input is not valid JSON: {err.msg} at line {err.lineno} column {err.colno}") from None
    except _Constant as err:
        raise InputError(f"input is not valid JSON: {err} is not a JSON number") from None
    except RecursionError:
        raise InputError("input is nested too deeply to read (arrays and objects inside each other)") from None
    except ValueError:  # an integer literal longer than Python reads (sys.get_int_max_str_digits())
        raise InputError("input holds an integer with too many digits to read; integers must be below 2**63") from None


def _check_keys(data: dict[str, Any], where: str, allowed: tuple[str, ...]) -> None:
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        at = f"{where}: " if where else ""
        raise InputError(f"input: {at}unknown key {_show(unknown[0])}; allowed keys: {', '.join(allowed)}")


def _required(data: dict[str, Any], key: str, where: str) -> Any:
    if key not in data:
        raise InputError(f"input: {where}: Field required")
    return data[key]


def _integer(data: Any, key: Any, where: str) -> int:
    value = data[key] if isinstance(data, list) else _required(data, key, where)
    if type(value) is not int:  # JSON integers only: bools, floats such as 1.0 and strings are refused
        raise _invalid(where, "Input should be a valid integer", value)
    if not 0 <= value < MAX_INT:
        raise _invalid(where, "Input should be an integer in [0, 2**63)", value)
    return value


def _number(data: dict[str, Any], key: str, where: str) -> float:
    value = _required(data, key, where)
    if type(value) not in (int, float):  # bools and strings are refused
        raise _invalid(where, "Input should be a valid number", value)
    if isinstance(value, float) and not math.isfinite(value):
        raise _invalid(where, "Input should be a finite number", value)
    if value < 0:
        raise _invalid(where, "Input should be greater than or equal to 0", value)
    if value > MAX_VALUE:
        raise _invalid(where, "Input should be at most 1e300", value)
    return float(value)


def _array(data: dict[str, Any], key: str, where: str) -> list[Any]:
    value = _required(data, key, where)
    if not isinstance(value, list) or not value:
        raise _invalid(where, "Input should be a non-empty JSON array", value)
    return value


def _invalid(where: str, message: str, value: Any) -> InputError:
    return InputError(f"input: {where}: {message} (got {_show(value)})")


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxdict, _REPR.maxlist, _REPR.maxstring, _REPR.maxlong, _REPR.maxother = 2, 4, 4, 40, 40, 40


def _show(value: Any) -> str:
    """A short one-line rendering of an input value (bounded in length and depth)."""
    if isinstance(value, bool) or value is None:
        return json.dumps(value)  # as written in JSON: true, false, null
    if isinstance(value, int) and abs(value).bit_length() > 128:
        return f"an integer of about {int(abs(value).bit_length() * math.log10(2)) + 1} digits"
    return _REPR.repr(value)


def _json_type(value: Any) -> str:
    names = {list: "an array", str: "a string", bool: "a boolean", int: "a number", float: "a number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def _one_line(message: str) -> str:
    return message.replace("\r", "\\r").replace("\n", "\\n")


def _internal(err: BaseException) -> str:
    try:
        detail = _one_line(str(err))[:200]
    except Exception:  # noqa: BLE001
        detail = ""
    return f"internal error while solving ({type(err).__name__}{': ' + detail if detail else ''}); please report it with the input"


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a positive, finite number of seconds, got {text!r}")
    return value
