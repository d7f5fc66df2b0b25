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
