#!/usr/bin/env python3
"""Writes tests/data/arch/phi3-peft/: a LoRA adapter made by Python PEFT for the tiny Phi-3 fixture
(tests/data/arch/phi3) on its fused modules (qkv_proj, gate_up_proj) and o_proj, down_proj, with
random non-zero A and B, plus transformers' logits with the adapter on the fixture's reference
rows. The integration test `arch::phi3_lora_uses_the_fused_peft_modules` loads it into mores.
Usage: PY scripts/make_phi3_peft_fixture.py
"""
import json
import os

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

base_dir = "tests/data/arch/phi3"
out = "tests/data/arch/phi3-peft"
torch.manual_seed(0)
model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32).eval()
ref = json.load(open(os.path.join(base_dir, "reference.json")))
cfg = LoraConfig(r=2, lora_alpha=4, lora_dropout=0.0, init_lora_weights=False,
                 target_modules=["qkv_proj", "gate_up_proj", "o_proj", "down_proj"], task_type="CAUSAL_LM")
peft_model = get_peft_model(model, cfg).eval()
rows = ref["rows"]
with torch.no_grad():
    logits = [peft_model(input_ids=torch.tensor([r])).logits[0].tolist() for r in rows]
peft_model.save_pretrained(out)
with open(os.path.join(out, "reference.json"), "w") as fh:
    json.dump({"rows": rows, "logits": logits}, fh)
print(f"wrote {out}")
