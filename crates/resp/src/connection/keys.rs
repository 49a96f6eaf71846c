//! Whole-keyspace reads on a connection: KEYS and SCAN, and the node's SCAN cursors.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use conclave_state::Machine;

use super::{Connection, SCAN_IN_PLACE};
use crate::plan;
use crate::protocol::Reply;

impl Connection {
    pub(super) async fn keys(&mut self, pattern: &[u8]) -> Reply {
        let pattern = pattern.to_vec();
        let found = self
            .read_detached(move |m, now| {
                let prefix = literal_prefix(&pattern);
                m.keys_with_prefix(prefix, now)
                    .filter(|(k, _)| conclave_pubsub::glob_matches(&pattern, k))
                    .map(|(k, _)| Reply::bulk(k.to_vec()))
                    .collect::<Vec<_>>()
            })
            .await;
        match found {
            Ok(keys) => Reply::Array(keys),
            Err(error) => error,
        }
    }

    /// SCAN; see [`SCAN_IN_PLACE`].
    pub(super) async fn scan(&mut self, args: &[Vec<u8>]) -> Reply {
        let cursor = match std::str::from_utf8(&args[0])
            .ok()
            .and_then(|c| c.parse::<u64>().ok())
        {
            Some(c) => c,
            None => return Reply::error("ERR invalid cursor"),
        };
        let mut pattern = None;
        let mut count = 10usize;
        let mut kind = None;
        let mut options = args[1..].iter();
        while let Some(option) = options.next() {
            let Some(value) = options.next() else {
                return Reply::error("ERR syntax error");
            };
            match option.to_ascii_uppercase().as_slice() {
                b"MATCH" => pattern = Some(value.clone()),
                b"COUNT" => match plan::integer(value) {
                    Ok(n) if n >= 1 => count = n as usize,
                    Ok(_) => return Reply::error("ERR syntax error"),
                    Err(error) => return error,
                },
                b"TYPE" => kind = Some(String::from_utf8_lossy(value).to_ascii_lowercase()),
                _ => return Reply::error("ERR syntax error"),
            }
        }
        let after = if cursor == 0 {
            None
        } else {
            match self.shared.cursors.position(cursor) {
                Some(key) => Some(key),
                None => {
                    return Reply::error(
                        "ERR invalid cursor (unknown or expired; start again from 0)",
                    )
                }
            }
        };
        let scan = move |m: &Machine, now: u64| {
            let mut examined = m.keys_after(after.as_deref(), now).take(count + 1);
            let mut found = Vec::new();
            let mut last = None;
            for (key, record) in examined.by_ref().take(count) {
                last = Some(key.to_vec());
                let matches = pattern
                    .as_ref()
                    .is_none_or(|p| conclave_pubsub::glob_matches(p, key))
                    && kind.as_ref().is_none_or(|k| k == record.value.type_name());
                if matches {
                    found.push(Reply::bulk(key.to_vec()));
                }
            }
            let more = examined.next().is_some();
            (found, if more { last } else { None })
        };
        // A small step reads in place; a large one walks a copy off the runtime, as KEYS does.
        let scanned = if count <= SCAN_IN_PLACE {
            self.read(scan).await
        } else {
            self.read_detached(scan).await
        };
        match scanned {
            Ok((found, last)) => {
                let next = last.map_or(0, |key| self.shared.cursors.put(key));
                Reply::Array(vec![Reply::bulk(next.to_string()), Reply::Array(found)])
            }
            Err(error) => error,
        }
    }
}

/// The part of a glob pattern before its first special character.
pub(super) fn literal_prefix(pattern: &[u8]) -> &[u8] {
    let end = pattern
        .iter()
        .position(|b| matches!(b, b'*' | b'?' | b'[' | b'\\'))
        .unwrap_or(pattern.len());
    &pattern[..end]
}

/// SCAN cursors of the node: a cursor names the last key a scan returned, so a scan resumes
/// after it whatever was inserted or deleted meanwhile (every key present for the whole scan
/// is returned). Shared by the node's connections (a client may continue a scan on another
/// pooled connection) and bounded: the oldest cursors are forgotten first.
#[derive(Default)]
pub(crate) struct Cursors {
    inner: Mutex<CursorTable>,
}

#[derive(Default)]
struct CursorTable {
    next: u64,
    positions: HashMap<u64, Vec<u8>>,
    order: VecDeque<u64>,
}

const MAX_CURSORS: usize = 10_000;

impl Cursors {
    pub(super) fn put(&self, last_key: Vec<u8>) -> u64 {
        let mut table = self.inner.lock().expect("poisoned");
        table.next += 1;
        let cursor = table.next;
        table.positions.insert(cursor, last_key);
        table.order.push_back(cursor);
        while table.order.len() > MAX_CURSORS {
            if let Some(old) = table.order.pop_front() {
                table.positions.remove(&old);
            }
        }
        cursor
    }

    pub(super) fn position(&self, cursor: u64) -> Option<Vec<u8>> {
        let table = self.inner.lock().expect("poisoned");
        // Kept (not removed) so a client retrying the same cursor gets the same page.
        table.positions.get(&cursor).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The node keeps its latest MAX_CURSORS cursors: one more forgets the oldest (a scan
    /// resumed with it gets "invalid cursor"), and the rest still resume where they were.
    #[test]
    fn the_oldest_cursor_is_forgotten_past_the_limit() {
        let cursors = Cursors::default();
        let first = cursors.put(b"key:0".to_vec());
        for i in 1..MAX_CURSORS {
            cursors.put(format!("key:{i}").into_bytes());
        }
        assert_eq!(cursors.position(first), Some(b"key:0".to_vec()));
        let newest = cursors.put(b"key:last".to_vec());
        assert_eq!(cursors.position(first), None, "the oldest is forgotten");
        assert_eq!(cursors.position(first + 1), Some(b"key:1".to_vec()));
        assert_eq!(cursors.position(newest), Some(b"key:last".to_vec()));
        // Asked again, a kept cursor gives the same position (a retried SCAN step).
        assert_eq!(cursors.position(newest), Some(b"key:last".to_vec()));
    }
}
