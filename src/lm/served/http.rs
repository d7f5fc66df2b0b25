//! JSON over HTTP to an OpenAI-compatible server, with a timeout per request and bounded retries
//! with exponential backoff on what a busy or restarting server answers (429, 5xx, a malformed
//! body, a refused or dropped connection). Errors name the endpoint and what to do, never the
//! API key.
use crate::util::error::{Error, Result};
use serde_json::Value;
use std::time::Duration;

/// The largest response body read (a long prompt's echoed log-probabilities with top entries).
const BODY_CAP: u64 = 256 << 20;

pub struct Client {
    agent: ureq::Agent,
    /// Base URL without a trailing slash, e.g. `http://127.0.0.1:8000/v1`.
    pub base: String,
    key: Option<String>,
    retries: u32,
    /// First backoff; doubled after each failed try.
    backoff: Duration,
}

/// Why a try failed, and whether another may succeed.
enum Fail {
    Retry(String),
    Final(String),
}

impl Client {
    pub fn new(base: &str, key: Option<String>, timeout: Duration, retries: u32) -> Self {
        let agent: ureq::Agent =
            ureq::Agent::config_builder().timeout_global(Some(timeout)).http_status_as_error(false).build().into();
        Self { agent, base: base.trim_end_matches('/').to_string(), key, retries, backoff: Duration::from_millis(250) }
    }

    pub fn get(&self, path: &str) -> Result<Value> {
        self.call(path, None)
    }

    pub fn post(&self, path: &str, body: &Value) -> Result<Value> {
        self.call(path, Some(body))
    }

    fn call(&self, path: &str, body: Option<&Value>) -> Result<Value> {
        let url = format!("{}{path}", self.base);
        let mut wait = self.backoff;
        let mut last = String::new();
        for attempt in 0..=self.retries {
            if attempt > 0 {
                std::thread::sleep(wait);
                wait = (wait * 2).min(Duration::from_secs(30));
            }
            match self.try_once(&url, body) {
                Ok(v) => return Ok(v),
                Err(Fail::Final(msg)) => return Err(Error::Invalid(format!("{url}: {msg}"))),
                Err(Fail::Retry(msg)) => last = msg,
            }
        }
        Err(Error::Invalid(format!(
            "{url}: {last} (gave up after {} tries): is the server running and serving this model? (check the endpoint, or raise retries / timeout_s)",
            self.retries + 1
        )))
    }

    fn try_once(&self, url: &str, body: Option<&Value>) -> std::result::Result<Value, Fail> {
        let sent = match body {
            Some(b) => {
                let mut req = self.agent.post(url).header("content-type", "application/json");
                if let Some(k) = &self.key {
                    req = req.header("authorization", format!("Bearer {k}"));
                }
                req.send(serde_json::to_vec(b).map_err(|e| Fail::Final(e.to_string()))?.as_slice())
            }
            None => {
                let mut req = self.agent.get(url);
                if let Some(k) = &self.key {
                    req = req.header("authorization", format!("Bearer {k}"));
                }
                req.call()
            }
        };
        let mut resp = sent.map_err(|e| Fail::Retry(format!("no answer ({})", transport(&e))))?;
        let status = resp.status().as_u16();
        let text = resp
            .body_mut()
            .with_config()
            .limit(BODY_CAP)
            .read_to_string()
            .map_err(|e| Fail::Retry(format!("answer cut short ({})", transport(&e))))?;
        let excerpt = || text.chars().take(200).collect::<String>().replace('\n', " ");
        // A server that says it cannot give log-probabilities will not change its mind on a retry.
        if !(200..300).contains(&status) && text.contains("logprobs") && text.contains("not supported") {
            return Err(Fail::Final(format!(
                "HTTP {status}: {}: this server does not return log-probabilities as started (llama.cpp's server needs --logits_all true; for a server that offers only the next token's top k set logprobs = \"top-k\")",
                excerpt()
            )));
        }
        match status {
            200..=299 => {
                serde_json::from_str(&text).map_err(|e| Fail::Retry(format!("malformed JSON in the answer ({e})")))
            }
            429 => Err(Fail::Retry("429 Too Many Requests".into())),
            500..=599 => Err(Fail::Retry(format!("HTTP {status}: {}", excerpt()))),
            401 | 403 => Err(Fail::Final(format!(
                "HTTP {status}: the server refused the credentials (set api_key_env to the variable holding the key)"
            ))),
            _ => Err(Fail::Final(format!("HTTP {status}: {}", excerpt()))),
        }
    }
}

/// A transport error in one line, without anything from the request (the key is a header).
fn transport(e: &ureq::Error) -> String {
    e.to_string().replace('\n', " ")
}
