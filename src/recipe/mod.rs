//! Declarative experiment files (`recipes/**/*.toml`). A recipe may `include` another (path
//! relative to itself) and override any of its keys; tables merge key by key. Unknown keys are
//! errors, so a typo never silently falls back to a default.
pub mod generate;
pub mod lora;
mod train;
mod transfer;

pub use train::{Group, Objective, Schedule, Select, TrainSection, ValSplit};
pub use transfer::TransferSection;

use crate::util::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ProbeRecipe {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub model: ModelSection,
    #[serde(default)]
    pub survey: SurveySection,
    pub prompt: PromptSection,
    /// More templates for a prompt ensemble: each is probed like [prompt]; results give each
    /// template's r and the ensemble's (option probabilities averaged over templates).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub templates: Vec<PromptSection>,
    /// A country-blind template (no {country}) asked once per question: the persona effect is a
    /// country's r with its persona minus r of these country-blind answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blind: Option<PromptSection>,
    #[serde(default)]
    pub scoring: ScoringSection,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    /// Model file or folder; `--model` overrides. Relative paths are from the working directory.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// How to hold GGUF weights in memory; see [`WeightMode`].
    #[serde(default)]
    pub weights: WeightMode,
    /// Where the model runs: "cpu" (mores' kernels, the default), "cpu-generic" (candle's ops on
    /// the CPU: the path a GPU takes), "cuda" or "cuda:N" (a build with `--features cuda`). The
    /// command line's `--device` overrides it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<crate::util::device::DeviceSpec>,
    /// The float type of dense weights and activations: "f32" (default), "bf16" or "f16" (on a
    /// generic device, with weights = "f32").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dtype: Option<crate::util::device::FloatType>,
    /// A served model instead of a file: the base URL of an OpenAI-compatible server
    /// (`http://HOST:PORT/v1`: vLLM, SGLang, TGI, llama.cpp's server, Ollama).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// The model name the server serves (`GET /v1/models`); default: its only model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub served_model: Option<String>,
    /// Environment variable holding the API key sent as a bearer token (its value is never
    /// written to a manifest, log or error).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_env: Option<String>,
    /// A local copy of the model's tokenizer (a GGUF file, or a Hugging Face folder with
    /// tokenizer.json and tokenizer_config.json): its chat template renders the prompts mores
    /// sends as raw text. Needed for chat models; base models with `chat = "never"` do without.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokenizer: Option<PathBuf>,
    /// How label log-probabilities are read. "top-k" (the default): the next token's top k after
    /// the prompt and after each label's leading tokens, exact for every label token within the
    /// top k, with an upper bound on the mass outside it kept per sample as `unread_mass`; works
    /// with every OpenAI-compatible server that returns `logprobs`. "echo": the log-probabilities
    /// of `prompt + label` echoed back, exact for any label, for servers that compute prompt
    /// log-probabilities on the accelerator (vLLM, SGLang); llama-cpp-python's server computes
    /// them in Python over the whole vocabulary per token (seconds per request) and shifts them
    /// by one token for models that add no BOS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<LogprobMode>,
    /// Top-k log-probabilities asked for (default 20; vLLM's default cap is 20).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_k: Option<usize>,
    /// Requests in flight at once (default 8).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_flight: Option<usize>,
    /// Seconds one request may take before it is retried (default 300).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_s: Option<u64>,
    /// Retries of a request after a 429, a 5xx, a malformed answer or a lost connection, with
    /// exponential backoff (default 4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<u32>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum LogprobMode {
    Echo,
    #[default]
    TopK,
}

impl ModelSection {
    /// Sizes and combinations of the served-model keys.
    pub fn validate(&self, section: &str) -> std::result::Result<(), String> {
        let s = self;
        let any_served = s.served_model.is_some()
            || s.api_key_env.is_some()
            || s.tokenizer.is_some()
            || s.logprobs.is_some()
            || s.top_k.is_some()
            || s.in_flight.is_some()
            || s.timeout_s.is_some()
            || s.retries.is_some();
        if self.endpoint.is_some() && (self.device.is_some() || self.dtype.is_some()) {
            return Err(format!(
                "{section}: device and dtype are for a model run in process; a served model runs where its server does"
            ));
        }
        if let Some(t) = self.dtype {
            crate::util::device::check(self.device.unwrap_or_default(), t, self.weights == WeightMode::F32)
                .map_err(|e| format!("{section}.{e}"))?;
        }
        match &self.endpoint {
            None if any_served => {
                return Err(format!("{section}: served_model, api_key_env, tokenizer, logprobs, top_k, in_flight, timeout_s and retries need an endpoint"))
            }
            None => return Ok(()),
            Some(e) if !(e.starts_with("http://") || e.starts_with("https://")) => {
                return Err(format!("{section}.endpoint = {e:?} must be an http:// or https:// URL such as http://127.0.0.1:8000/v1"))
            }
            Some(_) => {}
        }
        in_range(&format!("{section}.top_k"), s.top_k.unwrap_or(20), 1, 1000)?;
        in_range(&format!("{section}.in_flight"), s.in_flight.unwrap_or(8), 1, 1024)?;
        in_range(&format!("{section}.timeout_s"), s.timeout_s.unwrap_or(300) as usize, 1, 86_400)?;
        in_range(&format!("{section}.retries"), s.retries.unwrap_or(4) as usize, 0, 100)?;
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum WeightMode {
    /// Quantized as stored in the file (llama.cpp's numerics).
    Stored,
    /// Q4_1/Q5_x re-quantized to Q8_0: candle has no SIMD kernel for them (KL ~3e-5 to stored).
    Q8,
    /// Dequantized to f32: the default. It is the form LoRA trains on, so a student's before and
    /// after probes share its numerics; it matches transformers within 1e-5, and batched f32
    /// matmul runs 3x faster than candle's quantized kernels on CPU (measured on SmolLM2).
    #[default]
    F32,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SurveySection {
    #[serde(default = "default_data")]
    pub data: PathBuf,
    /// ISO3 codes; empty means every country with at least `min_questions` scored questions.
    #[serde(default)]
    pub countries: Vec<String>,
    #[serde(default = "default_min_questions")]
    pub min_questions: usize,
    /// Question ids; empty means all questions (nominal ones are scored but not correlated).
    #[serde(default)]
    pub questions: Vec<String>,
    /// Restrict to these WVS categories (exact names); empty means all.
    #[serde(default)]
    pub categories: Vec<String>,
    /// Category groups (group name -> WVS categories) reported beside the categories; when
    /// absent, `category_groups.toml` in the data folder (the paper's three groups) if present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category_groups: Option<std::collections::BTreeMap<String, Vec<String>>>,
}

impl Default for SurveySection {
    fn default() -> Self {
        Self {
            data: default_data(),
            countries: vec![],
            min_questions: default_min_questions(),
            questions: vec![],
            categories: vec![],
            category_groups: None,
        }
    }
}

fn default_data() -> PathBuf {
    PathBuf::from("data/wvs")
}
fn default_min_questions() -> usize {
    50
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ChatMode {
    /// Chat template when the model has one, plain text otherwise.
    Auto,
    Always,
    Never,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PromptSection {
    #[serde(default = "default_template_name")]
    pub template_name: String,
    /// User turn. Placeholders: {country}, {question}, {options}.
    pub user: String,
    /// One line per option. Placeholders: {label}, {text}.
    #[serde(default = "default_option")]
    pub option: String,
    /// Text the answer follows. Ends with a space: both default tokenizers put the digit after a
    /// separate space token, and without it almost no mass lands on the labels.
    #[serde(default = "default_cue")]
    pub answer_cue: String,
    #[serde(default = "default_chat")]
    pub chat: ChatMode,
}

fn default_template_name() -> String {
    "persona".into()
}
fn default_option() -> String {
    "{label}. {text}".into()
}
fn default_cue() -> String {
    "Answer: ".into()
}
fn default_chat() -> ChatMode {
    ChatMode::Auto
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ScoringSection {
    #[serde(default = "default_batch")]
    pub batch: usize,
    #[serde(default)]
    pub seed: u64,
    /// Option orders each item is asked in; probabilities are mapped back to the original
    /// option codes and averaged, so a preference for a position cancels out.
    #[serde(default, skip_serializing_if = "OrderMode::is_original")]
    pub orders: OrderMode,
    /// `orders = "cyclic"` uses every cyclic shift (and its reversal) for questions with at
    /// most this many options, and original + reversed above it.
    #[serde(default = "default_cyclic_max", skip_serializing_if = "is_default_cyclic_max")]
    pub cyclic_max_options: usize,
    /// Memory for prompt prefixes kept across batches (MiB). It changes speed, never a number.
    #[serde(default = "default_prefix_cache", skip_serializing_if = "is_default_prefix_cache")]
    pub prefix_cache_mib: usize,
}

impl Default for ScoringSection {
    fn default() -> Self {
        Self {
            batch: default_batch(),
            seed: 0,
            orders: OrderMode::default(),
            cyclic_max_options: default_cyclic_max(),
            prefix_cache_mib: default_prefix_cache(),
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum OrderMode {
    /// The questionnaire's order only (the paper's setting).
    #[default]
    Original,
    /// Original and reversed.
    Reversed,
    /// Every cyclic shift of the original and of the reversed order (see `cyclic_max_options`).
    Cyclic,
}

fn default_cyclic_max() -> usize {
    5
}

// Defaults are left out of the serialised recipe so that hashes of recipes written before these
// options existed (transfer stage keys, manifests) do not change.
fn is_default_cyclic_max(n: &usize) -> bool {
    *n == default_cyclic_max()
}

impl OrderMode {
    fn is_original(&self) -> bool {
        *self == OrderMode::Original
    }
}

/// Default bound on the prefix cache: the chat header and a persona sentence per country fit
/// many times over.
pub const DEFAULT_PREFIX_CACHE_MIB: usize = 256;

fn default_prefix_cache() -> usize {
    DEFAULT_PREFIX_CACHE_MIB
}

fn is_default_prefix_cache(n: &usize) -> bool {
    *n == default_prefix_cache()
}

fn default_batch() -> usize {
    8
}

/// Read a TOML file, resolving `include` chains, into one merged table.
pub fn load_table(path: &Path) -> Result<toml::Table> {
    load_table_inner(path, 0)
}

fn load_table_inner(path: &Path, depth: usize) -> Result<toml::Table> {
    let err = |msg: String| Error::Recipe { path: path.to_path_buf(), msg };
    if depth > 8 {
        return Err(err("include chain deeper than 8 (a cycle?)".into()));
    }
    let text = crate::util::io::read_input_text(path, crate::util::io::Cap::Recipe)?;
    let mut table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        // Name the place: line and column of the syntax error, in this (possibly included) file.
        let at = e.span().map(|s| {
            let before = &text[..s.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let col = before.rsplit('\n').next().map(|l| l.chars().count()).unwrap_or(0) + 1;
            format!("line {line}, column {col}: ")
        });
        err(format!("{}{}", at.unwrap_or_default(), e.message()))
    })?;
    if let Some(inc) = table.remove("include") {
        let inc = inc.as_str().ok_or_else(|| err("include must be a path string".into()))?;
        let base_path = path.parent().unwrap_or(Path::new(".")).join(inc);
        let mut base = load_table_inner(&base_path, depth + 1)?;
        merge(&mut base, table);
        table = base;
    }
    Ok(table)
}

fn merge(base: &mut toml::Table, over: toml::Table) {
    for (k, v) in over {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

/// `key = value` must lie in `lo..=hi`: sizes from a recipe are checked against sane limits before
/// anything is allocated from them (the model-dependent limits are checked where the model is
/// loaded).
pub(crate) fn in_range(key: &str, value: usize, lo: usize, hi: usize) -> std::result::Result<(), String> {
    if (lo..=hi).contains(&value) {
        Ok(())
    } else {
        Err(format!("{key} = {value} is out of range: it must be between {lo} and {hi}"))
    }
}

/// What every recipe kind has: a name (defaulting to the file stem) and its own checks.
trait Recipe: serde::de::DeserializeOwned {
    fn name_mut(&mut self) -> &mut String;
    /// Model sections that name an endpoint are served: a `path` inherited from an included
    /// recipe is dropped.
    fn models_mut(&mut self) -> Vec<&mut ModelSection>;
    /// Survey data folders the recipe reads.
    fn data_mut(&mut self) -> Vec<&mut PathBuf>;
    fn validate(&self) -> std::result::Result<(), String>;
}

/// One `--set section.key=value` override: a dotted key path into the recipe, and a TOML value
/// (`5`, `1e-3`, `true`, `["USA", "DEU"]`, `"text"`); a value that is not TOML is taken as a
/// string, so `--set model.path=checkpoints/m.gguf` needs no quotes.
fn parse_set(set: &str) -> std::result::Result<(Vec<String>, toml::Value), String> {
    let bad = || format!("--set {set:?}: expected section.key=value, e.g. train.epochs=5");
    let (key, value) = set.split_once('=').ok_or_else(bad)?;
    let path: Vec<String> = key.trim().split('.').map(|k| k.trim().to_string()).collect();
    if path.iter().any(|k| k.is_empty() || !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')) {
        return Err(bad());
    }
    if path.first().is_some_and(|k| k == "include") {
        return Err(format!("--set {set:?}: include cannot be overridden; pass the other recipe with --recipe"));
    }
    let value = value.trim();
    let parsed = format!("v = {value}").parse::<toml::Table>().ok().and_then(|mut t| t.remove("v"));
    Ok((path, parsed.unwrap_or_else(|| toml::Value::String(value.to_string()))))
}

/// Applies `--set` overrides to a merged recipe table; a table the key path walks through is
/// created when missing (deserialisation then rejects an unknown section or key by name).
pub fn apply_sets(table: &mut toml::Table, sets: &[String]) -> std::result::Result<(), String> {
    for set in sets {
        let (path, value) = parse_set(set)?;
        let (last, parents) = path.split_last().expect("a key path has at least one part");
        let mut t = &mut *table;
        for (i, k) in parents.iter().enumerate() {
            let entry = t.entry(k.clone()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
            t = entry
                .as_table_mut()
                .ok_or_else(|| format!("--set {set:?}: {} is a value, not a section", path[..=i].join(".")))?;
        }
        t.insert(last.clone(), value);
    }
    Ok(())
}

/// Read, merge includes, deserialise (unknown keys are errors), name and validate a recipe.
fn load_recipe<R: Recipe>(path: &Path) -> Result<R> {
    load_recipe_with(path, &[])
}

/// [`load_recipe`] with `--set section.key=value` overrides applied after the includes merge.
fn load_recipe_with<R: Recipe>(path: &Path, sets: &[String]) -> Result<R> {
    let mut table = load_table(path)?;
    apply_sets(&mut table, sets).map_err(|msg| Error::Recipe { path: path.to_path_buf(), msg })?;
    if table.get("train").and_then(|t| t.get("chat")).is_some() {
        // Two chat settings could train the student on one prompt format and probe it on another.
        let msg = "train.chat is no longer read: [prompt] chat sets the chat format for the probe, the teacher and training alike (remove train.chat)";
        return Err(Error::Recipe { path: path.to_path_buf(), msg: msg.into() });
    }
    let mut r: R = toml::Value::Table(table)
        .try_into()
        .map_err(|e: toml::de::Error| Error::Recipe { path: path.to_path_buf(), msg: e.message().to_string() })?;
    for m in r.models_mut() {
        if m.endpoint.is_some() {
            m.path = None;
        }
        // Shipped models and tokenizers are found from outside the checkout too.
        m.path = m.path.take().map(|p| crate::util::paths::locate(&p));
        m.tokenizer = m.tokenizer.take().map(|p| crate::util::paths::locate(&p));
    }
    for p in r.data_mut() {
        *p = crate::util::paths::locate(p);
    }
    if r.name_mut().is_empty() {
        *r.name_mut() = path.file_stem().map(|s| s.to_string_lossy().to_string()).unwrap_or_default();
    }
    r.validate().map_err(|msg| Error::Recipe { path: path.to_path_buf(), msg })?;
    Ok(r)
}

impl Recipe for ProbeRecipe {
    fn name_mut(&mut self) -> &mut String {
        &mut self.name
    }
    fn models_mut(&mut self) -> Vec<&mut ModelSection> {
        vec![&mut self.model]
    }
    fn data_mut(&mut self) -> Vec<&mut PathBuf> {
        vec![&mut self.survey.data]
    }
    fn validate(&self) -> std::result::Result<(), String> {
        ProbeRecipe::validate(self)
    }
}

impl Recipe for DistillRecipe {
    fn name_mut(&mut self) -> &mut String {
        &mut self.name
    }
    fn models_mut(&mut self) -> Vec<&mut ModelSection> {
        std::iter::once(&mut self.student).chain(self.teacher.as_mut()).collect()
    }
    fn data_mut(&mut self) -> Vec<&mut PathBuf> {
        self.generate.as_mut().map(|g| &mut g.data).into_iter().collect()
    }
    fn validate(&self) -> std::result::Result<(), String> {
        DistillRecipe::validate(self)
    }
}

impl ProbeRecipe {
    pub fn load(path: &Path) -> Result<Self> {
        load_recipe(path)
    }

    /// [`ProbeRecipe::load`] with `--set section.key=value` overrides.
    pub fn load_with(path: &Path, sets: &[String]) -> Result<Self> {
        load_recipe_with(path, sets)
    }

    pub fn validate(&self) -> std::result::Result<(), String> {
        check_placeholders("prompt.user", &self.prompt.user, &["country", "question", "options"])?;
        check_placeholders("prompt.option", &self.prompt.option, &["label", "text"])?;
        if !self.prompt.user.contains("{question}") || !self.prompt.user.contains("{options}") {
            return Err("prompt.user must contain {question} and {options}".into());
        }
        if self.scoring.batch == 0 {
            return Err("scoring.batch must be at least 1".into());
        }
        in_range("scoring.batch", self.scoring.batch, 1, 4096)?;
        self.model.validate("model")?;
        in_range("scoring.cyclic_max_options", self.scoring.cyclic_max_options, 1, 64)?;
        // MiB shifted to bytes must not wrap: at most 1 TiB.
        in_range("scoring.prefix_cache_mib", self.scoring.prefix_cache_mib, 0, 1 << 20)?;
        in_range("survey.min_questions", self.survey.min_questions, 0, 1_000_000)?;
        let mut names = vec![self.prompt.template_name.as_str()];
        for (i, t) in self.templates.iter().enumerate() {
            let field = format!("templates[{i}]");
            check_placeholders(&format!("{field}.user"), &t.user, &["country", "question", "options"])?;
            check_placeholders(&format!("{field}.option"), &t.option, &["label", "text"])?;
            if !t.user.contains("{country}") || !t.user.contains("{question}") || !t.user.contains("{options}") {
                return Err(format!("{field}.user must contain {{country}}, {{question}} and {{options}}"));
            }
            names.push(&t.template_name);
        }
        if let Some(b) = &self.blind {
            check_placeholders("blind.user", &b.user, &["question", "options"])
                .map_err(|e| format!("{e}; the blind template names no country"))?;
            check_placeholders("blind.option", &b.option, &["label", "text"])?;
            names.push(&b.template_name);
        }
        let mut sorted = names.clone();
        sorted.sort();
        if let Some(w) = sorted.windows(2).find(|w| w[0] == w[1]) {
            return Err(format!(
                "template_name {:?} is used twice; every template (prompt, templates, blind) needs its own name",
                w[0]
            ));
        }
        Ok(())
    }
}

/// Every `{name}` in `text` must be one of `allowed`.
pub fn check_placeholders(field: &str, text: &str, allowed: &[&str]) -> std::result::Result<(), String> {
    let mut rest = text;
    while let Some(start) = rest.find('{') {
        let after = &rest[start + 1..];
        let end = after.find('}').ok_or_else(|| format!("{field}: unclosed '{{'"))?;
        let name = &after[..end];
        if !allowed.contains(&name) {
            return Err(format!(
                "{field}: unknown placeholder {{{}}} (allowed: {})",
                name.escape_debug(),
                allowed.join(", ")
            ));
        }
        rest = &after[end + 1..];
    }
    Ok(())
}

impl std::str::FromStr for WeightMode {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "stored" => Ok(Self::Stored),
            "q8" => Ok(Self::Q8),
            "f32" => Ok(Self::F32),
            _ => Err(format!("weights {s:?}: expected stored, q8 or f32")),
        }
    }
}

/// `recipes/distill/*.toml`: how a student is fine-tuned on a synthetic dataset.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DistillRecipe {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub student: ModelSection,
    #[serde(default)]
    pub lora: lora::LoraSpec,
    #[serde(default)]
    pub train: TrainSection,
    /// The teacher that writes the dataset (`mores generate`).
    #[serde(default)]
    pub teacher: Option<ModelSection>,
    #[serde(default)]
    pub generate: Option<generate::GenerateSection>,
    /// How survey items are worded for the student and the teacher: the probe's persona prompt
    /// by default, so that training and evaluation read the same way.
    #[serde(default = "default_persona_prompt")]
    pub prompt: PromptSection,
    /// `mores run`: the before/after experiment around generate and train.
    #[serde(default)]
    pub transfer: Option<TransferSection>,
}

fn yes() -> bool {
    true
}
pub fn default_persona_prompt() -> PromptSection {
    PromptSection {
        template_name: default_template_name(),
        user: "Imagine you are a person living in {country}. Answer the following survey question as they would.\nQuestion: {question}\nOptions:\n{options}".into(),
        option: default_option(),
        answer_cue: default_cue(),
        chat: default_chat(),
    }
}

fn one() -> usize {
    1
}
fn one_f() -> f64 {
    1.0
}
impl DistillRecipe {
    pub fn load(path: &Path) -> Result<Self> {
        load_recipe(path)
    }

    /// [`DistillRecipe::load`] with `--set section.key=value` overrides.
    pub fn load_with(path: &Path, sets: &[String]) -> Result<Self> {
        load_recipe_with(path, sets)
    }

    pub fn validate(&self) -> std::result::Result<(), String> {
        self.lora.validate()?;
        if let Some(g) = &self.generate {
            g.validate()?;
        }
        check_placeholders("prompt.user", &self.prompt.user, &["country", "question", "options"])?;
        check_placeholders("prompt.option", &self.prompt.option, &["label", "text"])?;
        let t = &self.train;
        if t.batch == 0 || t.grad_accum == 0 {
            return Err("train.batch and train.grad_accum must be at least 1".into());
        }
        if !(t.lr > 0.0 && t.lr.is_finite()) {
            return Err(format!("train.lr {} must be positive", t.lr));
        }
        if !(0.0..1.0).contains(&t.val_fraction) {
            return Err(format!("train.val_fraction {} must be in [0, 1)", t.val_fraction));
        }
        if t.epochs == 0 && t.max_steps.is_none() {
            return Err("train.epochs must be at least 1 (or set train.max_steps)".into());
        }
        if t.max_len < 8 {
            return Err("train.max_len must be at least 8 tokens".into());
        }
        if t.questions_per_step == 0 {
            return Err("train.questions_per_step must be at least 1".into());
        }
        in_range("train.batch", t.batch, 1, 4096)?;
        in_range("train.grad_accum", t.grad_accum, 1, 65_536)?;
        in_range("train.epochs", t.epochs, 0, 100_000)?;
        in_range("train.max_steps", t.max_steps.unwrap_or(1), 1, 1 << 32)?;
        in_range("train.warmup_steps", t.warmup_steps, 0, 1 << 32)?;
        in_range("train.max_len", t.max_len, 8, 1 << 20)?;
        in_range("train.frozen_rows_mib", t.frozen_rows_mib.unwrap_or(0), 0, 1 << 20)?;
        in_range("train.questions_per_step", t.questions_per_step, 1, 1_000_000)?;
        in_range("train.patience", t.patience, 0, 1_000_000)?;
        for (key, v) in [("train.weight_decay", t.weight_decay), ("train.eps", t.eps), ("train.clip", t.clip)] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(format!("{key} = {v} must be a finite number >= 0"));
            }
        }
        if !(0.0..1.0).contains(&t.betas.0) || !(0.0..1.0).contains(&t.betas.1) {
            return Err(format!("train.betas = [{}, {}] must each be in [0, 1)", t.betas.0, t.betas.1));
        }
        if let Some(tr) = &self.transfer {
            tr.validate()?;
        }
        if self.student.endpoint.is_some() {
            return Err("student.endpoint: the student is trained in process (LoRA needs its weights); serve the teacher instead".into());
        }
        self.student.validate("student")?;
        if let Some(t) = &self.teacher {
            t.validate("teacher")?;
        }
        if !(t.deviation >= 0.0 && t.deviation.is_finite()) {
            return Err(format!("train.deviation {} must be 0 or positive", t.deviation));
        }
        if t.deviation > 0.0 && t.group == train::Group::None {
            return Err("train.deviation needs train.group = \"question\" or \"wording\" (the term compares the countries of one question within a step)".into());
        }
        if t.patience > 0 && t.val_fraction == 0.0 {
            return Err("train.patience needs a validation share: set train.val_fraction above 0 (0.2 with val_split = \"question\" holds out a fifth of the questions)".into());
        }
        if t.val_split == train::ValSplit::Family && self.generate.is_none() {
            return Err("train.val_split = \"family\" needs a [generate] section: its survey data and leak_ngram/leak_threshold define the families".into());
        }
        if self.student.weights != WeightMode::F32 {
            return Err("student.weights must be \"f32\": quantized matmul passes no gradient".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An include chain merges table by table: the includer's keys win, untouched keys (and the
    /// included file's own includes) survive, and a nested table merges key by key.
    #[test]
    fn include_and_override_merge_key_by_key() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("base.toml"),
            "name = \"base\"\n[train]\nlr = 1e-3\nepochs = 3\n[generate]\nmode = \"survey-grounded\"\n[generate.sampling]\ntemperature = 0.7\ntop_k = 50\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("mid.toml"), "include = \"base.toml\"\n[train]\nepochs = 2\n").unwrap();
        let top = dir.path().join("top.toml");
        std::fs::write(&top, "include = \"mid.toml\"\nname = \"top\"\n[generate.sampling]\ntop_k = 5\n").unwrap();
        let r = DistillRecipe::load(&top).unwrap();
        assert_eq!(r.name, "top");
        assert_eq!((r.train.lr, r.train.epochs), (1e-3, 2));
        let g = r.generate.unwrap();
        assert_eq!(g.mode, generate::GenMode::SurveyGrounded);
        assert_eq!((g.sampling.temperature, g.sampling.top_k), (0.7, 5));
        // Defaults fill what no file sets.
        assert_eq!(r.train.batch, 4);
    }

    /// `--set` values are TOML where they parse (numbers, booleans, arrays), strings otherwise;
    /// they win over every included file, and a bad or unknown key is named.
    #[test]
    fn set_overrides_win_over_includes_and_name_bad_keys() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("base.toml"), "[train]\nlr = 1e-3\nepochs = 3\n").unwrap();
        let top = dir.path().join("top.toml");
        std::fs::write(&top, "include = \"base.toml\"\n[train]\nepochs = 2\n").unwrap();
        let sets = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let r = DistillRecipe::load_with(
            &top,
            &sets(&["train.epochs=7", "train.lr = 5e-4", "lora.targets=[\"q_proj\"]", "student.path=m/x.gguf"]),
        )
        .unwrap();
        assert_eq!((r.train.epochs, r.train.lr), (7, 5e-4));
        assert_eq!(r.lora.targets, vec!["q_proj".to_string()]);
        assert_eq!(r.student.path, Some(PathBuf::from("m/x.gguf")));
        for (bad, msg) in [
            ("train.epochs", "expected section.key=value"),
            ("train..epochs=1", "expected section.key=value"),
            ("include=x.toml", "include cannot be overridden"),
            ("train.epochs.x=1", "train.epochs is a value, not a section"),
            ("train.epoch=1", "epoch"),
            ("train.epochs=0", "train.epochs"),
        ] {
            let e = DistillRecipe::load_with(&top, &sets(&[bad])).unwrap_err().to_string();
            assert!(e.contains(msg) && !e.contains('\n'), "{bad}: {e}");
        }
    }

    /// `[train] frozen_rows_mib` only sizes a cache (results are the same whatever it holds), so
    /// leaving it unset must serialize as before: the stage keys of finished runs hash the
    /// section, and a new optional key must not mark them out of date.
    #[test]
    fn frozen_rows_mib_unset_leaves_the_train_section_serialized_as_before() {
        let unset = TrainSection::default();
        assert!(!serde_json::to_string(&unset).unwrap().contains("frozen_rows_mib"));
        let set: TrainSection = toml::from_str("frozen_rows_mib = 2048").unwrap();
        assert_eq!(set.frozen_rows_mib, Some(2048));
        assert!(serde_json::to_string(&set).unwrap().contains("\"frozen_rows_mib\":2048"));
    }
}
