//! The translation a forward hook records ([`RevNat`]), built as the words the programs store.
//!
//! A `RevNat` built field by field in a program goes through the stack on its way to the map,
//! and LLVM zeroes its 3-byte `pad` with a call to a `memset` subprogram and copies it byte by
//! byte: a function call and some 40 instructions on every service connect. [`Translation`]
//! has the same bytes as words (checked at compile time below), so it stays in registers and
//! lands in the map as twelve 4-byte stores.
use core::mem::{align_of, offset_of, size_of};

use lb_common::RevNat;

use crate::sock::Addr;

/// A [`RevNat`] as 4-byte words: the same layout, byte for byte.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Translation {
    pub service_address: Addr,
    pub backend_address: Addr,
    /// `service_port` in the low half, `backend_port` in the high half (both network order).
    ports: u32,
    /// `proto` in the low byte; the three bytes of `pad` (zero) above it.
    proto: u32,
    pub frontend_id: u32,
    pub backend_id: u32,
}

const _: () = {
    // The programs run little-endian (bpfel): the low half of a word is its first bytes.
    assert!(cfg!(target_endian = "little"));
    assert!(size_of::<Translation>() == size_of::<RevNat>());
    assert!(align_of::<Translation>() <= align_of::<RevNat>());
    assert!(offset_of!(RevNat, service_address) == offset_of!(Translation, service_address));
    assert!(offset_of!(RevNat, backend_address) == offset_of!(Translation, backend_address));
    assert!(offset_of!(RevNat, service_port) == offset_of!(Translation, ports));
    assert!(offset_of!(RevNat, backend_port) == offset_of!(Translation, ports) + 2);
    assert!(offset_of!(RevNat, proto) == offset_of!(Translation, proto));
    assert!(offset_of!(RevNat, pad) == offset_of!(Translation, proto) + 1);
    assert!(offset_of!(RevNat, frontend_id) == offset_of!(Translation, frontend_id));
    assert!(offset_of!(RevNat, backend_id) == offset_of!(Translation, backend_id));
};

impl Translation {
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        service_address: Addr,
        service_port: u16,
        backend_address: Addr,
        backend_port: u16,
        proto: u8,
        frontend_id: u32,
        backend_id: u32,
    ) -> Self {
        Translation {
            service_address,
            backend_address,
            ports: u32::from(service_port) | (u32::from(backend_port) << 16),
            proto: u32::from(proto),
            frontend_id,
            backend_id,
        }
    }

    /// A `RevNat` read as words: its addresses in four 4-byte loads each (read as its own type,
    /// a `[u8; 16]` is copied byte by byte).
    #[inline(always)]
    pub fn of(r: &RevNat) -> &Translation {
        // SAFETY: same size and layout, and `RevNat` is at least as aligned (checked above);
        // every bit pattern is a valid `Translation`.
        unsafe { &*(r as *const RevNat).cast::<Translation>() }
    }

    #[inline(always)]
    pub fn service_port(&self) -> u16 {
        self.ports as u16
    }

    #[inline(always)]
    pub fn proto(&self) -> u8 {
        self.proto as u8
    }

    #[inline(always)]
    pub fn backend_port(&self) -> u16 {
        (self.ports >> 16) as u16
    }

    /// Stores it whole into `dst`, a `RevNat` in a map value or socket storage.
    ///
    /// # Safety
    /// `dst` must be valid for a write of a `RevNat` and 4-byte aligned (every map value and
    /// socket storage is 8-byte aligned).
    #[inline(always)]
    pub unsafe fn write(&self, dst: *mut RevNat) {
        // SAFETY: same size and layout (checked above); alignment and validity by the caller.
        unsafe { *dst.cast::<Translation>() = *self };
    }
}
