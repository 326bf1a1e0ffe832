// Builds the policy components in `guest/` for wasm32-wasip2, with a cargo of
// their own and a target directory of their own. Kept apart from build.rs so
// that other build scripts can `include!` it.

/// Builds every guest crate and returns the directory holding their `.wasm`.
#[allow(dead_code)]
fn build_guests() -> std::path::PathBuf {
    use std::path::PathBuf;
    use std::process::Command;

    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let root = manifest_dir.parent().unwrap().to_path_buf();
    let guest = root.join("guest");
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|dir| if dir.is_absolute() { dir } else { root.join(dir) })
        .unwrap_or_else(|| root.join("target"))
        .join("guest");
    println!("cargo:rerun-if-changed={}", guest.display());
    println!("cargo:rerun-if-changed={}", root.join("wit").display());

    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .args(["build", "--release", "--target", "wasm32-wasip2", "--manifest-path"])
        .arg(guest.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir);
    // The outer build's flags are for the host, not for wasm.
    for var in ["RUSTFLAGS", "CARGO_ENCODED_RUSTFLAGS", "CARGO_BUILD_RUSTFLAGS", "CARGO_TARGET_DIR", "RUSTC_WORKSPACE_WRAPPER"] {
        command.env_remove(var);
    }
    let status = command.status().expect("cannot run cargo to build the policy components");
    if !status.success() {
        panic!(
            "building the policy components in {} failed (is the target installed? `rustup target add wasm32-wasip2`)",
            guest.display()
        );
    }
    target_dir.join("wasm32-wasip2").join("release")
}
