#!/usr/bin/env python3
"""Writes tests/data/arch/<family>/: a tiny random-weight model of each family mores supports
beyond llama and gemma3 (qwen2: QKV bias; qwen3: per-head Q/K RMSNorm; mistral: sliding window;
phi3: fused qkv_proj and gate_up_proj), saved by transformers, with a character-level
tokenizer.json and transformers' logits at every position of two token rows (reference.json).
The integration tests in tests/it/arch.rs load each folder into mores and compare.
Usage: PY scripts/make_arch_fixtures.py   (needs torch and transformers)
"""
import json
import os

import torch
import transformers
from transformers import AutoModelForCausalLM

OUT = "tests/data/arch"
VOCAB = ["<unk>", "<s>", "</s>", "\n"] + [chr(c) for c in range(32, 127)]
ROWS = [[1] + [4 + (7 * i + 3) % 95 for i in range(13)], [1] + [4 + (11 * i + 5) % 95 for i in range(6)]]

COMMON = dict(vocab_size=len(VOCAB), hidden_size=32, intermediate_size=64, num_hidden_layers=3,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-6,
              rope_theta=10000.0, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)
CONFIGS = {
    "qwen2": transformers.Qwen2Config(**COMMON),
    "qwen3": transformers.Qwen3Config(head_dim=8, **COMMON),
    # A window shorter than the first row, so the sliding-window mask matters.
    "mistral": transformers.MistralConfig(sliding_window=5, **COMMON),
    "phi3": transformers.Phi3Config(pad_token_id=0, **COMMON),
}


def tokenizer_json():
    return {"version": "1.0", "truncation": None, "padding": None, "added_tokens": [], "normalizer": None,
            "pre_tokenizer": None, "post_processor": None, "decoder": None,
            "model": {"type": "BPE", "dropout": None, "unk_token": "<unk>", "continuing_subword_prefix": None,
                      "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                      "ignore_merges": False, "vocab": {t: i for i, t in enumerate(VOCAB)}, "merges": []}}


for name, cfg in CONFIGS.items():
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if "norm" in pname:
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            elif pname.endswith("bias"):
                p.copy_(0.3 * torch.randn_like(p))
            else:
                p.copy_(0.3 * torch.randn_like(p))
    d = os.path.join(OUT, name)
    os.makedirs(d, exist_ok=True)
    model.save_pretrained(d, safe_serialization=True)
    with open(os.path.join(d, "tokenizer.json"), "w") as f:
        json.dump(tokenizer_json(), f)
    with open(os.path.join(d, "tokenizer_config.json"), "w") as f:
        json.dump({"bos_token": "<s>", "eos_token": "</s>", "add_bos_token": True}, f)
    ref = {"transformers": transformers.__version__, "torch": torch.__version__, "rows": ROWS, "logits": []}
    with torch.no_grad():
        for row in ROWS:
            logits = model(input_ids=torch.tensor([row])).logits[0]
            ref["logits"].append([[round(x, 6) for x in pos.tolist()] for pos in logits])
    with open(os.path.join(d, "reference.json"), "w") as f:
        json.dump(ref, f)
    n = sum(p.numel() for p in model.parameters())
    print(f"{name}: {n} parameters -> {d}")
