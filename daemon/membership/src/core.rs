//! [`Membership`]: the peers, the coordinator's round, the plan in force,
//! and the heartbeats with their strike rule. Time comes in with every
//! call; nothing here reads a clock.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use crate::{Action, Config, Event, Failure, Msg, NodeId};

/// One peer as this node knows it.
#[derive(Debug, Default)]
struct Peer {
    /// Admitted, with capabilities, and its link open.
    up: bool,
    /// Why it was declared lost; None while it counts.
    lost: Option<String>,
    /// Heartbeats to it, while it is watched.
    beat: Option<Beat>,
}

#[derive(Debug)]
struct Beat {
    /// When the next heartbeat goes (and the last one's answer is due).
    next: Instant,
    /// The last heartbeat sent (0: none yet).
    seq: u64,
    answered: bool,
    /// Heartbeats unanswered in a row.
    strikes: u32,
    /// The last answer, or when watching began.
    heard: Instant,
}

/// The coordinator's round, from gathering nodes to the plan in force.
#[derive(Debug)]
pub(crate) enum Round {
    Gathering {
        version: u64,
        min_nodes: usize,
        wait: Duration,
        deadline: Instant,
    },
    /// `Plan` went out; the runtime plans over `nodes`.
    Planning { version: u64, nodes: Vec<NodeId> },
    /// Proposals went out; `true` for the members that are ready.
    Proposing {
        version: u64,
        members: BTreeMap<NodeId, bool>,
        deadline: Instant,
    },
    /// Every member is ready; this node takes its own share.
    Applying { version: u64, members: Vec<NodeId> },
}

impl Round {
    pub(crate) fn version(&self) -> u64 {
        match self {
            Round::Gathering { version, .. }
            | Round::Planning { version, .. }
            | Round::Proposing { version, .. }
            | Round::Applying { version, .. } => *version,
        }
    }

    fn has(&self, node: &str) -> bool {
        match self {
            Round::Gathering { .. } => false,
            Round::Planning { nodes, .. } => nodes.iter().any(|n| n == node),
            Round::Proposing { members, .. } => members.contains_key(node),
            Round::Applying { members, .. } => members.iter().any(|n| n == node),
        }
    }

    /// Members a heartbeat goes to (proposed, not merely planned over).
    fn watched(&self) -> Vec<&NodeId> {
        match self {
            Round::Gathering { .. } | Round::Planning { .. } => Vec::new(),
            Round::Proposing { members, .. } => members.keys().collect(),
            Round::Applying { members, .. } => members.iter().collect(),
        }
    }
}

/// The plan this node coordinates and serves.
#[derive(Debug)]
pub(crate) struct Serving {
    version: u64,
    members: Vec<NodeId>,
    /// A member was lost: the plan cannot serve as it is.
    broken: bool,
}

/// Membership and the plan handshake of one node. See the crate doc.
#[derive(Debug)]
pub struct Membership {
    pub(crate) me: NodeId,
    cfg: Config,
    peers: BTreeMap<NodeId, Peer>,
    pub(crate) round: Option<Round>,
    pub(crate) serving: Option<Serving>,
    /// The plan (version, coordinator) this node takes: the last proposal
    /// accepted, or its own plan in force.
    pub(crate) wanted: Option<(u64, NodeId)>,
    /// The plan whose share this node holds.
    pub(crate) held: Option<(u64, NodeId)>,
    seq: u64,
    out: VecDeque<Action>,
}

impl Membership {
    pub fn new(me: impl Into<NodeId>, cfg: Config) -> Membership {
        Membership {
            me: me.into(),
            cfg,
            peers: BTreeMap::new(),
            round: None,
            serving: None,
            wanted: None,
            held: None,
            seq: 0,
            out: VecDeque::new(),
        }
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The next thing to do, oldest first.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.out.pop_front()
    }

    /// When [`Membership::handle_timeout`] is due next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let round = match &self.round {
            Some(Round::Gathering { deadline, .. }) | Some(Round::Proposing { deadline, .. }) => {
                Some(*deadline)
            }
            _ => None,
        };
        let beats = self
            .peers
            .values()
            .filter_map(|p| p.beat.as_ref()?.next.into());
        round.into_iter().chain(beats).min()
    }

    /// Peers that count for a plan now (up, not lost), this node left out.
    pub fn live_peers(&self) -> Vec<NodeId> {
        self.peers
            .iter()
            .filter(|(_, p)| p.up && p.lost.is_none())
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// Whether this node has heard of `node` (up, down or lost).
    pub fn knows(&self, node: &str) -> bool {
        self.peers.contains_key(node)
    }

    /// Why `node` was declared lost, while it is.
    pub fn lost(&self, node: &str) -> Option<&str> {
        self.peers.get(node)?.lost.as_deref()
    }

    /// The plan this node coordinates, and whether a lost member broke it.
    pub fn serving(&self) -> Option<(u64, bool)> {
        self.serving.as_ref().map(|s| (s.version, s.broken))
    }

    pub fn handle(&mut self, now: Instant, ev: Event) {
        match ev {
            Event::PeerUp(node) => {
                let p = self.peers.entry(node.clone()).or_default();
                p.up = true;
                if p.lost.take().is_some() {
                    self.out.push_back(Action::Rejoined { node });
                }
                self.check_gather();
            }
            Event::PeerDown { node, reason } => {
                // A plan whose coordinator is gone binds nobody: any
                // proposal may replace it (its clock may lag the dead one's).
                if self.wanted.as_ref().is_some_and(|w| w.1 == node) {
                    self.wanted = None;
                }
                let member = self.is_member(&node);
                let p = self.peers.entry(node.clone()).or_default();
                p.up = false;
                p.beat = None;
                if member && p.lost.is_none() {
                    self.lose(&node, format!("its link closed ({reason})"));
                }
            }
            Event::Gather {
                version,
                min_nodes,
                wait,
            } => {
                self.fail_round(Failure::Superseded {
                    version,
                    coordinator: self.me.clone(),
                });
                self.round = Some(Round::Gathering {
                    version,
                    min_nodes,
                    wait,
                    deadline: now + wait,
                });
                self.check_gather();
            }
            Event::Propose { version, members } => self.propose(now, version, members),
            Event::Ready {
                from,
                version,
                bytes_loaded,
                load_ms,
            } => self.ready(from, version, bytes_loaded, load_ms),
            Event::NotReady { from, version, why } => match &self.round {
                Some(Round::Proposing {
                    version: v,
                    members,
                    ..
                }) if *v == version && members.contains_key(&from) => {
                    self.out.push_back(Action::MemberFailed {
                        node: from,
                        version,
                        why: why.clone(),
                    });
                    self.fail_round(why);
                }
                _ => self.ignore(
                    from,
                    format!("an answer to plan v{version}, not in a round"),
                ),
            },
            Event::Applied { version } => match self.round.take() {
                Some(Round::Applying {
                    version: v,
                    members,
                }) if v == version => {
                    for m in &members {
                        self.out.push_back(Action::Send {
                            to: m.clone(),
                            msg: Msg::Announce { version },
                        });
                    }
                    self.serving = Some(Serving {
                        version,
                        members,
                        broken: false,
                    });
                    self.wanted = Some((version, self.me.clone()));
                    self.held = self.wanted.clone();
                }
                other => {
                    self.round = other;
                    let me = self.me.clone();
                    self.ignore(me, format!("plan v{version} applied outside its round"));
                }
            },
            Event::Abandon { version } => {
                if self.round.as_ref().is_some_and(|r| r.version() == version) {
                    self.round = None;
                }
            }
            Event::HeartbeatAck { from, seq, plan } => self.ack(now, from, seq, plan),
        }
        self.sync_beats(now);
    }

    /// Deadlines that passed by `now`: a round's, and heartbeats due (each
    /// unanswered one a strike).
    pub fn handle_timeout(&mut self, now: Instant) {
        match &self.round {
            Some(Round::Gathering {
                deadline,
                min_nodes,
                wait,
                ..
            }) if *deadline <= now => {
                let why = Failure::TooFewNodes {
                    joined: 1 + self.live_peers().len(),
                    wanted: *min_nodes,
                    wait: *wait,
                };
                self.fail_round(why);
            }
            Some(Round::Proposing {
                deadline,
                members,
                version,
            }) if *deadline <= now => {
                let version = *version;
                let late = members.iter().find(|(_, r)| !**r).map(|(n, _)| n.clone());
                if let Some(node) = late {
                    let why = Failure::NotReadyInTime {
                        node: node.clone(),
                        after: self.cfg.ready_timeout,
                    };
                    self.out.push_back(Action::MemberFailed {
                        node,
                        version,
                        why: why.clone(),
                    });
                    self.fail_round(why);
                }
            }
            _ => {}
        }
        let interval = self.cfg.heartbeat_interval();
        let due: Vec<NodeId> = self
            .peers
            .iter()
            .filter(|(_, p)| p.beat.as_ref().is_some_and(|b| b.next <= now))
            .map(|(n, _)| n.clone())
            .collect();
        for node in due {
            let Some(p) = self.peers.get_mut(&node) else {
                continue;
            };
            let Some(b) = p.beat.as_mut() else { continue };
            if b.seq != 0 && !b.answered {
                b.strikes = b.strikes.saturating_add(1);
            }
            if p.lost.is_none() && b.strikes >= self.cfg.strikes.max(1) {
                let reason = format!(
                    "no answer for {:.1} s ({} heartbeats in a row)",
                    now.saturating_duration_since(b.heard).as_secs_f64(),
                    b.strikes
                );
                self.lose(&node, reason);
                continue;
            }
            self.seq += 1;
            b.seq = self.seq;
            b.answered = false;
            b.next = now + interval;
            self.out.push_back(Action::Send {
                to: node,
                msg: Msg::Heartbeat { seq: self.seq },
            });
        }
        self.sync_beats(now);
    }

    /// In the round being proposed or the plan in force.
    fn is_member(&self, node: &str) -> bool {
        self.round.as_ref().is_some_and(|r| r.has(node))
            || self
                .serving
                .as_ref()
                .is_some_and(|s| s.members.iter().any(|m| m == node))
    }

    fn ignore(&mut self, from: NodeId, why: String) {
        self.out.push_back(Action::Ignored { from, why });
    }

    pub(crate) fn fail_round(&mut self, why: Failure) {
        if let Some(r) = self.round.take() {
            self.out.push_back(Action::RoundFailed {
                version: r.version(),
                why,
            });
        }
    }

    fn check_gather(&mut self) {
        let Some(Round::Gathering {
            version, min_nodes, ..
        }) = &self.round
        else {
            return;
        };
        let (version, min_nodes) = (*version, *min_nodes);
        let mut nodes = vec![self.me.clone()];
        nodes.extend(self.live_peers());
        if nodes.len() >= min_nodes.max(1) {
            self.round = Some(Round::Planning {
                version,
                nodes: nodes.clone(),
            });
            self.out.push_back(Action::Plan { version, nodes });
        }
    }

    fn propose(&mut self, now: Instant, version: u64, members: Vec<NodeId>) {
        match &self.round {
            Some(r) if r.version() == version => {}
            _ => {
                let me = self.me.clone();
                return self.ignore(me, format!("plan v{version} proposed outside its round"));
            }
        }
        let members: Vec<NodeId> = members.into_iter().filter(|m| *m != self.me).collect();
        if let Some(m) = members.iter().find(|m| self.lost(m).is_some()) {
            let why = Failure::Lost {
                node: m.clone(),
                reason: self.lost(m).unwrap_or_default().to_string(),
            };
            return self.fail_round(why);
        }
        for m in &members {
            self.out.push_back(Action::Send {
                to: m.clone(),
                msg: Msg::Proposal { version },
            });
        }
        if members.is_empty() {
            self.round = Some(Round::Applying { version, members });
            self.out.push_back(Action::Apply { version });
            return;
        }
        self.round = Some(Round::Proposing {
            version,
            members: members.into_iter().map(|m| (m, false)).collect(),
            deadline: now + self.cfg.ready_timeout,
        });
    }

    fn ready(&mut self, from: NodeId, version: u64, bytes_loaded: u64, load_ms: u64) {
        let Some(Round::Proposing {
            version: v,
            members,
            ..
        }) = &mut self.round
        else {
            return self.ignore(
                from,
                format!("NodeReady of plan v{version}, not in a round"),
            );
        };
        if *v != version {
            let why = format!("NodeReady of plan v{version}, while v{v} is proposed");
            return self.ignore(from, why);
        }
        match members.get_mut(&from) {
            Some(r) if !*r => *r = true,
            _ => return self.ignore(from, format!("NodeReady of plan v{version} again")),
        }
        self.out.push_back(Action::MemberReady {
            node: from,
            version,
            bytes_loaded,
            load_ms,
        });
        if members.values().all(|r| *r) {
            let members = members.keys().cloned().collect();
            self.round = Some(Round::Applying { version, members });
            self.out.push_back(Action::Apply { version });
        }
    }

    fn ack(&mut self, now: Instant, from: NodeId, seq: u64, plan: Option<(u64, NodeId)>) {
        let Some(p) = self.peers.get_mut(&from) else {
            return self.ignore(from, "a heartbeat answer from no known peer".into());
        };
        if let Some(b) = p.beat.as_mut() {
            if b.seq == seq {
                b.answered = true;
            }
            b.strikes = 0;
            b.heard = now;
        }
        if p.up && p.lost.is_some() {
            p.lost = None;
            self.out.push_back(Action::Rejoined { node: from.clone() });
        }
        // A member of the plan in force that holds another plan (it took
        // another coordinator's, or a failed round's) no longer serves it;
        // it is alive, and counts for the next plan.
        let Some(s) = &self.serving else { return };
        let expected = (s.version, self.me.clone());
        let in_round = self.round.as_ref().is_some_and(|r| r.has(&from));
        if !s.broken && !in_round && s.members.contains(&from) && plan.as_ref() != Some(&expected) {
            let holds = match plan {
                Some((v, c)) => format!("plan v{v} of {c}"),
                None => "no plan".into(),
            };
            let reason = format!("it holds {holds}, not plan v{}", s.version);
            self.break_plan(&from, reason);
        }
    }

    /// Declares `node` lost: the round it is in fails, the plan in force
    /// it serves breaks.
    fn lose(&mut self, node: &str, reason: String) {
        let p = self.peers.entry(node.to_string()).or_default();
        p.lost = Some(reason.clone());
        p.beat = None;
        self.out.push_back(Action::PeerLost {
            node: node.to_string(),
            reason: reason.clone(),
        });
        if let Some(r) = &self.round {
            if r.has(node) {
                let version = r.version();
                let why = Failure::Lost {
                    node: node.to_string(),
                    reason: reason.clone(),
                };
                if matches!(r, Round::Proposing { members, .. } if members.get(node) == Some(&false))
                {
                    self.out.push_back(Action::MemberFailed {
                        node: node.to_string(),
                        version,
                        why: why.clone(),
                    });
                }
                self.fail_round(why);
            }
        }
        self.break_plan(node, reason);
    }

    /// The plan in force lost `node`, if it is a member.
    fn break_plan(&mut self, node: &str, reason: String) {
        if let Some(s) = &mut self.serving {
            if !s.broken && s.members.iter().any(|m| m == node) {
                s.broken = true;
                let mut survivors = vec![self.me.clone()];
                survivors.extend(s.members.iter().filter(|m| *m != node).cloned());
                self.out.push_back(Action::PlanBroken {
                    version: s.version,
                    lost: node.to_string(),
                    survivors,
                    reason,
                });
            }
        }
    }

    /// Heartbeats go to the members of the round and of the plan in force,
    /// and to lost peers whose link is still open (an answer is a rejoin).
    pub(crate) fn sync_beats(&mut self, now: Instant) {
        let mut watched: Vec<NodeId> = Vec::new();
        if let Some(r) = &self.round {
            watched.extend(r.watched().into_iter().cloned());
        }
        if let Some(s) = &self.serving {
            watched.extend(s.members.iter().cloned());
        }
        for n in watched {
            if n != self.me {
                self.peers.entry(n).or_default();
            }
        }
        let round = self.round.as_ref();
        let serving = self.serving.as_ref();
        for (n, p) in self.peers.iter_mut() {
            let member = round.is_some_and(|r| r.watched().contains(&n))
                || serving.is_some_and(|s| s.members.contains(n));
            let probe = p.up && p.lost.is_some();
            let watch = (member && p.lost.is_none()) || probe;
            match (&p.beat, watch) {
                (None, true) => {
                    p.beat = Some(Beat {
                        next: now,
                        seq: 0,
                        answered: false,
                        strikes: 0,
                        heard: now,
                    })
                }
                (Some(_), false) => p.beat = None,
                _ => {}
            }
        }
    }
}
