//! Builds a second kernel object for the upgrade tests (`tests/upgrade.rs`): `lb-ebpf` with the
//! feature `test-variant-b` (every connect takes backend slot 1), left in `OUT_DIR/lb-ebpf`.
//! The agent loads it through its hidden `--object` flag; lbctl itself always embeds the
//! production object. `AYA_BUILD_SKIP=1` skips it (an empty file).
include!("../lbctl/build_ebpf.rs");

fn main() -> anyhow::Result<()> {
    build_lb_ebpf(&["test-variant-b"])
}
