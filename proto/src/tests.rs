//! Encode/decode round trips of the wire messages, and the frame-size helpers.

use crate::v1::*;
use crate::Message;

fn round_trip<M: Message + Default + PartialEq + std::fmt::Debug>(m: &M) {
    let bytes = m.encode_to_vec();
    let back = M::decode(bytes.as_slice()).expect("decodes");
    assert_eq!(&back, m);
}

fn sample_plan() -> Plan {
    Plan {
        version: 7,
        model: "DeepSeek-V2-Lite-Q4_K_M.gguf".into(),
        coordinator: "12D3KooWA".into(),
        stages: vec![
            Stage {
                node: "12D3KooWA".into(),
                layer_start: 0,
                layer_end: 14,
                holds_embed: true,
                holds_output: false,
            },
            Stage {
                node: "12D3KooWB".into(),
                layer_start: 14,
                layer_end: 27,
                holds_embed: false,
                holds_output: true,
            },
        ],
        experts: vec![ExpertShard {
            node: "12D3KooWB".into(),
            layer: 3,
            experts: vec![0, 2, 63],
        }],
        activation_dtype: DType::F16 as i32,
        predicted_tokens_per_s: 12.5,
        predicted_paging: vec![NodePaging {
            node: "12D3KooWA".into(),
            bytes: 1 << 30,
        }],
        n_layer: 27,
    }
}

#[test]
fn frame_header_round_trip() {
    let h = FrameHeader {
        request_id: u64::MAX,
        plan_version: 3,
        kind: FrameKind::ExpertRequest as i32,
        layer: 5,
        positions: vec![0, 1, 2, 4096],
        dtype: DType::F32 as i32,
        shape: vec![4, 2048],
        payload_len: 4 * 2048 * 4,
        error: String::new(),
        output_rows: vec![3],
        route_rows: vec![0, 0, 1, 3],
        route_experts: vec![2, 9, 2, 63],
        route_weights: vec![0.5, 0.25, 1.0, -0.125],
        spans: vec![
            SeqSpan {
                seq: 11,
                rows: 3,
                pos0: 0,
                want: 1,
                fork: 0,
                request: "abc-123".into(),
            },
            SeqSpan {
                seq: 12,
                rows: 1,
                pos0: 4095,
                want: 2,
                fork: 11,
                request: String::new(),
            },
        ],
        tokens: vec![0, 7, 129_279, 4],
    };
    round_trip(&h);
    assert_eq!(h.expected_payload_len(), Some(h.payload_len));
    assert_eq!(h.kind(), FrameKind::ExpertRequest);
}

#[test]
fn frame_header_payload_len_rules() {
    let mut h = FrameHeader {
        dtype: DType::F16 as i32,
        shape: vec![3, 5],
        ..Default::default()
    };
    assert_eq!(h.expected_payload_len(), Some(30));
    h.dtype = DType::Bf16 as i32;
    assert_eq!(h.expected_payload_len(), Some(30));
    h.dtype = DType::Unspecified as i32;
    assert_eq!(h.expected_payload_len(), None);
    h.dtype = 99; // unknown enum value from a newer peer
    assert_eq!(h.expected_payload_len(), None);
    h.dtype = DType::F32 as i32;
    h.shape = vec![u64::MAX, 2];
    assert_eq!(h.expected_payload_len(), None, "overflow is rejected");
    h.shape.clear();
    assert_eq!(h.expected_payload_len(), Some(0));
}

#[test]
fn garbage_is_a_decode_error_not_a_panic() {
    // A field tag with wire type 7 (invalid) and a truncated length-delimited field.
    assert!(FrameHeader::decode(&[0x0f_u8, 0x01][..]).is_err());
    assert!(FrameHeader::decode(&[0x4a_u8, 0x10, b'x'][..]).is_err());
}

#[test]
fn capabilities_round_trip() {
    let c = Capabilities {
        id: "12D3KooWA".into(),
        mem_budget: 8 << 30,
        free_ram: 12 << 30,
        cores: 16,
        matmul_gflops: 210.5,
        mem_bw_gbs: 48.0,
        disk_read_gbs: 3.2,
        models: vec![ModelInfo {
            name: "SmolLM2-135M-Instruct-Q4_1.gguf".into(),
            size: 98_000_000,
            sha256: "ab".repeat(32),
            blake3: "cd".repeat(32),
            arch: "llama".into(),
        }],
        addresses: Some(Addresses {
            grpc: "127.0.0.1:7070".into(),
            http: "127.0.0.1:8080".into(),
            quic: "127.0.0.1:7001".into(),
            libp2p: vec!["/ip4/127.0.0.1/tcp/7000".into()],
        }),
        version: "0.1.0".into(),
        protocol_version: crate::PROTOCOL_VERSION,
        name: "node-a".into(),
    };
    round_trip(&c);
    round_trip(&MeshMessage {
        body: Some(mesh_message::Body::Capabilities(c)),
    });
}

#[test]
fn plan_messages_round_trip() {
    let plan = sample_plan();
    round_trip(&plan);
    round_trip(&PlanProposal {
        plan: Some(plan.clone()),
        model: Some(ModelInfo {
            name: plan.model.clone(),
            size: 1,
            ..Default::default()
        }),
        proposer: "12D3KooWA".into(),
        members: vec![Capabilities {
            id: "12D3KooWB".into(),
            cores: 2,
            ..Default::default()
        }],
    });
    round_trip(&MeshMessage {
        body: Some(mesh_message::Body::PlanAck(PlanAck {
            plan_version: 7,
            node: "12D3KooWB".into(),
            accepted: false,
            reason: "model not found".into(),
        })),
    });
    round_trip(&MeshMessage {
        body: Some(mesh_message::Body::NodeReady(NodeReady {
            plan_version: 7,
            node: "12D3KooWB".into(),
            bytes_loaded: 123,
            load_ms: 45,
            error: String::new(),
        })),
    });
    round_trip(&MeshMessage {
        body: Some(mesh_message::Body::Release(Release {
            plan_version: 7,
            new_coordinator: "12D3KooWB".into(),
            model: "m.gguf".into(),
        })),
    });
    round_trip(&MeshMessage {
        body: Some(mesh_message::Body::Heartbeat(Heartbeat {
            seq: 9,
            plan_version: 7,
        })),
    });
    round_trip(&MeshMessage {
        body: Some(mesh_message::Body::HeartbeatAck(HeartbeatAck {
            seq: 9,
            node: "12D3KooWB".into(),
            plan_version: 7,
            coordinator: "12D3KooWA".into(),
        })),
    });
}

#[test]
fn range_messages_round_trip() {
    round_trip(&RangeRequest {
        model: "m.gguf".into(),
        offset: 1 << 40,
        len: 1 << 20,
    });
    round_trip(&RangeReply {
        hash: "00".repeat(32),
        offset: 1 << 40,
        len: 3,
        error: String::new(),
        data: vec![1, 2, 3],
    });
}

#[test]
fn control_messages_round_trip() {
    let status = StatusReply {
        node_id: "local".into(),
        nodes: vec![NodeStatus {
            id: "local".into(),
            name: "host".into(),
            addresses: Some(Addresses::default()),
            roles: vec![Role::Coordinator as i32, Role::Stage as i32],
            assignment: Some(Assignment {
                stages: sample_plan().stages,
                experts: vec![],
            }),
            mem_used: 10,
            mem_budget: 20,
            state: NodeState::Ready as i32,
            state_detail: String::new(),
            model: "m.gguf".into(),
            plan_version: 1,
            active_requests: 2,
            local: true,
            version: "0.1.0".into(),
            traffic: None,
            paging: Some(Paging {
                paged: true,
                budget_bytes: 1 << 20,
                resident_bytes: 1 << 19,
                expert_hit_rate: 0.5,
                bytes_read: 4096,
                tokens: 2,
                bytes_read_per_token: 2048.0,
            }),
            speculation: Some(Speculation {
                drafted: 10,
                accepted: 7,
            }),
        }],
        model: "m.gguf".into(),
        plan_version: 1,
    };
    round_trip(&status);
    // Optional fields: unset stays unset, zero stays a present zero.
    let req = GenerateRequest {
        prompt: Some("hi".into()),
        temp: Some(0.0),
        n: None,
        seed: Some(42),
        stop: vec!["\n".into()],
        logits: 5,
        ..Default::default()
    };
    let back = GenerateRequest::decode(req.encode_to_vec().as_slice()).expect("decodes");
    assert_eq!(back.temp, Some(0.0));
    assert_eq!(back.n, None);
    assert_eq!(back, req);
    round_trip(&GenerateEvent {
        event: Some(generate_event::Event::Token(Token {
            index: 0,
            id: 9,
            text: "é".into(),
        })),
    });
    round_trip(&GenerateEvent {
        event: Some(generate_event::Event::Done(Done {
            json: r#"{"prompt_tokens":[1],"tokens":[2],"text":"x"}"#.into(),
            n_prompt: 1,
            n_generated: 1,
            stop_reason: "length".into(),
            prefill_s: 0.1,
            decode_s: 0.2,
            tail: "held".into(),
        })),
    });
    round_trip(&LoadRequest {
        model: "m.gguf".into(),
        stages: Some(2),
        expert_parallel: true,
    });
    round_trip(&PlanReply {
        plan: Some(sample_plan()),
        applied: true,
    });
}
