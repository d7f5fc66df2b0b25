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

    /// The fused module this projection belongs to in a family that fuses them (Phi-3): its
    /// PEFT name, its module path and its parts in row order.
    pub fn fused(self) -> Option<Fused> {
        match self {
            Target::Q | Target::K | Target::V => Some(Fused::QKV),
            Target::Gate | Target::Up => Some(Fused::GATE_UP),
            Target::O | Target::Down => None,
        }
    }
}

/// A fused projection (Phi-3): one weight whose rows are several projections' rows, adapted by
/// one LoRA pair (one A, one B over all the rows), as PEFT sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fused {
    pub peft_name: &'static str,
    pub module_path: &'static str,
    pub parts: &'static [Target],
}

impl Fused {
    pub const QKV: Fused =
        Fused { peft_name: "qkv_proj", module_path: "self_attn.qkv_proj", parts: &[Target::Q, Target::K, Target::V] };
    pub const GATE_UP: Fused =
        Fused { peft_name: "gate_up_proj", module_path: "mlp.gate_up_proj", parts: &[Target::Gate, Target::Up] };
    pub const ALL: [Fused; 2] = [Fused::QKV, Fused::GATE_UP];

    pub fn parse(name: &str) -> Option<Fused> {
        Fused::ALL.into_iter().find(|f| f.peft_name == name)
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
        let mut out = Vec::new();
        for t in &self.targets {
            match (Target::parse(t), Fused::parse(t)) {
                (Some(one), _) => out.push(one),
                (None, Some(f)) => out.extend(f.parts),
                (None, None) => {
                    let all: Vec<&str> = Target::ALL.iter().map(|t| t.peft_name()).collect();
                    return Err(format!(
                        "lora.targets: no module {t:?} (choose from {}; Phi-3: qkv_proj, gate_up_proj, o_proj, down_proj)",
                        all.join(", ")
                    ));
                }
            }
        }
        if let Some(t) = out.iter().enumerate().find_map(|(i, t)| out[..i].contains(t).then_some(t)) {
            return Err(format!("lora.targets names {} twice (directly or through a fused module)", t.peft_name()));
        }
        Ok(out)
    }

    /// Whether the targets are named as a fused family names them (qkv_proj, gate_up_proj), and
    /// the names a model of the other kind lacks. A fused model (`fused`) cannot adapt part of a
    /// fused weight; an unfused one has no fused modules.
    pub fn check_fusion(&self, fused: bool) -> std::result::Result<(), String> {
        for t in &self.targets {
            let part_of = Target::parse(t).and_then(Target::fused);
            match (fused, part_of, Fused::parse(t)) {
                (true, Some(f), _) => {
                    return Err(format!(
                        "lora.targets names {t}, but this model fuses {} into {}: target {}",
                        f.parts.iter().map(|p| p.peft_name()).collect::<Vec<_>>().join(", "),
                        f.peft_name,
                        f.peft_name
                    ))
                }
                (false, _, Some(f)) => {
                    return Err(format!(
                        "lora.targets names {t}, a fused module (Phi-3), but this model has {} apart",
                        f.parts.iter().map(|p| p.peft_name()).collect::<Vec<_>>().join(", ")
                    ))
                }
                _ => {}
            }
        }
        Ok(())
    }

    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.rank == 0 {
            return Err("lora.rank must be at least 1".into());
        }
        // The model's own width bounds it further once the model is loaded.
        super::in_range("lora.rank", self.rank, 1, 65_536)?;
        if !(self.alpha.is_finite() && self.alpha > 0.0) {
            return Err(format!("lora.alpha = {} must be a finite number above 0", self.alpha));
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
