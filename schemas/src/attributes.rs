//! An event's attributes: free-form string keys and values.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use smol_str::SmolStr;

/// Key → value, sorted by key, no key twice: a map, as JSON, Avro and
/// postcard see it (the same bytes a `BTreeMap<String, String>` makes, so
/// stored records read either way).
///
/// Not a `BTreeMap`: its first node is about half a KiB, so a decoded
/// record of a million events held some 600 MB of attribute maps, and the
/// first read of such a user spent seconds having fresh pages zeroed
/// (docs/BENCHMARKS.md, session 18). Events hold a handful of attributes
/// at most (the collector keeps up to 64); a sorted vector of inline
/// strings (up to 23 bytes each without an allocation) is found by binary
/// search and weighs 48 bytes a pair.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct Attributes(Vec<(SmolStr, SmolStr)>);

impl Attributes {
    pub fn new() -> Attributes {
        Attributes::default()
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.position(key).ok().map(|i| self.0[i].1.as_str())
    }

    /// Sets `key` to `value`, returning the value it replaces.
    pub fn insert(
        &mut self,
        key: impl Into<SmolStr>,
        value: impl Into<SmolStr>,
    ) -> Option<SmolStr> {
        let key = key.into();
        match self.position(&key) {
            Ok(i) => Some(std::mem::replace(&mut self.0[i].1, value.into())),
            Err(i) => {
                self.0.insert(i, (key, value.into()));
                None
            }
        }
    }

    pub fn clear(&mut self) {
        self.0.clear();
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Key and value, by key.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Pairs already sorted by key with no key twice, taken as they are.
    pub(crate) fn from_sorted(pairs: Vec<(SmolStr, SmolStr)>) -> Attributes {
        debug_assert!(pairs.windows(2).all(|w| w[0].0 < w[1].0));
        Attributes(pairs)
    }

    fn position(&self, key: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|(k, _)| k.as_str().cmp(key))
    }
}

/// Like a map's: a key given twice keeps its last value.
impl<K: Into<SmolStr>, V: Into<SmolStr>> FromIterator<(K, V)> for Attributes {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(pairs: I) -> Attributes {
        let mut pairs: Vec<(SmolStr, SmolStr)> = pairs
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect();
        // Stable: equal keys stay in the order given, and the last wins.
        pairs.sort_by(|a, b| a.0.cmp(&b.0));
        let mut kept: Vec<(SmolStr, SmolStr)> = Vec::with_capacity(pairs.len());
        for pair in pairs {
            match kept.last_mut() {
                Some(last) if last.0 == pair.0 => *last = pair,
                _ => kept.push(pair),
            }
        }
        Attributes(kept)
    }
}

impl<K: Into<SmolStr>, V: Into<SmolStr>, const N: usize> From<[(K, V); N]> for Attributes {
    fn from(pairs: [(K, V); N]) -> Attributes {
        pairs.into_iter().collect()
    }
}

impl From<BTreeMap<String, String>> for Attributes {
    fn from(map: BTreeMap<String, String>) -> Attributes {
        // Already sorted, no key twice.
        Attributes(map.into_iter().map(|(k, v)| (k.into(), v.into())).collect())
    }
}

impl fmt::Debug for Attributes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl Serialize for Attributes {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (key, value) in &self.0 {
            map.serialize_entry(key.as_str(), value.as_str())?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for Attributes {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Attributes, D::Error> {
        struct Pairs;
        impl<'de> Visitor<'de> for Pairs {
            type Value = Attributes;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map of strings to strings")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Attributes, A::Error> {
                // Capped: a length read from the input is not trusted.
                let mut pairs = Vec::with_capacity(map.size_hint().unwrap_or(0).min(64));
                while let Some(pair) = map.next_entry::<SmolStr, SmolStr>()? {
                    pairs.push(pair);
                }
                // Written sorted with no key twice (every encoder here),
                // this is one pass; anything else reads as a map would.
                if pairs.windows(2).all(|w| w[0].0 < w[1].0) {
                    return Ok(Attributes(pairs));
                }
                Ok(pairs.into_iter().collect())
            }
        }
        deserializer.deserialize_map(Pairs)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// Whatever pairs it is made of, it holds what a `BTreeMap` made of
        /// them holds, and encodes to the same postcard and JSON bytes.
        #[test]
        fn attributes_are_the_map_of_their_pairs(
            pairs in proptest::collection::vec(("[a-c]{0,2}", "[a-z]{0,30}"), 0..12),
            inserted in proptest::collection::vec(("[a-c]{0,2}", "[a-z]{0,3}"), 0..4),
        ) {
            let mut map: BTreeMap<String, String> = pairs.iter().cloned().collect();
            let mut attributes: Attributes = pairs.iter().cloned().collect();
            for (key, value) in inserted {
                prop_assert_eq!(
                    attributes.insert(key.as_str(), value.as_str()).map(String::from),
                    map.insert(key, value)
                );
            }
            prop_assert_eq!(attributes.len(), map.len());
            prop_assert!(attributes.iter().eq(map.iter().map(|(k, v)| (k.as_str(), v.as_str()))));
            for key in ["", "a", "b", "ab", "cc", "d"] {
                prop_assert_eq!(attributes.get(key), map.get(key).map(String::as_str));
            }
            prop_assert_eq!(&Attributes::from(map.clone()), &attributes);

            let postcard = postcard::to_stdvec(&map).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(postcard::to_stdvec(&attributes).ok(), Some(postcard.clone()));
            let stored: Attributes = postcard::from_bytes(&postcard).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(&stored, &attributes);
            prop_assert_eq!(serde_json::to_string(&attributes).ok(), serde_json::to_string(&map).ok());
            let json = serde_json::to_string(&map).unwrap_or_default();
            let read: Attributes = serde_json::from_str(&json).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(read, attributes);
        }

        /// Read from pairs in any order, or with a key twice, it is what a
        /// map reads: sorted, the last value of a key kept.
        #[test]
        fn attributes_read_like_a_map(
            pairs in proptest::collection::vec(("[a-c]{0,2}", "[a-z]{0,3}"), 0..12),
        ) {
            let json = format!(
                "{{{}}}",
                pairs
                    .iter()
                    .map(|(k, v)| format!("{k:?}:{v:?}"))
                    .collect::<Vec<_>>()
                    .join(",")
            );
            let map: BTreeMap<String, String> = serde_json::from_str(&json).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let read: Attributes = serde_json::from_str(&json).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(read, Attributes::from(map));
        }
    }
}
