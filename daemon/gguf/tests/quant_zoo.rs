//! The reader against tests/fixtures/quant/quant-zoo.gguf (written by gguf-py) and
//! its index.json; the writer re-creates the file byte for byte.

use std::path::PathBuf;

use dwarfstar_gguf::{GgmlType, GgufFile, GgufWriter, Value};

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/quant")
}

fn open_zoo() -> GgufFile {
    let path = fixture_dir().join("quant-zoo.gguf");
    GgufFile::open(&path).unwrap_or_else(|e| panic!("opening {}: {e}", path.display()))
}

fn index() -> serde_json::Value {
    let text = std::fs::read_to_string(fixture_dir().join("index.json")).expect("index.json");
    serde_json::from_str(&text).expect("index.json parses")
}

/// Checks one tensor entry of index.json against the directory.
fn check_entry(f: &GgufFile, name: &str, e: &serde_json::Value) {
    let t = f
        .tensor(name)
        .unwrap_or_else(|| panic!("tensor {name} missing"));
    let ty = GgmlType::from_id(e["ggml_type_id"].as_u64().unwrap() as u32).unwrap();
    assert_eq!(t.ty, ty, "{name}");
    assert_eq!(t.ty.name(), e["ggml_type"].as_str().unwrap(), "{name}");
    let ne: Vec<u64> = e["ne"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect();
    assert_eq!(t.dims, ne, "{name}");
    assert_eq!(t.n_bytes, e["n_bytes"].as_u64().unwrap(), "{name}");
    assert_eq!(
        f.tensor_file_offset(t),
        e["offset"].as_u64().unwrap(),
        "{name}"
    );
    assert_eq!(f.tensor_data(t).len() as u64, t.n_bytes, "{name}");
    if let Some(rs) = e.get("row_size") {
        assert_eq!(t.row_bytes(), rs.as_u64().unwrap(), "{name}");
    }
}

#[test]
fn directory_matches_index_json() {
    let f = open_zoo();
    let idx = index();
    assert!(f.is_mmapped());
    assert_eq!(f.version(), 3);
    assert_eq!(f.alignment(), 32);
    assert_eq!(f.len(), 162_880);
    assert_eq!(f.data_offset(), idx["source"]["offset"].as_u64().unwrap());
    assert_eq!(f.get_str("general.architecture").unwrap(), "quant-zoo");
    assert_eq!(
        f.get_u32("quant_zoo.seed").unwrap(),
        idx["seed"].as_u64().unwrap() as u32
    );
    assert_eq!(f.get("quant_zoo.seed"), Some(&Value::U32(1234)));
    assert!(f
        .get_str("quant_zoo.description")
        .unwrap()
        .starts_with("One f32 matrix"));
    assert_eq!(f.metadata().len(), 3);

    for name in ["source", "activation", "imatrix"] {
        check_entry(&f, name, &idx[name]);
    }
    let types = idx["types"].as_object().unwrap();
    for e in types.values() {
        check_entry(&f, e["tensor"].as_str().unwrap(), e);
    }
    assert_eq!(f.tensors().len(), 3 + types.len());

    let src = f.tensor("source").unwrap();
    assert_eq!((src.rows(), src.cols(), src.n_elements()), (8, 1024, 8192));
    // The F16 dequant file is exact for F16 data: spot-check the mapped bytes.
    let deq = std::fs::read(fixture_dir().join("deq/f16.f32.bin")).unwrap();
    let q = f.tensor_bytes("q.f16").unwrap();
    for i in [0usize, 1, 1000, 8191] {
        let h = u16::from_le_bytes([q[2 * i], q[2 * i + 1]]);
        let want = f32::from_le_bytes(deq[4 * i..4 * i + 4].try_into().unwrap());
        assert_eq!(f16_to_f32(h), want, "element {i}");
    }
}

fn f16_to_f32(h: u16) -> f32 {
    let sign = if h & 0x8000 != 0 { -1.0 } else { 1.0 };
    let exp = (h >> 10) & 0x1f;
    let man = f32::from(h & 0x3ff);
    match exp {
        0 => sign * man * 2f32.powi(-24),
        31 => sign * f32::INFINITY,
        e => sign * (1.0 + man / 1024.0) * 2f32.powi(i32::from(e) - 15),
    }
}

/// gguf-py wrote the fixture; our writer lays out the same content identically.
#[test]
fn rewrite_is_byte_identical() {
    let f = open_zoo();
    let mut w = GgufWriter::new(f.alignment()).unwrap();
    w.add_metadata(f.metadata()).unwrap();
    for t in f.tensors() {
        let info = w.add_tensor_info(t.name.clone(), &t.dims, t.ty).unwrap();
        assert_eq!(info.offset, t.offset, "{}", t.name);
    }
    let mut out = Vec::new();
    w.write_header(&mut out).unwrap();
    for t in f.tensors() {
        // Stream in two chunks to exercise partial writes.
        let d = f.tensor_data(t);
        let (a, b) = d.split_at(d.len() / 3);
        w.write_tensor_data(&mut out, &t.name, a).unwrap();
        w.write_tensor_data(&mut out, &t.name, b).unwrap();
    }
    w.finish(&mut out).unwrap();
    assert_eq!(out.len() as u64, f.len());
    assert!(
        out == f.bytes(),
        "re-written quant-zoo.gguf differs from the original"
    );
}
