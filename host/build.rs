include!("build_guests.rs");

fn main() {
    let built = build_guests();
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR").unwrap());
    std::fs::copy(built.join("capcache_policy_default.wasm"), out_dir.join("default-policy.wasm"))
        .expect("the default policy component was not built");
    // The other policies are for the integration tests, which load them by path.
    println!("cargo:rustc-env=CAPCACHE_GUEST_DIR={}", built.display());
}
