#!/usr/bin/env python3
"""Where a loaded BPF program's JIT code came from: for the program with id ID, prints one
line per line-info record, "JITED_OFFSET XLATED_INSN" (hex offset into the JIT image, index of
the translated instruction), and writes the JIT image to IMAGE when given (for objdump).

    tests/bpf-jit-lines.py ID [IMAGE]        (root: the kernel shows JIT addresses to root only)

bpftool prints the same with `dump jited ... linum` when it is built with libbfd; Debian's is
not. tests/kernel-time.sh uses this with PROFILE=1 to put perf samples inside a program next to
the source line of `bpftool prog dump xlated`.
"""
import ctypes
import struct
import sys

BPF_PROG_GET_FD_BY_ID = 13
BPF_OBJ_GET_INFO_BY_FD = 15
SYS_BPF = 321  # x86_64
INFO_SIZE = 232  # sizeof(struct bpf_prog_info) in the 6.x UAPI (the kernel takes a shorter or longer one)

libc = ctypes.CDLL(None, use_errno=True)


def bpf(cmd, attr):
    buf = ctypes.create_string_buffer(attr, 128)
    fd = libc.syscall(SYS_BPF, cmd, buf, 128)
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"bpf(cmd {cmd}) failed")
    return fd


def prog_info(fd, info):
    bpf(BPF_OBJ_GET_INFO_BY_FD, struct.pack("IIQ", fd, INFO_SIZE, ctypes.addressof(info)))


def main():
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__)
    prog_id = int(sys.argv[1])
    fd = bpf(BPF_PROG_GET_FD_BY_ID, struct.pack("I", prog_id))
    info = ctypes.create_string_buffer(INFO_SIZE)
    prog_info(fd, info)
    jited_len = struct.unpack_from("I", info, 16)[0]
    nr_ksyms = struct.unpack_from("I", info, 104)[0]
    nr_lines, = struct.unpack_from("I", info, 148)
    nr_jited_lines, = struct.unpack_from("I", info, 168)
    line_rec, jited_rec = struct.unpack_from("II", info, 172)
    if jited_len == 0 or nr_ksyms == 0 or nr_jited_lines == 0:
        sys.exit(f"bpf-jit-lines: program {prog_id} has no JIT image or no line info (not root?)")

    image = ctypes.create_string_buffer(jited_len)
    ksyms = (ctypes.c_uint64 * nr_ksyms)()
    lines = ctypes.create_string_buffer(nr_lines * line_rec)
    jited_lines = ctypes.create_string_buffer(nr_jited_lines * jited_rec)
    ctypes.memset(info, 0, INFO_SIZE)
    struct.pack_into("I", info, 16, jited_len)
    struct.pack_into("Q", info, 24, ctypes.addressof(image))
    struct.pack_into("I", info, 104, nr_ksyms)
    struct.pack_into("Q", info, 112, ctypes.addressof(ksyms))
    struct.pack_into("I", info, 148, nr_lines)
    struct.pack_into("Q", info, 152, ctypes.addressof(lines))
    struct.pack_into("Q", info, 160, ctypes.addressof(jited_lines))
    struct.pack_into("I", info, 168, nr_jited_lines)
    struct.pack_into("III", info, 172, line_rec, jited_rec, 0)
    prog_info(fd, info)

    if len(sys.argv) == 3:
        with open(sys.argv[2], "wb") as out:
            out.write(image.raw)
    # One main function (the programs inline everything): the image starts at its symbol.
    start = ksyms[0]
    for i in range(min(nr_lines, nr_jited_lines)):
        insn_off, = struct.unpack_from("I", lines, i * line_rec)
        address, = struct.unpack_from("Q", jited_lines, i * jited_rec)
        print(f"{address - start:x} {insn_off}")


if __name__ == "__main__":
    main()
