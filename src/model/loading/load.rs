//! [`Model::load`]'s two sources: a GGUF file (weights, tokenizer and chat template from one file)
//! and a Hugging Face folder (config.json, tokenizer.json, tokenizer_config.json and safetensors
//! shards); and a model's tokenizer and chat template alone, for a served model's prompts.
use super::chat::ChatTemplate;
use super::gguf::GgufFile;
use super::tokenizer::Tok;
use super::weights::{Source, Weights};
use crate::model::arch::{family, gemma3, llama};
use crate::model::{Arch, LoadOptions, Model, ModelInfo, SUPPORTED};
use crate::util::error::{Error, Result};
use crate::util::io::{read_json, sha256_file};
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// A model's tokenizer and chat template without its weights: from a GGUF file's metadata, or
/// from a Hugging Face folder's tokenizer.json and tokenizer_config.json. A served model's
/// prompts are rendered with them.
pub fn load_tokenizer(path: &Path) -> Result<(Tok, Option<ChatTemplate>)> {
    if path.is_dir() {
        let tc_path = path.join("tokenizer_config.json");
        let tc: TokenizerConfig = if tc_path.exists() { read_json(&tc_path)? } else { TokenizerConfig::default() };
        let tok = Tok::from_json(
            &path.join("tokenizer.json"),
            token_string(&tc.bos_token),
            token_string(&tc.eos_token),
            tc.add_bos_token.unwrap_or_else(|| {
                // As load_hf_dir: Gemma 3's tokenizer_config.json leaves it out and means true.
                read_json::<serde_json::Value>(&path.join("config.json"))
                    .is_ok_and(|c| c["architectures"][0] == "Gemma3ForCausalLM" || c["model_type"] == "gemma3_text")
            }),
        )?;
        let chat = hf_chat_template(&tc, &tc_path)?;
        Ok((tok, chat))
    } else {
        let g = GgufFile::open(path)?;
        let tok = Tok::from_gguf(&g)?;
        let chat = gguf_chat_template(&g, path)?;
        Ok((tok, chat))
    }
}

fn gguf_chat_template(g: &GgufFile, path: &Path) -> Result<Option<ChatTemplate>> {
    match g.string("tokenizer.chat_template") {
        Ok(t) => Ok(Some(ChatTemplate::new(t, format!("GGUF metadata of {}", path.display()))?)),
        Err(_) => Ok(None),
    }
}

fn unsupported(path: &Path, arch: &str) -> Error {
    Error::model(path, format!("unsupported architecture {arch:?} (supported: {SUPPORTED})"))
}

pub(crate) fn load_gguf(path: &Path, opts: &LoadOptions) -> Result<Model> {
    let dev = opts.device.open()?;
    let g = GgufFile::open(path)?;
    let arch_name = g.architecture()?;
    let tok = Tok::from_gguf(&g)?;
    let chat = gguf_chat_template(&g, path)?;
    let (arch, vocab) = {
        let llama_shaped = matches!(arch_name.as_str(), "llama" | "qwen2" | "qwen3");
        let llama_cfg = llama_shaped.then(|| llama::Config::from_gguf(&g)).transpose()?;
        let gemma_cfg = (arch_name == "gemma3").then(|| gemma3::Config::from_gguf(&g)).transpose()?;
        let mut w = Weights {
            source: Source::Gguf(g),
            device: dev.clone(),
            dtype: opts.dtype.dtype(),
            requantize_slow: opts.requantize_slow,
            dequantize: opts.dequantize,
        };
        match (llama_cfg, gemma_cfg) {
            (Some(c), _) => (Arch::Llama(llama::Model::load(c.clone(), &mut w)?), c.vocab_size),
            (_, Some(c)) => (Arch::Gemma3(gemma3::Model::load(c.clone(), &mut w)?), c.vocab_size),
            _ => return Err(unsupported(path, &arch_name)),
        }
    };
    let info = ModelInfo {
        name: path.file_stem().map(|s| s.to_string_lossy().to_string()).unwrap_or_default(),
        path: path.to_path_buf(),
        architecture: arch_name,
        format: "gguf".into(),
        sha256: sha256_file(path)?,
        tokenizer: tok.source.clone(),
        chat_template: chat.as_ref().map(|c| c.source.clone()),
        vocab_size: vocab,
        adapter: None,
        served: None,
        device: None,
    };
    Ok(Model::assemble(arch, tok, chat, info, opts, dev, (opts.dequantize, opts.form())))
}

#[derive(Deserialize, Default)]
struct TokenizerConfig {
    #[serde(default)]
    chat_template: Option<serde_json::Value>,
    #[serde(default)]
    bos_token: Option<serde_json::Value>,
    #[serde(default)]
    eos_token: Option<serde_json::Value>,
    #[serde(default)]
    add_bos_token: Option<bool>,
}

fn token_string(v: &Option<serde_json::Value>) -> Option<String> {
    match v {
        Some(serde_json::Value::String(s)) => Some(s.clone()),
        Some(serde_json::Value::Object(o)) => o.get("content").and_then(|c| c.as_str()).map(String::from),
        _ => None,
    }
}

/// tokenizer_config.json's chat template: a string, or the entry named "default" of a list.
fn hf_chat_template(tc: &TokenizerConfig, tc_path: &Path) -> Result<Option<ChatTemplate>> {
    Ok(match &tc.chat_template {
        Some(serde_json::Value::String(s)) => Some(ChatTemplate::new(s.clone(), tc_path.display().to_string())?),
        Some(serde_json::Value::Array(list)) => list
            .iter()
            .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
            .and_then(|t| t.get("template").and_then(|t| t.as_str()))
            .map(|t| ChatTemplate::new(t.to_string(), tc_path.display().to_string()))
            .transpose()?,
        _ => None,
    })
}

/// The model's safetensors files: the shards of model.safetensors.index.json, else model.safetensors.
fn safetensor_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = Vec::new();
    let index = dir.join("model.safetensors.index.json");
    if index.exists() {
        let idx: serde_json::Value = read_json(&index)?;
        let mut shards: Vec<String> = idx
            .get("weight_map")
            .and_then(|m| m.as_object())
            .map(|m| m.values().filter_map(|v| v.as_str().map(String::from)).collect())
            .unwrap_or_default();
        shards.sort();
        shards.dedup();
        files.extend(shards.into_iter().map(|s| dir.join(s)));
    } else {
        files.push(dir.join("model.safetensors"));
    }
    for f in &files {
        if !f.exists() {
            return Err(Error::model(f, "safetensors file not found in the model folder"));
        }
    }
    Ok(files)
}

pub(crate) fn load_hf_dir(dir: &Path, opts: &LoadOptions) -> Result<Model> {
    let dev = opts.device.open()?;
    let cfg_path = dir.join("config.json");
    let raw: serde_json::Value = read_json(&cfg_path)?;
    let arch_name = raw
        .get("architectures")
        .and_then(|a| a.get(0))
        .and_then(|a| a.as_str())
        .or_else(|| raw.get("model_type").and_then(|m| m.as_str()))
        .unwrap_or("unknown")
        .to_string();
    let llama_family = family::Family::from_hf(&arch_name);
    let family = match (arch_name.as_str(), llama_family) {
        (_, Some(f)) => f.name(),
        ("Gemma3ForCausalLM" | "gemma3_text", _) => "gemma3",
        _ => return Err(unsupported(&cfg_path, &arch_name)),
    };
    let tc_path = dir.join("tokenizer_config.json");
    let tc: TokenizerConfig = if tc_path.exists() { read_json(&tc_path)? } else { TokenizerConfig::default() };
    let tok_path = dir.join("tokenizer.json");
    let tok = Tok::from_json(
        &tok_path,
        token_string(&tc.bos_token),
        token_string(&tc.eos_token),
        tc.add_bos_token.unwrap_or(family == "gemma3"),
    )?;
    let chat = hf_chat_template(&tc, &tc_path)?;
    let files = safetensor_files(dir)?;
    for f in &files {
        crate::util::io::check_input(f, crate::util::io::Cap::Stream)?;
    }
    // Safety: the files are memory-mapped read-only and not modified while the model lives.
    let st = unsafe { candle_core::safetensors::MmapedSafetensors::multi(&files) }
        .map_err(|e| Error::model(dir, format!("cannot read safetensors: {e}")))?;
    let mut w = Weights {
        source: Source::Safetensors { path: dir.to_path_buf(), st },
        device: dev.clone(),
        dtype: opts.dtype.dtype(),
        requantize_slow: false,
        dequantize: true,
    };
    let (arch, vocab) = match llama_family {
        Some(f) => {
            let c = llama::Config::from_hf(f, raw, &cfg_path)?;
            (Arch::Llama(llama::Model::load(c.clone(), &mut w)?), c.vocab_size)
        }
        None => {
            let c = gemma3::Config::from_hf(raw, &cfg_path)?;
            (Arch::Gemma3(gemma3::Model::load(c.clone(), &mut w)?), c.vocab_size)
        }
    };
    // One hash over the files that define the model's outputs.
    let mut parts = vec![sha256_file(&cfg_path)?, sha256_file(&tok_path)?];
    for f in &files {
        parts.push(sha256_file(f)?);
    }
    use sha2::{Digest, Sha256};
    let sha256 = hex::encode(Sha256::digest(parts.join("\n").as_bytes()));
    let info = ModelInfo {
        name: dir.file_name().map(|s| s.to_string_lossy().to_string()).unwrap_or_default(),
        path: dir.to_path_buf(),
        architecture: family.into(),
        format: "huggingface".into(),
        sha256,
        tokenizer: tok.source.clone(),
        chat_template: chat.as_ref().map(|c| c.source.clone()),
        vocab_size: vocab,
        adapter: None,
        served: None,
        device: None,
    };
    Ok(Model::assemble(arch, tok, chat, info, opts, dev, (true, "f32")))
}
