//! The replay journal's durable append, the options side by side in one run (BENCHMARKS.md,
//! "A tail as good as the median"): every grant appends its client's replay state to
//! `replay.journal` and must have it on disk before the grant (`persisted before granted`).
//!
//! * `append + fdatasync`: the file grows with each record, so each sync also writes the
//!   inode's size and, on ext4, allocates a block now and then: a journal commit;
//! * `append + O_DSYNC`: the same, the sync done by the write itself;
//! * `preallocated + fdatasync`: the journal is written full of zeros ahead (1 MiB, synced
//!   once), so a record overwrites blocks that exist: the sync writes the data block alone;
//! * `preallocated + O_DSYNC`: both;
//! * `preallocated + O_DIRECT + O_DSYNC`: whole 4 KiB blocks past the page cache (a FUA write
//!   on a disk that has it, instead of a cache flush);
//! * `JournalStore::advance`: sesamed's own code, as built, under `state_sync = "grant"`;
//! * `JournalStore::advance` under `state_sync = "fence"`: the same code with a fence ahead of the
//!   clock (what a grant costs there; the fence itself is rewritten off the packet path).
//!
//! The options take turns record by record, so the disk's mood hits all of them alike. Each
//! record is what a grant writes for a client with a few accepted payloads (about 250 bytes).
//!
//! ```text
//! cargo bench -p sesame-server --bench journal                 # 3000 records per option
//! cargo bench -p sesame-server --bench journal -- 10000 DIR    # records, directory
//! ```
//! The directory defaults to `target/journal-bench` (the disk the repository is on); give the
//! disk `state_dir` is on to measure that one. `SESAME_BENCH_SMOKE=1`: 20 records (CI).

// field_reassign_with_default: the replay state is built field by field so that the bench
// keeps compiling when ReplayState gains a field.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::field_reassign_with_default
)]

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sesame_keys::PrivateKey;
use sesame_proto::UnixMillis;
use sesame_proto::tracker::{AcceptedPayload, ReplayState, UsedStep};
use sesame_server::state::{JournalStore, ReplayStore};

const PREALLOC: u64 = 1 << 20;

const BLOCK: usize = 4096;

/// A copy of the file in memory at a 4096-byte aligned address (for O_DIRECT), without unsafe.
struct Aligned {
    buf: Vec<u8>,
    at: usize,
}

impl Aligned {
    fn new(len: usize) -> Aligned {
        let buf = vec![0u8; len + BLOCK];
        let at = (BLOCK - buf.as_ptr() as usize % BLOCK) % BLOCK;
        Aligned { buf, at }
    }

    fn bytes(&mut self) -> &mut [u8] {
        let at = self.at;
        let len = self.buf.len() - BLOCK;
        &mut self.buf[at..at + len]
    }
}

struct Raw {
    name: &'static str,
    direct: Option<Aligned>,
    file: File,
    len: u64,
    allocated: u64,
    sync: bool,
    prealloc: bool,
}

impl Raw {
    fn new(dir: &Path, name: &'static str, dsync: bool, prealloc: bool) -> Raw {
        let path = dir.join(name.replace(|c: char| !c.is_ascii_alphanumeric(), "_"));
        let _ = std::fs::remove_file(&path);
        let mut o = OpenOptions::new();
        o.read(true).write(true).create(true).truncate(true);
        if dsync {
            o.custom_flags(libc::O_DSYNC);
        }
        let file = o.open(&path).expect("create the journal");
        let header = b"sesame-replay-journal 2\n";
        file.write_all_at(header, 0).unwrap();
        let mut raw = Raw {
            name,
            direct: None,
            file,
            len: header.len() as u64,
            allocated: header.len() as u64,
            sync: !dsync,
            prealloc,
        };
        if prealloc {
            raw.grow();
        }
        raw.file.sync_all().unwrap();
        File::open(dir).and_then(|d| d.sync_all()).unwrap();
        raw
    }

    fn grow(&mut self) {
        let zeros = vec![0u8; PREALLOC as usize];
        self.file.write_all_at(&zeros, self.allocated).unwrap();
        self.allocated += PREALLOC;
        self.file.sync_all().unwrap();
    }

    fn append(&mut self, record: &[u8]) {
        if let Some(m) = self.direct.as_mut() {
            // O_DIRECT: whole aligned blocks from an aligned copy of the file.
            let start = self.len as usize;
            let end = start + record.len();
            assert!(
                end as u64 <= self.allocated,
                "the O_DIRECT file is made large enough for every record"
            );
            m.bytes()[start..end].copy_from_slice(record);
            let (a, b) = (start / BLOCK * BLOCK, end.div_ceil(BLOCK) * BLOCK);
            self.file.write_all_at(&m.bytes()[a..b], a as u64).unwrap();
            self.len = end as u64;
            return;
        }
        if self.prealloc && self.len + record.len() as u64 > self.allocated {
            self.grow();
        }
        self.file.write_all_at(record, self.len).unwrap();
        if self.sync {
            self.file.sync_data().unwrap();
        }
        self.len += record.len() as u64;
    }
}

/// The journal preallocated (zeros, synced once) and written with O_DIRECT | O_DSYNC: whole
/// 4 KiB blocks from an aligned copy, past the page cache (a FUA write where the disk has it).
fn direct(dir: &Path, size: usize) -> Raw {
    let path = dir.join("preallocated_O_DIRECT");
    let header = b"sesame-replay-journal 2\n";
    let size = size.div_ceil(BLOCK) * BLOCK;
    let mut m = Aligned::new(size);
    m.bytes()[..header.len()].copy_from_slice(header);
    std::fs::write(&path, &m.bytes()[..]).unwrap();
    File::open(&path).and_then(|f| f.sync_all()).unwrap();
    File::open(dir).and_then(|d| d.sync_all()).unwrap();
    let file = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_DIRECT | libc::O_DSYNC)
        .open(&path)
        .expect("O_DIRECT");
    Raw {
        name: "preallocated + O_DIRECT + O_DSYNC",
        direct: Some(m),
        file,
        len: header.len() as u64,
        allocated: size as u64,
        sync: false,
        prealloc: true,
    }
}

/// One client's state after its knock in step `i`: four payloads stamped in that step and the
/// step itself, above a floor that covers the previous step's (so each state is newer than the
/// one before, as the tracker's are, and `advance` records it as it is).
fn state(i: u64) -> ReplayState {
    let start = 1_764_000_000_000 + i * 30_000;
    let mut s = ReplayState::default();
    s.accepted = (0..4)
        .map(|k| AcceptedPayload {
            timestamp: UnixMillis(start + k),
            mac: [(i as u8) ^ (k as u8); 16],
        })
        .collect();
    s.steps = vec![UsedStep {
        step_seconds: 30,
        counter: 58_800_000 + i,
    }];
    s.floor = Some(UnixMillis(start - 1));
    s
}

fn record(i: u64) -> Vec<u8> {
    // The size of a journal line for state(i): key, floor, 4 accepted, 1 step, check.
    let start = 1_764_000_000_000 + i * 30_000;
    let mut line = format!(
        "{} {} {} 30:{} {:016x}\n",
        "k".repeat(44),
        start - 1,
        (0..4)
            .map(|k| format!("{}:{}", start + k, "ab".repeat(16)))
            .collect::<Vec<_>>()
            .join(","),
        58_800_000 + i,
        i
    )
    .into_bytes();
    line.shrink_to_fit();
    line
}

fn pct(sorted: &[Duration], q: f64) -> f64 {
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1].as_secs_f64() * 1000.0
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let smoke = std::env::var_os("SESAME_BENCH_SMOKE").is_some();
    let n: u64 = args
        .first()
        .and_then(|a| a.parse().ok())
        .unwrap_or(if smoke { 20 } else { 3000 });
    let dir = args.get(1).map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/journal-bench"),
        PathBuf::from,
    );
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create the directory");
    let mut raws = [
        Raw::new(&dir, "append + fdatasync", false, false),
        Raw::new(&dir, "append + O_DSYNC", true, false),
        Raw::new(&dir, "preallocated + fdatasync", false, true),
        Raw::new(&dir, "preallocated + O_DSYNC", true, true),
        direct(&dir, n as usize * 320 + BLOCK),
    ];
    let store_dir = dir.join("store");
    std::fs::create_dir_all(&store_dir).unwrap();
    let mut store = JournalStore::open(&store_dir).expect("open the store");
    let fenced_dir = dir.join("fenced");
    std::fs::create_dir_all(&fenced_dir).unwrap();
    let mut fenced = JournalStore::open(&fenced_dir).expect("open the store");
    fenced.use_fence(
        std::sync::Arc::new(std::sync::atomic::AtomicU64::new(u64::MAX)),
        30_000,
    );
    let key = PrivateKey::from_bytes([7; 32]).public_key();
    let mut times: Vec<Vec<Duration>> = vec![Vec::new(); raws.len() + 2];
    for i in 0..n {
        let rec = record(i);
        for (k, raw) in raws.iter_mut().enumerate() {
            let t = Instant::now();
            raw.append(&rec);
            times[k].push(t.elapsed());
        }
        let s = state(i);
        let t = Instant::now();
        store.advance([(&key, s.clone())]).expect("advance");
        times[raws.len()].push(t.elapsed());
        let t = Instant::now();
        fenced.advance([(&key, s)]).expect("advance");
        times[raws.len() + 1].push(t.elapsed());
    }
    let fs = std::process::Command::new("stat")
        .args(["-f", "-c", "%T"])
        .arg(&dir)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    println!(
        "replay journal, {n} records per option, taking turns, in {} ({fs}); ms per durable append",
        dir.display()
    );
    println!();
    println!("| option | median ms | p90 ms | p99 ms | max ms | p99 × append + fdatasync |");
    println!("|---|---:|---:|---:|---:|---:|");
    let mut names: Vec<&str> = raws.iter().map(|r| r.name).collect();
    names.push("JournalStore::advance (sesamed, as built)");
    names.push("JournalStore::advance, state_sync = \"fence\"");
    let mut base = f64::NAN;
    for (name, t) in names.iter().zip(times.iter_mut()) {
        t.sort();
        let p99 = pct(t, 0.99);
        if base.is_nan() {
            base = p99;
        }
        println!(
            "| {name} | {:.3} | {:.3} | {:.3} | {:.3} | {:.2} |",
            pct(t, 0.5),
            pct(t, 0.9),
            p99,
            t.last().map_or(0.0, |d| d.as_secs_f64() * 1000.0),
            p99 / base
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
