//! The worker: a thread that owns the policy's time. Hits and inserts enqueue
//! events on a bounded queue (a full queue drops the event and counts it, as
//! wasmtime's worker does, so the caller never waits); the worker records
//! usage, asks the policy what to do and does it: recode, remove, maintain.
//!
//! A policy that starts at its first call (see `StartAt::FirstCall`) is
//! started here, ahead of a miss's `admit`, or for events; not for hits
//! alone in the first [`HITS_ALONE_WAIT`] of the cache: a short-lived
//! process that only hits raw entries (already in the form that loads
//! fastest) exits without ever starting it. Such hits are still recorded as
//! usage, and counted as dropped events. A hit on an encoded entry is
//! always told, as the policy may decide to store it raw.

use crate::bindings::codec_from_wit;
use crate::bindings::exports::capcache::policy::policy::{Action, MaintainReport};
use crate::key::Key;
use crate::namespace::{AdmitWait, Namespace, Offered};
use crate::policy::PolicyRuntime;
use crate::settings::HostSettings;
use crate::stats::Stats;
use crate::usage::{self, Usage};
use parking_lot::Mutex;
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long after the cache opened hits alone wait before a policy that has
/// not started is started to hear of them. Long enough for a process that
/// loads its modules and exits (a CLI, a CI step, a request's worker), short
/// enough that a long-lived host's policy hears of its first hits soon.
pub(crate) const HITS_ALONE_WAIT: Duration = Duration::from_millis(100);

/// A value to make, admit and store on the worker; `None` if there is nothing
/// to store after all.
pub(crate) type Produce = Box<dyn FnOnce() -> Option<Vec<u8>> + Send>;

/// Called once a deferred store is done, stored or not.
pub(crate) type Landed = Box<dyn FnOnce() + Send>;

/// What the worker is asked to do.
enum Message {
    /// A hit, on a raw entry or not.
    Hit(Key, bool),
    Inserted(Key),
    /// Make a value (whose computation took the microseconds given), then
    /// admit and store it (a miss's store, off the caller's path); then call
    /// the hook, if any.
    Store(Key, Produce, u64, Option<Landed>),
    /// Answer once every earlier message is handled.
    Flush(SyncSender<()>),
    /// Run `maintain` now and answer with its report.
    Maintain(SyncSender<Option<MaintainReport>>),
    /// Start the policy now if it has not started: a miss will ask it.
    StartPolicy,
    /// Upload an entry fetched from a shared tier to the tiers before that
    /// one in the chain (the number given), which lacked it.
    Backfill(Key, usize),
}

/// Which event of an entry the policy hears of.
#[derive(Clone, Copy)]
enum EntryEvent {
    Hit,
    Inserted,
}

pub(crate) struct Worker {
    sender: Option<SyncSender<Message>>,
    thread: Option<JoinHandle<()>>,
}

impl Worker {
    /// Starts the worker's thread; fails only if the system refuses a thread.
    pub(crate) fn start(namespace: Arc<Namespace>, policy: Arc<Mutex<PolicyRuntime>>, host: HostSettings) -> std::io::Result<Worker> {
        let (sender, receiver) = mpsc::sync_channel(host.event_queue_size.max(1));
        let thread = std::thread::Builder::new()
            .name("capcache-worker".into())
            .spawn(move || run(receiver, &namespace, &policy, &host))?;
        Ok(Worker { sender: Some(sender), thread: Some(thread) })
    }

    /// Tells the policy of a hit, without waiting; `false` if the queue was
    /// full and the event dropped.
    pub(crate) fn hit(&self, key: Key, raw: bool) -> bool {
        self.offer(Message::Hit(key, raw)).is_ok()
    }

    /// Backfills the first `tiers` shared tiers with `key`'s entry, without
    /// waiting; `false` if the queue was full.
    pub(crate) fn backfill(&self, key: Key, tiers: usize) -> bool {
        self.offer(Message::Backfill(key, tiers)).is_ok()
    }

    /// Tells the policy of an insert, without waiting; `false` if dropped.
    pub(crate) fn inserted(&self, key: Key) -> bool {
        self.offer(Message::Inserted(key)).is_ok()
    }

    /// Queues a value to make and store; hands `produce` back if the queue is
    /// full, for the caller to run itself (a miss's artifact is never lost).
    pub(crate) fn store_deferred(&self, key: Key, produce: Produce, cost_us: u64, landed: Option<Landed>) -> Result<(), (Produce, Option<Landed>)> {
        match self.offer(Message::Store(key, produce, cost_us, landed)) {
            Ok(()) => Ok(()),
            Err(Message::Store(_, produce, _, landed)) => Err((produce, landed)),
            Err(_) => unreachable!("offer hands back what it was given"),
        }
    }

    /// Starts the policy on the worker, without waiting, unless it has
    /// started (or is being called): a miss calls this before computing its
    /// value, so that `admit` finds the policy running.
    pub(crate) fn start_policy(&self, policy: &Mutex<PolicyRuntime>) {
        if policy.try_lock().is_some_and(|p| !p.is_started()) {
            let _ = self.offer(Message::StartPolicy);
        }
    }

    /// Waits until every message queued so far is handled.
    pub(crate) fn flush(&self) {
        self.request(Message::Flush);
    }

    /// Runs the maintenance pass after what is queued, and waits for its
    /// report; `None` if it did not run or the policy failed.
    pub(crate) fn maintain(&self) -> Option<MaintainReport> {
        self.request(Message::Maintain).flatten()
    }

    /// Queues a message without waiting, or hands it back.
    fn offer(&self, message: Message) -> Result<(), Message> {
        match &self.sender {
            Some(sender) => sender.try_send(message).map_err(|e| match e {
                TrySendError::Full(message) | TrySendError::Disconnected(message) => message,
            }),
            None => Err(message),
        }
    }

    /// Queues a request and waits for its answer.
    fn request<R>(&self, make: impl FnOnce(SyncSender<R>) -> Message) -> Option<R> {
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

/// Whether the policy has started, or is being called (and so starting).
fn policy_started(policy: &Mutex<PolicyRuntime>) -> bool {
    policy.try_lock().is_none_or(|p| p.is_started())
}

fn run(receiver: Receiver<Message>, namespace: &Namespace, policy: &Mutex<PolicyRuntime>, host: &HostSettings) {
    let opened = Instant::now();
    while let Ok(first) = receiver.recv() {
        let mut batch = vec![first];
        batch.extend(receiver.try_iter());
        // Hits alone do not start a policy early in the cache's life: wait
        // for the process to go on (or for it to close the cache).
        let mut closing = false;
        while batch.iter().all(|m| matches!(m, Message::Hit(..))) && !policy_started(policy) {
            let left = HITS_ALONE_WAIT.saturating_sub(opened.elapsed());
            if left.is_zero() {
                break;
            }
            match receiver.recv_timeout(left) {
                Ok(message) => {
                    batch.push(message);
                    batch.extend(receiver.try_iter());
                }
                Err(RecvTimeoutError::Timeout) => break,
                Err(RecvTimeoutError::Disconnected) => {
                    closing = batch.iter().all(|m| matches!(m, Message::Hit(_, true)));
                    break;
                }
            }
        }
        // All hits of the batch go to the journal in one append.
        let hits: Vec<_> = batch
            .iter()
            .filter_map(|e| match e {
                Message::Hit(key, _) => Some((usage::id_of(key), Some(1))),
                _ => None,
            })
            .collect();
        if !namespace.read_only
            && let Err(e) = Usage::append(namespace.store.namespace_dir(), &hits)
        {
            tracing::warn!("cannot record usage in {}: {e}", namespace.store.path().display());
        }
        for message in batch {
            match message {
                Message::Hit(key, _) => {
                    if !namespace.read_only {
                        let _ = namespace.store.touch_entry(&key);
                    }
                    if closing {
                        Stats::bump(&namespace.stats.events_dropped);
                    } else {
                        handle_entry_event(namespace, policy, &key, EntryEvent::Hit);
                    }
                }
                Message::StartPolicy => policy.lock().start_ahead(),
                Message::Backfill(key, tiers) => {
                    let _ = namespace.upload_to(&key, tiers);
                }
                Message::Inserted(key) => handle_entry_event(namespace, policy, &key, EntryEvent::Inserted),
                Message::Store(key, produce, cost_us, landed) => {
                    let stored = produce().is_some_and(|value| {
                        namespace.admit_and_write(policy, host, &key, &value, cost_us, AdmitWait::UntilFree) == Offered::Stored
                    });
                    if let Some(landed) = landed {
                        landed();
                    }
                    if stored {
                        handle_entry_event(namespace, policy, &key, EntryEvent::Inserted);
                    }
                }
                Message::Flush(reply) => {
                    let _ = reply.send(());
                }
                Message::Maintain(reply) => {
                    let _ = reply.send(maintain(namespace, &mut policy.lock()));
                }
            }
        }
    }
}

fn handle_entry_event(namespace: &Namespace, policy: &Mutex<PolicyRuntime>, key: &Key, event: EntryEvent) {
    // Gone or replaced meanwhile: nothing to tell the policy.
    let Ok(meta) = namespace.entry_meta(&key.name()) else { return };
    let mut policy = policy.lock();
    let actions = match event {
        EntryEvent::Hit => policy.on_hit(&meta),
        EntryEvent::Inserted => policy.on_insert(&meta),
    };
    if namespace.read_only {
        return;
    }
    let mut share = false;
    for action in actions {
        match action {
            Action::Recode(codec) => recode(namespace, key, codec_from_wit(codec)),
            Action::Remove => {
                if namespace.remove_entry(key).is_ok() {
                    Stats::bump(&namespace.stats.removed);
                }
            }
            Action::Maintain => {
                maintain(namespace, &mut policy);
            }
            // What reaches the shared tier is the policy's to say.
            Action::Share => share = true,
        }
    }
    // The upload waits on the network, so the policy is let go first: an
    // insert asking `admit` meanwhile is answered, not told the policy is busy.
    drop(policy);
    if share {
        let _ = namespace.upload(key);
    }
}

/// Re-encodes an entry, atomically; the entry keeps its creation time, and a
/// newer entry stored meanwhile is kept.
fn recode(namespace: &Namespace, key: &Key, codec: crate::entry::StoredCodec) {
    match namespace.store.recode_entry(key, codec) {
        Ok(true) => Stats::bump(&namespace.stats.recoded),
        Ok(false) => {}
        Err(e) => tracing::warn!("cannot re-encode entry {}: {e}", key.name()),
    }
}

/// Runs the policy's maintenance pass, then compacts the usage journal if it
/// has grown.
pub(crate) fn maintain(namespace: &Namespace, policy: &mut PolicyRuntime) -> Option<MaintainReport> {
    if namespace.read_only {
        return None;
    }
    let report = policy.maintain()?;
    if report.ran {
        Stats::bump(&namespace.stats.maintain_runs);
        tracing::info!(policy = policy.name(), "maintenance: {}", report.summary);
        // Manifests whose artifacts the pass evicted go with them.
        match namespace.store.prune_manifests() {
            Ok(0) => {}
            Ok(n) => tracing::debug!("{n} direct-mode manifests of evicted artifacts removed"),
            Err(e) => tracing::warn!("cannot list direct-mode manifests: {e}"),
        }
        let dir = namespace.store.namespace_dir();
        let large = dir.metadata(usage::JOURNAL).map(|m| m.len() > usage::COMPACT_AT).unwrap_or(false);
        if large {
            // Compaction keeps the records of the entries listed: a listing
            // that failed would drop every entry's usage, so it skips instead.
            // A set of the ids alone: a million entries' names would be tens
            // of megabytes more.
            let mut live = std::collections::HashSet::new();
            match namespace.store.for_each_entry_key(|key| {
                live.insert(usage::id_of(key));
            }) {
                Ok(()) => {
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
