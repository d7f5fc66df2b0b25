#!/usr/bin/env python3
"""Interoperability check between mores' LoRA adapters and Python PEFT, on a real model.

1. An adapter trained by mores (`mores train`) is loaded by PEFT on transformers' copy of the
   same GGUF (dequantized to float32); next-token logits must match mores' within --tol.
2. An adapter made by PEFT (random, non-zero B) is loaded by mores (`mores score --adapter`);
   the same comparison the other way.

Needs a Python with torch, transformers, peft and gguf (such as the one `mores bench lora --python`
uses), and a release build of mores. Usage:
  PY scripts/peft_check.py --adapter runs/peft-check/mores-adapter [--model GGUF] [--tol 1e-4]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

PROMPT = ("Imagine you are a person living in Kenya. Answer the following survey question as they would.\n"
          "Question: How important is religion in your life?\nOptions:\n1. Very important\n"
          "2. Rather important\n3. Not very important\n4. Not at all important\nAnswer: ")


def mores_logits(binary: str, model: str, adapter: str | None, out: str) -> dict:
    cmd = [binary, "--quiet", "score", "--model", model, "--f32", "--prompt", PROMPT, "--logits", out]
    if adapter:
        cmd += ["--adapter", adapter]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    with open(out) as f:
        return json.load(f)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="checkpoints/SmolLM2-135M-Instruct.Q4_1.gguf")
    ap.add_argument("--adapter", required=True, help="adapter folder written by `mores train`")
    ap.add_argument("--mores", default="target/release/mores")
    ap.add_argument("--tol", type=float, default=1e-4)
    ap.add_argument("--out", help="JSON summary")
    args = ap.parse_args()

    import torch
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    d, f = os.path.split(os.path.abspath(args.model))

    def base():
        return AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32).eval()

    def hf_logits(model, ids):
        with torch.no_grad():
            return model(input_ids=torch.tensor([ids])).logits[0, -1].float()

    summary = {}
    with tempfile.TemporaryDirectory() as tmp:
        # 1. mores -> PEFT
        ref = mores_logits(args.mores, args.model, args.adapter, os.path.join(tmp, "a.json"))
        plain = mores_logits(args.mores, args.model, None, os.path.join(tmp, "b.json"))
        peft_model = PeftModel.from_pretrained(base(), args.adapter).eval()
        got = hf_logits(peft_model, ref["ids"])
        diff = (got - torch.tensor(ref["logits"])).abs().max().item()
        moved = (torch.tensor(ref["logits"]) - torch.tensor(plain["logits"])).abs().max().item()
        summary["mores_adapter_in_peft"] = {"max_abs_logit_diff": diff, "adapter_effect": moved}
        print(f"mores adapter in PEFT: max |logit diff| {diff:.2e} (the adapter moves logits by up to {moved:.3f})")

        # 2. PEFT -> mores
        cfg = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, init_lora_weights=False,
                         target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj"],
                         task_type="CAUSAL_LM")
        made = get_peft_model(base(), cfg).eval()
        peft_dir = os.path.join(tmp, "peft-adapter")
        made.save_pretrained(peft_dir)
        theirs = hf_logits(made, ref["ids"])
        ours = mores_logits(args.mores, args.model, peft_dir, os.path.join(tmp, "c.json"))
        diff2 = (theirs - torch.tensor(ours["logits"])).abs().max().item()
        moved2 = (torch.tensor(ours["logits"]) - torch.tensor(plain["logits"])).abs().max().item()
        summary["peft_adapter_in_mores"] = {"max_abs_logit_diff": diff2, "adapter_effect": moved2}
        print(f"PEFT adapter in mores: max |logit diff| {diff2:.2e} (the adapter moves logits by up to {moved2:.3f})")

    if args.out:
        with open(args.out, "w") as fh:
            json.dump(summary, fh, indent=2)
    ok = diff <= args.tol and diff2 <= args.tol
    print("PASS" if ok else f"FAIL (tolerance {args.tol})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
