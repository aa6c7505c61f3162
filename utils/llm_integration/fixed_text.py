"""Structured replies decoded in pieces: the schema's fixed text is evaluated, its values sampled.

Under a grammar, most of a JSON reply is text the schema fixes: ``{"horizon_days":`` can only
be written one way, yet a model decoding it token by token pays one forward pass per token,
and usually more tokens than the text needs, because the grammar makes it spell the key in
fragments (``h ori z on _ d ay s``). Jump-forward decoding, as SGLang and guidance do it,
appends such text itself: its tokens are evaluated in one batch, and the model samples only
where the schema leaves a choice.

:func:`reply_plan` splits a flat object schema (required properties in order, at most one
optional property after them, no extra properties: the shape of llama.cpp's grammar for it)
into :class:`Slot` s, each the fixed text before a value (the key, and the value's own forced
start such as ``"`` or ``["``) and a grammar for the rest of that value. A value that can end
in more than one place (a number: ``0.6`` or ``0.65``) also samples the character after it, as
the whole-object grammar would let it. :func:`decode_planned` runs the plan on a
``llama_cpp.Llama``: the reply is text the whole-object grammar allows, so it parses and
validates the same way; any other schema is decoded whole (``reply_plan`` returns None).

The replies are deterministic like any greedy decoding, but not token for token those of the
whole-object grammar: the fixed text is tokenized as the tokenizer splits it, and the model
reads that instead of its own fragments. ``SamplingParams.fixed_text`` is part of the
response-cache key for that reason.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from utils.llm_integration.grammar import compile_grammar, grammar_schema

VALUE_RULE = "fixed-text-value"  # the value's own root rule, renamed when a character follows it


@dataclass(frozen=True)
class Slot:
    """One property: ``fixed`` is written before it (the key and the value's forced start),
    ``grammar_text`` constrains the rest of the value and, when ``after`` is not empty, one of
    the characters in ``after`` that follows it (so the value chooses where it ends).
    ``optional``: the property may be left out, ``,`` or ``}`` is chosen first."""

    name: str
    fixed: str
    prefix: str  # the part of ``fixed`` that belongs to the value (its grammar is primed with it)
    grammar_text: str
    after: str = ""
    optional: bool = False
    # an enum's values as JSON text: once what was sampled starts only one of them, the rest of
    # it is written, not sampled
    choices: tuple[str, ...] = ()


@dataclass(frozen=True)
class ReplyPlan:
    slots: tuple[Slot, ...]
    close: str = "}"  # written after the last value unless its slot sampled it


CHOICE_GRAMMAR = "root ::= [,}]\n"  # an optional property: "," and it follows, "}" and the reply ends


def _dump(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def _common_start(texts: Sequence[str]) -> str:
    if not texts:
        return ""
    first, last = min(texts), max(texts)
    n = 0
    while n < min(len(first), len(last)) and first[n] == last[n]:
        n += 1
    return first[:n]


def _is_numeric(node: Mapping[str, Any]) -> bool:
    return node.get("type") in ("number", "integer") or (
        "enum" in node and any(isinstance(v, (int, float)) and not isinstance(v, bool) for v in node["enum"])
    )


def forced_prefix(node: Mapping[str, Any]) -> str:
    """The text every value of ``node`` starts with (``"`` for a string, ``["`` for a list of
    strings, the common start of an enum's values)."""
    if "const" in node:
        return _dump(node["const"])
    if "enum" in node:
        return _common_start([_dump(v) for v in node["enum"]])
    members = node.get("anyOf") or node.get("oneOf")
    if members:
        return _common_start([forced_prefix(m) for m in members])
    kind = node.get("type")
    if kind == "string":
        return '"'
    if kind == "null":
        return "null"
    if kind == "array":
        items = node.get("items")
        if node.get("minItems", 0) >= 1 and isinstance(items, Mapping):
            return "[" + forced_prefix(items)
        return "["
    return ""


def ends_by_itself(node: Mapping[str, Any]) -> bool:
    """True when no complete value of ``node`` is the start of a longer one (a string ends
    at its closing quote; ``1`` may go on as ``10``), so a value is over once it parses."""
    if "const" in node:
        return True
    if "enum" in node:
        texts = [_dump(v) for v in node["enum"]]
        return not any(a != b and b.startswith(a) for a in texts for b in texts)
    members = node.get("anyOf") or node.get("oneOf")
    if members:
        return all(ends_by_itself(m) and not _is_numeric(m) for m in members)
    return node.get("type") in ("string", "array", "object", "null", "boolean")


def _value_grammar(node: Mapping[str, Any], defs: Mapping[str, Any] | None, after: str) -> str:
    sub = {**node, **({"$defs": defs} if defs else {})}
    text = compile_grammar(sub)._grammar
    if not after:
        return text
    chars = "".join("\\" + c if c in "]\\^-" else c for c in after)
    renamed = "\n".join(
        VALUE_RULE + line[len("root") :] if line.startswith("root ::=") else line
        for line in text.splitlines()
    )
    return f"{renamed}\nroot ::= {VALUE_RULE} [{chars}]\n"


def reply_plan(schema_json: Mapping[str, Any]) -> ReplyPlan | None:
    """The pieces a reply to ``schema_json`` is decoded in, or None when the schema is not a
    flat object of required properties (with at most one optional property after them)."""
    schema = grammar_schema(schema_json)
    props = schema.get("properties")
    if schema.get("type") != "object" or not isinstance(props, Mapping) or not props:
        return None
    if schema.get("additionalProperties") not in (None, False):
        return None
    required_names = set(schema.get("required", []))
    required = [k for k in props if k in required_names]
    optional = [k for k in props if k not in required_names]
    if not required or len(optional) > 1 or any(not isinstance(props[k], Mapping) for k in props):
        return None
    names = [*required, *optional]
    defs = schema.get("$defs")
    slots: list[Slot] = []
    for i, name in enumerate(names):
        node = props[name]
        if "$ref" in node:
            return None
        prefix = forced_prefix(node)
        is_last_required = i == len(required) - 1
        if ends_by_itself(node):
            after = ""
        elif i == len(names) - 1:
            after = "}"
        elif is_last_required and optional:
            after = ",}"
        else:
            after = ","
        lead = ("{" if i == 0 else ",") + _dump(name) + ":"
        slots.append(
            Slot(
                name=name,
                fixed=lead + prefix,
                prefix=prefix,
                grammar_text=_value_grammar(node, defs, after),
                after=after,
                optional=name in optional,
                choices=tuple(_dump(v) for v in node["enum"]) if "enum" in node and not after else (),
            )
        )
    return ReplyPlan(tuple(slots))


def plan_fits(plan: ReplyPlan, llama: Any) -> bool:
    """Whether ``llama``'s vocabulary can spell every fixed text and forced prefix of ``plan``
    on its own (see ``fragment_tokens``); when not, replies are decoded whole."""
    texts = {plan.close}
    for slot in plan.slots:
        texts.update({slot.fixed, slot.fixed[1:], slot.prefix})
    return all(llama.fragment_tokens(t) is not None for t in texts if t)


def value_complete(text: str, after: str) -> bool:
    """Whether ``text`` (a value, with the character after it when ``after`` is set) is done."""
    if after:
        if not text or text[-1] not in after:
            return False
        text = text[:-1]
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


@dataclass
class Decoded:
    """What :func:`decode_planned` produced: the reply text, its tokens (fixed and sampled, in
    order; the last ones are not evaluated yet), and the counts."""

    text: str = ""
    tokens: list[int] = field(default_factory=list)
    sampled: int = 0
    fixed_tokens: int = 0
    reused_prompt_tokens: int = 0  # prompt tokens the KV cache (or a saved state) already held
    finish_reason: str = "stop"  # "length": max_tokens reached; "halted": a stopping criterion
    first_token_s: float = 0.0


class _Decoder:
    def __init__(
        self,
        llama: Any,
        prompt_tokens: Sequence[int],
        grammar_for: Callable[[str], Any],
        sample_args: Mapping[str, Any],
        max_tokens: int,
        on_text: Callable[[str], None] | None,
        stopping_criteria: Any,
    ) -> None:
        self.llama = llama
        self.context = list(prompt_tokens)
        self.grammar_for = grammar_for
        self.sample_args = dict(sample_args)
        self.max_tokens = max_tokens
        self.on_text = on_text
        self.stopping_criteria = stopping_criteria
        self.out = Decoded()
        self.started = time.monotonic()
        self.n_ctx = int(llama.n_ctx())

    def write(self, text: str, tokens: list[int], fixed: bool) -> None:
        out = self.out
        out.text += text
        out.tokens.extend(tokens)
        self.context.extend(tokens)
        if fixed:
            out.fixed_tokens += len(tokens)
        if self.on_text and text:
            self.on_text(text)

    def write_fixed(self, text: str) -> None:
        tokens = self.llama.fragment_tokens(text)
        if tokens is None:  # plan_fits checked every fixed text of the plan
            raise ValueError(f"no tokens spell {text!r} on their own")
        self.write(text, tokens, True)

    def sample(
        self, grammar_text: str, prefix: str = "", after: str = "", choices: tuple[str, ...] = ()
    ) -> str:
        """Sample one value after the context; returns its text (``prefix`` included)."""
        from llama_cpp import llama_cpp as lib

        llama, out = self.llama, self.out
        if len(self.context) >= self.n_ctx:  # the fixed text filled the context
            out.finish_reason = "length"
            return prefix
        llama.prime_sampler(history=out.tokens[-llama.last_n_tokens_size :], grammar_text=prefix)
        pending = b""  # a UTF-8 character split over tokens
        text = prefix
        gen = llama.generate(
            self.context,
            grammar=self.grammar_for(grammar_text),
            stopping_criteria=self.stopping_criteria,
            **self.sample_args,
        )
        try:
            for token in gen:
                if lib.llama_vocab_is_eog(llama._model.vocab, token):
                    return text  # the grammar allows nothing more
                if not out.first_token_s:
                    out.first_token_s = time.monotonic() - self.started
                out.sampled += 1
                pending += llama.detokenize([token], prev_tokens=self.context)
                try:
                    shown, pending = pending.decode("utf-8"), b""
                except UnicodeDecodeError:
                    shown = ""
                self.write(shown, [token], False)
                text += shown
                if value_complete(text, after):
                    return text
                left = [c for c in choices if c.startswith(text)]
                if len(left) == 1 and shown and (rest := self.llama.fragment_tokens(left[0][len(text) :])):
                    self.write(left[0][len(text) :], rest, True)
                    return left[0]
                if out.sampled >= self.max_tokens or len(self.context) >= self.n_ctx:
                    out.finish_reason = "length"
                    return text
            out.finish_reason = "halted"
            return text
        finally:
            gen.close()

    def run(self, plan: ReplyPlan) -> Decoded:
        out = self.out
        pending_choice = ""  # "," or "}": sampled at the end of the previous value
        for slot in plan.slots:
            fixed = slot.fixed
            if slot.optional:
                choice = pending_choice or self.sample(CHOICE_GRAMMAR)
                if out.finish_reason != "stop" or choice != ",":
                    return out
                fixed = fixed[1:]  # its "," is written
            elif pending_choice:
                fixed = fixed[1:]
            self.write_fixed(fixed)
            value = self.sample(slot.grammar_text, slot.prefix, slot.after, slot.choices)
            if out.finish_reason != "stop":
                return out
            pending_choice = value[-1] if slot.after else ""
        if pending_choice != "}":
            self.write_fixed(plan.close)
        return out


def decode_planned(
    llama: Any,
    prompt_tokens: Sequence[int],
    plan: ReplyPlan,
    grammar_for: Callable[[str], Any],
    sample_args: Mapping[str, Any],
    *,
    max_tokens: int,
    on_text: Callable[[str], None] | None = None,
    stopping_criteria: Any = None,
) -> Decoded:
    """Decode a reply to ``prompt_tokens`` slot by slot on ``llama`` (our ``llama_class``).

    Fixed text is tokenized and handed to ``Llama.generate`` with everything before it, which
    evaluates what the KV cache lacks in one batch (the value token sampled last, then the
    fixed text) and samples the next value under ``grammar_for(grammar_text)``, primed with the
    value's forced prefix and with the reply so far as the repeat penalty's history. A value
    stops being sampled as soon as it is complete, so its last token is evaluated with the
    fixed text after it. ``max_tokens`` bounds the sampled tokens; ``stopping_criteria`` stop
    early (the caller checks why). Like ``create_completion``, a RAM state cache is looked up
    first; it is given the state the KV cache held when the prompt is about to overwrite it.
    The KV cache is left holding the prompt and the reply but its last sampled token.
    """
    from llama_cpp import Llama

    cache = llama.cache
    if cache:
        current = llama._input_ids.tolist()
        held = Llama.longest_token_prefix(current, prompt_tokens)
        try:
            item = cache[list(prompt_tokens)]
            better = Llama.longest_token_prefix(item.input_ids.tolist(), prompt_tokens) > held
        except KeyError:
            item, better = None, False
        # what the KV cache holds is kept just before it is overwritten (not after every call,
        # as create_completion does: a desk's prompts mostly extend the one before)
        if (
            current
            and (better or held < len(current))
            and tuple(current) not in getattr(cache, "cache_state", {})
        ):
            cache[current] = llama.save_state()
        if better:
            llama.load_state(item)
    decoder = _Decoder(llama, prompt_tokens, grammar_for, sample_args, max_tokens, on_text, stopping_criteria)
    decoder.out.reused_prompt_tokens = min(
        Llama.longest_token_prefix(llama._input_ids.tolist(), prompt_tokens), max(0, len(prompt_tokens) - 1)
    )
    return decoder.run(plan)
