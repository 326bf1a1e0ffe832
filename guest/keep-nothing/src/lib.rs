//! A policy that keeps nothing: every miss is computed and not stored, and a
//! maintenance pass removes whatever an earlier policy left. It exists to show
//! that swapping the policy changes the cache's behaviour with no change to the
//! host, and as a template for writing a policy.

wit_bindgen::generate!({
    world: "policy-world",
    path: "../../wit",
});

use capcache::policy::types::EntryMeta;
use capcache::policy::view;
use exports::capcache::policy::policy::{
    Action, Admission, Candidate, Guest, MaintainReport, Setting, SettingsError,
};

include!("../../common/report.rs");

struct KeepNothing;

impl Guest for KeepNothing {
    fn configure(settings: Vec<Setting>) -> Result<(), SettingsError> {
        // It has no settings: any key is unknown.
        match settings.into_iter().next() {
            Some(setting) => Err(SettingsError::UnknownKey(setting.key)),
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

    fn maintain(_now: u64) -> MaintainReport {
        let mut report = empty_report(true, String::new());
        loop {
            // Always the first page: what it lists is removed.
            let page = match view::list_entries(None, 1024) {
                Ok(page) => page,
                Err(e) => {
                    report.summary = format!("cannot list entries: {e:?}");
                    return report;
                }
            };
            let mut removed_any = false;
            for entry in &page.entries {
                report.entries_seen += 1;
                if view::remove_entry(&entry.name).is_ok() {
                    removed_any = true;
                    report.evicted += 1;
                    report.bytes_freed += entry.stored_size;
                } else {
                    report.entries_after += 1;
                    report.bytes_after += entry.stored_size;
                }
            }
            if page.next.is_none() || !removed_any {
                break;
            }
        }
        report.summary = format!("removed {} entries", report.evicted);
        report
    }
}

export!(KeepNothing);
