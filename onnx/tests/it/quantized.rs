//! Frozen weights read quantized ([`Graph::quantize_frozen`]): the products ONNX Runtime
//! computes equal their definitions, forward and input gradient, for both layouts.
//!
//! - int8: `DynamicQuantizeMatMul`'s definition, written out here: `x` quantized to uint8
//!   per tensor (scale `(max(x, 0) - min(x, 0)) / 255`, zero point `round(-min / scale)`),
//!   integer products with the int8 weight, then both scales.
//! - int4 on pipe's CPU kernels: the same definition over the int8 integers the blocks stand
//!   for (nibble − 8 times the block's multiplier) and the row scales.
//! - int4 on standard kernels: `x · Wᵀ` with `W` the dequantized blocks, in f32.
//!
//! The integer products are checked in the storage this CPU gets and in
//! [`Int8Storage::Offset`] (exact on every CPU); [`Int8Storage::Signed`] is exact only
//! where the CPU has VNNI, which picks it.

use std::collections::{BTreeMap, BTreeSet};

use pipe_onnx::quantize::INT4_BLOCK;
use pipe_onnx::quantize::{Int4Blocks, Int8Rows};
use pipe_onnx::{DType, FrozenDType, Graph, HostTensor, Int8Storage, Kernels, Tensor, gradients};

use crate::util::{Rng, fixed, run, session};

const M: usize = 5;
const K: usize = 40; // not a multiple of the 4-bit block: the last block is padded
const N: usize = 6;

/// The graph `y = x · Wᵀ` (`[out, in]` weight, through a transpose) or `y = x · W` (`[in,
/// out]`, GPT-2's `Conv1D`), `loss = Σ y ⊙ r`, its gradient with respect to `x`, and the
/// weight rewritten to `dtype`, the rules using `kernels` (with `lower`, 4-bit products
/// lowered as the trainers run them) and integers kept in `storage`.
fn product_graph(
    out_in: bool,
    dtype: FrozenDType,
    kernels: Kernels,
    lower: bool,
    storage: Int8Storage,
) -> (Graph, Vec<pipe_onnx::QuantizedWeight>) {
    let mut g = Graph::new("product");
    g.set_kernels(kernels);
    g.set_int8_storage(storage);
    let x = g
        .input("x", DType::F32, &fixed(&[M as i64, K as i64]))
        .unwrap();
    let r = g
        .input("r", DType::F32, &fixed(&[M as i64, N as i64]))
        .unwrap();
    let y = if out_in {
        let w = g
            .input("w", DType::F32, &fixed(&[N as i64, K as i64]))
            .unwrap();
        g.linear(x, w, None).unwrap()
    } else {
        let w = g
            .input("w", DType::F32, &fixed(&[K as i64, N as i64]))
            .unwrap();
        g.matmul(x, w).unwrap()
    };
    let weighted = g.mul(y, r).unwrap();
    let loss = g.reduce_sum_all(weighted).unwrap();
    let quantized = g
        .quantize_frozen(&BTreeSet::from(["w".to_string()]), dtype)
        .unwrap();
    let dx: Vec<Tensor> = gradients(&mut g, loss, &[x]).unwrap();
    g.output(y, "y").unwrap();
    g.output(dx[0], "dx").unwrap();
    if lower {
        g.lower_frozen_products().unwrap();
    }
    (g, quantized)
}

struct Case {
    x: Vec<f32>,
    r: Vec<f32>,
    /// `[N, K]`.
    w: Vec<f32>,
}

impl Case {
    fn new(seed: u64) -> Case {
        let mut rng = Rng::new(seed);
        let mut v = |n: usize, scale: f64| -> Vec<f32> {
            rng.vec(n, -scale, scale)
                .into_iter()
                .map(|x| x as f32)
                .collect()
        };
        Case {
            x: v(M * K, 2.0),
            r: v(M * N, 1.0),
            w: v(N * K, 0.1),
        }
    }

    /// `y` and `dx` from the graph, with the weight fed in `out_in` layout and quantized as
    /// the rewrite asks, integers in this CPU's storage.
    fn run(
        &self,
        out_in: bool,
        dtype: FrozenDType,
        kernels: Kernels,
        lower: bool,
    ) -> (Vec<f32>, Vec<f32>) {
        self.run_in(out_in, dtype, kernels, lower, Int8Storage::for_this_cpu())
    }

    /// [`Case::run`] with the integers in `storage`.
    fn run_in(
        &self,
        out_in: bool,
        dtype: FrozenDType,
        kernels: Kernels,
        lower: bool,
        storage: Int8Storage,
    ) -> (Vec<f32>, Vec<f32>) {
        let (g, quantized) = product_graph(out_in, dtype, kernels, lower, storage);
        assert_eq!(quantized.len(), 1, "the weight is read only by a product");
        let w = if out_in {
            HostTensor::f32(&[N as i64, K as i64], self.w.clone()).unwrap()
        } else {
            HostTensor::f32(&[K as i64, N as i64], transpose(&self.w, N, K)).unwrap()
        };
        let mut feeds: BTreeMap<String, HostTensor> =
            quantized[0].quantize(&w).unwrap().into_iter().collect();
        assert!(
            !feeds.contains_key("w"),
            "the f32 weight is not an input any more"
        );
        feeds.insert(
            "x".into(),
            HostTensor::f32(&[M as i64, K as i64], self.x.clone()).unwrap(),
        );
        feeds.insert(
            "r".into(),
            HostTensor::f32(&[M as i64, N as i64], self.r.clone()).unwrap(),
        );
        let out = run(&mut session(&g), &feeds);
        let f = |k: &str| out[k].as_f32().unwrap().to_vec();
        (f("y"), f("dx"))
    }
}

fn transpose(m: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    (0..cols)
        .flat_map(|c| (0..rows).map(move |r| m[r * cols + c]))
        .collect()
}

/// `a` `[m, k]` times `b` `[k, n]` in f64.
fn matmul(a: &[f64], b: &[f64], m: usize, k: usize, n: usize) -> Vec<f64> {
    let mut y = vec![0.0; m * n];
    for i in 0..m {
        for p in 0..k {
            for j in 0..n {
                y[i * n + j] += a[i * k + p] * b[p * n + j];
            }
        }
    }
    y
}

fn assert_close(what: &str, got: &[f32], want: &[f64], rel: f64) {
    let scale = want.iter().fold(0f64, |m, v| m.max(v.abs())).max(1e-12);
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (f64::from(*g) - w).abs() <= rel * scale,
            "{what}[{i}]: {g} vs {w} (scale {scale})"
        );
    }
    assert_eq!(got.len(), want.len(), "{what}: length");
}

/// `DynamicQuantizeMatMul(a [m, k], q [k, n] int8, scale per column or one)` as ONNX Runtime
/// defines it.
fn dynamic_quantize_matmul(
    a: &[f32],
    q: &[i8],
    b_scale: &[f32],
    m: usize,
    k: usize,
    n: usize,
) -> Vec<f64> {
    let lo = a.iter().fold(0f32, |m, &v| m.min(v));
    let hi = a.iter().fold(0f32, |m, &v| m.max(v));
    let scale = (hi - lo) / 255.0;
    let zero = (-lo / scale).round_ties_even().clamp(0.0, 255.0);
    let aq: Vec<f64> = a
        .iter()
        .map(|&v| f64::from(((v / scale).round_ties_even() + zero).clamp(0.0, 255.0) - zero))
        .collect();
    let qf: Vec<f64> = q.iter().map(|&v| f64::from(v)).collect();
    let mut y = matmul(&aq, &qf, m, k, n);
    for (i, v) in y.iter_mut().enumerate() {
        let s = if b_scale.len() == 1 {
            b_scale[0]
        } else {
            b_scale[i % n]
        };
        *v *= f64::from(scale) * f64::from(s);
    }
    y
}

/// `y` and `dx` of [`product_graph`] as the int8 path defines them, for integers `q` `[N, K]`
/// with a scale per row: `y = DynamicQuantizeMatMul(x, qᵀ, s)` and
/// `dx = DynamicQuantizeMatMul(r ⊙ s, q, 1)` (the gradient scaled per output channel, then
/// the integers).
fn int8_path(case: &Case, q: &[i8], scales: &[f32]) -> (Vec<f64>, Vec<f64>) {
    let q_in_out: Vec<i8> = (0..K)
        .flat_map(|c| (0..N).map(move |r| (r, c)))
        .map(|(r, c)| q[r * K + c])
        .collect();
    let y = dynamic_quantize_matmul(&case.x, &q_in_out, scales, M, K, N);
    let scaled: Vec<f32> = case
        .r
        .iter()
        .enumerate()
        .map(|(i, v)| v * scales[i % N])
        .collect();
    let dx = dynamic_quantize_matmul(&scaled, q, &[1.0], M, N, K);
    (y, dx)
}

/// The int8 integers `[N, K]` 4-bit blocks stand for: each nibble minus 8, times its
/// block's multiplier.
fn int4_integers(q: &Int4Blocks, n: usize, k: usize) -> Vec<i8> {
    let blocks = k.div_ceil(INT4_BLOCK);
    let mut out = Vec::with_capacity(n * k);
    for r in 0..n {
        for c in 0..k {
            let byte = q.packed[r * blocks * INT4_BLOCK / 2 + c / 2];
            let nibble = if c % 2 == 0 { byte & 0x0f } else { byte >> 4 };
            let m = q.multipliers[r * blocks + c / INT4_BLOCK];
            out.push(((i16::from(nibble) - 8) * i16::from(m)) as i8);
        }
    }
    out
}

/// The storages whose integer products are exact on this CPU: the one it gets, and
/// [`Int8Storage::Offset`].
fn exact_storages() -> Vec<Int8Storage> {
    let mut storages = vec![Int8Storage::for_this_cpu(), Int8Storage::Offset];
    storages.dedup();
    storages
}

/// Where a uint8 × int8 kernel sums pairs of products in 16 bits (x86 without VNNI), the
/// largest inputs (uint8 255) times the largest weights (int8 ±127) saturate it: every weight
/// of a row ±127 here, every input 255.
#[test]
fn int8_products_of_extreme_integers_are_exact_in_this_cpus_storage() {
    let mut case = Case::new(17);
    case.w = (0..N * K)
        .map(|i| if (i / K).is_multiple_of(2) { 0.1 } else { -0.1 })
        .collect();
    case.x = vec![2.0; M * K];
    let q = Int8Rows::quantize(&case.w, N, K);
    assert!(q.values.iter().all(|v| v.abs() == 127));
    let (y, dx) = int8_path(&case, &q.values, &q.scales);
    let (gy, gdx) = case.run(true, FrozenDType::Int8, Kernels::Host, false);
    assert_close("y", &gy, &y, 1e-5);
    assert_close("dx", &gdx, &dx, 1e-5);
}

#[test]
fn offset_storage_keeps_each_integer_plus_128_as_uint8() {
    let case = Case::new(3);
    let q = Int8Rows::quantize(&case.w, N, K);
    let (_, quantized) = product_graph(
        true,
        FrozenDType::Int8,
        Kernels::Host,
        false,
        Int8Storage::Offset,
    );
    let w = HostTensor::f32(&[N as i64, K as i64], case.w.clone()).unwrap();
    let feeds: BTreeMap<String, HostTensor> =
        quantized[0].quantize(&w).unwrap().into_iter().collect();
    let transposed = feeds["w#int8_t"].as_u8().expect("uint8 integers");
    let want: Vec<u8> = q
        .values
        .iter()
        .map(|&v| (i16::from(v) + 128) as u8)
        .collect();
    assert_eq!(transposed, &want[..]);
}

#[test]
fn int4_products_on_pipes_kernels_follow_dynamic_quantize_matmul_over_the_unpacked_integers() {
    let case = Case::new(13);
    let q = Int4Blocks::quantize(&case.w, N, K);
    let integers = int4_integers(&q, N, K);
    let (y, dx) = int8_path(&case, &integers, &q.scales);
    for storage in exact_storages() {
        for out_in in [true, false] {
            let (gy, gdx) = case.run_in(out_in, FrozenDType::Int4, Kernels::Host, true, storage);
            assert_close("y", &gy, &y, 1e-5);
            assert_close("dx", &gdx, &dx, 1e-5);
        }
    }
    // The integers times the row scales are the dequantized blocks.
    let dequantized = q.dequantize(N, K);
    for (i, (&v, &d)) in integers.iter().zip(&dequantized).enumerate() {
        let s = q.scales[i / K];
        assert!((f32::from(v) * s - d).abs() <= 1e-6 * s.max(d.abs()), "{i}");
    }
}

/// `y = x · wᵀ` and `dx = r · w` in f64, for the f32 weight `w` `[N, K]`.
fn f32_path(case: &Case, w: &[f32]) -> (Vec<f64>, Vec<f64>) {
    let f64s = |v: &[f32]| v.iter().map(|&x| f64::from(x)).collect::<Vec<_>>();
    let y = matmul(&f64s(&case.x), &f64s(&transpose(w, N, K)), M, K, N);
    let dx = matmul(&f64s(&case.r), &f64s(w), M, N, K);
    (y, dx)
}

#[test]
fn int4_products_on_standard_kernels_equal_f32_products_with_the_dequantized_weight() {
    let case = Case::new(7);
    let w = Int4Blocks::quantize(&case.w, N, K).dequantize(N, K);
    let (y, dx) = f32_path(&case, &w);
    for (out_in, lower) in [(true, false), (false, false), (true, true), (false, true)] {
        let (gy, gdx) = case.run(out_in, FrozenDType::Int4, Kernels::Standard, lower);
        assert_close("y", &gy, &y, 1e-5);
        assert_close("dx", &gdx, &dx, 1e-5);
    }
}

#[test]
fn bf16_products_equal_f32_products_with_the_rounded_weight() {
    let case = Case::new(5);
    // Rounded to nearest even, as `torch.Tensor.bfloat16` rounds.
    let w: Vec<f32> = (case.w.iter())
        .map(|&v| {
            f32::from_bits(
                v.to_bits().wrapping_add(0x7FFF + ((v.to_bits() >> 16) & 1)) & 0xFFFF_0000,
            )
        })
        .collect();
    assert!(
        w.iter().zip(&case.w).any(|(a, b)| a != b),
        "the rounding shows"
    );
    let (y, dx) = f32_path(&case, &w);
    for kernels in [Kernels::Host, Kernels::Standard] {
        for out_in in [true, false] {
            let (gy, gdx) = case.run(out_in, FrozenDType::Bf16, kernels, true);
            assert_close("y", &gy, &y, 1e-6);
            assert_close("dx", &gdx, &dx, 1e-6);
        }
    }
}

#[test]
fn lowered_bf16_products_widen_the_weight_for_each_product() {
    let (g, _) = product_graph(
        true,
        FrozenDType::Bf16,
        Kernels::Host,
        true,
        Int8Storage::for_this_cpu(),
    );
    let model = g.build().unwrap();
    let ops: Vec<&str> = (model.proto().graph.as_ref().unwrap().node.iter())
        .filter_map(|n| n.op_type.as_deref())
        .collect();
    assert!(!ops.contains(&"Bf16MatMul"), "{ops:?}");
    assert_eq!(
        ops.iter().filter(|&&o| o == "Bf16ToF32").count(),
        2,
        "the forward and the input gradient each widen for themselves: {ops:?}"
    );
    producers_come_first(&model);
}

#[test]
fn lowered_4bit_products_leave_no_matmul_nbits_and_emit_producers_first() {
    for (kernels, unpacking) in [
        (
            Kernels::Standard,
            ["GatherBlockQuantized", "GatherBlockQuantized"],
        ),
        (Kernels::Host, ["Int4ToInt8T", "Int4ToInt8"]),
        (Kernels::Host, ["Int4ToUint8T", "Int4ToUint8"]),
    ] {
        let storage = match unpacking[0] {
            "Int4ToInt8T" => Int8Storage::Signed,
            _ => Int8Storage::Offset,
        };
        let (g, _) = product_graph(true, FrozenDType::Int4, kernels, true, storage);
        let model = g.build().unwrap();
        let ops: Vec<&str> = (model.proto().graph.as_ref().unwrap().node.iter())
            .filter_map(|n| n.op_type.as_deref())
            .collect();
        assert!(!ops.contains(&"MatMulNBits"), "{ops:?}");
        for op in unpacking {
            assert_eq!(
                ops.iter().filter(|&&o| o == op).count(),
                unpacking.iter().filter(|&&o| o == op).count(),
                "the forward and the input gradient each unpack for themselves: {ops:?}"
            );
        }
        producers_come_first(&model);
    }
}

/// The unpacking nodes were added last, for an earlier product: ONNX wants every value
/// computed before the node that reads it.
fn producers_come_first(model: &pipe_onnx::Model) {
    let nodes = &model.proto().graph.as_ref().unwrap().node;
    let mut computed: BTreeSet<&str> =
        ["x", "r", "w#int4", "w#int4_mult", "w#scale", "w#bf16"].into();
    for n in nodes {
        for input in n.input.iter().filter(|i| !i.is_empty()) {
            assert!(
                computed.contains(input.as_str())
                    || model
                        .proto()
                        .graph
                        .as_ref()
                        .unwrap()
                        .initializer
                        .iter()
                        .any(|t| t.name.as_deref() == Some(input)),
                "`{}` reads `{input}` before it is computed",
                n.name.as_deref().unwrap_or("")
            );
        }
        computed.extend(n.output.iter().map(String::as_str));
    }
}

#[test]
fn int8_products_follow_dynamic_quantize_matmul() {
    let case = Case::new(11);
    let q = Int8Rows::quantize(&case.w, N, K);
    let (y, dx) = int8_path(&case, &q.values, &q.scales);
    for storage in exact_storages() {
        for out_in in [true, false] {
            let (gy, gdx) = case.run_in(out_in, FrozenDType::Int8, Kernels::Host, false, storage);
            assert_close("y", &gy, &y, 1e-5);
            assert_close("dx", &gdx, &dx, 1e-5);
        }
    }
    // And within the quantization error of the f32 product (1% of its scale here).
    let x: Vec<f64> = case.x.iter().map(|&v| f64::from(v)).collect();
    let exact = matmul(
        &x,
        &transpose(&case.w, N, K)
            .iter()
            .map(|&v| f64::from(v))
            .collect::<Vec<_>>(),
        M,
        K,
        N,
    );
    let (gy, _) = case.run(true, FrozenDType::Int8, Kernels::Host, false);
    assert_close("y against f32", &gy, &exact, 1e-2);
}

#[test]
fn a_weight_read_other_ways_stays_f32() {
    let mut g = Graph::new("gathered");
    let w = g.input("w", DType::F32, &fixed(&[4, 3])).unwrap();
    let ids = g.input("ids", DType::I64, &fixed(&[2])).unwrap();
    let rows = g.gather(w, ids, 0).unwrap();
    let x = g.input("x", DType::F32, &fixed(&[2, 3])).unwrap();
    let y = g.linear(x, w, None).unwrap();
    g.output(rows, "rows").unwrap();
    g.output(y, "y").unwrap();
    let quantized = g
        .quantize_frozen(&BTreeSet::from(["w".to_string()]), FrozenDType::Int8)
        .unwrap();
    assert!(quantized.is_empty());
    assert!(g.inputs().iter().any(|&t| g.name(t) == "w"));
}

/// The fixture numpy wrote (`tests/fixtures/quantize/make_fixtures.py`).
fn fixture() -> serde_json::Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/quantize/quantize.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn numbers<T: serde::de::DeserializeOwned>(v: &serde_json::Value, key: &str) -> Vec<T> {
    serde_json::from_value(v[key].clone()).unwrap()
}

#[test]
fn quantizers_match_numpy_bit_for_bit() {
    let f = fixture();
    let (rows, cols) = (
        f["rows"].as_u64().unwrap() as usize,
        f["cols"].as_u64().unwrap() as usize,
    );
    let w: Vec<f32> = numbers(&f, "w");
    let int8 = Int8Rows::quantize(&w, rows, cols);
    assert_eq!(int8.values, numbers::<i8>(&f, "int8_values"));
    assert_eq!(int8.scales, numbers::<f32>(&f, "int8_scales"));
    let int4 = Int4Blocks::quantize(&w, rows, cols);
    assert_eq!(int4.packed, numbers::<u8>(&f, "int4_packed"));
    assert_eq!(int4.multipliers, numbers::<u8>(&f, "int4_multipliers"));
    assert_eq!(int4.scales, numbers::<f32>(&f, "int4_scales"));
    assert_eq!(
        int4.dequantize(rows, cols),
        numbers::<f32>(&f, "int4_dequantized")
    );
}
