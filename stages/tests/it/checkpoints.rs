//! Checkpoints as users bring them: sharded (`model.safetensors.index.json` and its shards),
//! bfloat16 and float16 (fixtures written by transformers, `fixtures/checkpoints/`), read
//! through memory maps; their errors; and the memory a load takes.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use pipe_models::{Architecture, Init, ParamSpec, hf_folder, weights};
use pipe_onnx::{HostTensor, Session, SessionOptions};
use serde_json::{Value, json};

use crate::finetune::{copy_dir, tokenized};
use crate::util::{Workspace, message};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/checkpoints")
        .join(name)
}

fn expected() -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixture("expected.json")).unwrap()).unwrap()
}

/// The fixture's rows, right-padded with 0 into one batch: ids and attention mask.
fn batch(rows: &[Vec<i64>]) -> (HostTensor, HostTensor) {
    let seq = rows.iter().map(Vec::len).max().unwrap();
    let mut ids = Vec::new();
    let mut mask = Vec::new();
    for row in rows {
        for c in 0..seq {
            ids.push(row.get(c).copied().unwrap_or(0));
            mask.push(i64::from(c < row.len()));
        }
    }
    let shape = [rows.len() as i64, seq as i64];
    (
        HostTensor::i64(&shape, ids).unwrap(),
        HostTensor::i64(&shape, mask).unwrap(),
    )
}

/// Fine-tunes from the fixture folder `variant` with a zero learning rate (so the weights stay
/// as loaded; `lora` adds a LoRA adapter, whose zero `B` merges to nothing), exports the
/// result and checks its logits against transformers' and `metrics.json`'s `source_dtype`.
fn starts_from(variant: &str, dtype: &str, lora: bool) {
    let ws = Workspace::new();
    let tokens = tokenized(&ws, 400);
    copy_dir(&fixture(variant), &ws.path().join("base"));
    let mut params = json!({ "model": { "path": "base" }, "max_steps": 1, "learning_rate": 0.0 });
    if lora {
        params["lora"] = json!({ "r": 4, "targets": ["q_proj", "v_proj"] });
    }
    let tuned = ws
        .run("finetune", params, &[tokens.input("tokenize")])
        .unwrap();
    assert_eq!(tuned.json("metrics.json")["source_dtype"], dtype);
    let bundle = ws
        .run("export-onnx", json!({}), &[tuned.input("finetune")])
        .unwrap();
    let expected = expected();
    let rows: Vec<Vec<i64>> = serde_json::from_value(expected["rows"].clone()).unwrap();
    let (ids, mask) = batch(&rows);
    let mut session =
        Session::from_file(&bundle.path("model.onnx"), &SessionOptions::default()).unwrap();
    let out = session
        .run(&[("input_ids", &ids), ("attention_mask", &mask)])
        .unwrap();
    let logits = out["logits"].as_f32().unwrap();
    let hf: Vec<Vec<f64>> = serde_json::from_value(expected[variant].clone()).unwrap();
    for (ours, theirs) in logits.chunks(hf[0].len()).zip(&hf) {
        for (&o, &t) in ours.iter().zip(theirs) {
            // The tolerance of the GPT-Neo fixtures (stages/tests/it/gpt_neo.rs).
            assert!(
                (f64::from(o) - t).abs() <= 1e-5 + 1e-4 * t.abs(),
                "{variant}: logits {ours:?}, transformers {theirs:?}"
            );
        }
    }
}

#[test]
fn a_sharded_checkpoint_gives_transformers_logits() {
    starts_from("sharded", "float32", false);
}

#[test]
fn a_bfloat16_checkpoint_gives_transformers_logits_through_lora() {
    starts_from("bf16", "bfloat16", true);
}

#[test]
fn a_sharded_float16_checkpoint_gives_transformers_logits() {
    starts_from("f16", "float16", false);
}

/// A bfloat16 checkpoint's frozen embedding tables are gathered in bfloat16, read in place
/// from the file, and widened exactly: LoRA training from it writes the same weights, bit
/// for bit, as training from its float32 copy, and holds the tables in half the bytes; with
/// `frozen_dtype: bf16` the frozen linear weights are read in place too.
#[test]
fn lora_from_bfloat16_gathers_its_tables_in_place_and_trains_as_its_float32_copy() {
    let ws = Workspace::new();
    let tokens = tokenized(&ws, 400);
    copy_dir(&fixture("bf16"), &ws.path().join("bf16"));
    let widened = ws.path().join("f32");
    std::fs::create_dir(&widened).unwrap();
    std::fs::copy(fixture("bf16/config.json"), widened.join("config.json")).unwrap();
    let tensors = weights::load_all(&fixture("bf16/model.safetensors")).unwrap();
    let named: Vec<(&str, &HostTensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    weights::save(&widened.join("model.safetensors"), &named).unwrap();
    let tune = |folder: &str, frozen_dtype: &str| {
        let params = json!({
            "model": { "path": folder }, "max_steps": 3, "learning_rate": 0.01,
            "lora": { "r": 4, "targets": ["q_proj", "v_proj"] }, "frozen_dtype": frozen_dtype,
        });
        ws.run("finetune", params, &[tokens.input("tokenize")])
            .unwrap()
    };
    let (half, full) = (tune("bf16", "f32"), tune("f32", "f32"));
    for file in [
        "model/model.safetensors",
        "adapter/adapter_model.safetensors",
    ] {
        assert!(
            std::fs::read(half.path(file)).unwrap() == std::fs::read(full.path(file)).unwrap(),
            "{file} differs between the bfloat16 checkpoint and its float32 copy"
        );
    }
    let frozen = |run: &crate::util::Ran| {
        run.json("metrics.json")["frozen_weight_bytes"]
            .as_u64()
            .unwrap()
    };
    let tables: usize = ["transformer.wte.weight", "transformer.wpe.weight"]
        .iter()
        .map(|name| tensors[*name].as_f32().unwrap().len())
        .sum();
    assert_eq!(
        frozen(&full) - frozen(&half),
        2 * tables as u64,
        "the tables take 2 bytes an element, not 4"
    );

    // `frozen_dtype: bf16` reads the linear weights in place too (exact: the checkpoint's own
    // values), multiplied in f32: the same training up to the order of f32 sums.
    let in_place = tune("bf16", "bf16");
    // In the blocks, the 2-D tensors are the linear weights.
    let linear: usize = (tensors.iter())
        .filter(|(name, t)| name.starts_with("transformer.h.") && t.shape().len() == 2)
        .map(|(_, t)| t.as_f32().unwrap().len())
        .sum();
    assert_eq!(frozen(&half) - frozen(&in_place), 2 * linear as u64);
    let adapter = |run: &crate::util::Ran| {
        weights::load_all(&run.path("adapter/adapter_model.safetensors")).unwrap()
    };
    let (got, want) = (adapter(&in_place), adapter(&full));
    for (name, w) in &want {
        let (g, w) = (got[name].as_f32().unwrap(), w.as_f32().unwrap());
        let scale = w.iter().fold(0f32, |m, v| m.max(v.abs()));
        let error = g
            .iter()
            .zip(w)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(error <= 1e-4 * scale, "{name}: {error} over {scale}");
    }
}

/// The specs of the fixture model, read from its `config.json`.
fn fixture_specs() -> Vec<ParamSpec> {
    let config = hf_folder::read_config(&fixture("sharded")).unwrap();
    let mut g = pipe_onnx::Graph::new("specs");
    config.classifier(&mut g, None).unwrap().specs().to_vec()
}

/// A copy of the sharded fixture in a fresh folder, to break.
fn sharded_copy(ws: &Workspace) -> PathBuf {
    let dir = ws.path().join("sharded");
    copy_dir(&fixture("sharded"), &dir);
    dir
}

/// The error of loading `dir`, checked to be marked as bad input (`pipe run` exits 2 on it).
fn load_error(dir: &Path) -> String {
    let error = hf_folder::read_weights(dir, &fixture_specs(), &[], 0).unwrap_err();
    assert!(pipe_engine::BadInput::is_in(&error), "{error:#}");
    message(error)
}

#[test]
fn a_truncated_shard_is_named_with_a_tensor_it_holds() {
    let ws = Workspace::new();
    let dir = sharded_copy(&ws);
    let shard = dir.join("model-00002-of-00002.safetensors");
    let len = std::fs::metadata(&shard).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&shard)
        .unwrap()
        .set_len(len - 100)
        .unwrap();
    let e = load_error(&dir);
    assert!(
        e.contains("model-00002-of-00002.safetensors (it holds tensor ")
            && e.contains("is not a complete safetensors file")
            && e.contains("download or copy it again"),
        "{e}"
    );
}

#[test]
fn an_index_naming_a_missing_shard_is_refused_before_reading() {
    let ws = Workspace::new();
    let dir = sharded_copy(&ws);
    std::fs::remove_file(dir.join("model-00001-of-00002.safetensors")).unwrap();
    let e = load_error(&dir);
    assert!(
        e.contains("model.safetensors.index.json names the shard model-00001-of-00002.safetensors")
            && e.contains("(holding tensor ")
            && e.contains("does not exist"),
        "{e}"
    );
}

/// Replaces the shard `file` of `dir` by one holding the same tensors, except `name`, which
/// gets `dtype` and `shape` (zeros).
fn rewrite_shard(dir: &Path, file: &str, name: &str, dtype: safetensors::Dtype, shape: &[usize]) {
    let path = dir.join(file);
    let bytes = std::fs::read(&path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut kept: Vec<(String, safetensors::tensor::TensorView<'_>)> = st.tensors();
    let size = shape.iter().product::<usize>() * dtype.bitsize() / 8;
    let zeros = vec![0u8; size];
    for (n, view) in &mut kept {
        if n.as_str() == name {
            *view = safetensors::tensor::TensorView::new(dtype, shape.to_vec(), &zeros).unwrap();
        }
    }
    let out = safetensors::serialize(kept, None).unwrap();
    std::fs::write(&path, out).unwrap();
}

#[test]
fn a_shard_with_a_wrong_shape_or_type_names_the_file_and_the_tensor() {
    let ws = Workspace::new();
    let dir = sharded_copy(&ws);
    let index: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("model.safetensors.index.json")).unwrap(),
    )
    .unwrap();
    let name = "transformer.h.0.ln_1.weight";
    let file = index["weight_map"][name].as_str().unwrap().to_string();
    rewrite_shard(&dir, &file, name, safetensors::Dtype::F32, &[31]);
    let e = load_error(&dir);
    assert!(
        e.contains(&format!(
            "shape mismatch for {name}: checkpoint has [31], the config needs [32]"
        )) && e.contains(&file),
        "{e}"
    );
    rewrite_shard(&dir, &file, name, safetensors::Dtype::I64, &[32]);
    let e = load_error(&dir);
    assert!(
        e.contains(&format!("{name} in ")) && e.contains(&file) && e.contains("is I64"),
        "{e}"
    );
    // The finetune stage stops on it before training, with an error `pipe run` exits 2 on.
    let e = finetune_error(&ws, &tokenized(&ws, 400));
    assert!(e.contains(name) && e.contains(&file), "{e}");
}

/// The error of a one-step finetune from the workspace's `sharded` folder, checked to be
/// marked as bad input.
fn finetune_error(ws: &Workspace, tokens: &crate::util::Ran) -> String {
    let error = ws
        .run(
            "finetune",
            json!({ "model": { "path": "sharded" }, "max_steps": 1 }),
            &[tokens.input("tokenize")],
        )
        .unwrap_err();
    assert!(pipe_engine::BadInput::is_in(&error), "{error:#}");
    message(error)
}

/// The checkpoint of the memory test: 24 tensors of 1024 × 2048 (8 MiB each in float32).
fn big_specs() -> Vec<ParamSpec> {
    (0..24)
        .map(|i| ParamSpec {
            name: format!("layers.{i}.weight"),
            shape: vec![1024, 2048],
            init: Init::Zeros,
        })
        .collect()
}

/// Writes the tensors of `specs` as a safetensors file of `dtype` (`F32` or `BF16`) with
/// pseudo-random values, streamed, so the writer holds one row at a time.
fn write_big(path: &Path, specs: &[ParamSpec], dtype: safetensors::Dtype) {
    let width = dtype.bitsize() / 8;
    let mut header = serde_json::Map::new();
    let mut offset = 0;
    for spec in specs {
        let bytes = spec.numel() * width;
        header.insert(
            spec.name.clone(),
            json!({ "dtype": format!("{dtype:?}"), "shape": spec.shape,
                    "data_offsets": [offset, offset + bytes] }),
        );
        offset += bytes;
    }
    let mut text = Value::Object(header).to_string();
    while !text.len().is_multiple_of(8) {
        text.push(' ');
    }
    let mut out = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    out.write_all(&(text.len() as u64).to_le_bytes()).unwrap();
    out.write_all(text.as_bytes()).unwrap();
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut row = Vec::new();
    for spec in specs {
        let cols = *spec.shape.last().unwrap() as usize;
        for _ in 0..spec.numel() / cols {
            row.clear();
            for _ in 0..cols {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let v = ((state >> 40) as f32 / (1u64 << 24) as f32) - 0.5;
                match width {
                    4 => row.extend_from_slice(&v.to_le_bytes()),
                    _ => row.extend_from_slice(&((v.to_bits() >> 16) as u16).to_le_bytes()),
                }
            }
            out.write_all(&row).unwrap();
        }
    }
    out.flush().unwrap();
}

/// `VmHWM` (the peak resident memory) of this process, in bytes.
fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<u64>()
        .unwrap()
        * 1024
}

/// Set in the child process of [`a_checkpoint_is_never_read_whole_into_memory`]: the
/// checkpoint it loads.
const CHILD_VAR: &str = "PIPE_TEST_LOAD_CHECKPOINT";

/// Loads `path` in a fresh process (this test binary again, running only this test with
/// [`CHILD_VAR`] set) and returns its peak resident memory before and after the load.
fn peak_of_a_load(path: &Path) -> (u64, u64) {
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "checkpoints::a_checkpoint_is_never_read_whole_into_memory",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_VAR, path)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The harness prints the test's name on the same line, before what the test prints.
    let line = stdout
        .lines()
        .find_map(|l| l.split_once("peak ").map(|(_, rest)| rest.trim()))
        .unwrap_or_else(|| panic!("no peak in {stdout}"));
    let (before, after) = line.split_once(' ').unwrap();
    (before.parse().unwrap(), after.parse().unwrap())
}

#[test]
fn a_checkpoint_is_never_read_whole_into_memory() {
    let specs = big_specs();
    if let Some(path) = std::env::var_os(CHILD_VAR) {
        let before = peak_rss();
        let loaded = weights::load(Path::new(&path), &specs, &[], 0).unwrap();
        let after = peak_rss();
        assert_eq!(loaded.len(), specs.len());
        println!("peak {before} {after}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let f32_bytes: u64 = specs.iter().map(|s| s.numel() as u64 * 4).sum();
    let tensor = 1024 * 2048 * 4;
    for (file, dtype) in [
        ("f32.safetensors", safetensors::Dtype::F32),
        ("bf16.safetensors", safetensors::Dtype::BF16),
    ] {
        let path = dir.path().join(file);
        write_big(&path, &specs, dtype);
        let on_disk = std::fs::metadata(&path).unwrap().len();
        let (before, after) = peak_of_a_load(&path);
        let grew = after.saturating_sub(before);
        // Reading the file whole and copying it costs file + copy (384 MiB for float32,
        // 288 MiB for bfloat16); a mapped read costs the copy and about one tensor's pages.
        let bound = f32_bytes + 4 * tensor;
        assert!(
            grew <= bound,
            "{file}: loading {on_disk} bytes into {f32_bytes} bytes of f32 grew the peak by \
             {grew} bytes (bound {bound}; file + copy would be {})",
            on_disk + f32_bytes
        );
    }
}

/// A folder's `config.json` must name its family, and be an object; a folder standing where a
/// weights file should is named as such. Each is the user's input (`pipe run` exits 2).
#[test]
fn a_folder_names_its_family_and_holds_files_where_files_go() {
    let ws = Workspace::new();
    let dir = sharded_copy(&ws);
    let config_error = |config: &str| {
        std::fs::write(dir.join("config.json"), config).unwrap();
        let error = hf_folder::read_config(&dir).unwrap_err();
        assert!(pipe_engine::BadInput::is_in(&error), "{error:#}");
        message(error)
    };
    let original = std::fs::read_to_string(fixture("sharded/config.json")).unwrap();
    let mut untyped: Value = serde_json::from_str(&original).unwrap();
    untyped.as_object_mut().unwrap().remove("model_type");
    let e = config_error(&untyped.to_string());
    assert!(
        e.contains("has no `model_type`") && e.contains("gpt_neo, bert"),
        "{e}"
    );
    let e = config_error("[1, 2, 3]");
    assert!(e.contains("is not a JSON object of config keys"), "{e}");
    std::fs::write(dir.join("config.json"), original).unwrap();

    let shard = dir.join("model-00002-of-00002.safetensors");
    std::fs::remove_file(&shard).unwrap();
    std::fs::create_dir(&shard).unwrap();
    let e = load_error(&dir);
    assert!(e.contains("is a folder, not a file"), "{e}");

    let index = dir.join("model.safetensors.index.json");
    std::fs::remove_file(&index).unwrap();
    std::fs::create_dir(&index).unwrap();
    let error = hf_folder::weights_path(&dir).unwrap_err();
    assert!(pipe_engine::BadInput::is_in(&error), "{error:#}");
    assert!(message(error).contains("is a folder, not a file"));
}

/// A checkpoint holding a NaN makes the first step's loss NaN: the error names the tensor
/// and says the checkpoint is damaged, not that the learning rate is too high.
#[test]
fn a_nan_in_the_checkpoint_is_named_not_blamed_on_the_learning_rate() {
    let ws = Workspace::new();
    let tokens = tokenized(&ws, 400);
    let dir = sharded_copy(&ws);
    let damaged = "transformer.h.0.attn.attention.q_proj.weight";
    let index: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("model.safetensors.index.json")).unwrap(),
    )
    .unwrap();
    let shard = dir.join(index["weight_map"][damaged].as_str().unwrap());
    let mut tensors = weights::load_all(&shard).unwrap();
    let mut values = tensors[damaged].as_f32().unwrap().to_vec();
    values[3] = f32::NAN;
    let shape = tensors[damaged].shape().to_vec();
    tensors.insert(damaged.into(), HostTensor::f32(&shape, values).unwrap());
    let named: Vec<(&str, &HostTensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    // Written beside and renamed over: the tensors read may be mapped from the shard.
    let written = dir.join("damaged.safetensors");
    weights::save(&written, &named).unwrap();
    drop(named);
    drop(tensors);
    std::fs::rename(&written, &shard).unwrap();
    let e = finetune_error(&ws, &tokens);
    assert!(
        e.contains(&format!(
            "{damaged} holds a value that is not finite (element 3)"
        )) && e.contains("checkpoint is damaged")
            && !e.contains("learning_rate"),
        "{e}"
    );
}
