//! The arithmetic of pipe's CPU kernels, on plain slices: branch-free loops the compiler
//! vectorises, each output element (or LayerNorm row) computed on its own, so the result does
//! not depend on how the work is split between threads.

/// `e^x` in f32 (Cephes' `expf`: `x = n ln 2 + r`, `|r| ≤ ln 2 / 2`, `e^r` by a degree-5
/// polynomial; within 2 ulp of the true value), `x` clamped to `[-87, 88]` so `2^n` stays a
/// normal float. Written without branches so loops calling it vectorise.
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    // Adding 1.5 · 2^23 rounds to an integer n, which then sits in the low mantissa bits:
    // the sum's bits are SHIFTER_BITS + n (no float-to-int conversion, which would not
    // vectorise on baseline x86-64).
    const SHIFTER: f32 = 12_582_912.0;
    const SHIFTER_BITS: u32 = 0x4B40_0000;
    let x = x.clamp(-87.0, 88.0);
    let shifted = x * std::f32::consts::LOG2_E + SHIFTER;
    let n = shifted - SHIFTER;
    let r = x - n * 0.693_359_4 + n * 2.121_944_4e-4;
    let p = ((((1.987_569_2e-4 * r + 1.398_2e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
        + 0.166_666_65)
        * r
        + 0.5;
    let er = p * r * r + r + 1.0;
    let two_to_n = shifted
        .to_bits()
        .wrapping_sub(SHIFTER_BITS)
        .wrapping_add(127)
        << 23;
    er * f32::from_bits(two_to_n)
}

/// `√(2/π)` and the cubic coefficient of the tanh GELU (transformers' `gelu_new`).
const C: f32 = 0.797_884_6;
const K: f32 = 0.044_715;

/// `out = gy · d/dx gelu_tanh(x)`, with `gelu_tanh(x) = ½ x (1 + tanh(u))`,
/// `u = √(2/π) (x + 0.044715 x³)`. Written through `s = sigmoid(2u) = ½ (1 + tanh u)`:
/// `1 - tanh² u = 4 s (1 - s)`, so the derivative is `s + 2 √(2/π) x s (1 - s) (1 + 3·0.044715 x²)`.
pub(crate) fn gelu_tanh_grad(x: &[f32], gy: &[f32], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2, checked just above.
        return unsafe { avx2::gelu_tanh_grad(x, gy, out) };
    }
    gelu_tanh_grad_body(x, gy, out)
}

/// The same arithmetic compiled for AVX2 (8 lanes instead of SSE2's 4). Multiplications and
/// additions stay separate (no fused multiply-add), so both builds give the same bits.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    /// [`super::gelu_tanh_grad`] with AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) fn gelu_tanh_grad(x: &[f32], gy: &[f32], out: &mut [f32]) {
        super::gelu_tanh_grad_body(x, gy, out)
    }

    /// [`super::silu_grad`] with AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) fn silu_grad(x: &[f32], gy: &[f32], out: &mut [f32]) {
        super::silu_grad_body(x, gy, out)
    }

    /// [`super::gelu_erf_grad`] with AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) fn gelu_erf_grad(x: &[f32], gy: &[f32], out: &mut [f32]) {
        super::gelu_erf_grad_body(x, gy, out)
    }

    /// [`super::layer_norm_grad`] with AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) fn layer_norm_grad(
        gy: &[f32],
        x: &[f32],
        scale: &[f32],
        mean: &[f32],
        inv_std: &[f32],
        out: &mut [f32],
    ) {
        super::layer_norm_grad_body(gy, x, scale, mean, inv_std, out)
    }
}

#[inline(always)]
fn gelu_tanh_grad_body(x: &[f32], gy: &[f32], out: &mut [f32]) {
    for ((o, &x), &g) in out.iter_mut().zip(x).zip(gy) {
        let x2 = x * x;
        let v = 2.0 * C * x * (1.0 + K * x2);
        let s = 1.0 / (1.0 + exp(-v));
        let d = s + 2.0 * C * x * s * (1.0 - s) * (1.0 + 3.0 * K * x2);
        *o = g * d;
    }
}

/// `out = gy · d/dx silu(x)`, `silu(x) = x s(x)` with `s` the logistic sigmoid:
/// `s + x s (1 - s)`.
pub(crate) fn silu_grad(x: &[f32], gy: &[f32], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2, checked just above.
        return unsafe { avx2::silu_grad(x, gy, out) };
    }
    silu_grad_body(x, gy, out)
}

#[inline(always)]
fn silu_grad_body(x: &[f32], gy: &[f32], out: &mut [f32]) {
    for ((o, &x), &g) in out.iter_mut().zip(x).zip(gy) {
        let s = 1.0 / (1.0 + exp(-x));
        *o = g * (s + x * s * (1.0 - s));
    }
}

/// `out = gy · d/dx gelu(x)` for the exact GELU `gelu(x) = x Φ(x)` (BERT's `gelu`):
/// `Φ(x) + x φ(x)`, with `Φ` the standard normal CDF and `φ(x) = e^{-x²/2} / √(2π)` its
/// density.
pub(crate) fn gelu_erf_grad(x: &[f32], gy: &[f32], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2, checked just above.
        return unsafe { avx2::gelu_erf_grad(x, gy, out) };
    }
    gelu_erf_grad_body(x, gy, out)
}

/// `1 / √(2π)`.
const INV_SQRT_2PI: f32 = 0.398_942_3;

#[inline(always)]
fn gelu_erf_grad_body(x: &[f32], gy: &[f32], out: &mut [f32]) {
    for ((o, &x), &g) in out.iter_mut().zip(x).zip(gy) {
        let pdf = INV_SQRT_2PI * exp(-0.5 * x * x);
        // Φ(x) = ½ erfc(-x/√2): ½ erfc(|x|/√2) below zero, 1 minus it above.
        let tail = 0.5 * erfc_abs(x * std::f32::consts::FRAC_1_SQRT_2);
        let cdf = if x < 0.0 { tail } else { 1.0 - tail };
        *o = g * (cdf + x * pdf);
    }
}

/// `erfc(|z|)` (Numerical Recipes' `erfcc`: `t e^{-z² + P(t)}` with `t = 1 / (1 + z/2)` and a
/// degree-9 polynomial `P`, relative error below 1.2e-7 in exact arithmetic), without
/// branches so loops calling it vectorise.
#[inline(always)]
fn erfc_abs(z: f32) -> f32 {
    let z = z.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let p = -1.265_512_2
        + t * (1.000_023_7
            + t * (0.374_091_95
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_08
                            + t * (-1.135_204
                                + t * (1.488_515_9 + t * (-0.822_152_26 + t * 0.170_872_76))))))));
    t * exp(-z * z + p)
}

/// The input gradient of a LayerNormalization over rows of `scale.len()` values:
/// for each row, `ĝ = gy · scale`, `x̂ = (x - mean) inv_std`,
/// `out = inv_std (ĝ - mean(ĝ) - x̂ mean(ĝ x̂))`. `mean` and `inv_std` hold one value per row.
pub(crate) fn layer_norm_grad(
    gy: &[f32],
    x: &[f32],
    scale: &[f32],
    mean: &[f32],
    inv_std: &[f32],
    out: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2, checked just above.
        return unsafe { avx2::layer_norm_grad(gy, x, scale, mean, inv_std, out) };
    }
    layer_norm_grad_body(gy, x, scale, mean, inv_std, out)
}

#[inline(always)]
fn layer_norm_grad_body(
    gy: &[f32],
    x: &[f32],
    scale: &[f32],
    mean: &[f32],
    inv_std: &[f32],
    out: &mut [f32],
) {
    let width = scale.len();
    let rows = gy
        .chunks_exact(width)
        .zip(x.chunks_exact(width))
        .zip(out.chunks_exact_mut(width))
        .zip(mean.iter().zip(inv_std));
    for (((gy, x), out), (&mu, &inv)) in rows {
        // ĝ into `out`, and the sums of ĝ and ĝ x̂ in 8 lanes (vectorised; totalled in f64).
        let mut sum_g = [0f32; LANES];
        let mut sum_gx = [0f32; LANES];
        let mut lane = |o: &mut [f32], g: &[f32], s: &[f32], x: &[f32]| {
            for l in 0..o.len() {
                let gh = g[l] * s[l];
                o[l] = gh;
                sum_g[l] += gh;
                sum_gx[l] += gh * ((x[l] - mu) * inv);
            }
        };
        let body = width - width % LANES;
        for i in (0..body).step_by(LANES) {
            let r = i..i + LANES;
            lane(
                &mut out[r.clone()],
                &gy[r.clone()],
                &scale[r.clone()],
                &x[r],
            );
        }
        lane(&mut out[body..], &gy[body..], &scale[body..], &x[body..]);
        let n = width as f64;
        let total = |v: &[f32]| v.iter().map(|&v| f64::from(v)).sum::<f64>();
        let m1 = (total(&sum_g) / n) as f32;
        let m2 = (total(&sum_gx) / n) as f32;
        for (o, &x) in out.iter_mut().zip(x) {
            let xh = (x - mu) * inv;
            *o = inv * (*o - m1 - xh * m2);
        }
    }
}

/// The rows `first_row..` of the gradient of `Gather(data, idx, axis 0)` for a `data` with
/// rows of `width` values: `out` (whole rows) is zeroed, then each position `p` whose index
/// falls in these rows adds `gy[p]` to its row, in position order (so every element sums its
/// terms in the same order whatever the split). Indices are in `0..rows` already.
pub(crate) fn gather_grad_rows(
    first_row: usize,
    width: usize,
    idx: &[usize],
    gy: &[f32],
    out: &mut [f32],
) {
    out.fill(0.0);
    let rows = first_row..first_row + out.len() / width.max(1);
    for (p, &row) in idx.iter().enumerate() {
        if rows.contains(&row) {
            let at = (row - first_row) * width;
            let src = &gy[p * width..(p + 1) * width];
            for (o, &g) in out[at..at + width].iter_mut().zip(src) {
                *o += g;
            }
        }
    }
}

/// Lanes of the LayerNorm row sums.
const LANES: usize = 8;

#[cfg(test)]
mod tests {
    use super::*;

    /// Inputs from -12 to 12 (both tails of the GELU and of e^x).
    fn grid() -> Vec<f32> {
        (0..4801).map(|i| -12.0 + i as f32 * 0.005).collect()
    }

    #[test]
    fn exp_is_within_two_ulp_of_libm() {
        for x in (0..35_001).map(|i| -87.0 + i as f32 * 0.005) {
            let want = f64::from(x).exp();
            let got = f64::from(exp(x));
            let ulp = f64::from(f32::EPSILON) * want;
            assert!(
                (got - want).abs() <= 2.0 * ulp,
                "exp({x}) = {got}, want {want}"
            );
        }
    }

    #[test]
    fn gelu_tanh_grad_matches_the_tanh_derivative_in_f64() {
        let x = grid();
        let gy: Vec<f32> = x.iter().map(|v| 0.5 - v / 7.0).collect();
        let mut out = vec![0.0; x.len()];
        gelu_tanh_grad(&x, &gy, &mut out);
        for ((&x, &g), &o) in x.iter().zip(&gy).zip(&out) {
            let (x, g) = (f64::from(x), f64::from(g));
            let c = (2.0 / std::f64::consts::PI).sqrt();
            let t = (c * (x + 0.044715 * x * x * x)).tanh();
            let d = 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * c * (1.0 + 3.0 * 0.044715 * x * x);
            let want = g * d;
            assert!(
                (f64::from(o) - want).abs() <= 1e-6 * (1.0 + want.abs()),
                "x {x}: {o} vs {want}"
            );
        }
    }

    #[test]
    fn gelu_erf_grad_matches_the_exact_derivative_in_f64() {
        let x = grid();
        let gy: Vec<f32> = x.iter().map(|v| 0.5 - v / 7.0).collect();
        let mut out = vec![0.0; x.len()];
        gelu_erf_grad(&x, &gy, &mut out);
        for ((&x, &g), &o) in x.iter().zip(&gy).zip(&out) {
            let (x, g) = (f64::from(x), f64::from(g));
            let cdf = 0.5 * libm::erfc(-x * std::f64::consts::FRAC_1_SQRT_2);
            let pdf = (-0.5 * x * x).exp() / (2.0 * std::f64::consts::PI).sqrt();
            let want = g * (cdf + x * pdf);
            assert!(
                (f64::from(o) - want).abs() <= 1e-6 * (1.0 + want.abs()),
                "x {x}: {o} vs {want}"
            );
        }
    }

    #[test]
    fn silu_grad_matches_the_derivative_in_f64() {
        let x = grid();
        let gy: Vec<f32> = x.iter().map(|v| 0.5 - v / 7.0).collect();
        let mut out = vec![0.0; x.len()];
        silu_grad(&x, &gy, &mut out);
        for ((&x, &g), &o) in x.iter().zip(&gy).zip(&out) {
            let (x, g) = (f64::from(x), f64::from(g));
            let s = 1.0 / (1.0 + (-x).exp());
            let want = g * (s + x * s * (1.0 - s));
            assert!(
                (f64::from(o) - want).abs() <= 1e-6 * (1.0 + want.abs()),
                "x {x}: {o} vs {want}"
            );
        }
    }

    #[test]
    fn the_dispatched_kernels_give_the_portable_builds_bits() {
        let x = grid();
        let gy: Vec<f32> = x.iter().map(|v| 1.0 - v / 5.0).collect();
        let (mut fast, mut portable) = (vec![0.0; x.len()], vec![0.0; x.len()]);
        gelu_tanh_grad(&x, &gy, &mut fast);
        gelu_tanh_grad_body(&x, &gy, &mut portable);
        assert!(
            fast.iter()
                .zip(&portable)
                .all(|(a, b)| a.to_bits() == b.to_bits())
        );
        type Kernel = fn(&[f32], &[f32], &mut [f32]);
        let pairs: [(Kernel, Kernel); 2] = [
            (gelu_erf_grad, gelu_erf_grad_body),
            (silu_grad, silu_grad_body),
        ];
        for (dispatched, body) in pairs {
            dispatched(&x, &gy, &mut fast);
            body(&x, &gy, &mut portable);
            assert!(
                fast.iter()
                    .zip(&portable)
                    .all(|(a, b)| a.to_bits() == b.to_bits())
            );
        }
        let scale: Vec<f32> = (0..x.len() / 7).map(|i| i as f32 / 50.0).collect();
        let rows = x.len() / scale.len();
        let stats: Vec<f32> = (0..rows).map(|i| 0.5 + i as f32).collect();
        let n = rows * scale.len();
        layer_norm_grad(&gy[..n], &x[..n], &scale, &stats, &stats, &mut fast[..n]);
        layer_norm_grad_body(
            &gy[..n],
            &x[..n],
            &scale,
            &stats,
            &stats,
            &mut portable[..n],
        );
        assert!(
            fast.iter()
                .zip(&portable)
                .all(|(a, b)| a.to_bits() == b.to_bits())
        );
    }

    #[test]
    fn gather_grad_rows_adds_every_position_to_its_row_in_any_split() {
        let (rows, width) = (5, 3);
        let idx = [4, 0, 4, 2, 4];
        let gy: Vec<f32> = (0..idx.len() * width).map(|i| i as f32 + 0.5).collect();
        let mut want = vec![0.0f32; rows * width];
        for (p, &r) in idx.iter().enumerate() {
            for c in 0..width {
                want[r * width + c] += gy[p * width + c];
            }
        }
        for rows_per_chunk in 1..=rows {
            let mut out = vec![f32::NAN; rows * width];
            for (k, chunk) in out.chunks_mut(rows_per_chunk * width).enumerate() {
                gather_grad_rows(k * rows_per_chunk, width, &idx, &gy, chunk);
            }
            assert_eq!(out, want, "{rows_per_chunk} rows per chunk");
        }
    }

    #[test]
    fn layer_norm_grad_matches_the_formula_in_f64() {
        let width = 37;
        let rows = 5;
        let x: Vec<f32> = (0..rows * width)
            .map(|i| ((i * 7919) % 101) as f32 / 13.0 - 3.0)
            .collect();
        let gy: Vec<f32> = (0..rows * width)
            .map(|i| ((i * 104_729) % 97) as f32 / 29.0 - 1.5)
            .collect();
        let scale: Vec<f32> = (0..width).map(|i| 0.5 + i as f32 / 40.0).collect();
        let (mut mean, mut inv) = (vec![], vec![]);
        for row in x.chunks(width) {
            let m = row.iter().map(|&v| f64::from(v)).sum::<f64>() / width as f64;
            let var = row.iter().map(|&v| (f64::from(v) - m).powi(2)).sum::<f64>() / width as f64;
            mean.push(m as f32);
            inv.push((1.0 / (var + 1e-5).sqrt()) as f32);
        }
        let mut out = vec![0.0; x.len()];
        layer_norm_grad(&gy, &x, &scale, &mean, &inv, &mut out);
        for r in 0..rows {
            let (mu, iv) = (f64::from(mean[r]), f64::from(inv[r]));
            let row = r * width..(r + 1) * width;
            let gh: Vec<f64> = gy[row.clone()]
                .iter()
                .zip(&scale)
                .map(|(&g, &s)| f64::from(g) * f64::from(s))
                .collect();
            let xh: Vec<f64> = x[row.clone()]
                .iter()
                .map(|&v| (f64::from(v) - mu) * iv)
                .collect();
            let m1 = gh.iter().sum::<f64>() / width as f64;
            let m2 = gh.iter().zip(&xh).map(|(a, b)| a * b).sum::<f64>() / width as f64;
            for j in 0..width {
                let want = iv * (gh[j] - m1 - xh[j] * m2);
                let got = f64::from(out[r * width + j]);
                assert!(
                    (got - want).abs() <= 1e-5 * (1.0 + want.abs()),
                    "row {r} col {j}: {got} vs {want}"
                );
            }
        }
    }
}
