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
    )?;
    strip_dwarf(&out_dir.join("lb-ebpf"))
}

/// Removes the DWARF sections (`.debug_*` and their relocations) from the object: bpf-linker
/// needs them to emit BTF (`--btf`), but once linked nothing reads them: the loader and the
/// kernel use `.BTF` and `.BTF.ext` (kept), which give bpftool its field names and line info.
/// They were about 1 MB of the 1.2 MB object embedded in lbctl, which the loader's parse
/// leaves resident for the agent's life. Uses LLVM's objcopy, which `cargo xtask setup`
/// installs with LLVM 22 for bpf-linker.
fn strip_dwarf(object: &std::path::Path) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let candidates = [
        "/usr/lib/llvm-22/bin/llvm-objcopy",
        "llvm-objcopy-22",
        "llvm-objcopy",
    ];
    let mut tried = Vec::new();
    for tool in candidates {
        match std::process::Command::new(tool)
            .arg("--strip-debug")
            .arg(object)
            .status()
        {
            Ok(status) if status.success() => return Ok(()),
            Ok(status) => {
                anyhow::bail!("{tool} --strip-debug {} failed: {status}", object.display())
            }
            Err(e) => tried.push(format!("{tool}: {e}")),
        }
    }
    Err(anyhow::anyhow!(tried.join("; "))).context(
        "no llvm-objcopy to strip the eBPF object's DWARF (`cargo xtask setup` installs LLVM 22)",
    )
}
