"""``fedpilot solve [--time-limit SECONDS]``: the exact allocator on a problem read as JSON from stdin.

Input, one JSON object:
    {"budget_bytes": int, "fixed_bytes": int, "activation_bytes": [int per layer, at least one],
     "modules": [{"name": str, "layer": int, "bytes": int, "value": number}, ... at least one]}
The schema is strict: no other keys; every int is a JSON integer (not a string, a bool or a float
such as 1.0) in [0, 2**63); a layer is below len(activation_bytes); a value is a JSON number (not a
bool or a string) in [0, 1e300], so that sums stay finite; names are non-empty and unique.

Output, one line of JSON:
    {"modules": [names], "predicted_bytes": int, "value": number, "solve_ms": number, "optimal": bool}

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

MAX_INT = 2**63  # integers (bytes, layers) lie in [0, MAX_INT)
MAX_VALUE = 1e300  # values lie in [0, MAX_VALUE]
EXIT_OPTIMAL, EXIT_NOTHING_FITS, EXIT_BAD_INPUT, EXIT_TIME_LIMIT = 0, 1, 2, 3

PROBLEM_KEYS = ("budget_bytes", "fixed_bytes", "activation_bytes", "modules")
MODULE_KEYS = ("name", "layer", "bytes", "value")


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
    from fedpilot.planning.allocation import solve

    if time_limit_s is not None and not (type(time_limit_s) in (int, float) and math.isfinite(time_limit_s) and time_limit_s > 0):
        raise InputError(f"the time limit must be a positive, finite number of seconds, got {time_limit_s!r}")
    problem = parse_problem(text)
    allocation = solve(problem, time_limit_s=time_limit_s)
    if allocation is None:
        name, cost = problem.cost_model.cheapest()
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
    }


# -- the input schema ----------------------------------------------------------------------------
def parse_problem(text: str | bytes) -> Problem:
    """The problem in ``text``, checked against the schema; InputError (one line) otherwise."""
    from fedpilot.planning.allocation import Item, Problem

    data = _load_json(text)
    if not isinstance(data, dict):
        raise InputError(f"input must be a JSON object, got {_json_type(data)}")
    _check_keys(data, "", PROBLEM_KEYS)
    budget = _integer(data, "budget_bytes", "budget_bytes")
    fixed = _integer(data, "fixed_bytes", "fixed_bytes")
    activation = _array(data, "activation_bytes", "activation_bytes")
    activation = [_integer(activation, i, f"activation_bytes.{i}") for i in range(len(activation))]
    modules = _array(data, "modules", "modules")
    items, seen = [], set()
    for i, module in enumerate(modules):
        where = f"modules.{i}"
        if not isinstance(module, dict):
            raise _invalid(where, "Input should be a JSON object", module)
        _check_keys(module, where, MODULE_KEYS)
        name = _required(module, "name", f"{where}.name")
        if not isinstance(name, str) or not name:
            raise _invalid(f"{where}.name", "Input should be a non-empty string", name)
        layer = _integer(module, "layer", f"{where}.layer")
        size = _integer(module, "bytes", f"{where}.bytes")
        value = _number(module, "value", f"{where}.value")
        if layer >= len(activation):
            raise InputError(f"input: modules[{i}].layer is {layer} but activation_bytes has {len(activation)} layers")
        if name in seen:
            raise InputError(f"input: module name {_show(name)} appears twice; names must be unique")
        seen.add(name)
        items.append(Item(name, layer, size, value))
    return Problem.from_items(budget, fixed, activation, items)


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
