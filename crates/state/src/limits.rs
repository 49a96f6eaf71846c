//! Size limits every request must respect, checked before a write enters the log.

use std::fmt;

use crate::{Command, WriteRequest};

/// The documented limits. One place for them: the API layers call [`Limits::check`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Longest key, in bytes.
    pub max_key_bytes: usize,
    /// Longest value, hash field value or set member, in bytes.
    pub max_value_bytes: usize,
    /// Most keys, fields or members in one command.
    pub max_items: usize,
    /// Most comparisons plus commands in one transaction.
    pub max_txn_ops: usize,
    /// Most bytes of keys, fields and values in one command (a transaction included).
    pub max_command_bytes: usize,
}

impl Limits {
    /// The limits a node enforces: keys up to 64 KiB, values up to 1 MiB, 10,000 items and
    /// 16 MiB per command, 1,000 operations per transaction.
    pub const DEFAULT: Limits = Limits {
        max_key_bytes: 64 * 1024,
        max_value_bytes: 1024 * 1024,
        max_items: 10_000,
        max_txn_ops: 1_000,
        max_command_bytes: 16 * 1024 * 1024,
    };

    /// Checks one key against the key limit (reads use it too).
    pub fn check_key(&self, key: &[u8]) -> Result<(), InvalidRequest> {
        if key.is_empty() {
            return Err(InvalidRequest::EmptyKey);
        }
        if key.len() > self.max_key_bytes {
            return Err(InvalidRequest::KeyTooLong {
                len: key.len(),
                max: self.max_key_bytes,
            });
        }
        Ok(())
    }

    fn check_value(&self, value: &[u8]) -> Result<(), InvalidRequest> {
        if value.len() > self.max_value_bytes {
            return Err(InvalidRequest::ValueTooLong {
                len: value.len(),
                max: self.max_value_bytes,
            });
        }
        Ok(())
    }

    fn check_items(&self, count: usize) -> Result<(), InvalidRequest> {
        if count == 0 {
            return Err(InvalidRequest::NoItems);
        }
        if count > self.max_items {
            return Err(InvalidRequest::TooManyItems {
                count,
                max: self.max_items,
            });
        }
        Ok(())
    }

    /// Checks a whole write.
    pub fn check(&self, request: &WriteRequest) -> Result<(), InvalidRequest> {
        self.check_command(&request.command)?;
        let bytes = request.command.payload_bytes();
        if bytes > self.max_command_bytes {
            return Err(InvalidRequest::TooLarge {
                bytes,
                max: self.max_command_bytes,
            });
        }
        Ok(())
    }

    fn check_command(&self, command: &Command) -> Result<(), InvalidRequest> {
        match command {
            Command::Set { key, value, .. } => {
                self.check_key(key)?;
                self.check_value(value)
            }
            Command::Delete { keys } | Command::Reap { keys } => {
                self.check_items(keys.len())?;
                keys.iter().try_for_each(|k| self.check_key(k))
            }
            Command::HashSet { key, fields, .. } => {
                self.check_key(key)?;
                self.check_items(fields.len())?;
                fields.iter().try_for_each(|(f, v)| {
                    self.check_value(f)?;
                    self.check_value(v)
                })
            }
            Command::HashDelete { key, fields: items }
            | Command::SetAdd {
                key,
                members: items,
            }
            | Command::SetRemove {
                key,
                members: items,
            } => {
                self.check_key(key)?;
                self.check_items(items.len())?;
                items.iter().try_for_each(|i| self.check_value(i))
            }
            Command::Txn(txn) => {
                let ops = txn.compares.len() + txn.success.len() + txn.failure.len();
                if ops > self.max_txn_ops {
                    return Err(InvalidRequest::TooManyItems {
                        count: ops,
                        max: self.max_txn_ops,
                    });
                }
                for compare in &txn.compares {
                    self.check_key(&compare.key)?;
                    if let Some(field) = &compare.field {
                        self.check_value(field)?;
                    }
                }
                for command in txn.success.iter().chain(&txn.failure) {
                    if !command.allowed_in_transaction() {
                        return Err(InvalidRequest::NotInTransaction(command.name()));
                    }
                    self.check_command(command)?;
                }
                Ok(())
            }
            Command::HashSetIfAbsent { key, field, value } => {
                self.check_key(key)?;
                self.check_value(field)?;
                self.check_value(value)
            }
            Command::IncrBy { key, .. } | Command::Expire { key, .. } => self.check_key(key),
            Command::HashIncrBy { key, field, .. } => {
                self.check_key(key)?;
                self.check_value(field)
            }
            Command::Append { key, value } => {
                self.check_key(key)?;
                self.check_value(value)
            }
            Command::Query(query) => query.keys().into_iter().try_for_each(|k| self.check_key(k)),
            Command::LeaseExpire { leases } => self.check_items(leases.len()),
            Command::RegisterNode { .. }
            | Command::ForgetNode { .. }
            | Command::LeaseGrant { .. }
            | Command::LeaseKeepAlive { .. }
            | Command::LeaseRevoke { .. }
            | Command::LeaseRenewAll
            | Command::Tick => Ok(()),
            Command::Batch(requests) => requests
                .iter()
                .try_for_each(|r| self.check_command(&r.command)),
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits::DEFAULT
    }
}

/// Why a request was refused before it reached the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InvalidRequest {
    EmptyKey,
    KeyTooLong { len: usize, max: usize },
    ValueTooLong { len: usize, max: usize },
    NoItems,
    TooManyItems { count: usize, max: usize },
    TooLarge { bytes: usize, max: usize },
    NotInTransaction(&'static str),
}

impl fmt::Display for InvalidRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InvalidRequest::EmptyKey => write!(f, "key must not be empty"),
            InvalidRequest::KeyTooLong { len, max } => {
                write!(f, "key is {len} bytes; the limit is {max}")
            }
            InvalidRequest::ValueTooLong { len, max } => {
                write!(f, "value is {len} bytes; the limit is {max}")
            }
            InvalidRequest::NoItems => write!(f, "the command names no keys, fields or members"),
            InvalidRequest::TooManyItems { count, max } => {
                write!(f, "the command names {count} items; the limit is {max}")
            }
            InvalidRequest::TooLarge { bytes, max } => {
                write!(f, "the command carries {bytes} bytes; the limit is {max}")
            }
            InvalidRequest::NotInTransaction(name) => {
                write!(f, "a transaction cannot contain {name}")
            }
        }
    }
}

impl std::error::Error for InvalidRequest {}
