//! Nemeses: the faults a run injects, drawn from a seeded schedule so that a failing run can be
//! replayed with its seed. Each round picks a fault, holds it for a while, heals everything and
//! waits for the cluster to agree on a leader again.

use std::time::Duration;

use serde::Serialize;

use crate::harness::{self, Harness, NodeId};
use crate::history::History;
use crate::rng::Rng;

/// Every kind of fault, by the name `--nemesis` takes.
pub const KINDS: &[&str] = &[
    "kill",
    "kill-leader",
    "kill-majority",
    "kill-all",
    "pause",
    "pause-leader",
    "pause-majority",
    "partition-leader",
    "partition-halves",
    "partition-bridge",
    "partition-one-way",
    "clock-step",
    "clock-skew",
    "wipe",
    "membership",
    "rolling-restart",
];

/// Whether a kind of fault applies to Redis with Sentinel as well (it has no membership
/// changes, wipes or replicated clock to fault).
pub fn applies_to_redis(kind: &str) -> bool {
    !matches!(kind, "clock-step" | "clock-skew" | "wipe" | "membership")
}

/// Parses `--nemesis`: a comma-separated list of kinds, or `all`, or `none`.
pub fn parse_kinds(list: &str) -> anyhow::Result<Vec<&'static str>> {
    if list == "all" {
        return Ok(KINDS.to_vec());
    }
    if list == "none" || list.is_empty() {
        return Ok(Vec::new());
    }
    list.split(',')
        .map(|name| {
            KINDS
                .iter()
                .find(|k| **k == name.trim())
                .copied()
                .ok_or_else(|| {
                    anyhow::anyhow!("unknown nemesis {name:?}; known: {}", KINDS.join(", "))
                })
        })
        .collect()
}

/// One fault as it was injected.
#[derive(Clone, Debug, Serialize)]
pub struct FaultRecord {
    pub kind: &'static str,
    pub description: String,
    /// Microseconds since the run began.
    pub start_us: u64,
    pub healed_us: u64,
    /// When the cluster agreed on a leader again after healing.
    pub recovered_us: Option<u64>,
    /// The nodes started again during the fault or its healing: each is a new process.
    pub restarted: Vec<NodeId>,
}

/// Runs rounds of faults until `until` (microseconds since the run began).
pub async fn run(
    harness: &mut dyn Harness,
    kinds: &[&'static str],
    rng: &mut Rng,
    history: &History,
    until_us: u64,
    upgrade: bool,
    log: &mut dyn FnMut(&str),
) -> anyhow::Result<Vec<FaultRecord>> {
    let mut faults = Vec::new();
    // Let the workloads run unfaulted first: a baseline, and a leader for every client.
    tokio::time::sleep(Duration::from_secs(2)).await;
    if upgrade {
        let fault = rolling_upgrade(harness, history).await?;
        log(&format!(
            "fault {:>3} {:<18} {} (took {:.1} s)",
            faults.len() + 1,
            fault.kind,
            fault.description,
            (fault.healed_us - fault.start_us) as f64 / 1e6
        ));
        faults.push(fault);
    }
    while history.now_us() + 3_000_000 < until_us && !kinds.is_empty() {
        let kind = kinds[rng.below(kinds.len() as u64) as usize];
        let hold = Duration::from_millis(1000 + rng.below(3000));
        let starts_before: Vec<u64> = harness.ids().iter().map(|id| harness.starts(*id)).collect();
        let (description, start_us) = inject(harness, kind, hold, rng, history).await?;
        let healed_us = history.now_us();
        heal(harness).await?;
        let restarted: Vec<NodeId> = harness
            .ids()
            .into_iter()
            .zip(starts_before)
            .filter(|(id, before)| harness.starts(*id) > *before)
            .map(|(id, _)| id)
            .collect();
        let recovered = harness::wait_healthy(harness, Duration::from_secs(30)).await;
        let recovered_us = recovered.is_ok().then(|| history.now_us());
        log(&format!(
            "fault {:>3} {kind:<18} {description} (held {:.1} s){}",
            faults.len() + 1,
            (healed_us - start_us) as f64 / 1e6,
            match &recovered {
                Ok(_) => String::new(),
                Err(e) => format!(": NO LEADER AGREED within 30 s of healing: {e}"),
            }
        ));
        faults.push(FaultRecord {
            kind,
            description,
            start_us,
            healed_us,
            recovered_us,
            restarted,
        });
        // Time to settle before the next fault.
        tokio::time::sleep(Duration::from_millis(500 + rng.below(1000))).await;
    }
    Ok(faults)
}

/// How long the cluster runs with both builds after each node's upgrade, under the workloads.
const MIXED_BUILDS_HOLD: Duration = Duration::from_secs(2);

/// Moves every node to the build under test in turn, followers first and the leader last, as an
/// operator upgrades a cluster: SIGTERM, start on the new build, wait until the nodes agree on
/// a leader again, and run with both builds for a while before the next node.
async fn rolling_upgrade(
    harness: &mut dyn Harness,
    history: &History,
) -> anyhow::Result<FaultRecord> {
    let ids = harness.ids();
    let leader = harness::wait_healthy(harness, Duration::from_secs(30)).await?;
    let mut order: Vec<NodeId> = ids.iter().copied().filter(|id| *id != leader).collect();
    order.push(leader);
    let start_us = history.now_us();
    for id in &order {
        harness.upgrade(*id)?;
        harness::wait_healthy(harness, Duration::from_secs(30))
            .await
            .map_err(|e| anyhow::anyhow!("after upgrading node {id}: {e}"))?;
        tokio::time::sleep(MIXED_BUILDS_HOLD).await;
    }
    let healed_us = history.now_us();
    Ok(FaultRecord {
        kind: "upgrade",
        description: format!("SIGTERM and restart on the build under test, in turn: {order:?}"),
        start_us,
        healed_us,
        recovered_us: Some(healed_us),
        restarted: order,
    })
}

/// Restarts, resumes, reconnects and unskews every node.
pub async fn heal(harness: &mut dyn Harness) -> anyhow::Result<()> {
    harness.heal()?;
    for id in harness.ids() {
        harness.resume(id);
        harness.set_clock_offset(id, 0)?;
        harness.start(id)?;
    }
    Ok(())
}

/// Picks `count` distinct nodes.
fn pick(ids: &[NodeId], count: usize, rng: &mut Rng) -> Vec<NodeId> {
    let mut ids = ids.to_vec();
    rng.shuffle(&mut ids);
    ids.truncate(count);
    ids.sort();
    ids
}

/// Both directions of every link between `a` and `b`.
fn between(a: &[NodeId], b: &[NodeId]) -> Vec<(NodeId, NodeId)> {
    let mut links = Vec::new();
    for x in a {
        for y in b {
            links.push((*x, *y));
            links.push((*y, *x));
        }
    }
    links
}

async fn current_leader(harness: &dyn Harness, ids: &[NodeId], rng: &mut Rng) -> NodeId {
    match harness::leader(harness).await {
        Some(leader) => leader,
        None => ids[rng.below(ids.len() as u64) as usize],
    }
}

/// Notes when the fault took effect (the first call), then holds it.
async fn hold_fault(history: &History, applied: &mut Option<u64>, hold: Duration) {
    applied.get_or_insert(history.now_us());
    tokio::time::sleep(hold).await;
}

/// Injects one fault of `kind`, holds it for `hold`, and describes it, with the time it took
/// effect (microseconds since the run began); healing is the caller's.
async fn inject(
    harness: &mut dyn Harness,
    kind: &str,
    hold: Duration,
    rng: &mut Rng,
    history: &History,
) -> anyhow::Result<(String, u64)> {
    let mut applied = None;
    let description = inject_fault(harness, kind, hold, rng, history, &mut applied).await?;
    Ok((description, applied.unwrap_or_else(|| history.now_us())))
}

async fn inject_fault(
    harness: &mut dyn Harness,
    kind: &str,
    hold: Duration,
    rng: &mut Rng,
    history: &History,
    applied: &mut Option<u64>,
) -> anyhow::Result<String> {
    let ids = harness.ids();
    let majority = ids.len() / 2 + 1;
    let leader = current_leader(harness, &ids, rng).await;
    let others: Vec<NodeId> = ids.iter().copied().filter(|id| *id != leader).collect();
    let description = match kind {
        "kill" | "kill-leader" | "kill-majority" | "kill-all" => {
            let victims = match kind {
                "kill" => pick(&ids, 1, rng),
                "kill-leader" => vec![leader],
                "kill-majority" => pick(&ids, majority, rng),
                _ => ids.clone(),
            };
            for id in &victims {
                harness.kill(*id);
            }
            hold_fault(history, applied, hold).await;
            format!("kill -9 {victims:?}, restarted")
        }
        "pause" | "pause-leader" | "pause-majority" => {
            let victims = match kind {
                "pause" => pick(&ids, 1, rng),
                "pause-leader" => vec![leader],
                _ => pick(&ids, majority, rng),
            };
            for id in &victims {
                harness.pause(*id);
            }
            hold_fault(history, applied, hold).await;
            format!("SIGSTOP {victims:?}, then SIGCONT")
        }
        "partition-leader" => {
            harness.cut(&between(&[leader], &others))?;
            hold_fault(history, applied, hold).await;
            format!("leader {leader} isolated from {others:?}")
        }
        "partition-halves" => {
            let mut shuffled = ids.clone();
            rng.shuffle(&mut shuffled);
            let (minority, rest) = shuffled.split_at(ids.len() - majority);
            harness.cut(&between(minority, rest))?;
            hold_fault(history, applied, hold).await;
            format!("{minority:?} | {rest:?}")
        }
        "partition-bridge" => {
            let mut shuffled = ids.clone();
            rng.shuffle(&mut shuffled);
            let bridge = shuffled[0];
            let half = (shuffled.len() - 1) / 2;
            let (left, right) = shuffled[1..].split_at(half);
            harness.cut(&between(left, right))?;
            hold_fault(history, applied, hold).await;
            format!("{left:?} | {right:?}, node {bridge} reaches both")
        }
        "partition-one-way" => {
            let outgoing = rng.below(2) == 0;
            let links: Vec<_> = others
                .iter()
                .map(|o| if outgoing { (leader, *o) } else { (*o, leader) })
                .collect();
            harness.cut(&links)?;
            hold_fault(history, applied, hold).await;
            if outgoing {
                format!("leader {leader} cannot send to {others:?}")
            } else {
                format!("{others:?} cannot send to leader {leader}")
            }
        }
        "clock-step" => {
            let node = if rng.below(2) == 0 {
                leader
            } else {
                ids[rng.below(ids.len() as u64) as usize]
            };
            let magnitude = 30_000 + rng.below(90_000) as i64;
            let offset = if rng.below(2) == 0 {
                magnitude
            } else {
                -magnitude
            };
            harness.set_clock_offset(node, offset)?;
            hold_fault(history, applied, hold).await;
            format!("node {node}'s clock stepped {offset:+} ms, then back")
        }
        "clock-skew" => {
            let mut offsets = Vec::new();
            for id in &ids {
                let offset = rng.below(10_000) as i64 - 5_000;
                harness.set_clock_offset(*id, offset)?;
                offsets.push((*id, offset));
            }
            hold_fault(history, applied, hold).await;
            format!("clocks skewed {offsets:?} ms")
        }
        "wipe" => {
            if others.is_empty() {
                return Ok("skipped: a single node".into());
            }
            let victim = others[rng.below(others.len() as u64) as usize];
            harness.wipe(victim)?;
            applied.get_or_insert(history.now_us());
            let survivor = leader;
            let client = harness::node_client(&harness.grpc(survivor))
                .await
                .ok_or_else(|| anyhow::anyhow!("no client of node {survivor}"))?;
            let removed = client.remove_member(victim).await;
            harness.start(victim)?;
            let added = client
                .add_member(victim, &harness.peer_address(victim), false)
                .await;
            hold_fault(history, applied, hold).await;
            format!(
                "node {victim} lost its data; removed ({}) and added back ({})",
                outcome(&removed),
                outcome(&added)
            )
        }
        "membership" => {
            if others.is_empty() {
                return Ok("skipped: a single node".into());
            }
            let victim = others[rng.below(others.len() as u64) as usize];
            let client = harness::node_client(&harness.grpc(leader))
                .await
                .ok_or_else(|| anyhow::anyhow!("no client of node {leader}"))?;
            let removed = client.remove_member(victim).await;
            applied.get_or_insert(history.now_us());
            hold_fault(history, applied, hold).await;
            let added = client
                .add_member(victim, &harness.peer_address(victim), false)
                .await;
            format!(
                "node {victim} removed ({}) and added back ({})",
                outcome(&removed),
                outcome(&added)
            )
        }
        "rolling-restart" => {
            let mut order = others.clone();
            order.push(leader);
            for id in &order {
                harness.stop(*id);
                applied.get_or_insert(history.now_us());
                harness.start(*id)?;
                harness::wait_healthy(harness, Duration::from_secs(30)).await?;
            }
            format!("SIGTERM and restart, in turn: {order:?}")
        }
        other => anyhow::bail!("unknown nemesis {other}"),
    };
    Ok(description)
}

fn outcome<T>(result: &Result<T, conclave_client::Error>) -> String {
    match result {
        Ok(_) => "ok".into(),
        Err(e) => format!("failed: {e}"),
    }
}
