//! A model served over an OpenAI-compatible API (vLLM, SGLang, TGI, llama.cpp's server,
//! Ollama), probed and used as the teacher with the same prompts, rules and statistics as a
//! model in process.
//!
//! - Prompts are rendered by mores (the chat template of a local copy of the model's tokenizer,
//!   or plain text with `chat = "never"`) and sent as raw text to `/v1/completions`, so the string
//!   scored is the one `samples.jsonl` records.
//! - Option labels are scored from the server's log-probabilities by the in-process rule
//!   (`score.rs` here): exactly from the prompt's echoed log-probabilities, or from the next
//!   token's top k where a server offers only those, with the mass it could not read recorded.
//! - Text comes from `/v1/completions` with the record's seed.
//! - `http.rs`: requests with a timeout, bounded retries and backoff; errors name the endpoint.
mod http;
mod score;

use super::{Generated, Lm};
use crate::model::chat::ChatTemplate;
use crate::model::radix::PrefixCache;
use crate::model::tokenizer::Tok;
use crate::recipe::generate::Sampling;
use crate::recipe::{LogprobMode, ModelSection};
use crate::score::{OptionScores, ScoreRequest};
use crate::util::error::{Error, Result};
use crate::util::manifest::{ModelInfo, ServedInfo};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::Duration;

pub use http::Client;

pub struct Served {
    client: Client,
    /// The model id the server reports.
    pub model_id: String,
    tok: Option<Tok>,
    chat: Option<ChatTemplate>,
    mode: LogprobMode,
    top_k: usize,
    in_flight: usize,
    info: ModelInfo,
}

impl Served {
    /// Reach the server at `section.endpoint`, check that it serves the model, and read the
    /// local tokenizer when one is named.
    pub fn connect(section: &ModelSection) -> Result<Self> {
        let endpoint = section.endpoint.clone().ok_or_else(|| Error::Invalid("no endpoint".into()))?;
        let key = match &section.api_key_env {
            Some(var) => Some(std::env::var(var).map_err(|_| {
                Error::Invalid(format!(
                    "api_key_env = {var:?}: the variable is not set; export it with the server's API key"
                ))
            })?),
            None => None,
        };
        let timeout = Duration::from_secs(section.timeout_s.unwrap_or(300));
        let client = Client::new(&endpoint, key, timeout, section.retries.unwrap_or(4));
        let model_id = pick_model(&client, section.served_model.as_deref())?;
        let (tok, chat) = match &section.tokenizer {
            Some(p) => {
                let (t, c) = crate::model::load_tokenizer(p)?;
                (Some(t), c)
            }
            None => (None, None),
        };
        let mode = section.logprobs.unwrap_or_default();
        let top_k = section.top_k.unwrap_or(20);
        let in_flight = section.in_flight.unwrap_or(8);
        let tokenizer_sha = match &section.tokenizer {
            Some(p) if p.is_file() => crate::util::io::sha256_file(p)?,
            Some(p) => crate::util::io::sha256_file(&p.join("tokenizer.json"))?,
            None => "-".into(),
        };
        let mode_name = match mode {
            LogprobMode::Echo => "echo".to_string(),
            LogprobMode::TopK => format!("top-{top_k}"),
        };
        let info = ModelInfo {
            name: model_id.clone(),
            path: PathBuf::from(&endpoint),
            architecture: "served".into(),
            format: "openai-completions".into(),
            sha256: crate::util::io::sha256_hex(format!("served|{model_id}|{mode_name}|{tokenizer_sha}").as_bytes()),
            tokenizer: match (&tok, mode) {
                (Some(t), LogprobMode::TopK) => t.source.clone(),
                (_, LogprobMode::Echo) => "the server's (label spans from its echoed tokens)".into(),
                (None, LogprobMode::TopK) => "none".into(),
            },
            chat_template: chat.as_ref().map(|c| c.source.clone()),
            vocab_size: tok.as_ref().map(|t| t.vocab_size()).unwrap_or(0),
            adapter: None,
            served: Some(ServedInfo {
                endpoint,
                model_id: model_id.clone(),
                logprobs: mode_name,
                local_tokenizer: section.tokenizer.clone(),
                api_key_env: section.api_key_env.clone(),
                in_flight,
                timeout_s: timeout.as_secs(),
                retries: section.retries.unwrap_or(4),
            }),
            device: None,
        };
        if mode == LogprobMode::TopK && tok.is_none() {
            return Err(Error::Invalid(
                "a served model is scored from its top-k log-probabilities (logprobs = \"top-k\", the default), which needs a local copy of its tokenizer to know each label's tokens: set tokenizer = PATH (the model's GGUF file or Hugging Face folder; --tokenizer on the command line), or logprobs = \"echo\" for a server that echoes prompt log-probabilities".into(),
            ));
        }
        Ok(Self { client, model_id, tok, chat, mode, top_k, in_flight, info })
    }

    fn completion(&self, body: Value) -> Result<Value> {
        let v = self.client.post("/completions", &body)?;
        v.get("choices").and_then(|c| c.get(0)).cloned().ok_or_else(|| {
            Error::Invalid(format!(
                "{}/completions: the answer has no choices[0]: not an OpenAI-compatible server?",
                self.client.base
            ))
        })
    }
}

/// The served model's id: the one named, checked against `/v1/models`, or the server's only one.
fn pick_model(client: &Client, wanted: Option<&str>) -> Result<String> {
    let v = client.get("/models")?;
    let ids: Vec<String> = v
        .get("data")
        .and_then(|d| d.as_array())
        .map(|a| a.iter().filter_map(|m| m.get("id").and_then(|i| i.as_str()).map(String::from)).collect())
        .unwrap_or_default();
    let url = format!("{}/models", client.base);
    match (wanted, ids.as_slice()) {
        (_, []) => Err(Error::Invalid(format!("{url}: lists no model: not an OpenAI-compatible server?"))),
        (Some(w), ids) if ids.iter().any(|i| i == w) => Ok(w.to_string()),
        (Some(w), ids) => Err(Error::Invalid(format!(
            "{url}: does not serve {w:?} (it serves {}): set served_model to one of them",
            ids.join(", ")
        ))),
        (None, [one]) => Ok(one.clone()),
        (None, ids) => {
            Err(Error::Invalid(format!("{url}: serves {}: set served_model to one of them", ids.join(", "))))
        }
    }
}

impl Lm for Served {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn scoring_id(&self) -> String {
        self.info.sha256.clone()
    }

    fn is_chat(&self) -> bool {
        self.chat.is_some()
    }

    fn render_chat(&self, user: &str) -> Result<String> {
        let tok = self.tok.as_ref().ok_or_else(|| {
            Error::Invalid(format!(
                "{}: a chat prompt needs the model's chat template: set tokenizer = PATH (its GGUF file or Hugging Face folder), or chat = \"never\"",
                self.model_id
            ))
        })?;
        crate::model::render_user_turn(self.chat.as_ref(), tok, &self.info.path, user)
    }

    fn score(&self, items: &[ScoreRequest], _cache: &mut PrefixCache) -> Result<Vec<OptionScores>> {
        score::score_all(self, items)
    }

    fn complete(&self, prompt: &str, s: &Sampling, rng: &mut ChaCha8Rng) -> Result<Generated> {
        // The record's own stream gives the server's seed, so a record is the same on a rerun
        // wherever the server honours seeds.
        let seed: u32 = rng.random();
        let mut body = json!({
            "model": self.model_id,
            "prompt": prompt,
            "max_tokens": s.max_new_tokens,
            "temperature": s.temperature,
            "top_p": s.top_p,
            "seed": seed,
        });
        if s.top_k > 0 {
            body["top_k"] = json!(s.top_k);
        }
        if s.repetition_penalty != 1.0 {
            // vLLM's and llama.cpp's names for the same multiplicative penalty.
            body["repetition_penalty"] = json!(s.repetition_penalty);
            body["repeat_penalty"] = json!(s.repetition_penalty);
        }
        if !s.stop.is_empty() {
            body["stop"] = json!(s.stop);
        }
        let c = self.completion(body)?;
        let text = c.get("text").and_then(|t| t.as_str()).unwrap_or_default().to_string();
        let finish = match c.get("finish_reason").and_then(|f| f.as_str()) {
            Some("length") => "length",
            _ => "stop",
        };
        let n_tokens = c.get("usage").and_then(|u| u.get("completion_tokens")).and_then(|n| n.as_u64()).unwrap_or(0);
        Ok(Generated { text, n_tokens: n_tokens as usize, finish })
    }

    fn parallelism(&self) -> usize {
        self.in_flight
    }
}
