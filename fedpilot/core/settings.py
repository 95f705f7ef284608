"""The base of every settings block (config sections, strategy options, input schemas) and its errors."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, model_validator


class StrictModel(BaseModel):
    """A settings block that rejects unknown keys, listing the allowed ones."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _reject_unknown_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            unknown = sorted((k for k in data if k not in cls.model_fields), key=repr)
            if unknown:
                allowed = f"allowed keys: {', '.join(cls.model_fields)}" if cls.model_fields else "no keys are allowed here"
                raise ValueError(f"unknown key {unknown[0]!r}; {allowed}")
        return data


def describe_error(error: dict[str, Any]) -> str:
    """One line for a pydantic error: the dotted field path, the message, the offending input."""
    where = ".".join(str(part) for part in error["loc"])
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] not in ("value_error", "assertion_error") and "input" in error:
        message = f"{message} (got {error['input']!r})"
    return f"{where}: {message}" if where else message
