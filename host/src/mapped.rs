//! Compiled code loaded from an entry's open file, mapped rather than read.

use wasmtime::component::Component;
use wasmtime::{Engine, Module, Result};

/// A component from the open file of a raw entry. wasmtime maps components
/// only by path; the `/proc/self/fd` path of the descriptor capcache opened
/// (through its capability) names that very file, so no one can swap it
/// between the check and the load. Without `/proc`, the file is read.
///
/// # Safety
/// As `Component::deserialize_file`: the file must hold code that this
/// engine's wasmtime produced (capcache checked its key and digest).
pub(crate) unsafe fn component_from_file(engine: &Engine, file: std::fs::File) -> Result<Component> {
    #[cfg(unix)]
    {
        use std::os::fd::AsRawFd;
        let path = format!("/proc/self/fd/{}", file.as_raw_fd());
        if std::path::Path::new(&path).exists() {
            // SAFETY: the path names the very file the caller vouched for
            // (our own descriptor), so the caller's contract is
            // deserialize_file's.
            let component = unsafe { Component::deserialize_file(engine, &path) };
            drop(file);
            return component;
        }
    }
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut { file }, &mut bytes)?;
    // SAFETY: the file's bytes, which the caller vouched for.
    unsafe { Component::deserialize(engine, &bytes) }
}

/// A module from the open file of a raw entry, mapped by wasmtime. Where
/// the system refuses the mapping (Wine cannot make a file's pages
/// read-only: "failed change pages to `PAGE_READONLY`"), the file is read
/// instead: a hit that cannot map still loads.
///
/// # Safety
/// As `Module::deserialize_open_file`.
pub(crate) unsafe fn module_from_file(engine: &Engine, file: std::fs::File) -> Result<Module> {
    #[cfg(windows)]
    {
        let mut file = file;
        let mapped = match file.try_clone() {
            // SAFETY: the caller's contract is deserialize_open_file's.
            Ok(handle) => unsafe { Module::deserialize_open_file(engine, handle) },
            Err(e) => Err(e.into()),
        };
        match mapped {
            Ok(module) => Ok(module),
            Err(e) => {
                tracing::debug!("cannot map a cached module ({e:#}): reading it");
                let mut bytes = Vec::new();
                std::io::Seek::rewind(&mut file)?;
                std::io::Read::read_to_end(&mut file, &mut bytes)?;
                // SAFETY: the file's bytes, which the caller vouched for.
                unsafe { Module::deserialize(engine, &bytes) }
            }
        }
    }
    #[cfg(not(windows))]
    // SAFETY: the caller's contract is deserialize_open_file's.
    unsafe {
        Module::deserialize_open_file(engine, file)
    }
}
