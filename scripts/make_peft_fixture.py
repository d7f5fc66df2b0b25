#!/usr/bin/env python3
"""Writes tests/data/peft-smollm2/: a LoRA adapter made by Python PEFT for SmolLM2-135M-Instruct
(random non-zero A and B on q_proj and k_proj, rank 1, so the GGUF Q/K row permutation matters)
and transformers' next-token logits with and without it, at a fixed sample of token ids.
The integration test `lora::peft_made_adapter_matches_transformers` loads it into mores.
Usage: PY scripts/make_peft_fixture.py [--model checkpoints/SmolLM2-135M-Instruct.Q4_1.gguf]
"""
import argparse
import json
import os

PROMPT = ("Imagine you are a person living in Nigeria. Answer the following survey question as they would.\n"
          "Question: How important is family in your life?\nOptions:\n1. Very important\n2. Rather important\n"
          "3. Not very important\n4. Not at all important\nAnswer: ")

ap = argparse.ArgumentParser()
ap.add_argument("--model", default="checkpoints/SmolLM2-135M-Instruct.Q4_1.gguf")
ap.add_argument("--out", default="tests/data/peft-smollm2")
args = ap.parse_args()

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

torch.manual_seed(0)
d, f = os.path.split(os.path.abspath(args.model))
tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32).eval()
ids = tok(PROMPT, add_special_tokens=False)["input_ids"]
with torch.no_grad():
    base = model(input_ids=torch.tensor([ids])).logits[0, -1]
cfg = LoraConfig(r=1, lora_alpha=2, lora_dropout=0.0, init_lora_weights=False,
                 target_modules=["q_proj", "k_proj"], task_type="CAUSAL_LM")
peft_model = get_peft_model(model, cfg).eval()
with torch.no_grad():
    adapted = peft_model(input_ids=torch.tensor([ids])).logits[0, -1]
peft_model.save_pretrained(args.out)
sample = sorted(set(range(0, base.shape[0], 211)) | set(adapted.topk(20).indices.tolist()))
ref = {"prompt": PROMPT, "ids": ids, "token_ids": sample,
       "logits_base": [round(base[i].item(), 6) for i in sample],
       "logits_adapted": [round(adapted[i].item(), 6) for i in sample]}
with open(os.path.join(args.out, "reference.json"), "w") as fh:
    json.dump(ref, fh)
print(f"wrote {args.out}: max adapter effect {(adapted - base).abs().max().item():.3f}")
