//! Newtypes for the ids that name things in a flow.

use std::fmt;
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Serialize, Serializer};

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(Arc<str>);

        impl $name {
            /// Wraps a string.
            pub fn new(id: impl Into<Arc<str>>) -> Self {
                $name(id.into())
            }

            /// The id as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(&self.0)
            }
        }

        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }
    };
}

string_id!(
    /// A node's id, unique within its flow file.
    NodeId
);
string_id!(
    /// A flow's name: its file name without the extension.
    FlowId
);

/// A message id (`_msgid`), unique within the process and very unlikely to
/// repeat across restarts. Shown as 16 hex digits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MsgId(u64);

impl MsgId {
    /// A fresh id. A random per-process seed XOR a counter multiplied by an
    /// odd constant: a bijection, so ids never repeat within a process, and
    /// they look random like Node-RED's.
    pub fn next() -> Self {
        static SEED: OnceLock<u64> = OnceLock::new();
        static COUNTER: AtomicU64 = AtomicU64::new(1);
        let seed = *SEED.get_or_init(rand::random::<u64>);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        MsgId(seed ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15))
    }

    /// Parses the 16-hex-digit form.
    pub fn parse(text: &str) -> Option<Self> {
        if text.len() != 16 {
            return None;
        }
        u64::from_str_radix(text, 16).ok().map(MsgId)
    }

    /// The raw number.
    pub fn as_u64(self) -> u64 {
        self.0
    }
}

impl fmt::Display for MsgId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl Serialize for MsgId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn msg_ids_are_unique_and_round_trip() {
        let ids: std::collections::HashSet<MsgId> = (0..10_000).map(|_| MsgId::next()).collect();
        assert_eq!(ids.len(), 10_000);
        let id = MsgId::next();
        assert_eq!(MsgId::parse(&id.to_string()), Some(id));
        assert_eq!(MsgId::parse("xyz"), None);
    }
}
