"""The canonical record every dataset adapter produces and every later stage consumes.

    {"id": str, "prompt": str, "response": str,
     "choices": list[str] | None, "label": int | None, "meta": dict}

- `prompt` is the model's input for the final turn (instruction plus any input/context);
  earlier conversation turns, when a format has them, are in `meta["history"]` as
  [{"role": "user"|"assistant", "content": str}, ...] and a system prompt in `meta["system"]`.
- Classification rows have `choices` (the options) and `label` (index of the gold option);
  their `response` is the gold option's text. Generation rows have both None.
- `meta` is free-form and JSON-serialisable (source row number, long answers, titles, ...).
"""

from __future__ import annotations

from typing import Any, Optional, TypedDict

FIELDS = ("id", "prompt", "response", "choices", "label", "meta")


class Record(TypedDict):
    id: str
    prompt: str
    response: str
    choices: Optional[list[str]]
    label: Optional[int]
    meta: dict[str, Any]


class RowError(ValueError):
    """A row that cannot become a record; `field` names the offending input field."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field
        self.message = message


def make_record(*, id: str, prompt: Any, response: Any = None, choices: Any = None, label: Any = None,
                meta: Optional[dict] = None, fields: Optional[dict[str, str]] = None) -> Record:
    """Validate and normalise one record. `fields` maps canonical names to the input field names,
    so errors name the field as it appears in the user's file."""
    names = {"prompt": "prompt", "response": "response", "choices": "choices", "label": "label", **(fields or {})}
    prompt = _text(prompt, names["prompt"])
    if choices is not None:
        choices = _choices(choices, names["choices"])
        label = _label(label, choices, names["label"])
        gold = choices[label]
        if response is None or (isinstance(response, str) and not response.strip()):
            response = gold
    elif label is not None:
        raise RowError(names["choices"], "a label is given but no choices to resolve it against")
    response = _text(response, names["response"])
    return Record(id=str(id), prompt=prompt, response=response, choices=choices, label=label, meta=dict(meta or {}))


def _text(value: Any, field: str) -> str:
    if value is None:
        raise RowError(field, "missing")
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise RowError(field, f"expected text, got {type(value).__name__}")
    text = str(value)
    if not text.strip():
        raise RowError(field, "empty")
    return text


def _choices(value: Any, field: str) -> list[str]:
    if not isinstance(value, (list, tuple)) or len(value) < 2:
        raise RowError(field, "expected a list of at least two options")
    out = []
    for option in value:
        if not isinstance(option, (str, int, float)) or isinstance(option, bool) or not str(option).strip():
            raise RowError(field, f"option {option!r} is not non-empty text")
        out.append(str(option))
    if len(set(out)) != len(out):
        raise RowError(field, "options are not unique")
    return out


def _label(value: Any, choices: list[str], field: str) -> int:
    if value is None:
        raise RowError(field, "missing")
    if isinstance(value, bool):
        raise RowError(field, f"{value!r} is not an option index or option text")
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer()):
        index = int(value)
        if not 0 <= index < len(choices):
            raise RowError(field, f"index {index} is outside the {len(choices)} options")
        return index
    if isinstance(value, str):
        text = value.strip()
        if text in choices:
            return choices.index(text)
        lowered = [c.lower() for c in choices]
        if text.lower() in lowered and lowered.count(text.lower()) == 1:
            return lowered.index(text.lower())
        if text.isdigit() and int(text) < len(choices):
            return int(text)
        raise RowError(field, f"{value!r} is not one of the options {choices}")
    raise RowError(field, f"expected an option index or option text, got {type(value).__name__}")
