//! Dropout masks through the graph: kept values are scaled by 1/(1−p), dropped ones are 0,
//! and over many steps' masks the mean output is the input (inverted dropout is unbiased).

use pipe_models::dropout::{DropoutPlan, DropoutRates};
use pipe_models::gpt_neo::GptNeoConfig;
use pipe_onnx::{DType, Dim, Graph, HostTensor, Session, SessionOptions};

#[test]
fn inverted_dropout_is_unbiased_over_the_steps_masks() {
    let cfg = GptNeoConfig::test(50, 2);
    let p = 0.3;
    let plan = DropoutPlan::new(
        &cfg,
        DropoutRates {
            embed: p,
            ..Default::default()
        },
    );
    let mut g = Graph::new("dropout");
    let h = cfg.hidden_size as i64;
    let x = g
        .input(
            "x",
            DType::F32,
            &[Dim::from("batch"), Dim::from("seq"), Dim::from(h)],
        )
        .unwrap();
    let dropout = plan.declare(&mut g).unwrap();
    let y = dropout.apply(&mut g, "transformer.drop", x).unwrap();
    g.output(y, "y").unwrap();
    let mut session = Session::from_model(&g.build().unwrap(), &SessionOptions::default()).unwrap();

    let (b, s) = (2usize, 4usize);
    let n = b * s * cfg.hidden_size;
    // Nonzero values of both signs: 1 to 2.5 at even j, -2 to -0.5 at odd j.
    let xs: Vec<f32> = (0..n)
        .map(|j| 1.0 + 0.25 * (j % 7) as f32 - 3.0 * (j % 2) as f32)
        .collect();
    let input = HostTensor::f32(&[b as i64, s as i64, h], xs.clone()).unwrap();
    let steps = 400;
    let mut sum = vec![0.0f64; n];
    let mut dropped = 0usize;
    for step in 0..steps {
        let masks = plan.masks(11, step, 0, b, s).unwrap();
        let mut feeds: Vec<(&str, &HostTensor)> = vec![("x", &input)];
        feeds.extend(masks.iter().map(|(k, v)| (k.as_str(), v)));
        let out = session.run(&feeds).unwrap();
        let ys = out["y"].as_f32().unwrap();
        for (j, (&yv, &xv)) in ys.iter().zip(&xs).enumerate() {
            if yv == 0.0 {
                dropped += 1;
            } else {
                // Kept: exactly x · (1/(1−p)) in float32.
                assert_eq!(yv, xv * (1.0 / (1.0 - p)) as f32, "element {j}");
            }
            sum[j] += f64::from(yv);
        }
    }
    // Each output is x·B/(1−p) with B ~ Bernoulli(1−p): mean x, variance x²·p/(1−p). Over
    // K independent masks the mean's standard deviation is σ = |x|·√(p/((1−p)·K)); for
    // K = 400 and p = 0.3 that is 0.033·|x|. Every element must be within 5σ (by the normal
    // approximation a single element misses with probability 5.7e-7, any of the 256 with
    // about 1.5e-4).
    let k = steps as f64;
    let sigma = (p / ((1.0 - p) * k)).sqrt();
    for (j, (&total, &xv)) in sum.iter().zip(&xs).enumerate() {
        let mean = total / k;
        let z = (mean - f64::from(xv)).abs() / (f64::from(xv).abs() * sigma);
        assert!(z < 5.0, "element {j}: mean {mean}, x {xv}, {z:.1} σ away");
    }
    // The dropped share over all 102,400 draws: within 5σ = 5·√(p(1−p)/102400) ≈ 0.0072.
    let share = dropped as f64 / (k * n as f64);
    assert!((share - p).abs() < 0.0072, "dropped share {share}");
}
