//! The `[lora]` section: which projections an adapter adapts (named as PEFT names them), its
//! rank, alpha, dropout and scaling.
use serde::{Deserialize, Serialize};

/// A projection inside a decoder layer that LoRA can adapt, named as PEFT names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    Q,
    K,
    V,
    O,
    Gate,
    Up,
    Down,
}

impl Target {
    pub const ALL: [Target; 7] = [Target::Q, Target::K, Target::V, Target::O, Target::Gate, Target::Up, Target::Down];

    /// PEFT's `target_modules` name.
    pub fn peft_name(self) -> &'static str {
        match self {
            Target::Q => "q_proj",
            Target::K => "k_proj",
            Target::V => "v_proj",
            Target::O => "o_proj",
            Target::Gate => "gate_proj",
            Target::Up => "up_proj",
            Target::Down => "down_proj",
        }
    }

    /// Module path inside `model.layers.N` (Hugging Face and PEFT key names).
    pub fn module_path(self) -> &'static str {
        match self {
            Target::Q => "self_attn.q_proj",
            Target::K => "self_attn.k_proj",
            Target::V => "self_attn.v_proj",
            Target::O => "self_attn.o_proj",
            Target::Gate => "mlp.gate_proj",
            Target::Up => "mlp.up_proj",
            Target::Down => "mlp.down_proj",
        }
    }

    pub fn parse(name: &str) -> Option<Target> {
        Target::ALL.into_iter().find(|t| t.peft_name() == name)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LoraSpec {
    #[serde(default = "default_rank")]
    pub rank: usize,
    #[serde(default = "default_alpha")]
    pub alpha: f64,
    #[serde(default)]
    pub dropout: f64,
    /// PEFT module names: q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj.
    #[serde(default = "default_targets")]
    pub targets: Vec<String>,
    /// Scale alpha / sqrt(rank) instead of alpha / rank (rsLoRA).
    #[serde(default)]
    pub rslora: bool,
    /// Decoder layers to adapt (0-based; PEFT's `layers_to_transform`); absent: every layer.
    /// Adapting only upper layers leaves the layers below frozen, so training runs them without
    /// gradients and keeps their output per row across steps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layers: Option<Vec<usize>>,
}

fn default_rank() -> usize {
    8
}
fn default_alpha() -> f64 {
    16.0
}
fn default_targets() -> Vec<String> {
    vec!["q_proj".into(), "v_proj".into()]
}

impl Default for LoraSpec {
    fn default() -> Self {
        Self {
            rank: default_rank(),
            alpha: default_alpha(),
            dropout: 0.0,
            targets: default_targets(),
            rslora: false,
            layers: None,
        }
    }
}

impl LoraSpec {
    pub fn scale(&self) -> f64 {
        if self.rslora {
            self.alpha / (self.rank as f64).sqrt()
        } else {
            self.alpha / self.rank as f64
        }
    }

    pub fn target_modules(&self) -> std::result::Result<Vec<Target>, String> {
        if self.targets.is_empty() {
            return Err("lora.targets is empty: name at least one module".into());
        }
        self.targets
            .iter()
            .map(|t| {
                Target::parse(t).ok_or_else(|| {
                    let all: Vec<&str> = Target::ALL.iter().map(|t| t.peft_name()).collect();
                    format!("lora.targets: no module {t:?} in this model (choose from {})", all.join(", "))
                })
            })
            .collect()
    }

    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.rank == 0 {
            return Err("lora.rank must be at least 1".into());
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(format!("lora.dropout {} must be in [0, 1)", self.dropout));
        }
        if let Some(l) = &self.layers {
            if l.is_empty() {
                return Err("lora.layers is empty: name at least one decoder layer, or leave it out for all".into());
            }
            if l.windows(2).any(|w| w[0] >= w[1]) {
                return Err(format!("lora.layers {l:?} must be increasing, without repeats"));
            }
        }
        self.target_modules().map(|_| ())
    }

    /// Whether decoder layer `layer` is adapted.
    pub fn adapts_layer(&self, layer: usize) -> bool {
        self.layers.as_ref().is_none_or(|l| l.contains(&layer))
    }
}
