//! PEFT's side of an adapter: `adapter_config.json` ([`PeftConfig`], the options mores honours and
//! the ones it refuses), the tensor names of `adapter_model.safetensors`, and reading and writing
//! safetensors bytes.
use crate::recipe::lora::LoraSpec;
use crate::util::error::{Error, Result};
use candle_core::Tensor;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// "base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight" -> (3, "self_attn.q_proj", 0).
/// PEFT also writes an adapter name before ".weight" in some versions ("lora_A.default.weight").
pub(super) fn parse_key(name: &str) -> Option<(usize, String, usize)> {
    let rest = name.strip_prefix("base_model.model.")?;
    let rest = rest.strip_prefix("model.layers.")?;
    let (layer, rest) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (module, tail) = rest.split_once(".lora_")?;
    let which = match tail {
        "A.weight" | "A.default.weight" => 0,
        "B.weight" | "B.default.weight" => 1,
        _ => return None,
    };
    Some((layer, module.to_string(), which))
}

/// The subset of PEFT's LoraConfig that mores writes and understands. Fields mores cannot honour
/// (DoRA, bias training, fan-in-fan-out, per-layer patterns) are rejected on load, not ignored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeftConfig {
    pub peft_type: String,
    #[serde(default)]
    pub task_type: Option<String>,
    pub r: usize,
    pub lora_alpha: f64,
    #[serde(default)]
    pub lora_dropout: f64,
    pub target_modules: serde_json::Value,
    #[serde(default)]
    pub bias: Option<String>,
    #[serde(default)]
    pub use_rslora: bool,
    #[serde(default)]
    pub use_dora: bool,
    #[serde(default)]
    pub fan_in_fan_out: bool,
    #[serde(default)]
    pub base_model_name_or_path: Option<String>,
    #[serde(default)]
    pub inference_mode: bool,
    #[serde(default)]
    pub rank_pattern: serde_json::Value,
    #[serde(default)]
    pub alpha_pattern: serde_json::Value,
    #[serde(default)]
    pub modules_to_save: serde_json::Value,
    #[serde(default)]
    pub layers_to_transform: serde_json::Value,
    #[serde(default, skip_serializing)]
    pub lora_bias: bool,
    #[serde(default, skip_serializing)]
    pub target_parameters: serde_json::Value,
    #[serde(default, skip_serializing)]
    pub layer_replication: serde_json::Value,
    #[serde(default, skip_serializing)]
    pub trainable_token_indices: serde_json::Value,
    #[serde(default, skip_serializing)]
    pub exclude_modules: serde_json::Value,
}

impl PeftConfig {
    pub(super) fn from_spec(s: &LoraSpec, base: &str) -> Self {
        Self {
            peft_type: "LORA".into(),
            task_type: Some("CAUSAL_LM".into()),
            r: s.rank,
            lora_alpha: s.alpha,
            lora_dropout: s.dropout,
            target_modules: serde_json::json!(s.targets),
            bias: Some("none".into()),
            use_rslora: s.rslora,
            use_dora: false,
            fan_in_fan_out: false,
            base_model_name_or_path: Some(base.into()),
            inference_mode: true,
            rank_pattern: serde_json::json!({}),
            alpha_pattern: serde_json::json!({}),
            modules_to_save: serde_json::Value::Null,
            layers_to_transform: match &s.layers {
                Some(l) => serde_json::json!(l),
                None => serde_json::Value::Null,
            },
            lora_bias: false,
            target_parameters: serde_json::Value::Null,
            layer_replication: serde_json::Value::Null,
            trainable_token_indices: serde_json::Value::Null,
            exclude_modules: serde_json::Value::Null,
        }
    }

    pub(super) fn to_spec(&self) -> std::result::Result<LoraSpec, String> {
        if self.peft_type != "LORA" {
            return Err(format!("peft_type {:?}: only LORA adapters are supported", self.peft_type));
        }
        let empty = |v: &serde_json::Value| v.is_null() || v.as_object().is_some_and(|o| o.is_empty());
        if self.use_dora
            || self.fan_in_fan_out
            || self.bias.as_deref().is_some_and(|b| b != "none")
            || !empty(&self.rank_pattern)
            || !empty(&self.alpha_pattern)
            || !self.modules_to_save.is_null()
            || self.lora_bias
            || !self.target_parameters.is_null()
            || !self.layer_replication.is_null()
            || !self.trainable_token_indices.is_null()
            || !empty(&self.exclude_modules)
        {
            return Err("uses LoRA options mores does not support (DoRA, bias, fan_in_fan_out, rank/alpha patterns, modules_to_save, lora_bias, target_parameters, layer_replication, trainable_token_indices, exclude_modules)".into());
        }
        let targets: Vec<String> = match &self.target_modules {
            serde_json::Value::Array(a) => a.iter().filter_map(|v| v.as_str().map(String::from)).collect(),
            serde_json::Value::String(s) => vec![s.clone()],
            _ => return Err("target_modules must be a list of module names".into()),
        };
        // PEFT accepts one layer index or a list.
        let layers = match &self.layers_to_transform {
            serde_json::Value::Null => None,
            serde_json::Value::Number(n) => {
                Some(vec![n.as_u64().ok_or("layers_to_transform must be a layer index")? as usize])
            }
            serde_json::Value::Array(a) => Some(
                a.iter()
                    .map(|v| v.as_u64().map(|x| x as usize).ok_or("layers_to_transform must list layer indices"))
                    .collect::<std::result::Result<Vec<_>, _>>()?,
            ),
            _ => return Err("layers_to_transform must be a layer index or a list of them".into()),
        };
        let spec = LoraSpec {
            rank: self.r,
            alpha: self.lora_alpha,
            dropout: self.lora_dropout,
            targets,
            rslora: self.use_rslora,
            layers,
        };
        spec.validate()?;
        Ok(spec)
    }
}

pub fn save_safetensors(tensors: &[(String, Tensor)], meta: HashMap<String, String>) -> Result<Vec<u8>> {
    let data: Vec<(String, Vec<u8>, Vec<usize>)> = tensors
        .iter()
        .map(|(k, t)| {
            let v = t.to_dtype(candle_core::DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
            Ok((k.clone(), v.iter().flat_map(|x| x.to_le_bytes()).collect(), t.dims().to_vec()))
        })
        .collect::<Result<_>>()?;
    let views: Vec<(String, safetensors::tensor::TensorView)> = data
        .iter()
        .map(|(k, b, s)| {
            let v = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)
                .map_err(|e| Error::Invalid(format!("safetensors: {e}")))?;
            Ok((k.clone(), v))
        })
        .collect::<Result<_>>()?;
    safetensors::serialize(views, Some(meta)).map_err(|e| Error::Invalid(format!("safetensors: {e}")))
}

type Loaded = (Vec<(String, Tensor)>, HashMap<String, String>);

pub fn read_safetensors(bytes: &[u8], device: &candle_core::Device) -> std::result::Result<Loaded, String> {
    let (_, meta) =
        safetensors::SafeTensors::read_metadata(bytes).map_err(|e| format!("not a safetensors file: {e}"))?;
    let st = safetensors::SafeTensors::deserialize(bytes).map_err(|e| format!("not a safetensors file: {e}"))?;
    let mut out = Vec::new();
    for (name, view) in st.tensors() {
        let dtype = match view.dtype() {
            safetensors::Dtype::F32 => candle_core::DType::F32,
            safetensors::Dtype::F16 => candle_core::DType::F16,
            safetensors::Dtype::BF16 => candle_core::DType::BF16,
            d => return Err(format!("tensor {name}: unsupported dtype {d:?}")),
        };
        let t = Tensor::from_raw_buffer(view.data(), dtype, view.shape(), device)
            .and_then(|t| t.to_dtype(candle_core::DType::F32))
            .map_err(|e| format!("tensor {name}: {e}"))?;
        out.push((name, t));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok((out, meta.metadata().clone().unwrap_or_default()))
}
