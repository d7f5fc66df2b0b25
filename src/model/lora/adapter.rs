//! LoRA adapters in PEFT's on-disk format: `adapter_config.json` plus `adapter_model.safetensors`
//! with keys like `base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight` (A [r, in],
//! B [out, r]) and metadata format=pt, so Python PEFT loads what mores trains and the reverse.
//! PEFT's configuration and the safetensors bytes are read and written in [`super::peft`].
use super::layer::{init_pair, rows_from_hf, rows_to_hf, LoraLayer, Target};
use super::peft::{parse_key, PeftConfig};
pub use super::peft::{read_safetensors, save_safetensors};
use crate::model::Model;
use crate::recipe::lora::Fused;
pub use crate::recipe::lora::LoraSpec;
use crate::util::error::{Error, Result};
use candle_core::{Tensor, Var};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

pub const CONFIG_FILE: &str = "adapter_config.json";
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";
/// What PEFT's files have no place for: the base model an adapter was trained on.
pub const MORES_FILE: &str = "mores_adapter.json";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BaseInfo {
    pub architecture: String,
    pub base_name: String,
    pub base_sha256: String,
}

pub struct Param {
    pub layer: usize,
    pub target: Target,
    pub a: Var,
    pub b: Var,
    pub permuted_heads: Option<usize>,
    /// Part of a fused module (Phi-3's qkv_proj, gate_up_proj): the parts of one module share
    /// one A (the same `Var`) and their B rows stacked are the module's B.
    pub fused: Option<Fused>,
}

impl Param {
    fn module_path(&self) -> &'static str {
        self.fused.map(|f| f.module_path).unwrap_or(self.target.module_path())
    }

    fn key(&self, which: &str) -> String {
        format!("base_model.model.model.layers.{}.{}.lora_{which}.weight", self.layer, self.module_path())
    }

    /// The first part of its fused module (or unfused): the one that owns A.
    fn owns_a(&self) -> bool {
        self.fused.is_none_or(|f| f.parts[0] == self.target)
    }
}

/// The LoRA parameters attached to a model. The model's linear layers hold the same `Var`s, so
/// an optimizer step on these is seen by the next forward pass.
pub struct Adapter {
    pub spec: LoraSpec,
    pub params: Vec<Param>,
}

impl Adapter {
    /// Fresh adapter: A Kaiming-uniform from `seed` (one stream per layer and module), B zeros.
    pub fn attach_new(model: &mut Model, spec: &LoraSpec, seed: u64) -> Result<Self> {
        spec.validate().map_err(Error::Invalid)?;
        let fused_model = model.fused_projections();
        spec.check_fusion(fused_model).map_err(|m| Error::model(&model.info.path, m))?;
        let targets = spec.target_modules().map_err(Error::Invalid)?;
        let device = model.device.clone();
        let n_layers = model.lora_slots().iter().map(|s| s.layer + 1).max().unwrap_or(0);
        if let Some(&bad) = spec.layers.iter().flatten().find(|&&l| l >= n_layers) {
            return Err(Error::Invalid(format!(
                "lora.layers names layer {bad}, but {} has {n_layers} decoder layers (0 to {})",
                model.info.name,
                n_layers.saturating_sub(1)
            )));
        }
        // Checked before any tensor is allocated: A is [rank, in] and B [out, rank].
        for slot in model.lora_slots() {
            if targets.contains(&slot.target) && spec.adapts_layer(slot.layer) {
                let (inp, out) = slot.linear.dims()?;
                if spec.rank > inp.min(out) {
                    return Err(Error::Invalid(format!(
                        "lora.rank = {} exceeds the width of {:?} in {} ({inp} -> {out}): choose a rank of at most {}",
                        spec.rank,
                        slot.target,
                        model.info.name,
                        inp.min(out)
                    )));
                }
            }
        }
        let mut params: Vec<Param> = Vec::new();
        for slot in model.lora_slots() {
            if !targets.contains(&slot.target) || !spec.adapts_layer(slot.layer) {
                continue;
            }
            let (inp, out) = slot.linear.dims()?;
            let fused = slot.target.fused().filter(|_| fused_model);
            // A fused module's parts share the first part's A and its dropout mask (`id`): PEFT
            // runs one dropout and one A on the fused input.
            let owner = fused.map(|f| f.parts[0]).unwrap_or(slot.target);
            let id = (slot.layer * Target::ALL.len() + owner as usize) as u64;
            let (a, b) = match params
                .iter()
                .find(|p| p.layer == slot.layer && p.target == owner && owner != slot.target)
            {
                Some(first) => (first.a.clone(), Var::zeros((out, spec.rank), candle_core::DType::F32, &device)?),
                None => init_pair(seed ^ (id + 1).wrapping_mul(0xD6E8_FEB8_6659_FD93), spec.rank, inp, out, &device)?,
            };
            slot.linear.lora =
                Some(LoraLayer { a: a.clone(), b: b.clone(), scale: spec.scale(), dropout: spec.dropout, id });
            params.push(Param {
                layer: slot.layer,
                target: slot.target,
                a,
                b,
                permuted_heads: slot.permuted_heads,
                fused,
            });
        }
        Ok(Self { spec: spec.clone(), params })
    }

    /// The trainable tensors: each A once (a fused module's parts share theirs), each B.
    pub fn vars(&self) -> Vec<Var> {
        self.named_vars().into_iter().map(|(_, v)| v).collect()
    }

    /// `vars()` with a name for each ("layer 3 qkv_proj A").
    pub fn named_vars(&self) -> Vec<(String, Var)> {
        let mut out = Vec::new();
        for p in &self.params {
            let name = p.fused.map(|f| f.peft_name).unwrap_or(p.target.peft_name());
            if p.owns_a() {
                out.push((format!("layer {} {name} A", p.layer), p.a.clone()));
            }
            let part = if p.fused.is_some() { format!(" ({} rows)", p.target.peft_name()) } else { String::new() };
            out.push((format!("layer {} {name} B{part}", p.layer), p.b.clone()));
        }
        out
    }

    /// A stable key per entry of `vars()`, for optimizer state in checkpoints: the PEFT tensor
    /// name, and for a fused module's B its part ("....qkv_proj.lora_B.weight.k_proj").
    pub fn state_keys(&self) -> Vec<String> {
        let mut out = Vec::new();
        for p in &self.params {
            if p.owns_a() {
                out.push(p.key("A"));
            }
            out.push(match p.fused {
                Some(_) => format!("{}.{}", p.key("B"), p.target.peft_name()),
                None => p.key("B"),
            });
        }
        out
    }

    /// Tensors under PEFT key names, B rows in Hugging Face order.
    pub fn peft_tensors(&self) -> Result<Vec<(String, Tensor)>> {
        let mut out = Vec::with_capacity(self.params.len() * 2);
        for (i, p) in self.params.iter().enumerate() {
            if !p.owns_a() {
                continue;
            }
            let b = match p.fused {
                // The module's B: its parts' rows in the fused weight's order.
                Some(f) => {
                    let parts: Vec<Tensor> = self.params[i..]
                        .iter()
                        .filter(|q| q.layer == p.layer && q.fused == Some(f))
                        .map(|q| q.b.as_tensor().detach())
                        .collect();
                    Tensor::cat(&parts, 0)?
                }
                None => p.b.as_tensor().detach(),
            };
            let b = match p.permuted_heads {
                Some(h) => rows_to_hf(&b, h)?,
                None => b,
            };
            out.push((p.key("A"), p.a.as_tensor().detach()));
            out.push((p.key("B"), b));
        }
        Ok(out)
    }

    /// Write `adapter_config.json` and `adapter_model.safetensors` into `dir`.
    pub fn save(&self, dir: &Path, model: &Model) -> Result<()> {
        let config = PeftConfig::from_spec(&self.spec, &model.info.path.display().to_string());
        crate::util::io::write_json(&dir.join(CONFIG_FILE), &config)?;
        // One metadata key only: safetensors writes the map in hash order, and the bytes of an
        // adapter must not change from run to run.
        let mut meta = HashMap::new();
        meta.insert("format".to_string(), "pt".to_string());
        let bytes = save_safetensors(&self.peft_tensors()?, meta)?;
        crate::util::io::atomic_write(&dir.join(WEIGHTS_FILE), &bytes)?;
        let base = BaseInfo {
            architecture: model.architecture().to_string(),
            base_name: model.info.name.clone(),
            base_sha256: model.info.sha256.clone(),
        };
        crate::util::io::write_json(&dir.join(MORES_FILE), &base)
    }

    /// Load a PEFT adapter folder (made by mores or by Python PEFT) onto `model`.
    pub fn load(model: &mut Model, dir: &Path) -> Result<Self> {
        let cfg_path = dir.join(CONFIG_FILE);
        let err = |msg: String| Error::model(dir, msg);
        if !cfg_path.exists() {
            return Err(err(format!("no {CONFIG_FILE}: not a PEFT adapter folder")));
        }
        let text = crate::util::io::read_input_text(&cfg_path, crate::util::io::Cap::Json)?;
        let cfg: PeftConfig =
            serde_json::from_str(&text).map_err(|e| Error::model(&cfg_path, format!("not a PEFT LoRA config: {e}")))?;
        let spec = cfg.to_spec().map_err(|m| Error::model(&cfg_path, m))?;
        let w_path = dir.join(WEIGHTS_FILE);
        let bytes = crate::util::io::read_input(&w_path, crate::util::io::Cap::Weights)?;
        let (tensors, _) = read_safetensors(&bytes, &model.device).map_err(|m| Error::model(&w_path, m))?;
        check_base(dir, model)?;
        let mut by_slot: BTreeMap<(usize, String), [Option<Tensor>; 2]> = BTreeMap::new();
        for (name, t) in tensors {
            let (layer, module, which) = parse_key(&name).ok_or_else(|| {
                Error::model(&w_path, format!("tensor {name:?} is not a LoRA A/B weight of a decoder layer projection"))
            })?;
            by_slot.entry((layer, module)).or_default()[which] = Some(t);
        }
        let scale = spec.scale();
        let mut params = Vec::new();
        let n_layers = model.lora_slots().iter().map(|s| s.layer + 1).max().unwrap_or(0);
        for ((layer, module), [a, b]) in by_slot {
            let (Some(a), Some(b)) = (a, b) else {
                return Err(Error::model(&w_path, format!("layer {layer} {module}: lora_A or lora_B missing")));
            };
            let last = module.rsplit('.').next().unwrap_or("");
            let single = Target::parse(last).filter(|t| t.module_path() == module);
            let fused = Fused::parse(last).filter(|f| f.module_path == module);
            let parts: Vec<Target> = match (single, fused) {
                (Some(t), _) => vec![t],
                (None, Some(f)) => f.parts.to_vec(),
                _ => return Err(Error::model(&w_path, format!("layer {layer}: unknown module {module:?}"))),
            };
            let fused_model = model.fused_projections();
            if fused.is_some() != (fused_model && parts[0].fused().is_some()) {
                return Err(Error::model(
                    &w_path,
                    format!(
                        "layer {layer} {module}: {} {}: adapter for another model family",
                        model.info.name,
                        if fused_model {
                            "fuses its projections (Phi-3: qkv_proj, gate_up_proj)"
                        } else {
                            "has no fused projections"
                        }
                    ),
                ));
            }
            if layer >= n_layers {
                return Err(Error::model(
                    &w_path,
                    format!(
                        "adapter has layer {layer} but {} has {n_layers} layers: adapter for another model",
                        model.info.name
                    ),
                ));
            }
            if !spec.adapts_layer(layer) {
                return Err(Error::model(
                    &w_path,
                    format!("layer {layer} {module}: not among the config's layers_to_transform {:?}", spec.layers),
                ));
            }
            let mut slots = model.lora_slots();
            let mut parts_of: Vec<_> =
                slots.iter_mut().filter(|s| s.layer == layer && parts.contains(&s.target)).collect();
            parts_of.sort_by_key(|s| parts.iter().position(|t| *t == s.target));
            let (inp, _) = parts_of[0].linear.dims()?;
            let outs: Vec<usize> = parts_of.iter().map(|s| s.linear.dims().map(|d| d.1)).collect::<Result<_>>()?;
            let out: usize = outs.iter().sum();
            if a.dims() != [spec.rank, inp] || b.dims() != [out, spec.rank] {
                return Err(Error::model(
                    &w_path,
                    format!(
                        "layer {layer} {module}: A {:?} / B {:?} do not fit this model (expected A [{}, {inp}], B [{out}, {}]): adapter for another model",
                        a.dims(),
                        b.dims(),
                        spec.rank,
                        spec.rank
                    ),
                ));
            }
            let a = Var::from_tensor(&a)?;
            let id = (layer * Target::ALL.len() + parts[0] as usize) as u64;
            let mut row = 0;
            for (slot, n) in parts_of.into_iter().zip(outs) {
                let b = b.narrow(0, row, n)?;
                row += n;
                let b = match slot.permuted_heads {
                    Some(h) => rows_from_hf(&b, h)?,
                    None => b,
                };
                let b = Var::from_tensor(&b)?;
                slot.linear.lora = Some(LoraLayer { a: a.clone(), b: b.clone(), scale, dropout: spec.dropout, id });
                params.push(Param {
                    layer,
                    target: slot.target,
                    a: a.clone(),
                    b,
                    permuted_heads: slot.permuted_heads,
                    fused,
                });
            }
        }
        if params.is_empty() {
            return Err(Error::model(&w_path, "no LoRA weights in the file"));
        }
        model.info.adapter = Some(crate::util::manifest::AdapterInfo {
            path: dir.to_path_buf(),
            sha256: crate::util::io::sha256_hex(&bytes),
        });
        Ok(Self { spec, params })
    }
}

/// Fold every attached adapter into its base weight (W + scale B A) and detach it. The result is
/// a plain dense model that needs no LoRA at inference.
pub fn merge_into(model: &mut Model) -> Result<usize> {
    let mut n = 0;
    for slot in model.lora_slots() {
        let Some(l) = slot.linear.lora.take() else { continue };
        let w = slot.linear.dense_weight()?;
        slot.linear.base = candle_core::quantized::QMatMul::Tensor((w + l.delta()?)?);
        n += 1;
    }
    Ok(n)
}
/// An adapter trained by mores records its base model's architecture: refuse another one.
fn check_base(dir: &Path, model: &Model) -> Result<()> {
    let base_path = dir.join(MORES_FILE);
    if base_path.exists() {
        let text = crate::util::io::read_input_text(&base_path, crate::util::io::Cap::Json)?;
        let base: BaseInfo = serde_json::from_str(&text).map_err(|e| Error::model(&base_path, e.to_string()))?;
        if base.architecture != model.architecture() {
            return Err(Error::model(
                dir,
                format!(
                    "adapter was trained on a {} model ({}), not {} ({})",
                    base.architecture,
                    base.base_name,
                    model.architecture(),
                    model.info.name
                ),
            ));
        }
    }
    Ok(())
}
