"""A tiny chat model built offline from the knowledge base: `python -m bot models build-tiny`.

No hub is reachable on CI or on this machine, yet tests need a real model
that loads through `from_pretrained`, quantises to 4-bit, generates, and
learns under LoRA. A random-init model cannot do the last part (LoRA barely
moves its loss), so the build pre-trains for a few hundred steps on the docs
themselves. Recipe verified in /work/shared/STACK.md: byte-level BPE,
ChatML template, Llama architecture (with Qwen2, AutoTokenizer swaps in
Qwen2Tokenizer, which re-tokenizes differently), no NFKC normaliser (it
would turn full-width Chinese punctuation into ASCII).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable

# `(name, text)` of each document, chat tokens already removed. A callable, so an existing build
# reads no documents; the caller (bot.wiring) reads them: llm and knowledge never import each other.
Documents = Callable[[], list[tuple[str, str]]]

# The same ChatML layout Qwen uses, minus its default system prompt.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
PAD, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
VOCAB_SIZE = 3000
# Matches models/tiny.toml [architecture]; ~330k parameters with tied embeddings.
ARCH = dict(
    hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, max_position_embeddings=2048, rope_theta=10000.0,
    rms_norm_eps=1e-6, tie_word_embeddings=True,
)
# Batch 8 x 128 tokens, 300 steps: about 20 s on 2 cores, loss 8.0 -> about 4.
SEQ_LEN, BATCH, LR, SEED = 128, 8, 5e-3, 0


def _chat_samples(text: str) -> list[str]:
    """Heading -> opening of its section, in ChatML, so the model learns the
    turn layout and to end an answer with <|im_end|> (it stops by itself)."""
    out, heading, body = [], None, []
    for line in text.splitlines() + ["# end"]:
        if line.startswith("#"):
            answer = "".join(body).strip()[:160]
            if heading and answer:
                out.append(f"{IM_START}user\n{heading}{IM_END}\n{IM_START}assistant\n{answer}{IM_END}\n")
            heading, body = line.lstrip("# ").strip(), []
        elif line.strip():
            body.append(line.strip())
    return out


def _tokenizer(texts: list[str]):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE, special_tokens=[PAD, IM_START, IM_END],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=IM_END, pad_token=PAD, chat_template=CHAT_TEMPLATE,
        padding_side="left",  # decoder-only batches pad on the left
        model_max_length=ARCH["max_position_embeddings"],
    )


def _data_hash(docs: list[tuple[str, str]], steps: int, arch: dict = ARCH) -> str:
    h = hashlib.sha256(json.dumps({"arch": arch, "vocab": VOCAB_SIZE, "steps": steps, "seed": SEED}).encode())
    for name, text in docs:
        h.update(name.encode() + b"\0" + text.encode() + b"\0")
    return h.hexdigest()


def _pretrain(model, ids, steps: int, log) -> tuple[float, float]:
    """Next-token training on random windows of the token stream; returns (first, last) loss."""
    import torch

    gen = torch.Generator().manual_seed(SEED)
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=LR, total_steps=steps, pct_start=0.1)
    model.train()
    first = last = float("nan")
    for step in range(1, steps + 1):
        starts = torch.randint(0, len(ids) - SEQ_LEN - 1, (BATCH,), generator=gen)
        batch = torch.stack([ids[s : s + SEQ_LEN] for s in starts.tolist()])
        loss = model(input_ids=batch, labels=batch).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        last = loss.item()
        first = last if step == 1 else first
        if step == 1 or step % 50 == 0 or step == steps:
            log(f"tiny model: step {step}/{steps} loss {last:.3f}")
    model.eval()
    return first, last


def build(cache_dir: Path, documents: Documents, force: bool = False, steps: int = 300, log=print,
          arch: dict | None = None) -> Path:
    """Build (once) the tiny model under `cache_dir/tiny` from `documents()` and return that folder.

    `arch` overrides some of ARCH (e.g. 2 heads of 32 for vLLM's CPU attention, which refuses
    heads under 32 wide): a tool building its own copy under its own cache_dir; the `tiny` preset
    itself is always built with ARCH.

    An existing build with its meta.json is returned at once unless `force`.
    The model is written to a temporary folder and renamed into place at the
    end, so a crash or a concurrent build never leaves a half model behind.
    """
    cache_dir = Path(cache_dir)
    target = cache_dir / "tiny"
    if (target / "meta.json").is_file() and not force:
        return target

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    arch = {**ARCH, **(arch or {})}
    t0 = time.perf_counter()
    docs = documents()
    chats = [s for _, text in docs for s in _chat_samples(text)]
    tokenizer = _tokenizer([text for _, text in docs] + chats)
    pad_id, eos_id = tokenizer.pad_token_id, tokenizer.eos_token_id
    # One token stream: documents and chat samples, separated by the pad token
    # (it doubles as end-of-text, as in Qwen).
    stream: list[int] = []
    for enc in tokenizer.backend_tokenizer.encode_batch([t for _, t in docs] + chats):
        stream += enc.ids + [pad_id]
    ids = torch.tensor(stream, dtype=torch.long)

    torch.manual_seed(SEED)  # same weights, same batches, same model on every build
    config = LlamaConfig(
        vocab_size=len(tokenizer), bos_token_id=pad_id, eos_token_id=eos_id, pad_token_id=pad_id, **arch
    )
    model = LlamaForCausalLM(config)
    params = sum(p.numel() for p in model.parameters())
    log(f"tiny model: {params:,} parameters, {len(ids):,} training tokens, {steps} steps")
    first, last = _pretrain(model, ids, steps, log)
    model.generation_config.eos_token_id = eos_id
    model.generation_config.pad_token_id = pad_id
    model.generation_config.bos_token_id = pad_id

    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tiny-", dir=cache_dir))
    tmp.chmod(0o755)  # mkdtemp makes it private; the build is a shared cache
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        meta = {
            "steps": steps, "first_loss": round(first, 4), "final_loss": round(last, 4),
            "seconds": round(time.perf_counter() - t0, 2), "params": params,
            "train_tokens": len(ids), "vocab_size": len(tokenizer),
            "data_hash": _data_hash(docs, steps, arch), "docs": [name for name, _ in docs],
            "seed": SEED, "architecture": arch,
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
        if target.exists():
            if not force and (target / "meta.json").is_file():
                return target  # another process finished first: keep its build
            old = target.with_name(f".tiny-old-{os.getpid()}")
            target.rename(old)
            shutil.rmtree(old, ignore_errors=True)
        try:
            tmp.rename(target)
        except OSError:
            if not (target / "meta.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # no-op once renamed
    log(f"tiny model: built in {meta['seconds']} s, loss {first:.2f} -> {last:.2f}, saved to {target}")
    return target
