"""Dataset adapters: one small converter per row layout users bring, one registry.

Each converter turns one raw row into a canonical record (damoc.data.records) or raises RowError
naming the input field. Layouts follow the conventions of the tools users know: alpaca and
sharegpt as in LLaMA-Factory's dataset_info, OpenAI `messages`, TRL's prompt/completion, and the
published PubMedQA and BillSum releases (Hugging Face and original JSON field names).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Callable, Optional

from damoc.config.schema import ColumnMapping
from damoc.data.records import Record, RowError, make_record

Converter = Callable[[dict, "RowContext"], Record]


@dataclass(frozen=True)
class RowContext:
    default_id: str                       # used when the row carries no id of its own
    columns: Optional[ColumnMapping] = None


@dataclass(frozen=True)
class Format:
    name: str
    description: str
    convert: Converter
    detect: Callable[[set[str]], bool]    # does a row with these keys look like this format?


FORMATS: dict[str, Format] = {}


def register(name: str, description: str, detect: Callable[[set[str]], bool]):
    def wrap(fn: Converter) -> Converter:
        FORMATS[name] = Format(name, description, fn, detect)
        return fn
    return wrap


def detect_format(keys: set[str]) -> Optional[str]:
    """The first registered format whose signature the keys match (registration order = priority)."""
    lowered = {k.lower() for k in keys}
    for fmt in FORMATS.values():
        if fmt.detect(lowered):
            return fmt.name
    return None


# ---------------------------------------------------------------------------------- helpers
def _get(row: dict, *names: str) -> Any:
    """First present field among `names`, matched case-insensitively (PubMedQA's original release
    uses QUESTION/CONTEXTS, the Hugging Face one question/context)."""
    for name in names:
        if name in row:
            return row[name]
    lowered = {k.lower(): k for k in row}
    for name in names:
        if name.lower() in lowered:
            return row[lowered[name.lower()]]
    return None


def _row_id(row: dict, ctx: RowContext, *names: str) -> str:
    value = _get(row, *names, "id", "_key")
    return str(value) if value not in (None, "") else ctx.default_id


def _content(value: Any, field: str) -> str:
    """Message content: a string, or OpenAI's list of parts ({"type": "text", "text": ...})."""
    if isinstance(value, list):
        texts = [p.get("text", "") for p in value if isinstance(p, dict) and p.get("type", "text") == "text"]
        value = "\n".join(t for t in texts if t)
    if not isinstance(value, str) or not value.strip():
        raise RowError(field, "missing or empty message content")
    return value


def _conversation(turns: list[tuple[str, str]], field: str, system: Optional[str]) -> tuple[str, str, dict]:
    """(role, content) turns -> (prompt, response, meta): the last assistant turn is the response,
    the user turn before it the prompt, everything earlier the history."""
    meta: dict[str, Any] = {}
    if turns and turns[0][0] == "system":
        system = system or turns[0][1]
        turns = turns[1:]
    if system:
        meta["system"] = system
    if len(turns) < 2:
        raise RowError(field, "needs at least one user turn followed by an assistant turn")
    for i, (role, _) in enumerate(turns):
        expected = "user" if i % 2 == 0 else "assistant"
        if role != expected:
            raise RowError(f"{field}[{i}]", f"expected a {expected} turn here, got '{role}' (turns must alternate user/assistant)")
    if turns[-1][0] != "assistant":
        raise RowError(field, "the last turn must be the assistant's response")
    history = [{"role": role, "content": content} for role, content in turns[:-2]]
    if history:
        meta["history"] = history
    return turns[-2][1], turns[-1][1], meta


# ---------------------------------------------------------------------------------- formats
# Registration order is detection priority: the most specific signatures first.

@register("canonical", "damoc's own records: id, prompt, response, choices, label, meta",
          lambda k: {"prompt", "response"} <= k)
def _canonical(row: dict, ctx: RowContext) -> Record:
    meta = row.get("meta") or {}
    if not isinstance(meta, dict):
        raise RowError("meta", "expected an object")
    return make_record(id=_row_id(row, ctx), prompt=row.get("prompt"), response=row.get("response"),
                       choices=row.get("choices"), label=row.get("label"), meta=meta)


_SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                   "model": "assistant", "bot": "assistant", "system": "system"}


@register("sharegpt", "ShareGPT: conversations = [{from: human|gpt|system, value}], optional system",
          lambda k: "conversations" in k)
def _sharegpt(row: dict, ctx: RowContext) -> Record:
    turns_in = _get(row, "conversations")
    if not isinstance(turns_in, list) or not turns_in:
        raise RowError("conversations", "expected a non-empty list of turns")
    turns = []
    for i, turn in enumerate(turns_in):
        if not isinstance(turn, dict):
            raise RowError(f"conversations[{i}]", "expected an object with 'from' and 'value'")
        speaker = turn.get("from", turn.get("role"))
        role = _SHAREGPT_ROLES.get(str(speaker).lower()) if speaker is not None else None
        if role is None:
            raise RowError(f"conversations[{i}].from", f"unknown speaker {speaker!r} (expected human, gpt or system)")
        turns.append((role, _content(turn.get("value", turn.get("content")), f"conversations[{i}].value")))
    system = _get(row, "system")
    prompt, response, meta = _conversation(turns, "conversations", system if isinstance(system, str) else None)
    return make_record(id=_row_id(row, ctx), prompt=prompt, response=response, meta=meta)


@register("messages", "OpenAI chat: messages = [{role: system|user|assistant, content}]",
          lambda k: "messages" in k)
def _messages(row: dict, ctx: RowContext) -> Record:
    messages = _get(row, "messages")
    if not isinstance(messages, list) or not messages:
        raise RowError("messages", "expected a non-empty list of messages")
    turns = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise RowError(f"messages[{i}]", "expected an object with 'role' and 'content'")
        role = message.get("role")
        if role not in ("system", "user", "assistant"):
            raise RowError(f"messages[{i}].role", f"unsupported role {role!r} (expected system, user or assistant)")
        turns.append((role, _content(message.get("content"), f"messages[{i}].content")))
    prompt, response, meta = _conversation(turns, "messages", None)
    return make_record(id=_row_id(row, ctx), prompt=prompt, response=response, meta=meta)


@register("alpaca", "Alpaca: instruction, input (optional), output; optional system and history",
          lambda k: {"instruction", "output"} <= k)
def _alpaca(row: dict, ctx: RowContext) -> Record:
    instruction = _get(row, "instruction")
    extra = _get(row, "input")
    if not isinstance(instruction, str) or not instruction.strip():
        raise RowError("instruction", "missing or empty")
    if extra is not None and not isinstance(extra, str):
        raise RowError("input", f"expected text, got {type(extra).__name__}")
    prompt = f"{instruction}\n{extra}" if extra and extra.strip() else instruction
    meta: dict[str, Any] = {}
    system = _get(row, "system")
    if isinstance(system, str) and system.strip():
        meta["system"] = system
    history = _get(row, "history")
    if history:
        if not isinstance(history, list) or not all(isinstance(h, (list, tuple)) and len(h) == 2 for h in history):
            raise RowError("history", "expected a list of [instruction, response] pairs")
        meta["history"] = [m for q, a in history for m in ({"role": "user", "content": str(q)}, {"role": "assistant", "content": str(a)})]
    return make_record(id=_row_id(row, ctx), prompt=prompt, response=_get(row, "output"), meta=meta,
                       fields={"prompt": "instruction", "response": "output"})


_DECISIONS = ["yes", "no", "maybe"]


@register("pubmedqa", "PubMedQA: question, context(s), long_answer, final_decision (yes/no/maybe)",
          lambda k: "final_decision" in k and "question" in k)
def _pubmedqa(row: dict, ctx: RowContext) -> Record:
    question = _get(row, "question")
    if not isinstance(question, str) or not question.strip():
        raise RowError("question", "missing or empty")
    context = _get(row, "context", "contexts")
    if isinstance(context, dict):  # Hugging Face: context = {contexts: [...], labels: [...], meshes: [...]}
        context = context.get("contexts")
    if isinstance(context, str):
        context = [context]
    if not isinstance(context, list) or not context or not all(isinstance(c, str) for c in context):
        raise RowError("context", "expected a list of context passages")
    decision = _get(row, "final_decision")
    if not isinstance(decision, str) or decision.strip().lower() not in _DECISIONS:
        raise RowError("final_decision", f"expected yes, no or maybe, got {decision!r}")
    prompt = "Context: " + "\n".join(c.strip() for c in context) + f"\nQuestion: {question.strip()}\nAnswer yes, no or maybe."
    meta: dict[str, Any] = {}
    long_answer = _get(row, "long_answer")
    if isinstance(long_answer, str):
        meta["long_answer"] = long_answer
    return make_record(id=_row_id(row, ctx, "pubid", "pmid"), prompt=prompt, response=None,
                       choices=list(_DECISIONS), label=decision.strip().lower(), meta=meta,
                       fields={"prompt": "question", "label": "final_decision"})


@register("billsum", "BillSum: text -> summary, optional title",
          lambda k: {"text", "summary"} <= k)
def _billsum(row: dict, ctx: RowContext) -> Record:
    text = _get(row, "text")
    if not isinstance(text, str) or not text.strip():
        raise RowError("text", "missing or empty")
    meta: dict[str, Any] = {}
    title = _get(row, "title")
    if isinstance(title, str) and title.strip():
        meta["title"] = title
    return make_record(id=_row_id(row, ctx, "bill_id"), prompt=f"Summarize the following bill.\n\n{text.strip()}",
                       response=_get(row, "summary"), meta=meta, fields={"response": "summary"})


@register("prompt_completion", "prompt -> completion (TRL's prompt-completion layout)",
          lambda k: {"prompt", "completion"} <= k)
def _prompt_completion(row: dict, ctx: RowContext) -> Record:
    return make_record(id=_row_id(row, ctx), prompt=_get(row, "prompt"), response=_get(row, "completion"),
                       fields={"response": "completion"})


_PLACEHOLDER = re.compile(r"\{([^{}]+)\}")


def _lookup(row: dict, path: str, field: str) -> Any:
    value: Any = row
    for part in path.split("."):
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            raise RowError(path, f"column '{path}' (mapped to {field}) is missing")
    return value


def _mapped(row: dict, spec: Optional[str], field: str) -> Any:
    if spec is None:
        return None
    if "{" in spec:
        def fill(match: re.Match) -> str:
            value = _lookup(row, match.group(1), field)
            return "\n".join(map(str, value)) if isinstance(value, list) else ("" if value is None else str(value))
        return _PLACEHOLDER.sub(fill, spec)
    return _lookup(row, spec, field)


def _parse_choices(value: Any, column: str) -> list:
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                value = json.loads(text)
            except json.JSONDecodeError as e:
                raise RowError(column, f"not a JSON list: {e.msg}") from e
        else:
            value = [part.strip() for part in text.split("|")]
    return value


@register("columns", "any layout, through the `data.columns` mapping", lambda k: False)
def _columns(row: dict, ctx: RowContext) -> Record:
    mapping = ctx.columns
    if mapping is None:
        raise RowError("columns", "format 'columns' needs data.columns")
    choices: Any = None
    if isinstance(mapping.choices, list):
        choices = mapping.choices
    elif mapping.choices:
        choices = _parse_choices(_mapped(row, mapping.choices, "choices"), mapping.choices)
    label = _mapped(row, mapping.label, "label") if mapping.label else None
    row_id = _mapped(row, mapping.id, "id") if mapping.id else None
    meta: dict[str, Any] = {}
    if mapping.system:
        system = _mapped(row, mapping.system, "system")
        if system:
            meta["system"] = str(system)
    fields = {k: v for k, v in {"prompt": mapping.prompt, "response": mapping.response,
                                 "choices": mapping.choices if isinstance(mapping.choices, str) else "choices",
                                 "label": mapping.label}.items() if v}
    if mapping.prompt is None:
        raise RowError("columns.prompt", "the mapping has no prompt column")
    return make_record(id=row_id if row_id not in (None, "") else ctx.default_id,
                       prompt=_mapped(row, mapping.prompt, "prompt"),
                       response=_mapped(row, mapping.response, "response"),
                       choices=choices, label=label, meta=meta, fields=fields)


def convert(format_name: str) -> Converter:
    return FORMATS[format_name].convert
