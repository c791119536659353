"""Supervised LoRA fine-tuning on chat examples, on a (4-bit) base model: QLoRA.

A plain loop rather than trl's SFTTrainer: the examples are few, the model is
loaded by our own code (generation.py, with the CPU 4-bit fix applied), and
the loop is short enough to read. Loss is computed on the assistant's tokens
only: the prompt (system, passages, question) is context, not a target.
"""
from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

IGNORE = -100


@dataclass
class TrainResult:
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    tokens: int = 0
    steps: int = 0
    stopped_early: str = ""  # why training ended before its step count ('' when it did not)


def encode_example(tokenizer, messages: list[dict], max_tokens: int) -> tuple[list[int], list[int]]:
    """Token ids and labels for one chat example whose last message is the assistant's answer.

    The prompt is rendered exactly as at serving time (chat template with the
    generation prompt), so the model learns to continue what it will be shown.
    """
    if messages[-1]["role"] != "assistant":
        raise ValueError("the last message of a training example must be the assistant's answer")
    prompt = tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    if not full.startswith(prompt):
        raise ValueError("the chat template does not render the prompt as a prefix of the full example")
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    answer_ids = tokenizer(full[len(prompt):], add_special_tokens=False)["input_ids"]
    # Keep the whole answer; cut the prompt from the left (oldest context first).
    keep = max(0, max_tokens - len(answer_ids))
    prompt_ids = prompt_ids[-keep:] if keep else []
    ids = prompt_ids + answer_ids
    labels = [IGNORE] * len(prompt_ids) + answer_ids
    return ids[-max_tokens:], labels[-max_tokens:]


def add_lora(model, lora, name: str = "default", seed: int = 0):
    """Wrap (or extend) a model with a fresh trainable LoRA adapter called `name`.

    Its A matrices start random: seeded, so the same data and recipe train the same adapter
    (a run can be repeated, and two engines' runs compared)."""
    import torch
    from peft import LoraConfig, PeftModel, get_peft_model

    torch.manual_seed(seed)

    cfg = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                     target_modules=list(lora.target_modules), task_type="CAUSAL_LM")
    if isinstance(model, PeftModel):
        model.add_adapter(name, cfg)
        model.set_adapter(name)
        return model
    return get_peft_model(model, cfg, adapter_name=name)


def _first_label(labels: list[int]) -> int:
    """Index of the first token the loss counts (an answer token); past the end when there is none."""
    return next((i for i, label in enumerate(labels) if label != IGNORE), len(labels))


def train(model, tokenizer, examples: Sequence[list[dict]], *, steps: int, learning_rate: float,
          batch_size: int = 1, seed: int = 0, max_tokens: int = 1024,
          target_loss: float = 0.0, log: Callable[[int, float], None] | None = None,
          should_stop: Callable[[], bool] | None = None) -> TrainResult:
    """Train the model's active LoRA adapter on `examples` for `steps` optimizer steps, or until
    every example's latest loss is below `target_loss` (nats per answer token; 0: never early).

    Early stop is judged per example, not on the batch mean: one answer still
    half-learned must keep the job going even when the others are memorised."""
    import torch

    if not examples:
        raise ValueError("no training examples")
    random.seed(seed)
    torch.manual_seed(seed)
    encoded = [encode_example(tokenizer, m, max_tokens) for m in examples]
    firsts = [_first_label(labels) for _, labels in encoded]
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters: add a LoRA adapter first")
    opt = torch.optim.AdamW(params, lr=learning_rate, weight_decay=0.0)
    warmup = max(1, steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device = next(p.device for p in params)
    result = TrainResult()
    t0 = time.perf_counter()
    model.train()
    order: list[int] = []
    latest: dict[int, float] = {}  # example index -> its loss at the last step that saw it
    for step in range(steps):
        if should_stop and should_stop():
            break
        if len(order) < batch_size:
            fresh = list(range(len(encoded)))
            random.shuffle(fresh)
            order += fresh * max(1, math.ceil(batch_size / len(fresh)))
        picked = order[:batch_size]
        batch = [encoded[i] for i in picked]
        del order[:batch_size]
        width = max(len(ids) for ids, _ in batch)
        input_ids = torch.tensor([ids + [pad] * (width - len(ids)) for ids, _ in batch], device=device)
        labels = torch.tensor([lab + [IGNORE] * (width - len(lab)) for _, lab in batch], device=device)
        mask = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in batch], device=device)
        # Logits only from the position before the earliest answer token on: the loss is on answer
        # tokens alone, and the LM head over a 1,200-token prompt of passages was most of a step's
        # time (measured on the tiny preset: 0.63 s -> 0.23 s a step at batch 4, 0.15 s -> 0.07 s at 1).
        keep = min(width, width - min(firsts[i] for i in picked) + 1)
        logits = model(input_ids=input_ids, attention_mask=mask, logits_to_keep=keep).logits[:, :-1].float()
        targets = labels[:, width - keep + 1:]
        per_token = torch.nn.functional.cross_entropy(logits.transpose(1, 2), targets, ignore_index=IGNORE,
                                                      reduction="none")
        counted = (targets != IGNORE).sum(1).clamp(min=1)
        loss = per_token.sum() / counted.sum()  # the mean over answer tokens, as the model's own loss
        for i, row_loss in zip(picked, (per_token.sum(1) / counted).tolist()):
            latest[i] = row_loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        value = float(loss.detach())
        result.losses.append(value)
        result.tokens += int(mask.sum())
        result.steps = step + 1
        if log:
            log(step + 1, value)
        if target_loss > 0 and len(latest) == len(encoded) and max(latest.values()) < target_loss:
            result.stopped_early = (f"every example's loss below {target_loss} after {step + 1} of {steps} steps")
            break
    model.eval()
    result.seconds = time.perf_counter() - t0
    return result


def save_adapter(model, folder: Path, name: str = "default") -> None:
    """Write the adapter's peft files (adapter_config.json, adapter_model.safetensors) to `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(folder), selected_adapters=[name])
    # peft writes non-default adapters into a sub-folder named after them;
    # the registry wants the files at the top of the version folder.
    nested = folder / name
    if name != "default" and nested.is_dir():
        for f in nested.iterdir():
            f.replace(folder / f.name)
        nested.rmdir()
