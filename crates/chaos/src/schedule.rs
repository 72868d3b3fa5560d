//! The fault schedule: planned from the seed, then played against the
//! running system.
//!
//! Two tracks run side by side:
//!
//! * **processes**, one fault at a time: SIGKILL then restart after a
//!   short downtime, or SIGSTOP then SIGCONT after longer than the
//!   coordinators' request timeout. Every kind of process is killed once
//!   (coordinators, both services, order-api, MariaDB, etcd — the last two
//!   are "a MariaDB restart" and "an etcd restart"), a coordinator and one
//!   other process are paused once, in an order the seed shuffles; then
//!   random extra faults follow while the fault window lasts. Every pause
//!   outlasts the coordinators' lease ([`LEASE`]); with
//!   [`Shape::long_pause`] (the fencing workloads) one coordinator is also
//!   stopped for the lease plus 4–6 s, so it wakes up in the middle of
//!   passes the other coordinator has taken over long ago;
//! * **network**, on the fault proxies: added latency, a stall and a drop,
//!   each once on a link the seed picks, then random extras.
//!
//! The plan (what, where, when, for how long) is a pure function of the
//! seed and the topology's shape, so a seed names a run. Execution times
//! are real: a fault starts at its planned time or as soon as the previous
//! one on its track is over, whichever is later, and the report shows when
//! each one actually happened.

use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::seq::{IndexedRandom, SliceRandom};
use rand::{Rng, SeedableRng};
use tokio::time::Instant;

use super::proxy::Link;
use super::topology::{Kind, LEASE, REQUEST_TIMEOUT, Topology};

/// One fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// SIGKILL process `target`, wait `down`, start it again (same ports,
    /// same data).
    Kill {
        /// Index into [`Topology::procs`].
        target: usize,
        /// Time between the kill and the restart.
        down: Duration,
    },
    /// SIGSTOP process `target` for `length`, then SIGCONT.
    Pause {
        /// Index into [`Topology::procs`].
        target: usize,
        /// How long it stays stopped (longer than the request timeout).
        length: Duration,
    },
    /// A network fault on link `link` for `length`.
    Net {
        /// Index into [`Topology::links`].
        link: usize,
        /// Which fault.
        kind: NetFault,
        /// How long it lasts.
        length: Duration,
    },
}

/// What a fault proxy does to a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NetFault {
    /// Every chunk arrives this much later.
    Latency(Duration),
    /// Nothing arrives until the fault ends.
    Stall,
    /// Open connections are reset, new ones too.
    Drop,
}

/// A fault and when to start it (from the start of traffic).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Planned {
    /// Planned start.
    pub at: Duration,
    /// The fault.
    pub fault: Fault,
}

/// Both tracks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Kills and pauses, one at a time.
    pub process: Vec<Planned>,
    /// Proxy faults, one at a time, overlapping the process track.
    pub network: Vec<Planned>,
}

/// What the plan is made for: the processes (by kind) and the number of links.
#[derive(Debug, Clone)]
pub struct Shape {
    /// The kind of each process, by index.
    pub procs: Vec<Kind>,
    /// The number of fault proxies.
    pub links: usize,
    /// Add a coordinator pause of [`LEASE`] + 4–6 s.
    pub long_pause: bool,
}

impl Shape {
    /// The shape of a running topology.
    pub fn of(topology: &Topology) -> Shape {
        Shape {
            procs: topology.procs.iter().map(|p| p.kind).collect(),
            links: topology.links.len(),
            long_pause: false,
        }
    }

    fn of_kind(&self, kind: Kind) -> Vec<usize> {
        (0..self.procs.len()).filter(|&i| self.procs[i] == kind).collect()
    }
}

/// Plans the faults of a run whose fault window is `window` long.
pub fn plan(seed: u64, window: Duration, shape: &Shape) -> Plan {
    let mut rng = StdRng::seed_from_u64(seed);
    let secs = |rng: &mut StdRng, low: f64, high: f64| Duration::from_secs_f64(rng.random_range(low..high));
    let pause_length = |rng: &mut StdRng| REQUEST_TIMEOUT + secs(rng, 0.5, 2.0);
    let all: Vec<usize> = (0..shape.procs.len()).collect();

    // Process track: every kind killed once, a coordinator and one other
    // process paused, shuffled; then extras.
    let mut process = Vec::new();
    for kind in Kind::ALL {
        if let Some(&target) = shape.of_kind(kind).choose(&mut rng) {
            let down = secs(&mut rng, 0.3, 1.2);
            process.push(Fault::Kill { target, down });
        }
    }
    if let Some(&target) = shape.of_kind(Kind::Coordinator).choose(&mut rng) {
        process.push(Fault::Pause { target, length: pause_length(&mut rng) });
    }
    if let Some(&target) = all.choose(&mut rng) {
        process.push(Fault::Pause { target, length: pause_length(&mut rng) });
    }
    if shape.long_pause
        && let Some(&target) = shape.of_kind(Kind::Coordinator).choose(&mut rng)
    {
        process.push(Fault::Pause { target, length: LEASE + secs(&mut rng, 4.0, 6.0) });
    }
    process.shuffle(&mut rng);
    let process = timeline(
        &mut rng,
        process,
        Duration::from_secs(2),
        window,
        |rng, fault| match fault {
            Fault::Kill { target, down } => {
                *down + restart_estimate(shape.procs[*target]) + secs(rng, 0.3, 1.2)
            }
            Fault::Pause { length, .. } | Fault::Net { length, .. } => *length + secs(rng, 0.3, 1.2),
        },
        |rng| {
            let target = *all.choose(rng)?;
            Some(if rng.random_bool(0.5) {
                Fault::Kill { target, down: secs(rng, 0.3, 1.2) }
            } else {
                Fault::Pause { target, length: pause_length(rng) }
            })
        },
    );

    // Network track: latency, a stall and a drop, shuffled; then extras.
    let net = |rng: &mut StdRng, kind: Option<NetFault>| -> Option<Fault> {
        if shape.links == 0 {
            return None;
        }
        let kind = kind.unwrap_or_else(|| match rng.random_range(0..3) {
            0 => NetFault::Latency(Duration::from_millis(rng.random_range(50..400))),
            1 => NetFault::Stall,
            _ => NetFault::Drop,
        });
        Some(Fault::Net { link: rng.random_range(0..shape.links), kind, length: secs(rng, 1.5, 4.0) })
    };
    let latency = NetFault::Latency(Duration::from_millis(rng.random_range(50..400)));
    let mut network: Vec<Fault> = [latency, NetFault::Stall, NetFault::Drop]
        .into_iter()
        .filter_map(|kind| net(&mut rng, Some(kind)))
        .collect();
    network.shuffle(&mut rng);
    let network = timeline(
        &mut rng,
        network,
        Duration::from_secs(3),
        window,
        |rng, fault| match fault {
            Fault::Net { length, .. } => *length + secs(rng, 0.5, 2.0),
            _ => Duration::ZERO,
        },
        |rng| net(rng, None),
    );
    Plan { process, network }
}

/// Lays `mandatory` out from `start`, each fault after the expected end of
/// the previous one, then appends `extra()` faults while they still start
/// within `window`.
fn timeline(
    rng: &mut StdRng,
    mandatory: Vec<Fault>,
    start: Duration,
    window: Duration,
    cost: impl Fn(&mut StdRng, &Fault) -> Duration,
    mut extra: impl FnMut(&mut StdRng) -> Option<Fault>,
) -> Vec<Planned> {
    let mut at = start;
    let mut planned = Vec::new();
    for fault in mandatory {
        planned.push(Planned { at, fault });
        at += cost(rng, &fault);
    }
    while at < window {
        let Some(fault) = extra(rng) else { break };
        planned.push(Planned { at, fault });
        at += cost(rng, &fault);
    }
    planned
}

/// Roughly how long a restart takes, for spacing the plan.
fn restart_estimate(kind: Kind) -> Duration {
    match kind {
        Kind::MariaDb => Duration::from_secs(3),
        Kind::Etcd | Kind::Coordinator => Duration::from_millis(800),
        Kind::OrderSrv | Kind::StockSrv | Kind::OrderApi => Duration::from_millis(500),
    }
}

/// A fault as it happened.
#[derive(Debug, Clone)]
pub struct Injected {
    /// When it started (from the start of traffic).
    pub at: Duration,
    /// When it was over: the process back up, resumed, or the link clean.
    pub ended: Duration,
    /// The fault.
    pub fault: Fault,
    /// The target's name (`coordinator-2`, `order-srv→mariadb`).
    pub target: String,
    /// What went wrong applying or healing it (a restart that failed).
    pub error: Option<String>,
}

impl Injected {
    /// One line for the report: `SIGKILL coordinator-2, down 0.71 s, serving again after 1.53 s`.
    pub fn describe(&self) -> String {
        let took = self.ended.saturating_sub(self.at).as_secs_f64();
        let text = match self.fault {
            Fault::Kill { down, .. } => format!(
                "SIGKILL {}, restarted after {:.2} s down, serving again {took:.2} s after the kill",
                self.target,
                down.as_secs_f64()
            ),
            Fault::Pause { length, .. } => {
                format!("SIGSTOP {} for {:.2} s, then SIGCONT", self.target, length.as_secs_f64())
            }
            Fault::Net { kind, length, .. } => {
                let what = match kind {
                    NetFault::Latency(d) => format!("+{} ms latency", d.as_millis()),
                    NetFault::Stall => "stall (bytes held)".to_string(),
                    NetFault::Drop => "drop (connections reset)".to_string(),
                };
                format!("{what} on {} for {:.2} s", self.target, length.as_secs_f64())
            }
        };
        match &self.error {
            Some(error) => format!("{text} — FAILED: {error}"),
            None => text,
        }
    }

    /// `kill`, `pause`, `latency`, `stall` or `drop`.
    pub fn label(&self) -> &'static str {
        match self.fault {
            Fault::Kill { .. } => "kill",
            Fault::Pause { .. } => "pause",
            Fault::Net { kind: NetFault::Latency(_), .. } => "latency",
            Fault::Net { kind: NetFault::Stall, .. } => "stall",
            Fault::Net { kind: NetFault::Drop, .. } => "drop",
        }
    }
}

/// Plays the process track against `topology` (t = 0 at `t0`); returns
/// the topology and what was injected.
pub async fn run_process_track(
    plan: Vec<Planned>,
    mut topology: Topology,
    t0: Instant,
) -> (Topology, Vec<Injected>) {
    let mut injected = Vec::new();
    for Planned { at, fault } in plan {
        tokio::time::sleep_until(t0 + at).await;
        let started = t0.elapsed();
        let (target, error) = match fault {
            Fault::Kill { target, down } => {
                let proc = &mut topology.procs[target];
                proc.kill().await;
                tokio::time::sleep(down).await;
                (target, proc.start().await.err())
            }
            Fault::Pause { target, length } => {
                let proc = &mut topology.procs[target];
                let error = match proc.pause() {
                    Ok(()) => {
                        tokio::time::sleep(length).await;
                        proc.resume().err()
                    }
                    Err(err) => Some(err),
                };
                (target, error)
            }
            Fault::Net { .. } => continue,
        };
        let proc = &topology.procs[target];
        injected.push(Injected {
            at: started,
            ended: t0.elapsed(),
            fault,
            target: proc.name.clone(),
            error: error.map(|e| e.to_string()),
        });
    }
    (topology, injected)
}

/// Plays the network track on `links`.
pub async fn run_network_track(plan: Vec<Planned>, links: Vec<Arc<Link>>, t0: Instant) -> Vec<Injected> {
    let mut injected = Vec::new();
    for Planned { at, fault } in plan {
        let Fault::Net { link, kind, length } = fault else { continue };
        let Some(link) = links.get(link) else { continue };
        tokio::time::sleep_until(t0 + at).await;
        let started = t0.elapsed();
        match kind {
            NetFault::Latency(latency) => link.set_latency(latency),
            NetFault::Stall => link.set_stalled(true),
            NetFault::Drop => link.set_dropping(true),
        }
        tokio::time::sleep(length).await;
        match kind {
            NetFault::Latency(_) => link.set_latency(Duration::ZERO),
            NetFault::Stall => link.set_stalled(false),
            NetFault::Drop => link.set_dropping(false),
        }
        injected.push(Injected {
            at: started,
            ended: t0.elapsed(),
            fault,
            target: link.name.clone(),
            error: None,
        });
    }
    injected
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape() -> Shape {
        use Kind::*;
        Shape {
            procs: vec![
                MariaDb,
                Etcd,
                Coordinator,
                Coordinator,
                OrderSrv,
                OrderSrv,
                StockSrv,
                StockSrv,
                OrderApi,
            ],
            links: 7,
            long_pause: false,
        }
    }

    #[test]
    fn a_seed_names_a_plan() {
        let window = Duration::from_secs(48);
        assert_eq!(plan(7, window, &shape()), plan(7, window, &shape()));
        assert_ne!(plan(7, window, &shape()), plan(8, window, &shape()));
    }

    #[test]
    fn every_kind_is_killed_and_every_network_fault_tried_even_in_a_short_run() {
        let shape = shape();
        for seed in 0..50 {
            let plan = plan(seed, Duration::from_secs(10), &shape);
            for kind in Kind::ALL {
                assert!(
                    plan.process.iter().any(
                        |p| matches!(p.fault, Fault::Kill { target, .. } if shape.procs[target] == kind)
                    ),
                    "seed {seed}: no kill of {kind:?}"
                );
            }
            let pauses = plan.process.iter().filter(|p| matches!(p.fault, Fault::Pause { .. })).count();
            assert!(pauses >= 2, "seed {seed}");
            for want in ["latency", "stall", "drop"] {
                assert!(
                    plan.network.iter().any(|p| match p.fault {
                        Fault::Net { kind: NetFault::Latency(_), .. } => want == "latency",
                        Fault::Net { kind: NetFault::Stall, .. } => want == "stall",
                        Fault::Net { kind: NetFault::Drop, .. } => want == "drop",
                        _ => false,
                    }),
                    "seed {seed}: no {want}"
                );
            }
            assert!(plan.process.windows(2).all(|w| w[0].at < w[1].at));
        }
    }

    #[test]
    fn the_fencing_shape_adds_a_coordinator_pause_far_longer_than_the_lease() {
        let long = Shape { long_pause: true, ..shape() };
        for seed in 0..20 {
            let plan = plan(seed, Duration::from_secs(24), &long);
            assert!(
                plan.process.iter().any(|p| matches!(p.fault,
                    Fault::Pause { target, length } if long.procs[target] == Kind::Coordinator && length >= LEASE + Duration::from_secs(4))),
                "seed {seed}: {plan:?}"
            );
        }
    }

    #[test]
    fn pauses_outlast_the_request_timeout_and_longer_windows_get_extras() {
        let short = plan(3, Duration::from_secs(10), &shape());
        let long = plan(3, Duration::from_secs(120), &shape());
        assert!(long.process.len() > short.process.len());
        assert!(long.network.len() > short.network.len());
        for p in &long.process {
            if let Fault::Pause { length, .. } = p.fault {
                assert!(length > REQUEST_TIMEOUT);
                assert!(length > LEASE + Duration::from_secs(1));
            }
        }
    }
}
