//! Shared helpers: a seeded RNG, graph runners, finite differences.

use std::collections::BTreeMap;

use pipe_onnx::{DType, Dim, Graph, HostTensor, Result, Session, SessionOptions, Tensor};

/// SplitMix64: small, seeded, good enough for test data.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [lo, hi).
    pub fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * ((self.next_u64() >> 11) as f64 / (1u64 << 53) as f64)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    pub fn vec(&mut self, n: usize, lo: f64, hi: f64) -> Vec<f64> {
        (0..n).map(|_| self.uniform(lo, hi)).collect()
    }
}

pub fn numel(shape: &[i64]) -> usize {
    shape.iter().product::<i64>() as usize
}

/// A float host tensor of `dtype` from f64 values.
pub fn float_tensor(dtype: DType, shape: &[i64], v: Vec<f64>) -> HostTensor {
    match dtype {
        DType::F64 => HostTensor::f64(shape, v).expect("shape fits"),
        _ => HostTensor::f32(shape, v.into_iter().map(|x| x as f32).collect()).expect("shape fits"),
    }
}

pub fn fixed(shape: &[i64]) -> Vec<Dim> {
    shape.iter().map(|&d| Dim::Fixed(d)).collect()
}

pub fn session(g: &Graph) -> Session {
    let model = g.build().expect("graph builds");
    Session::from_model(&model, &SessionOptions::default()).expect("model loads in ORT")
}

pub fn run(s: &mut Session, feeds: &BTreeMap<String, HostTensor>) -> BTreeMap<String, HostTensor> {
    let f: Vec<(&str, &HostTensor)> = feeds.iter().map(|(k, v)| (k.as_str(), v)).collect();
    s.run(&f).expect("model runs")
}

/// One input of a gradient check.
pub enum In {
    /// A differentiable float input with values drawn from [lo, hi).
    Float(Vec<i64>, f64, f64),
    /// A fixed, non-differentiated input.
    Fixed(HostTensor),
}

/// Checks the gradients of `build` against central finite differences.
///
/// The graph computes `loss = sum(op(x…) * r)` with a random `r`, takes `gradients` with
/// respect to every `In::Float`, and compares each element with
/// `(loss(x + h) - loss(x - h)) / 2h`.
pub fn check_grad(
    name: &str,
    dtype: DType,
    seed: u64,
    inputs: Vec<In>,
    build: impl Fn(&mut Graph, &[Tensor]) -> Result<Tensor>,
) {
    let mut rng = Rng::new(seed);
    let mut g = Graph::new(name);
    let mut feeds = BTreeMap::new();
    let mut xs = Vec::new();
    let mut wrt = Vec::new();
    for (i, inp) in inputs.iter().enumerate() {
        let n = format!("x{i}");
        match inp {
            In::Float(shape, lo, hi) => {
                let t = g.input(&n, dtype, &fixed(shape)).unwrap();
                feeds.insert(
                    n.clone(),
                    float_tensor(dtype, shape, rng.vec(numel(shape), *lo, *hi)),
                );
                wrt.push((t, n.clone(), shape.clone()));
                xs.push(t);
            }
            In::Fixed(h) => {
                let t = g.input(&n, h.dtype(), &fixed(h.shape())).unwrap();
                feeds.insert(n.clone(), h.clone());
                xs.push(t);
            }
        }
    }
    let y = build(&mut g, &xs).unwrap_or_else(|e| panic!("{name}: forward builds: {e}"));
    let yshape: Vec<i64> = g
        .shape(y)
        .iter()
        .map(|d| {
            d.fixed()
                .unwrap_or_else(|| panic!("{name}: output shape must be fixed, got {d}"))
        })
        .collect();
    let r = g.input("r", y.dtype(), &fixed(&yshape)).unwrap();
    feeds.insert(
        "r".into(),
        float_tensor(y.dtype(), &yshape, rng.vec(numel(&yshape), -1.0, 1.0)),
    );
    let yr = g.mul(y, r).unwrap();
    let loss = g.reduce_sum_all(yr).unwrap();
    g.output(loss, "loss").unwrap();
    let wrt_t: Vec<Tensor> = wrt.iter().map(|w| w.0).collect();
    let grads =
        pipe_onnx::gradients(&mut g, loss, &wrt_t).unwrap_or_else(|e| panic!("{name}: {e}"));
    for (i, gr) in grads.iter().enumerate() {
        g.output(*gr, &format!("grad{i}")).unwrap();
    }
    let mut s = session(&g);
    let out = run(&mut s, &feeds);
    let (h, atol, rtol) = match dtype {
        DType::F64 => (1e-6, 1e-7, 1e-5),
        _ => (1e-2, 5e-3, 2e-2),
    };
    let loss_at = |s: &mut Session, feeds: &BTreeMap<String, HostTensor>| {
        run(s, feeds)["loss"].to_f64_vec()[0]
    };
    for (i, (_, n, shape)) in wrt.iter().enumerate() {
        let analytic = out[&format!("grad{i}")].to_f64_vec();
        assert_eq!(
            analytic.len(),
            numel(shape),
            "{name}: gradient {i} has the input's size"
        );
        let base = feeds[n].to_f64_vec();
        for k in 0..base.len() {
            let mut f = feeds.clone();
            let mut v = base.clone();
            v[k] = base[k] + h;
            f.insert(n.clone(), float_tensor(dtype, shape, v.clone()));
            let lp = loss_at(&mut s, &f);
            v[k] = base[k] - h;
            f.insert(n.clone(), float_tensor(dtype, shape, v));
            let lm = loss_at(&mut s, &f);
            let fd = (lp - lm) / (2.0 * h);
            let a = analytic[k];
            assert!(
                (a - fd).abs() <= atol + rtol * fd.abs(),
                "{name} ({dtype}): d loss / d {n}[{k}]: autodiff {a}, finite difference {fd}"
            );
        }
    }
}
