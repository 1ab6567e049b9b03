//! LoRA (low-rank adaptation) with PEFT's semantics, for every family's linear layers.
//!
//! A targeted linear layer `y = x Wᵀ (+ b)` becomes `y = x Wᵀ (+ b) + (alpha / r) · (x Aᵀ) Bᵀ`
//! with `A` `[r, in]` and `B` `[out, r]` trained and `W`, `b` frozen. `A` starts
//! kaiming-uniform as `nn.init.kaiming_uniform_(a=sqrt(5))` draws it (uniform in
//! `±1/sqrt(in)`), `B` at zero, so training starts from the base model exactly. Reference:
//! PEFT's `LoraLayer` (`peft/tuners/lora/layer.py`: `update_layer`, `reset_lora_parameters`,
//! `get_delta_weight`) and its sequence-classification task, which trains the `score` head in
//! full (`modules_to_save`).
//!
//! Parameters are named as PEFT names them in memory without the adapter name
//! (`transformer.h.0.attn.attention.q_proj.lora_A.weight`); [`adapter_tensor_name`] gives the
//! name in a saved adapter (`base_model.model.` in front).

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result, bail};
use pipe_onnx::{Graph, HostTensor, Tensor};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::dropout::{Dropout, DropoutPlan, DropoutSites, Site};
use super::{Init, ParamSpec, VarPath, Vars, weights};

/// The `lora` parameter of `finetune`: PEFT's `LoraConfig` fields of the same meaning.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LoraParams {
    /// Rank of the update (`r`).
    pub r: usize,
    /// Scale numerator: the update is multiplied by `alpha / r` (`lora_alpha`).
    #[serde(default = "default_alpha")]
    pub alpha: f64,
    /// Dropout on the adapter's input (`lora_dropout`): `x` before `lora_A`, the frozen
    /// layer's input untouched.
    #[serde(default)]
    pub dropout: f64,
    /// Modules to adapt, by name (`target_modules`).
    pub targets: Vec<LoraTarget>,
}

fn default_alpha() -> f64 {
    8.0
}

/// A linear layer LoRA can adapt, by its module name (PEFT's `target_modules`), such as
/// `q_proj`: any identifier, checked against the model's layers by
/// [`LoraParams::check_targets`] once the family is known. The names per family:
/// GPT-Neo `q_proj k_proj v_proj out_proj c_fc c_proj`; BERT, RoBERTa
/// `query key value dense`; Llama, Mistral, Qwen2, Qwen3
/// `q_proj k_proj v_proj o_proj gate_proj up_proj down_proj`; GPT-2 `c_attn c_proj c_fc`;
/// DistilBERT `q_lin k_lin v_lin out_lin`; ModernBERT `Wqkv Wo Wi`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct LoraTarget(String);

impl LoraTarget {
    /// The module name `name`, when it is one (letters, digits and `_`, not starting with
    /// a digit); the message says what is wrong.
    pub fn new(name: &str) -> std::result::Result<Self, String> {
        let mut chars = name.chars();
        let ok = chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !ok {
            return Err(format!(
                "`{name}` is not a module name: write the last part of a linear layer's name, \
                 such as `q_proj` or `query`"
            ));
        }
        Ok(LoraTarget(name.to_string()))
    }

    /// The module name (`q_proj`).
    pub fn module(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for LoraTarget {
    type Error = String;

    fn try_from(name: String) -> std::result::Result<Self, String> {
        LoraTarget::new(&name)
    }
}

impl From<LoraTarget> for String {
    fn from(target: LoraTarget) -> String {
        target.0
    }
}

impl JsonSchema for LoraTarget {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "LoraTarget".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "A linear layer LoRA can adapt, by its module name (PEFT's \
                `target_modules`): GPT-Neo `q_proj k_proj v_proj out_proj c_fc c_proj`; BERT, \
                RoBERTa `query key value dense`; Llama, Mistral, Qwen2, Qwen3 `q_proj k_proj \
                v_proj o_proj gate_proj up_proj down_proj`; GPT-2 `c_attn c_proj c_fc`.",
            "type": "string",
            "pattern": "^[A-Za-z_][A-Za-z0-9_]*$",
            "examples": ["q_proj", "v_proj", "query", "value", "o_proj", "gate_proj"]
        })
    }
}

impl LoraParams {
    /// Checks the values; the message names the field.
    pub fn check(&self) -> std::result::Result<(), (&'static str, String)> {
        if self.r == 0 {
            return Err(("r", "`lora.r` must be at least 1".into()));
        }
        if !(self.alpha.is_finite() && self.alpha > 0.0) {
            return Err(("alpha", "`lora.alpha` must be a positive number".into()));
        }
        if !(self.dropout.is_finite() && (0.0..1.0).contains(&self.dropout)) {
            return Err((
                "dropout",
                format!(
                    "`lora.dropout` must be a probability in [0, 1), not {}",
                    self.dropout
                ),
            ));
        }
        if self.targets.is_empty() {
            return Err((
                "targets",
                "`lora.targets` must name at least one layer: q_proj, k_proj, v_proj, out_proj, \
                 c_fc, c_proj (GPT-Neo), query, key, value, dense (BERT, RoBERTa), q_lin, \
                 k_lin, v_lin, out_lin (DistilBERT), Wqkv, Wo, Wi (ModernBERT), q_proj, k_proj, \
                 v_proj, o_proj, gate_proj, up_proj, down_proj (Llama, Mistral, Qwen) or c_attn, \
                 c_proj, c_fc (GPT-2)"
                    .into(),
            ));
        }
        Ok(())
    }

    /// The factor of the update, `alpha / r`.
    pub fn scaling(&self) -> f64 {
        self.alpha / self.r as f64
    }

    /// Checks that every target names a layer of `config`, a `model_type` model; the message
    /// names its layers.
    pub fn check_targets(
        &self,
        config: &(impl DropoutSites + ?Sized),
        model_type: &str,
    ) -> Result<()> {
        let mut names: Vec<String> = config
            .lora_modules()
            .iter()
            .map(|(m, _)| m.rsplit('.').next().unwrap_or_default().to_string())
            .collect();
        names.sort_unstable();
        names.dedup();
        if let Some(t) = self
            .targets
            .iter()
            .find(|t| !names.iter().any(|n| n == t.module()))
        {
            bail!(
                "`lora.targets` names `{}`, which a {} model does not have; its layers are {}",
                t.module(),
                model_type,
                names.join(", ")
            );
        }
        Ok(())
    }

    /// Whether the module called `module` (`q_proj`) is adapted.
    pub fn targets(&self, module: &str) -> bool {
        self.targets.iter().any(|t| t.module() == module)
    }
}

/// The two LoRA matrices of one adapted linear layer.
#[derive(Clone, Debug)]
pub struct LoraLayer {
    a: Tensor,
    b: Tensor,
    scaling: f32,
    /// The dropout site on the adapter's input ([`lora_site`]).
    site: String,
}

impl LoraLayer {
    /// Declares `lora_A.weight` `[r, in]` and `lora_B.weight` `[out, r]` under `module` (the
    /// linear layer's path) when `lora` targets it; `None` otherwise.
    pub fn declare(
        lora: Option<&LoraParams>,
        g: &mut Graph,
        vars: &mut Vars,
        module: &VarPath,
        in_features: i64,
        out_features: i64,
    ) -> Result<Option<Self>> {
        let Some(lora) = lora else { return Ok(None) };
        let name = module.as_str().rsplit('.').next().unwrap_or_default();
        if !lora.targets(name) {
            return Ok(None);
        }
        let r = lora.r as i64;
        let bound = 1.0 / (in_features as f32).sqrt();
        let a = vars.get(
            g,
            &module.pp("lora_A"),
            "weight",
            &[r, in_features],
            Init::Uniform { bound },
        )?;
        let b = vars.get(
            g,
            &module.pp("lora_B"),
            "weight",
            &[out_features, r],
            Init::Zeros,
        )?;
        Ok(Some(LoraLayer {
            a,
            b,
            scaling: lora.scaling() as f32,
            site: lora_site(module.as_str()),
        }))
    }

    /// `base` (the frozen layer's output for `x`) plus the low-rank update of `x` through
    /// `dropout`'s site on the adapter input (a no-op without LoRA dropout).
    pub fn apply(
        &self,
        g: &mut Graph,
        x: Tensor,
        base: Tensor,
        dropout: &Dropout,
    ) -> pipe_onnx::Result<Tensor> {
        g.with_scope("lora", |g| {
            let x = dropout.apply(g, &self.site, x)?;
            let down = g.linear(x, self.a, None)?; // [.., r]
            let up = g.linear(down, self.b, None)?; // [.., out]
            let s = g.scalar(pipe_onnx::DType::F32, f64::from(self.scaling));
            let up = g.mul(up, s)?;
            g.add(base, up)
        })
    }
}

/// `x Wᵀ + b`, plus the LoRA update when `lora` is set (its input through `dropout`).
pub fn linear(
    g: &mut Graph,
    x: Tensor,
    weight: Tensor,
    bias: Option<Tensor>,
    lora: Option<&LoraLayer>,
    dropout: &Dropout,
) -> pipe_onnx::Result<Tensor> {
    let y = g.linear(x, weight, bias)?;
    match lora {
        Some(l) => l.apply(g, x, y, dropout),
        None => Ok(y),
    }
}

/// Whether `name` is a LoRA matrix.
pub fn is_lora(name: &str) -> bool {
    name.contains(".lora_A.") || name.contains(".lora_B.")
}

/// Whether a parameter is trained under LoRA: the LoRA matrices and the head.
pub fn is_trained(name: &str, head: &[&str]) -> bool {
    is_lora(name) || head.contains(&name)
}

/// The name of parameter `name` in a saved PEFT adapter.
pub fn adapter_tensor_name(name: &str) -> String {
    format!("base_model.model.{name}")
}

/// The base weights with every LoRA update merged in (`W + (alpha / r) B A`, as PEFT's
/// `merge_and_unload`), for the parameters of `base_specs`; `weights` holds base and LoRA
/// tensors by name. With `fan_in_fan_out` the weights are stored `[in, out]` (GPT-2's
/// `Conv1D`) and take the update transposed. `weights` is consumed: each base tensor moves
/// into the result, so merging holds the model once plus one tensor.
pub fn merge(
    lora: &LoraParams,
    base_specs: &[ParamSpec],
    mut weights: BTreeMap<String, HostTensor>,
    fan_in_fan_out: bool,
) -> Result<BTreeMap<String, HostTensor>> {
    let mut out = BTreeMap::new();
    for spec in base_specs {
        let w = weights
            .remove(&spec.name)
            .with_context(|| format!("no value for {}", spec.name))?;
        let merged = merge_one(lora, &spec.name, &w, &weights, fan_in_fan_out)?;
        out.insert(spec.name.clone(), merged.unwrap_or(w));
    }
    Ok(out)
}

/// The base weight `name` (value `w`) with its module's LoRA update merged in, when
/// `lora_weights` holds the module's two matrices (`None`: no update, `w` stays as it is):
/// [`merge`] one tensor at a time, for writers that hold one tensor of the model at once.
pub fn merge_one(
    lora: &LoraParams,
    name: &str,
    w: &HostTensor,
    lora_weights: &BTreeMap<String, HostTensor>,
    fan_in_fan_out: bool,
) -> Result<Option<HostTensor>> {
    let module = name.strip_suffix(".weight");
    let a = module.and_then(|m| lora_weights.get(&format!("{m}.lora_A.weight")));
    let b = module.and_then(|m| lora_weights.get(&format!("{m}.lora_B.weight")));
    match (a, b) {
        (Some(a), Some(b)) => merged_weight(w, a, b, lora.scaling() as f32, fan_in_fan_out)
            .map(Some)
            .with_context(|| format!("merging the LoRA update of {name}")),
        (None, None) => Ok(None),
        _ => bail!("{name} has only one of its two LoRA matrices"),
    }
}

/// `w + scaling · b a` for `w` `[out, in]`, `a` `[r, in]`, `b` `[out, r]`; with
/// `transposed`, `w + scaling · (b a)ᵀ` for `w` `[in, out]`.
fn merged_weight(
    w: &HostTensor,
    a: &HostTensor,
    b: &HostTensor,
    scaling: f32,
    transposed: bool,
) -> Result<HostTensor> {
    let (Some(wv), Some(av), Some(bv)) = (w.as_f32(), a.as_f32(), b.as_f32()) else {
        bail!("LoRA merging needs float32 tensors");
    };
    let w_shape = match (w.shape(), transposed) {
        (&[i, o], true) => vec![o, i],
        (shape, _) => shape.to_vec(),
    };
    let (out_f, in_f, r) = match (w_shape.as_slice(), a.shape(), b.shape()) {
        (&[o, i], &[r, i2], &[o2, r2]) if i == i2 && o == o2 && r == r2 => {
            (o as usize, i as usize, r as usize)
        }
        _ => bail!(
            "shapes do not fit: weight {:?}, lora_A {:?}, lora_B {:?}",
            w.shape(),
            a.shape(),
            b.shape()
        ),
    };
    let mut merged: Vec<f32> = match transposed {
        // The [out, in] view of w [in, out].
        true => (0..out_f * in_f)
            .map(|j| wv[(j % in_f) * out_f + j / in_f])
            .collect(),
        false => wv.to_vec(),
    };
    for o in 0..out_f {
        let brow = &bv[o * r..(o + 1) * r];
        for (i, m) in merged[o * in_f..(o + 1) * in_f].iter_mut().enumerate() {
            let delta: f32 = brow
                .iter()
                .enumerate()
                .map(|(k, &bk)| bk * av[k * in_f + i])
                .sum();
            *m += delta * scaling;
        }
    }
    if transposed {
        // Back to w's [in, out] layout.
        let back: Vec<f32> = (0..in_f * out_f)
            .map(|j| merged[(j % out_f) * in_f + j / out_f])
            .collect();
        return Ok(HostTensor::f32(w.shape(), back)?);
    }
    Ok(HostTensor::f32(w.shape(), merged)?)
}

/// The adapter file names PEFT reads.
pub const ADAPTER_CONFIG_FILE: &str = "adapter_config.json";
/// The adapter weights file.
pub const ADAPTER_WEIGHTS_FILE: &str = "adapter_model.safetensors";

/// Writes `dir/adapter_config.json` and `dir/adapter_model.safetensors` as PEFT's
/// `save_pretrained` does for a sequence-classification LoRA: the LoRA matrices and the
/// `head` parameters (PEFT's `modules_to_save`), named as in [`adapter_tensor_name`].
/// `base_model` is what `base_model_name_or_path` records (a hub id, or empty);
/// `fan_in_fan_out` says the adapted layers store their weights `[in, out]` (GPT-2).
pub fn write_adapter(
    dir: &Path,
    lora: &LoraParams,
    head: &[&str],
    base_model: &str,
    trained: &BTreeMap<String, HostTensor>,
    fan_in_fan_out: bool,
) -> Result<()> {
    fs_err::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut targets: Vec<&str> = lora.targets.iter().map(LoraTarget::module).collect();
    targets.sort_unstable();
    targets.dedup();
    // The head's top-level modules (`classifier`, not `classifier.dense`): PEFT wraps and
    // restores each whole, and refuses a RoBERTa adapter that names its sub-modules.
    let mut modules_to_save: Vec<&str> = Vec::new();
    for module in head.iter().filter_map(|p| p.split('.').next()) {
        if !modules_to_save.contains(&module) {
            modules_to_save.push(module);
        }
    }
    let config = json!({
        "peft_type": "LORA",
        "task_type": "SEQ_CLS",
        "base_model_name_or_path": base_model,
        "r": lora.r,
        "lora_alpha": lora.alpha,
        "lora_dropout": lora.dropout,
        "target_modules": targets,
        "modules_to_save": modules_to_save,
        "bias": "none",
        "fan_in_fan_out": fan_in_fan_out,
        "init_lora_weights": true,
        "inference_mode": true,
        "use_rslora": false,
        "use_dora": false,
        "layers_to_transform": null,
        "layers_pattern": null,
        "rank_pattern": {},
        "alpha_pattern": {},
    });
    let text = serde_json::to_vec_pretty(&config)?;
    let path = dir.join(ADAPTER_CONFIG_FILE);
    fs_err::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    let names: Vec<(String, &HostTensor)> = trained
        .iter()
        .filter(|(name, _)| is_trained(name, head))
        .map(|(name, t)| (adapter_tensor_name(name), t))
        .collect();
    let tensors: Vec<(&str, &HostTensor)> = names.iter().map(|(n, t)| (n.as_str(), *t)).collect();
    weights::save(&dir.join(ADAPTER_WEIGHTS_FILE), &tensors)
}

/// The dropout site on the input of the LoRA adapter of the linear layer `module`.
pub fn lora_site(module: &str) -> String {
    format!("{module}.lora_dropout")
}

impl DropoutPlan {
    /// Adds PEFT's `lora_dropout` on the input of every adapter of `lora` (when its dropout
    /// is nonzero): sites `<module>.lora_dropout` (PEFT's `lora_dropout.default`) after the
    /// model's, so the model's masks stay what they are without LoRA dropout.
    pub fn with_lora(
        mut self,
        config: &(impl DropoutSites + ?Sized),
        lora: Option<&LoraParams>,
    ) -> Self {
        let Some(lora) = lora.filter(|l| l.dropout > 0.0) else {
            return self;
        };
        for (module, shape) in config.lora_modules() {
            let leaf = module.rsplit('.').next().unwrap_or_default();
            if lora.targets(leaf) {
                self.push(Site {
                    module: lora_site(&module),
                    shape,
                    p: lora.dropout,
                });
            }
        }
        self
    }
}
