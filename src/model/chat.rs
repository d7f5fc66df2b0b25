//! Chat templates from the model's own metadata (`tokenizer.chat_template` in GGUF,
//! `chat_template` in tokenizer_config.json), rendered with minijinja the way transformers does
//! (trim_blocks, lstrip_blocks, Python string methods).
use crate::util::error::{Error, Result};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Message {
    pub role: String,
    pub content: String,
}

#[derive(Debug, Clone)]
pub struct ChatTemplate {
    pub source: String,
    text: String,
    env: minijinja::Environment<'static>,
}

impl ChatTemplate {
    pub fn new(template: String, source: String) -> Result<Self> {
        let mut env = minijinja::Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |msg: String| -> std::result::Result<String, minijinja::Error> {
            Err(minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, msg))
        });
        env.add_template_owned("chat", template.clone())
            .map_err(|e| Error::Invalid(format!("chat template from {source} does not parse: {e}")))?;
        Ok(Self { source, text: template, env })
    }

    /// The template's Jinja source.
    pub fn template(&self) -> &str {
        &self.text
    }

    pub fn render(&self, messages: &[Message], bos: &str, eos: &str, add_generation_prompt: bool) -> Result<String> {
        let tmpl = self.env.get_template("chat").expect("template added in new");
        tmpl.render(minijinja::context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => bos,
            eos_token => eos,
        })
        .map_err(|e| Error::Invalid(format!("chat template from {}: {e}", self.source)))
    }
}
