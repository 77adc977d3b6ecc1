"""What a gate knows of each tool's arguments: the schema they are checked with, the arguments
injected where the model does not see them, and the record of a call whose arguments fail."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from langchain_core.tools import BaseTool
from pydantic import BaseModel

from handrail.state import CallError, ToolCallRecord, args_hash
from handrail.tools.json_schema import JsonSchemaArgs

__all__ = ["Schema", "bad_request", "injected", "schema_of"]

Schema = type[BaseModel] | JsonSchemaArgs | None
"""What a tool's arguments are checked with: its pydantic model, its JSON schema, or nothing."""


def schema_of(tool: BaseTool) -> Schema:
    """The schema of the arguments the model gives ``tool`` (injected ones are not in it)."""
    schema = tool.tool_call_schema
    if isinstance(schema, type) and issubclass(schema, BaseModel):
        return schema
    if isinstance(schema, Mapping):  # a JSON schema: MCP tools, a dict ``args_schema``
        return JsonSchemaArgs(schema, title=tool.name)
    return None


def injected(tool: BaseTool, name: str) -> bool:
    """Whether ``tool`` takes ``name`` as an argument the model does not see (injected)."""
    full = tool.get_input_schema()
    shown = tool.tool_call_schema
    in_full = isinstance(full, type) and issubclass(full, BaseModel) and name in full.model_fields
    in_shown = (
        isinstance(shown, type) and issubclass(shown, BaseModel) and name in shown.model_fields
    )
    return in_full and not in_shown


def bad_request(
    call_id: str, name: str, args: Mapping[str, Any], message: str, hash_key: bytes
) -> ToolCallRecord:
    """The record of a call answered as a bad request (``message``): never run."""
    return ToolCallRecord(
        id=call_id,
        name=name,
        args=dict(args),
        args_hash=args_hash(name, args, hash_key),
        status="failed",
        last_action="failure",
        error=CallError(kind="bad_request", message=message),
        result=f"Bad request, the tool was not run: {message}",
    )
