//! Settings of the host's mechanics (the policy's settings are its own).

use std::time::Duration;

/// Bounds the host puts on the cache and on its policy.
#[derive(Debug, Clone)]
pub struct HostSettings {
    /// Events (hits, inserts) queued for the policy's worker; more are dropped
    /// and counted, so a hit never waits. wasmtime's `worker-event-queue-size`.
    pub event_queue_size: usize,
    /// Bytes one policy instance may hold in its linear memories and tables
    /// together (however many memories it has); growth past it traps.
    pub policy_memory_limit: usize,
    /// Time the policy may take for `configure` (wall-clock time: the
    /// engine's epoch ticks on a thread of the host, and a call past its
    /// deadline traps).
    pub configure_deadline: Duration,
    /// ... for `admit`, on the caller's thread, on a miss.
    pub admit_deadline: Duration,
    /// ... for `on-hit` and `on-insert`, on the worker.
    pub event_deadline: Duration,
    /// ... for `maintain`, on the worker.
    pub maintain_deadline: Duration,
    /// How long a miss waits for the policy while the worker is using it
    /// (e.g. during a maintain) before handing the value to the worker,
    /// which stores it once the policy has admitted it. Nothing is stored
    /// that the policy did not admit.
    pub admit_wait: Duration,
    /// The largest value the cache stores.
    pub max_entry_size: u64,
    /// The largest module file the wasmtime adapter reads (`load_module_file`,
    /// `capcache compile`): a bound on what a mistaken path such as a device
    /// can cost. The largest real modules are tens of megabytes.
    pub max_module_size: u64,
    /// The most state files a policy may keep in its namespace: a policy's
    /// state is a few named counters and timestamps, and locks; past this,
    /// `write-state` and `create-state` of a new name (and taking a lock) are
    /// refused with `too-large`.
    pub max_state_files: u64,
    /// The most bytes the namespace's state files may hold together (each is
    /// at most 1 MiB); past this, a write that would grow them is refused
    /// with `too-large`.
    pub max_state_bytes: u64,
}

impl Default for HostSettings {
    fn default() -> Self {
        HostSettings {
            event_queue_size: 16,
            policy_memory_limit: 64 << 20,
            configure_deadline: Duration::from_secs(1),
            admit_deadline: Duration::from_millis(100),
            event_deadline: Duration::from_millis(250),
            maintain_deadline: Duration::from_secs(30),
            admit_wait: Duration::from_millis(20),
            max_entry_size: 4 << 30,
            max_module_size: 1 << 30,
            max_state_files: 256,
            max_state_bytes: 16 << 20,
        }
    }
}
