//! A bound on how deeply the recursive types (a transaction's commands, a batch's writes, their
//! outcomes, an answer's array) nest in what is decoded.
//!
//! Decoding recurses once per level, so bytes from outside (a peer's forwarded write or
//! AppendEntries, a snapshot, a log segment) nesting a transaction in a transaction a hundred
//! thousand times over (about 2.8 MB) overflowed a 2 MiB tokio worker's stack and aborted the
//! node. Nothing Conclave builds nests deeper than a batch of transactions of plain commands
//! (the limits refuse a transaction inside a transaction), so [`MAX_DECODED_NESTING`] leaves
//! ample room and a deeper encoding is a decode error. Use with
//! `#[serde(deserialize_with = "crate::nesting::bounded")]` on each recursive field.

use std::cell::Cell;

use serde::de::{Deserialize, Deserializer, Error};

/// The most recursive levels one decode may open.
pub const MAX_DECODED_NESTING: u32 = 16;

thread_local! {
    /// Levels open in the decode running on this thread (a decode never leaves its thread).
    static DEPTH: Cell<u32> = const { Cell::new(0) };
}

/// Decodes one more level of a recursive type, or refuses past [`MAX_DECODED_NESTING`].
pub(crate) fn bounded<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    /// Closes the level however its decode ends (an error, a panic).
    struct Level;
    impl Drop for Level {
        fn drop(&mut self) {
            DEPTH.with(|depth| depth.set(depth.get() - 1));
        }
    }
    let depth = DEPTH.with(|depth| depth.replace(depth.get() + 1));
    let _level = Level;
    if depth >= MAX_DECODED_NESTING {
        return Err(D::Error::custom(format!(
            "nested more than {MAX_DECODED_NESTING} levels deep"
        )));
    }
    T::deserialize(deserializer)
}

#[cfg(test)]
mod tests {
    use crate::{Command, Transaction, WriteRequest};

    fn nested(levels: usize) -> Command {
        (0..levels).fold(Command::Tick, |inner, _| {
            Command::Txn(Box::new(Transaction {
                compares: vec![],
                success: vec![inner],
                failure: vec![],
            }))
        })
    }

    #[test]
    fn nesting_up_to_the_bound_decodes_and_deeper_is_an_error() {
        let request = |command| WriteRequest {
            id: None,
            stamp: 0,
            command,
        };
        let fits = bincode::serialize(&request(nested(16))).unwrap();
        let decoded: WriteRequest = bincode::deserialize(&fits).unwrap();
        assert_eq!(decoded, request(nested(16)));
        let deeper = bincode::serialize(&request(nested(17))).unwrap();
        let refused = bincode::deserialize::<WriteRequest>(&deeper).unwrap_err();
        assert!(refused
            .to_string()
            .contains("nested more than 16 levels deep"));
        // The counter is back at zero after the refusal: a shallow decode still works.
        assert!(bincode::deserialize::<WriteRequest>(&fits).is_ok());
    }

    #[test]
    fn a_hundred_thousand_levels_are_refused_on_a_small_stack() {
        // Built as bytes: encoding such a value would recurse as deep itself.
        let mut bytes = vec![0u8]; // id: None
        bytes.extend(0u64.to_le_bytes()); // stamp
        for _ in 0..100_000 {
            bytes.extend(15u32.to_le_bytes()); // Command::Txn
            bytes.extend(0u64.to_le_bytes()); // no comparisons
            bytes.extend(1u64.to_le_bytes()); // one command on success
        }
        let refused = std::thread::Builder::new()
            .stack_size(256 << 10)
            .spawn(move || bincode::deserialize::<WriteRequest>(&bytes).is_err())
            .unwrap()
            .join()
            .unwrap();
        assert!(refused);
    }
}
