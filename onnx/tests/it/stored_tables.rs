//! Frozen tables gathered in their stored 16-bit type ([`Graph::gather_stored_tables`]): the
//! rewritten graph, fed the tables' bits in place, computes exactly what the f32 graph
//! computes from the same values widened; tables read any other way stay f32.

use std::collections::BTreeMap;
use std::sync::Arc;

use pipe_onnx::{DType, Graph, HostTensor, SharedBytes};

use crate::util::{Rng, fixed, run, session};

const ROWS: i64 = 7;
const WIDTH: i64 = 3;

/// `y = gather(emb, ids) + gather(emb16, ids)`, `z = gather(proj, ids) · proj[..3]ᵀ`: `emb`
/// and `emb16` are only gathered, `proj` is also multiplied.
fn graph() -> Graph {
    let mut g = Graph::new("tables");
    let table = fixed(&[ROWS, WIDTH]);
    let emb = g.input("emb", DType::F32, &table).unwrap();
    let emb16 = g.input("emb16", DType::F32, &table).unwrap();
    let proj = g
        .input("proj", DType::F32, &fixed(&[WIDTH, WIDTH]))
        .unwrap();
    let ids = g.input("ids", DType::I64, &fixed(&[4])).unwrap();
    let a = g.gather(emb, ids, 0).unwrap();
    let b = g.gather(emb16, ids, 0).unwrap();
    let y = g.add(a, b).unwrap();
    let small = g.input("small_ids", DType::I64, &fixed(&[2])).unwrap();
    let rows = g.gather(proj, small, 0).unwrap();
    let z = g.matmul(rows, proj).unwrap();
    g.output(y, "y").unwrap();
    g.output(z, "z").unwrap();
    g
}

/// `n` 16-bit patterns of `dtype` (finite values in about [-2, 2]) as the bytes a checkpoint
/// holds, and the same values in f32.
fn stored(rng: &mut Rng, dtype: DType, n: usize) -> (Vec<u8>, Vec<f32>) {
    let values: Vec<f32> = (0..n).map(|_| rng.uniform(-2.0, 2.0) as f32).collect();
    let bits: Vec<u16> = match dtype {
        DType::BF16 => values
            .iter()
            .map(|&v| half::bf16::from_f32(v).to_bits())
            .collect(),
        _ => values
            .iter()
            .map(|&v| half::f16::from_f32(v).to_bits())
            .collect(),
    };
    let wide = match dtype {
        DType::BF16 => bits
            .iter()
            .map(|&b| half::bf16::from_bits(b).to_f32())
            .collect(),
        _ => bits
            .iter()
            .map(|&b| half::f16::from_bits(b).to_f32())
            .collect(),
    };
    (bits.iter().flat_map(|b| b.to_le_bytes()).collect(), wide)
}

#[test]
fn gathered_tables_read_in_their_stored_type_give_the_f32_results_exactly() {
    let mut rng = Rng::new(3);
    let n = (ROWS * WIDTH) as usize;
    let (emb_bits, emb) = stored(&mut rng, DType::BF16, n);
    let (emb16_bits, emb16) = stored(&mut rng, DType::F16, n);
    let proj: Vec<f32> = (0..9).map(|_| rng.uniform(-1.0, 1.0) as f32).collect();
    let table = [ROWS, WIDTH];
    let mut feeds = BTreeMap::from([
        (
            "ids".to_string(),
            HostTensor::i64(&[4], vec![6, 0, 6, 3]).unwrap(),
        ),
        (
            "small_ids".to_string(),
            HostTensor::i64(&[2], vec![2, 0]).unwrap(),
        ),
        ("proj".to_string(), HostTensor::f32(&[3, 3], proj).unwrap()),
        ("emb".to_string(), HostTensor::f32(&table, emb).unwrap()),
        ("emb16".to_string(), HostTensor::f32(&table, emb16).unwrap()),
    ]);
    let expected = run(&mut session(&graph()), &feeds);

    let mut g = graph();
    let half = BTreeMap::from([
        ("emb".to_string(), DType::BF16),
        ("emb16".to_string(), DType::F16),
        ("proj".to_string(), DType::BF16),
    ]);
    let done = g.gather_stored_tables(&half);
    let expected_tables = BTreeMap::from([
        ("emb".to_string(), DType::BF16),
        ("emb16".to_string(), DType::F16),
    ]);
    assert_eq!(done, expected_tables, "a table also multiplied is left out");
    let types: BTreeMap<&str, DType> = g.inputs().iter().map(|&t| (g.name(t), t.dtype())).collect();
    assert_eq!(types["emb"], DType::BF16);
    assert_eq!(types["emb16"], DType::F16);
    assert_eq!(
        types["proj"],
        DType::F32,
        "a table also multiplied stays f32"
    );

    for (name, dtype, bits) in [
        ("emb", DType::BF16, emb_bits),
        ("emb16", DType::F16, emb16_bits),
    ] {
        let len = bits.len();
        let owner: SharedBytes = Arc::new(bits);
        let t = HostTensor::half_shared(&table, dtype, owner, 0..len)
            .unwrap()
            .expect("aligned bits read in place");
        assert_eq!(t.dtype(), dtype);
        feeds.insert(name.to_string(), t);
    }
    let got = run(&mut session(&g), &feeds);
    assert_eq!(got["y"], expected["y"]);
    assert_eq!(got["z"], expected["z"]);
}

#[test]
fn half_tensors_widen_exactly_by_range_and_refuse_other_types() {
    let bits: Vec<u8> = [0x3F80u16, 0xC000, 0x3F81, 0x0080]
        .iter()
        .flat_map(|b| b.to_le_bytes())
        .collect();
    let owner: SharedBytes = Arc::new(bits);
    let t = HostTensor::half_shared(&[4], DType::BF16, owner.clone(), 0..8)
        .unwrap()
        .unwrap();
    let smallest_normal = f32::from_bits(0x0080_0000);
    assert_eq!(
        t.f32_range(1..4).unwrap().as_ref(),
        &[-2.0, 1.0 + 2f32.powi(-7), smallest_normal]
    );
    assert!(t.f32_range(3..5).is_none(), "past the end");
    assert!(t.as_f32().is_none());
    assert!(
        HostTensor::half_shared(&[4], DType::F32, owner.clone(), 0..8)
            .unwrap()
            .is_none()
    );
    assert!(
        HostTensor::half_shared(&[3], DType::BF16, owner, 0..8).is_err(),
        "the shape must hold the elements"
    );
}
