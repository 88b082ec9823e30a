//! What meshctl prints: tables for people, and JSON objects (proto field
//! names, enums as lowercase names) for scripts.

use comfy_table::{presets::UTF8_FULL_CONDENSED, Table};
use dwarfstar_proto::v1::{
    Addresses, Assignment, DType, ExpertShard, LoadReply, NodeState, NodeStatus, PeerInfo,
    PeersReply, Plan, PlanReply, Role, Stage, StatusReply,
};
use serde_json::{json, Value};

fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED)
        .set_header(header.to_vec());
    t
}

/// `Role::Coordinator` -> "coordinator".
fn role_name(r: i32) -> String {
    match Role::try_from(r) {
        Ok(Role::Unspecified) | Err(_) => format!("role-{r}"),
        Ok(r) => r.as_str_name().trim_start_matches("ROLE_").to_lowercase(),
    }
}

fn state_name(s: i32) -> String {
    match NodeState::try_from(s) {
        Ok(NodeState::Unspecified) | Err(_) => "unknown".into(),
        Ok(s) => s
            .as_str_name()
            .trim_start_matches("NODE_STATE_")
            .to_lowercase(),
    }
}

fn dtype_name(d: i32) -> String {
    match DType::try_from(d) {
        Ok(DType::Unspecified) | Err(_) => "unknown".into(),
        Ok(d) => d.as_str_name().trim_start_matches("D_TYPE_").to_lowercase(),
    }
}

/// Bytes as "1.5 GiB".
pub fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// Sorted ids as ranges: [0,1,2,5,7,8] -> "0-2,5,7-8".
pub fn ranges(ids: &[u32]) -> String {
    let mut v = ids.to_vec();
    v.sort_unstable();
    v.dedup();
    let mut parts = Vec::new();
    let mut i = 0;
    while i < v.len() {
        let start = v[i];
        while i + 1 < v.len() && v[i + 1] == v[i] + 1 {
            i += 1;
        }
        parts.push(if v[i] == start {
            start.to_string()
        } else {
            format!("{start}-{}", v[i])
        });
        i += 1;
    }
    parts.join(",")
}

fn stage_text(s: &Stage) -> String {
    let mut t = if s.layer_end > s.layer_start {
        format!("{}-{}", s.layer_start, s.layer_end - 1)
    } else {
        "none".into()
    };
    if s.holds_embed {
        t.push_str(" +embed");
    }
    if s.holds_output {
        t.push_str(" +output");
    }
    t
}

fn experts_text(shards: &[ExpertShard]) -> String {
    if shards.is_empty() {
        return "-".into();
    }
    let n: usize = shards.iter().map(|s| s.experts.len()).sum();
    format!("{n} in {} layers", shards.len())
}

fn addresses_json(a: Option<&Addresses>) -> Value {
    let d = Addresses::default();
    let a = a.unwrap_or(&d);
    json!({ "grpc": a.grpc, "http": a.http, "quic": a.quic, "libp2p": a.libp2p })
}

fn stage_json(s: &Stage) -> Value {
    json!({
        "node": s.node, "layer_start": s.layer_start, "layer_end": s.layer_end,
        "holds_embed": s.holds_embed, "holds_output": s.holds_output,
    })
}

fn shard_json(s: &ExpertShard) -> Value {
    json!({ "node": s.node, "layer": s.layer, "experts": s.experts })
}

fn assignment_json(a: Option<&Assignment>) -> Value {
    let d = Assignment::default();
    let a = a.unwrap_or(&d);
    json!({
        "stages": a.stages.iter().map(stage_json).collect::<Vec<_>>(),
        "experts": a.experts.iter().map(shard_json).collect::<Vec<_>>(),
    })
}

fn node_json(n: &NodeStatus) -> Value {
    json!({
        "id": n.id,
        "name": n.name,
        "local": n.local,
        "addresses": addresses_json(n.addresses.as_ref()),
        "roles": n.roles.iter().map(|&r| role_name(r)).collect::<Vec<_>>(),
        "assignment": assignment_json(n.assignment.as_ref()),
        "mem_used": n.mem_used,
        "mem_budget": n.mem_budget,
        "state": state_name(n.state),
        "state_detail": n.state_detail,
        "model": n.model,
        "plan_version": n.plan_version,
        "active_requests": n.active_requests,
        "version": n.version,
        "traffic": n.traffic.as_ref().map(|t| json!({
            "frames_sent": t.frames_sent,
            "bytes_sent": t.bytes_sent,
            "answers_received": t.answers_received,
            "answer_bytes_received": t.answer_bytes_received,
            "frames_served": t.frames_served,
            "bytes_served_in": t.bytes_served_in,
            "bytes_served_out": t.bytes_served_out,
        })),
        "speculation": n.speculation.as_ref().map(|s| json!({
            "drafted": s.drafted,
            "accepted": s.accepted,
        })),
        "paging": n.paging.as_ref().map(|p| json!({
            "paged": p.paged,
            "budget_bytes": p.budget_bytes,
            "resident_bytes": p.resident_bytes,
            "expert_hit_rate": p.expert_hit_rate,
            "bytes_read": p.bytes_read,
            "tokens": p.tokens,
            "bytes_read_per_token": p.bytes_read_per_token,
        })),
    })
}

/// Where to reach a node: its gRPC address, else HTTP, else its data plane.
fn node_address(a: Option<&Addresses>) -> String {
    let Some(a) = a else {
        return String::new();
    };
    [(&a.grpc, ""), (&a.http, "http "), (&a.quic, "quic ")]
        .into_iter()
        .find(|(v, _)| !v.is_empty())
        .map_or(String::new(), |(v, tag)| format!("{tag}{v}"))
}

pub fn status_json(r: &StatusReply) -> Value {
    json!({
        "node_id": r.node_id,
        "model": r.model,
        "plan_version": r.plan_version,
        "nodes": r.nodes.iter().map(node_json).collect::<Vec<_>>(),
    })
}

pub fn status_text(r: &StatusReply) -> String {
    let mut t = table(&[
        "NODE", "ADDRESS", "ROLE", "LAYERS", "EXPERTS", "MEMORY", "STATE",
    ]);
    for n in &r.nodes {
        let a = n.assignment.clone().unwrap_or_default();
        let layers = if a.stages.is_empty() {
            "-".to_string()
        } else {
            a.stages
                .iter()
                .map(stage_text)
                .collect::<Vec<_>>()
                .join("; ")
        };
        let mut id = n.id.clone();
        if !n.name.is_empty() && n.name != n.id {
            id = format!("{id} ({})", n.name);
        }
        if n.local {
            id.push_str(" *");
        }
        let mut state = state_name(n.state);
        if !n.state_detail.is_empty() {
            state = format!("{state}: {}", n.state_detail);
        }
        let roles = n.roles.iter().map(|&r| role_name(r)).collect::<Vec<_>>();
        t.add_row(vec![
            id,
            node_address(n.addresses.as_ref()),
            if roles.is_empty() {
                "-".into()
            } else {
                roles.join(",")
            },
            layers,
            experts_text(&a.experts),
            format!(
                "{} / {}",
                human_bytes(n.mem_used),
                human_bytes(n.mem_budget)
            ),
            state,
        ]);
    }
    let model = if r.model.is_empty() {
        "no model".to_string()
    } else {
        format!("model {}, plan v{}", r.model, r.plan_version)
    };
    let mut out = format!("{model} (* = the node answering)\n{t}\n");
    let local = r.nodes.iter().find(|n| n.local);
    if let Some(tr) = local.and_then(|n| n.traffic.as_ref()) {
        if tr.frames_sent + tr.frames_served > 0 {
            out.push_str(&format!(
                "data plane here: sent {} frames ({}), answers {} ({}); served {} frames ({} in, {} out)\n",
                tr.frames_sent,
                human_bytes(tr.bytes_sent),
                tr.answers_received,
                human_bytes(tr.answer_bytes_received),
                tr.frames_served,
                human_bytes(tr.bytes_served_in),
                human_bytes(tr.bytes_served_out),
            ));
        }
    }
    if let Some(s) = local.and_then(|n| n.speculation.as_ref()) {
        if s.drafted > 0 {
            out.push_str(&format!(
                "speculation here: {} draft tokens, {} accepted ({:.0}%)\n",
                s.drafted,
                s.accepted,
                100.0 * s.accepted as f64 / s.drafted as f64
            ));
        }
    }
    if let Some(p) = local.and_then(|n| n.paging.as_ref()) {
        if p.paged {
            out.push_str(&format!(
                "weights here: paged, {} resident of a {} budget; expert hit rate {:.3}, {} read per token\n",
                human_bytes(p.resident_bytes),
                human_bytes(p.budget_bytes),
                p.expert_hit_rate,
                human_bytes(p.bytes_read_per_token as u64),
            ));
        } else {
            out.push_str(&format!(
                "weights here: {} resident (not paged)\n",
                human_bytes(p.resident_bytes)
            ));
        }
    }
    out
}

fn peer_json(p: &PeerInfo) -> Value {
    let c = p.capabilities.as_ref().map(|c| {
        json!({
            "id": c.id,
            "name": c.name,
            "mem_budget": c.mem_budget,
            "free_ram": c.free_ram,
            "cores": c.cores,
            "matmul_gflops": c.matmul_gflops,
            "mem_bw_gbs": c.mem_bw_gbs,
            "disk_read_gbs": c.disk_read_gbs,
            "models": c.models.iter().map(|m| json!({
                "name": m.name, "size": m.size, "sha256": m.sha256, "blake3": m.blake3, "arch": m.arch,
            })).collect::<Vec<_>>(),
            "addresses": addresses_json(c.addresses.as_ref()),
            "version": c.version,
            "protocol_version": c.protocol_version,
        })
    });
    json!({
        "id": p.id,
        "local": p.local,
        "connected": p.connected,
        "latency_s": p.latency_s,
        "bandwidth_bps": p.bandwidth_bps,
        "discovered_by": p.discovered_by,
        "last_seen_unix_ms": p.last_seen_unix_ms,
        "capabilities": c,
    })
}

pub fn peers_json(r: &PeersReply) -> Value {
    json!({ "peers": r.peers.iter().map(peer_json).collect::<Vec<_>>() })
}

pub fn peers_text(r: &PeersReply) -> String {
    let mut t = table(&[
        "PEER",
        "ADDRESSES",
        "CORES",
        "RAM FREE / BUDGET",
        "MODELS",
        "LINK",
    ]);
    for p in &r.peers {
        let c = p.capabilities.clone().unwrap_or_default();
        let a = c.addresses.clone().unwrap_or_default();
        let addrs = [("grpc", &a.grpc), ("http", &a.http), ("quic", &a.quic)]
            .iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join("\n");
        let link = if p.local {
            "local".to_string()
        } else if !p.connected {
            format!("down ({})", p.discovered_by)
        } else {
            let mut l = format!("up ({})", p.discovered_by);
            if p.latency_s > 0.0 {
                l.push_str(&format!(" {:.2} ms", p.latency_s * 1e3));
            }
            if p.bandwidth_bps > 0.0 {
                l.push_str(&format!(" {:.0} Mbit/s", p.bandwidth_bps / 1e6));
            }
            l
        };
        let mut id = p.id.clone();
        if p.local {
            id.push_str(" *");
        }
        t.add_row(vec![
            id,
            addrs,
            c.cores.to_string(),
            format!(
                "{} / {}",
                human_bytes(c.free_ram),
                human_bytes(c.mem_budget)
            ),
            c.models
                .iter()
                .map(|m| format!("{} ({})", m.name, human_bytes(m.size)))
                .collect::<Vec<_>>()
                .join("\n"),
            link,
        ]);
    }
    format!("{t}\n")
}

pub fn plan_json(p: &Plan) -> Value {
    json!({
        "version": p.version,
        "model": p.model,
        "coordinator": p.coordinator,
        "n_layer": p.n_layer,
        "stages": p.stages.iter().map(stage_json).collect::<Vec<_>>(),
        "experts": p.experts.iter().map(shard_json).collect::<Vec<_>>(),
        "activation_dtype": dtype_name(p.activation_dtype),
        "predicted_tokens_per_s": p.predicted_tokens_per_s,
        "predicted_paging": p.predicted_paging.iter()
            .map(|n| json!({ "node": n.node, "bytes": n.bytes }))
            .collect::<Vec<_>>(),
    })
}

pub fn plan_reply_json(r: &PlanReply) -> Value {
    json!({ "plan": r.plan.as_ref().map(plan_json), "applied": r.applied })
}

pub fn load_json(r: &LoadReply) -> Value {
    json!({
        "model": r.model,
        "load_ms": r.load_ms,
        "unchanged": r.unchanged,
        "plan": r.plan.as_ref().map(plan_json),
    })
}

pub fn plan_text(p: &Plan, applied: bool) -> String {
    let mut out = format!(
        "plan v{} for {} ({} layers){}: coordinator {}, activations {}",
        p.version,
        p.model,
        p.n_layer,
        if applied { "" } else { " [preview]" },
        p.coordinator,
        dtype_name(p.activation_dtype)
    );
    if p.predicted_tokens_per_s > 0.0 {
        out.push_str(&format!(
            ", predicted {:.1} tok/s",
            p.predicted_tokens_per_s
        ));
    }
    out.push('\n');
    let mut t = table(&["STAGE", "NODE", "LAYERS"]);
    for (i, s) in p.stages.iter().enumerate() {
        t.add_row(vec![i.to_string(), s.node.clone(), stage_text(s)]);
    }
    out.push_str(&format!("{t}\n"));
    if !p.experts.is_empty() {
        let mut t = table(&["NODE", "LAYER", "EXPERTS"]);
        for s in &p.experts {
            t.add_row(vec![
                s.node.clone(),
                s.layer.to_string(),
                ranges(&s.experts),
            ]);
        }
        out.push_str(&format!("{t}\n"));
    }
    let paging: Vec<_> = p.predicted_paging.iter().filter(|n| n.bytes > 0).collect();
    for n in paging {
        out.push_str(&format!(
            "node {} pages {} per pass\n",
            n.node,
            human_bytes(n.bytes)
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_and_bytes_read_well() {
        assert_eq!(ranges(&[8, 0, 1, 2, 5, 7]), "0-2,5,7-8");
        assert_eq!(ranges(&[]), "");
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(3 << 29), "1.5 GiB");
    }

    #[test]
    fn enums_render_as_lowercase_names() {
        assert_eq!(role_name(Role::Coordinator as i32), "coordinator");
        assert_eq!(role_name(99), "role-99");
        assert_eq!(state_name(NodeState::Ready as i32), "ready");
        assert_eq!(dtype_name(DType::F16 as i32), "f16");
    }

    #[test]
    fn status_json_has_the_assignment() {
        let r = StatusReply {
            node_id: "n1".into(),
            nodes: vec![NodeStatus {
                id: "n1".into(),
                local: true,
                roles: vec![Role::Stage as i32],
                assignment: Some(Assignment {
                    stages: vec![Stage {
                        node: "n1".into(),
                        layer_start: 0,
                        layer_end: 30,
                        holds_embed: true,
                        holds_output: true,
                    }],
                    experts: vec![],
                }),
                state: NodeState::Ready as i32,
                ..Default::default()
            }],
            model: "m.gguf".into(),
            plan_version: 1,
        };
        let j = status_json(&r);
        assert_eq!(j["nodes"][0]["assignment"]["stages"][0]["layer_end"], 30);
        assert_eq!(j["nodes"][0]["state"], "ready");
        assert_eq!(j["nodes"][0]["roles"][0], "stage");
        let text = status_text(&r);
        assert!(text.contains("0-29 +embed +output"), "{text}");
        assert!(text.contains("n1 *"), "{text}");
    }

    #[test]
    fn a_mesh_status_lists_every_node_with_its_share() {
        let stage = |node: &str, a: u32, b: u32| Stage {
            node: node.into(),
            layer_start: a,
            layer_end: b,
            holds_embed: a == 0,
            holds_output: b == 30,
        };
        let node = |id: &str, local: bool, st: Stage, state: NodeState| NodeStatus {
            id: id.into(),
            local,
            roles: vec![Role::Stage as i32],
            addresses: Some(Addresses {
                grpc: if local {
                    "127.0.0.1:7171".into()
                } else {
                    String::new()
                },
                quic: "127.0.0.1:7001".into(),
                ..Default::default()
            }),
            assignment: Some(Assignment {
                stages: vec![st],
                experts: vec![],
            }),
            mem_used: 3 << 20,
            mem_budget: 1 << 30,
            state: state as i32,
            traffic: local.then(|| dwarfstar_proto::v1::Traffic {
                frames_served: 12,
                bytes_served_in: 12 * 2400,
                bytes_served_out: 12 * 196_700,
                ..Default::default()
            }),
            paging: local.then_some(dwarfstar_proto::v1::Paging {
                paged: true,
                budget_bytes: 1 << 30,
                resident_bytes: 900 << 20,
                expert_hit_rate: 0.75,
                bytes_read: 3 << 20,
                tokens: 3,
                bytes_read_per_token: (1 << 20) as f64,
            }),
            speculation: local.then_some(dwarfstar_proto::v1::Speculation {
                drafted: 40,
                accepted: 30,
            }),
            ..Default::default()
        };
        let r = StatusReply {
            node_id: "worker".into(),
            nodes: vec![
                node("worker", true, stage("worker", 15, 30), NodeState::Ready),
                node("coord", false, stage("coord", 0, 15), NodeState::Loading),
            ],
            model: "m.gguf".into(),
            plan_version: 7,
        };
        let text = status_text(&r);
        for want in [
            "worker *",
            "127.0.0.1:7171",
            "quic 127.0.0.1:7001",
            "15-29 +output",
            "0-14 +embed",
            "3.0 MiB / 1.0 GiB",
            "ready",
            "loading",
            "plan v7",
            "served 12 frames",
            "paged, 900.0 MiB resident of a 1.0 GiB budget; expert hit rate 0.750, 1.0 MiB read per token",
            "speculation here: 40 draft tokens, 30 accepted (75%)",
        ] {
            assert!(text.contains(want), "{want:?} in\n{text}");
        }
        let j = status_json(&r);
        assert_eq!(j["nodes"].as_array().unwrap().len(), 2);
        assert_eq!(j["nodes"][1]["state"], "loading");
        assert_eq!(j["nodes"][1]["traffic"], Value::Null);
        assert_eq!(j["nodes"][1]["paging"], Value::Null);
        assert_eq!(j["nodes"][0]["paging"]["expert_hit_rate"], 0.75);
        assert_eq!(j["nodes"][0]["traffic"]["frames_served"], 12);
        assert_eq!(j["nodes"][0]["speculation"]["accepted"], 30);
        assert_eq!(j["nodes"][1]["speculation"], Value::Null);
    }
}
