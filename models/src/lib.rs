//! Models written as ONNX graph builders, one file per family ([`gpt_neo`], [`bert`]) behind
//! one trait ([`Architecture`], chosen by `model_type` in [`ModelConfig`]), with the layers
//! they share ([`layers`], [`classifier`]) and the parameter scope ([`VarPath`], [`Vars`]), the parameter list ([`ParamSpec`]) and its fresh
//! initialisation ([`init_params`]). Weight files are read in [`weights`].
//!
//! A model's constructor declares every parameter as a float graph input through [`Vars`],
//! under its Hugging Face name. The resulting list of [`ParamSpec`] then keys everything else:
//! the safetensors entries, the ONNX inputs, the AdamW moments (`<name>.exp_avg`) and, later,
//! the initializers of the exported inference model.

#![deny(missing_docs)]

pub mod architecture;
pub mod bert;
pub mod bundle;
pub mod checkpoint;
pub mod classifier;
pub mod config;
pub mod distilbert;
pub mod dropout;
pub mod embedded;
pub mod gpt2;
pub mod gpt_neo;
pub mod hf_folder;
pub mod hub;
mod last_tokens;
pub mod layers;
pub mod llama;
pub mod lora;
pub mod loss;
pub mod modernbert;
pub mod weights;

pub use architecture::{Architecture, param_specs};
pub use config::ModelConfig;

use std::collections::BTreeMap;
use std::fmt::Display;

use pipe_onnx::{DType, Dim, Graph, HostTensor, Tensor};

/// How a fresh parameter is initialised.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Init {
    /// Normal draws with mean 0 and this standard deviation.
    Normal {
        /// Standard deviation.
        std: f32,
    },
    /// All zeros (biases, LayerNorm shifts).
    Zeros,
    /// All ones (LayerNorm scales).
    Ones,
    /// Uniform draws in `[-bound, bound)` (LoRA's `A`, kaiming-uniform).
    Uniform {
        /// Half-width of the interval.
        bound: f32,
    },
    /// A `[positions, dim]` table of sines (even columns) and cosines (odd columns) of
    /// `pos / 10000^(2·(j/2)/dim)`, as DistilBERT's `sinusoidal_pos_embds` starts it.
    Sinusoidal,
}

/// One declared parameter: its Hugging Face name, shape and fresh initialisation.
#[derive(Clone, Debug, PartialEq)]
pub struct ParamSpec {
    /// Full name (`transformer.h.0.attn.attention.q_proj.weight`).
    pub name: String,
    /// Shape; linear weights are `[out, in]` as PyTorch stores them.
    pub shape: Vec<i64>,
    /// Initialisation of a fresh model.
    pub init: Init,
}

impl ParamSpec {
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().map(|&d| d.max(0) as usize).product()
    }
}

/// A prefix of parameter names, extended one module at a time like candle's `vb.pp("attn")`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VarPath(String);

impl VarPath {
    /// The empty prefix (the model root).
    pub fn root() -> Self {
        VarPath(String::new())
    }

    /// `self.part`: the path of a sub-module.
    pub fn pp(&self, part: impl Display) -> Self {
        VarPath(self.join(part))
    }

    /// The full name of `leaf` under this path.
    pub fn join(&self, leaf: impl Display) -> String {
        if self.0.is_empty() {
            leaf.to_string()
        } else {
            format!("{}.{leaf}", self.0)
        }
    }

    /// The path as a string (`transformer.h.0.attn`); also used as the node-name scope.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The parameters declared so far, as graph inputs, in declaration order.
#[derive(Debug, Default)]
pub struct Vars {
    specs: Vec<ParamSpec>,
    tensors: Vec<Tensor>,
}

impl Vars {
    /// An empty list.
    pub fn new() -> Self {
        Self::default()
    }

    /// Declares the `f32` graph input `path.leaf` with a fixed `shape` and records it.
    pub fn get(
        &mut self,
        g: &mut Graph,
        path: &VarPath,
        leaf: &str,
        shape: &[i64],
        init: Init,
    ) -> pipe_onnx::Result<Tensor> {
        let name = path.join(leaf);
        let dims: Vec<Dim> = shape.iter().map(|&d| Dim::Fixed(d)).collect();
        let t = g.input(&name, DType::F32, &dims)?;
        self.specs.push(ParamSpec {
            name,
            shape: shape.to_vec(),
            init,
        });
        self.tensors.push(t);
        Ok(t)
    }

    /// The declared parameters, in declaration order.
    pub fn specs(&self) -> &[ParamSpec] {
        &self.specs
    }

    /// The graph inputs, parallel to [`Vars::specs`].
    pub fn tensors(&self) -> &[Tensor] {
        &self.tensors
    }
}

/// Elements drawn from one random stream: a fresh parameter is filled block by block, in
/// parallel, each block from its own generator.
pub const INIT_BLOCK: usize = 1 << 20;

/// Fresh values for `specs`, reproducible from `seed`, the same at any thread count.
///
/// Each parameter draws from its own streams, seeded from `seed` and the FNV-1a hash of its
/// name, so adding or reordering parameters leaves the others unchanged. A parameter is cut
/// into blocks of [`INIT_BLOCK`] elements, filled in parallel: the first block draws from the
/// parameter's seed (so a parameter of at most one block has the values of a single stream),
/// block `i` from that seed XOR a mix of `i`. The generator is xoshiro256** (seeded through
/// SplitMix64) and normals come from the Box–Muller transform.
pub fn init_params(specs: &[ParamSpec], seed: u64) -> BTreeMap<String, HostTensor> {
    use rayon::prelude::*;
    specs
        .par_iter()
        .map(|s| (s.name.clone(), init_param(s, seed)))
        .collect()
}

/// [`init_params`], each tensor through `transform` as soon as it is made (in parallel, so
/// at most one f32 tensor per thread exists at a time).
pub fn init_params_with(
    specs: &[ParamSpec],
    seed: u64,
    transform: weights::Transform,
) -> anyhow::Result<BTreeMap<String, HostTensor>> {
    use rayon::prelude::*;
    let parts = specs
        .par_iter()
        .map(|s| transform(s, weights::Pending::Fresh(init_param(s, seed))))
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(parts.into_iter().flatten().collect())
}

/// Fresh values for one parameter; see [`init_params`].
pub fn init_param(spec: &ParamSpec, seed: u64) -> HostTensor {
    let n = spec.numel();
    let base = seed ^ fnv1a(&spec.name);
    let data = match spec.init {
        Init::Zeros => vec![0.0; n],
        Init::Ones => vec![1.0; n],
        Init::Normal { std } => fill_blocks(n, base, |rng| (rng.normal() * f64::from(std)) as f32),
        Init::Uniform { bound } => fill_blocks(n, base, |rng| {
            ((rng.uniform() * 2.0 - 1.0) * f64::from(bound)) as f32
        }),
        Init::Sinusoidal => sinusoidal(&spec.shape),
    };
    HostTensor::f32(&spec.shape, data).expect("the spec's shape holds numel elements")
}

/// The table of [`Init::Sinusoidal`] for `shape` `[positions, dim]`, computed in f64.
fn sinusoidal(shape: &[i64]) -> Vec<f32> {
    let (rows, dim) = match shape {
        [rows, dim] => (*rows.max(&0) as usize, *dim.max(&0) as usize),
        _ => (0, 0),
    };
    let mut out = Vec::with_capacity(rows * dim);
    for pos in 0..rows {
        for j in 0..dim {
            let angle = pos as f64 / 10000f64.powf((2 * (j / 2)) as f64 / dim as f64);
            out.push(if j % 2 == 0 { angle.sin() } else { angle.cos() } as f32);
        }
    }
    out
}

/// `n` values, block `i` of [`INIT_BLOCK`] drawn by `draw` from the generator of
/// `base ^ mix(i)` (`base` itself for block 0), the blocks in parallel.
fn fill_blocks(n: usize, base: u64, draw: impl Fn(&mut Xoshiro256) -> f32 + Sync) -> Vec<f32> {
    use rayon::prelude::*;
    let mut data = vec![0.0f32; n];
    data.par_chunks_mut(INIT_BLOCK)
        .enumerate()
        .for_each(|(i, block)| {
            let mut rng = Xoshiro256::new(if i == 0 { base } else { base ^ mix(i as u64) });
            block.iter_mut().for_each(|x| *x = draw(&mut rng));
        });
    data
}

/// SplitMix64's increment.
const GOLDEN_GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;

/// SplitMix64's output function (Steele, Lea & Flood): a bijective mix of 64 bits.
fn splitmix_mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// SplitMix64's `i`-th output from state 0: distinct block indices give unrelated seeds.
fn mix(i: u64) -> u64 {
    splitmix_mix(i.wrapping_mul(GOLDEN_GAMMA))
}

fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// xoshiro256** (Blackman & Vigna, <https://prng.di.unimi.it/xoshiro256starstar.c>), seeded
/// with SplitMix64 as its authors recommend. Not cryptographic; reproducible everywhere.
#[derive(Clone, Debug)]
pub struct Xoshiro256 {
    s: [u64; 4],
    spare: Option<f64>,
}

impl Xoshiro256 {
    /// A generator whose whole state is derived from `seed`.
    pub fn new(seed: u64) -> Self {
        let mut x = seed;
        let mut splitmix = || {
            x = x.wrapping_add(GOLDEN_GAMMA);
            splitmix_mix(x)
        };
        Xoshiro256 {
            s: [splitmix(), splitmix(), splitmix(), splitmix()],
            spare: None,
        }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.s;
        let result = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// Uniform in `[0, 1)` with 53 random bits.
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Standard normal draw (Box–Muller; the second value of each pair is kept for the next call).
    pub fn normal(&mut self) -> f64 {
        if let Some(z) = self.spare.take() {
            return z;
        }
        // 1 - u lies in (0, 1], so the logarithm is finite.
        let r = (-2.0 * (1.0 - self.uniform()).ln()).sqrt();
        let theta = 2.0 * std::f64::consts::PI * self.uniform();
        self.spare = Some(r * theta.sin());
        r * theta.cos()
    }
}
