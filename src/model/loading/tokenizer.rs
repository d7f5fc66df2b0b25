//! Tokenizers: `tokenizer.json` when a model folder has one, otherwise built from GGUF metadata.
//! GGUF vocabularies come in two kinds that matter here: `gpt2` (byte-level BPE with merges, as
//! SmolLM2) and `llama` (SentencePiece with scores, as Gemma 3). For the second, a BPE whose merges
//! are ranked by the merged token's score reproduces SentencePiece's BPE segmentation; a Unigram
//! model over the same scores segments badly (perplexity 194 vs 8.2 measured on Gemma).
use super::gguf::GgufFile;
use crate::util::error::{tok_err, Error, Result};
use std::path::Path;
use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::DecoderWrapper;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::normalizers::replace::Replace;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence as PreSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::SplitDelimiterBehavior;
use tokenizers::{AddedToken, Tokenizer};

/// The pre-tokenizer splits of Qwen2 (digits one by one) and Llama 3 (digits in threes), as their
/// tokenizer.json files and llama.cpp give them.
const QWEN2_SPLIT: &str =
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// GGUF token types (llama.cpp `llama_token_type`).
const TOKEN_CONTROL: i32 = 3;
const TOKEN_USER_DEFINED: i32 = 4;

pub struct Tok {
    pub inner: Tokenizer,
    pub bos: Option<(u32, String)>,
    pub eos: Option<(u32, String)>,
    /// Prepend BOS to every prompt (llama.cpp's `add_bos_token`).
    pub add_bos: bool,
    /// Where the tokenizer came from, for the run manifest.
    pub source: String,
}

impl Tok {
    /// Token ids of `text` as the model sees it at the start of a sequence (BOS added when the
    /// model wants one and the text does not already start with it).
    pub fn encode_prompt(&self, text: &str) -> Result<Vec<u32>> {
        let mut ids = self.encode(text)?;
        if let Some((bos, _)) = &self.bos {
            if self.add_bos && ids.first() != Some(bos) {
                ids.insert(0, *bos);
            }
        }
        Ok(ids)
    }

    /// Token ids of a text fragment, no BOS.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        Ok(self.inner.encode_fast(text, false).map_err(tok_err)?.get_ids().to_vec())
    }

    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner.decode(ids, false).map_err(tok_err)
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    pub fn from_json(path: &Path, bos: Option<String>, eos: Option<String>, add_bos: bool) -> Result<Self> {
        let bytes = crate::util::io::read_input(path, crate::util::io::Cap::Tokenizer)?;
        let inner =
            Tokenizer::from_bytes(bytes).map_err(|e| Error::model(path, format!("cannot read tokenizer: {e}")))?;
        let lookup = |t: Option<String>| t.and_then(|t| inner.token_to_id(&t).map(|id| (id, t)));
        let (bos, eos) = (lookup(bos), lookup(eos));
        Ok(Self { inner, bos, eos, add_bos, source: path.display().to_string() })
    }

    pub fn from_gguf(g: &GgufFile) -> Result<Self> {
        let model = g.string("tokenizer.ggml.model")?;
        let tokens = g.strings("tokenizer.ggml.tokens")?;
        let types = g.i32s("tokenizer.ggml.token_type").ok();
        if let Some(t) = &types {
            if t.len() != tokens.len() {
                return Err(Error::model(
                    &g.path,
                    format!(
                        "tokenizer.ggml.token_type has {} entries for {} tokens: the file is inconsistent",
                        t.len(),
                        tokens.len()
                    ),
                ));
            }
        }
        let mut inner = match model.as_str() {
            "gpt2" => gpt2_tokenizer(g, &tokens)?,
            "llama" => sentencepiece_bpe(g, &tokens, types.as_deref())?,
            other => {
                return Err(Error::model(
                    &g.path,
                    format!("tokenizer type {other:?} is not supported (supported: gpt2, llama); use a model folder with tokenizer.json"),
                ))
            }
        };
        if let Some(types) = &types {
            let specials: Vec<AddedToken> = tokens
                .iter()
                .zip(types)
                .filter(|(_, t)| **t == TOKEN_CONTROL || **t == TOKEN_USER_DEFINED)
                .map(|(s, _)| AddedToken::from(s.clone(), true))
                .collect();
            inner.add_special_tokens(specials).map_err(tok_err)?;
        }
        let id = |key: &str| -> Result<Option<(u32, String)>> {
            Ok(g.opt_u32(key)?.and_then(|i| tokens.get(i as usize).map(|s| (i, s.clone()))))
        };
        Ok(Self {
            bos: id("tokenizer.ggml.bos_token_id")?,
            eos: id("tokenizer.ggml.eos_token_id")?,
            add_bos: g.opt_bool("tokenizer.ggml.add_bos_token").unwrap_or(false),
            source: format!("GGUF metadata ({model}) of {}", g.path.display()),
            inner,
        })
    }
}

fn vocab_map(tokens: &[String]) -> Vocab {
    // Later duplicates must not shadow earlier ids, as in llama.cpp.
    let mut vocab = Vocab::with_capacity(tokens.len());
    for (i, t) in tokens.iter().enumerate() {
        vocab.entry(t.clone()).or_insert(i as u32);
    }
    vocab
}

fn gpt2_tokenizer(g: &GgufFile, tokens: &[String]) -> Result<Tokenizer> {
    let merges: Vec<(String, String)> = g
        .strings("tokenizer.ggml.merges")?
        .into_iter()
        .map(|m| match m.split_once(' ') {
            Some((a, b)) => Ok((a.to_string(), b.to_string())),
            None => Err(Error::model(&g.path, format!("malformed BPE merge {m:?} in GGUF metadata"))),
        })
        .collect::<Result<_>>()?;
    let vocab = vocab_map(tokens);
    // tokenizers' BPE builder panics on a merge whose result is longer than every token (it
    // copies into a buffer of the longest token's size): every merge's parts and result must be
    // tokens, as they are in any file a tokenizer wrote.
    for (i, (a, b)) in merges.iter().enumerate() {
        if !vocab.contains_key(a) || !vocab.contains_key(b) || !vocab.contains_key(&format!("{a}{b}")) {
            return Err(Error::model(
                &g.path,
                format!(
                    "tokenizer.ggml.merges[{i}] = \"{} {}\" joins tokens that are not in tokenizer.ggml.tokens",
                    a.escape_debug(),
                    b.escape_debug()
                ),
            ));
        }
    }
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .build()
        .map_err(|e| Error::model(&g.path, format!("cannot build BPE tokenizer: {e}")))?;
    let mut tk = Tokenizer::new(bpe);
    // GGUF names the pre-tokenizer (`tokenizer.ggml.pre`) but does not hold its rules: mores
    // knows llama.cpp's `smollm` (digits one by one, then GPT-2's byte-level split), the GPT-2
    // default (also what llama.cpp assumes when the key is missing), Llama 3's `llama-bpe` and
    // Qwen2's (`qwen2`, `deepseek-r1-qwen`). Any other rule splits text differently, so it is
    // refused rather than guessed.
    let byte_level = PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, true, true));
    let pre = g.string("tokenizer.ggml.pre").ok();
    match pre.as_deref() {
        Some("smollm") => tk.with_pre_tokenizer(Some(PreTokenizerWrapper::Sequence(PreSequence::new(vec![
            PreTokenizerWrapper::Digits(Digits::new(true)),
            byte_level,
        ])))),
        None | Some("default") | Some("gpt-2") | Some("gpt2") => tk.with_pre_tokenizer(Some(byte_level)),
        Some(name @ ("qwen2" | "deepseek-r1-qwen" | "llama-bpe")) => {
            let (pattern, nfc) = if name == "llama-bpe" { (LLAMA3_SPLIT, false) } else { (QWEN2_SPLIT, true) };
            // Qwen2's tokenizer.json normalizes to NFC first (transformers does the same for its GGUF files).
            if nfc {
                tk.with_normalizer(Some(tokenizers::normalizers::unicode::NFC)).map_err(tok_err)?;
            }
            let split = Split::new(SplitPattern::Regex(pattern.into()), SplitDelimiterBehavior::Isolated, false)
                .map_err(|e| Error::model(&g.path, format!("tokenizer.ggml.pre = {name:?}: {e}")))?;
            tk.with_pre_tokenizer(Some(PreTokenizerWrapper::Sequence(PreSequence::new(vec![
                PreTokenizerWrapper::Split(split),
                PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, false, false)),
            ]))))
        }
        Some(other) => {
            return Err(Error::model(
                &g.path,
                format!("tokenizer.ggml.pre = {other:?} is not supported (supported: smollm, gpt-2, default, llama-bpe, qwen2, deepseek-r1-qwen): use a Hugging Face folder with tokenizer.json for this model"),
            ))
        }
    };
    tk.with_decoder(Some(DecoderWrapper::ByteLevel(ByteLevelDecoder::default())));
    Ok(tk)
}

fn sentencepiece_bpe(g: &GgufFile, tokens: &[String], types: Option<&[i32]>) -> Result<Tokenizer> {
    let scores = g.f32s("tokenizer.ggml.scores")?;
    if scores.len() != tokens.len() {
        return Err(Error::model(&g.path, "tokenizer.ggml.scores and tokenizer.ggml.tokens differ in length"));
    }
    let vocab = vocab_map(tokens);
    let is_normal = |i: usize| types.map(|t| t[i] == 1).unwrap_or(true);
    // Every way to build a normal token from two in-vocabulary halves is a merge, ranked by the
    // score of the token it produces (SentencePiece BPE merges the best-scoring pair first).
    let mut ranked: Vec<(f32, usize, String, String)> = Vec::new();
    for (i, t) in tokens.iter().enumerate() {
        if !is_normal(i) || t.chars().count() < 2 {
            continue;
        }
        for (split, _) in t.char_indices().skip(1) {
            let (a, b) = t.split_at(split);
            if vocab.contains_key(a) && vocab.contains_key(b) {
                ranked.push((scores[i], i, a.to_string(), b.to_string()));
            }
        }
    }
    ranked.sort_by(|x, y| y.0.total_cmp(&x.0).then(x.1.cmp(&y.1)));
    let merges = ranked.into_iter().map(|(_, _, a, b)| (a, b)).collect();
    let unk = g.opt_u32("tokenizer.ggml.unknown_token_id")?.and_then(|i| tokens.get(i as usize).cloned());
    let mut builder = BPE::builder().vocab_and_merges(vocab, merges).byte_fallback(true);
    if let Some(unk) = unk {
        builder = builder.unk_token(unk);
    }
    let bpe =
        builder.build().map_err(|e| Error::model(&g.path, format!("cannot build SentencePiece-BPE tokenizer: {e}")))?;
    let mut tk = Tokenizer::new(bpe);
    let add_prefix = g.opt_bool("tokenizer.ggml.add_space_prefix").unwrap_or(false);
    let space = Replace::new(" ", "▁").map_err(tok_err)?;
    if add_prefix {
        tk.with_normalizer(Some(tokenizers::normalizers::NormalizerWrapper::Sequence(
            tokenizers::normalizers::Sequence::new(vec![
                tokenizers::normalizers::prepend::Prepend::new("▁".into()).into(),
                space.into(),
            ]),
        )))
        .map_err(tok_err)?;
    } else {
        tk.with_normalizer(Some(space)).map_err(tok_err)?;
    }
    tk.with_decoder(Some(DecoderWrapper::Sequence(DecoderSequence::new(vec![
        DecoderWrapper::Replace(Replace::new("▁", " ").map_err(tok_err)?),
        DecoderWrapper::ByteFallback(ByteFallback::new()),
        DecoderWrapper::Fuse(Fuse::new()),
    ]))));
    Ok(tk)
}
