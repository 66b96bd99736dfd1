"""How a canonical record becomes token ids for a given model: the model's chat template when it
has one (and the run allows it), else plain text; optional few-shot examples.

Context and continuation are always tokenized separately, so the response or an option never
merges with the prompt's last token, and the loss mask is exact.
"""

from __future__ import annotations

from typing import Sequence

from damoc.data.records import Record


class PromptFormat:
    def __init__(self, tokenizer, *, use_chat_template: bool = True, few_shot: Sequence[Record] = ()):
        self.tokenizer = tokenizer
        self.chat = bool(use_chat_template and getattr(tokenizer, "chat_template", None))
        self.few_shot = list(few_shot)

    # ------------------------------------------------------------------ plain text
    def _plain_prompt(self, record: Record) -> str:
        shots = "".join(f"{r['prompt']} {r['response'].strip()}\n\n" for r in self.few_shot)
        return shots + record["prompt"]

    # ------------------------------------------------------------------ chat template
    def _messages(self, record: Record) -> list[dict]:
        messages = []
        if record["meta"].get("system"):
            messages.append({"role": "system", "content": record["meta"]["system"]})
        for shot in self.few_shot:
            messages += [{"role": "user", "content": shot["prompt"]}, {"role": "assistant", "content": shot["response"]}]
        messages += list(record["meta"].get("history", []))
        messages.append({"role": "user", "content": record["prompt"]})
        return messages

    def _chat_prompt(self, record: Record) -> str:
        return self.tokenizer.apply_chat_template(self._messages(record), tokenize=False, add_generation_prompt=True)

    # ------------------------------------------------------------------ ids
    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def context_ids(self, record: Record) -> list[int]:
        if self.chat:
            return self._ids(self._chat_prompt(record))
        bos = [self.tokenizer.bos_token_id] if self.tokenizer.bos_token_id is not None else []
        return bos + self._ids(self._plain_prompt(record))

    def continuation_ids(self, record: Record, text: str, *, final: bool) -> list[int]:
        """Ids of `text` as the answer to `record`. `final` adds what ends a turn (EOS, or the chat
        template's end-of-turn text), which training and the response loss include and option
        scoring does not."""
        if not self.chat:
            eos = [self.tokenizer.eos_token_id] if final and self.tokenizer.eos_token_id is not None else []
            return self._ids(" " + text.strip()) + eos
        if not final:
            return self._ids(text.strip())
        prompt = self._chat_prompt(record)
        full = self.tokenizer.apply_chat_template(
            self._messages(record) + [{"role": "assistant", "content": text.strip()}], tokenize=False)
        if not full.startswith(prompt):  # a template that rewrites earlier turns: fall back to EOS
            return self._ids(text.strip()) + ([self.tokenizer.eos_token_id] if self.tokenizer.eos_token_id is not None else [])
        return self._ids(full[len(prompt):])
