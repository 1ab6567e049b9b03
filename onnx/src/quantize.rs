//! Frozen weights in fewer bits (QLoRA's idea on ONNX Runtime's CPU kernels).
//!
//! Under LoRA or partial fine-tuning the frozen weights take no gradient, so they need no
//! f32 copy: [`crate::Graph::quantize_frozen`] rewrites the matrix products that read them,
//! and [`QuantizedWeight::quantize`] makes the inputs those products take.
//!
//! - [`FrozenDType::Int8`]: symmetric, one scale per output channel, `q = round(w / s)` in
//!   `[-127, 127]` with `s = max |w| / 127`. The forward product is ONNX Runtime's
//!   `DynamicQuantizeMatMul` (the activations quantized to uint8 per tensor on the fly, integer
//!   products, as `torch.ao.quantization.quantize_dynamic` computes); the input gradient
//!   `dY · W` is the same kernel on `dY ⊙ s` and the same integers transposed. Both layouts
//!   are kept: 2 bytes per weight instead of 4.
//! - [`FrozenDType::Int4`]: 4-bit blocks of [`INT4_BLOCK`] weights along the input axis,
//!   packed two per byte as `MatMulNBits` reads them (low nibble first), each nibble
//!   `q + 8` with `q` in `[-7, 7]`. The blocks' scales are nested in a per-row int8 grid:
//!   block `b` of row `r` has the scale `m_b · s_r`, with `s_r = max |w_r| / 126` and an
//!   integer multiplier `m_b = ceil(max |w_b| / (7 s_r))` in `[1, 18]`. So `q · m_b` is an
//!   integer in `[-126, 126]`: on the CPU one pass per product unpacks the blocks to exact
//!   int8 weights with the row's scale, and both the forward and the input gradient run
//!   `DynamicQuantizeMatMul` as int8 does, from one 4-bit copy (pipe's `Int4ToInt8` kernels).
//!   Elsewhere the blocks are dequantized to f32 for each product (`GatherBlockQuantized`).
//!   Half a byte per weight, a byte per block and a scale per row.
//! - Where the CPU's uint8 × int8 kernel would saturate, the integers of both int8 and int4
//!   products are kept as uint8 `q + 128` with zero point 128 instead ([`Int8Storage`]).
//!   ONNX Runtime's x86 `DynamicQuantizeMatMul` multiplies uint8 activations by int8 weights
//!   with `vpmaddubsw` on CPUs without VNNI (AVX2 only, or AVX-512 without VNNI), which adds
//!   two products into a saturating 16-bit sum: `2 · 255 · 127` does not fit, and products
//!   of weights past ±64 come out wrong (15–20% of the product's scale on an AMD EPYC with
//!   AVX2). Its uint8 × uint8 kernel widens to 16 bits first and is exact; VNNI CPUs keep the
//!   faster signed kernel, whose `vpdpbusd` sums in 32 bits.
//! - [`FrozenDType::Bf16`]: `bfloat16`, rounded to nearest even (as `torch` rounds), or read
//!   in place from a bfloat16 checkpoint (then exact). Each product widens the weight it
//!   needs to f32 (pipe's `Bf16ToF32` kernel, exact: a shift) just before an f32 product,
//!   forward and input gradient alike. 2 bytes per weight, in the checkpoint's own layout.

use std::borrow::Cow;

use rayon::prelude::*;

use crate::{Error, HostTensor, Result};

/// Weights per 4-bit block (each block has its own scale).
pub const INT4_BLOCK: usize = 32;

/// The precision frozen weights are kept and multiplied in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FrozenDType {
    /// f32, the exact path.
    #[default]
    F32,
    /// int8 per output channel; integer products.
    Int8,
    /// 4-bit blocks of [`INT4_BLOCK`] in a per-row int8 grid; integer products on the CPU.
    Int4,
    /// `bfloat16`, widened to f32 for each product.
    Bf16,
}

/// How the integers of int8 products (and of 4-bit blocks unpacked for them) reach ONNX
/// Runtime's `DynamicQuantizeMatMul` (see the [module docs](self)).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Int8Storage {
    /// int8 `q`: the uint8 × int8 kernel, fastest where the CPU sums its pairs in 32 bits.
    Signed,
    /// uint8 `q + 128` with zero point 128: the uint8 × uint8 kernel, exact on every CPU.
    Offset,
}

impl Int8Storage {
    /// The zero point of [`Int8Storage::Offset`] integers.
    pub const OFFSET: u8 = 128;

    /// The storage whose products are exact on this CPU: [`Int8Storage::Signed`] where x86
    /// CPUs have VNNI (`avx512vnni` or `avxvnni`) and on other architectures,
    /// [`Int8Storage::Offset`] on x86 CPUs without it.
    pub fn for_this_cpu() -> Self {
        #[cfg(target_arch = "x86_64")]
        if !(std::arch::is_x86_feature_detected!("avx512vnni")
            || std::arch::is_x86_feature_detected!("avxvnni"))
        {
            return Int8Storage::Offset;
        }
        Int8Storage::Signed
    }

    /// The element type the integers are stored in.
    pub fn dtype(self) -> crate::DType {
        match self {
            Int8Storage::Signed => crate::DType::I8,
            Int8Storage::Offset => crate::DType::U8,
        }
    }

    /// `values` `[dims]` in this storage.
    fn tensor(self, dims: &[i64], values: Vec<i8>) -> Result<HostTensor> {
        match self {
            Int8Storage::Signed => HostTensor::i8(dims, values),
            Int8Storage::Offset => {
                HostTensor::u8(dims, values.into_iter().map(|q| q as u8 ^ 0x80).collect())
            }
        }
    }
}

impl Default for Int8Storage {
    /// [`Int8Storage::for_this_cpu`].
    fn default() -> Self {
        Int8Storage::for_this_cpu()
    }
}

/// How a frozen weight is stored in its checkpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightLayout {
    /// `[out, in]`: `torch.nn.Linear`, read through a transpose.
    OutIn,
    /// `[in, out]`: GPT-2's `Conv1D`, read as it is.
    InOut,
}

/// A frozen weight the graph reads quantized: what [`crate::Graph::quantize_frozen`] made of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QuantizedWeight {
    /// The weight's name (its graph input before the rewrite).
    pub name: String,
    /// How the f32 weight is stored.
    pub layout: WeightLayout,
    /// Input features (`K`).
    pub k: usize,
    /// Output features (`N`).
    pub n: usize,
    /// Its precision (never [`FrozenDType::F32`]).
    pub dtype: FrozenDType,
    /// How its int8 integers are stored ([`FrozenDType::Int8`] only).
    pub storage: Int8Storage,
}

impl QuantizedWeight {
    /// The graph input holding the forward product's integers: int8 `[K, N]`, or packed 4-bit
    /// blocks `[N, K / 32, 16]`; or the bfloat16 weight in its own layout.
    pub fn values_name(&self) -> String {
        match self.dtype {
            FrozenDType::Int4 => format!("{}#int4", self.name),
            FrozenDType::Bf16 => format!("{}#bf16", self.name),
            _ => format!("{}#int8", self.name),
        }
    }

    /// The graph input holding the int8 integers transposed, `[N, K]`, for the input gradient
    /// (stored as [`Self::storage`] says, like [`Self::values_name`]'s).
    pub fn transposed_name(&self) -> String {
        format!("{}#int8_t", self.name)
    }

    /// The graph input holding the scales, one per output channel: `[N]`.
    pub fn scales_name(&self) -> String {
        format!("{}#scale", self.name)
    }

    /// The graph input holding the 4-bit blocks' multipliers, uint8 `[N, K / 32]`.
    pub fn multipliers_name(&self) -> String {
        format!("{}#int4_mult", self.name)
    }

    /// Every graph input [`Self::quantize`] feeds for this weight.
    pub fn input_names(&self) -> Vec<String> {
        match self.dtype {
            FrozenDType::F32 => vec![self.name.clone()],
            FrozenDType::Int8 => vec![
                self.values_name(),
                self.transposed_name(),
                self.scales_name(),
            ],
            FrozenDType::Int4 => vec![
                self.values_name(),
                self.multipliers_name(),
                self.scales_name(),
            ],
            FrozenDType::Bf16 => vec![self.values_name()],
        }
    }

    /// The shape of the weight, in its [`Self::layout`].
    pub(crate) fn shape(&self) -> [i64; 2] {
        match self.layout {
            WeightLayout::OutIn => [self.n as i64, self.k as i64],
            WeightLayout::InOut => [self.k as i64, self.n as i64],
        }
    }

    /// The graph inputs of `w` (the f32 weight, in [`Self::layout`]) quantized, by name.
    pub fn quantize(&self, w: &HostTensor) -> Result<Vec<(String, HostTensor)>> {
        let expected = self.shape();
        let values = w
            .as_f32()
            .filter(|_| w.shape() == expected)
            .ok_or_else(|| {
                Error::Data(format!(
                    "`{}` is {} {:?}; quantizing it needs f32 {expected:?}",
                    self.name,
                    w.dtype(),
                    w.shape()
                ))
            })?;
        // The integer formats quantize rows of `[N, K]`.
        let out_in = || match self.layout {
            WeightLayout::OutIn => Cow::Borrowed(values),
            WeightLayout::InOut => Cow::Owned(transpose(values, self.k, self.n)),
        };
        let (n, k) = (self.n as i64, self.k as i64);
        Ok(match self.dtype {
            FrozenDType::F32 => vec![(self.name.clone(), w.clone())],
            FrozenDType::Bf16 => {
                let rounded = HostTensor::bf16(&expected, round_bf16(values))?;
                vec![(self.values_name(), rounded)]
            }
            FrozenDType::Int8 => {
                let q = Int8Rows::quantize(&out_in(), self.n, self.k);
                let in_out = transpose(&q.values, self.n, self.k);
                vec![
                    (self.values_name(), self.storage.tensor(&[k, n], in_out)?),
                    (
                        self.transposed_name(),
                        self.storage.tensor(&[n, k], q.values)?,
                    ),
                    (self.scales_name(), HostTensor::f32(&[n], q.scales)?),
                ]
            }
            FrozenDType::Int4 => {
                let q = Int4Blocks::quantize(&out_in(), self.n, self.k);
                let blocks = self.k.div_ceil(INT4_BLOCK) as i64;
                vec![
                    (
                        self.values_name(),
                        HostTensor::u8(&[n, blocks, INT4_BLOCK as i64 / 2], q.packed)?,
                    ),
                    (
                        self.multipliers_name(),
                        HostTensor::u8(&[n, blocks], q.multipliers)?,
                    ),
                    (self.scales_name(), HostTensor::f32(&[n], q.scales)?),
                ]
            }
        })
    }

    /// Bytes the quantized inputs of this weight take.
    pub fn bytes(&self) -> usize {
        let (n, k) = (self.n, self.k);
        match self.dtype {
            FrozenDType::F32 => 4 * n * k,
            FrozenDType::Int8 => 2 * n * k + 4 * n,
            FrozenDType::Int4 => n * k.div_ceil(INT4_BLOCK) * (INT4_BLOCK / 2 + 1) + 4 * n,
            FrozenDType::Bf16 => 2 * n * k,
        }
    }
}

/// `values` rounded to `bfloat16`, to nearest even (NaN stays NaN), in parallel.
pub fn round_bf16(values: &[f32]) -> Vec<half::bf16> {
    const CHUNK: usize = 1 << 16;
    let mut out = vec![half::bf16::ZERO; values.len()];
    out.par_chunks_mut(CHUNK)
        .zip(values.par_chunks(CHUNK))
        .for_each(|(out, values)| {
            for (o, &v) in out.iter_mut().zip(values) {
                *o = half::bf16::from_f32(v);
            }
        });
    out
}

/// `m` `[rows, cols]` transposed.
fn transpose<T: Copy + Default>(m: &[T], rows: usize, cols: usize) -> Vec<T> {
    let mut t = vec![T::default(); m.len()];
    for r in 0..rows {
        for c in 0..cols {
            t[c * rows + r] = m[r * cols + c];
        }
    }
    t
}

/// A matrix `[rows, cols]` in int8, one scale per row.
#[derive(Clone, Debug, PartialEq)]
pub struct Int8Rows {
    /// `round(w / scale)` in `[-127, 127]`, row-major.
    pub values: Vec<i8>,
    /// `max |w| / 127` per row (0 for a row of zeros).
    pub scales: Vec<f32>,
}

impl Int8Rows {
    /// Quantizes `w` `[rows, cols]` row by row (ties to even, as numpy rounds).
    pub fn quantize(w: &[f32], rows: usize, cols: usize) -> Int8Rows {
        let (values, _, scales) = quantize_rows(w, rows, cols, |row| {
            let scale = row.iter().fold(0f32, |m, x| m.max(x.abs())) / 127.0;
            let values = row.iter().map(|&x| quantize_to(x, scale, 127.0) as i8);
            (values.collect(), Vec::<()>::new(), scale)
        });
        Int8Rows { values, scales }
    }

    /// The f32 values the integers stand for.
    pub fn dequantize(&self, cols: usize) -> Vec<f32> {
        self.values
            .chunks(cols.max(1))
            .zip(&self.scales)
            .flat_map(|(row, &s)| row.iter().map(move |&q| f32::from(q) * s))
            .collect()
    }
}

/// A matrix `[rows, cols]` in 4-bit blocks along each row, as `MatMulNBits` reads them, the
/// blocks' scales nested in a per-row int8 grid (see the [module docs](self)).
#[derive(Clone, Debug, PartialEq)]
pub struct Int4Blocks {
    /// Per row, per block of [`INT4_BLOCK`] columns, 16 bytes: element `2i` in the low nibble
    /// of byte `i`, `2i + 1` in the high nibble; each nibble is `round(w / (m · s)) + 8`
    /// in `[1, 15]`. A last block past `cols` is padded with 8 (zero).
    pub packed: Vec<u8>,
    /// Per row and block, the multiplier `m` in `[1, 18]` of the row's scale.
    pub multipliers: Vec<u8>,
    /// `max |w| / 126` per row (0 for a row of zeros).
    pub scales: Vec<f32>,
}

/// The largest multiplier of a 4-bit block's scale: `7 · 18 = 126` keeps every `q · m` an
/// int8.
pub const INT4_MAX_MULTIPLIER: u8 = 18;

impl Int4Blocks {
    /// Quantizes `w` `[rows, cols]`.
    pub fn quantize(w: &[f32], rows: usize, cols: usize) -> Int4Blocks {
        let grid = 7.0 * f32::from(INT4_MAX_MULTIPLIER);
        let (packed, multipliers, scales) = quantize_rows(w, rows, cols, |row| {
            let scale = row.iter().fold(0f32, |m, x| m.max(x.abs())) / grid;
            let mut packed = Vec::with_capacity(cols.div_ceil(INT4_BLOCK) * INT4_BLOCK / 2);
            let mut multipliers = Vec::with_capacity(cols.div_ceil(INT4_BLOCK));
            for block in row.chunks(INT4_BLOCK) {
                let multiplier = block_multiplier(block, scale);
                multipliers.push(multiplier);
                let step = f32::from(multiplier) * scale;
                let mut nibbles = [8u8; INT4_BLOCK];
                for (n, &x) in nibbles.iter_mut().zip(block) {
                    *n = (quantize_to(x, step, 7.0) + 8.0) as u8;
                }
                packed.extend(nibbles.chunks(2).map(|p| p[0] | (p[1] << 4)));
            }
            (packed, multipliers, scale)
        });
        Int4Blocks {
            packed,
            multipliers,
            scales,
        }
    }

    /// Each block's scale, `m · s` per row and block (what `MatMulNBits` takes).
    pub fn block_scales(&self) -> Vec<f32> {
        let blocks = self.multipliers.len() / self.scales.len().max(1);
        self.multipliers
            .iter()
            .enumerate()
            .map(|(i, &m)| f32::from(m) * self.scales[i / blocks.max(1)])
            .collect()
    }

    /// The f32 values the nibbles stand for, `[rows, cols]`.
    pub fn dequantize(&self, rows: usize, cols: usize) -> Vec<f32> {
        let blocks = cols.div_ceil(INT4_BLOCK);
        let block_scales = self.block_scales();
        let mut out = Vec::with_capacity(rows * cols);
        for r in 0..rows {
            let row_start = out.len();
            for b in 0..blocks {
                let s = block_scales[r * blocks + b];
                let bytes = &self.packed[(r * blocks + b) * INT4_BLOCK / 2..][..INT4_BLOCK / 2];
                for &byte in bytes {
                    for nibble in [byte & 0x0f, byte >> 4] {
                        out.push((f32::from(nibble) - 8.0) * s);
                    }
                }
            }
            out.truncate(row_start + cols);
        }
        out
    }
}

/// The multiplier of `block`'s scale on a row of scale `row_scale`: the smallest integer `m`
/// in `[1, 18]` with `max |block| <= 7 · m · row_scale` (1 for a row of zeros).
fn block_multiplier(block: &[f32], row_scale: f32) -> u8 {
    if row_scale == 0.0 {
        return 1;
    }
    let largest = block.iter().fold(0f32, |m, x| m.max(x.abs()));
    (largest / (7.0 * row_scale))
        .ceil()
        .clamp(1.0, f32::from(INT4_MAX_MULTIPLIER)) as u8
}

/// One row quantized: its stored values, its blocks' multipliers (none for int8), its scale.
type QuantizedRow<T, M> = (Vec<T>, Vec<M>, f32);

/// The first `rows` rows of `w` (`cols` wide) each quantized by `row`, the rows spread over
/// threads, the results concatenated in row order.
fn quantize_rows<T: Send, M: Send>(
    w: &[f32],
    rows: usize,
    cols: usize,
    row: impl Fn(&[f32]) -> QuantizedRow<T, M> + Sync + Send,
) -> (Vec<T>, Vec<M>, Vec<f32>) {
    let parts: Vec<QuantizedRow<T, M>> = w.par_chunks(cols.max(1)).take(rows).map(row).collect();
    let mut values = Vec::with_capacity(parts.iter().map(|p| p.0.len()).sum());
    let mut multipliers = Vec::with_capacity(parts.iter().map(|p| p.1.len()).sum());
    let mut scales = Vec::with_capacity(parts.len());
    for (v, m, s) in parts {
        values.extend(v);
        multipliers.extend(m);
        scales.push(s);
    }
    (values, multipliers, scales)
}

/// `round(x / scale)` (ties to even) clamped to `[-limit, limit]`; 0 when `scale` is 0.
fn quantize_to(x: f32, scale: f32, limit: f32) -> f32 {
    if scale == 0.0 {
        return 0.0;
    }
    (x / scale).round_ties_even().clamp(-limit, limit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn int8_rows_round_trip_within_half_a_step() {
        let w: Vec<f32> = (0..24).map(|i| (i as f32 * 0.37).sin()).collect();
        let q = Int8Rows::quantize(&w, 3, 8);
        let back = q.dequantize(8);
        for (r, (row, back)) in w.chunks(8).zip(back.chunks(8)).enumerate() {
            let step = q.scales[r];
            assert!(
                row.iter()
                    .zip(back)
                    .all(|(a, b)| (a - b).abs() <= step / 2.0 + 1e-7)
            );
        }
    }

    #[test]
    fn int4_pads_a_short_last_block_with_zeros() {
        let w = vec![1.0f32; 40];
        let q = Int4Blocks::quantize(&w, 1, 40);
        assert_eq!(q.multipliers, [18, 18]);
        assert_eq!(q.scales.len(), 1);
        assert_eq!(q.packed.len(), 32);
        assert_eq!(
            q.packed[16 + 4],
            0x88,
            "past column 40 the nibbles are 8 (zero)"
        );
        let back = q.dequantize(1, 40);
        assert!(back.iter().all(|v| (v - 1.0).abs() <= 1e-6), "{back:?}");
    }

    #[test]
    fn a_row_of_zeros_quantizes_to_zeros() {
        let q = Int8Rows::quantize(&[0.0; 4], 1, 4);
        assert_eq!((q.values, q.scales), (vec![0; 4], vec![0.0]));
    }
}
