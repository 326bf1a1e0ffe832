//! The configuration parser never panics, whatever the text.
#![no_main]

#[path = "../../host/src/config.rs"]
#[allow(dead_code)]
mod config;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(config) = config::Config::parse(text, "fuzz") {
            let _ = config.policy_settings();
        }
    }
});
