"""Chat-template control tokens out of anything a person can put into a prompt or a training target.

A tokenizer turns `<|im_end|>` typed in a correction into the real
end-of-turn id, so a correction holding `<|im_end|>\\n<|im_start|>system`
would teach the adapter to open a fake system turn. Three lines of defence:

- `check` refuses a correction that holds a control token, naming it (guard
  calls it, so Slack, Discord and the CLI all refuse alike);
- `defuse` makes every control token in quoted text inert (`prompts.quoted`
  uses it for questions, answers, passages and training targets);
- `assert_clean` checks a training set at token-id level with the real
  tokenizer: no special or added token id inside any message's text, and
  the only special ids of a rendered example are the chat template's own.

Which strings are control tokens, for `check` and `defuse`: the serving
preset's list (`[tokens] special` in `models/<preset>.toml`, which the tests
hold equal to its tokenizer's special and added tokens, `tokenizer_tokens`),
or every preset's when no model is configured, so no model need be loaded;
always plus generic shapes of the common chat formats (ChatML and Llama-3 `<|…|>`, Llama-2 `<s>`,
`[INST]`, `<<SYS>>`, Qwen's `<tool_call>`, Gemma's `<start_of_turn>`).
"""
from __future__ import annotations

import functools
import re
from typing import Iterable, Sequence

GENERIC_RE = re.compile(
    r"<\|[^|<>\s]{1,40}\|>"                      # <|im_start|>, <|endoftext|>, <|eot_id|>
    r"|<｜[^｜<>\s]{1,40}｜>"                     # the same with full-width bars (DeepSeek)
    r"|</?(?:s|unk|pad|mask|bos|eos|tool_call|tool_response|tools|think|start_of_turn|end_of_turn)>"
    r"|\[/?INST\]|<</?SYS>>"
)


class ControlTokenError(ValueError):
    """Training data that holds a control token; the message names the examples and tokens."""


@functools.lru_cache(maxsize=None)
def preset_tokens(name: str) -> tuple[str, ...]:
    """The control tokens a preset lists (`[tokens] special`), or () for an unknown preset."""
    from bot.llm import presets

    try:
        raw = presets.load(name).raw
    except presets.PresetError:
        return ()
    return tuple(raw.get("tokens", {}).get("special", ()))


@functools.lru_cache(maxsize=1)
def all_preset_tokens() -> tuple[str, ...]:
    from bot.llm import presets

    return tuple(sorted({t for name in presets.names() for t in preset_tokens(name)}))


def serving_tokens(model: str | None) -> tuple[str, ...]:
    """The control tokens of the serving preset `model` (BOT_MODEL), or of every preset when it is None,
    `none` or unknown: with no model to ask, the strictest list."""
    return preset_tokens(str(model or "none")) or all_preset_tokens()


def tokenizer_tokens(tokenizer) -> tuple[str, ...]:
    """Every special and added token string a tokenizer knows."""
    added = getattr(tokenizer, "added_tokens_encoder", {}) or {}
    return tuple(sorted(set(tokenizer.all_special_tokens) | set(added)))


def special_ids(tokenizer) -> set[int]:
    added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    return set(tokenizer.all_special_ids) | set(added)


def find(text: str, tokens: Iterable[str] = ()) -> list[str]:
    """The control tokens in `text`, each once, in order of first appearance."""
    text = text or ""
    hits = [(m.start(), m.group(0)) for m in GENERIC_RE.finditer(text)]
    for token in tokens:
        start = text.find(token)
        if token and start >= 0:
            hits.append((start, token))
    return list(dict.fromkeys(token for _, token in sorted(hits)))


def check(text: str, what: str = "correction", model: str | None = None,
          tokens: Iterable[str] | None = None) -> str | None:
    """Why `text` cannot be taken as training data (it holds a control token of the serving preset
    `model`, named), or None."""
    found = find(text, serving_tokens(model) if tokens is None else tokens)
    if not found:
        return None
    named = ", ".join(f"`{t}`" for t in found[:5])
    return (f"Sorry, I can't take that {what}: it contains {named}, "
            f"{'a control token' if len(found) == 1 else 'control tokens'} of the model's chat format, which "
            "would teach the model to fake the start or end of a conversation turn. Please remove "
            f"{'it' if len(found) == 1 else 'them'} and send it again; nothing was recorded.")


def _inert(token: str) -> str:
    # `<|…|>` becomes a space (it never reads as words); the others keep their letters behind a look-alike
    # bracket, so `[INST]` or `<s>` in a sentence still reads the same to a person.
    if token.startswith(("<|", "<｜")):
        return " "
    return {"<": "‹", "[": "［"}.get(token[0], " ") + token[1:]


def defuse(text: str, tokens: Iterable[str] | None = None) -> str:
    """`text` with every control token made inert: no tokenizer reads a special id from it any more."""
    extra = all_preset_tokens() if tokens is None else tuple(tokens)
    text = GENERIC_RE.sub(lambda m: _inert(m.group(0)), text or "")
    for token in sorted(extra, key=len, reverse=True):  # longest first: `<|im_start|>` before `<s>`
        if token and token in text:
            text = text.replace(token, _inert(token))
    return text


def _contents(example: Sequence[dict]) -> list[str]:
    return [m.get("content") or "" for m in example]


def scan(examples: Iterable[Sequence[dict]], tokenizer) -> dict:
    """Check chat examples with the real tokenizer: `{"examples", "special_tokens_inside", "details"}`.

    Each message's text is encoded alone (no special id may appear), and the
    rendered example must hold exactly the special ids of the same template
    filled with plain text: the template's own markers and nothing else."""
    ids = special_ids(tokenizer)
    names = {i: tokenizer.convert_ids_to_tokens(i) for i in ids}
    details, count, inside_total = [], 0, 0
    for n, example in enumerate(examples):
        count += 1
        inside = [names[i] for text in _contents(example)
                  for i in tokenizer(text, add_special_tokens=False)["input_ids"] if i in ids]
        if not inside and getattr(tokenizer, "chat_template", None):
            rendered = [i for i in _render(tokenizer, example) if i in ids]
            expected = [i for i in _render(tokenizer, [{**m, "content": "x"} for m in example]) if i in ids]
            inside = [names[i] for i in set(rendered) for _ in range(rendered.count(i) - expected.count(i))]
        if inside:
            inside_total += len(inside)
            details.append(f"example {n}: {', '.join(sorted(set(inside)))}")
    return {"examples": count, "special_tokens_inside": inside_total, "details": details}


def assert_clean(examples: Iterable[Sequence[dict]], tokenizer) -> dict:
    """`scan`, raising ControlTokenError when any example holds a control token inside its text."""
    report = scan(examples, tokenizer)
    if report["special_tokens_inside"]:
        raise ControlTokenError(f"{len(report['details'])} training example(s) hold control tokens inside their "
                                f"text (nothing trained): {'; '.join(report['details'][:5])}")
    return report


def _render(tokenizer, messages: Sequence[dict]) -> list[int]:
    out = tokenizer.apply_chat_template(list(messages), tokenize=True)
    return list(out["input_ids"] if isinstance(out, dict) or hasattr(out, "keys") else out)
