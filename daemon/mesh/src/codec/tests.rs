//! Unit tests of the sans-IO frame codec: round trips at every split point, each limit, and
//! random / truncated / oversized input (the decoder must return errors, never panic).

use super::*;

fn header(shape: Vec<u64>, dtype: DType) -> FrameHeader {
    let elems: u64 = if shape.is_empty() {
        0
    } else {
        shape.iter().product()
    };
    FrameHeader {
        request_id: 7,
        plan_version: 3,
        kind: FrameKind::Activation as i32,
        layer: 12,
        positions: vec![0, 1],
        dtype: dtype as i32,
        payload_len: elems * dtype.size_bytes().unwrap(),
        shape,
        ..Default::default()
    }
}

fn encode(h: &FrameHeader, payload: &[u8]) -> Vec<u8> {
    let mut out = encode_header(h, payload.len(), &FrameLimits::default())
        .unwrap()
        .to_vec();
    out.extend_from_slice(payload);
    out
}

fn decode_all(dec: &mut FrameDecoder, bytes: &[u8]) -> Result<Vec<Frame>, FrameError> {
    let mut src = BytesMut::from(bytes);
    let mut out = Vec::new();
    while let Some(f) = dec.decode(&mut src)? {
        out.push(f);
    }
    if let Some(f) = dec.decode_eof(&mut src)? {
        out.push(f);
    }
    Ok(out)
}

#[test]
fn f32_round_trip_at_every_split() {
    let values: Vec<f32> = (0..24).map(|i| i as f32 * 0.5 - 3.25).collect();
    let payload = f32s_to_bytes(&values);
    let h = header(vec![2, 12], DType::F32);
    let wire = encode(&h, &payload);
    for split in 0..=wire.len() {
        let mut dec = FrameDecoder::default();
        let mut src = BytesMut::from(&wire[..split]);
        let first = dec.decode(&mut src).unwrap();
        src.extend_from_slice(&wire[split..]);
        let frame = match first {
            Some(f) => f,
            None => dec.decode(&mut src).unwrap().expect("whole frame buffered"),
        };
        assert_eq!(frame.header, h);
        assert_eq!(f32s_from_bytes(&frame.payload).unwrap(), values);
        assert!(src.is_empty());
        assert_eq!(dec.decode_eof(&mut src).unwrap(), None);
    }
}

#[test]
fn several_frames_back_to_back_and_empty_payloads() {
    let a = header(vec![3], DType::F16);
    let mut release = header(vec![], DType::F32);
    release.kind = FrameKind::Release as i32;
    let mut wire = encode(&a, &[1, 2, 3, 4, 5, 6]);
    wire.extend(encode(&release, &[]));
    wire.extend(encode(&a, &[7, 8, 9, 10, 11, 12]));
    let frames = decode_all(&mut FrameDecoder::default(), &wire).unwrap();
    assert_eq!(frames.len(), 3);
    assert_eq!(&frames[0].payload[..], &[1, 2, 3, 4, 5, 6]);
    assert_eq!(frames[1].header.kind, FrameKind::Release as i32);
    assert!(frames[1].payload.is_empty());
    assert_eq!(&frames[2].payload[..], &[7, 8, 9, 10, 11, 12]);
}

#[test]
fn payload_is_split_off_without_copy() {
    let h = header(vec![1024], DType::F32);
    let wire = encode(&h, &vec![9u8; 4096]);
    let mut src = BytesMut::from(&wire[..]);
    let base = src.as_ptr() as usize;
    let frame = FrameDecoder::default().decode(&mut src).unwrap().unwrap();
    let hdr_len = wire.len() - 4096;
    assert_eq!(
        frame.payload.as_ptr() as usize,
        base + hdr_len,
        "payload shares the read buffer"
    );
}

#[test]
fn oversized_header_is_rejected_before_buffering() {
    let mut dec = FrameDecoder::default();
    let mut src = BytesMut::from(&((MAX_HEADER_LEN as u32) + 1).to_le_bytes()[..]);
    assert!(matches!(
        dec.decode(&mut src),
        Err(FrameError::HeaderTooLarge { .. })
    ));
    // A failed decoder stays failed.
    assert!(dec.decode(&mut BytesMut::new()).is_err());
    let mut src = BytesMut::from(&u32::MAX.to_le_bytes()[..]);
    assert!(matches!(
        FrameDecoder::default().decode(&mut src),
        Err(FrameError::HeaderTooLarge { .. })
    ));
}

#[test]
fn payload_limits_and_shape_checks() {
    let limits = FrameLimits::default();
    let mut h = header(vec![2, 3], DType::F32);
    h.payload_len = 25;
    assert!(matches!(
        validate_header(&h, &limits),
        Err(FrameError::PayloadLengthMismatch { .. })
    ));
    let h = header(vec![MAX_PAYLOAD_LEN / 4 + 1], DType::F32);
    assert!(matches!(
        validate_header(&h, &limits),
        Err(FrameError::PayloadTooLarge { .. })
    ));
    let mut h = header(vec![u64::MAX, 4], DType::F32);
    h.payload_len = 16;
    assert!(matches!(
        validate_header(&h, &limits),
        Err(FrameError::ShapeOverflow { .. })
    ));
    let mut h = header(vec![], DType::F32);
    h.payload_len = 4;
    assert!(matches!(
        validate_header(&h, &limits),
        Err(FrameError::PayloadLengthMismatch { .. })
    ));
    let mut h = header(vec![1], DType::F32);
    h.kind = 99;
    assert_eq!(
        validate_header(&h, &limits),
        Err(FrameError::UnknownKind(99))
    );
    let mut h = header(vec![1], DType::F32);
    h.dtype = -1;
    assert_eq!(
        validate_header(&h, &limits),
        Err(FrameError::UnknownDType(-1))
    );
    let mut h = header(vec![1], DType::F32);
    h.kind = FrameKind::Unspecified as i32;
    assert_eq!(
        validate_header(&h, &limits),
        Err(FrameError::UnknownKind(0))
    );
    let mut h = header(vec![1], DType::F32);
    h.dtype = DType::Unspecified as i32;
    assert_eq!(
        validate_header(&h, &limits),
        Err(FrameError::UnknownDType(0))
    );
    let mut h = header(vec![], DType::F32);
    h.dtype = DType::Unspecified as i32;
    assert_eq!(validate_header(&h, &limits), Ok(0));
    let h = header(vec![2], DType::F16);
    assert_eq!(validate_header(&h, &limits), Ok(4));
    // The sender checks the actual payload size too.
    assert!(matches!(
        encode_header(&h, 5, &limits),
        Err(FrameError::PayloadSizeDiffers {
            declared: 4,
            actual: 5
        })
    ));
}

#[test]
fn mismatch_on_the_wire_is_rejected() {
    let mut h = header(vec![4], DType::F32);
    h.payload_len = 8;
    let body = h.encode_to_vec();
    let mut wire = (body.len() as u32).to_le_bytes().to_vec();
    wire.extend(body);
    wire.extend([0u8; 8]);
    assert!(matches!(
        decode_all(&mut FrameDecoder::default(), &wire),
        Err(FrameError::PayloadLengthMismatch {
            declared: 8,
            expected: 16,
            ..
        })
    ));
}

#[test]
fn truncated_streams_error_at_eof() {
    let h = header(vec![8], DType::F32);
    let wire = encode(&h, &[0u8; 32]);
    for cut in 1..wire.len() {
        let r = decode_all(&mut FrameDecoder::default(), &wire[..cut]);
        assert!(
            matches!(r, Err(FrameError::Truncated { .. })),
            "cut at {cut}: {r:?}"
        );
    }
    assert_eq!(
        decode_all(&mut FrameDecoder::default(), &[]).unwrap(),
        vec![]
    );
}

#[test]
fn bytes_wanted_covers_a_whole_payload() {
    let h = header(vec![100], DType::F32);
    let wire = encode(&h, &[1u8; 400]);
    let hdr = wire.len() - 400;
    let mut dec = FrameDecoder::default();
    assert_eq!(dec.bytes_wanted_in(&[]), 4);
    assert_eq!(dec.bytes_wanted_in(&wire[..4]), hdr - 4);
    let mut src = BytesMut::from(&wire[..hdr + 10]);
    assert_eq!(dec.decode(&mut src).unwrap(), None);
    assert_eq!(dec.bytes_wanted_in(&src), 390);
}

/// Small deterministic generator for the fuzz-style tests (xorshift64*).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

#[test]
fn random_input_never_panics() {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let small = FrameLimits {
        max_header: 256,
        max_payload: 4096,
    };
    for _ in 0..20_000 {
        let len = rng.below(300) as usize;
        let mut bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        if len >= 4 && rng.below(2) == 0 {
            // Plausible header length so the prost decoder sees garbage too.
            let hl = rng.below(len as u64 - 3) as u32;
            bytes[..4].copy_from_slice(&hl.to_le_bytes());
        }
        let mut dec = FrameDecoder::new(small);
        let mut src = BytesMut::new();
        for chunk in bytes.chunks(1 + rng.below(40) as usize) {
            src.extend_from_slice(chunk);
            let _ = dec.bytes_wanted_in(&src);
            match dec.decode(&mut src) {
                Ok(Some(f)) => assert!(f.payload.len() as u64 <= small.max_payload),
                Ok(None) => {}
                Err(_) => break,
            }
        }
        let _ = dec.decode_eof(&mut src);
    }
}

#[test]
fn mutated_valid_frames_never_panic() {
    let mut rng = Rng(42);
    let h = header(vec![3, 5], DType::F16);
    let wire = encode(&h, &[7u8; 30]);
    for _ in 0..20_000 {
        let mut w = wire.clone();
        for _ in 0..1 + rng.below(4) {
            let i = rng.below(w.len() as u64) as usize;
            w[i] = rng.next() as u8;
        }
        w.truncate(rng.below(w.len() as u64 + 1) as usize);
        if let Ok(frames) = decode_all(&mut FrameDecoder::default(), &w) {
            for f in frames {
                assert_eq!(
                    validate_header(&f.header, &FrameLimits::default()).unwrap(),
                    f.payload.len() as u64
                );
            }
        }
    }
}
