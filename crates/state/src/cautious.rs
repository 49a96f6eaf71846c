//! Decoding imbl's collections without trusting the length the input announces.
//!
//! imbl's own `Deserialize` reserves room for as many entries as the encoding says come, before
//! reading any: a damaged or hostile length (a snapshot from a peer, a file on disk) then
//! panics with "capacity overflow" or aborts the process on an allocation it cannot make.
//! These build the collection entry by entry instead, so a bad length costs nothing and ends
//! in a decode error when the input runs out. The encoding is imbl's (a map or a sequence).
//! Use with `#[serde(deserialize_with = "...")]`.

use std::fmt;
use std::marker::PhantomData;

use imbl::{OrdMap, Vector};
use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

/// An [`OrdMap`], from a map.
pub(crate) fn ord_map<'de, D, K, V>(deserializer: D) -> Result<OrdMap<K, V>, D::Error>
where
    D: Deserializer<'de>,
    K: Deserialize<'de> + Ord + Clone,
    V: Deserialize<'de> + Clone,
{
    struct Entries<K, V>(PhantomData<(K, V)>);
    impl<'de, K, V> Visitor<'de> for Entries<K, V>
    where
        K: Deserialize<'de> + Ord + Clone,
        V: Deserialize<'de> + Clone,
    {
        type Value = OrdMap<K, V>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a map")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Self::Value, A::Error> {
            let mut map = OrdMap::new();
            while let Some((key, value)) = access.next_entry()? {
                map.insert(key, value);
            }
            Ok(map)
        }
    }
    deserializer.deserialize_map(Entries(PhantomData))
}

/// A [`Vector`], from a sequence.
pub(crate) fn vector<'de, D, T>(deserializer: D) -> Result<Vector<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Clone,
{
    struct Elements<T>(PhantomData<T>);
    impl<'de, T: Deserialize<'de> + Clone> Visitor<'de> for Elements<T> {
        type Value = Vector<T>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a sequence")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut access: A) -> Result<Self::Value, A::Error> {
            let mut vector = Vector::new();
            while let Some(element) = access.next_element()? {
                vector.push_back(element);
            }
            Ok(vector)
        }
    }
    deserializer.deserialize_seq(Elements(PhantomData))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug)]
    struct Holder {
        #[serde(deserialize_with = "ord_map")]
        map: OrdMap<u64, u64>,
        #[serde(deserialize_with = "vector")]
        vector: Vector<u64>,
    }

    #[derive(serde::Serialize)]
    struct Plain {
        map: OrdMap<u64, u64>,
        vector: Vector<u64>,
    }

    #[test]
    fn decodes_what_imbl_encodes() {
        let plain = Plain {
            map: (0..100u64).map(|i| (i, i * 2)).collect(),
            vector: (0..50u64).collect(),
        };
        let holder: Holder = bincode::deserialize(&bincode::serialize(&plain).unwrap()).unwrap();
        assert_eq!(holder.map, plain.map);
        assert_eq!(holder.vector, plain.vector);
    }

    #[test]
    fn a_huge_announced_length_is_a_decode_error_not_a_panic() {
        // imbl's own decoder panics here with "capacity overflow".
        for length in [u64::MAX, u64::MAX / 16, 1 << 40] {
            let bytes = length.to_le_bytes();
            let decoded: Result<Holder, _> = bincode::deserialize(&bytes);
            assert!(decoded.is_err(), "length {length}");
        }
    }
}
