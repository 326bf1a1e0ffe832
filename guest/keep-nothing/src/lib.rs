//! A policy that keeps nothing: every miss is computed and not stored, and a
//! maintenance pass removes whatever an earlier policy left. It exists to show
//! that swapping the policy changes the cache's behaviour with no change to the
//! host.

use capcache_policy::{Action, Admission, Candidate, EntryMeta, EntryOrder, MaintainReport, Policy, Setting, SettingsError, view};

struct KeepNothing;

impl Policy for KeepNothing {
    fn configure(settings: Vec<Setting>) -> Result<(), SettingsError> {
        capcache_policy::log_panics();
        // It has no settings: any key is unknown.
        match settings.first() {
            Some(setting) => Err(setting.unknown()),
            None => Ok(()),
        }
    }

    fn admit(_candidate: Candidate) -> Admission {
        Admission::Skip
    }

    fn on_hit(_entry: EntryMeta) -> Vec<Action> {
        vec![Action::Remove]
    }

    fn on_insert(_entry: EntryMeta) -> Vec<Action> {
        vec![Action::Remove]
    }

    fn maintain() -> MaintainReport {
        let mut report = MaintainReport::started();
        loop {
            // Always the first page: what it lists is removed.
            let page = match view::list_entries(EntryOrder::Name, None, 1024) {
                Ok(page) => page,
                Err(e) => return MaintainReport::skipped(format!("cannot list entries: {e:?}")),
            };
            let mut removed_any = false;
            for entry in &page.entries {
                report.saw(entry);
                removed_any |= report.evict(entry);
            }
            if page.next.is_none() || !removed_any {
                break;
            }
        }
        report.summary = format!("removed {} entries", report.evicted);
        report
    }
}

capcache_policy::export_policy!(KeepNothing);
