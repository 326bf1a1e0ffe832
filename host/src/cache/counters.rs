//! The cache's counters, this process's and every process's, and a
//! benchmark's hook into the policy.

use super::*;

impl Cache {
    /// This process's counters since the cache was opened.
    pub fn stats(&self) -> StatsSnapshot {
        self.inner.as_ref().map(|i| i.namespace.stats.snapshot()).unwrap_or_default()
    }

    /// The counters of every process that used this namespace (as recorded
    /// when each closed its cache), plus this one's so far.
    pub fn lifetime_stats(&self) -> StatsSnapshot {
        let Some(inner) = &self.inner else { return StatsSnapshot::default() };
        let mut total = StatsSnapshot::load(inner.namespace.store.namespace_dir()).unwrap_or_else(|e| {
            tracing::warn!("cannot read statistics: {e}");
            StatsSnapshot::default()
        });
        total.add(&inner.namespace.stats.snapshot());
        total
    }

    /// Forgets the recorded counters (this process's too).
    pub fn zero_stats(&self) -> std::io::Result<()> {
        let Some(inner) = &self.inner else { return Ok(()) };
        let tiers = inner.namespace.remotes.iter().map(|r| r.stats());
        for counter in std::iter::once(&inner.namespace.stats).chain(tiers).flat_map(|stats| stats.all()) {
            counter.store(0, std::sync::atomic::Ordering::Relaxed);
        }
        let logs = std::iter::once(crate::stats::STATS_LOG.to_string()).chain(inner.namespace.remotes.iter().map(|r| r.stats_log()));
        for log in logs {
            match inner.namespace.store.namespace_dir().remove_file(&log) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        Ok(())
    }

    /// For benchmarks: calls the policy's `on-hit` for the stored entry
    /// `key` (or `admit` for a candidate of that name) `n` times, directly,
    /// as the worker does, and returns the time per call: the cost of one
    /// crossing into the sandbox and back, without the filesystem.
    #[doc(hidden)]
    pub fn time_policy_calls(&self, key: &[u8], n: u32, admit: bool) -> Option<std::time::Duration> {
        let inner = self.inner.as_ref()?;
        let key = Key::of(key);
        let meta = {
            inner.namespace.entry_meta(&key.name()).ok()?
        };
        let candidate = Candidate { name: key.name(), raw_size: meta.raw_size, cost_us: meta.cost_us };
        let mut policy = inner.policy.lock();
        let started = std::time::Instant::now();
        for _ in 0..n {
            if admit {
                std::hint::black_box(policy.admit(&candidate));
            } else {
                std::hint::black_box(policy.on_hit(&meta));
            }
        }
        Some(started.elapsed() / n.max(1))
    }
}
