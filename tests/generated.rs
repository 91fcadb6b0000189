//! The committed deployment files (the Lambda handler mains, functions/Cargo.toml's `[[bin]]`
//! section, template.yaml, the Vercel functions in vercel/api/ with vercel/Cargo.toml's
//! `[[bin]]` section and vercel/vercel.json) must be what the app's registry generates.

#[test]
fn generated_files_match_the_registry() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let layout = baton_deploy::Layout::discover(root).expect("the app's manifest");
    let drift = baton_deploy::check(root, &layout, &app::registry()).expect("the generator runs");
    let list: Vec<String> = drift.iter().map(ToString::to_string).collect();
    assert!(
        drift.is_empty(),
        "generated files drifted from the registry; run `cargo run -- generate`:\n  {}",
        list.join("\n  ")
    );
}
