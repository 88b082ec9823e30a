//! The shell around the membership core ([`dwarfstar_membership`]): it
//! feeds the state machine the mesh's events and the clock, carries out its
//! actions (control messages, each with a deadline; roster and status
//! updates), hands a coordinator's round its steps, and keeps the peers
//! declared lost, whose data-plane calls fail at once ([`guarded`]).

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use dwarfstar_membership::{Action, Config, Event, Failure, Membership, Msg};
use dwarfstar_mesh::PeerId;
use dwarfstar_proto::v1 as pb;
use dwarfstar_proto::Message;
use tokio::sync::{mpsc, watch, Notify};

use super::error::{NodeError, Result};
use super::roster::MemberState;
use super::runtime::NodeRuntime;

/// How long the coordinator's `NodeReady` announcing a plan in force may take.
const ANNOUNCE_WITHIN: Duration = Duration::from_secs(10);

/// What a coordinator's round waits for.
#[derive(Debug)]
pub enum RoundStep {
    /// Enough nodes: plan over these (this node first).
    Plan(Vec<String>),
    /// Every member is ready: take this node's share.
    Apply,
    Failed(Failure),
}

/// The peers declared lost, with why; data-plane calls watch it.
#[derive(Clone)]
pub struct LostPeers(watch::Receiver<BTreeMap<String, String>>);

impl LostPeers {
    /// Why `peer` is lost, while it is.
    pub fn reason(&self, peer: &PeerId) -> Option<String> {
        self.0.borrow().get(&peer.to_string()).cloned()
    }

    /// Resolves once `peer` is declared lost, with why.
    async fn wait(&self, peer: &PeerId) -> String {
        let id = peer.to_string();
        let mut rx = self.0.clone();
        let why = match rx.wait_for(|m| m.contains_key(&id)).await {
            Ok(m) => m.get(&id).cloned().unwrap_or_default(),
            // The node runtime is gone: nothing answers any more.
            Err(_) => "this node is shutting down".into(),
        };
        why
    }
}

/// Runs the mesh call `call` to `peer` until it ends, `peer` is declared
/// lost (a silent peer fails the call within the liveness bound, not at the
/// QUIC idle timeout), or `limit` passes.
pub async fn guarded<T>(
    lost: &LostPeers,
    peer: PeerId,
    limit: Duration,
    call: impl Future<Output = Result<T>>,
) -> Result<T> {
    if let Some(why) = lost.reason(&peer) {
        return Err(NodeError::Lost {
            node: peer.to_string(),
            reason: why,
        });
    }
    tokio::select! {
        r = tokio::time::timeout(limit, call) => r.unwrap_or_else(|_| Err(NodeError::Transport(
            format!("{peer}: no answer within {limit:?}"),
        ))),
        why = lost.wait(&peer) => Err(NodeError::Lost { node: peer.to_string(), reason: why }),
    }
}

/// The membership core and what its shell keeps around it.
pub struct Members {
    core: Mutex<Membership>,
    wake: Notify,
    /// The rounds under way, by plan version.
    rounds: Mutex<HashMap<u64, mpsc::UnboundedSender<RoundStep>>>,
    /// The encoded proposal of each round under way.
    proposals: Mutex<HashMap<u64, Vec<u8>>>,
    lost: watch::Sender<BTreeMap<String, String>>,
    /// The version of the last plan this node coordinates that lost a
    /// member (0: none); the recovery task re-plans on each change.
    broken: watch::Sender<u64>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn encode(body: pb::mesh_message::Body) -> Vec<u8> {
    pb::MeshMessage { body: Some(body) }.encode_to_vec()
}

impl Members {
    pub fn new(me: &str, cfg: Config) -> Members {
        Members {
            core: Mutex::new(Membership::new(me, cfg)),
            wake: Notify::new(),
            rounds: Mutex::default(),
            proposals: Mutex::default(),
            lost: watch::Sender::new(BTreeMap::new()),
            broken: watch::Sender::new(0),
        }
    }

    /// Changes each time a plan this node coordinates loses a member (its
    /// version).
    pub fn broken_plans(&self) -> watch::Receiver<u64> {
        self.broken.subscribe()
    }

    /// The core, for a decision taken on the spot (the member's side);
    /// call [`Members::poke`] after changing it.
    pub fn core(&self) -> MutexGuard<'_, Membership> {
        lock(&self.core)
    }

    /// Has the shell look at the core's actions and timers again.
    pub fn poke(&self) {
        self.wake.notify_one();
    }

    pub fn feed(&self, ev: Event) {
        self.core().handle(Instant::now(), ev);
        self.poke();
    }

    pub fn lost_peers(&self) -> LostPeers {
        LostPeers(self.lost.subscribe())
    }

    /// Opens round `version`: its steps come on the receiver.
    pub fn open_round(&self, version: u64) -> mpsc::UnboundedReceiver<RoundStep> {
        let (tx, rx) = mpsc::unbounded_channel();
        lock(&self.rounds).insert(version, tx);
        rx
    }

    /// Ends round `version` here (done, or given up: the core forgets it).
    pub fn close_round(&self, version: u64) {
        lock(&self.rounds).remove(&version);
        lock(&self.proposals).remove(&version);
        self.feed(Event::Abandon { version });
    }

    /// Proposes round `version`'s plan (`proposal`, encoded) to `members`.
    pub fn propose(&self, version: u64, proposal: Vec<u8>, members: Vec<String>) {
        lock(&self.proposals).insert(version, proposal);
        self.feed(Event::Propose { version, members });
    }

    fn step(&self, version: u64, s: RoundStep) {
        if let Some(tx) = lock(&self.rounds).get(&version) {
            let _ = tx.send(s);
        }
    }
}

impl NodeRuntime {
    /// Runs the membership core: sleeps until its next timer or a poke,
    /// then carries out what it asks.
    pub(super) async fn drive_members(self: Arc<Self>) {
        loop {
            let next = self.members.core().poll_timeout();
            let sleep = async {
                match next {
                    Some(at) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = sleep => self.members.core().handle_timeout(Instant::now()),
                _ = self.members.wake.notified() => {}
            }
            let actions: Vec<Action> = {
                let mut core = self.members.core();
                std::iter::from_fn(|| core.poll_action()).collect()
            };
            for a in actions {
                self.carry_out(a);
            }
        }
    }

    fn carry_out(self: &Arc<Self>, a: Action) {
        match a {
            Action::Plan { version, nodes } => self.members.step(version, RoundStep::Plan(nodes)),
            Action::Apply { version } => self.members.step(version, RoundStep::Apply),
            Action::RoundFailed { version, why } => {
                self.members.step(version, RoundStep::Failed(why))
            }
            Action::Send { to, msg } => self.send(to, msg),
            Action::MemberReady {
                node,
                bytes_loaded,
                load_ms,
                ..
            } => self.roster.set(
                &node,
                MemberState::Ready,
                String::new(),
                Some((bytes_loaded, load_ms)),
            ),
            Action::MemberFailed { node, why, .. } => {
                self.roster
                    .set(&node, MemberState::Failed, why.to_string(), None)
            }
            Action::PeerLost { node, reason } => {
                tracing::warn!("peer {node} lost: {reason}");
                println!("dwarfstar mesh: peer {node} lost: {reason}");
                self.members.lost.send_modify(|m| {
                    m.insert(node.clone(), reason.clone());
                });
                if self.roster.members().contains_key(&node) {
                    let why = format!("lost: {reason}");
                    self.roster.set(&node, MemberState::Failed, why, None);
                }
            }
            Action::Rejoined { node } => {
                tracing::info!("peer {node} answers again");
                println!("dwarfstar mesh: peer {node} rejoined");
                self.members.lost.send_modify(|m| {
                    m.remove(&node);
                });
            }
            Action::PlanBroken {
                version,
                lost,
                survivors,
                reason,
            } => {
                let error = format!(
                    "plan v{version} lost {lost} ({reason}); re-planning over the {} node(s) left",
                    survivors.len()
                );
                tracing::warn!("{error}");
                self.set_status(|s| {
                    s.state = "failed".into();
                    s.error = Some(error);
                });
                self.members.broken.send_replace(version);
            }
            Action::Ignored { from, why } => tracing::info!("from {from}: ignored {why}"),
        }
    }

    /// Sends `msg` to `to` on a task of its own, each with its deadline,
    /// and feeds the answer back.
    fn send(self: &Arc<Self>, to: String, msg: Msg) {
        let Ok(id) = to.parse::<PeerId>() else {
            tracing::warn!("'{to}' is not a peer id");
            return;
        };
        let me = self.clone();
        tokio::spawn(async move {
            let mesh = &me.mesh;
            let cfg = me.members.core().config().clone();
            match msg {
                Msg::Heartbeat { seq } => {
                    let plan_version = me.members.core().serving().map_or(0, |s| s.0);
                    let hb = pb::mesh_message::Body::Heartbeat(pb::Heartbeat { seq, plan_version });
                    // Its answer is due before the next heartbeat; a later
                    // one still counts as a sign of life.
                    let r = mesh.send_control(id, encode(hb), cfg.lost_after).await;
                    match r.map(|b| pb::MeshMessage::decode(b.as_slice())) {
                        Ok(Ok(pb::MeshMessage {
                            body: Some(pb::mesh_message::Body::HeartbeatAck(a)),
                        })) => {
                            let plan =
                                (a.plan_version != 0).then_some((a.plan_version, a.coordinator));
                            me.members.feed(Event::HeartbeatAck {
                                from: to,
                                seq: a.seq,
                                plan,
                            });
                        }
                        Ok(_) => tracing::debug!("{to} answered a heartbeat with something else"),
                        Err(e) => tracing::debug!("heartbeat to {to}: {e}"),
                    }
                }
                Msg::Proposal { version } => {
                    let Some(bytes) = lock(&me.members.proposals).get(&version).cloned() else {
                        return;
                    };
                    let r = mesh.send_control(id, bytes, cfg.ready_timeout).await;
                    let ev = proposal_answer(to, version, r);
                    me.members.feed(ev);
                }
                Msg::Announce { version } => {
                    let held = me
                        .status()
                        .plan
                        .filter(|p| p.version == version)
                        .map_or(0, |p| me.held_by(&p, &me.me));
                    let ready = pb::mesh_message::Body::NodeReady(pb::NodeReady {
                        plan_version: version,
                        node: me.me.clone(),
                        bytes_loaded: held,
                        ..Default::default()
                    });
                    if let Err(e) = mesh.send_control(id, encode(ready), ANNOUNCE_WITHIN).await {
                        tracing::debug!("telling {to} the plan is in force: {e}");
                    }
                }
            }
        });
    }
}

/// The core's event for a member's answer to proposal `version`.
fn proposal_answer(
    from: String,
    version: u64,
    r: std::result::Result<Vec<u8>, dwarfstar_mesh::MeshError>,
) -> Event {
    let not_ready = |why| Event::NotReady {
        from: from.clone(),
        version,
        why,
    };
    let reply = match r {
        Ok(b) => b,
        Err(e) => {
            return not_ready(Failure::Unreachable {
                node: from.clone(),
                error: e.to_string(),
            })
        }
    };
    match pb::MeshMessage::decode(reply.as_slice()) {
        Ok(pb::MeshMessage {
            body: Some(pb::mesh_message::Body::NodeReady(r)),
        }) if r.error.is_empty() && r.plan_version == version => Event::Ready {
            from,
            version,
            bytes_loaded: r.bytes_loaded,
            load_ms: r.load_ms,
        },
        Ok(pb::MeshMessage {
            body: Some(pb::mesh_message::Body::NodeReady(r)),
        }) if !r.error.is_empty() => not_ready(Failure::Refused {
            node: from.clone(),
            message: r.error,
        }),
        _ => not_ready(Failure::BadAnswer { node: from.clone() }),
    }
}

/// A failed round as the node runtime reports it.
pub fn round_error(why: Failure) -> NodeError {
    match why {
        Failure::Refused { node, message } => NodeError::Remote { node, message },
        Failure::Unreachable { error, .. } => NodeError::Transport(error),
        Failure::BadAnswer { node } => {
            NodeError::BadRequest(format!("{node} answered the plan with something else"))
        }
        Failure::Lost { node, reason } => NodeError::Lost { node, reason },
        other => NodeError::NotReady(other.to_string()),
    }
}
