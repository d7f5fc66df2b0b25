#!/usr/bin/env python3
"""Writes a vocabulary-only GGUF (the metadata of a real model file, no tensors: a few MB, as
llama.cpp keeps its ggml-vocab-*.gguf test files) and transformers' token ids for a set of hard
strings (digits, spaces, newlines, CJK, emoji, code, contractions) beside it. The GGUF header
holds all metadata before the first tensor, so the first part of a split download is enough.
The integration tests (tests/it/tokenizer.rs) build mores' GGUF tokenizer from the file and
compare ids.
Usage: PY scripts/make_vocab_gguf.py MODEL.gguf-or-first-part OUT.gguf   (needs transformers, gguf)
"""
import json
import os
import struct
import sys

# GGUF value types (gguf spec): 0 u8, 1 i8, 2 u16, 3 i16, 4 u32, 5 i32, 6 f32, 7 bool, 8 string,
# 9 array, 10 u64, 11 i64, 12 f64.
SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}

HARD = [
    "Hello world",
    "  two leading spaces and trailing  ",
    "Numbers: 1 12 123 1234 12345 3.14159 -42 1,000,000",
    "Tabs\tand\nnewlines\n\n\nand \r\n windows",
    "I'm sure they'll say it's fine, we'd've known",
    "中文测试：你好，世界！日本語のテキスト",
    "한국어 텍스트와 emoji 🙂🎉👍🏽",
    "fn main() { println!(\"{}\", x + 1); } // code\n    indented();",
    "Imagine you are a person living in Nigeria. Answer the following survey question as they would.",
    "Ünïcödé àccents, naïve café, Straße",
    "<|im_start|>user\nHi<|im_end|>",
    "   ",
    "a\u00a0b\u2009c",
]


def read_header(path):
    with open(path, "rb") as f:
        data = f.read()
    pos = 0

    def take(n):
        nonlocal pos
        b = data[pos:pos + n]
        if len(b) < n:
            sys.exit(f"{path}: header runs past the end of the file")
        pos += n
        return b

    def value(t):
        if t in SIZES:
            return take(SIZES[t])
        if t == 8:
            n = struct.unpack("<Q", take(8))[0]
            return take(8 - 8) + struct.pack("<Q", n) + take(n)
        if t == 9:
            et = struct.unpack("<I", take(4))[0]
            n = struct.unpack("<Q", take(8))[0]
            return struct.pack("<IQ", et, n) + b"".join(value(et) for _ in range(n))
        sys.exit(f"unknown GGUF value type {t}")

    magic, version = take(4), struct.unpack("<I", take(4))[0]
    if magic != b"GGUF" or version < 2:
        sys.exit(f"{path}: not a GGUF v2+ file")
    n_tensors, n_kv = struct.unpack("<QQ", take(16))
    kvs = []
    for _ in range(n_kv):
        klen = struct.unpack("<Q", take(8))[0]
        key = take(klen)
        t = struct.unpack("<I", take(4))[0]
        kvs.append((key, t, value(t)))
    return version, kvs


def main():
    src, out = sys.argv[1], sys.argv[2]
    version, kvs = read_header(src)
    with open(out, "wb") as f:
        f.write(b"GGUF" + struct.pack("<IQQ", version, 0, len(kvs)))
        for key, t, raw in kvs:
            f.write(struct.pack("<Q", len(key)) + key + struct.pack("<I", t) + raw)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(os.path.dirname(os.path.abspath(out)), gguf_file=os.path.basename(out))
    ids = [{"text": s, "ids": tok.encode(s, add_special_tokens=False)} for s in HARD]
    import transformers

    ref = {"source": os.path.basename(src), "transformers": transformers.__version__, "cases": ids}
    with open(out.removesuffix(".gguf") + ".ids.json", "w") as f:
        json.dump(ref, f, ensure_ascii=False, indent=1)
    print(f"{out}: {os.path.getsize(out)} bytes, {len(kvs)} keys; {len(ids)} reference strings")


if __name__ == "__main__":
    main()
