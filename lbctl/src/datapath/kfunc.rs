//! Resolving the kernel function (kfunc) calls of the object before aya loads it.
//!
//! The socket iterators call `bpf_sock_destroy`, a kfunc (Linux 6.5+). bpf-linker 0.13 leaves
//! such a call as `call -1` (a BPF-to-BPF call, `src_reg = 1`) with a relocation against an
//! undefined symbol, and aya 0.14 resolves no kfuncs: it would fail the whole object with
//! "unknown function". So before loading, each call site becomes what a kfunc call is
//! (`src_reg = BPF_PSEUDO_KFUNC_CALL`, `imm` = the function's id in the kernel's BTF), or, on a
//! kernel without the function, `r0 = -EOPNOTSUPP`: the object, the datapath and the iterators
//! still load, and termination reports the error per socket.
//!
//! The relocation that remains points at a symbol with no section, so aya skips it.
use std::borrow::Cow;

use object::{Object as _, ObjectSection as _, ObjectSymbol as _, RelocationTarget};

/// The kfuncs the object may call.
pub const SOCK_DESTROY: &str = "bpf_sock_destroy";

const CALL: u8 = 0x85;
const BPF_PSEUDO_KFUNC_CALL: u8 = 2;
/// `r0 = imm` (BPF_ALU64 | BPF_MOV | BPF_K).
const MOV64_IMM_R0: u8 = 0xb7;
const EOPNOTSUPP: i32 = 95;

/// How the calls to one kfunc were resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resolution {
    /// The object does not call it.
    Unused,
    /// Calls go to the kernel function with this BTF id.
    Kernel { btf_id: u32, sites: usize },
    /// The kernel has no such function (or no BTF): calls return -EOPNOTSUPP. Why.
    Missing { reason: String, sites: usize },
}

impl Resolution {
    pub fn available(&self) -> bool {
        matches!(self, Self::Kernel { .. })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KfuncError {
    #[error("reading the kernel object: {0}")]
    Elf(#[from] object::Error),
    #[error("{name} is defined in the kernel object, not an external kernel function")]
    Defined { name: String },
    #[error("{section}+{offset:#x}: the relocation against {name} is not on a call instruction")]
    NotACall {
        name: String,
        section: String,
        offset: u64,
    },
}

/// Patches every call to `name` in `elf`. `btf_id`: the function's id in the running kernel's
/// BTF, or why there is none.
pub fn patch<'a>(
    elf: &'a [u8],
    name: &str,
    btf_id: Result<u32, String>,
) -> Result<(Cow<'a, [u8]>, Resolution), KfuncError> {
    let sites = call_sites(elf, name)?;
    if sites.is_empty() {
        return Ok((Cow::Borrowed(elf), Resolution::Unused));
    }
    let mut bytes = elf.to_vec();
    for &at in &sites {
        let insn = &mut bytes[at..at + 8];
        match &btf_id {
            Ok(id) => {
                insn[1] = (insn[1] & 0x0f) | (BPF_PSEUDO_KFUNC_CALL << 4);
                insn[2..4].copy_from_slice(&0i16.to_le_bytes());
                insn[4..8].copy_from_slice(&(*id as i32).to_le_bytes());
            }
            Err(_) => {
                insn[0] = MOV64_IMM_R0;
                insn[1] = 0;
                insn[2..4].copy_from_slice(&0i16.to_le_bytes());
                insn[4..8].copy_from_slice(&(-EOPNOTSUPP).to_le_bytes());
            }
        }
    }
    let resolution = match btf_id {
        Ok(btf_id) => Resolution::Kernel {
            btf_id,
            sites: sites.len(),
        },
        Err(reason) => Resolution::Missing {
            reason,
            sites: sites.len(),
        },
    };
    Ok((Cow::Owned(bytes), resolution))
}

/// Test hook: while this environment variable is set, every kfunc counts as missing, as on a
/// kernel older than 6.5, so tests can check that the datapath works without them.
pub const HIDE_KFUNCS_ENV: &str = "LBCTL_TEST_HIDE_KFUNCS";

/// The id of kernel function `name` in the running kernel's BTF.
pub fn kernel_btf_id(name: &str) -> Result<u32, String> {
    if std::env::var_os(HIDE_KFUNCS_ENV).is_some() {
        return Err(format!(
            "{name} is hidden by {HIDE_KFUNCS_ENV} (a test hook)"
        ));
    }
    let btf = aya::Btf::from_sys_fs().map_err(|e| format!("reading the kernel's BTF: {e}"))?;
    btf.id_by_type_name_kind(name, aya_obj::btf::BtfKind::Func)
        .map_err(|e| format!("the kernel has no function {name} in its BTF: {e}"))
}

/// File offsets of the call instructions that target the undefined symbol `name`.
fn call_sites(elf: &[u8], name: &str) -> Result<Vec<usize>, KfuncError> {
    let file = object::File::parse(elf)?;
    let Some(symbol) = file.symbols().find(|s| s.name() == Ok(name)) else {
        return Ok(Vec::new());
    };
    if !symbol.is_undefined() {
        return Err(KfuncError::Defined {
            name: name.to_owned(),
        });
    }
    let mut sites = Vec::new();
    for section in file.sections() {
        let Some((file_offset, size)) = section.file_range() else {
            continue;
        };
        for (offset, relocation) in section.relocations() {
            if relocation.target() != RelocationTarget::Symbol(symbol.index()) {
                continue;
            }
            let at = file_offset + offset;
            if offset + 8 > size || elf.get(at as usize) != Some(&CALL) {
                return Err(KfuncError::NotACall {
                    name: name.to_owned(),
                    section: section.name().unwrap_or("?").to_owned(),
                    offset,
                });
            }
            sites.push(at as usize);
        }
    }
    Ok(sites)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The embedded object calls the kfunc from both iterators, and both patches leave an
    /// object whose call sites read back as intended.
    #[test]
    fn patches_every_call_site_of_the_embedded_object() {
        let object = crate::datapath::Object::embedded().expect("built with the kernel object");
        let elf = object.bytes();
        let sites = call_sites(elf, SOCK_DESTROY).unwrap();
        assert!(
            sites.len() >= 2,
            "expected calls from iter/udp and iter/tcp: {sites:?}"
        );
        let (patched, resolution) = patch(elf, SOCK_DESTROY, Ok(4242)).unwrap();
        assert_eq!(
            resolution,
            Resolution::Kernel {
                btf_id: 4242,
                sites: sites.len()
            }
        );
        for &at in &sites {
            assert_eq!(patched[at], CALL);
            assert_eq!(patched[at + 1] >> 4, BPF_PSEUDO_KFUNC_CALL);
            assert_eq!(
                i32::from_le_bytes(patched[at + 4..at + 8].try_into().unwrap()),
                4242
            );
        }
        let (patched, resolution) = patch(elf, SOCK_DESTROY, Err("old kernel".into())).unwrap();
        assert!(!resolution.available());
        for &at in &sites {
            assert_eq!(patched[at], MOV64_IMM_R0);
            assert_eq!(
                i32::from_le_bytes(patched[at + 4..at + 8].try_into().unwrap()),
                -EOPNOTSUPP
            );
        }
        // Nothing else changed.
        let changed = elf
            .iter()
            .zip(patched.iter())
            .filter(|(a, b)| a != b)
            .count();
        assert!(changed <= sites.len() * 8);
    }

    #[test]
    fn an_object_without_the_symbol_is_left_alone() {
        let object = crate::datapath::Object::embedded().expect("built with the kernel object");
        let (patched, resolution) = patch(object.bytes(), "no_such_kfunc", Ok(1)).unwrap();
        assert_eq!(resolution, Resolution::Unused);
        assert!(matches!(patched, Cow::Borrowed(_)));
    }
}
