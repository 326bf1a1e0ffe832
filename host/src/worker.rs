//! The worker: a thread that owns the policy's time. Hits and inserts enqueue
//! events on a bounded queue (a full queue drops the event and counts it, as
//! wasmtime's worker does, so the caller never waits); the worker records
//! usage, asks the policy what to do and does it: recode, remove, maintain.

use crate::bindings::exports::capcache::policy::policy::{Action, MaintainReport};
use crate::cache::{admit_and_write, remove_entry_and_usage};
use crate::settings::HostSettings;
use crate::key::Key;
use crate::policy::PolicyRuntime;
use crate::stats::Stats;
use crate::store::Area;
use crate::usage::{self, Usage};
use crate::view::{self, Shared, codec_from_wit};
use parking_lot::Mutex;
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::thread::JoinHandle;

pub(crate) enum Event {
    Hit(Key),
    Inserted(Key),
    /// Make a value, then admit and store it (a miss's store, off the
    /// caller's path).
    Store(Key, Box<dyn FnOnce() -> Option<Vec<u8>> + Send>),
    /// Answer once every earlier event is handled.
    Flush(SyncSender<()>),
    /// Run `maintain` now and answer with its report.
    Maintain(SyncSender<Option<MaintainReport>>),
}

pub(crate) struct Worker {
    sender: Option<SyncSender<Event>>,
    thread: Option<JoinHandle<()>>,
}

impl Worker {
    pub(crate) fn start(shared: Arc<Shared>, policy: Arc<Mutex<PolicyRuntime>>, host: HostSettings) -> Worker {
        let (sender, receiver) = mpsc::sync_channel(host.event_queue_size.max(1));
        let thread = std::thread::Builder::new()
            .name("capcache-worker".into())
            .spawn(move || run(receiver, &shared, &policy, &host))
            .expect("cannot start the cache worker thread");
        Worker { sender: Some(sender), thread: Some(thread) }
    }

    /// Queues an event without waiting; `false` if it was dropped.
    pub(crate) fn offer(&self, event: Event) -> bool {
        self.offer_or_return(event).is_ok()
    }

    /// Queues an event without waiting, or hands it back.
    pub(crate) fn offer_or_return(&self, event: Event) -> Result<(), Event> {
        match &self.sender {
            Some(sender) => sender.try_send(event).map_err(|e| match e {
                TrySendError::Full(event) | TrySendError::Disconnected(event) => event,
            }),
            None => Err(event),
        }
    }

    /// Queues a request and waits for its answer.
    pub(crate) fn request<R>(&self, make: impl FnOnce(SyncSender<R>) -> Event) -> Option<R> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.sender.as_ref()?.send(make(tx)).ok()?;
        rx.recv().ok()
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        // Closing the queue lets the worker finish what is queued and stop.
        self.sender = None;
        if let Some(thread) = self.thread.take() {
            // The last handle on the cache can be dropped by the worker itself:
            // a deferred store holds a module, which holds its engine, which
            // may hold the cache (an `IncrementalCache`). Joining itself would
            // fail; the worker finishes the queue and stops on its own.
            if thread.thread().id() == std::thread::current().id() {
                return;
            }
            if thread.join().is_err() {
                tracing::error!("the cache worker panicked; events still queued were lost");
            }
        }
    }
}

fn run(receiver: Receiver<Event>, shared: &Shared, policy: &Mutex<PolicyRuntime>, host: &HostSettings) {
    while let Ok(first) = receiver.recv() {
        let mut batch = vec![first];
        batch.extend(receiver.try_iter());
        // All hits of the batch go to the journal in one append.
        let hits: Vec<_> = batch
            .iter()
            .filter_map(|e| match e {
                Event::Hit(key) => Some((usage::id_of(key), Some(1))),
                _ => None,
            })
            .collect();
        if !shared.read_only
            && let Err(e) = Usage::append(shared.store.namespace_dir(), &hits) {
                tracing::warn!("cannot record usage in {}: {e}", shared.store.path().display());
            }
        for event in batch {
            match event {
                Event::Hit(key) => {
                    if !shared.read_only {
                        let _ = shared.store.touch_entry(&key);
                    }
                    handle_entry_event(shared, policy, &key, true);
                }
                Event::Inserted(key) => handle_entry_event(shared, policy, &key, false),
                Event::Store(key, produce) => {
                    if let Some(value) = produce()
                        && admit_and_write(shared, policy, host, &key, &value) {
                            drop(value);
                            handle_entry_event(shared, policy, &key, false);
                        }
                }
                Event::Flush(reply) => {
                    let _ = reply.send(());
                }
                Event::Maintain(reply) => {
                    let _ = reply.send(maintain(shared, &mut policy.lock()));
                }
            }
        }
    }
}

fn handle_entry_event(shared: &Shared, policy: &Mutex<PolicyRuntime>, key: &Key, hit: bool) {
    let name = key.name();
    let meta = {
        let mut usage = shared.usage.lock();
        if let Err(e) = usage.refresh(shared.store.namespace_dir()) {
            tracing::debug!("cannot read the usage journal: {e}");
        }
        match view::entry_meta(&shared.store, &usage, &name) {
            Ok(meta) => meta,
            // Gone or replaced meanwhile: nothing to tell the policy.
            Err(_) => return,
        }
    };
    let mut policy = policy.lock();
    let actions = if hit { policy.on_hit(&meta) } else { policy.on_insert(&meta) };
    if shared.read_only {
        return;
    }
    for action in actions {
        match action {
            Action::Recode(codec) => recode(shared, key, codec_from_wit(codec)),
            Action::Remove => {
                if remove_entry_and_usage(shared, key) {
                    Stats::bump(&shared.stats.removed);
                }
            }
            Action::Maintain => {
                maintain(shared, &mut policy);
            }
        }
    }
}

/// Re-encodes an entry, atomically; the entry keeps its creation time, and a
/// newer entry stored meanwhile is kept.
fn recode(shared: &Shared, key: &Key, codec: crate::entry::StoredCodec) {
    match shared.store.recode_entry(key, codec) {
        Ok(true) => Stats::bump(&shared.stats.recoded),
        Ok(false) => {}
        Err(e) => tracing::warn!("cannot re-encode entry {}: {e}", key.name()),
    }
}

/// Runs the policy's maintenance pass, then compacts the usage journal if it
/// has grown.
pub(crate) fn maintain(shared: &Shared, policy: &mut PolicyRuntime) -> Option<MaintainReport> {
    if shared.read_only {
        return None;
    }
    let report = policy.maintain(shared.store.now_ms())?;
    if report.ran {
        Stats::bump(&shared.stats.maintain_runs);
        tracing::info!(policy = policy.name(), "maintenance: {}", report.summary);
        // Manifests whose artifacts the pass evicted go with them.
        match shared.store.prune_manifests() {
            Ok(0) => {}
            Ok(n) => tracing::debug!("{n} direct-mode manifests of evicted artifacts removed"),
            Err(e) => tracing::warn!("cannot list direct-mode manifests: {e}"),
        }
        let dir = shared.store.namespace_dir();
        let large = dir.metadata(usage::JOURNAL).map(|m| m.len() > usage::COMPACT_AT).unwrap_or(false);
        if large {
            // Compaction keeps the records of the entries listed: a listing
            // that failed would drop every entry's usage, so it skips instead.
            match shared.store.list_names(Area::Entries) {
                Ok(names) => {
                    let live: std::collections::HashSet<usage::EntryId> =
                        names.iter().filter_map(|n| Key::from_name(n)).map(|k| usage::id_of(&k)).collect();
                    if let Err(e) = Usage::compact(dir, |id| live.contains(id)) {
                        tracing::warn!("cannot compact the usage journal: {e}");
                    }
                }
                Err(e) => tracing::warn!("cannot list the entries, so the usage journal is not compacted: {e}"),
            }
        }
    } else {
        tracing::debug!(policy = policy.name(), "maintenance did not run: {}", report.summary);
    }
    Some(report)
}
