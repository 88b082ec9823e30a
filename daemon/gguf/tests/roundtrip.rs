//! Writer → reader round trips (every value type, nested and empty arrays, several
//! tensors, custom alignment), typed getters and their coercions, `set`,
//! `parse_override`, and the writer's own misuse errors.

use dwarfstar_gguf::{
    parse_override, Array, GgmlType, GgufError, GgufFile, GgufWriter, Metadata, Value,
};

fn all_values() -> Vec<(&'static str, Value)> {
    vec![
        ("t.u8", Value::U8(200)),
        ("t.i8", Value::I8(-100)),
        ("t.u16", Value::U16(60000)),
        ("t.i16", Value::I16(-30000)),
        ("t.u32", Value::U32(4_000_000_000)),
        ("t.i32", Value::I32(-2_000_000_000)),
        ("t.u64", Value::U64(u64::MAX)),
        ("t.i64", Value::I64(i64::MIN)),
        ("t.f32", Value::F32(1.5e-6)),
        ("t.f64", Value::F64(-2.25e300)),
        ("t.bool.true", Value::Bool(true)),
        ("t.bool.false", Value::Bool(false)),
        ("t.str", Value::from("héllo, wörld ✓ 🦀")),
        ("t.str.empty", Value::from("")),
        ("t.a.u8", Value::from(vec![0u8, 1, 255])),
        ("t.a.i8", Value::from(vec![-128i8, 0, 127])),
        ("t.a.u16", Value::from(vec![1u16, 65535])),
        ("t.a.i16", Value::from(vec![-1i16, 32767])),
        ("t.a.u32", Value::from(vec![7u32, u32::MAX])),
        ("t.a.i32", Value::from(vec![-7i32, 3, i32::MAX])),
        ("t.a.u64", Value::from(vec![u64::MAX, 0])),
        ("t.a.i64", Value::from(vec![i64::MIN, 5])),
        ("t.a.f32", Value::from(vec![0.5f32, -1.0, f32::INFINITY])),
        ("t.a.f64", Value::from(vec![1e-300f64, 2.0])),
        ("t.a.bool", Value::from(vec![true, false, true])),
        (
            "t.a.str",
            Value::from(vec!["a".to_string(), String::new(), "ü".to_string()]),
        ),
        ("t.a.empty_str", Value::Array(Array::String(vec![]))),
        ("t.a.empty_f64", Value::Array(Array::F64(vec![]))),
        (
            "t.a.nested",
            Value::Array(Array::Array(vec![
                Array::I32(vec![1, 2]),
                Array::String(vec!["x".into()]),
                Array::Array(vec![Array::U8(vec![9]), Array::Bool(vec![])]),
                Array::F32(vec![]),
            ])),
        ),
    ]
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// (name, dims, type, bytes) of one tensor.
type Tensor = (String, Vec<u64>, GgmlType, Vec<u8>);

/// A file with every value type and five tensors (F32, F16, Q4_0, Q4_K 3-d, I8 4-d).
fn build(alignment: u64) -> (Vec<u8>, Vec<Tensor>) {
    let mut w = GgufWriter::new(alignment).unwrap();
    w.add_kv("general.architecture", "test").unwrap();
    for (k, v) in all_values() {
        w.add_kv(k, v).unwrap();
    }
    let tensors = vec![
        (
            "vec".to_string(),
            vec![5],
            GgmlType::F32,
            f32_bytes(&[1.0, 2.0, 3.0, 4.0, 5.0]),
        ),
        (
            "half".to_string(),
            vec![3, 2],
            GgmlType::F16,
            (0..12u8).collect(),
        ),
        (
            "q4".to_string(),
            vec![64, 3],
            GgmlType::Q4_0,
            (0..108u8).collect(),
        ),
        (
            "qk".to_string(),
            vec![256, 2, 2],
            GgmlType::Q4_K,
            vec![0xab; 144 * 4],
        ),
        (
            "i8.4d".to_string(),
            vec![2, 1, 3, 2],
            GgmlType::I8,
            (0..12u8).collect(),
        ),
        ("empty".to_string(), vec![0, 4], GgmlType::F32, vec![]),
    ];
    for (name, dims, ty, data) in &tensors {
        w.add_tensor(name.clone(), dims, *ty, data.clone()).unwrap();
    }
    (w.to_bytes().unwrap(), tensors)
}

#[test]
fn every_value_type_and_tensor_round_trips() {
    for alignment in [32u64, 1, 8, 64, 4096] {
        let (bytes, tensors) = build(alignment);
        let f = GgufFile::from_bytes(&bytes).unwrap();
        assert_eq!(f.version(), 3);
        assert_eq!(f.alignment(), alignment);
        assert_eq!(f.data_offset() % alignment, 0);
        let md = f.metadata();
        let mut want = vec![("general.architecture".to_string(), Value::from("test"))];
        want.extend(all_values().into_iter().map(|(k, v)| (k.to_string(), v)));
        if alignment != 32 {
            want.push((
                "general.alignment".to_string(),
                Value::U32(alignment as u32),
            ));
        }
        assert_eq!(md.entries(), &want[..], "alignment {alignment}");
        assert_eq!(f.tensors().len(), tensors.len());
        for (t, (name, dims, ty, data)) in f.tensors().iter().zip(&tensors) {
            assert_eq!((&t.name, &t.dims, t.ty), (name, dims, *ty));
            assert_eq!(t.offset % alignment, 0);
            assert_eq!(f.tensor_data(t), &data[..], "{name}");
            assert_eq!(f.tensor_bytes(name), Some(&data[..]));
        }
        // The owned buffer keeps tensor data aligned like a mapping would.
        let q4 = f.tensor("q4").unwrap();
        assert_eq!(
            f.tensor_data(q4).as_ptr() as usize % alignment.min(64) as usize,
            0
        );
        // Re-writing what was read gives the same bytes.
        let mut w = GgufWriter::new(alignment).unwrap();
        w.add_metadata(f.metadata()).unwrap();
        for t in f.tensors() {
            w.add_tensor(t.name.clone(), &t.dims, t.ty, f.tensor_data(t))
                .unwrap();
        }
        assert!(
            w.to_bytes().unwrap() == bytes,
            "alignment {alignment}: rewrite differs"
        );
    }
}

#[test]
fn version_2_is_read() {
    let (mut bytes, _) = build(32);
    bytes[4..8].copy_from_slice(&2u32.to_le_bytes());
    let f = GgufFile::from_bytes(&bytes).unwrap();
    assert_eq!(f.version(), 2);
    assert_eq!(f.get_u32("t.u32").unwrap(), 4_000_000_000);
}

#[test]
fn write_to_path_then_open_mmapped() {
    let dir = std::env::temp_dir().join(format!("dwarfstar-gguf-rt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("small.gguf");
    let mut w = GgufWriter::default();
    w.add_kv("general.architecture", "llama").unwrap();
    w.add_tensor("w", &[4, 2], GgmlType::F32, f32_bytes(&[1.0; 8]))
        .unwrap();
    w.write_to_path(&path).unwrap();
    let f = GgufFile::open(&path).unwrap();
    assert!(f.is_mmapped());
    assert_eq!(f.path(), Some(path.as_path()));
    let t = f.tensor("w").unwrap();
    assert_eq!(f.tensor_file_offset(t), f.data_offset());
    assert_eq!(f.tensor_data(t), &f32_bytes(&[1.0; 8])[..]);
    assert_eq!(f.len() % 32, 0, "last tensor is padded like gguf-py does");
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(matches!(GgufFile::open(&path), Err(GgufError::Io { .. })));
}

#[test]
fn getters_coerce_and_name_the_key() {
    let (bytes, _) = build(32);
    let f = GgufFile::from_bytes(&bytes).unwrap();
    assert_eq!(f.get_u32("t.u8").unwrap(), 200);
    assert_eq!(f.get_u64("t.u32").unwrap(), 4_000_000_000);
    assert_eq!(f.get_i64("t.i8").unwrap(), -100);
    assert_eq!(f.get_i32("t.u16").unwrap(), 60000);
    assert_eq!(f.get_u64("t.u64").unwrap(), u64::MAX);
    assert_eq!(f.get_f32("t.f32").unwrap(), 1.5e-6);
    assert_eq!(f.get_f32("t.u8").unwrap(), 200.0);
    assert_eq!(f.get_f64("t.f64").unwrap(), -2.25e300);
    assert!(f.get_bool("t.bool.true").unwrap());
    assert_eq!(f.get_str("t.str").unwrap(), "héllo, wörld ✓ 🦀");
    assert_eq!(f.get_str_array("t.a.str").unwrap(), ["a", "", "ü"]);
    assert_eq!(
        &*f.get_f32_array("t.a.f32").unwrap(),
        &[0.5, -1.0, f32::INFINITY]
    );
    assert_eq!(&*f.get_f32_array("t.a.f64").unwrap(), &[0.0, 2.0]);
    assert_eq!(&*f.get_i32_array("t.a.i32").unwrap(), &[-7, 3, i32::MAX]);
    assert_eq!(&*f.get_i32_array("t.a.u16").unwrap(), &[1, 65535]);
    assert_eq!(&*f.get_u32_array("t.a.u8").unwrap(), &[0, 1, 255]);
    assert_eq!(&*f.get_u32_array("t.a.u32").unwrap(), &[7, u32::MAX]);
    assert_eq!(f.get_array("t.a.nested").unwrap().len(), 4);

    let err = |r: Result<_, GgufError>| r.err().unwrap();
    assert!(
        matches!(err(f.get_u32("nope").map(|_| ())), GgufError::MissingKey { key } if key == "nope")
    );
    assert!(
        matches!(err(f.get_u32("t.i8").map(|_| ())), GgufError::OutOfRange { key, .. } if key == "t.i8")
    );
    assert!(matches!(
        err(f.get_u32("t.u64").map(|_| ())),
        GgufError::OutOfRange { .. }
    ));
    assert!(matches!(
        err(f.get_i64("t.u64").map(|_| ())),
        GgufError::OutOfRange { .. }
    ));
    assert!(
        matches!(err(f.get_u32("t.str").map(|_| ())), GgufError::WrongType { key, .. } if key == "t.str")
    );
    assert!(matches!(
        err(f.get_bool("t.u8").map(|_| ())),
        GgufError::WrongType { .. }
    ));
    assert!(matches!(
        err(f.get_str("t.a.str").map(|_| ())),
        GgufError::WrongType { .. }
    ));
    assert!(matches!(
        err(f.get_f32("t.bool.true").map(|_| ())),
        GgufError::WrongType { .. }
    ));
    assert!(matches!(
        err(f.get_str_array("t.a.i32").map(|_| ())),
        GgufError::WrongType { .. }
    ));
    assert!(matches!(
        err(f.get_f32_array("t.a.str").map(|_| ())),
        GgufError::WrongType { .. }
    ));
    assert!(
        matches!(err(f.get_i32_array("t.a.u32").map(|_| ())), GgufError::OutOfRange { key, .. } if key == "t.a.u32[1]")
    );
    assert!(matches!(
        err(f.get_u32_array("t.a.i8").map(|_| ())),
        GgufError::OutOfRange { .. }
    ));
    assert!(matches!(
        err(f.get_i32_array("t.a.f32").map(|_| ())),
        GgufError::WrongType { .. }
    ));

    assert_eq!(f.opt_u32("nope").unwrap(), None);
    assert_eq!(f.opt_u32("t.u16").unwrap(), Some(60000));
    assert_eq!(f.opt_str("nope").unwrap(), None);
    assert_eq!(f.opt_str_array("nope").unwrap(), None);
    assert_eq!(f.opt_f32_array("nope").unwrap(), None);
    assert!(
        f.opt_u32("t.str").is_err(),
        "present with the wrong type is an error"
    );
    assert_eq!(f.opt_bool("t.bool.false").unwrap(), Some(false));
}

#[test]
fn set_and_overrides() {
    let (bytes, _) = build(32);
    let mut f = GgufFile::from_bytes(&bytes).unwrap();
    let n = f.metadata().len();
    let (k, v) = parse_override("t.u32=int:7").unwrap();
    assert_eq!(v, Value::I64(7));
    assert_eq!(f.set(k, v), Some(Value::U32(4_000_000_000)));
    assert_eq!(f.get_u32("t.u32").unwrap(), 7);
    assert_eq!(
        f.metadata().entries()[5].0,
        "t.u32",
        "set keeps the position"
    );
    let (k, v) = parse_override("new.key=float:0.25").unwrap();
    f.set(k, v);
    assert_eq!(f.get_f32("new.key").unwrap(), 0.25);
    assert_eq!(f.metadata().len(), n + 1);
    assert_eq!(f.metadata().entries().last().unwrap().0, "new.key");
    assert_eq!(f.metadata_mut().remove("new.key"), Some(Value::F64(0.25)));
    assert_eq!(f.get("new.key"), None);
    assert_eq!(
        f.get_str("t.str").unwrap(),
        "héllo, wörld ✓ 🦀",
        "index still right after remove"
    );

    assert_eq!(
        parse_override("a.b=bool:true").unwrap(),
        ("a.b".into(), Value::Bool(true))
    );
    assert_eq!(
        parse_override("a.b=bool:false").unwrap().1,
        Value::Bool(false)
    );
    assert_eq!(
        parse_override("a=str:x=y:z").unwrap(),
        ("a".into(), Value::from("x=y:z"))
    );
    assert_eq!(parse_override("a=str:").unwrap().1, Value::from(""));
    assert_eq!(
        parse_override("a=int:-9223372036854775808").unwrap().1,
        Value::I64(i64::MIN)
    );
    assert_eq!(parse_override("a=float:1e3").unwrap().1, Value::F64(1000.0));
    let long_key = format!("{}=int:1", "k".repeat(128));
    let long_str = format!("a=str:{}", "s".repeat(128));
    for bad in [
        "noequals",
        "=int:1",
        "a=1",
        "a=uint:1",
        "a=int:",
        "a=int:1x",
        "a=int:99999999999999999999",
        "a=float:abc",
        "a=bool:yes",
        "a=bool:1",
        &long_key,
        &long_str,
    ] {
        assert!(
            matches!(parse_override(bad), Err(GgufError::BadOverride { .. })),
            "{bad:?} should be rejected"
        );
    }
    let mut m = Metadata::new();
    assert!(m.is_empty());
    m.set("x", Value::U8(1));
    assert_eq!(m.iter().collect::<Vec<_>>(), vec![("x", &Value::U8(1))]);
}

#[test]
fn writer_rejects_misuse() {
    use GgufError as E;
    assert!(matches!(GgufWriter::new(0), Err(E::BadAlignment { .. })));
    assert!(matches!(GgufWriter::new(48), Err(E::BadAlignment { .. })));
    assert!(matches!(
        GgufWriter::new(1 << 33),
        Err(E::BadAlignment { .. })
    ));
    let mut w = GgufWriter::new(64).unwrap();
    assert!(matches!(
        w.add_kv("general.alignment", Value::U32(32)),
        Err(E::BadAlignment { .. })
    ));
    assert!(matches!(
        w.add_kv("general.alignment", Value::U64(64)),
        Err(E::BadAlignment { .. })
    ));
    w.add_kv("general.alignment", Value::U32(64)).unwrap();
    w.add_kv("k", Value::U8(1)).unwrap();
    assert!(matches!(
        w.add_kv("k", Value::U8(2)),
        Err(E::DuplicateKey { .. })
    ));
    assert!(matches!(w.add_kv("", Value::U8(2)), Err(E::Writer(_))));
    let f32 = GgmlType::F32;
    assert!(matches!(
        w.add_tensor_info("x".repeat(64), &[1], f32),
        Err(E::TensorNameTooLong { .. })
    ));
    assert!(matches!(
        w.add_tensor_info("t", &[], f32),
        Err(E::BadDimCount { .. })
    ));
    assert!(matches!(
        w.add_tensor_info("t", &[1; 5], f32),
        Err(E::BadDimCount { .. })
    ));
    assert!(matches!(
        w.add_tensor_info("t", &[33], GgmlType::Q8_0),
        Err(E::BlockMismatch { .. })
    ));
    assert!(matches!(
        w.add_tensor_info("t", &[1 << 40, 1 << 40], f32),
        Err(E::BadShape { .. })
    ));
    assert!(matches!(
        w.add_tensor("t", &[4], f32, vec![0u8; 15]),
        Err(E::Writer(_))
    ));
    assert_eq!(w.add_tensor_info("a", &[4], f32).unwrap().offset, 0);
    assert_eq!(w.add_tensor_info("b", &[100], f32).unwrap().offset, 64);
    assert_eq!(w.add_tensor_info("c", &[1], f32).unwrap().offset, 64 + 448);
    assert!(matches!(
        w.add_tensor_info("a", &[4], f32),
        Err(E::DuplicateTensor { .. })
    ));

    let mut out = Vec::new();
    assert!(matches!(
        w.write_tensor_data(&mut out, "a", &[0; 16]),
        Err(E::Writer(_))
    ));
    assert!(matches!(w.finish(&mut out), Err(E::Writer(_))));
    w.write_header(&mut out).unwrap();
    let header_len = out.len();
    assert_eq!(header_len % 64, 0);
    assert!(matches!(w.add_kv("late", Value::U8(1)), Err(E::Writer(_))));
    assert!(matches!(
        w.add_tensor_info("late", &[1], f32),
        Err(E::Writer(_))
    ));
    assert!(matches!(w.write_header(&mut out), Err(E::Writer(_))));
    assert!(
        matches!(
            w.write_tensor_data(&mut out, "b", &[0; 400]),
            Err(E::Writer(_))
        ),
        "order"
    );
    assert!(
        matches!(
            w.write_tensor_data(&mut out, "a", &[0; 17]),
            Err(E::Writer(_))
        ),
        "too long"
    );
    w.write_tensor_data(&mut out, "a", &[1; 10]).unwrap();
    assert!(
        matches!(
            w.write_tensor_data(&mut out, "b", &[0; 400]),
            Err(E::Writer(_))
        ),
        "a incomplete"
    );
    assert!(
        matches!(
            w.write_tensor_data(&mut out, "a", &[1; 7]),
            Err(E::Writer(_))
        ),
        "too long"
    );
    w.write_tensor_data(&mut out, "a", &[1; 6]).unwrap();
    w.write_tensor_data(&mut out, "b", &[2; 400]).unwrap();
    assert!(matches!(w.finish(&mut out), Err(E::Writer(_))), "c missing");
    w.write_tensor_data(&mut out, "c", &[3; 4]).unwrap();
    assert!(matches!(
        w.write_tensor_data(&mut out, "c", &[]),
        Err(E::Writer(_))
    ));
    w.finish(&mut out).unwrap();
    assert!(matches!(w.finish(&mut out), Err(E::Writer(_))));
    assert_eq!(out.len(), header_len + 64 + 448 + 64);

    let f = GgufFile::from_bytes(&out).unwrap();
    assert_eq!(f.alignment(), 64);
    assert_eq!(f.tensor_bytes("b"), Some(&[2u8; 400][..]));

    let mut w = GgufWriter::default();
    w.add_tensor_info("streamed", &[4], f32).unwrap();
    assert!(
        matches!(w.to_bytes(), Err(E::Writer(_))),
        "write_all needs every tensor's data"
    );
}
