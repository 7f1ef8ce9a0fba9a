//! The gateway's journal anchor: in every handshake the gateway names the newest journal entry
//! it has on record for this pairing (`ServerHello.journal_anchor`, taken from its audit
//! trail). A journal that no longer holds that entry, with that hash, was cut back or replaced
//! by an older copy, even if its own key, head and chain were put back with it. Then the order
//! tools that change broker state are refused with `JOURNAL_BEHIND_GATEWAY` until a handshake
//! names an anchor the journal holds (read tools keep working): the daily cap, the duplicate
//! checks and the pending orders would otherwise be judged on a history with holes.

use super::journal::Journal;
use protocol::envelope::JournalRef;
use std::sync::Mutex;

/// The journal lacks the gateway's anchor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Behind {
    /// The entry the gateway has on record.
    pub anchor: JournalRef,
    /// The newest entry the journal holds.
    pub journal_last_seq: u64,
}

/// What a handshake's check changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AnchorChange {
    /// The journal is behind now and was not before.
    NowBehind(Behind),
    /// The journal was behind and holds the anchor now.
    Cleared,
    Unchanged,
}

/// The result of the last handshake's check, shared by the connections and the request tasks.
#[derive(Debug, Default)]
pub struct AnchorCheck {
    behind: Mutex<Option<Behind>>,
}

impl AnchorCheck {
    pub fn new() -> AnchorCheck {
        AnchorCheck::default()
    }

    /// Checks `anchor` (from the handshake) against `journal`.
    pub fn check(&self, anchor: Option<JournalRef>, journal: &Journal) -> AnchorChange {
        let now = match anchor {
            Some(anchor) if !journal.holds(&anchor) => Some(Behind {
                anchor,
                journal_last_seq: journal.last_seq(),
            }),
            _ => None,
        };
        let mut behind = self
            .behind
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let before = std::mem::replace(&mut *behind, now);
        match (before, now) {
            (None, Some(now)) => AnchorChange::NowBehind(now),
            (Some(_), None) => AnchorChange::Cleared,
            _ => AnchorChange::Unchanged,
        }
    }

    /// Whether the journal is behind the gateway's anchor, as of the last handshake.
    pub fn behind(&self) -> Option<Behind> {
        *self
            .behind
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[tokio::test]
    async fn an_anchor_the_journal_lacks_is_behind_until_one_it_holds() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::open(&dir.path().join("journal.jsonl")).unwrap();
        let ((), written) = super::super::journal_tap::tapped(async {
            journal.intent(json!({}), 1).unwrap();
        })
        .await;
        let held = written.unwrap();
        let check = AnchorCheck::new();
        assert_eq!(check.check(None, &journal), AnchorChange::Unchanged);
        assert_eq!(check.check(Some(held), &journal), AnchorChange::Unchanged);
        assert_eq!(check.behind(), None);

        let ahead = JournalRef {
            seq: held.seq + 1,
            hash: held.hash,
        };
        let behind = Behind {
            anchor: ahead,
            journal_last_seq: 1,
        };
        assert_eq!(
            check.check(Some(ahead), &journal),
            AnchorChange::NowBehind(behind)
        );
        assert_eq!(check.behind(), Some(behind));
        // Still behind at the next handshake: nothing new to alert about.
        assert_eq!(check.check(Some(ahead), &journal), AnchorChange::Unchanged);
        // Same sequence number, another hash: a different history.
        let forked = JournalRef {
            seq: held.seq,
            hash: [0; 32],
        };
        assert_eq!(check.check(Some(forked), &journal), AnchorChange::Unchanged);
        assert!(check.behind().is_some());
        assert_eq!(check.check(Some(held), &journal), AnchorChange::Cleared);
        assert_eq!(check.behind(), None);
    }
}
