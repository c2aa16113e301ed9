// Shared by lbctl/build.rs (the production object) and tests/build.rs (the upgrade tests'
// variant) through `include!`: build scripts cannot depend on a library of the workspace.

/// Builds `lb-ebpf` for the BPF target with aya-build (nightly, `-Z build-std=core`,
/// bpf-linker with `--btf`) with these cargo features, leaving the object in `OUT_DIR/lb-ebpf`.
/// `AYA_BUILD_SKIP=1` writes an empty file instead.
fn build_lb_ebpf(features: &[&str]) -> anyhow::Result<()> {
    use std::{env, fs, path::PathBuf};
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
            features,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
}
