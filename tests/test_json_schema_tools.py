"""Tools whose arguments are a JSON schema (MCP tools, a dict ``args_schema``) are validated and
coerced by that schema before the policy sees them, as pydantic tools are
(`handrail.tools.json_schema`)."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from langchain_core.messages import ToolMessage
from langchain_core.tools import StructuredTool
from langgraph.types import Command
from pydantic import ValidationError
from support import CTX, agent, approve, call, config, edit, turn

from handrail import Policy
from handrail.errors import HandrailError, ResumeError
from handrail.review.records import schema_errors
from handrail.tools.json_schema import ERROR_TYPE, JsonSchemaArgs

PROPERTY_SETTINGS = settings(max_examples=200, deadline=None)

TRANSFER: dict[str, Any] = {
    "type": "object",
    "properties": {
        "to": {"type": "string"},
        "amount": {"type": "integer"},
        "fee": {"anyOf": [{"type": "number"}, {"type": "null"}], "default": None},
        "urgent": {"type": "boolean"},
        "lines": {"type": "array", "items": {"$ref": "#/$defs/Line"}},
    },
    "required": ["to", "amount"],
    "$defs": {
        "Line": {
            "type": "object",
            "properties": {"qty": {"type": "integer"}, "price": {"type": "number"}},
            "additionalProperties": False,
        }
    },
}
"""What a pydantic MCP server publishes: ``$defs`` and ``$ref``, Optional as ``anyOf`` null."""

transfer = JsonSchemaArgs(TRANSFER, title="transfer")


def problems(args: dict[str, Any], schema: JsonSchemaArgs = transfer) -> str:
    """The one-line message a call with ``args`` gets back (`schema_errors`)."""
    with pytest.raises(ValidationError) as refused:
        schema.validate(args)
    return schema_errors(refused.value)


def test_strings_a_model_gives_for_numbers_and_booleans_are_coerced_everywhere() -> None:
    args = {
        "to": "bob",
        "amount": "5000",
        "fee": " 12.5 ",
        "urgent": "True",
        "lines": [{"qty": "3", "price": "-0.5"}, {"qty": 1, "price": "1e3"}],
    }
    assert transfer.validate(args) == {
        "to": "bob",
        "amount": 5000,
        "fee": 12.5,
        "urgent": True,
        "lines": [{"qty": 3, "price": -0.5}, {"qty": 1, "price": 1000.0}],
    }
    assert args["lines"][0] == {"qty": "3", "price": "-0.5"}  # the given arguments stay as given


def test_nothing_else_is_applied_silently() -> None:
    args = {"to": "bob", "amount": 5, "note": "kept", "fee": None}
    assert transfer.validate(args) == args  # no default added, no unknown key dropped
    keeps = JsonSchemaArgs({"anyOf": [{"type": "integer"}, {"type": "string"}]}, title="t")
    wrapped = JsonSchemaArgs({"properties": {"v": keeps.schema}}, title="t")
    assert wrapped.validate({"v": "5000"}) == {"v": "5000"}  # a string is what it may be
    assert problems({"to": 7, "amount": 5}) == "to: 7 is not of type 'string'"  # no str()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"to": "bob", "amount": "12.5"}, "amount: '12.5' is not of type 'integer'"),
        ({"to": "bob", "amount": "12x"}, "amount: '12x' is not of type 'integer'"),
        ({"to": "bob", "amount": "1e3"}, "amount: '1e3' is not of type 'integer'"),
        ({"to": "bob", "amount": 1, "fee": "nan"}, "fee: 'nan' is not of type 'number' or 'null'"),
        ({"to": "bob", "amount": 1, "fee": "1e999"}, "fee: '1e999' is not of type 'number' or"),
        ({"to": "bob", "amount": 1, "urgent": "yes"}, "urgent: 'yes' is not of type 'boolean'"),
        ({"amount": 1}, "(arguments): 'to' is a required property"),
        (
            {"to": "bob", "amount": 1, "lines": [{"qty": 1, "sku": "x"}]},
            "lines.0: Additional properties are not allowed ('sku' was unexpected)",
        ),
    ],
)
def test_what_does_not_fit_is_refused_naming_the_field(args: dict[str, Any], message: str) -> None:
    assert problems(args).startswith(message)


def test_every_error_is_reported_with_its_path_and_keyword() -> None:
    with pytest.raises(ValidationError) as refused:
        transfer.validate({"to": "bob", "amount": "12x", "lines": [{"qty": "1", "price": "p"}]})
    errors = refused.value.errors()
    assert refused.value.title == "transfer"
    assert [(e["loc"], e["type"], e["ctx"]["keyword"]) for e in errors] == [
        (("amount",), ERROR_TYPE, "type"),
        (("lines", 0, "price"), ERROR_TYPE, "type"),
    ]
    assert errors[1]["input"] == "p"


def test_a_long_value_is_cut_in_the_message() -> None:
    message = problems({"to": "x" * 5000, "amount": 1, "urgent": "y" * 5000})
    assert len(message) < 400 and message.endswith("…")


def test_the_draft_the_schema_declares_is_the_one_used() -> None:
    draft7 = {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "type": "object",
        "properties": {
            "pair": {"type": "array", "items": [{"type": "integer"}, {"type": "string"}]}
        },
    }
    assert JsonSchemaArgs(draft7, title="t").validate({"pair": ["5", "5"]}) == {"pair": [5, "5"]}
    with pytest.raises(HandrailError, match=r"the tool 't' has an invalid JSON schema at"):
        JsonSchemaArgs(
            {**draft7, "$schema": "https://json-schema.org/draft/2020-12/schema"}, title="t"
        )


def test_a_schema_that_is_no_json_schema_is_refused_when_the_graph_is_built(tmp_path) -> None:
    broken = StructuredTool(
        name="broken", description="x", args_schema={"type": "object", "required": "to"}
    )
    with pytest.raises(HandrailError, match="'broken' has an invalid JSON schema at required"):
        agent(tmp_path / "h.db", [broken], POLICY)


@PROPERTY_SETTINGS
@given(n=st.integers(min_value=-(10**30), max_value=10**30), pad=st.sampled_from(["", " ", "\t"]))
def test_an_integer_spelled_as_text_becomes_that_integer(n: int, pad: str) -> None:
    assert transfer.validate({"to": "a", "amount": f"{pad}{n}{pad}"})["amount"] == n


@PROPERTY_SETTINGS
@given(x=st.floats(allow_nan=False, allow_infinity=False))
def test_a_number_spelled_as_text_becomes_that_number(x: float) -> None:
    fee = transfer.validate({"to": "a", "amount": 1, "fee": repr(x)})["fee"]
    assert fee == x and math.copysign(1, fee) == math.copysign(1, x)


@PROPERTY_SETTINGS
@given(text=st.text(max_size=12))
def test_only_text_that_spells_an_integer_in_ascii_digits_is_made_one(text: str) -> None:
    spelled = re.fullmatch(r"[ \t\n\r\f\v]*[+-]?[0-9]+[ \t\n\r\f\v]*", text)
    try:
        amount = transfer.validate({"to": "a", "amount": text})["amount"]
    except ValidationError:
        assert not spelled
        return
    assert spelled and amount == int(text)


scalars = st.one_of(
    st.integers(-5, 5).map(str), st.integers(-5, 5), st.sampled_from(["true", "false", "x", "1.5"])
)


@PROPERTY_SETTINGS
@given(
    amount=scalars,
    fee=st.one_of(st.none(), scalars),
    lines=st.lists(st.fixed_dictionaries({"qty": scalars, "price": scalars}), max_size=3),
)
def test_coercion_is_idempotent_and_what_it_returns_fits(
    amount: Any, fee: Any, lines: list[dict[str, Any]]
) -> None:
    try:
        once = transfer.validate({"to": "a", "amount": amount, "fee": fee, "lines": lines})
    except ValidationError:
        return
    assert transfer.validate(once) == once
    assert isinstance(once["amount"], int)
    assert all(isinstance(line["qty"], int) for line in once["lines"])


# Through the agent graph: a tool made from a JSON schema, as langchain-mcp-adapters makes them.

POLICY = Policy.from_yaml(
    """
version: 1
default: deny
rules:
  - {id: big, tools: [transfer], when: "args.amount > 1000", effect: ask, approvers: [treasurer]}
  - {id: small, tools: [transfer], when: "args.amount <= 1000", effect: allow}
"""
)


class Bank:
    """A JSON-schema tool that records the arguments it ran with."""

    def __init__(self) -> None:
        self.ran: list[dict[str, Any]] = []

        def run(**args: Any) -> str:
            self.ran.append(args)
            return f"sent {args['amount']!r}"

        self.tool = StructuredTool(
            name="transfer", description="Send money.", args_schema=TRANSFER, func=run
        )


def test_a_numeric_string_is_coerced_so_the_policy_asks_instead_of_denying(tmp_path) -> None:
    bank, db = Bank(), tmp_path / "h.db"
    graph = agent(db, [bank.tool], POLICY, turn(call("transfer", to="bob", amount="5000")))
    paused = graph.invoke({"messages": [("user", "pay bob")]}, config(), context=CTX)
    (request,) = paused["__interrupt__"]
    assert request.value["action_requests"][0]["args"] == {"to": "bob", "amount": 5000}
    (record,) = paused["calls"].values()
    assert (record.decision, record.rule_id) == ("ask", "big")
    assert bank.ran == []
    graph.invoke(Command(resume=approve()), config(), context=CTX)
    assert bank.ran == [{"to": "bob", "amount": 5000}]  # what was approved is what ran


def test_a_value_that_does_not_fit_is_a_bad_request_naming_the_field(tmp_path: Path) -> None:
    bank = Bank()
    graph = agent(tmp_path / "h.db", [bank.tool], POLICY, turn(call("transfer", amount="12x")))
    result = graph.invoke({"messages": [("user", "pay")]}, config(), context=CTX)
    (message,) = [m for m in result["messages"] if isinstance(m, ToolMessage)]
    assert message.status == "error"
    assert (
        "invalid arguments for 'transfer': amount: '12x' is not of type 'integer'; "
        "(arguments): 'to' is a required property"
    ) in message.text
    (record,) = result["calls"].values()
    assert record.error is not None and record.error.kind == "bad_request"
    assert record.decision is None and bank.ran == []


def test_an_edit_is_coerced_and_refused_by_the_json_schema_too(tmp_path: Path) -> None:
    bank = Bank()
    graph = agent(
        tmp_path / "h.db", [bank.tool], POLICY, turn(call("transfer", to="b", amount=5000))
    )
    graph.invoke({"messages": [("user", "pay")]}, config(), context=CTX)
    refused = edit("transfer", {"to": "b", "amount": "lots"})
    with pytest.raises(ResumeError, match=r"amount: 'lots' is not of type 'integer'"):
        graph.invoke(Command(resume=refused), config(), context=CTX)
    assert bank.ran == []
    result = graph.invoke(
        Command(resume=edit("transfer", {"to": "b", "amount": "900"})), config(), context=CTX
    )
    assert bank.ran == [{"to": "b", "amount": 900}]
    (record,) = result["calls"].values()
    assert (record.rule_id, record.args) == ("small", {"to": "b", "amount": 900})
