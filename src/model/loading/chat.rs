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

/// Template instructions one render may run: real chat templates need a few thousand for a
/// conversation; a hostile one (nested `range(100000)` loops, a lazily repeated huge list) stops
/// here within a fraction of a second instead of running for minutes.
const FUEL: u64 = 2_000_000;
/// Longest rendered prompt accepted, in bytes: far above any real chat wrapping of a survey item.
const MAX_RENDERED: usize = 1 << 20;
/// Largest single value a render may build (a string doubled in a loop needs few instructions
/// but unbounded memory; fuel cannot see it). Enforced by the binary's allocator.
const MAX_VALUE: usize = 32 << 20;

#[derive(Debug, Clone)]
pub struct ChatTemplate {
    pub source: String,
    text: String,
    env: minijinja::Environment<'static>,
    /// The error a render over `MAX_VALUE` ends the process with.
    too_large: String,
}

impl ChatTemplate {
    pub fn new(template: String, source: String) -> Result<Self> {
        let mut env = minijinja::Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_fuel(Some(FUEL));
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |msg: String| -> std::result::Result<String, minijinja::Error> {
            Err(minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, msg))
        });
        env.add_template_owned("chat", template.clone())
            .map_err(|e| Error::Invalid(format!("chat template from {source} does not parse: {e}")))?;
        let too_large = format!(
            "chat template from {source} built one value over {MAX_VALUE} bytes (a string doubled in a loop?); use chat = \"never\" to prompt without it"
        );
        Ok(Self { source, text: template, env, too_large })
    }

    /// The template's Jinja source.
    pub fn template(&self) -> &str {
        &self.text
    }

    pub fn render(&self, messages: &[Message], bos: &str, eos: &str, add_generation_prompt: bool) -> Result<String> {
        let tmpl = self.env.get_template("chat").expect("template added in new");
        let _cap = crate::util::alloc::cap_allocations(MAX_VALUE, &self.too_large);
        tmpl.render(minijinja::context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => bos,
            eos_token => eos,
        })
        .map_err(|e| {
            let why = if e.kind() == minijinja::ErrorKind::OutOfFuel {
                format!("ran more than {FUEL} template instructions (a runaway loop?)")
            } else {
                e.to_string()
            };
            Error::Invalid(format!("chat template from {}: {why}; use chat = \"never\" to prompt without it", self.source))
        })
        .and_then(|out| {
            if out.len() > MAX_RENDERED {
                return Err(Error::Invalid(format!(
                    "chat template from {} rendered {} bytes for one message (limit {MAX_RENDERED}); use chat = \"never\"",
                    self.source,
                    out.len()
                )));
            }
            Ok(out)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(t: &str) -> Result<String> {
        let c = ChatTemplate::new(t.into(), "test".into())?;
        c.render(&[Message { role: "user".into(), content: "hi".into() }], "", "", true)
    }

    #[test]
    fn runaway_templates_stop_with_a_clear_error() {
        let t0 = std::time::Instant::now();
        let nested = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}";
        let e = render(nested).unwrap_err().to_string();
        assert!(e.contains("template instructions") && e.contains("chat = \"never\""), "{e}");
        let e = render("{% for x in [1] * 2000000000 %}{{ x }}{% endfor %}").unwrap_err().to_string();
        assert!(e.contains("chat template from test"), "{e}");
        let e = render("{{ 'x' * 5000000 }}").unwrap_err().to_string();
        assert!(e.contains("rendered 5000000 bytes"), "{e}");
        assert!(t0.elapsed().as_secs() < 10, "bounded time: {:?}", t0.elapsed());
        assert_eq!(render("{{ messages[0].content }}!").unwrap(), "hi!");
    }
}
