//! In-place changes of existing values: counters, APPEND, HSETNX, and a key's time to live.

use std::collections::BTreeMap;

use super::Machine;
use crate::command::ExpireCondition;
use crate::history::EventKind;
use crate::{Bytes, Expiry, Limits, Millis, Outcome, Record, Revision, Value};

/// Parses a counter the way Redis does: optional '-', digits, no '+', no leading zeros, no
/// spaces, within 64 bits.
pub(crate) fn parse_counter(value: &[u8]) -> Option<i64> {
    let digits = value.strip_prefix(b"-").unwrap_or(value);
    let canonical = match digits {
        [] => false,
        [b'0'] => value.len() == 1,
        [first, ..] => *first != b'0' && digits.iter().all(u8::is_ascii_digit),
    };
    if !canonical {
        return None;
    }
    std::str::from_utf8(value).ok()?.parse().ok()
}

fn counter_bytes(n: i64) -> Bytes {
    Bytes::from(n.to_string().into_bytes())
}

impl Machine {
    pub(super) fn incr_by(
        &mut self,
        index: Revision,
        now: Millis,
        key: &Bytes,
        delta: i64,
    ) -> Outcome {
        let current = match self.live(key, now).map(|r| &r.value) {
            None => 0,
            Some(Value::String(v)) => match parse_counter(v) {
                Some(n) => n,
                None => return Outcome::NotAnInteger,
            },
            Some(_) => return Outcome::WrongType,
        };
        let Some(next) = current.checked_add(delta) else {
            return Outcome::Overflow;
        };
        self.replace_string(index, now, key, counter_bytes(next));
        Outcome::Integer(next)
    }

    pub(super) fn append(
        &mut self,
        index: Revision,
        now: Millis,
        key: &Bytes,
        value: &Bytes,
    ) -> Outcome {
        let mut joined = match self.live(key, now).map(|r| &r.value) {
            None => Vec::new(),
            Some(Value::String(v)) => v.to_vec(),
            Some(_) => return Outcome::WrongType,
        };
        if joined.len() + value.len() > Limits::DEFAULT.max_value_bytes {
            return Outcome::TooLarge;
        }
        joined.extend_from_slice(value);
        let len = joined.len() as i64;
        self.replace_string(index, now, key, Bytes::from(joined));
        Outcome::Integer(len)
    }

    /// Stores a new string value under `key`, keeping its TTL and lease if it exists.
    fn replace_string(&mut self, index: Revision, now: Millis, key: &Bytes, value: Bytes) {
        match self.live_mut(key, now) {
            Some(record) => {
                record.value = Value::String(value.clone());
                record.modified = index;
                self.emit(EventKind::Put, key, None, &value);
            }
            None => self.put(key.clone(), Record::new(Value::String(value), index)),
        }
    }

    pub(super) fn hash_incr_by(
        &mut self,
        index: Revision,
        now: Millis,
        key: &Bytes,
        field: &Bytes,
        delta: i64,
    ) -> Outcome {
        let current = match self.live(key, now).map(|r| &r.value) {
            None => None,
            Some(Value::Hash(map)) => map.get(field),
            Some(_) => return Outcome::WrongType,
        };
        let current = match current {
            None => 0,
            Some(v) => match parse_counter(v) {
                Some(n) => n,
                None => return Outcome::NotAnInteger,
            },
        };
        let Some(next) = current.checked_add(delta) else {
            return Outcome::Overflow;
        };
        let value = counter_bytes(next);
        let record = self.live_or_insert(key, now, || {
            Record::new(Value::Hash(BTreeMap::new()), index)
        });
        if let Value::Hash(map) = &mut record.value {
            map.insert(field.clone(), value.clone());
        }
        record.modified = index;
        self.emit(EventKind::Put, key, Some(field), &value);
        Outcome::Integer(next)
    }

    pub(super) fn hash_set_if_absent(
        &mut self,
        index: Revision,
        now: Millis,
        key: &Bytes,
        field: &Bytes,
        value: &Bytes,
    ) -> Outcome {
        match self.live(key, now).map(|r| &r.value) {
            Some(Value::Hash(map)) if map.contains_key(field) => Outcome::Count(0),
            Some(Value::Hash(_)) | None => {
                self.hash_set(index, now, key, &[(field.clone(), value.clone())], None)
            }
            Some(_) => Outcome::WrongType,
        }
    }

    pub(super) fn expire(
        &mut self,
        index: Revision,
        now: Millis,
        key: &Bytes,
        expiry: Expiry,
        condition: ExpireCondition,
    ) -> Outcome {
        let Some(record) = self.live_mut(key, now) else {
            return Outcome::Count(0);
        };
        let current = record.expires_at;
        let wanted = match expiry {
            Expiry::Never => None,
            Expiry::Keep => current,
            Expiry::AfterMillis(ms) => Some(now.saturating_add(ms)),
            Expiry::AtMillis(at) => Some(at),
        };
        // No TTL counts as an infinite one.
        let infinite = |d: Option<Millis>| d.unwrap_or(Millis::MAX);
        let allowed = match condition {
            ExpireCondition::Always => true,
            ExpireCondition::NoTtl => current.is_none(),
            ExpireCondition::HasTtl => current.is_some(),
            ExpireCondition::Later => infinite(wanted) > infinite(current),
            ExpireCondition::Earlier => infinite(wanted) < infinite(current),
        };
        if !allowed || wanted == current {
            // PERSIST of a key without a TTL, or nothing to change.
            return Outcome::Count(u64::from(allowed && wanted.is_some()));
        }
        if wanted.is_some_and(|deadline| deadline <= now) {
            self.remove(key);
            return Outcome::Count(1);
        }
        record.expires_at = wanted;
        record.modified = index;
        if let Some(old) = current {
            self.deadlines.remove(&(old, key.clone()));
        }
        if let Some(new) = wanted {
            self.deadlines.insert((new, key.clone()));
        }
        Outcome::Count(1)
    }
}

#[cfg(test)]
mod tests {
    use super::parse_counter;

    #[test]
    fn counters_parse_like_redis() {
        assert_eq!(parse_counter(b"0"), Some(0));
        assert_eq!(parse_counter(b"-12"), Some(-12));
        assert_eq!(parse_counter(b"9223372036854775807"), Some(i64::MAX));
        for bad in [
            &b""[..],
            b"-",
            b"+1",
            b"01",
            b"-0",
            b" 1",
            b"1 ",
            b"1.0",
            b"9223372036854775808",
            b"abc",
        ] {
            assert_eq!(
                parse_counter(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
