//! The audit trail's tamper evidence: a keyed hash chain over the `audit` rows and a keyed
//! head checkpoint in `state_dir/audit.head`.
//!
//! - The chain key is derived with HKDF-SHA256 from the audit HMAC secret (the one that
//!   already turns token ids into audit token ids, from the environment or
//!   `audit_hmac.key`), under its own label, so it never leaves memory and is zeroized.
//! - Each row stores `prev_hash` (the previous row's `hash`, 64 zeros for the first) and
//!   `hash` = hex HMAC-SHA256(chain key, `"ibkr-gateway audit row v1\n" || prev_hash || "\n"
//!   || canonical row`), where the canonical row is the JSON array of every other column, the
//!   row id first. Rows are numbered without gaps by the writer, so a removed row leaves a gap,
//!   an edited one (or one moved to another id) fails its hash, and reordering breaks the
//!   links.
//! - `audit.head` (0600, replaced atomically after every committed batch) names the newest
//!   row (`tip`), the first row of the chain (`chain_start`: rows before it predate the chain
//!   or an earlier audit secret), the retention prune point (`pruned`: the last row retention
//!   deleted, written before the delete) and the key's id, under an HMAC. The table must
//!   still hold the tip: cutting its tail or restoring an older copy of the database alone is
//!   detected, and a prefix deleted beyond the prune point is told apart from retention.

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use std::io::Write;
use std::path::Path;
use zeroize::Zeroizing;

/// The head checkpoint's file name in `state_dir`.
pub const HEAD_FILE: &str = "audit.head";
/// `prev_hash` of the first row of a chain.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

const HKDF_INFO: &[u8] = b"ibkr-gateway audit chain v1";
const ROW_LABEL: &[u8] = b"ibkr-gateway audit row v1\n";
const HEAD_LABEL: &[u8] = b"ibkr-gateway audit head v1\n";
const KEY_ID_LABEL: &[u8] = b"ibkr-gateway audit key id v1";

/// The chain's HMAC key. Zeroized on drop, never printed.
pub struct ChainKey {
    key: Zeroizing<[u8; 32]>,
}

impl std::fmt::Debug for ChainKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ChainKey(<redacted>)")
    }
}

impl ChainKey {
    /// Derives the chain key from the audit secret (HKDF-SHA256, no salt, its own label).
    pub fn derive(secret: &[u8]) -> ChainKey {
        let mut key = Zeroizing::new([0u8; 32]);
        // 32 bytes is far below HKDF-SHA256's output limit: expand cannot fail.
        let _ = hkdf::Hkdf::<Sha256>::new(None, secret).expand(HKDF_INFO, key.as_mut());
        ChainKey { key }
    }

    fn mac(&self, label: &[u8]) -> Hmac<Sha256> {
        // HMAC takes keys of any length, so this never falls back (the fallback only keeps
        // the code free of panics).
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(self.key.as_ref())
            .unwrap_or_else(|_| <Hmac<Sha256> as Mac>::new(&Default::default()));
        mac.update(label);
        mac
    }

    /// The hash of a row: `canonical` is [`canonical_row`] of its columns.
    pub fn row_hash(&self, prev_hash: &str, canonical: &str) -> String {
        let mut mac = self.mac(ROW_LABEL);
        mac.update(prev_hash.as_bytes());
        mac.update(b"\n");
        mac.update(canonical.as_bytes());
        hex::encode(mac.finalize().into_bytes())
    }

    /// A public name for the key (16 hex characters), so a head written under another
    /// secret is recognised as such rather than as tampering.
    pub fn key_id(&self) -> String {
        let digest = self.mac(KEY_ID_LABEL).finalize().into_bytes();
        hex::encode(&digest[..8])
    }

    fn head_mac(&self, head: &Head) -> Hmac<Sha256> {
        let mut mac = self.mac(HEAD_LABEL);
        let pruned = head
            .pruned
            .as_ref()
            .map_or_else(|| "-\n-".to_string(), |p| format!("{}\n{}", p.id, p.hash));
        mac.update(
            format!(
                "{}\n{}\n{}\n{}\n{}\n{}",
                head.version, head.key_id, head.chain_start, head.tip.id, head.tip.hash, pruned
            )
            .as_bytes(),
        );
        mac
    }
}

/// A row named by the head: its id and hash.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RowRef {
    pub id: i64,
    pub hash: String,
}

/// `audit.head` as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Head {
    pub version: u32,
    /// [`ChainKey::key_id`] of the key the chain from `chain_start` is under.
    pub key_id: String,
    /// The first row of the chain; rows with a smaller id predate it (unchained rows from
    /// before version 4 of the store, or rows under an earlier audit secret).
    pub chain_start: i64,
    /// The newest row (`chain_start - 1` and the genesis hash while the chain is empty).
    pub tip: RowRef,
    /// The last row retention deleted (or is deleting), if any.
    pub pruned: Option<RowRef>,
    pub mac: String,
}

/// Why `audit.head` could not be read.
#[derive(Debug, thiserror::Error)]
pub enum HeadError {
    #[error("audit.head: {0}")]
    Io(#[from] std::io::Error),
    #[error("audit.head is not a head checkpoint")]
    Malformed,
}

impl Head {
    /// A head for the given state, MAC'd with `key`.
    pub fn new(key: &ChainKey, chain_start: i64, tip: RowRef, pruned: Option<RowRef>) -> Head {
        let mut head = Head {
            version: 1,
            key_id: key.key_id(),
            chain_start,
            tip,
            pruned,
            mac: String::new(),
        };
        head.mac = hex::encode(key.head_mac(&head).finalize().into_bytes());
        head
    }

    /// Whether `key` wrote this head (constant-time comparison).
    pub fn verifies(&self, key: &ChainKey) -> bool {
        let Ok(mac) = hex::decode(&self.mac) else {
            return false;
        };
        key.head_mac(self).verify_slice(&mac).is_ok()
    }

    /// The id of the last row retention may have deleted (`chain_start - 1` when none).
    pub fn pruned_through(&self) -> i64 {
        pruned_through(self.chain_start, self.pruned.as_ref())
    }

    /// The head in `state_dir`, `None` when there is none.
    pub fn read(state_dir: &Path) -> Result<Option<Head>, HeadError> {
        match std::fs::read(state_dir.join(HEAD_FILE)) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|_| HeadError::Malformed),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(error.into()),
        }
    }

    /// Replaces the head in `state_dir`: a 0600 temp file, fsync, rename, directory fsync, so
    /// a crash leaves the old head or the new one.
    pub fn write(&self, state_dir: &Path) -> Result<(), std::io::Error> {
        let mut bytes = serde_json::to_vec(self).map_err(std::io::Error::other)?;
        bytes.push(b'\n');
        let mut suffix = [0u8; 8];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut suffix);
        let temp = state_dir.join(format!(".{HEAD_FILE}.tmp-{}", hex::encode(suffix)));
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let written = (|| {
            let mut file = options.open(&temp)?;
            file.write_all(&bytes)?;
            file.sync_all()?;
            std::fs::rename(&temp, state_dir.join(HEAD_FILE))
        })();
        if written.is_err() {
            let _ = std::fs::remove_file(&temp);
        }
        written?;
        std::fs::File::open(state_dir)?.sync_all()
    }
}

/// The id of the last row that may be missing from the front of a chain starting at
/// `chain_start` with prune point `pruned`: rows up to it may be gone by retention (or
/// predate the chain).
pub fn pruned_through(chain_start: i64, pruned: Option<&RowRef>) -> i64 {
    pruned
        .map_or(chain_start - 1, |pruned| pruned.id)
        .max(chain_start - 1)
}

/// The columns of one row in the order the hash covers them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RowColumns {
    pub id: i64,
    pub time_ms: i64,
    pub subject: String,
    pub token_id_hmac: Option<String>,
    pub client_id: Option<String>,
    pub tool: String,
    pub scope: Option<String>,
    pub request_id: Option<String>,
    pub payload_hash: Option<String>,
    pub sidecar_id: Option<String>,
    pub outcome: String,
    pub latency_ms: i64,
    pub pairing_id: Option<String>,
    pub journal_seq: Option<i64>,
    pub journal_hash: Option<String>,
    pub note: Option<String>,
}

/// The canonical text of a row (a JSON array, row id first, `null` for absent values).
pub fn canonical_row(row: &RowColumns) -> String {
    serde_json::json!([
        row.id,
        row.time_ms,
        row.subject,
        row.token_id_hmac,
        row.client_id,
        row.tool,
        row.scope,
        row.request_id,
        row.payload_hash,
        row.sidecar_id,
        row.outcome,
        row.latency_ms,
        row.pairing_id,
        row.journal_seq,
        row.journal_hash,
        row.note,
    ])
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chain_key_is_derived_apart_from_the_token_id_key() {
        let key = ChainKey::derive(b"0123456789abcdef0123456789abcdef");
        let same = ChainKey::derive(b"0123456789abcdef0123456789abcdef");
        let other = ChainKey::derive(b"another secret of enough length!");
        let row = canonical_row(&RowColumns {
            id: 1,
            ..RowColumns::default()
        });
        assert_eq!(
            key.row_hash(GENESIS_HASH, &row),
            same.row_hash(GENESIS_HASH, &row)
        );
        assert_ne!(
            key.row_hash(GENESIS_HASH, &row),
            other.row_hash(GENESIS_HASH, &row)
        );
        assert_eq!(key.key_id(), same.key_id());
        assert_ne!(key.key_id(), other.key_id());
        assert_eq!(key.key_id().len(), 16);
        // The id is part of the hashed text: the same content at another id differs.
        let moved = canonical_row(&RowColumns {
            id: 2,
            ..RowColumns::default()
        });
        assert_ne!(
            key.row_hash(GENESIS_HASH, &row),
            key.row_hash(GENESIS_HASH, &moved)
        );
    }

    #[test]
    fn a_head_verifies_only_unchanged_and_under_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let key = ChainKey::derive(b"0123456789abcdef0123456789abcdef");
        let head = Head::new(
            &key,
            3,
            RowRef {
                id: 9,
                hash: "ab".repeat(32),
            },
            Some(RowRef {
                id: 4,
                hash: "cd".repeat(32),
            }),
        );
        assert!(head.verifies(&key));
        assert_eq!(head.pruned_through(), 4);
        head.write(dir.path()).unwrap();
        let read = Head::read(dir.path()).unwrap().unwrap();
        assert_eq!(read, head);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(HEAD_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let mut edited = head.clone();
        edited.tip.id = 8;
        assert!(!edited.verifies(&key));
        let mut unpruned = head.clone();
        unpruned.pruned = None;
        assert!(!unpruned.verifies(&key));
        assert!(!head.verifies(&ChainKey::derive(b"another secret of enough length!")));
        std::fs::write(dir.path().join(HEAD_FILE), b"{}").unwrap();
        assert!(matches!(Head::read(dir.path()), Err(HeadError::Malformed)));
    }
}
