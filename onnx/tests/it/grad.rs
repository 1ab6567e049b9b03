//! Every backward rule against central finite differences (f64 where ORT's CPU kernels have
//! double versions, f32 with a looser tolerance otherwise), including broadcasting and a value
//! used twice.

use pipe_onnx::{DType, Dim, HostTensor, Reduction};

use crate::util::{In, check_grad};

const F64: DType = DType::F64;
const F32: DType = DType::F32;

fn f(shape: &[i64]) -> In {
    In::Float(shape.to_vec(), -1.0, 1.0)
}

fn pos(shape: &[i64]) -> In {
    In::Float(shape.to_vec(), 0.5, 2.0)
}

fn ids(shape: &[i64], v: Vec<i64>) -> In {
    In::Fixed(HostTensor::i64(shape, v).unwrap())
}

#[test]
fn binary_ops_with_broadcasting() {
    // d/da (a + b) = 1, d/db = 1, summed over broadcast axes
    check_grad("add", F64, 1, vec![f(&[2, 3, 4]), f(&[3, 1])], |g, x| {
        g.add(x[0], x[1])
    });
    // d/da (a - b) = 1, d/db = -1
    check_grad("sub", F64, 2, vec![f(&[2, 3]), f(&[3])], |g, x| {
        g.sub(x[0], x[1])
    });
    // d/da (a b) = b, d/db = a
    check_grad("mul", F64, 3, vec![f(&[1, 3]), f(&[2, 1])], |g, x| {
        g.mul(x[0], x[1])
    });
    // d/da (a / b) = 1/b, d/db = -a/b²
    check_grad("div", F64, 4, vec![f(&[2, 3]), pos(&[2, 1])], |g, x| {
        g.div(x[0], x[1])
    });
    // d/da a^b = b a^(b-1), d/db = a^b ln a
    check_grad("pow", F64, 5, vec![pos(&[2, 3]), pos(&[3])], |g, x| {
        g.pow(x[0], x[1])
    });
}

#[test]
fn value_used_twice_sums_its_gradients() {
    // y = x·x + x: dy/dx = 2x + 1, from three uses of x
    check_grad("twice", F64, 6, vec![f(&[3, 4])], |g, x| {
        let sq = g.mul(x[0], x[0])?;
        g.add(sq, x[0])
    });
}

#[test]
fn unary_ops() {
    check_grad("neg", F64, 10, vec![f(&[3, 4])], |g, x| g.neg(x[0]));
    // d|x| = sign(x)
    check_grad("abs", F64, 11, vec![f(&[3, 4])], |g, x| g.abs(x[0]));
    // d sqrt(x) = 1 / (2 sqrt x)
    check_grad("sqrt", F64, 12, vec![pos(&[3, 4])], |g, x| g.sqrt(x[0]));
    // d (1/x) = -1/x²
    check_grad("reciprocal", F64, 13, vec![pos(&[3, 4])], |g, x| {
        g.reciprocal(x[0])
    });
    // d tanh = 1 - tanh²
    check_grad("tanh", F64, 14, vec![f(&[3, 4])], |g, x| g.tanh(x[0]));
    // d exp = exp
    check_grad("exp", F64, 15, vec![f(&[3, 4])], |g, x| g.exp(x[0]));
    // d ln x = 1/x
    check_grad("log", F64, 16, vec![pos(&[3, 4])], |g, x| g.log(x[0]));
    // d sigmoid = s (1 - s)
    check_grad("sigmoid", F64, 17, vec![f(&[3, 4])], |g, x| g.sigmoid(x[0]));
    // d relu = [x > 0]
    check_grad("relu", F64, 18, vec![f(&[3, 4])], |g, x| g.relu(x[0]));
    check_grad("identity", F64, 19, vec![f(&[3, 4])], |g, x| {
        g.identity(x[0])
    });
    // d erf = 2/sqrt(pi) exp(-x²); ORT's Erf kernel is float only
    check_grad("erf", F32, 20, vec![f(&[3, 4])], |g, x| g.erf(x[0]));
    // float -> double -> float casts pass the gradient through
    check_grad("cast", F32, 21, vec![f(&[3, 4])], |g, x| {
        let d = g.cast(x[0], DType::F64)?;
        let e = g.exp(d)?;
        g.cast(e, DType::F32)
    });
}

#[test]
fn gelu_both_forms() {
    // tanh form (gelu_new): ½(1+t) + ½x(1-t²)c(1+3·0.044715x²); ORT's Gelu is float only
    check_grad(
        "gelu_tanh",
        F32,
        30,
        vec![In::Float(vec![3, 5], -3.0, 3.0)],
        |g, x| g.gelu(x[0], true),
    );
    // erf form: Φ(x) + x φ(x)
    check_grad(
        "gelu_erf",
        F32,
        31,
        vec![In::Float(vec![3, 5], -3.0, 3.0)],
        |g, x| g.gelu(x[0], false),
    );
}

/// With pipe's CPU kernels the gradient of each GELU and of SiLU is one fused node; it
/// gives what the rules in standard operators give.
#[test]
fn activation_gradients_on_pipes_kernels_equal_the_standard_rules() {
    use pipe_onnx::{Graph, Kernels, Result, Tensor};
    type Activation = fn(&mut Graph, Tensor) -> Result<Tensor>;
    let x: Vec<f32> = (0..801).map(|i| -8.0 + i as f32 * 0.02).collect();
    let input = HostTensor::f32(&[x.len() as i64], x.clone()).unwrap();
    let activations: [(&str, Activation, &str); 3] = [
        ("gelu_tanh", |g, x| g.gelu(x, true), "GeluTanhGrad"),
        ("gelu_erf", |g, x| g.gelu(x, false), "GeluErfGrad"),
        ("silu", |g, x| g.silu(x), "SiluGrad"),
    ];
    for (name, activation, fused_op) in activations {
        let dx = |kernels: Kernels| {
            let mut g = Graph::new(name);
            g.set_kernels(kernels);
            let t = g.input("x", F32, &[Dim::Fixed(x.len() as i64)]).unwrap();
            let y = activation(&mut g, t).unwrap();
            let loss = g.reduce_sum_all(y).unwrap();
            let grad = pipe_onnx::gradients(&mut g, loss, &[t]).unwrap()[0];
            g.output(grad, "dx").unwrap();
            let fused = (g
                .build()
                .unwrap()
                .proto()
                .graph
                .as_ref()
                .unwrap()
                .node
                .iter())
            .filter(|n| n.op_type.as_deref() == Some(fused_op))
            .count();
            assert_eq!(fused, usize::from(kernels == Kernels::Host), "{name}");
            let mut s = crate::util::session(&g);
            s.run(&[("x", &input)]).unwrap()["dx"]
                .as_f32()
                .unwrap()
                .to_vec()
        };
        // The standard chains cancel in f32 in the tails (1 + tanh u near -1): a few 1e-6
        // apart there; the fused kernels are checked against f64 in `host_kernels::math`.
        let (fused, standard) = (dx(Kernels::Host), dx(Kernels::Standard));
        for (i, (a, b)) in fused.iter().zip(&standard).enumerate() {
            assert!(
                (a - b).abs() <= 1e-5 * (1.0 + b.abs()),
                "{name}, x {}: {a} vs {b}",
                x[i]
            );
        }
    }
}

#[test]
fn where_routes_gradients_by_condition() {
    let cond = HostTensor::bool(&[2, 3], vec![true, false, true, false, false, true]).unwrap();
    // d/da where(c, a, b) = [c], d/db = [!c]; b broadcasts
    check_grad(
        "where",
        F64,
        40,
        vec![In::Fixed(cond), f(&[2, 3]), f(&[3])],
        |g, x| g.where_(x[0], x[1], x[2]),
    );
}

#[test]
fn matmul_and_gemm() {
    // da = gy bᵀ, db = aᵀ gy (weight path: one matmul over the flattened batch)
    check_grad(
        "matmul_weight",
        F64,
        50,
        vec![f(&[2, 3, 4]), f(&[4, 5])],
        |g, x| g.matmul(x[0], x[1]),
    );
    check_grad(
        "matmul_batched",
        F64,
        51,
        vec![f(&[2, 3, 4]), f(&[2, 4, 5])],
        |g, x| g.matmul(x[0], x[1]),
    );
    check_grad(
        "matmul_broadcast_a",
        F64,
        52,
        vec![f(&[3, 4]), f(&[2, 4, 5])],
        |g, x| g.matmul(x[0], x[1]),
    );
    check_grad(
        "matmul_broadcast_batch",
        F64,
        53,
        vec![f(&[2, 1, 3, 4]), f(&[1, 2, 4, 2])],
        |g, x| g.matmul(x[0], x[1]),
    );
    // torch.nn.Linear: x Wᵀ + b with W [out, in]
    check_grad(
        "linear",
        F64,
        58,
        vec![f(&[2, 3, 4]), f(&[5, 4]), f(&[5])],
        |g, x| g.linear(x[0], x[1], Some(x[2])),
    );
    for (i, (ta, tb)) in [(false, false), (true, false), (false, true), (true, true)]
        .into_iter()
        .enumerate()
    {
        let a = if ta { vec![4, 3] } else { vec![3, 4] };
        let b = if tb { vec![5, 4] } else { vec![4, 5] };
        // y = α A'B' + β C: dA' = α gy B'ᵀ, dB' = α A'ᵀ gy, dC = β Σ gy
        check_grad(
            "gemm",
            F64,
            54 + i as u64,
            vec![f(&a), f(&b), f(&[5])],
            move |g, x| g.gemm(x[0], x[1], Some(x[2]), 0.7, 1.3, ta, tb),
        );
    }
}

#[test]
fn shape_ops() {
    check_grad("reshape", F64, 60, vec![f(&[2, 3, 4])], |g, x| {
        g.reshape(x[0], &[Dim::Fixed(6), Dim::Fixed(-1)])
    });
    check_grad("transpose", F64, 61, vec![f(&[2, 3, 4])], |g, x| {
        g.transpose(x[0], &[2, 0, 1])
    });
    check_grad("unsqueeze", F64, 62, vec![f(&[2, 3])], |g, x| {
        g.unsqueeze(x[0], &[0, 2])
    });
    check_grad("squeeze", F64, 63, vec![f(&[2, 1, 3])], |g, x| {
        g.squeeze(x[0], &[1])
    });
    check_grad(
        "concat",
        F64,
        64,
        vec![f(&[2, 3]), f(&[2, 1]), f(&[2, 2])],
        |g, x| g.concat(&[x[0], x[1], x[2]], 1),
    );
    check_grad("split", F64, 65, vec![f(&[5, 2])], |g, x| {
        let parts = g.split(x[0], &[Dim::Fixed(2), Dim::Fixed(3)], 0)?;
        let t = g.tanh(parts[1])?;
        g.mul(t, t)
    });
    check_grad("slice", F64, 66, vec![f(&[4, 6])], |g, x| {
        g.slice(
            x[0],
            &[1, -4],
            &[Dim::Fixed(3), Dim::Fixed(-1)],
            &[0, 1],
            &[],
        )
    });
    check_grad("expand", F64, 67, vec![f(&[3, 1])], |g, x| {
        g.expand(x[0], &[Dim::Fixed(2), Dim::Fixed(3), Dim::Fixed(4)])
    });
}

#[test]
fn gathers_and_scatters() {
    // embedding: d table[i] = Σ gy over positions holding index i (repeats accumulate)
    check_grad(
        "gather",
        F64,
        70,
        vec![f(&[5, 3]), ids(&[2, 4], vec![0, 2, 2, 4, 1, 0, 2, 3])],
        |g, x| g.gather(x[0], x[1], 0),
    );
    check_grad(
        "gather_elements",
        F64,
        71,
        vec![f(&[3, 4]), ids(&[3, 2], vec![0, 3, 1, 1, 2, 0])],
        |g, x| g.gather_elements(x[0], x[1], 1),
    );
    check_grad(
        "scatter_elements_add",
        F64,
        72,
        vec![f(&[3, 4]), ids(&[3, 2], vec![0, 3, 1, 1, 2, 0]), f(&[3, 2])],
        |g, x| g.scatter_elements(x[0], x[1], x[2], 1, Reduction::Add),
    );
    check_grad(
        "scatter_nd_add",
        F64,
        73,
        vec![f(&[4, 3]), ids(&[3, 1], vec![1, 3, 1]), f(&[3, 3])],
        |g, x| g.scatter_nd(x[0], x[1], x[2], Reduction::Add),
    );
}

#[test]
fn reductions() {
    check_grad("reduce_sum", F64, 80, vec![f(&[2, 3, 4])], |g, x| {
        g.reduce_sum(x[0], &[0, 2], false)
    });
    // mean: gy / count
    check_grad("reduce_mean", F64, 81, vec![f(&[2, 3, 4])], |g, x| {
        g.reduce_mean(x[0], &[1], true)
    });
    // max: gy at the arg max (random values, so no ties)
    check_grad("reduce_max", F64, 82, vec![f(&[2, 3, 4])], |g, x| {
        g.reduce_max(x[0], &[-1], false)
    });
}

#[test]
fn softmax_family() {
    // dx = y (gy - Σ gy y)
    check_grad("softmax", F64, 90, vec![f(&[2, 3, 4])], |g, x| {
        g.softmax(x[0], -1)
    });
    // dx = gy - exp(y) Σ gy
    check_grad("log_softmax", F64, 91, vec![f(&[2, 3, 4])], |g, x| {
        g.log_softmax(x[0], 1)
    });
}

#[test]
fn layer_normalization() {
    // dx = σ⁻¹ (ĝ - mean ĝ - x̂ mean(ĝ x̂)), dγ = Σ gy x̂, dβ = Σ gy
    check_grad(
        "layer_norm",
        F64,
        100,
        vec![f(&[2, 3, 4]), f(&[4]), f(&[4])],
        |g, x| g.layer_normalization(x[0], x[1], Some(x[2]), -1, 1e-5),
    );
    check_grad(
        "layer_norm_axis1",
        F32,
        101,
        vec![f(&[2, 3, 4]), f(&[3, 4]), f(&[3, 4])],
        |g, x| g.layer_normalization(x[0], x[1], Some(x[2]), 1, 1e-5),
    );
}

#[test]
fn losses() {
    // d scores = (softmax - onehot) / N
    check_grad(
        "softmax_cross_entropy",
        F64,
        110,
        vec![f(&[4, 5]), ids(&[4], vec![0, 4, 2, 2])],
        |g, x| g.softmax_cross_entropy_loss(x[0], x[1]),
    );
    // the log_prob output's gradient: g_lp - softmax · Σ g_lp, added to the loss's
    check_grad(
        "softmax_cross_entropy_log_prob",
        F64,
        112,
        vec![f(&[4, 5]), ids(&[4], vec![1, 0, 3, 2])],
        |g, x| {
            let (loss, log_prob) = g.softmax_cross_entropy_loss_with_log_prob(x[0], x[1])?;
            g.add(log_prob, loss)
        },
    );
    let targets = HostTensor::f64(
        &[3, 4],
        vec![1., 0., 1., 0., 0., 0., 1., 1., 0.5, 0., 1., 0.],
    )
    .unwrap();
    // d/dx bce = (sigmoid(x) - y) / n
    check_grad(
        "bce_with_logits",
        F64,
        111,
        vec![In::Float(vec![3, 4], -3.0, 3.0), In::Fixed(targets)],
        |g, x| g.bce_with_logits(x[0], x[1]),
    );
}

#[test]
fn trilu_masks_gradients() {
    check_grad("trilu", F64, 120, vec![f(&[3, 4])], |g, x| {
        g.trilu(x[0], 1, false)
    });
}

#[test]
fn causal_attention_block() {
    // softmax(where(causal, q kᵀ, -1e4)) v: a composite as GPT-Neo uses it (no 1/√d scaling).
    check_grad(
        "attention",
        F64,
        130,
        vec![f(&[2, 4, 3]), f(&[2, 4, 3]), f(&[2, 4, 3])],
        |g, x| {
            let kt = g.transpose(x[1], &[0, 2, 1])?;
            let s = g.matmul(x[0], kt)?;
            let ones = g.constant_of_shape(&[Dim::Fixed(4), Dim::Fixed(4)], DType::Bool, 1.0)?;
            let causal = g.trilu(ones, 0, false)?;
            let neg = g.scalar(DType::F64, -1e4);
            let masked = g.where_(causal, s, neg)?;
            let p = g.softmax(masked, -1)?;
            g.matmul(p, x[2])
        },
    );
}
