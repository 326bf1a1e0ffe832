// A maintenance report with nothing done yet (included with `include!`, after
// `MaintainReport` is in scope from the including crate's own bindings).

fn empty_report(ran: bool, summary: String) -> MaintainReport {
    MaintainReport {
        ran,
        entries_seen: 0,
        evicted: 0,
        removed_from_future: 0,
        removed_temp_files: 0,
        bytes_freed: 0,
        entries_after: 0,
        bytes_after: 0,
        summary,
    }
}
