//! Devices through the binary: `device: cuda` where CUDA cannot be had stops the run before
//! any stage starts (exit 2, ONNX Runtime's reason and the fix, at the `device:` line);
//! `device: auto` falls back to the CPU and says so; `pipe doctor --json` describes the
//! libraries and CUDA.
//!
//! These machines have no GPU. Each test picks the ONNX Runtime build with `ORT_DYLIB_PATH`:
//! the CPU build (always fetched) has no CUDA provider at all; the CUDA build, when
//! `scripts/fetch-onnxruntime.sh --gpu` fetched it into `.tools/onnxruntime-gpu/`, registers
//! the real CUDA provider, which then fails on this machine's missing CUDA libraries or
//! driver. The tests of the CUDA build return early, saying so, when it is not fetched.

use std::path::{Path, PathBuf};
use std::process::Output;

use serde_json::Value;

use crate::util::{Project, small_finetune_manifest, stderr};

const SAMPLE: &str = include_str!("../../pipelines/data/student_questions.csv");

/// `.tools/<dir>/libonnxruntime.so.1.31.1` of this repository, when fetched.
fn library(dir: &str) -> Option<PathBuf> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join(".tools")
        .join(dir)
        .join("libonnxruntime.so.1.31.1");
    p.is_file().then_some(p)
}

fn cpu_build() -> PathBuf {
    library("onnxruntime").expect("the CPU build is fetched by scripts/test.sh")
}

/// The CUDA build, or `None` with a note on stderr (the test then checks nothing more).
fn gpu_build(test: &str) -> Option<PathBuf> {
    let lib = library("onnxruntime-gpu").filter(|l| {
        l.with_file_name("libonnxruntime_providers_cuda.so")
            .is_file()
    });
    if lib.is_none() {
        eprintln!(
            "{test}: the CUDA build is not fetched (scripts/fetch-onnxruntime.sh --gpu); \
             skipping its checks"
        );
    }
    lib
}

/// Ingest → split → tokenize → finetune on `device`, small enough for a test.
fn project(device: &str) -> Project {
    let p = Project::new();
    p.file("data/q.csv", SAMPLE);
    p.file(
        "dev.yaml",
        &small_finetune_manifest(
            "dev",
            &format!("    max_steps: 3\n    threads: 1\n    device: {device}\n"),
        ),
    );
    p
}

fn run_with(p: &Project, lib: &Path, args: &[&str]) -> Output {
    p.command(args)
        .env("ORT_DYLIB_PATH", lib)
        .output()
        .expect("pipe runs")
}

/// Asserts that the run stopped before any stage: exit 2, the diagnostic at the `device:`
/// line of the manifest, and nothing written (no stage output, no lockfile).
fn assert_refused_before_any_stage(p: &Project, out: &Output) -> String {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(2), "stderr:\n{err}");
    assert!(
        err.contains("finetune parameter `device`: cuda:0 is unavailable: "),
        "{err}"
    );
    // Line 28 of the manifest is `    device: cuda`.
    assert!(err.contains("dev.yaml:28:"), "{err}");
    assert!(err.contains("help: "), "{err}");
    assert!(
        !p.path(".pipe/out/dev/ingest").exists(),
        "ingest ran before the refusal"
    );
    assert!(!p.path("dev.lock").exists(), "a lockfile was written");
    assert!(
        !err.contains("Ran ") && String::from_utf8_lossy(&out.stdout).is_empty(),
        "a stage line was printed: {err}"
    );
    err
}

#[test]
fn cuda_with_the_cpu_build_stops_the_run_before_any_stage_and_names_the_fix() {
    let p = project("cuda");
    let out = run_with(&p, &cpu_build(), &["run", "dev.yaml"]);
    let err = assert_refused_before_any_stage(&p, &out);
    assert!(err.contains("has no CUDA execution provider"), "{err}");
    assert!(err.contains("CPUExecutionProvider"), "{err}");
    assert!(err.contains("scripts/fetch-onnxruntime.sh --gpu"), "{err}");
    // Validation and dry runs do not need the device.
    let out = run_with(&p, &cpu_build(), &["validate", "dev.yaml"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let out = run_with(&p, &cpu_build(), &["status", "dev.yaml"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

#[test]
fn a_cuda_stage_restored_from_the_cache_needs_no_cuda() {
    let p = project("cpu");
    let out = run_with(&p, &cpu_build(), &["run", "dev.yaml"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    // The device is not part of the key: trained on the CPU, the stage is cached for `cuda`.
    let manifest = p.read("dev.yaml").replace("device: cpu", "device: cuda");
    p.file("dev.yaml", &manifest);
    let out = run_with(&p, &cpu_build(), &["run", "dev.yaml", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let statuses: Vec<&str> = report["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["cached"; 4], "{report}");
    // Once finetune must run again, the machine must have the device: refused before it runs.
    p.file(
        "dev.yaml",
        &manifest.replace("max_steps: 3", "max_steps: 4"),
    );
    let out = run_with(&p, &cpu_build(), &["run", "dev.yaml"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("dev.yaml:28:") && err.contains("cuda:0 is unavailable"),
        "{err}"
    );
    assert!(!err.contains("Ran "), "{err}");
}

#[test]
fn cuda_with_the_cuda_build_reports_what_the_cuda_provider_said() {
    let Some(gpu) = gpu_build("cuda_with_the_cuda_build_reports_what_the_cuda_provider_said")
    else {
        return;
    };
    let p = project("cuda:0");
    let out = run_with(&p, &gpu, &["run", "dev.yaml"]);
    let err = assert_refused_before_any_stage(&p, &out);
    // The provider was registered and failed on a missing CUDA library or driver: the reason
    // is the dynamic loader's, not "no CUDA provider in this build".
    assert!(!err.contains("has no CUDA execution provider"), "{err}");
    assert!(
        err.contains("cannot open shared object file") && err.contains(".so"),
        "{err}"
    );
}

#[test]
fn auto_falls_back_to_the_cpu_says_so_and_records_it() {
    let p = project("auto");
    let out = run_with(&p, &cpu_build(), &["run", "dev.yaml", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let finetune = report["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "finetune")
        .unwrap();
    assert_eq!(finetune["status"], "ran");
    let headline = finetune["headline"].as_str().unwrap();
    assert!(headline.ends_with(" · cpu"), "{headline}");
    let metrics: Value =
        serde_json::from_str(&p.read(".pipe/out/dev/finetune/metrics.json")).unwrap();
    assert_eq!(metrics["device"], "cpu");
    let lock = p.read("dev.lock");
    assert!(lock.contains("device: cpu"), "{lock}");
    let err = stderr(&out);
    assert!(
        err.contains("device auto: running on the CPU; CUDA is unavailable: "),
        "{err}"
    );
}

#[test]
fn doctor_json_describes_the_libraries_and_cuda() {
    let p = Project::new();
    let out = run_with(&p, &cpu_build(), &["doctor", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let d: Value = serde_json::from_slice(&out.stdout).unwrap();
    let ort = &d["onnxruntime"];
    assert_eq!(ort["loaded"], cpu_build().to_str().unwrap());
    assert_eq!(ort["version"], "1.31.1");
    assert_eq!(ort["error"], Value::Null);
    assert!(
        ort["providers"]
            .as_array()
            .unwrap()
            .contains(&Value::from("CPUExecutionProvider")),
        "{ort}"
    );
    assert_eq!(ort["libraries"]["ort_dylib_path"], ort["loaded"]);
    assert_eq!(ort["libraries"]["cpu"], ort["loaded"]);
    // The CPU's integer extensions, as the kernel lists them.
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let flags: Vec<&str> = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("flags"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).split(' ').collect())
        .unwrap_or_default();
    if cfg!(target_arch = "x86_64") && !flags.is_empty() {
        let expected: Vec<Value> = ["avx512_vnni", "avx_vnni", "avx512bw", "avx2"]
            .into_iter()
            .filter(|f| flags.contains(f))
            .map(Value::from)
            .collect();
        // Without VNNI, uint8 × int8 products would saturate: int8 weights run uint8 × uint8.
        let vnni = expected
            .iter()
            .any(|f| f.as_str().unwrap().ends_with("vnni"));
        assert_eq!(
            d["cpu"]["integer_kernels"],
            Value::from(expected),
            "{}",
            d["cpu"]
        );
        let products = if vnni {
            "uint8 x int8"
        } else {
            "uint8 x uint8"
        };
        assert_eq!(d["cpu"]["int8_products"], products, "{}", d["cpu"]);
    }
    let cuda = &d["cuda"];
    assert_eq!(cuda["device"], "cuda:0");
    assert_eq!(cuda["available"], false);
    assert!(
        cuda["reason"]
            .as_str()
            .unwrap()
            .contains("has no CUDA execution provider"),
        "{cuda}"
    );
    assert!(
        cuda["fix"]
            .as_str()
            .unwrap()
            .contains("fetch-onnxruntime.sh --gpu"),
        "{cuda}"
    );
    for key in ["name", "memory_total_bytes", "memory_free_bytes"] {
        assert_eq!(cuda[key], Value::Null, "{key}: {cuda}");
    }

    let Some(gpu) = gpu_build("doctor_json_describes_the_libraries_and_cuda") else {
        return;
    };
    let out = run_with(&p, &gpu, &["doctor", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let d: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        d["onnxruntime"]["providers"]
            .as_array()
            .unwrap()
            .contains(&Value::from("CUDAExecutionProvider")),
        "{d}"
    );
    assert_eq!(d["onnxruntime"]["libraries"]["gpu"], gpu.to_str().unwrap());
    assert_eq!(d["cuda"]["available"], false);
    let reason = d["cuda"]["reason"].as_str().unwrap();
    assert!(
        reason.contains("cannot open shared object file"),
        "{reason}"
    );
}

#[test]
fn a_bad_ort_dylib_path_is_a_clear_error_naming_it() {
    let p = crate::predict::project();
    p.run_json("demo.yaml", 0);
    p.file("junk.so", "not a library\n");
    let junk = p.path("junk.so");
    let missing = p.path("no/such/libonnxruntime.so");
    for lib in [&junk, &missing] {
        let named = format!("ORT_DYLIB_PATH={}", lib.display());
        let doctor = run_with(&p, lib, &["doctor", "--json"]);
        let err = stderr(&doctor);
        assert_eq!(doctor.status.code(), Some(1), "{err}");
        assert!(!err.contains("panicked"), "{err}");
        let d: Value = serde_json::from_slice(&doctor.stdout).unwrap();
        let ort = &d["onnxruntime"];
        assert_eq!(ort["loaded"], Value::Null, "{ort}");
        let reason = ort["error"].as_str().unwrap();
        assert!(
            reason.contains(&named) && reason.contains("unset it"),
            "{reason}"
        );

        // The variable wins: a wrong one is never replaced by the library in `.tools/`.
        let out = run_with(&p, lib, &["predict", "export-onnx", "some text"]);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(
            err.contains(&format!("cannot load ONNX Runtime from {named}")),
            "{err}"
        );
        assert!(out.stdout.is_empty());
    }
}
