//! A running policy: its instance, under the limits (memory, tables,
//! instances, a deadline per call), the calls into it, and what a fault
//! costs.

use super::*;
use super::engine::ticks;

/// The longest maintenance summary kept from a policy.
const MAX_SUMMARY: usize = 64 << 10;

/// What a policy's store holds.
pub struct PolicyState {
    pub(super) view: PolicyView,
    limits: InstanceLimits,
}

/// The most core instances one policy may create. A component built by a
/// language toolchain brings one instance per WASI interface it stubs out
/// (componentize-py's `--stub-wasi` makes 38): the cap counts instances, not
/// authority, which the imports and the memory cap bound.
pub const MAX_POLICY_INSTANCES: usize = 64;
/// The most tables and linear memories one policy may create.
pub const MAX_POLICY_TABLES: usize = 16;
/// See [`MAX_POLICY_TABLES`].
pub const MAX_POLICY_MEMORIES: usize = 4;
/// What one table element is counted as against the memory limit: a
/// function reference's size.
const TABLE_ELEMENT_BYTES: usize = 8;

/// Bounds one policy instance as a whole: its linear memories and tables
/// together may hold at most `budget` bytes (`HostSettings::policy_memory_limit`),
/// however many memories it has. Growth past it traps, with a message that
/// names the setting.
pub(crate) struct InstanceLimits {
    budget: usize,
    used: usize,
}

impl InstanceLimits {
    pub(crate) fn new(budget: usize) -> InstanceLimits {
        InstanceLimits { budget, used: 0 }
    }

    fn grow(&mut self, current: usize, desired: usize, what: &str) -> wasmtime::Result<bool> {
        let after = (self.used - current.min(self.used)).saturating_add(desired);
        if after > self.budget {
            wasmtime::bail!(
                "the policy's {what} would bring it to {after} bytes, over its memory limit of {} bytes \
                 (HostSettings::policy_memory_limit; [cache.host] policy-memory-limit)",
                self.budget
            );
        }
        self.used = after;
        Ok(true)
    }
}

impl ResourceLimiter for InstanceLimits {
    fn memory_growing(&mut self, current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        self.grow(current, desired, "memories")
    }

    fn table_growing(&mut self, current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        self.grow(current.saturating_mul(TABLE_ELEMENT_BYTES), desired.saturating_mul(TABLE_ELEMENT_BYTES), "tables")
    }

    fn instances(&self) -> usize {
        MAX_POLICY_INSTANCES
    }

    fn tables(&self) -> usize {
        MAX_POLICY_TABLES
    }

    fn memories(&self) -> usize {
        MAX_POLICY_MEMORIES
    }
}

struct Live {
    store: Store<PolicyState>,
    bindings: PolicyWorld,
}

/// When a policy starts: its code loaded (or compiled), an instance made,
/// `configure` called.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StartAt {
    /// Before [`PolicyRuntime::start`] returns: its errors are the caller's.
    Now,
    /// At the first call into it, on whichever thread makes it (for a
    /// policy and settings that started well before: see [`known_good`]).
    FirstCall,
}

/// A running policy, re-made after any fault.
pub(crate) struct PolicyRuntime {
    name: String,
    /// The policy and where its compiled code is kept, until its code is
    /// prepared.
    source: Option<(Policy, Option<Arc<EntryStore>>)>,
    /// Its code, linked; `None` until prepared.
    pre: Option<PolicyWorldPre<PolicyState>>,
    /// Which compiler made `pre`'s code.
    code: PolicyCode,
    /// The policy's digest, under which this process keeps its best code;
    /// taken when its code is prepared.
    digest: [u8; 32],
    settings: Vec<Setting>,
    backend: Arc<dyn ViewBackend>,
    host: HostSettings,
    live: Option<Live>,
    /// What each call cost, when someone asked (the policy simulator).
    record: Option<CallRecord>,
}

/// What calls into a policy cost and how they failed, per export.
#[derive(Debug, Default, Clone)]
pub(crate) struct CallRecord {
    /// Wall time of each call, by export.
    pub(crate) times: std::collections::BTreeMap<&'static str, Vec<Duration>>,
    /// Calls stopped at their deadline.
    pub(crate) deadline_hits: u64,
    /// The first faults' reasons (at most [`CallRecord::KEPT_FAULTS`]), with the export.
    pub(crate) faults: Vec<(&'static str, String)>,
    /// Every fault, of any kind.
    pub(crate) fault_count: u64,
}

impl CallRecord {
    const KEPT_FAULTS: usize = 16;
}

impl PolicyRuntime {
    /// The policy, with its settings, under the host's bounds. With
    /// [`StartAt::Now`], instantiates and configures it: a refusal of the
    /// settings or a fault is an error for the user. With
    /// [`StartAt::FirstCall`], does nothing more: the first call does it, and
    /// its failure is that call's fault.
    pub(crate) fn start(
        policy: &Policy,
        settings: &[(String, String)],
        backend: Arc<dyn ViewBackend>,
        host: HostSettings,
        code: Option<&Arc<EntryStore>>,
        at: StartAt,
    ) -> Result<PolicyRuntime, Error> {
        let mut runtime = PolicyRuntime {
            name: policy.name.clone(),
            source: Some((policy.clone(), code.cloned())),
            pre: None,
            code: PolicyCode::Optimized,
            digest: [0; 32],
            settings: settings.iter().map(|(key, value)| Setting { key: key.clone(), value: value.clone() }).collect(),
            backend,
            host,
            live: None,
            record: None,
        };
        if at == StartAt::FirstCall {
            return Ok(runtime);
        }
        match runtime.instantiate() {
            Ok(live) => runtime.live = Some(live),
            Err(StartError::Settings(SettingsError::UnknownKey(key))) => {
                return Err(Error::UnknownSetting { policy: runtime.name, key });
            }
            Err(StartError::Settings(SettingsError::InvalidValue(s))) => {
                return Err(Error::InvalidSetting { policy: runtime.name, key: s.key, value: s.value, expected: s.expected });
            }
            Err(StartError::Fault(e)) => {
                let reason = describe_fault(&e, runtime.host.configure_deadline);
                return Err(Error::PolicyFault { policy: runtime.name, reason });
            }
            Err(StartError::Code(e)) => return Err(e),
        }
        Ok(runtime)
    }

    /// Whether the policy's code is prepared (it was started at least once).
    pub(crate) fn is_started(&self) -> bool {
        self.pre.is_some()
    }

    /// Starts the policy now if no instance is running, ahead of the call
    /// that will need it; a failure is that call's fault, logged and counted
    /// as any.
    pub(crate) fn start_ahead(&mut self) {
        let _ = self.call("configure", Duration::ZERO, |_, _| Ok(()));
    }

    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// Which compiler made the code the policy runs now (its code is
    /// prepared first if it was not yet).
    pub(crate) fn code(&mut self) -> Result<PolicyCode, Error> {
        self.prepare()?;
        Ok(self.code)
    }

    /// Loads (or compiles) the policy's code, once.
    fn prepare(&mut self) -> Result<&PolicyWorldPre<PolicyState>, Error> {
        if self.pre.is_none() {
            let (policy, code) = self.source.as_ref().expect("the source is kept until the code is prepared");
            let (pre, code) = policy.prepare(code.as_ref())?;
            self.digest = policy.digest()?;
            self.code = code;
            self.pre = Some(pre);
            self.source = None;
        }
        Ok(self.pre.as_ref().expect("prepared above"))
    }

    fn instantiate(&mut self) -> Result<Live, StartError> {
        self.prepare().map_err(StartError::Code)?;
        // An instance made anew runs the best code this process has: the
        // optimized code, once its compilation in the background is done.
        if self.code == PolicyCode::Quick
            && let Some((pre, PolicyCode::Optimized)) = compiled().lock().get(&self.digest).cloned()
        {
            self.pre = Some(pre);
            self.code = PolicyCode::Optimized;
        }
        let pre = self.pre.as_ref().expect("prepared above");
        let limits = InstanceLimits::new(self.host.policy_memory_limit);
        let quota = StateQuota { files: self.host.max_state_files, bytes: self.host.max_state_bytes };
        let view = PolicyView::new(self.backend.clone(), self.name.clone(), quota);
        let mut store = Store::new(pre.engine(), PolicyState { view, limits });
        store.limiter(|state| &mut state.limits);
        store.set_epoch_deadline(ticks(self.host.configure_deadline));
        let bindings = pre.instantiate(&mut store).map_err(StartError::Fault)?;
        bindings
            .capcache_policy_policy()
            .call_configure(&mut store, &self.settings)
            .map_err(StartError::Fault)?
            .map_err(StartError::Settings)?;
        Ok(Live { store, bindings })
    }

    /// Calls into the policy with a deadline; `None` if it failed in any way.
    fn call<R>(
        &mut self,
        what: &'static str,
        deadline: Duration,
        f: impl FnOnce(&mut Store<PolicyState>, &PolicyWorld) -> wasmtime::Result<R>,
    ) -> Option<R> {
        let started = Instant::now();
        if self.live.is_none() {
            match self.instantiate() {
                Ok(live) => self.live = Some(live),
                Err(e) => {
                    let reason = match e {
                        StartError::Fault(e) => describe_fault(&e, self.host.configure_deadline),
                        StartError::Settings(e) => format!("settings refused: {e:?}"),
                        StartError::Code(e) => e.to_string(),
                    };
                    self.fault(what, started, &reason);
                    return None;
                }
            }
        }
        let live = self.live.as_mut().unwrap();
        live.store.data_mut().view.forget_call_state();
        live.store.set_epoch_deadline(ticks(deadline));
        let result = f(&mut live.store, &live.bindings);
        live.store.data_mut().view.forget_call_state();
        if let Some(record) = &mut self.record {
            record.times.entry(what).or_default().push(started.elapsed());
            if let Err(e) = &result
                && e.downcast_ref::<wasmtime::Trap>() == Some(&wasmtime::Trap::Interrupt)
            {
                record.deadline_hits += 1;
            }
        }
        match result {
            Ok(result) => Some(result),
            Err(e) => {
                self.live = None;
                tracing::debug!(policy = %self.name, call = what, "the policy's fault in full: {e:?}");
                self.fault(what, started, &describe_fault(&e, deadline));
                None
            }
        }
    }

    /// Starts keeping a [`CallRecord`] of every call from now on.
    pub(crate) fn record_calls(&mut self) {
        self.record = Some(CallRecord::default());
    }

    /// The calls recorded since [`PolicyRuntime::record_calls`].
    pub(crate) fn call_record(&self) -> Option<&CallRecord> {
        self.record.as_ref()
    }

    fn fault(&mut self, what: &'static str, started: Instant, reason: &str) {
        if let Some(record) = &mut self.record {
            record.fault_count += 1;
            if record.faults.len() < CallRecord::KEPT_FAULTS {
                record.faults.push((what, reason.to_string()));
            }
        }
        Stats::bump(&self.backend.stats().policy_faults);
        tracing::warn!(
            policy = %self.name,
            call = what,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "policy failed; its call counts as declined (nothing stored, no action taken) and it is made anew: {reason}"
        );
    }

    /// On a miss: store or not, and how; `None` if the policy failed (and
    /// then nothing is stored).
    pub(crate) fn admit(&mut self, candidate: &Candidate) -> Option<Admission> {
        let deadline = self.host.admit_deadline;
        self.call("admit", deadline, |store, b| b.capcache_policy_policy().call_admit(store, candidate))
    }

    pub(crate) fn on_hit(&mut self, entry: &EntryMeta) -> Vec<Action> {
        let deadline = self.host.event_deadline;
        let actions = self.call("on-hit", deadline, |store, b| b.capcache_policy_policy().call_on_hit(store, entry));
        sanitize_actions(actions.unwrap_or_default())
    }

    pub(crate) fn on_insert(&mut self, entry: &EntryMeta) -> Vec<Action> {
        let deadline = self.host.event_deadline;
        let actions = self.call("on-insert", deadline, |store, b| b.capcache_policy_policy().call_on_insert(store, entry));
        sanitize_actions(actions.unwrap_or_default())
    }

    pub(crate) fn maintain(&mut self) -> Option<MaintainReport> {
        let deadline = self.host.maintain_deadline;
        let mut report = self.call("maintain", deadline, |store, b| b.capcache_policy_policy().call_maintain(store))?;
        // A policy's words are shown to people: keep them short.
        if report.summary.len() > MAX_SUMMARY {
            let mut end = MAX_SUMMARY;
            while !report.summary.is_char_boundary(end) {
                end -= 1;
            }
            report.summary.truncate(end);
            report.summary.push_str(" [truncated]");
        }
        // ...and unable to move the cursor, recolour or retitle a terminal,
        // or forge log lines.
        report.summary = crate::view::printable(&report.summary);
        Some(report)
    }
}

impl Admit for Mutex<PolicyRuntime> {
    fn admit(&self, candidate: &Candidate, wait: AdmitWait) -> Decision {
        let policy = match wait {
            AdmitWait::AtMost(wait) => self.try_lock_for(wait),
            AdmitWait::UntilFree => Some(self.lock()),
        };
        match policy {
            Some(mut policy) => match policy.admit(candidate) {
                Some(admission) => Decision::Answered(admission),
                None => Decision::Failed,
            },
            None => {
                tracing::debug!("policy busy; the decision on {} goes to the worker", candidate.name);
                Decision::Busy
            }
        }
    }
}

/// Why a call into a policy failed, in a line for people: the root cause,
/// without wasmtime's backtrace of the policy's anonymous functions, and what
/// to do about the causes a policy author can fix.
fn describe_fault(e: &wasmtime::Error, deadline: Duration) -> String {
    if e.downcast_ref::<wasmtime::Trap>() == Some(&wasmtime::Trap::Interrupt) {
        return format!("it ran past its deadline of {} ms", deadline.as_millis());
    }
    let root = e.root_cause().to_string();
    if let Some(import) = root.strip_prefix("unknown import: `").and_then(|rest| rest.split('`').next()) {
        return format!(
            "it called {import}, and a policy is granted no WASI: use the view's `now` and `log` instead, and build \
             without WASI where the toolchain can (componentize-py --stub-wasi, componentize-js -d ...). A Rust panic \
             calls it too, to read RUST_BACKTRACE, before printing its message: call capcache_policy::log_panics() \
             in `configure` to have panics logged"
        );
    }
    match e.downcast_ref::<wasmtime::Trap>() {
        Some(trap) => format!("{trap}: {root}"),
        None => root,
    }
}

enum StartError {
    Settings(SettingsError),
    Fault(wasmtime::Error),
    /// Its code could not be loaded or compiled.
    Code(Error),
}

/// The name of the mark that `policy`, with `settings`, under `host`'s
/// bounds, started well in this cache before: a state file of the kept
/// compiled policies, named by a digest of all that (and of this capcache's
/// version).
fn known_good_mark(policy: &Policy, settings: &[(String, String)], host: &HostSettings) -> Result<String, Error> {
    use sha2::Digest;
    let mut hasher = sha2::Sha256::new();
    hasher.update(env!("CARGO_PKG_VERSION").as_bytes());
    hasher.update(policy.start_identity()?);
    for (key, value) in settings {
        for part in [key, value] {
            hasher.update((part.len() as u64).to_le_bytes());
            hasher.update(part.as_bytes());
        }
    }
    hasher.update((host.policy_memory_limit as u64).to_le_bytes());
    hasher.update((host.configure_deadline.as_nanos() as u64).to_le_bytes());
    let digest = hasher.finalize();
    Ok(format!("started-{}", digest[..16].iter().map(|b| format!("{b:02x}")).collect::<String>()))
}

/// Whether this policy, with these settings and bounds, started well in this
/// cache before. Then a cache can open without starting it: the settings
/// were checked, and whatever the first call meets is a fault as any other.
/// Starting is what a short-lived process that only hits would otherwise
/// pay most for.
pub(crate) fn known_good(code: &EntryStore, policy: &Policy, settings: &[(String, String)], host: &HostSettings) -> bool {
    known_good_mark(policy, settings, host).is_ok_and(|mark| code.file_info(Area::State, &mark).is_ok())
}

/// Marks this policy, settings and bounds as started well (see
/// [`known_good`]); a mark that cannot be written costs the next process a
/// start at open, nothing more.
pub(crate) fn mark_known_good(code: &EntryStore, policy: &Policy, settings: &[(String, String)], host: &HostSettings) {
    let Ok(mark) = known_good_mark(policy, settings, host) else { return };
    match code.create_exclusive(Area::State, &mark, b"") {
        Ok(()) => forget_oldest_marks(code),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => tracing::debug!("cannot mark the policy as started well: {e}"),
    }
}

/// The most marks of good starts kept: a host that changes its settings
/// often (a test harness) adds one each time; one forgotten costs a start at
/// open, once.
const MAX_KNOWN_GOOD_MARKS: usize = 64;

/// Removes the oldest marks beyond [`MAX_KNOWN_GOOD_MARKS`].
fn forget_oldest_marks(code: &EntryStore) {
    let Ok(names) = code.list_names(Area::State) else { return };
    let mut marks: Vec<(u64, String)> = names
        .into_iter()
        .filter(|name| name.starts_with("started-"))
        .filter_map(|name| code.file_info(Area::State, &name).ok().map(|info| (info.modified_ms, name)))
        .collect();
    if marks.len() <= MAX_KNOWN_GOOD_MARKS {
        return;
    }
    marks.sort_unstable();
    for (_, name) in &marks[..marks.len() - MAX_KNOWN_GOOD_MARKS] {
        let _ = code.remove(Area::State, name);
    }
}

/// A policy may answer an event with any list; the host acts on at most one
/// action of each kind, the first, and ignores the rest.
fn sanitize_actions(actions: Vec<Action>) -> Vec<Action> {
    let mut kept: Vec<Action> = Vec::new();
    for action in actions {
        let kind = std::mem::discriminant(&action);
        if !kept.iter().any(|a| std::mem::discriminant(a) == kind) {
            kept.push(action);
        }
        if kept.len() == 3 {
            break;
        }
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_memory_limit_holds_for_all_memories_and_tables_together() {
        let mib = 1 << 20;
        let mut limits = InstanceLimits::new(64 * mib);
        // Four memories of 16 MiB each fill the budget...
        for _ in 0..4 {
            assert!(limits.memory_growing(0, 16 * mib, None).unwrap());
        }
        // ...so no memory may grow further, nor any table be made.
        assert!(limits.memory_growing(16 * mib, 16 * mib + 65536, None).is_err());
        let e = limits.table_growing(0, 1, None).unwrap_err();
        assert!(e.to_string().contains("policy-memory-limit"), "{e}");
        // Growth in place counts only what is added.
        let mut limits = InstanceLimits::new(64 * mib);
        assert!(limits.memory_growing(0, 32 * mib, None).unwrap());
        assert!(limits.memory_growing(32 * mib, 48 * mib, None).unwrap());
        assert!(limits.table_growing(0, (16 * mib) / TABLE_ELEMENT_BYTES, None).unwrap());
        assert!(limits.memory_growing(48 * mib, 48 * mib + 1, None).is_err());
    }
}
