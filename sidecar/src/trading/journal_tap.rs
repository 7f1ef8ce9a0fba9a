//! Which journal entry a relayed call wrote last, for `RelayResponse.journal`.
//!
//! Each relayed call runs as its own task; [`tapped`] gives that task a slot the journal fills
//! on every append ([`wrote`], called under the journal's lock). So the answer names exactly
//! the entries its own call wrote, however many calls run at once, without handing a tap to
//! every journal call in the order tools. Appends outside a tapped task (startup, tests) are
//! not reported anywhere.

use super::journal::Entry;
use protocol::envelope::JournalRef;
use std::cell::Cell;
use std::future::Future;

tokio::task_local! {
    static LAST_WRITTEN: Cell<Option<JournalRef>>;
}

/// Runs `work` and returns its output with the last journal entry it wrote, if any.
pub async fn tapped<F: Future>(work: F) -> (F::Output, Option<JournalRef>) {
    LAST_WRITTEN
        .scope(Cell::new(None), async move {
            let output = work.await;
            let written = LAST_WRITTEN.try_with(Cell::get).ok().flatten();
            (output, written)
        })
        .await
}

/// Records that the current task wrote `entry` (no effect outside [`tapped`]).
pub(super) fn wrote(entry: &Entry) {
    let Some(hash) = hex::decode(&entry.hash)
        .ok()
        .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok())
    else {
        return;
    };
    let reference = JournalRef {
        seq: entry.seq,
        hash,
    };
    let _ = LAST_WRITTEN.try_with(|slot| slot.set(Some(reference)));
}
