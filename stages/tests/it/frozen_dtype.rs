//! `frozen_dtype`: a LoRA step whose frozen weights are read quantized computes what the f32
//! step computes with those weights dequantized (int4 on standard kernels: to float rounding;
//! int8, and int4 on pipe's CPU kernels, which multiplies in int8: within the error of
//! quantizing the activations too), on the PEFT fixture's tiny GPT-Neo.

use std::collections::BTreeMap;

use pipe_models::gpt_neo::ProblemType;
use pipe_models::lora::LoraParams;
use pipe_models::{hf_folder, weights};
use pipe_onnx::quantize::{Int4Blocks, Int8Rows, round_bf16};
use pipe_onnx::{FrozenDType, HostTensor, Kernels, Session};
use pipe_stages::finetune::{StepGraph, StepOptions, Trained};

use crate::peft::{feeds, fixture, json, one_thread, unprefixed};

/// Loss and gradients (by parameter) of one step with `frozen_dtype` on `kernels`, and the
/// f32 weights of the quantized parameters as the step saw them.
struct Step {
    loss: f32,
    grads: BTreeMap<String, Vec<f32>>,
    dequantized: BTreeMap<String, HostTensor>,
}

fn step(
    frozen_dtype: FrozenDType,
    kernels: Kernels,
    dequantized: &BTreeMap<String, HostTensor>,
) -> Step {
    let b = json(fixture("batch.json"));
    let lora: LoraParams = serde_json::from_value(b["lora"].clone()).unwrap();
    let base = fixture("base");
    let config = hf_folder::read_config(&base).unwrap();
    let options = StepOptions {
        frozen_dtype,
        kernels,
        ..StepOptions::plain(&config)
    };
    let problem = ProblemType::SingleLabelClassification;
    let step = StepGraph::compile_with(&config, problem, &options, Trained::Lora(&lora)).unwrap();
    let mut params = weights::load_all(&hf_folder::weights_path(&base).unwrap()).unwrap();
    // The adapter after PEFT's two steps: B is not zero, so every LoRA matrix has a gradient.
    params.extend(unprefixed(
        weights::load_all(&fixture("expected_adapter/adapter_model.safetensors")).unwrap(),
    ));
    params.extend(dequantized.clone());
    let mut seen = BTreeMap::new();
    for q in &step.quantized {
        let w = params.remove(&q.name).unwrap();
        let values = w.as_f32().unwrap();
        let back = match frozen_dtype {
            FrozenDType::Int8 => Int8Rows::quantize(values, q.n, q.k).dequantize(q.k),
            FrozenDType::Bf16 => bf16_values(values),
            _ => Int4Blocks::quantize(values, q.n, q.k).dequantize(q.n, q.k),
        };
        seen.insert(q.name.clone(), HostTensor::f32(w.shape(), back).unwrap());
        params.extend(q.quantize(&w).unwrap());
    }
    // Under bf16 the frozen embedding tables are gathered in bfloat16 too.
    for name in step.half_tables.keys() {
        let w = params.remove(name).unwrap();
        let values = w.as_f32().unwrap();
        seen.insert(
            name.clone(),
            HostTensor::f32(w.shape(), bf16_values(values)).unwrap(),
        );
        params.insert(
            name.clone(),
            HostTensor::bf16(w.shape(), round_bf16(values)).unwrap(),
        );
    }
    let batch = feeds(&b);
    let mut all: Vec<(&str, &HostTensor)> = params.iter().map(|(k, v)| (k.as_str(), v)).collect();
    all.extend(batch.iter().map(|(k, v)| (*k, v)));
    let out = Session::from_model(&step.model, &one_thread())
        .unwrap()
        .run(&all)
        .unwrap();
    let grads = (step.signature.layout.entries.iter())
        .map(|e| (e.name.clone(), out[&e.grad].as_f32().unwrap().to_vec()))
        .collect();
    Step {
        loss: out["loss"].as_f32().unwrap()[0],
        grads,
        dequantized: seen,
    }
}

/// `values` rounded to bfloat16 (to nearest even, written out here), as f32.
fn bf16_values(values: &[f32]) -> Vec<f32> {
    (values.iter())
        .map(|v| v.to_bits())
        .map(|b| f32::from_bits(b.wrapping_add(0x7FFF + ((b >> 16) & 1)) & 0xFFFF_0000))
        .collect()
}

/// `got` against `want`: the largest difference over the largest `want`.
fn relative_error(got: &[f32], want: &[f32]) -> f32 {
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-12);
    got.iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max)
        / scale
}

fn compare(frozen_dtype: FrozenDType, kernels: Kernels, tolerance: f32) {
    let quantized = step(frozen_dtype, kernels, &BTreeMap::new());
    let tables = match frozen_dtype {
        FrozenDType::Bf16 => 2,
        _ => 0,
    };
    assert_eq!(
        quantized.dequantized.len(),
        2 * 6 + tables,
        "the tiny GPT-Neo's 2 layers × (q, k, v, out, c_fc, c_proj) are read quantized \
         (and in bf16, wte and wpe)"
    );
    let reference = step(FrozenDType::F32, kernels, &quantized.dequantized);
    let loss_error = (quantized.loss - reference.loss).abs() / reference.loss.abs();
    assert!(
        loss_error <= tolerance,
        "loss {} vs {}",
        quantized.loss,
        reference.loss
    );
    assert_eq!(quantized.grads.len(), reference.grads.len());
    for (name, want) in &reference.grads {
        let error = relative_error(&quantized.grads[name], want);
        assert!(error <= tolerance, "{name}: relative error {error}");
    }
}

#[test]
fn an_int4_step_on_standard_kernels_is_the_f32_step_on_the_dequantized_weights() {
    compare(FrozenDType::Int4, Kernels::Standard, 1e-5);
}

/// bf16 weights are widened exactly for f32 products: the step is the f32 step on the
/// rounded weights, up to the order of f32 sums.
#[test]
fn a_bf16_step_is_the_f32_step_on_the_rounded_weights() {
    compare(FrozenDType::Bf16, Kernels::Host, 1e-5);
}

/// int8 products round their left operand to uint8 per tensor (1/255 of its range: the
/// activations forward, the gradients backward), so the step differs from the f32 step by
/// that rounding, through two layers: up to 8% of a gradient's largest element here (the
/// products' exact arithmetic is checked in `pipe-onnx`'s `quantized` tests).
#[test]
fn an_int8_step_is_the_f32_step_on_the_dequantized_weights_within_activation_rounding() {
    compare(FrozenDType::Int8, Kernels::Host, 0.1);
}

/// On pipe's CPU kernels the 4-bit blocks are multiplied as the int8 integers they stand
/// for, so the step rounds its activations as int8 does.
#[test]
fn an_int4_step_on_cpu_kernels_is_the_f32_step_on_the_dequantized_weights_within_activation_rounding()
 {
    compare(FrozenDType::Int4, Kernels::Host, 0.1);
}

#[test]
fn the_f32_reference_differs_from_the_original_weights() {
    // The dequantized weights are not the originals: the comparison above is not vacuous.
    let quantized = step(FrozenDType::Int4, Kernels::Standard, &BTreeMap::new());
    let original = step(FrozenDType::F32, Kernels::Standard, &BTreeMap::new());
    assert!((quantized.loss - original.loss).abs() > 1e-6);
}
