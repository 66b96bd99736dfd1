"""Prompt formatting (plain and chat template), loss masks and packing."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from damoc.trials.finetune import IGNORE, build_examples, pack_examples
from damoc.trials.prompts import PromptFormat

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")

RECORD = {"id": "1", "prompt": "Term: liver\nAnswer:", "response": "body", "choices": None, "label": None,
          "meta": {"system": "Be brief.", "history": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}}
SHOT = {"id": "0", "prompt": "Term: aspirin\nAnswer:", "response": "artifact", "choices": None, "label": None, "meta": {}}


@pytest.fixture
def tokenizer(micro_zoo):
    return AutoTokenizer.from_pretrained(micro_zoo / "micro-qwen2-tiny-domain")


def decode(tokenizer, ids):
    return tokenizer.decode(ids)


def test_plain_format_with_few_shot(tokenizer):
    fmt = PromptFormat(tokenizer, few_shot=[SHOT])
    assert not fmt.chat  # the zoo's tokenizers have no chat template
    ctx = fmt.context_ids(RECORD)
    assert ctx[0] == tokenizer.bos_token_id
    assert decode(tokenizer, ctx[1:]) == "Term: aspirin\nAnswer: artifact\n\nTerm: liver\nAnswer:"
    assert decode(tokenizer, fmt.continuation_ids(RECORD, "body", final=False)) == " body"
    final = fmt.continuation_ids(RECORD, "body", final=True)
    assert final[-1] == tokenizer.eos_token_id


def test_chat_template_turns_and_end_of_turn(tokenizer):
    tokenizer.chat_template = CHATML
    fmt = PromptFormat(tokenizer, few_shot=[SHOT])
    assert fmt.chat
    context = decode(tokenizer, fmt.context_ids(RECORD))
    assert context == ("<|im_start|>system\nBe brief.<|im_end|>\n"
                       "<|im_start|>user\nTerm: aspirin\nAnswer:<|im_end|>\n<|im_start|>assistant\nartifact<|im_end|>\n"
                       "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nhello<|im_end|>\n"
                       "<|im_start|>user\nTerm: liver\nAnswer:<|im_end|>\n<|im_start|>assistant\n")
    assert decode(tokenizer, fmt.continuation_ids(RECORD, "body", final=True)) == "body<|im_end|>\n"
    assert decode(tokenizer, fmt.continuation_ids(RECORD, "body", final=False)) == "body"
    # chat_template: none in the training section turns it off
    assert not PromptFormat(tokenizer, use_chat_template=False).chat


def test_loss_mask_covers_exactly_the_response(tokenizer):
    tokenizer.chat_template = CHATML
    fmt = PromptFormat(tokenizer)
    (ids, labels), = build_examples(tokenizer, [RECORD], max_seq_length=256, fmt=fmt)
    response = fmt.continuation_ids(RECORD, "body", final=True)
    masked = [i for i, label in enumerate(labels) if label == IGNORE]
    assert masked == list(range(len(ids) - len(response)))
    assert labels[-len(response):] == response


def test_packing_keeps_whole_examples_and_their_masks():
    examples = [([1, 2, 3], [IGNORE, 2, 3]), ([4, 5], [IGNORE, 5]), ([6, 7, 8, 9], [IGNORE, IGNORE, 8, 9]), ([10], [10])]
    packed = pack_examples(examples, max_seq_length=5)
    assert packed == [([1, 2, 3, 4, 5], [IGNORE, 2, 3, IGNORE, 5]), ([6, 7, 8, 9, 10], [IGNORE, IGNORE, 8, 9, 10])]
    assert sum(len(ids) for ids, _ in packed) == sum(len(ids) for ids, _ in examples)
