use crate::common::{gemma3, smollm2};
use mores::model::gguf::GgufFile;
use mores::model::tokenizer::Tok;

const TEXT: &str = "Imagine you are a person living in Nigeria.\nAnswer: ";
const HARD: &str = "Ünïcödé naïve café 東京 🙂\ttab  two spaces 12345";

// Expected ids come from transformers 5.24 (AutoTokenizer.from_pretrained(dir, gguf_file=...)),
// an implementation independent of ours, on the same GGUF files.
#[test]
fn smollm2_gguf_tokenizer_matches_transformers() {
    let tok = Tok::from_gguf(&GgufFile::open(&smollm2()).unwrap()).unwrap();
    assert_eq!(
        tok.encode_prompt(TEXT).unwrap(),
        [4792, 346, 359, 253, 1055, 2242, 281, 15505, 30, 198, 21350, 42, 216]
    );
    assert_eq!(
        tok.encode_prompt(HARD).unwrap(),
        [
            142, 246, 94, 25972, 83, 7466, 84, 2756, 15486, 46494, 37366, 17097, 247, 126, 16736, 122, 47526, 197,
            15999, 216, 827, 5600, 216, 33, 34, 35, 36, 37
        ]
    );
    for s in [TEXT, HARD, "<|im_start|>user\nhi<|im_end|>\n"] {
        assert_eq!(tok.decode(&tok.encode(s).unwrap()).unwrap(), s, "round trip");
    }
    // The chat markers are single special tokens.
    assert_eq!(tok.encode("<|im_start|>").unwrap().len(), 1);
}

#[test]
fn gemma3_gguf_tokenizer_matches_transformers() {
    let tok = Tok::from_gguf(&GgufFile::open(&gemma3()).unwrap()).unwrap();
    assert_eq!(
        tok.encode_prompt(TEXT).unwrap(),
        [2, 70895, 611, 659, 496, 1589, 4882, 528, 16210, 236761, 107, 7925, 236787, 236743]
    );
    assert_eq!(
        tok.encode_prompt(HARD).unwrap(),
        [
            2, 238194, 236749, 238527, 236755, 55515, 236859, 120362, 33443, 86459, 57235, 255968, 4823, 138, 13498,
            9952, 236743, 236770, 236778, 236800, 236812, 236810
        ]
    );
    for s in [TEXT, HARD] {
        assert_eq!(tok.decode(&tok.encode(s).unwrap()).unwrap(), s, "round trip");
    }
}

fn vocab_file() -> std::path::PathBuf {
    crate::common::root().join("tests/data/vocab/deepseek-r1-qwen.gguf")
}

/// The vocabulary of DeepSeek-R1-Distill-Qwen-7B's GGUF (`tokenizer.ggml.pre =
/// "deepseek-r1-qwen"`, Qwen2's split and NFC), metadata only (scripts/make_vocab_gguf.py), against
/// transformers' ids on the same file for digits, spaces, newlines, CJK, emoji, code and
/// contractions.
#[test]
fn deepseek_r1_qwen_gguf_tokenizer_matches_transformers() {
    let g = GgufFile::open(&vocab_file()).unwrap();
    assert_eq!(g.string("tokenizer.ggml.pre").unwrap(), "deepseek-r1-qwen");
    let tok = Tok::from_gguf(&g).unwrap();
    let path = vocab_file().with_extension("ids.json");
    let refs: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let cases = refs["cases"].as_array().unwrap();
    assert!(cases.len() >= 10);
    for c in cases {
        let text = c["text"].as_str().unwrap();
        let want: Vec<u32> = c["ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        assert_eq!(tok.encode(text).unwrap(), want, "{text:?}");
        assert_eq!(tok.decode(&want).unwrap(), text, "round trip of {text:?}");
    }
}

/// The pieces a tokenizer's pre-tokenizer cuts `text` into.
fn pieces(tok: &Tok, text: &str) -> Vec<String> {
    use tokenizers::{OffsetReferential, OffsetType, PreTokenizedString, PreTokenizer};
    let mut pts = PreTokenizedString::from(text);
    tok.inner.get_pre_tokenizer().unwrap().pre_tokenize(&mut pts).unwrap();
    pts.get_splits(OffsetReferential::Original, OffsetType::Byte).iter().map(|(s, _, _)| s.to_string()).collect()
}

/// Llama 3's split (`llama-bpe`) groups digits in threes where Qwen2's takes them one by one; the
/// same vocabulary relabelled shows the difference.
#[test]
fn llama_bpe_pre_tokenizer_groups_digits_in_threes() {
    use candle_core::quantized::gguf_file;
    let mut f = std::fs::File::open(vocab_file()).unwrap();
    let content = gguf_file::Content::read(&mut f).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("llama-bpe.gguf");
    let mut md = content.metadata.clone();
    md.insert("tokenizer.ggml.pre".into(), gguf_file::Value::String("llama-bpe".into()));
    let md: Vec<(&str, &gguf_file::Value)> = md.iter().map(|(k, v)| (k.as_str(), v)).collect();
    gguf_file::write(&mut std::fs::File::create(&path).unwrap(), &md, &[]).unwrap();
    let llama3 = Tok::from_gguf(&GgufFile::open(&path).unwrap()).unwrap();
    let qwen2 = Tok::from_gguf(&GgufFile::open(&vocab_file()).unwrap()).unwrap();
    // The Ġ is GPT-2's byte-level space.
    assert_eq!(pieces(&llama3, "in 12345 days"), ["in", "Ġ", "123", "45", "Ġdays"]);
    assert_eq!(pieces(&qwen2, "in 12345 days"), ["in", "Ġ", "1", "2", "3", "4", "5", "Ġdays"]);
}
