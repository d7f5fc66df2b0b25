//! Merge a LoRA adapter into its base model and write a Hugging Face model folder
//! (config.json, model.safetensors, tokenizer.json, tokenizer_config.json) that mores,
//! transformers or any converter can load without PEFT.
use super::adapter::{merge_into, save_safetensors, Adapter};
use crate::model::{Arch, LoadOptions, Model};
use crate::util::error::{Error, Result};
use std::collections::HashMap;
use std::path::Path;

pub fn merge_and_export(model_path: &Path, adapter_dir: &Path, out: &Path) -> Result<usize> {
    let mut model = Model::load(model_path, &LoadOptions { dequantize: true, ..Default::default() })?;
    Adapter::load(&mut model, adapter_dir)?;
    let n = merge_into(&mut model)?;
    export_hf(&mut model, out)?;
    Ok(n)
}

/// Write `model` (dense weights) as a Hugging Face folder.
pub fn export_hf(model: &mut Model, out: &Path) -> Result<()> {
    if model.lora_attached() {
        return Err(Error::Invalid("export: merge the adapter into the base first".into()));
    }
    let (tensors, mut config) = match &model.arch {
        Arch::Llama(m) => (m.hf_tensors()?, m.hf_config()),
        Arch::Gemma3(m) => (m.hf_tensors()?, m.hf_config()),
    };
    let o = config.as_object_mut().expect("object");
    if let Some((id, _)) = &model.tok.bos {
        o.insert("bos_token_id".into(), (*id).into());
    }
    if let Some((id, _)) = &model.tok.eos {
        o.insert("eos_token_id".into(), (*id).into());
    }
    // A scaling read from GGUF metadata carries only its factor (Gemma 3's is linear); one read
    // from a Hugging Face config keeps its own type and parameters exactly (Llama 3.1's llama3).
    if let Some(serde_json::Value::Object(rs)) = o.get_mut("rope_scaling") {
        if rs.contains_key("factor") && !rs.contains_key("rope_type") && !rs.contains_key("type") {
            rs.insert("rope_type".into(), "linear".into());
        }
    }
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let mut meta = HashMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    crate::util::io::atomic_write(&out.join("model.safetensors"), &save_safetensors(&tensors, meta)?)?;
    crate::util::io::write_json(&out.join("config.json"), &config)?;
    let tok_json = model.tok.inner.to_string(false).map_err(crate::util::error::tok_err)?;
    crate::util::io::atomic_write(&out.join("tokenizer.json"), tok_json.as_bytes())?;
    let mut tc = serde_json::Map::new();
    if let Some((_, s)) = &model.tok.bos {
        tc.insert("bos_token".into(), s.clone().into());
    }
    if let Some((_, s)) = &model.tok.eos {
        tc.insert("eos_token".into(), s.clone().into());
    }
    tc.insert("add_bos_token".into(), model.tok.add_bos.into());
    if let Some(c) = &model.chat {
        tc.insert("chat_template".into(), c.template().into());
    }
    crate::util::io::write_json(&out.join("tokenizer_config.json"), &serde_json::Value::Object(tc))
}
