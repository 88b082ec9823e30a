//! The membership core driven through rounds, losses, hangs, stale replies,
//! races and rejoins with injected time: no sockets, no sleeps.

use std::time::{Duration, Instant};

use crate::{Action, Config, Event, Failure, Membership, Msg, Refusal};

const MS: Duration = Duration::from_millis(1);

fn drain(m: &mut Membership) -> Vec<Action> {
    std::iter::from_fn(|| m.poll_action()).collect()
}

/// Heartbeats among `actions`, as (to, seq).
fn beats(actions: &[Action]) -> Vec<(String, u64)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Send {
                to,
                msg: Msg::Heartbeat { seq },
            } => Some((to.clone(), *seq)),
            _ => None,
        })
        .collect()
}

fn ack(m: &mut Membership, now: Instant, from: &str, seq: u64, plan: Option<(u64, &str)>) {
    let plan = plan.map(|(v, c)| (v, c.to_string()));
    m.handle(
        now,
        Event::HeartbeatAck {
            from: from.into(),
            seq,
            plan,
        },
    );
}

/// Runs `m`'s timers from `from` to `to` in 10 ms steps; `answer` says
/// whether a peer answers each heartbeat (with the plan it holds).
fn run(
    m: &mut Membership,
    from: Instant,
    to: Instant,
    answer: impl Fn(&str) -> Option<Option<(u64, String)>>,
) -> Vec<(Instant, Action)> {
    let mut seen = Vec::new();
    let mut t = from;
    while t <= to {
        if m.poll_timeout().is_some_and(|d| d <= t) {
            m.handle_timeout(t);
        }
        for a in drain(m) {
            if let Action::Send {
                to,
                msg: Msg::Heartbeat { seq },
            } = &a
            {
                if let Some(plan) = answer(to) {
                    m.handle(
                        t,
                        Event::HeartbeatAck {
                            from: to.clone(),
                            seq: *seq,
                            plan,
                        },
                    );
                }
            }
            seen.push((t, a));
        }
        t += 10 * MS;
    }
    seen
}

/// A coordinator "a" with peers up, gathered and proposing `version` to them.
fn proposing(peers: &[&str], version: u64, t0: Instant) -> Membership {
    let mut m = Membership::new("a", Config::default());
    for p in peers {
        m.handle(t0, Event::PeerUp(p.to_string()));
    }
    m.handle(
        t0,
        Event::Gather {
            version,
            min_nodes: peers.len() + 1,
            wait: Duration::from_secs(60),
        },
    );
    let mut nodes = vec!["a".to_string()];
    nodes.extend(peers.iter().map(|p| p.to_string()));
    assert_eq!(drain(&mut m), vec![Action::Plan { version, nodes }]);
    let members = peers.iter().map(|p| p.to_string()).collect();
    m.handle(t0, Event::Propose { version, members });
    let sent = drain(&mut m);
    for p in peers {
        assert!(sent.contains(&Action::Send {
            to: p.to_string(),
            msg: Msg::Proposal { version },
        }));
    }
    m
}

fn ready(m: &mut Membership, now: Instant, from: &str, version: u64) {
    m.handle(
        now,
        Event::Ready {
            from: from.into(),
            version,
            bytes_loaded: 10,
            load_ms: 5,
        },
    );
}

/// A coordinator "a" serving plan `version` over `peers`.
fn serving(peers: &[&str], version: u64, t0: Instant) -> Membership {
    let mut m = proposing(peers, version, t0);
    for p in peers {
        ready(&mut m, t0, p, version);
    }
    assert!(drain(&mut m).contains(&Action::Apply { version }));
    m.handle(t0, Event::Applied { version });
    let out = drain(&mut m);
    for p in peers {
        assert!(out.contains(&Action::Send {
            to: p.to_string(),
            msg: Msg::Announce { version },
        }));
    }
    assert_eq!(m.serving(), Some((version, false)));
    m
}

fn holds(v: u64) -> impl Fn(&str) -> Option<Option<(u64, String)>> {
    move |_| Some(Some((v, "a".to_string())))
}

#[test]
fn gathering_plans_once_enough_nodes_joined_and_fails_after_the_wait() {
    let t0 = Instant::now();
    let mut m = Membership::new("a", Config::default());
    let wait = Duration::from_secs(5);
    m.handle(
        t0,
        Event::Gather {
            version: 1,
            min_nodes: 2,
            wait,
        },
    );
    assert!(drain(&mut m).is_empty());
    assert_eq!(m.poll_timeout(), Some(t0 + wait));
    m.handle(t0 + 2 * wait / 5, Event::PeerUp("b".into()));
    let want = vec!["a".to_string(), "b".to_string()];
    assert_eq!(
        drain(&mut m),
        vec![Action::Plan {
            version: 1,
            nodes: want
        }]
    );

    let mut m = Membership::new("a", Config::default());
    m.handle(
        t0,
        Event::Gather {
            version: 2,
            min_nodes: 3,
            wait,
        },
    );
    m.handle(t0, Event::PeerUp("b".into()));
    m.handle_timeout(t0 + wait - MS);
    assert!(drain(&mut m).is_empty(), "too early");
    m.handle_timeout(t0 + wait);
    let why = Failure::TooFewNodes {
        joined: 2,
        wanted: 3,
        wait,
    };
    assert_eq!(drain(&mut m), vec![Action::RoundFailed { version: 2, why }]);
}

#[test]
fn a_member_lost_before_it_is_ready_fails_the_round_within_the_bound() {
    let t0 = Instant::now();
    let mut m = proposing(&["b", "c"], 7, t0);
    ready(&mut m, t0 + 100 * MS, "b", 7);
    // "c" loads and answers nothing, not even heartbeats; "b" answers all.
    let seen = run(&mut m, t0, t0 + Duration::from_secs(5), |n| {
        (n == "b").then_some(Some((0, String::new())))
    });
    let lost_at = seen
        .iter()
        .find_map(|(t, a)| matches!(a, Action::PeerLost { node, .. } if node == "c").then_some(*t))
        .expect("c is declared lost");
    // Silent from the start: the third unanswered heartbeat's deadline,
    // within the bound (which allows for one answer just before).
    let cfg = Config::default();
    assert!(
        lost_at - t0 <= cfg.lost_after && lost_at - t0 >= 3 * cfg.heartbeat_interval(),
        "lost after {:?}",
        lost_at - t0
    );
    let failed: Vec<_> = seen
        .iter()
        .filter(|(_, a)| matches!(a, Action::RoundFailed { .. } | Action::MemberFailed { .. }))
        .map(|(_, a)| a.clone())
        .collect();
    assert!(
        matches!(&failed[..], [
            Action::MemberFailed { node, version: 7, why: Failure::Lost { .. } },
            Action::RoundFailed { version: 7, why: Failure::Lost { node: lost, .. } },
        ] if node == "c" && lost == "c"),
        "{failed:?}"
    );
    assert!(!seen.iter().any(|(_, a)| matches!(a, Action::Apply { .. })));
    assert!(m.lost("c").is_some() && m.lost("b").is_none());
    // A NodeReady arriving after the round failed is ignored.
    ready(&mut m, t0 + Duration::from_secs(6), "c", 7);
    assert!(matches!(&drain(&mut m)[..], [Action::Ignored { .. }]));
}

#[test]
fn a_member_whose_link_closes_while_loading_fails_the_round_at_once() {
    let t0 = Instant::now();
    let mut m = proposing(&["b"], 3, t0);
    m.handle(
        t0 + MS,
        Event::PeerDown {
            node: "b".into(),
            reason: "connection reset".into(),
        },
    );
    let out = drain(&mut m);
    assert!(out.contains(&Action::PeerLost {
        node: "b".into(),
        reason: "its link closed (connection reset)".into(),
    }));
    assert!(out.iter().any(|a| matches!(
        a,
        Action::RoundFailed {
            version: 3,
            why: Failure::Lost { .. }
        }
    )));
}

#[test]
fn a_member_lost_while_serving_breaks_the_plan_and_names_the_survivors() {
    let t0 = Instant::now();
    let mut m = serving(&["b", "c"], 9, t0);
    // Everyone answers for a while: nothing happens.
    let t1 = t0 + Duration::from_secs(10);
    let seen = run(&mut m, t0, t1, holds(9));
    assert!(seen.iter().all(|(_, a)| matches!(a, Action::Send { .. })));
    assert!(beats(&seen.iter().map(|(_, a)| a.clone()).collect::<Vec<_>>()).len() >= 2 * 13);
    // Then "c" stops (SIGSTOP): its link stays open, its answers stop.
    let seen = run(&mut m, t1, t1 + Duration::from_secs(4), |n| {
        (n == "b").then_some(Some((9, "a".to_string())))
    });
    let broken: Vec<_> = seen
        .iter()
        .filter(|(_, a)| matches!(a, Action::PlanBroken { .. } | Action::PeerLost { .. }))
        .collect();
    assert_eq!(broken.len(), 2, "{broken:?}");
    assert!(broken[0].0 - t1 <= Config::default().lost_after);
    match &broken[1].1 {
        Action::PlanBroken {
            version,
            lost,
            survivors,
            ..
        } => {
            assert_eq!((*version, lost.as_str()), (9, "c"));
            assert_eq!(survivors, &["a".to_string(), "b".to_string()]);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(m.serving(), Some((9, true)));
}

#[test]
fn a_busy_member_answering_late_is_never_lost_and_the_bound_is_configurable() {
    let t0 = Instant::now();
    let cfg = Config::with_lost_after(Duration::from_secs(1));
    assert_eq!(cfg.heartbeat_interval(), 250 * MS);
    let mut m = Membership::new("a", cfg);
    m.handle(t0, Event::PeerUp("b".into()));
    m.handle(
        t0,
        Event::Gather {
            version: 1,
            min_nodes: 2,
            wait: Duration::from_secs(1),
        },
    );
    m.handle(
        t0,
        Event::Propose {
            version: 1,
            members: vec!["b".into()],
        },
    );
    ready(&mut m, t0, "b", 1);
    m.handle(t0, Event::Applied { version: 1 });
    drain(&mut m);
    // "b" is deep in a long prefill: every heartbeat's answer comes 1.5
    // intervals late, after the next heartbeat went out.
    let mut t = t0;
    let mut owed: Vec<(Instant, u64)> = Vec::new();
    while t < t0 + Duration::from_secs(20) {
        if m.poll_timeout().is_some_and(|d| d <= t) {
            m.handle_timeout(t);
        }
        for a in drain(&mut m) {
            match a {
                Action::Send {
                    msg: Msg::Heartbeat { seq },
                    ..
                } => owed.push((t + 375 * MS, seq)),
                other => panic!("{other:?} at {:?}", t - t0),
            }
        }
        while owed.first().is_some_and(|(at, _)| *at <= t) {
            let (_, seq) = owed.remove(0);
            ack(&mut m, t, "b", seq, Some((1, "a")));
        }
        t += 5 * MS;
    }
    assert_eq!(m.serving(), Some((1, false)));
    // Silent from now on: lost within the configured second.
    let seen = run(&mut m, t, t + Duration::from_secs(2), |_| None);
    let lost = seen
        .iter()
        .find(|(_, a)| matches!(a, Action::PeerLost { .. }))
        .expect("lost");
    assert!(lost.0 - t <= Duration::from_secs(1), "{:?}", lost.0 - t);
}

#[test]
fn a_hung_member_that_never_gets_ready_fails_the_round_at_the_deadline() {
    let t0 = Instant::now();
    let cfg = Config::default();
    let mut m = proposing(&["b", "c"], 4, t0);
    ready(&mut m, t0, "b", 4);
    drain(&mut m);
    // "c" answers heartbeats (alive) but its load never ends.
    let end = t0 + cfg.ready_timeout + Duration::from_secs(1);
    let seen = run(&mut m, t0, end, |_| Some(None));
    let failed: Vec<_> = seen
        .iter()
        .filter(|(_, a)| !matches!(a, Action::Send { .. }))
        .collect();
    let why = Failure::NotReadyInTime {
        node: "c".into(),
        after: cfg.ready_timeout,
    };
    assert_eq!(
        failed.iter().map(|(_, a)| a.clone()).collect::<Vec<_>>(),
        vec![
            Action::MemberFailed {
                node: "c".into(),
                version: 4,
                why: why.clone(),
            },
            Action::RoundFailed { version: 4, why },
        ]
    );
    assert!(failed[0].0 >= t0 + cfg.ready_timeout);
    // Nobody was lost; without a round or plan, no more heartbeats.
    assert!(m.lost("c").is_none());
    assert_eq!(m.poll_timeout(), None);
}

#[test]
fn a_stale_node_ready_of_an_old_plan_version_is_ignored() {
    let t0 = Instant::now();
    let mut m = proposing(&["b"], 20, t0);
    ready(&mut m, t0, "b", 19);
    let out = drain(&mut m);
    assert!(matches!(&out[..], [Action::Ignored { from, .. }] if from == "b"));
    assert_eq!(m.serving(), None);
    ready(&mut m, t0, "b", 20);
    assert!(drain(&mut m).contains(&Action::Apply { version: 20 }));

    // On a member: the coordinator's NodeReady counts only for the plan it holds.
    let mut w = Membership::new("b", Config::default());
    w.on_proposal(t0, "a", 19).unwrap();
    w.loaded("a", 19).unwrap();
    w.on_proposal(t0, "a", 20).unwrap();
    assert!(!w.on_announce("a", 20), "not loaded yet");
    assert!(w.on_announce("a", 19));
    w.loaded("a", 20).unwrap();
    assert!(!w.on_announce("a", 19), "an old version");
    assert!(!w.on_announce("x", 20), "another coordinator");
    assert!(w.on_announce("a", 20));
    // A repeated or older proposal is refused.
    assert!(matches!(
        w.on_proposal(t0, "a", 20),
        Err(Refusal::Stale { current: 20, .. })
    ));
    assert!(w.on_proposal(t0, "a", 18).is_err());
}

#[test]
fn of_two_racing_coordinators_the_later_plan_wins_everywhere() {
    let t0 = Instant::now();
    // "x" proposes v10, "y" v11, to member "m", in both orders.
    for order in [["x", "y"], ["y", "x"]] {
        let mut m = Membership::new("m", Config::default());
        let mut took = Vec::new();
        for c in order {
            let v = if c == "x" { 10 } else { 11 };
            if m.on_proposal(t0, c, v).is_ok() {
                took.push(c);
            }
        }
        // The loads finish in any order; only v11's share stays.
        let want: &[&str] = if order[0] == "x" { &["x", "y"] } else { &["y"] };
        assert_eq!(took, want, "the later proposal is always taken");
        assert!(m.loaded("x", 10).is_err());
        assert_eq!(m.loaded("y", 11), Ok(()));
        assert_eq!(m.held(), Some((11, "y".to_string())));
        assert_eq!(
            m.loaded("x", 10),
            Err(Failure::Superseded {
                version: 11,
                coordinator: "y".into()
            })
        );
    }
    // The coordinators themselves: each proposes to the other while its own
    // round runs. "y"'s v11 ends "x"'s round; "x"'s v10 is refused by "y".
    let mut x = proposing(&["m", "y"], 10, t0);
    let mut y = Membership::new("y", Config::default());
    y.handle(t0, Event::PeerUp("x".into()));
    y.handle(
        t0,
        Event::Gather {
            version: 11,
            min_nodes: 1,
            wait: Duration::from_secs(1),
        },
    );
    drain(&mut y);
    assert_eq!(
        y.on_proposal(t0, "x", 10),
        Err(Refusal::Coordinating { version: 11 })
    );
    assert_eq!(x.on_proposal(t0, "y", 11), Ok(()));
    let why = Failure::Superseded {
        version: 11,
        coordinator: "y".into(),
    };
    assert_eq!(
        drain(&mut x),
        vec![Action::RoundFailed { version: 10, why }]
    );
    // x's round is over: its members' late answers change nothing.
    ready(&mut x, t0, "m", 10);
    assert!(matches!(&drain(&mut x)[..], [Action::Ignored { .. }]));
}

#[test]
fn a_serving_member_taken_by_another_coordinator_breaks_the_plan() {
    let t0 = Instant::now();
    let mut m = serving(&["b", "c"], 5, t0);
    let seen = run(&mut m, t0, t0 + Duration::from_secs(1), |n| {
        Some(Some(if n == "c" {
            (6, "z".to_string())
        } else {
            (5, "a".to_string())
        }))
    });
    assert!(
        seen.iter().any(|(_, a)| matches!(a,
        Action::PlanBroken { lost, reason, .. } if lost == "c" && reason.contains("plan v6 of z")))
    );
    assert!(m.lost("c").is_none(), "alive: it counts for the next plan");
    assert_eq!(m.live_peers().len(), 2);
    // A proposal of a later plan ends this node's plan in force.
    assert_eq!(m.on_proposal(t0, "z", 6), Ok(()));
    assert_eq!(m.serving(), None);
}

#[test]
fn a_node_that_rejoins_counts_again_but_does_not_mend_the_broken_plan() {
    let t0 = Instant::now();
    let mut m = serving(&["b", "c"], 5, t0);
    // "c" restarts: its link closes, and it comes back without the plan.
    m.handle(
        t0 + Duration::from_secs(1),
        Event::PeerDown {
            node: "c".into(),
            reason: "closed".into(),
        },
    );
    let out = drain(&mut m);
    assert!(out.iter().any(|a| matches!(a, Action::PlanBroken { .. })));
    assert_eq!(m.live_peers(), vec!["b".to_string()]);
    m.handle(t0 + Duration::from_secs(2), Event::PeerUp("c".into()));
    assert_eq!(drain(&mut m), vec![Action::Rejoined { node: "c".into() }]);
    assert_eq!(m.live_peers(), vec!["b".to_string(), "c".to_string()]);
    assert_eq!(m.serving(), Some((5, true)), "still broken");
    // The next round gathers it at once.
    let t3 = t0 + Duration::from_secs(3);
    m.handle(
        t3,
        Event::Gather {
            version: 6,
            min_nodes: 3,
            wait: Duration::from_secs(10),
        },
    );
    assert!(matches!(&drain(&mut m)[..], [Action::Plan { version: 6, nodes }] if nodes.len() == 3));

    // A node lost by silence (SIGSTOP) and then resumed answers the probes
    // that keep going to it, and rejoins.
    let mut m = serving(&["b"], 5, t0);
    let seen = run(&mut m, t0, t0 + Duration::from_secs(4), |_| None);
    assert!(seen
        .iter()
        .any(|(_, a)| matches!(a, Action::PeerLost { .. })));
    assert!(m.live_peers().is_empty());
    let t5 = t0 + Duration::from_secs(5);
    let seen = run(&mut m, t5, t5 + Duration::from_secs(1), holds(5));
    assert!(seen
        .iter()
        .any(|(_, a)| *a == Action::Rejoined { node: "b".into() }));
    assert_eq!(m.live_peers(), vec!["b".to_string()]);
    assert_eq!(m.serving(), Some((5, true)));
}

#[test]
fn a_member_refusing_the_proposal_fails_the_round_and_a_release_ends_serving() {
    let t0 = Instant::now();
    let mut m = proposing(&["b", "c"], 2, t0);
    let why = Failure::Refused {
        node: "c".into(),
        message: "model here has other bytes".into(),
    };
    m.handle(
        t0,
        Event::NotReady {
            from: "c".into(),
            version: 2,
            why: why.clone(),
        },
    );
    let out = drain(&mut m);
    assert_eq!(out.len(), 2);
    assert_eq!(out[1], Action::RoundFailed { version: 2, why });
    // No round, no plan: no heartbeats at all.
    assert_eq!(m.poll_timeout(), None);

    let mut m = serving(&["b"], 3, t0);
    assert!(m.poll_timeout().is_some());
    m.released(t0);
    assert_eq!(m.serving(), None);
    assert_eq!(m.poll_timeout(), None);
}

#[test]
fn a_plan_whose_coordinator_is_gone_binds_nobody() {
    let t0 = Instant::now();
    let mut w = Membership::new("w", Config::default());
    w.on_proposal(t0, "a", 100).unwrap();
    w.loaded("a", 100).unwrap();
    assert_eq!(w.next_version(50), 101, "later than what it took");
    assert_eq!(w.next_version(200), 200);
    // Another coordinator whose clock lags is refused while "a" is there...
    assert!(w.on_proposal(t0, "b", 90).is_err());
    // ...and taken once "a" is gone.
    w.handle(
        t0,
        Event::PeerDown {
            node: "a".into(),
            reason: "closed".into(),
        },
    );
    assert_eq!(w.on_proposal(t0, "b", 90), Ok(()));
    assert_eq!(w.loaded("b", 90), Ok(()));
    assert!(w.on_announce("b", 90));
}
