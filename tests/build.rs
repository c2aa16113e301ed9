//! Builds a second kernel object for the upgrade tests (`tests/upgrade.rs`): `lb-ebpf` with the
//! feature `test-variant-b` (every connect takes backend slot 1), left in `OUT_DIR/lb-ebpf`.
//! The agent loads it through its hidden `--object` flag; lbctl itself always embeds the
//! production object. `AYA_BUILD_SKIP=1` skips it (an empty file).
use std::{env, fs, path::PathBuf};

fn main() -> anyhow::Result<()> {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let skip = env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    if skip {
        println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
        fs::write(out_dir.join("lb-ebpf"), [])?;
        return Ok(());
    }
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let ebpf_dir = manifest_dir.join("../lb-ebpf").canonicalize()?;
    let common_dir = manifest_dir.join("../lb-common").canonicalize()?;
    println!("cargo:rerun-if-changed={}", common_dir.display());
    let ebpf_dir = ebpf_dir.to_str().expect("utf-8 path").to_owned();
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "lb-ebpf",
            root_dir: &ebpf_dir,
            features: &["test-variant-b"],
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
}
