//! Entry points for the fuzz targets in `fuzz/` and for their regression tests
//! (`tests/fuzz_regressions.rs`, which replays the inputs kept in `fuzz/regressions/`).
//!
//! [`replicas_agree`] reads arbitrary bytes as a sequence of writes, applies it to two
//! replicas, one of which goes through the snapshot encoding now and then, and checks that
//! neither panics and both stay equal, reply by reply. [`snapshot_file`] feeds arbitrary bytes
//! to the snapshot file's decoder and the machine's.

use std::collections::BTreeSet;

use conclave_state::{
    Bytes, Check, CmpOp, Command, Compare, ExpireCondition, Expiry, Machine, Query, RequestId,
    SetCondition, Transaction, WriteRequest,
};

use crate::{decode, encode};

/// Applies the writes `data` describes to two replicas and checks they agree; panics if not.
pub fn replicas_agree(data: &[u8]) {
    let mut input = Input(data);
    let snapshot_every = 1 + input.below(64);
    let mut plain = Machine::new();
    let mut restored = Machine::new();
    let mut stamp = 1_000u64;
    let mut index = 0u64;
    while !input.is_empty() {
        index += 1;
        stamp += input.below(3_000);
        match input.below(40) {
            0 => {
                plain.apply_blank(index);
                restored.apply_blank(index);
            }
            1 => {
                let members: BTreeSet<u64> = (1..=input.below(4)).collect();
                plain.apply_membership(index, &members);
                restored.apply_membership(index, &members);
            }
            _ => {
                let request = write_request(&mut input, &plain, stamp);
                let a = plain.apply(index, &request);
                let b = restored.apply(index, &request);
                assert_eq!(a, b, "the replicas answered {request:?} differently");
            }
        }
        if index.is_multiple_of(snapshot_every) {
            restored = decode(&encode(&restored)).expect("a machine's encoding decodes");
        }
        assert_eq!(plain, restored, "the replicas differ after entry {index}");
    }
}

/// Feeds `data` to the snapshot file decoder (as it is, and wrapped in a file with a valid
/// checksum), and what it holds to the machine's decoder; a machine that decodes must take a
/// write afterwards too (a loaded snapshot is applied to next).
pub fn snapshot_file(data: &[u8]) {
    let mut wrapped = Vec::new();
    let stored = crate::snapshot_file::Stored {
        meta: Vec::new(),
        data: data.to_vec(),
    };
    crate::snapshot_file::write(&mut wrapped, &stored).expect("writing to memory");
    for file in [data.to_vec(), wrapped] {
        if let Ok(stored) = crate::snapshot_file::decode(file) {
            machine_decodes_and_applies(&stored.data);
        }
    }
    machine_decodes_and_applies(data);
}

fn machine_decodes_and_applies(data: &[u8]) {
    let Ok(mut machine) = decode::<Machine>(data) else {
        return;
    };
    let again: Machine = decode(&encode(&machine)).expect("a machine's encoding decodes");
    assert_eq!(machine, again, "a decoded machine survives a round trip");
    let next = machine.revision().saturating_add(1);
    let mut input = Input(data);
    let request = write_request(&mut input, &machine, machine.clock().saturating_add(1));
    machine.apply(next, &request);
}

/// Arbitrary bytes read as choices; once they run out every choice is 0.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((first, rest)) => {
                self.0 = rest;
                *first
            }
            None => 0,
        }
    }

    fn u64(&mut self) -> u64 {
        (0..8).fold(0, |n, _| n << 8 | u64::from(self.byte()))
    }

    /// A number below `n` (a few bytes' worth of choice).
    fn below(&mut self, n: u64) -> u64 {
        let raw = u64::from(self.byte()) << 8 | u64::from(self.byte());
        raw % n.max(1)
    }

    fn flag(&mut self) -> bool {
        self.byte() & 1 == 1
    }

    /// One of few keys (or fields, members), so that commands meet on them.
    fn name(&mut self) -> Bytes {
        Bytes::from(vec![b'a' + self.below(6) as u8])
    }

    fn names(&mut self) -> Vec<Bytes> {
        (0..self.below(4)).map(|_| self.name()).collect()
    }

    /// A value: small, numeric now and then (for counters), large now and then.
    fn value(&mut self) -> Bytes {
        match self.below(8) {
            0 => Bytes::from(format!("{}", self.u64() as i64 % 1_000).into_bytes()),
            1 => Bytes::from(vec![b'v'; 70_000]),
            _ => {
                let len = self.below(8) as usize;
                Bytes::from((0..len).map(|_| self.byte()).collect::<Vec<u8>>())
            }
        }
    }

    fn delta(&mut self) -> i64 {
        match self.below(6) {
            0 => i64::MAX,
            1 => i64::MIN,
            _ => self.below(200) as i64 - 100,
        }
    }

    fn expiry(&mut self, stamp: u64) -> Expiry {
        match self.below(5) {
            0 => Expiry::Never,
            1 => Expiry::Keep,
            2 => Expiry::AfterMillis(self.below(10_000)),
            3 => Expiry::AtMillis(stamp.saturating_add(self.below(10_000))),
            _ => Expiry::AtMillis(self.u64()),
        }
    }

    fn lease(&mut self, machine: &Machine) -> Option<u64> {
        match self.below(3) {
            0 => None,
            // Leases are named by revisions, so a small one may well exist.
            1 => Some(self.below(machine.revision().saturating_add(2))),
            _ => Some(self.u64()),
        }
    }

    fn op(&mut self) -> CmpOp {
        [CmpOp::Equal, CmpOp::NotEqual, CmpOp::Less, CmpOp::Greater][self.below(4) as usize]
    }
}

fn write_request(input: &mut Input, machine: &Machine, stamp: u64) -> WriteRequest {
    let id = input.flag().then(|| RequestId {
        client_id: input.below(3),
        sequence: input.below(20),
    });
    // Now and then a stamp from the past: the machine must not let time go backwards.
    let stamp = if input.below(10) == 0 {
        stamp.saturating_sub(input.below(50_000))
    } else {
        stamp
    };
    let command = if input.below(12) == 0 {
        let writes = (0..1 + input.below(4))
            .map(|_| WriteRequest {
                id: input.flag().then(|| RequestId {
                    client_id: input.below(3),
                    sequence: input.below(20),
                }),
                stamp: input.u64(),
                command: command(input, machine, stamp, 0),
            })
            .collect();
        Command::Batch(writes)
    } else {
        command(input, machine, stamp, 0)
    };
    WriteRequest { id, stamp, command }
}

fn command(input: &mut Input, machine: &Machine, stamp: u64, depth: u32) -> Command {
    match input.below(26) {
        0 => Command::Set {
            key: input.name(),
            value: input.value(),
            condition: [
                SetCondition::Always,
                SetCondition::IfAbsent,
                SetCondition::IfPresent,
            ][input.below(3) as usize],
            expiry: input.expiry(stamp),
            return_previous: input.flag(),
            lease: input.lease(machine),
        },
        1 => Command::Delete {
            keys: input.names(),
        },
        2 => Command::HashSet {
            key: input.name(),
            fields: (0..input.below(4))
                .map(|_| (input.name(), input.value()))
                .collect(),
            lease: input.lease(machine),
        },
        3 => Command::HashDelete {
            key: input.name(),
            fields: input.names(),
        },
        4 => Command::SetAdd {
            key: input.name(),
            members: input.names(),
        },
        5 => Command::SetRemove {
            key: input.name(),
            members: input.names(),
        },
        6 => Command::HashSetIfAbsent {
            key: input.name(),
            field: input.name(),
            value: input.value(),
        },
        7 => Command::IncrBy {
            key: input.name(),
            delta: input.delta(),
        },
        8 => Command::HashIncrBy {
            key: input.name(),
            field: input.name(),
            delta: input.delta(),
        },
        9 => Command::Append {
            key: input.name(),
            value: input.value(),
        },
        10 => Command::Expire {
            key: input.name(),
            expiry: input.expiry(stamp),
            condition: [
                ExpireCondition::Always,
                ExpireCondition::NoTtl,
                ExpireCondition::HasTtl,
                ExpireCondition::Later,
                ExpireCondition::Earlier,
            ][input.below(5) as usize],
        },
        11 => Command::Query(query(input)),
        12 => Command::Reap {
            keys: machine.expired_keys(stamp, 1 + input.below(4) as usize),
        },
        13 => Command::RegisterNode {
            node: input.below(4),
            incarnation: input.below(3),
        },
        14 => Command::ForgetNode {
            node: input.below(4),
        },
        15 if depth < 3 => Command::Txn(Box::new(Transaction {
            compares: (0..input.below(3))
                .map(|_| compare(input, machine))
                .collect(),
            success: (0..input.below(4))
                .map(|_| command(input, machine, stamp, depth + 1))
                .collect(),
            failure: (0..input.below(3))
                .map(|_| command(input, machine, stamp, depth + 1))
                .collect(),
        })),
        16 => Command::LeaseGrant {
            ttl_ms: match input.below(3) {
                0 => 0,
                1 => u64::MAX,
                _ => input.below(20_000),
            },
        },
        17 => Command::LeaseKeepAlive {
            lease: input.lease(machine).unwrap_or(0),
        },
        18 => Command::LeaseRevoke {
            lease: input.lease(machine).unwrap_or(0),
        },
        19 => Command::LeaseExpire {
            leases: machine.expired_leases(stamp, 1 + input.below(4) as usize),
        },
        20 => Command::LeaseRenewAll,
        _ => Command::Tick,
    }
}

fn query(input: &mut Input) -> Query {
    let key = input.name();
    match input.below(17) {
        0 => Query::Get { key },
        1 => Query::MultiGet {
            keys: input.names(),
        },
        2 => Query::StrLen { key },
        3 => Query::Exists {
            keys: input.names(),
        },
        4 => Query::TimeToLive { key },
        5 => Query::Type { key },
        6 => Query::HashGet {
            key,
            fields: input.names(),
        },
        7 => Query::HashGetAll { key },
        8 => Query::HashKeys { key },
        9 => Query::HashValues { key },
        10 => Query::HashLen { key },
        11 => Query::HashExists {
            key,
            field: input.name(),
        },
        12 => Query::SetMembers { key },
        13 => Query::SetIsMember {
            key,
            member: input.name(),
        },
        _ => Query::SetCard { key },
    }
}

fn compare(input: &mut Input, machine: &Machine) -> Compare {
    let revision = input.below(machine.revision().saturating_add(2));
    Compare {
        key: input.name(),
        field: input.flag().then(|| input.name()),
        check: match input.below(5) {
            0 => Check::Exists(input.flag()),
            1 => Check::Value(input.op(), input.value()),
            2 => Check::Modified(input.op(), revision),
            3 => Check::Created(input.op(), revision),
            _ => Check::UnchangedSince(revision),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inputs_of_every_shape_run() {
        // A deterministic spread of inputs, so the generator itself is exercised by cargo test.
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for length in [0usize, 1, 7, 64, 512, 4096] {
            let data: Vec<u8> = (0..length)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    seed as u8
                })
                .collect();
            replicas_agree(&data);
            snapshot_file(&data);
        }
    }
}
