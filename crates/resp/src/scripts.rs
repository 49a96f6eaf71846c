//! Scripts: a small, verified set of recognised Lua scripts, run as store transactions.
//!
//! There is no Lua engine. A script is recognised by its tokens (whitespace, quote style, the
//! case of command names, `;` and `else return 0 end` versus `end return 0` do not matter), and
//! each recognised script maps onto one [`Command::Txn`] that the state machine applies
//! atomically, so the check and the action cannot be separated by another writer:
//!
//! - compare-and-delete, the lock release of LiveKit and most Redis lock libraries:
//!   `if redis.call("get", KEYS[1]) == ARGV[1] then return redis.call("del", KEYS[1]) else return 0 end`
//! - compare-and-expire, the lock extension: the same with
//!   `redis.call("pexpire" | "expire", KEYS[1], ARGV[2])`.
//!
//! Any other script is refused with an error naming what is supported, at `SCRIPT LOAD` and
//! at `EVAL`. Known difference: where Redis's script would fail on a key holding a hash
//! (`GET` raising WRONGTYPE), the comparison here is simply false and the script returns 0.

use std::collections::HashMap;
use std::sync::Mutex;

use conclave_state::{Bytes, Check, CmpOp, Command, Compare, ExpireCondition, Expiry, Transaction};

use crate::plan::{integer, Plan, Shape};
use crate::protocol::Reply;

/// What a recognised script does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Script {
    /// Delete KEYS[1] if its value is ARGV[1]; returns 1 or 0.
    DeleteIfEqual,
    /// Give KEYS[1] a TTL of ARGV[2] (milliseconds, or seconds) if its value is ARGV[1].
    ExpireIfEqual { millis: bool },
}

impl Script {
    fn arguments(self) -> usize {
        match self {
            Script::DeleteIfEqual => 1,
            Script::ExpireIfEqual { .. } => 2,
        }
    }
}

/// The templates recognised, in the canonical token form of [`canonical`].
fn templates() -> Vec<(String, Script)> {
    let get = r#"if redis.call("get", KEYS[1]) == ARGV[1] then"#;
    let mut out = Vec::new();
    let mut both_endings = |action: &str, script: Script| {
        for text in [
            format!("{get} return {action} else return 0 end"),
            format!("{get} return {action} end return 0"),
            format!("{get} {action} return 1 else return 0 end"),
            format!("{get} {action} return 1 end return 0"),
        ] {
            out.push((canonical(&text), script));
        }
    };
    for del in ["del", "unlink"] {
        both_endings(
            &format!(r#"redis.call("{del}", KEYS[1])"#),
            Script::DeleteIfEqual,
        );
    }
    both_endings(
        r#"redis.call("pexpire", KEYS[1], ARGV[2])"#,
        Script::ExpireIfEqual { millis: true },
    );
    both_endings(
        r#"redis.call("expire", KEYS[1], ARGV[2])"#,
        Script::ExpireIfEqual { millis: false },
    );
    out
}

/// The script's tokens joined by single spaces: string literals double-quoted and lower-cased,
/// `;` dropped, whitespace and comments-free text otherwise kept as written.
fn canonical(source: &str) -> String {
    let chars: Vec<char> = source.chars().collect();
    let mut tokens: Vec<String> = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() || c == ';' {
            i += 1;
        } else if c == '"' || c == '\'' {
            let end = chars[i + 1..]
                .iter()
                .position(|&d| d == c)
                .map_or(chars.len(), |p| i + 1 + p);
            let literal: String = chars[i + 1..end].iter().collect();
            tokens.push(format!("\"{}\"", literal.to_ascii_lowercase()));
            i = end + 1;
        } else if c.is_alphanumeric() || c == '_' || c == '.' {
            let start = i;
            while i < chars.len()
                && (chars[i].is_alphanumeric() || chars[i] == '_' || chars[i] == '.')
            {
                i += 1;
            }
            tokens.push(chars[start..i].iter().collect());
        } else if c == '=' && chars.get(i + 1) == Some(&'=') {
            tokens.push("==".into());
            i += 2;
        } else {
            tokens.push(c.to_string());
            i += 1;
        }
    }
    tokens.join(" ")
}

/// Recognises a script's source.
pub(crate) fn recognise(source: &[u8]) -> Option<Script> {
    let source = std::str::from_utf8(source).ok()?;
    let form = canonical(source);
    templates()
        .into_iter()
        .find(|(t, _)| *t == form)
        .map(|(_, s)| s)
}

/// The SHA-1 of a script's source, in lower-case hex, as Redis names scripts.
pub(crate) fn sha1_hex(source: &[u8]) -> String {
    sha1_smol::Sha1::from(source).digest().to_string()
}

pub(crate) const UNSUPPORTED: &str = "ERR Conclave runs only recognised scripts: compare-and-delete (if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end) and compare-and-expire (the same with pexpire or expire KEYS[1] ARGV[2]); this script is not one of them";

/// Scripts loaded on this node, by SHA-1 (shared by its connections, like Redis's script cache).
#[derive(Default)]
pub(crate) struct ScriptCache {
    scripts: Mutex<HashMap<String, Script>>,
}

impl ScriptCache {
    /// SCRIPT LOAD and EVAL: recognises and remembers a script; returns its SHA-1.
    pub fn load(&self, source: &[u8]) -> Result<(String, Script), Reply> {
        let script = recognise(source).ok_or_else(|| Reply::error(UNSUPPORTED))?;
        let sha = sha1_hex(source);
        self.scripts
            .lock()
            .expect("poisoned")
            .insert(sha.clone(), script);
        Ok((sha, script))
    }

    pub fn get(&self, sha: &[u8]) -> Option<Script> {
        let sha = std::str::from_utf8(sha).ok()?.to_ascii_lowercase();
        self.scripts.lock().expect("poisoned").get(&sha).copied()
    }

    pub fn flush(&self) {
        self.scripts.lock().expect("poisoned").clear();
    }
}

/// Compiles `EVAL`/`EVALSHA <script> numkeys key... arg...` (args after the script) for a
/// recognised script into one transaction.
pub(crate) fn compile(script: Script, args: &[Vec<u8>]) -> Result<Plan, Reply> {
    let numkeys = integer(&args[0])?;
    if numkeys < 0 {
        return Err(Reply::error("ERR Number of keys can't be negative"));
    }
    let rest = &args[1..];
    if numkeys as usize > rest.len() {
        return Err(Reply::error(
            "ERR Number of keys can't be greater than number of args",
        ));
    }
    let (keys, argv) = rest.split_at(numkeys as usize);
    if keys.len() != 1 || argv.len() < script.arguments() {
        return Err(Reply::error(format!(
            "ERR this script takes 1 key and {} argument(s); got {} key(s) and {} argument(s)",
            script.arguments(),
            keys.len(),
            argv.len()
        )));
    }
    let key = Bytes::from(keys[0].clone());
    let action = match script {
        Script::DeleteIfEqual => Command::Delete {
            keys: vec![key.clone()],
        },
        Script::ExpireIfEqual { millis } => {
            let amount = integer(&argv[1])?;
            let scale = if millis { 1 } else { 1000 };
            let ms = amount
                .checked_mul(scale)
                .ok_or_else(|| Reply::error("ERR invalid expire time in script"))?;
            Command::Expire {
                key: key.clone(),
                expiry: if ms <= 0 {
                    Expiry::AtMillis(0)
                } else {
                    Expiry::AfterMillis(ms as u64)
                },
                condition: ExpireCondition::Always,
            }
        }
    };
    Ok(Plan {
        commands: vec![Command::Txn(Box::new(Transaction {
            compares: vec![Compare {
                key,
                field: None,
                check: Check::Value(CmpOp::Equal, Bytes::from(argv[0].clone())),
            }],
            success: vec![action],
            failure: vec![],
        }))],
        shape: Shape::Script,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_scripts_are_recognised_whatever_their_layout() {
        for source in [
            "if redis.call(\"get\", KEYS[1]) == ARGV[1] then\n\treturn redis.call(\"del\", KEYS[1])\nelse\n\treturn 0\nend",
            "if redis.call('GET',KEYS[1]) == ARGV[1] then return redis.call('DEL',KEYS[1]) end; return 0",
            "\n  if redis.call(\"get\", KEYS[1]) == ARGV[1] then\n    return redis.call(\"unlink\", KEYS[1])\n  else\n    return 0\n  end\n",
        ] {
            assert_eq!(recognise(source.as_bytes()), Some(Script::DeleteIfEqual), "{source}");
        }
        assert_eq!(
            recognise(b"if redis.call(\"get\", KEYS[1]) == ARGV[1] then return redis.call(\"pexpire\", KEYS[1], ARGV[2]) else return 0 end"),
            Some(Script::ExpireIfEqual { millis: true })
        );
        for other in [
            "return redis.call('del', KEYS[1])",
            "if redis.call(\"get\", KEYS[1]) ~= ARGV[1] then return redis.call(\"del\", KEYS[1]) else return 0 end",
            "if redis.call(\"get\", KEYS[2]) == ARGV[1] then return redis.call(\"del\", KEYS[1]) else return 0 end",
        ] {
            assert_eq!(recognise(other.as_bytes()), None, "{other}");
        }
    }

    #[test]
    fn scripts_are_named_by_the_sha1_of_their_exact_text() {
        assert_eq!(
            sha1_hex(b"return 1"),
            "e0e1f9fabfc9d4800c877a703b823ac0578ff8db"
        );
    }
}
