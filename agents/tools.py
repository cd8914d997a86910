"""Tools an agent can call: plain typed Python callables and LangChain tools, one shape.

A :class:`Tool` has a name, a description, a pydantic model of its arguments (built from the
function's type hints, so the model sees a JSON schema and every call is validated before it
runs) and an async ``run``. Synchronous functions run in a worker thread; one that hangs past its
timeout is abandoned (the agent moves on) but keeps its thread until it returns, since Python
cannot stop a thread.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, get_type_hints

from langchain_core.tools import BaseTool
from pydantic import BaseModel, ConfigDict, create_model

from agents.errors import ToolDefinitionError

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,63}$")


@dataclass(frozen=True, slots=True)
class Tool:
    """Something the model may call. ``run`` takes validated arguments and returns anything
    (it becomes the observation: strings as they are, other values as JSON)."""

    name: str
    description: str
    arguments: type[BaseModel]
    run: Callable[[dict[str, Any]], Awaitable[Any]]
    timeout_s: float | None = None
    """Seconds before a call is abandoned; None = the agent's ``tool_timeout_s``."""

    def parse(self, raw: Mapping[str, Any]) -> dict[str, Any]:
        """The arguments, validated and coerced; raises ``pydantic.ValidationError``."""
        model = self.arguments.model_validate(dict(raw))
        return {name: getattr(model, name) for name in type(model).model_fields}

    def signature(self) -> str:
        """``name(a: integer, b?: string) - description``: compact, for the prompt."""
        schema = self.arguments.model_json_schema()
        required = set(schema.get("required", []))
        params = []
        for name, spec in schema.get("properties", {}).items():
            kind = _type_name(spec)
            params.append(f"{name}{'' if name in required else '?'}: {kind}")
        return f"{self.name}({', '.join(params)}) - {self.description}"


def _type_name(spec: Mapping[str, Any]) -> str:
    if "enum" in spec:
        return "|".join(json.dumps(v) for v in spec["enum"])
    if "anyOf" in spec:
        return "|".join(_type_name(s) for s in spec["anyOf"])
    kind = spec.get("type", "any")
    if kind == "array":
        return f"list[{_type_name(spec.get('items', {}))}]"
    return str(kind)


def _check_name(name: str, where: str) -> str:
    if not _NAME.match(name):
        raise ToolDefinitionError(
            f"tool name {name!r} of {where} is not valid: use letters, digits, _ and -, "
            "starting with a letter or _, at most 64 characters"
        )
    return name


def _describe(doc: str | None, name: str) -> str:
    first = (doc or "").strip().split("\n\n")[0]
    return " ".join(first.split()) or name.replace("_", " ")


def tool(
    function: Callable[..., Any],
    *,
    name: str | None = None,
    description: str | None = None,
    timeout_s: float | None = None,
) -> Tool:
    """A tool from a typed function (sync or async); its docstring's first paragraph
    describes it. Raises :class:`ToolDefinitionError` for a parameter without a type hint,
    ``*args``/``**kwargs``, or a bad name."""
    label = name if name is not None else str(getattr(function, "__name__", ""))
    where = getattr(function, "__qualname__", repr(function))
    _check_name(label, where)
    try:
        hints = get_type_hints(function)
    except (NameError, TypeError) as err:
        raise ToolDefinitionError(f"the type hints of {where} cannot be resolved: {err}") from err
    fields: dict[str, Any] = {}
    for parameter in inspect.signature(function).parameters.values():
        if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            raise ToolDefinitionError(
                f"{where} takes *{parameter.name}; a tool needs named, typed parameters"
            )
        if parameter.name not in hints:
            raise ToolDefinitionError(
                f"parameter {parameter.name!r} of {where} has no type hint; add one so the "
                "model can be shown its JSON schema"
            )
        default = ... if parameter.default is parameter.empty else parameter.default
        fields[parameter.name] = (hints[parameter.name], default)
    arguments = create_model(f"{label}_arguments", __config__=ConfigDict(extra="forbid"), **fields)
    is_async = inspect.iscoroutinefunction(function)

    async def run(values: dict[str, Any]) -> Any:
        if is_async:
            return await function(**values)
        return await asyncio.to_thread(function, **values)

    return Tool(
        name=label,
        description=description or _describe(function.__doc__, label),
        arguments=arguments,
        run=run,
        timeout_s=timeout_s,
    )


def from_langchain(base_tool: BaseTool, *, timeout_s: float | None = None) -> Tool:
    """A tool from a LangChain ``BaseTool`` (``@tool`` functions, ``StructuredTool`` …)."""
    if not isinstance(base_tool, BaseTool):
        raise ToolDefinitionError(f"{base_tool!r} is not a LangChain BaseTool")
    _check_name(base_tool.name, f"LangChain tool {base_tool.name!r}")
    schema = base_tool.get_input_schema()
    if not issubclass(schema, BaseModel):  # a pydantic.v1 model: no v2 validation to reuse
        raise ToolDefinitionError(
            f"LangChain tool {base_tool.name!r} has a pydantic v1 schema; give it a v2 one"
        )

    async def run(values: dict[str, Any]) -> Any:
        return await base_tool.ainvoke(values)

    return Tool(
        name=base_tool.name,
        description=_describe(base_tool.description, base_tool.name),
        arguments=schema,
        run=run,
        timeout_s=timeout_s,
    )


def as_tool(value: Tool | Callable[..., Any] | Any) -> Tool:
    """``value`` as a :class:`Tool`: a Tool as it is, a LangChain tool, or a typed function."""
    if isinstance(value, Tool):
        return value
    if isinstance(value, BaseTool):
        return from_langchain(value)
    if callable(value):
        return tool(value)
    raise ToolDefinitionError(f"{value!r} is not a tool: give a Tool, a function or a BaseTool")
