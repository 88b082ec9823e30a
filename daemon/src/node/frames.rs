//! Pipeline and expert messages as data-plane frames: a prost
//! [`FrameHeader`] plus a raw little-endian payload, and back, with every
//! field a peer sends checked before it is trusted. A step's frame carries
//! each row's token id beside the rows.

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use dwarfstar_model::ExpertBatch;
use dwarfstar_proto::v1::{DType, FrameHeader, FrameKind, SeqSpan};
use half::f16;

use super::error::{NodeError, Result};
use super::pipeline::{Span, Step, Want};

/// Rows of `width` values as a payload in `dtype` (F32 or F16).
pub fn encode_rows(values: &[f32], dtype: DType) -> Bytes {
    match dtype {
        DType::F16 => {
            let mut b = BytesMut::with_capacity(values.len() * 2);
            for v in values {
                b.put_u16_le(f16::from_f32(*v).to_bits());
            }
            b.freeze()
        }
        _ => {
            let mut b = BytesMut::with_capacity(values.len() * 4);
            for v in values {
                b.put_f32_le(*v);
            }
            b.freeze()
        }
    }
}

/// The f32 values of a payload declared as `dtype`.
pub fn decode_rows(payload: &[u8], dtype: i32) -> Result<Vec<f32>> {
    match DType::try_from(dtype) {
        Ok(DType::F32) if payload.len().is_multiple_of(4) => Ok(payload
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()),
        Ok(DType::F16) if payload.len().is_multiple_of(2) => Ok(payload
            .chunks_exact(2)
            .map(|c| f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32())
            .collect()),
        Ok(DType::Bf16) if payload.len().is_multiple_of(2) => Ok(payload
            .chunks_exact(2)
            .map(|c| half::bf16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32())
            .collect()),
        _ if payload.is_empty() => Ok(Vec::new()),
        _ => Err(NodeError::BadRequest(format!(
            "payload of {} bytes as dtype {dtype}",
            payload.len()
        ))),
    }
}

fn header(kind: FrameKind, request_id: u64, plan_version: u64, layer: u32) -> FrameHeader {
    FrameHeader {
        request_id,
        plan_version,
        kind: kind as i32,
        layer,
        ..Default::default()
    }
}

fn with_payload(
    mut h: FrameHeader,
    rows: usize,
    width: usize,
    data: &[f32],
    dtype: DType,
) -> (FrameHeader, Bytes) {
    let payload = encode_rows(data, dtype);
    h.dtype = dtype as i32;
    h.shape = vec![rows as u64, width as u64];
    h.payload_len = payload.len() as u64;
    (h, payload)
}

/// A pipeline step as an ACTIVATION frame.
pub fn step_frame(
    step: &Step,
    request_id: u64,
    width: usize,
    dtype: DType,
) -> (FrameHeader, Bytes) {
    let mut h = header(
        FrameKind::Activation,
        request_id,
        step.plan_version,
        step.layer,
    );
    h.spans = step
        .spans
        .iter()
        .map(|s| SeqSpan {
            seq: s.seq,
            rows: s.rows,
            pos0: s.pos0,
            want: match s.want {
                Want::Nothing => 0,
                Want::Last => 1,
                Want::All => 2,
            },
            fork: s.fork.unwrap_or(0),
            request: s.request.as_deref().unwrap_or_default().to_string(),
        })
        .collect();
    h.output_rows = step.output_rows();
    h.tokens = step.tokens.clone();
    with_payload(h, step.rows(), width, &step.x, dtype)
}

/// A request id a peer sent, fit for a log line: at most 128 characters,
/// anything but printable ASCII as `?`; None when empty (an older peer).
pub fn request_id(s: &str) -> Option<Arc<str>> {
    let clean: String = s
        .chars()
        .take(128)
        .map(|c| if c.is_ascii_graphic() { c } else { '?' })
        .collect();
    (!clean.is_empty()).then(|| clean.into())
}

/// The step an ACTIVATION frame carries, for a model of `width`-wide rows.
pub fn frame_step(h: &FrameHeader, payload: &[u8], width: usize) -> Result<Step> {
    if h.kind != FrameKind::Activation as i32 {
        return Err(NodeError::BadRequest(format!(
            "frame kind {} where a step was due",
            h.kind
        )));
    }
    let spans = h
        .spans
        .iter()
        .map(|s| {
            let want = match s.want {
                0 => Want::Nothing,
                1 => Want::Last,
                2 => Want::All,
                w => return Err(NodeError::BadRequest(format!("logits choice {w}"))),
            };
            Ok(Span {
                seq: s.seq,
                rows: s.rows,
                pos0: s.pos0,
                want,
                fork: (s.fork != 0).then_some(s.fork),
                request: request_id(&s.request),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let x = decode_rows(payload, h.dtype)?;
    let step = Step {
        plan_version: h.plan_version,
        layer: h.layer,
        spans,
        tokens: h.tokens.clone(),
        x,
    };
    if step.tokens.len() != step.rows() {
        return Err(NodeError::BadRequest(format!(
            "{} token ids for {} rows",
            step.tokens.len(),
            step.rows()
        )));
    }
    if h.shape.len() != 2 || h.shape[1] != width as u64 || h.shape[0] != step.rows() as u64 {
        return Err(NodeError::BadRequest(format!(
            "step shape {:?} for {} rows of {width}",
            h.shape,
            step.rows()
        )));
    }
    Ok(step)
}

/// Logits rows (always f32: sampling sees exactly what the stage computed).
pub fn logits_frame(
    request_id: u64,
    plan_version: u64,
    n_layer: u32,
    logits: &[f32],
    n_vocab: usize,
) -> (FrameHeader, Bytes) {
    let h = header(FrameKind::Logits, request_id, plan_version, n_layer);
    with_payload(
        h,
        logits.len() / n_vocab.max(1),
        n_vocab,
        logits,
        DType::F32,
    )
}

/// An ERROR frame: the request failed here, and why.
pub fn error_frame(request_id: u64, plan_version: u64, why: &str) -> (FrameHeader, Bytes) {
    let mut h = header(FrameKind::Error, request_id, plan_version, 0);
    h.error = why.chars().take(4096).collect();
    (h, Bytes::new())
}

/// A RELEASE frame for the sequences `seqs` (carried as spans).
pub fn release_frame(plan_version: u64, seqs: &[u64]) -> (FrameHeader, Bytes) {
    let mut h = header(FrameKind::Release, 0, plan_version, 0);
    h.spans = seqs
        .iter()
        .map(|&seq| SeqSpan {
            seq,
            ..Default::default()
        })
        .collect();
    (h, Bytes::new())
}

/// An expert batch for layer `layer` as an EXPERT_REQUEST frame.
pub fn expert_request_frame(
    request_id: u64,
    plan_version: u64,
    layer: u32,
    b: &ExpertBatch,
    dtype: DType,
) -> (FrameHeader, Bytes) {
    let mut h = header(FrameKind::ExpertRequest, request_id, plan_version, layer);
    h.route_experts = b.experts.clone();
    h.route_rows = b.counts.clone();
    let rows = b.rows.len() / b.d.max(1);
    with_payload(h, rows, b.d, &b.rows, dtype)
}

/// The expert batch an EXPERT_REQUEST frame carries.
pub fn frame_expert_batch(h: &FrameHeader, payload: &[u8], width: usize) -> Result<ExpertBatch> {
    if h.kind != FrameKind::ExpertRequest as i32 {
        return Err(NodeError::BadRequest(format!(
            "frame kind {} where experts were due",
            h.kind
        )));
    }
    let b = ExpertBatch {
        d: width,
        experts: h.route_experts.clone(),
        counts: h.route_rows.clone(),
        rows: decode_rows(payload, h.dtype)?,
    };
    b.check()
        .map_err(|e| NodeError::BadRequest(e.to_string()))?;
    Ok(b)
}

/// Rows of a LOGITS or EXPERT_RESULT answer, or the error an ERROR frame
/// reports, from node `from`.
pub fn answer_rows(
    h: &FrameHeader,
    payload: &[u8],
    want: FrameKind,
    from: &str,
) -> Result<Vec<f32>> {
    if h.kind == FrameKind::Error as i32 {
        return Err(NodeError::Remote {
            node: from.to_string(),
            message: h.error.clone(),
        });
    }
    if h.kind != want as i32 {
        return Err(NodeError::BadRequest(format!(
            "answer of kind {} where {:?} was due",
            h.kind, want
        )));
    }
    decode_rows(payload, h.dtype)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step() -> Step {
        Step {
            plan_version: 3,
            layer: 5,
            spans: vec![
                Span {
                    seq: 9,
                    rows: 2,
                    pos0: 4,
                    want: Want::All,
                    fork: None,
                    request: Some("abc-123".into()),
                },
                Span {
                    seq: 11,
                    rows: 1,
                    pos0: 0,
                    want: Want::Last,
                    fork: Some(9),
                    request: None,
                },
            ],
            tokens: vec![5, 0, 4095],
            x: (0..12).map(|i| i as f32 * 0.25 - 1.0).collect(),
        }
    }

    #[test]
    fn steps_round_trip_exactly_in_f32_and_f16() {
        let s = step();
        for dt in [DType::F32, DType::F16] {
            let (h, p) = step_frame(&s, 77, 4, dt);
            assert_eq!(h.output_rows, vec![0, 1, 2]);
            // Quarter steps are exact in f16 too.
            assert_eq!(frame_step(&h, &p, 4).unwrap(), s);
        }
    }

    /// A peer built before spans carried request ids sends no field 6:
    /// its frames still parse, with no id; ids a peer sends are cleaned.
    #[test]
    fn request_ids_travel_and_old_frames_parse() {
        use dwarfstar_proto::Message;
        let s = step();
        let (h, p) = step_frame(&s, 1, 4, DType::F32);
        assert_eq!(h.spans[0].request, "abc-123");
        let wire = h.encode_to_vec();
        let back = FrameHeader::decode(wire.as_slice()).unwrap();
        assert_eq!(
            frame_step(&back, &p, 4).unwrap().spans[0]
                .request
                .as_deref(),
            Some("abc-123")
        );
        let mut old = h.clone();
        for sp in &mut old.spans {
            sp.request.clear();
        }
        let wire = old.encode_to_vec();
        assert!(!wire.windows(7).any(|w| w == b"abc-123"));
        let back = FrameHeader::decode(wire.as_slice()).unwrap();
        let got = frame_step(&back, &p, 4).unwrap();
        assert!(got.spans.iter().all(|s| s.request.is_none()));
        assert_eq!(request_id("a b\nc").as_deref(), Some("a?b?c"));
        assert_eq!(request_id(&"x".repeat(500)).map(|r| r.len()), Some(128));
    }

    #[test]
    fn bad_steps_are_refused() {
        let s = step();
        let (h, p) = step_frame(&s, 1, 4, DType::F32);
        assert!(frame_step(&h, &p, 3).is_err(), "wrong width");
        assert!(
            frame_step(&h, &p[..p.len() - 2], 4).is_err(),
            "ragged payload"
        );
        let mut bad = h.clone();
        bad.spans[0].want = 7;
        assert!(frame_step(&bad, &p, 4).is_err());
        let mut bad = h.clone();
        bad.tokens.pop();
        assert!(frame_step(&bad, &p, 4).is_err(), "a row without its token");
        let mut bad = h.clone();
        bad.spans[0].rows = 5;
        assert!(frame_step(&bad, &p, 4).is_err(), "rows disagree with shape");
        let mut bad = h;
        bad.kind = FrameKind::Logits as i32;
        assert!(frame_step(&bad, &p, 4).is_err());
    }

    #[test]
    fn expert_batches_round_trip_and_errors_surface() {
        let b = ExpertBatch {
            d: 2,
            experts: vec![3, 5],
            counts: vec![1, 2],
            rows: vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
        };
        let (h, p) = expert_request_frame(4, 1, 2, &b, DType::F32);
        assert_eq!(frame_expert_batch(&h, &p, 2).unwrap(), b);
        let mut bad = h.clone();
        bad.route_rows = vec![1, 1];
        assert!(frame_expert_batch(&bad, &p, 2).is_err());
        let (eh, ep) = error_frame(4, 1, "out of memory");
        let e = answer_rows(&eh, &ep, FrameKind::ExpertResult, "peer-a").unwrap_err();
        assert!(e.to_string().contains("out of memory") && e.to_string().contains("peer-a"));
        let (lh, lp) = logits_frame(4, 1, 30, &[0.5; 6], 3);
        assert_eq!(lh.shape, vec![2, 3]);
        assert_eq!(
            answer_rows(&lh, &lp, FrameKind::Logits, "x").unwrap(),
            vec![0.5; 6]
        );
        assert!(answer_rows(&lh, &lp, FrameKind::ExpertResult, "x").is_err());
    }
}
