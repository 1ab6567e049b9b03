//! The bundle names its content, not the run that wrote it: a re-export that writes the same
//! model leaves `bundle.json` unchanged, so evaluate stays cached (early cutoff).

use crate::predict::project;
use crate::util::status_of;

#[test]
fn a_re_export_of_the_same_model_leaves_evaluate_cached() {
    let p = project();
    p.run_json("demo.yaml", 0);
    let info = p.read(".pipe/out/demo/export-onnx/bundle.json");
    // A file export does not read: `trained` and so export-onnx run again, on a new key.
    p.file("fixture/model/notes.txt", "a note beside the weights");
    let report = p.run_json("demo.yaml", 0);
    assert_eq!(status_of(&report, "trained"), "ran");
    assert_eq!(status_of(&report, "export-onnx"), "ran");
    assert_eq!(status_of(&report, "evaluate"), "cached");
    assert_eq!(p.read(".pipe/out/demo/export-onnx/bundle.json"), info);
}
