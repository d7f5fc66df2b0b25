//! manifest.json: everything needed to reproduce a run's numbers.
use crate::util::error::Result;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    pub command: Vec<String>,
    pub mores_version: String,
    pub crates: BTreeMap<String, String>,
    pub git_commit: Option<String>,
    pub git_dirty: Option<bool>,
    pub recipe: serde_json::Value,
    pub recipe_sha256: String,
    pub model: ModelInfo,
    /// sha256 of every input data file.
    pub inputs: BTreeMap<String, String>,
    pub seed: u64,
    pub threads: usize,
    pub batch: usize,
    pub shard: Option<crate::util::shard::Shard>,
    pub device: String,
    pub dtype: String,
    pub started: String,
}

pub fn crate_versions() -> BTreeMap<String, String> {
    env!("MORES_DEP_VERSIONS")
        .split(',')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

pub fn git() -> (Option<String>, Option<bool>) {
    let run = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let commit = run(&["rev-parse", "HEAD"]);
    let dirty =
        commit.as_ref().and_then(|_| run(&["status", "--porcelain", "--untracked-files=no"])).map(|s| !s.is_empty());
    (commit, dirty)
}

pub fn hash_inputs(files: &[&Path]) -> Result<BTreeMap<String, String>> {
    let mut m = BTreeMap::new();
    for f in files {
        m.insert(f.display().to_string(), crate::util::io::sha256_file(f)?);
    }
    Ok(m)
}

pub fn now_utc() -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    format!("{secs} (unix seconds)")
}

/// What a run manifest records about a model.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ModelInfo {
    pub name: String,
    pub path: PathBuf,
    pub architecture: String,
    pub format: String,
    pub sha256: String,
    pub tokenizer: String,
    pub chat_template: Option<String>,
    pub vocab_size: usize,
    /// A LoRA adapter applied on top (folder and sha256 of its weights file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adapter: Option<AdapterInfo>,
    /// A served model: where and how it was reached.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub served: Option<ServedInfo>,
    /// The device and float type when not mores' CPU kernels in f32 (e.g. "cuda:0 bf16").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
}

/// What a manifest records about a served model: never the API key, only the variable's name.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ServedInfo {
    pub endpoint: String,
    /// The model's id as the server reports it (`/v1/models`).
    pub model_id: String,
    /// "echo" or "top-K": how label log-probabilities were read.
    pub logprobs: String,
    /// The local tokenizer whose chat template rendered the prompts.
    pub local_tokenizer: Option<PathBuf>,
    pub api_key_env: Option<String>,
    pub in_flight: usize,
    pub timeout_s: u64,
    pub retries: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AdapterInfo {
    pub path: PathBuf,
    pub sha256: String,
}
