//! The eBPF socket filter used when the live ports outgrow a classic BPF program: a tiny
//! hand-assembled program (the same header checks as the classic filter, then one lookup in a
//! 65 536-bit bitmap held in an `ARRAY` map of 2 048 32-bit words) loaded with the `bpf()`
//! system call, no library.
//!
//! Why hand-assembled rather than aya or libbpf: the program is 43 instructions with no loops
//! and one helper call, so the verifier accepts it on any kernel since 4.x; an eBPF toolchain
//! (a BPF target for rustc or clang, a loader crate and its build step) would be most of the
//! build for it. The instructions are written out below, one per line, with what each does.
//!
//! The bitmap is changed in place, never swapped: a new set is written in two passes, first
//! every word as `old | new` (nothing is removed), then every word as `new`; each word is one
//! map update (the kernel copies the 4 bytes; whichever version a packet sees, a port of both
//! sets is in it). So a port live in both the old and the new set is admitted at every moment.
//!
//! Privileges: creating the map and loading the program need CAP_BPF (or CAP_SYS_ADMIN) where
//! `kernel.unprivileged_bpf_disabled` is set (Debian's default), so [`Ebpf::load`] runs before
//! sesamed drops its privileges. The map is made mappable (`BPF_F_MMAPABLE`, Linux 5.5+) and
//! mapped then, so later updates are atomic stores into shared memory: no system call and no
//! privilege. Attaching the program to a socket sesamed owns needs none either. Without a
//! mapping (older kernels) updates go through `bpf()`, which kernels before 6.5 refuse to an
//! unprivileged process; sesamed then falls back to the range filter with a log line.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Mutex;

/// Words in the bitmap: 65 536 ports, 32 per word.
pub const WORDS: usize = 2048;

// bpf() commands, map and program types (linux/bpf.h).
const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_MAP_TYPE_ARRAY: u32 = 2;
const BPF_PROG_TYPE_SOCKET_FILTER: u32 = 1;
const BPF_PSEUDO_MAP_FD: u8 = 1;
const BPF_FUNC_MAP_LOOKUP_ELEM: i32 = 1;

/// One eBPF instruction (struct bpf_insn).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Insn {
    code: u8,
    /// dst in the low nibble, src in the high one.
    regs: u8,
    off: i16,
    imm: i32,
}

const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: (src << 4) | (dst & 0xf),
        off,
        imm,
    }
}

// Opcodes (linux/bpf_common.h, linux/bpf.h).
const MOV64_X: u8 = 0xbf; // BPF_ALU64 | BPF_MOV | BPF_X
const MOV64_K: u8 = 0xb7; // BPF_ALU64 | BPF_MOV | BPF_K
const AND64_K: u8 = 0x57;
const LSH64_K: u8 = 0x67;
const RSH64_K: u8 = 0x77;
const RSH64_X: u8 = 0x7f;
const ADD64_K: u8 = 0x07;
const LDX_W: u8 = 0x61; // BPF_LDX | BPF_MEM | BPF_W
const STX_W: u8 = 0x63; // BPF_STX | BPF_MEM | BPF_W
const LD_ABS_H: u8 = 0x28; // r0 = ntohs(*(u16 *)(skb->data + imm))
const LD_ABS_B: u8 = 0x30;
const LD_IND_H: u8 = 0x48; // r0 = ntohs(*(u16 *)(skb->data + src + imm))
const LD_IND_B: u8 = 0x50;
const LD_IMM64: u8 = 0x18;
const JEQ_K: u8 = 0x15;
const JNE_K: u8 = 0x55;
const JSET_K: u8 = 0x45;
const JA: u8 = 0x05;
const CALL: u8 = 0x85;
const EXIT: u8 = 0x95;

/// `offsetof(struct __sk_buff, protocol)`: skb->protocol, in network byte order.
const SKB_PROTOCOL: i16 = 16;

/// The program, with `map_fd` as its bitmap. Returns what it keeps of a packet: 65 535 bytes
/// (the whole packet) or 0 (dropped). A load past the end of the packet ends the program with
/// 0, as in classic BPF.
pub fn program(map_fd: RawFd) -> Vec<Insn> {
    let ipv4 = i32::from(0x0800u16.to_be());
    let ipv6 = i32::from(0x86ddu16.to_be());
    let snap = super::SNAPLEN as i32;
    // Jump offsets count from the next instruction; the layout is fixed, so they are written
    // out (and the tests run the program in the kernel).
    vec![
        /* 0 */ insn(MOV64_X, 6, 1, 0, 0), // r6 = skb (LD_ABS and LD_IND read it)
        /* 1 */ insn(LDX_W, 2, 6, SKB_PROTOCOL, 0), // r2 = skb->protocol
        /* 2 */ insn(JEQ_K, 2, 0, 2, ipv4), // → 5
        /* 3 */ insn(JEQ_K, 2, 0, 11, ipv6), // → 15
        /* 4 */ insn(JA, 0, 0, 34, 0), // → 39 drop
        // IPv4: no fragment past the first; r7 = header length; the protocol.
        /* 5 */
        insn(LD_ABS_H, 0, 0, 0, 6),
        /* 6 */ insn(JSET_K, 0, 0, 32, 0x1fff), // → 39 drop
        /* 7 */ insn(LD_ABS_B, 0, 0, 0, 0),
        /* 8 */ insn(AND64_K, 0, 0, 0, 0x0f),
        /* 9 */ insn(LSH64_K, 0, 0, 0, 2),
        /* 10 */ insn(MOV64_X, 7, 0, 0, 0),
        /* 11 */ insn(LD_ABS_B, 0, 0, 0, 9),
        /* 12 */ insn(JEQ_K, 0, 0, 11, 17), // UDP → 24
        /* 13 */ insn(JEQ_K, 0, 0, 5, 6), // TCP → 19
        /* 14 */ insn(JA, 0, 0, 24, 0), // → 39 drop
        // IPv6 without extension headers: r7 = 40.
        /* 15 */
        insn(MOV64_K, 7, 0, 0, 40),
        /* 16 */ insn(LD_ABS_B, 0, 0, 0, 6),
        /* 17 */ insn(JEQ_K, 0, 0, 6, 17), // UDP → 24
        /* 18 */ insn(JNE_K, 0, 0, 20, 6), // not TCP → 39 drop
        // TCP: SYN without ACK, then the port.
        /* 19 */ insn(LD_IND_B, 0, 7, 0, 13),
        /* 20 */ insn(AND64_K, 0, 0, 0, 0x12),
        /* 21 */ insn(JNE_K, 0, 0, 17, 0x02), // → 39 drop
        /* 22 */ insn(LD_IND_H, 0, 7, 0, 2), // r0 = destination port
        /* 23 */ insn(JA, 0, 0, 1, 0), // → 25
        // UDP: the port.
        /* 24 */ insn(LD_IND_H, 0, 7, 0, 2),
        // The bitmap: word port >> 5, bit port & 31.
        /* 25 */
        insn(MOV64_X, 8, 0, 0, 0), // r8 = port
        /* 26 */ insn(MOV64_X, 1, 0, 0, 0),
        /* 27 */ insn(RSH64_K, 1, 0, 0, 5),
        /* 28 */ insn(STX_W, 10, 1, -4, 0), // the key, on the stack
        /* 29 */ insn(MOV64_X, 2, 10, 0, 0),
        /* 30 */ insn(ADD64_K, 2, 0, 0, -4), // r2 = &key
        /* 31 */ insn(LD_IMM64, 1, BPF_PSEUDO_MAP_FD, 0, map_fd), // r1 = the map
        /* 32 */ insn(0, 0, 0, 0, 0),
        /* 33 */ insn(CALL, 0, 0, 0, BPF_FUNC_MAP_LOOKUP_ELEM),
        /* 34 */ insn(JEQ_K, 0, 0, 4, 0), // no word → 39 drop
        /* 35 */ insn(LDX_W, 0, 0, 0, 0), // r0 = the word
        /* 36 */ insn(AND64_K, 8, 0, 0, 31),
        /* 37 */ insn(RSH64_X, 0, 8, 0, 0),
        /* 38 */ insn(JSET_K, 0, 0, 2, 1), // the port's bit → 41 accept
        /* 39 */ insn(MOV64_K, 0, 0, 0, 0),
        /* 40 */ insn(EXIT, 0, 0, 0, 0),
        /* 41 */ insn(MOV64_K, 0, 0, 0, snap),
        /* 42 */ insn(EXIT, 0, 0, 0, 0),
    ]
}

/// The loaded program and its bitmap.
#[derive(Debug)]
pub struct Ebpf {
    prog: OwnedFd,
    map: OwnedFd,
    /// The map mapped into memory (`BPF_F_MMAPABLE`, Linux 5.5+): updates are plain atomic
    /// stores, with no system call and no privilege. `None`: updates go through `bpf()`.
    mapped: Option<Mapped>,
    /// What the map holds (sesamed is its only writer).
    words: Mutex<Vec<u32>>,
}

/// The bitmap's words in a shared mapping of the map.
#[derive(Debug)]
struct Mapped {
    ptr: std::ptr::NonNull<std::sync::atomic::AtomicU32>,
}

// SAFETY: the mapping is shared memory that is only ever accessed through atomics, from any
// thread; it stays mapped until `Mapped` is dropped.
unsafe impl Send for Mapped {}
// SAFETY: as above: every access is an atomic operation.
unsafe impl Sync for Mapped {}

/// An array map stores each value in an 8-byte slot (the value size rounded up to 8), the
/// value at its start.
const SLOT: usize = 8;
/// Bytes of the mapping: the slots, a whole number of pages (16 KiB).
const MAPPED_LEN: usize = WORDS * SLOT;

impl Mapped {
    fn new(map: &OwnedFd) -> io::Result<Mapped> {
        // SAFETY: a fresh shared mapping of the map's descriptor (valid, owned by the caller)
        // at an address the kernel chooses; nothing else refers to it yet.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                MAPPED_LEN,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                map.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = std::ptr::NonNull::new(ptr.cast()).ok_or_else(|| io::Error::other("mmap"))?;
        Ok(Mapped { ptr })
    }

    /// The word of index `i` (at the start of its slot).
    fn word(&self, i: usize) -> &std::sync::atomic::AtomicU32 {
        // SAFETY: the mapping holds MAPPED_LEN bytes, page-aligned (so aligned for AtomicU32,
        // which has u32's layout), and lives as long as `self`; it is only accessed through
        // atomics (the BPF program reads it concurrently).
        let all = unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), MAPPED_LEN / 4) };
        &all[i * (SLOT / 4)]
    }
}

impl Drop for Mapped {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `Mapped::new`, of that length, unmapped once; no
        // reference to it outlives `self`.
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), MAPPED_LEN);
        }
    }
}

/// `BPF_F_MMAPABLE` (linux/bpf.h).
const BPF_F_MMAPABLE: u32 = 1 << 10;

// SAFETY notes for the system calls: every attribute block is a `#[repr(C)]` struct that
// lives across the call, its exact size is passed, and the pointers it holds point at memory
// that lives across the call too.
fn sys_bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<RawFd> {
    // SAFETY: see above: `attr` is a valid, initialised `repr(C)` block of the given size.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            (attr as *mut T).cast::<libc::c_void>(),
            std::mem::size_of::<T>() as libc::c_uint,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as RawFd)
    }
}

#[repr(C)]
#[derive(Default)]
struct MapCreate {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
}

#[repr(C)]
#[derive(Default)]
struct MapUpdate {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

#[repr(C)]
#[derive(Default)]
struct ProgLoad {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
}

impl Ebpf {
    /// Creates the bitmap (all clear) and loads the program. Needs CAP_BPF or CAP_SYS_ADMIN
    /// on most systems: call it before dropping privileges.
    pub fn load() -> io::Result<Ebpf> {
        Self::load_with(true)
    }

    /// [`Ebpf::load`], mapping the bitmap when `mmap` (else updates go through `bpf()`).
    pub fn load_with(mmap: bool) -> io::Result<Ebpf> {
        let create = |flags| {
            let mut attr = MapCreate {
                map_type: BPF_MAP_TYPE_ARRAY,
                key_size: 4,
                value_size: 4,
                max_entries: WORDS as u32,
                map_flags: flags,
            };
            let fd = sys_bpf(BPF_MAP_CREATE, &mut attr)?;
            // SAFETY: the kernel just returned this descriptor to us; nothing else owns it.
            Ok::<_, io::Error>(unsafe { OwnedFd::from_raw_fd(fd) })
        };
        // A mappable map first (updates need no system call, hence no privilege, after the
        // drop: kernels before 6.5 refuse bpf() to an unprivileged process when
        // kernel.unprivileged_bpf_disabled is set); kernels before 5.5 lack it.
        let (map, mapped) = match create(if mmap { BPF_F_MMAPABLE } else { 0 }) {
            Ok(map) if !mmap => (map, None),
            Ok(map) => match Mapped::new(&map) {
                Ok(m) => (map, Some(m)),
                Err(_) => (map, None),
            },
            Err(_) => (create(0)?, None),
        };
        let insns = program(map.as_raw_fd());
        let license = c"GPL";
        let mut log = vec![0u8; 16 * 1024];
        let mut name = [0u8; 16];
        name[..10].copy_from_slice(b"sesame_pts");
        let mut load = ProgLoad {
            prog_type: BPF_PROG_TYPE_SOCKET_FILTER,
            insn_cnt: insns.len() as u32,
            insns: insns.as_ptr() as u64,
            license: license.as_ptr() as u64,
            log_level: 1,
            log_size: log.len() as u32,
            log_buf: log.as_mut_ptr() as u64,
            kern_version: 0,
            prog_flags: 0,
            prog_name: name,
        };
        let fd = match sys_bpf(BPF_PROG_LOAD, &mut load) {
            Ok(fd) => fd,
            Err(e) => {
                let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
                let text = String::from_utf8_lossy(&log[..end]);
                let last = text.lines().rev().find(|l| !l.trim().is_empty());
                return Err(match last {
                    Some(l) => io::Error::new(e.kind(), format!("{e}; verifier: {l}")),
                    None => e,
                });
            }
        };
        // SAFETY: as above, a descriptor the kernel just returned.
        let prog = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Ebpf {
            prog,
            map,
            mapped,
            words: Mutex::new(vec![0; WORDS]),
        })
    }

    /// Whether updates are stores into a mapping (no system call, no privilege).
    pub fn is_mapped(&self) -> bool {
        self.mapped.is_some()
    }

    fn write_word(&self, index: usize, word: u32) -> io::Result<()> {
        if let Some(m) = &self.mapped {
            m.word(index)
                .store(word, std::sync::atomic::Ordering::Release);
            return Ok(());
        }
        let key = index as u32;
        let mut update = MapUpdate {
            map_fd: self.map.as_raw_fd() as u32,
            _pad: 0,
            key: (&key as *const u32) as u64,
            value: (&word as *const u32) as u64,
            flags: 0,
        };
        sys_bpf(BPF_MAP_UPDATE_ELEM, &mut update).map(|_| ())
    }

    /// Makes `ports` (ascending or not) the admitted set: first the union of the old and the
    /// new set, then the new set alone. Returns the number of map writes.
    pub fn set(&self, ports: &[u16]) -> io::Result<usize> {
        let mut new = vec![0u32; WORDS];
        for &p in ports {
            new[usize::from(p >> 5)] |= 1 << (p & 31);
        }
        let mut words = self.words.lock().unwrap_or_else(|e| e.into_inner());
        let mut writes = 0;
        for i in 0..WORDS {
            let union = words[i] | new[i];
            if union != words[i] {
                self.write_word(i, union)?;
                words[i] = union;
                writes += 1;
            }
        }
        for i in 0..WORDS {
            if words[i] != new[i] {
                self.write_word(i, new[i])?;
                words[i] = new[i];
                writes += 1;
            }
        }
        Ok(writes)
    }

    /// Attaches the program to `sock`, replacing its filter atomically.
    pub fn attach(&self, sock: &socket2::Socket) -> io::Result<()> {
        let fd: libc::c_int = self.prog.as_raw_fd();
        // SAFETY: the socket's descriptor is valid (owned by `sock`); the value is a c_int
        // that lives across the call and its exact size is passed.
        let r = unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_ATTACH_BPF,
                (&fd as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

#[cfg(test)]
#[repr(C)]
#[derive(Default)]
struct TestRun {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
}

#[cfg(test)]
impl Ebpf {
    /// Runs the program in the kernel (`BPF_PROG_TEST_RUN`) on an Ethernet frame; returns what
    /// it returned.
    pub fn test_run(&self, frame: &[u8]) -> io::Result<u32> {
        let mut attr = TestRun {
            prog_fd: self.prog.as_raw_fd() as u32,
            data_size_in: frame.len() as u32,
            data_in: frame.as_ptr() as u64,
            repeat: 1,
            ..TestRun::default()
        };
        sys_bpf(10, &mut attr)?;
        Ok(attr.retval)
    }
}
