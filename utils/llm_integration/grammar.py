"""Structured output: a JSON schema becomes a llama.cpp grammar, a reply becomes a checked object.

A pydantic model's JSON schema is rewritten so that its bounds can be enforced while decoding
(:func:`grammar_schema`) and compiled into a ``LlamaGrammar`` (:func:`json_schema_grammar`), so
the reply is always JSON of that shape. :func:`parse_reply` parses and validates it against the
original schema; a reply cut at ``max_tokens`` raises :class:`OutputTruncatedError`, an invalid
one :class:`InvalidOutputError`: nothing is ever parsed into a default.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ValidationError

from utils.llm_integration.errors import InvalidOutputError, OutputTruncatedError

# llama-cpp-python's port of the schema converter lets raw control characters into JSON strings
# (llama.cpp's own converter excludes them); strict JSON parsers, AutoGen's included, reject them
LOOSE_CHAR_RULE = 'char ::= [^"\\\\] |'
STRICT_CHAR_RULE = 'char ::= [^"\\\\\\x7F\\x00-\\x1F] |'
# replies are compact JSON (no space after ':' or ','): fewer tokens to generate, and the very
# text pydantic's model_dump_json writes, so a reply quoted back into a later prompt is the
# same tokens as it was generated (and is reused from the KV cache)
LOOSE_SPACE_RULE = 'space ::= " "?'
COMPACT_SPACE_RULE = 'space ::= ""'


def grammar_schema(schema: Mapping[str, Any], steps: int = 20) -> dict[str, Any]:
    """A copy of a JSON schema whose bounds llama.cpp's grammar can enforce while decoding.

    The grammar converter ignores ``minimum``/``maximum``, so bounds are rewritten into shapes
    it does enforce: a ``number`` bounded within a span of at most 1 becomes an ``enum`` of
    ``steps + 1`` evenly spaced values; a wider non-negative bounded number becomes a decimal
    string with as many integer digits as the bound (no ``inf``, no exponent); a bounded
    ``integer`` with a span of at most 100 becomes an ``enum``, a wider non-negative one a digit
    string. pydantic turns the strings back into numbers, and the original schema, not this
    one, validates the parsed reply.
    """

    def integer_part(hi: float) -> str:
        """Integer digits up to ``hi``: a bound like 10,000,000 is its 7-digit numbers or
        itself, so the grammar cannot write 20,220,101 (8 digits, over the bound)."""
        top = str(int(hi))
        if len(top) > 1 and top == "1" + "0" * (len(top) - 1):
            return f"([0-9]{{1,{len(top) - 1}}}|{top})"
        return f"[0-9]{{1,{len(top)}}}"

    def bound(node: Mapping[str, Any], *keys: str) -> float | None:
        values = [node[k] for k in keys if node.get(k) is not None]
        return values[0] if values else None

    def walk(node: Any) -> Any:
        if isinstance(node, list):
            return [walk(n) for n in node]
        if not isinstance(node, Mapping):
            return node
        out = {k: walk(v) for k, v in node.items()}
        kind = out.get("type")
        lo = bound(out, "minimum", "exclusiveMinimum")
        hi = bound(out, "maximum", "exclusiveMaximum")
        if kind == "number" and lo is not None and hi is not None and 0 < hi - lo <= 1:
            step = (hi - lo) / steps
            return {"enum": sorted({round(lo + i * step, 4) for i in range(steps + 1)})}
        if kind == "number" and lo is not None and lo >= 0 and hi is not None:
            return {"type": "string", "pattern": f"^{integer_part(hi)}([.][0-9]{{1,4}})?$"}
        if kind == "integer" and lo is not None and hi is not None and hi - lo <= 100:
            return {"enum": list(range(int(lo), int(hi) + 1))}
        if kind == "integer" and lo is not None and lo >= 0:
            return {"type": "string", "pattern": f"^{integer_part(hi) if hi is not None else '[0-9]{1,9}'}$"}
        return out

    return walk(dict(schema))


def json_schema_grammar(schema_json: Mapping[str, Any]) -> Any:
    """The ``LlamaGrammar`` that constrains a reply to ``schema_json`` (bounded by
    :func:`grammar_schema`); not yet checked by llama.cpp (``LocalLLM.grammar`` does that once)."""
    return compile_grammar(grammar_schema(schema_json))


def compile_grammar(bounded_schema: Mapping[str, Any]) -> Any:
    """The ``LlamaGrammar`` of a schema already rewritten by :func:`grammar_schema`: strict
    JSON strings, compact JSON."""
    from llama_cpp import LlamaGrammar

    grammar = LlamaGrammar.from_json_schema(json.dumps(bounded_schema), verbose=False)
    grammar._grammar = grammar._grammar.replace(LOOSE_CHAR_RULE, STRICT_CHAR_RULE).replace(
        LOOSE_SPACE_RULE, COMPACT_SPACE_RULE
    )
    return grammar


def parse_json_reply(text: str, *, finish_reason: str, model: str) -> Any:
    """``text`` as JSON; a reply cut by ``max_tokens`` (``finish_reason == "length"``) is
    :class:`OutputTruncatedError`, anything else that does not parse :class:`InvalidOutputError`."""
    try:
        return json.loads(text, strict=False)  # control characters inside strings are tolerated
    except json.JSONDecodeError as exc:
        if finish_reason == "length":
            raise OutputTruncatedError(f"{model} reply was cut at max_tokens: {exc}") from None
        raise InvalidOutputError(f"{model} reply is not JSON: {exc}") from None


def parse_reply(text: str, schema: type[BaseModel], *, finish_reason: str, model: str) -> BaseModel:
    """``text`` parsed and validated as ``schema`` (errors as :func:`parse_json_reply`, and
    :class:`InvalidOutputError` naming the first field that fails validation)."""
    data = parse_json_reply(text, finish_reason=finish_reason, model=model)
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or schema.__name__
        raise InvalidOutputError(
            f"{model} reply failed {schema.__name__} validation at {where}: {first['msg']}"
        ) from None
