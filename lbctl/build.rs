//! Builds the kernel programs (`lb-ebpf`) for the BPF target with aya-build (nightly,
//! `-Z build-std=core`, bpf-linker with `--btf`) and leaves the object in `OUT_DIR/lb-ebpf`,
//! which `datapath::loader` embeds. `cargo xtask setup` installs what this needs.
//!
//! `AYA_BUILD_SKIP=1` skips the eBPF build (an empty object is embedded): handy for editing
//! user-space code; such a binary refuses to load the datapath with a clear error.
include!("build_ebpf.rs");

fn main() -> anyhow::Result<()> {
    build_lb_ebpf(&[])
}
