//! A mesh node for manual and network-namespace tests: starts a `Mesh`, prints what it sees
//! (one line per event), answers control requests and echoes frame streams. With
//! `--expect-peers N` it exits 0 once N peers have exchanged capabilities AND a frame round trip
//! over QUIC succeeded with each, or 1 after `--timeout` seconds.
//!
//! ```text
//! DWARFSTAR_SECRET=... mesh_node --state /tmp/n1 [--listen /ip4/0.0.0.0/tcp/7000]
//!     [--quic 0.0.0.0:7001] [--peer /ip4/10.0.0.2/tcp/7000 ...] [--no-mdns]
//!     [--expect-peers N] [--timeout SECS] [--linger SECS]
//! ```

use std::collections::HashSet;
use std::time::Duration;

use dwarfstar_mesh::{
    f32s_from_bytes, f32s_to_bytes, DType, FrameHeader, FrameKind, JoinSecret, Mesh, MeshConfig,
    MeshEvent, MeshHandle, PeerId,
};

fn usage() -> ! {
    eprintln!(
        "usage: mesh_node --state DIR [--secret-file F] [--listen MULTIADDR] [--quic IP:PORT] \
         [--peer MULTIADDR]... [--no-mdns] [--expect-peers N] [--timeout SECS] [--linger SECS]\n\
         The join secret comes from --secret-file or the DWARFSTAR_SECRET environment variable."
    );
    std::process::exit(2)
}

struct Args {
    cfg: MeshConfig,
    expect: usize,
    timeout: u64,
    linger: u64,
}

fn parse() -> Args {
    let mut it = std::env::args().skip(1);
    let mut state = None;
    let mut secret_file = None;
    let mut listen = None;
    let mut quic = None;
    let mut peers = Vec::new();
    let mut mdns = true;
    let (mut expect, mut timeout, mut linger) = (0usize, 30u64, 0u64);
    while let Some(a) = it.next() {
        let mut val = || it.next().unwrap_or_else(|| usage());
        match a.as_str() {
            "--state" => state = Some(val()),
            "--secret-file" => secret_file = Some(val()),
            "--listen" => listen = Some(val().parse().unwrap_or_else(|_| usage())),
            "--quic" => quic = Some(val().parse().unwrap_or_else(|_| usage())),
            "--peer" => peers.push(val().parse().unwrap_or_else(|_| usage())),
            "--no-mdns" => mdns = false,
            "--expect-peers" => expect = val().parse().unwrap_or_else(|_| usage()),
            "--timeout" => timeout = val().parse().unwrap_or_else(|_| usage()),
            "--linger" => linger = val().parse().unwrap_or_else(|_| usage()),
            _ => usage(),
        }
    }
    let secret = match secret_file {
        Some(f) => JoinSecret::from_file(f.as_ref()),
        None => JoinSecret::from_env("DWARFSTAR_SECRET")
            .and_then(|s| s.ok_or(dwarfstar_mesh::SecretError::Empty)),
    }
    .unwrap_or_else(|e| {
        eprintln!("join secret: {e}");
        std::process::exit(2)
    });
    let mut cfg = MeshConfig::new(state.unwrap_or_else(|| usage()), secret);
    if let Some(l) = listen {
        cfg.listen = vec![l];
    }
    if let Some(q) = quic {
        cfg.quic_listen = q;
    }
    cfg.static_peers = peers;
    cfg.mdns = mdns;
    cfg.caps.cores = std::thread::available_parallelism()
        .map(|n| n.get() as u32)
        .unwrap_or(1);
    Args {
        cfg,
        expect,
        timeout,
        linger,
    }
}

/// Sends a small activation to `peer` and checks the echo.
async fn frame_round_trip(handle: &MeshHandle, peer: PeerId) -> Result<Duration, String> {
    let values: Vec<f32> = (0..256).map(|i| i as f32 * 0.5).collect();
    let header = FrameHeader {
        request_id: 1,
        kind: FrameKind::Activation as i32,
        dtype: DType::F32 as i32,
        shape: vec![1, 256],
        payload_len: 1024,
        ..Default::default()
    };
    let t = std::time::Instant::now();
    let (mut send, mut recv) = handle.open_stream(peer).await.map_err(|e| e.to_string())?;
    send.send_frame(&header, f32s_to_bytes(&values))
        .await
        .map_err(|e| e.to_string())?;
    let frame = recv
        .recv_frame()
        .await
        .map_err(|e| e.to_string())?
        .ok_or("stream ended")?;
    if f32s_from_bytes(&frame.payload).as_deref() != Some(&values[..]) {
        return Err("echoed payload differs".into());
    }
    Ok(t.elapsed())
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,dwarfstar_mesh=info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    let args = parse();
    let (handle, mut events) = match Mesh::start(args.cfg).await {
        Ok(x) => x,
        Err(e) => {
            eprintln!("mesh start failed: {e}");
            std::process::exit(1)
        }
    };
    let info = handle.local_info().await.expect("mesh running");
    println!(
        "local {} listen={:?} quic={}",
        info.peer, info.listen_addrs, info.quic_addr
    );
    let (done_tx, mut done_rx) =
        tokio::sync::mpsc::unbounded_channel::<(PeerId, Result<Duration, String>)>();
    let mut verified = HashSet::new();
    let mut passed = false;
    let deadline = tokio::time::sleep(Duration::from_secs(args.timeout));
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            ev = events.recv() => match ev {
                None => break,
                Some(MeshEvent::PeerDiscovered(p, a)) => println!("discovered {p} {a}"),
                Some(MeshEvent::PeerAdmitted(p)) => println!("admitted {p}"),
                Some(MeshEvent::PeerLost(p)) => println!("lost {p}"),
                Some(MeshEvent::DataPlaneRefused { remote, reason, .. }) => {
                    println!("refused {remote}: {reason}")
                }
                Some(MeshEvent::Caps(p, c)) => {
                    let quic = c.addresses.as_ref().map(|a| a.quic.clone()).unwrap_or_default();
                    println!("caps {p} cores={} quic={quic}", c.cores);
                    let (h, tx) = (handle.clone(), done_tx.clone());
                    tokio::spawn(async move {
                        let _ = tx.send((p, frame_round_trip(&h, p).await));
                    });
                }
                Some(MeshEvent::ControlRequest(_, req, responder)) => {
                    let _ = responder.respond(req).await;
                }
                Some(MeshEvent::IncomingStream(_, mut s)) => {
                    tokio::spawn(async move {
                        while let Ok(Some(f)) = s.recv.recv_frame().await {
                            if s.send.send_frame(&f.header, f.payload).await.is_err() {
                                break;
                            }
                        }
                    });
                }
            },
            Some((p, r)) = done_rx.recv() => match r {
                Ok(rtt) => {
                    println!("frames {p} ok rtt={rtt:?}");
                    verified.insert(p);
                    if args.expect > 0 && verified.len() >= args.expect && !passed {
                        println!("OK {} peers", verified.len());
                        // Keep serving (echoing the peers' frames) for a while before leaving.
                        passed = true;
                        deadline.as_mut().reset(tokio::time::Instant::now() + Duration::from_secs(args.linger));
                    }
                }
                Err(e) => println!("frames {p} FAILED {e}"),
            },
            _ = &mut deadline => {
                if args.expect > 0 && !passed {
                    println!("TIMEOUT: {} of {} peers verified", verified.len(), args.expect);
                    std::process::exit(1);
                }
                break;
            }
        }
    }
    handle.shutdown().await;
}
