"""Key-token compression: raise the density of key tokens in prompts and responses (DaMoC data
level, step 2; the scoring follows LLMLingua / LongLLMLingua).

Scores come from a small causal LM (`ScorerLM`): a prompt token's score is its self-information
-log p(q_i | q_<i); a response token's is -log p(a_j | Q, a_<j), conditioned on the (original)
question, or, with `response_score="contrastive"`, LongLLMLingua's contrastive score
-log p(a_j | a_<j) - (-log p(a_j | Q, a_<j)): how much the question explains the token. Higher
scores mean more information, so those are kept first.

What is dropped are whole words, not sub-word pieces: a "unit" is a whitespace-delimited word with
its leading whitespace (`\\s*\\S+`), and a unit is kept or dropped as a whole. Dropping single BPE
pieces (as LLMLingua does) leaves fragments such as "informat" that no candidate's tokenizer has
seen in that form and that a reader (or the BERTScore gate after this stage) cannot recover; whole
words keep the text readable and its retokenization predictable.

The keep rate is met per field, also on short texts (LLMLingua leaves texts under 200 tokens alone
and misses the rate; fine-tuning rows are mostly short): the target is T = round-half-up(rate x n)
of the field's n scorer tokens, and the compressed text, re-tokenized by the scorer's tokenizer,
has T +- 1 tokens unless force-kept words alone exceed T (then the row is flagged `over_budget`).
How: `select_units` fills the budget greedily by score, skipping words that do not fit and going on
with smaller ones, and tops up a remaining gap of 2+ tokens with a token prefix of the best word
left; `compress_text` then re-tokenizes the result and, when joining words changed the count (a
first word that lost its leading space, for instance), re-selects with a corrected budget.

Never dropped: words with digits and negations, a prompt's answer cue (the default `force_keep`
classes), any literal word or phrase listed in `force_keep`, and choice texts where they occur in
a classification prompt; a classification row's response (the gold option) is left intact.

The cue is a prompt's last line when it is short ("Answer:", "Definition:", "### Response:"). It
is the most predictable text of a templated prompt, so self-information drops it first, yet it is
what the loss on the response is conditioned on, and every prompt at evaluation and inference ends
with it: a model fine-tuned on prompts without it learns to answer after the wrong text. On the
bundled lexcat task at prompt keep 0.5 it was dropped from all 600 rows of a proxy's sample.
The opt-in class "labels" keeps every line's field label ("Kind of:") too; not a default, since
on the bundled tasks the labels crowd the content out of the budget (benchmarks/README.md).
"""

from __future__ import annotations

import copy
import math
import re
from bisect import bisect_right
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, Callable, Iterable, Optional, Sequence

import numpy as np

from damoc.data.lm import ScorerLM, TokenScores, question_context

FIELDS = ("prompt", "response")
RESPONSE_SCORES = ("conditional", "contrastive")
FORCE_KEEP_CLASSES = ("digits", "negations", "cue", "labels")
DEFAULT_FORCE_KEEP = ("digits", "negations", "cue")   # the classes kept unless a config says otherwise
CUE_MAX_WORDS = 3           # a longer last line is content (a question, an instruction), not a cue
LABEL_MAX_WORDS = 3         # "Kind of:", "### Response:"; a longer text before a colon is content

_UNIT = re.compile(r"\s*\S+")
_LETTERS = re.compile(r"[^\W\d_]+(?:['\u2019][^\W\d_]+)*")
NEGATIONS = frozenset({
    "not", "no", "never", "none", "nor", "neither", "without", "cannot", "nobody", "nothing", "nowhere",
    "noone", "nope", "non",
    # n't forms written without the apostrophe (users' data often drops it)
    "dont", "doesnt", "didnt", "isnt", "arent", "wasnt", "werent", "cant", "couldnt", "shouldnt", "wouldnt",
    "wont", "hasnt", "havent", "hadnt", "aint", "mustnt", "neednt", "shant",
})


# ------------------------------------------------------------------------------------- units
@dataclass(frozen=True)
class Unit:
    """One word with its leading whitespace: text[start:end] (end includes trailing whitespace
    for the last unit, so the units partition the text); text[word_start:word_end] is the word
    without whitespace; `tokens` the indices of the scorer tokens whose span starts inside it."""

    start: int
    end: int
    word_start: int
    word_end: int
    tokens: tuple[int, ...]

    @property
    def cost(self) -> int:
        return len(self.tokens)


def split_units(text: str, offsets: Sequence[tuple[int, int]]) -> list[Unit]:
    """Partition `text` into word units and give each the tokens that start inside it.

    A token that crosses a word boundary (possible with tokenizers that merge across spaces) belongs
    to the unit it starts in; a unit left without tokens is merged into its neighbour, so every
    unit costs at least one token and dropping it saves what it costs."""
    matches = list(_UNIT.finditer(text))
    if not matches:
        return []
    starts = [m.start() for m in matches]
    starts[0] = 0                               # leading whitespace goes with the first word
    members: list[list[int]] = [[] for _ in matches]
    for i, (lo, _hi) in enumerate(offsets):
        members[max(0, bisect_right(starts, lo) - 1)].append(i)
    spans = []                                  # (start, end, word_start, word_end, tokens)
    for k, m in enumerate(matches):
        end = starts[k + 1] if k + 1 < len(matches) else len(text)
        word_start = m.start() + (len(m.group()) - len(m.group().lstrip()))
        spans.append([starts[k], end, word_start, m.end(), members[k]])
    merged: list[list] = []
    for span in spans:
        if merged and not span[4]:              # no token starts here: part of the previous token
            merged[-1][1], merged[-1][3] = span[1], span[3]
        elif merged and not merged[-1][4]:      # only possible for the first unit
            span[0], span[2], span[4] = merged[-1][0], merged[-1][2], merged[-1][4] + span[4]
            merged[-1] = span
        else:
            merged.append(span)
    return [Unit(s, e, ws, we, tuple(toks)) for s, e, ws, we, toks in merged]


def unit_scores(units: Sequence[Unit], token_scores: np.ndarray) -> np.ndarray:
    """A unit's score is the mean of its tokens' scores (a per-token density, so long words do not
    win by length). A token without a prediction (NaN: the first token when the tokenizer has no
    BOS) takes the mean of its unit's other tokens, or the text's maximum when it is alone, so the
    first word is never dropped for lack of a score."""
    token_scores = np.asarray(token_scores, dtype=np.float64)
    finite = token_scores[np.isfinite(token_scores)]
    fallback = float(finite.max()) if finite.size else 0.0
    out = np.empty(len(units), dtype=np.float64)
    for k, unit in enumerate(units):
        values = token_scores[list(unit.tokens)]
        values = values[np.isfinite(values)]
        out[k] = float(values.mean()) if values.size else fallback
    return out


def forced_units(text: str, units: Sequence[Unit], force_keep: Iterable[str] = DEFAULT_FORCE_KEEP,
                 phrases: Iterable[str] = ()) -> np.ndarray:
    """Which units must be kept: `force_keep` classes ("digits": a word containing a digit;
    "negations": not/no/never/..., n't forms; "cue": the words of the text's last line when it
    has at most CUE_MAX_WORDS, meant for prompts; "labels": each line's field label, see
    `label_spans`), every other `force_keep` entry and every one of
    `phrases` (e.g. the choices of a classification row) as a literal matched case-insensitively
    on whole words; a phrase of several words keeps every unit it touches."""
    force_keep = list(force_keep)
    digits, negations = "digits" in force_keep, "negations" in force_keep
    literals = [w for w in force_keep if w not in FORCE_KEEP_CLASSES] + list(phrases)
    keep = np.zeros(len(units), dtype=bool)
    for k, unit in enumerate(units):
        word = text[unit.word_start:unit.word_end]
        keep[k] = (digits and any(ch.isdigit() for ch in word)) or (negations and _is_negation(word))
    spans = []
    if "cue" in force_keep:
        spans += cue_spans(text)
    if "labels" in force_keep:
        spans += label_spans(text)
    for literal in literals:
        literal = literal.strip()
        if not literal:
            continue
        # \b would fail next to non-word characters at the literal's edges ("C++", "(a)").
        pattern = re.compile(r"(?<!\w)" + re.escape(literal) + r"(?!\w)", re.IGNORECASE)
        spans += [(m.start(), m.end()) for m in pattern.finditer(text)]
    if spans:
        for k, unit in enumerate(units):
            keep[k] |= any(lo < unit.word_end and hi > unit.word_start for lo, hi in spans)
    return keep


def cue_spans(text: str) -> list[tuple[int, int]]:
    """The span of `text`'s last non-empty line when it has 1..CUE_MAX_WORDS words, else none. A
    text of one line has no cue (its last line is all of it)."""
    body = text.rstrip()
    start = body.rfind("\n") + 1
    if start == 0:
        return []
    words = _UNIT.findall(body[start:])
    return [(start, len(body))] if 0 < len(words) <= CUE_MAX_WORDS else []


# A line's field label: up to LABEL_MAX_WORDS words (none holding a colon) at the start of a line,
# ending in a colon that ends the line or is followed by whitespace ("Kind of: device", but not
# "http://..." or "12:30").
_LABEL = re.compile(r"^[ \t]*((?:[^\s:]+[ \t]+){0,%d}[^\s:]+:)(?=\s|$)" % (LABEL_MAX_WORDS - 1), re.MULTILINE)


def label_spans(text: str) -> list[tuple[int, int]]:
    """The spans of the field labels that start `text`'s lines ("Term:", "Kind of:", "### Response:").
    A templated prompt's labels are its most predictable words, so self-information drops them first
    (on the bundled lexcat task at prompt keep 0.5, "Definition:" and "Question:" went from most rows),
    and what is left runs the fields together: the term and its definition read as one phrase. Every
    prompt at evaluation and inference has them."""
    return [m.span(1) for m in _LABEL.finditer(text)]


def _is_negation(word: str) -> bool:
    for piece in _LETTERS.findall(word):
        piece = piece.lower().replace("\u2019", "'")
        if piece in NEGATIONS or piece.endswith("n't"):
            return True
    return False


# ------------------------------------------------------------------------------------- selection
@dataclass
class Selection:
    """Which units to keep: `kept` (unit indices, ascending), optionally the first `prefix[1]`
    tokens of unit `prefix[0]`; `tokens` is what that costs (first kept unit at its lead cost) and
    `forced_tokens` what the force-kept units alone cost."""

    kept: list[int]
    prefix: Optional[tuple[int, int]]
    tokens: int
    forced_tokens: int


def select_units(costs: Sequence[int], scores: Sequence[float], budget: int,
                 forced: Optional[Sequence[bool]] = None,
                 lead_costs: Optional[Sequence[int]] = None) -> Selection:
    """Choose units to fill `budget` tokens, best score first.

    Force-kept units are taken first, whatever they cost. Then the others in decreasing score
    (ties: earlier first): a unit is taken while the total stays <= budget; one that does not fit
    is skipped and smaller ones are tried (a greedy knapsack by score density: unit scores are
    per-token means). If the total is still 2+ tokens short, a token prefix of the best unit left
    fills the gap, so the budget is met within one token whatever the word lengths.

    `lead_costs[k]` is what unit k costs when it opens the output, without its leading whitespace
    (" generator" is one BPE piece more or less than "generator"); the total always counts the
    first kept unit at that cost, so the budget holds for the text as it will be written."""
    n = len(costs)
    lead = list(lead_costs) if lead_costs is not None else list(costs)
    if len(scores) != n or len(lead) != n or (forced is not None and len(forced) != n):
        raise ValueError(f"select_units: {n} costs, {len(scores)} scores, {len(lead)} lead costs, "
                         f"{len(forced) if forced is not None else n} forced flags")
    forced = [bool(f) for f in forced] if forced is not None else [False] * n

    def written(summed: int, first: Optional[int]) -> int:
        return summed if first is None else summed - int(costs[first]) + int(lead[first])

    kept = [k for k in range(n) if forced[k]]
    summed = sum(int(costs[k]) for k in kept)
    first = kept[0] if kept else None
    forced_tokens = written(summed, first)
    order = sorted((k for k in range(n) if not forced[k]), key=lambda k: (-_finite(scores[k]), k))
    left = order
    while True:
        skipped = []
        for k in left:
            new_first = k if first is None or k < first else first
            if written(summed + int(costs[k]), new_first) <= budget:
                kept.append(k)
                summed += int(costs[k])
                first = new_first
            else:
                skipped.append(k)
        # Units are only added, so a skipped unit fits later only if a newly kept unit opens
        # the text at a lower lead cost than the one it displaced: one more pass in that case.
        if len(skipped) == len(left):
            break
        left = skipped
    total = written(summed, first)
    prefix = None
    gap = budget - total
    if gap > 1 or (gap == 1 and not kept):
        # A gap of one is left alone (within tolerance, and a one-token cut is mostly noise),
        # unless nothing was kept: an empty field is no training row. The units left mostly
        # cost more than the gap (it only shrank while they were skipped); take the best that does.
        bigger = [k for k in left if costs[k] > gap]
        if bigger:
            prefix = (bigger[0], gap)
            total += gap
    return Selection(sorted(kept), prefix, total, forced_tokens)


def _finite(score: float) -> float:
    return float(score) if math.isfinite(score) else -math.inf


def target_tokens(rate: float, n_tokens: int) -> int:
    """T = round-half-up(rate x n), at least 1 (never more than n)."""
    if n_tokens <= 0:
        return 0
    t = int((Decimal(str(rate)) * n_tokens).quantize(Decimal(1), rounding=ROUND_HALF_UP))
    return max(1, min(n_tokens, t))


def render(text: str, units: Sequence[Unit], offsets: Sequence[tuple[int, int]], selection: Selection) -> str:
    """The kept units' original text, in order (a prefix unit cut after its last kept token),
    without the leading whitespace of the result."""
    kept = set(selection.kept)
    if selection.prefix is None and len(kept) == len(units):
        return text
    parts = []
    for k, unit in enumerate(units):
        if k in kept:
            parts.append(text[unit.start:unit.end])
        elif selection.prefix is not None and selection.prefix[0] == k:
            last = unit.tokens[selection.prefix[1] - 1]
            parts.append(text[unit.start:max(offsets[last][1], unit.word_start + 1)])
    return "".join(parts).lstrip()


@dataclass
class Compressed:
    text: str
    tokens_in: int
    tokens_out: int
    target: int
    forced_tokens: int

    @property
    def over_budget(self) -> bool:
        """Force-kept words alone exceed the target, or the result misses it by more than one."""
        return self.forced_tokens > self.target or self.tokens_out > self.target + 1


def compress_text(text: str, scores: TokenScores, rate: float, count: Callable[[Sequence[str]], list[int]], *,
                  force_keep: Iterable[str] = DEFAULT_FORCE_KEEP, phrases: Iterable[str] = (),
                  max_rounds: int = 8) -> Compressed:
    """Compress one text to `rate` of its tokens given its per-token scores (higher = keep).

    `count` counts the tokens of texts in the scorer's tokenizer (e.g. `ScorerLM.count_tokens`).
    It prices each word without its leading space (for when it opens the result), and re-counts
    the result: joining kept words can still change the count slightly (a cut word, a merge
    across words), so when the result misses the target by more than one token the selection is
    redone with the budget corrected by the miss, and the closest result wins."""
    n = len(scores.ids)
    target = target_tokens(rate, n)
    if rate >= 1.0 or target >= n:
        return Compressed(text, n, n, n, 0)
    units = split_units(text, scores.offsets)
    costs = [u.cost for u in units]
    values = unit_scores(units, scores.nll)
    forced = forced_units(text, units, force_keep, phrases)
    lead = [c if u.word_start == u.start else n_lead
            for u, c, n_lead in zip(units, costs, count([text[u.word_start:u.end] for u in units]))]
    best: Optional[tuple[int, str, int]] = None       # (miss, text, tokens)
    budget, tried = target, set()
    forced_tokens = 0
    for _ in range(max_rounds):
        tried.add(budget)
        selection = select_units(costs, values, budget, forced, lead)
        forced_tokens = selection.forced_tokens
        out = render(text, units, scores.offsets, selection)
        got = count([out])[0]
        miss = abs(got - target)
        if best is None or (miss, got > target) < (best[0], best[2] > target):
            best = (miss, out, got)
        if miss <= 1 or (got > target and forced_tokens >= budget):
            break               # on target, or only force-kept words are left to cut
        # Correct the budget by the miss; when that budget was already tried (the count moves in
        # steps: a cut word or a lost space), walk one token at a time towards the target.
        step = 1 if got < target else -1
        budget = max(1, budget + target - got)
        while budget in tried and 1 <= budget + step <= n:
            budget += step
        if budget in tried:
            break
    assert best is not None
    return Compressed(best[1], n, best[2], target, forced_tokens)


# ------------------------------------------------------------------------------------- records
def compress_records(lm: ScorerLM, records: list[dict], *, prompt_rate: float, response_rate: float,
                     force_keep: list[str] = DEFAULT_FORCE_KEEP, response_score: str = "conditional",
                     batch_size: int = 16) -> tuple[list[dict], list[dict]]:
    """Compress the prompts and responses of canonical records to the given keep rates.

    Returns new records (deep copies; `meta["compressed_from"]` holds the original text of each
    field that changed) and one info dict per row: {"prompt": {"tokens_in", "tokens_out",
    "target"}, "response": {...}, "over_budget": bool}, counts in the scorer's tokenizer. A rate of
    1.0 leaves a field untouched; a classification row's response (its gold option) is never
    compressed, and its choice texts are force-kept in its prompt."""
    for name, rate in (("prompt_rate", prompt_rate), ("response_rate", response_rate)):
        if not 0 < rate <= 1:
            raise ValueError(f"{name} {rate} is outside (0, 1]")
    if response_score not in RESPONSE_SCORES:
        raise ValueError(f"response_score must be one of {', '.join(RESPONSE_SCORES)}, got {response_score!r}")
    if isinstance(force_keep, str):
        raise TypeError("force_keep must be a list of classes/words, not a string")
    force_keep = list(force_keep)
    response_keep = [w for w in force_keep if w != "cue"]      # a cue ends a prompt, not an answer
    for record in records:
        for name in FIELDS:
            value = record.get(name)
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"row {record.get('id')!r}: {name} is empty; key-token compression needs text in every field")

    def classification(record: dict) -> bool:
        return bool(record.get("choices")) and record.get("label") is not None

    prompt_rows = [i for i in range(len(records)) if prompt_rate < 1.0]
    response_rows = [i for i, r in enumerate(records) if response_rate < 1.0 and not classification(r)]
    prompts = [records[i]["prompt"] for i in prompt_rows]
    responses = [records[i]["response"] for i in response_rows]
    prompt_scores = lm.token_nll(prompts, None, batch_size=batch_size) if prompts else []
    response_scores = []
    if responses:
        conditioned = lm.token_nll(responses, [question_context(records[i]["prompt"]) for i in response_rows],
                                   batch_size=batch_size)
        if response_score == "contrastive":
            alone = lm.token_nll(responses, None, batch_size=batch_size)
            response_scores = [TokenScores(c.ids, c.offsets, a.nll - c.nll) for c, a in zip(conditioned, alone)]
        else:
            response_scores = conditioned
    scored = {("prompt", i): s for i, s in zip(prompt_rows, prompt_scores)}
    scored.update({("response", i): s for i, s in zip(response_rows, response_scores)})

    # Untouched fields are still counted, so every info dict has the same shape.
    untouched = [(name, i) for i in range(len(records)) for name in FIELDS if (name, i) not in scored]
    counts = dict(zip(untouched, lm.count_tokens([records[i][name] for name, i in untouched]))) if untouched else {}

    out_records, infos = [], []
    for i, record in enumerate(records):
        new = copy.deepcopy(record)
        info: dict[str, Any] = {"over_budget": False}
        changed = {}
        for name in FIELDS:
            text = record[name]
            if (name, i) in scored:
                rate = prompt_rate if name == "prompt" else response_rate
                phrases = (record.get("choices") or ()) if name == "prompt" and classification(record) else ()
                result = compress_text(text, scored[(name, i)], rate, lm.count_tokens,
                                       force_keep=force_keep if name == "prompt" else response_keep, phrases=phrases)
            else:
                n = counts[(name, i)]
                result = Compressed(text, n, n, n, 0)
            info[name] = {"tokens_in": result.tokens_in, "tokens_out": result.tokens_out, "target": result.target}
            info["over_budget"] = info["over_budget"] or result.over_budget
            if result.text != text:
                new[name] = result.text
                changed[name] = text
        if changed:
            meta = new["meta"] = dict(new.get("meta") or {})
            # A row compressed twice keeps its first original: that is the text it came from.
            meta["compressed_from"] = {**changed, **(meta.get("compressed_from") or {})}
        out_records.append(new)
        infos.append(info)
    return out_records, infos


# ------------------------------------------------------------------------------------- measuring
def measure_tokens(tokenizer, originals: list[dict], compressed: list[dict]) -> dict:
    """Token counts of each field before and after compression in `tokenizer` (any HF tokenizer,
    or a raw `tokenizers.Tokenizer`), and the realised keep ratio. The rate is set in the scorer's
    tokenizer; each candidate reads the data with its own, where the ratio differs a little.

    Returns {"prompt": {"tokens_in", "tokens_out", "keep_ratio", "mean_row_ratio", "rows"},
    "response": {...}, "total": {...}}; `keep_ratio` is tokens_out / tokens_in over all rows,
    `mean_row_ratio` the mean of per-row ratios (short rows weigh as much as long ones)."""
    if len(originals) != len(compressed):
        raise ValueError(f"measure_tokens: {len(originals)} original rows but {len(compressed)} compressed")
    for a, b in zip(originals, compressed):
        if a.get("id") != b.get("id"):
            raise ValueError(f"measure_tokens: rows are not aligned (id {a.get('id')!r} vs {b.get('id')!r})")
    out: dict[str, dict] = {}
    totals_in = np.zeros(len(originals), dtype=np.int64)
    totals_out = np.zeros(len(originals), dtype=np.int64)
    for name in FIELDS:
        before = np.array(_count(tokenizer, [r[name] for r in originals]), dtype=np.int64)
        after = np.array(_count(tokenizer, [r[name] for r in compressed]), dtype=np.int64)
        out[name] = _ratios(before, after)
        totals_in += before
        totals_out += after
    out["total"] = _ratios(totals_in, totals_out)
    name = getattr(tokenizer, "name_or_path", None)
    if name:
        out["tokenizer"] = str(name)
    return out


def _count(tokenizer, texts: list[str]) -> list[int]:
    if not texts:
        return []
    if hasattr(tokenizer, "encode_batch"):              # a raw tokenizers.Tokenizer
        return [len(e.ids) for e in tokenizer.encode_batch(texts, add_special_tokens=False)]
    return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def _ratios(before: np.ndarray, after: np.ndarray) -> dict:
    tokens_in, tokens_out = int(before.sum()), int(after.sum())
    rows = before > 0
    return {"rows": len(before), "tokens_in": tokens_in, "tokens_out": tokens_out,
            "keep_ratio": tokens_out / tokens_in if tokens_in else float("nan"),
            "mean_row_ratio": float((after[rows] / before[rows]).mean()) if rows.any() else float("nan")}
