//! sesamed's log: `tracing` lines to stderr, written by a thread of their own once the daemon
//! runs, so that no thread that handles packets waits for the log's file, pipe or journald.
//!
//! A write to stderr can block: on a file, while the file system commits its journal (ext4
//! makes an append wait for a running commit, which a sync by any process on that file
//! system starts: the leases file's, the replay fence's, a build's); on a pipe or journald's
//! socket, while the reader is behind. On the packet thread that wait delayed knocks: the
//! "lease ended" and "granted" lines took 0.5–1.7 ms each while the leases file was synced
//! (BENCHMARKS.md, "The log leaves the packet thread").
//!
//! Until [`Background::start`] runs, lines are written directly (start-up, and the errors of a
//! start that fails). From then on each line is appended, whole and in order, to a buffer that
//! the writer thread writes out [`BATCH`] after the first line of a batch came (or at once when
//! the buffer passes [`HIGH_BYTES`], or a flush asks). Only the first line of a batch wakes the
//! writer: a thread that wakes another for every line can lose its CPU to it, which showed in a
//! first version that sent each line through a channel (the packet thread handed over the CPU
//! for up to 1 ms at a wake-up, `perf trace`). Nothing is dropped: a thread that logs waits
//! only when [`MAX_BYTES`] are waiting. Dropping the [`Background`] writes what is queued
//! (waiting [`FLUSH_TIMEOUT`] at most), and lines after that are written directly again.
//!
//! The writer thread is started by the daemon after the privileges are dropped: capabilities
//! belong to each thread, and a thread started before the drop would keep all of them.

use std::io::Write;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

/// How long the writer waits after the first line of a batch for more to come.
pub const BATCH: Duration = Duration::from_millis(20);

/// A batch this large is written at once.
pub const HIGH_BYTES: usize = 64 * 1024;

/// Bytes that may wait before a thread that logs waits for the writer.
pub const MAX_BYTES: usize = 16 * 1024 * 1024;

/// How long dropping a [`Background`] waits for the queued lines to be written.
pub const FLUSH_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Default)]
struct State {
    /// Lines not yet handed to the writer.
    buf: Vec<u8>,
    /// Whether lines go to `buf` (else they are written directly).
    active: bool,
    /// Lines queued so far, and lines written so far (what a flush waits for).
    queued: u64,
    written: u64,
    /// Write what is queued now, not after the batch's time.
    flush_now: bool,
    /// The writer thread ends once `buf` is empty.
    stop: bool,
}

#[derive(Default)]
struct Queue {
    state: Mutex<State>,
    /// Wakes the writer (lines after an empty buffer, a flush, the stop).
    wake: Condvar,
    /// Wakes threads that wait for room, and flushes that wait for `written`.
    progress: Condvar,
}

impl Queue {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The process's log queue, once a [`Background`] started.
static QUEUE: OnceLock<Arc<Queue>> = OnceLock::new();

/// The writer of the `tracing` subscriber: one [`LineBuffer`] per event.
#[derive(Clone, Copy, Debug, Default)]
pub struct StderrWriter;

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for StderrWriter {
    type Writer = LineBuffer;

    fn make_writer(&'a self) -> LineBuffer {
        LineBuffer(Vec::new())
    }
}

/// Collects one event's text; on drop, queues it (or writes it, before the queue starts).
pub struct LineBuffer(Vec<u8>);

impl Write for LineBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LineBuffer {
    fn drop(&mut self) {
        if self.0.is_empty() {
            return;
        }
        if let Some(queue) = QUEUE.get() {
            let mut s = queue.lock();
            if s.active {
                while s.active && s.buf.len() >= MAX_BYTES {
                    s = queue.progress.wait(s).unwrap_or_else(|e| e.into_inner());
                }
                if s.active {
                    let first = s.buf.is_empty();
                    s.buf.extend_from_slice(&self.0);
                    s.queued += 1;
                    let high = s.buf.len() >= HIGH_BYTES;
                    drop(s);
                    if first || high {
                        queue.wake.notify_one();
                    }
                    return;
                }
            }
        }
        let _ = std::io::stderr().lock().write_all(&self.0);
    }
}

/// The running writer thread of the process's log; see the module documentation.
pub struct Background {
    queue: Arc<Queue>,
}

impl Background {
    /// Starts the writer thread (of stderr) and queues every later line for it.
    pub fn start() -> std::io::Result<Background> {
        Background::start_with(std::io::stderr())
    }

    /// [`Background::start`] with another output (tests). One at a time per process.
    pub fn start_with(out: impl Write + Send + 'static) -> std::io::Result<Background> {
        let queue = Arc::clone(QUEUE.get_or_init(Arc::default));
        {
            let mut s = queue.lock();
            s.stop = false;
            s.flush_now = false;
        }
        let writer = Arc::clone(&queue);
        std::thread::Builder::new()
            .name("sesamed-log".into())
            .spawn(move || write_lines(&writer, out))?;
        queue.lock().active = true;
        Ok(Background { queue })
    }

    /// Waits until every line queued before this call is written, or `timeout` passes.
    /// Returns whether they were.
    pub fn flush(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut s = self.queue.lock();
        let target = s.queued;
        s.flush_now = true;
        self.queue.wake.notify_one();
        while s.written < target {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            s = self
                .queue
                .progress
                .wait_timeout(s, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        true
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        // Lines from here on are written directly; the writer writes the queued ones and ends.
        {
            let mut s = self.queue.lock();
            s.active = false;
            s.stop = true;
        }
        self.queue.progress.notify_all();
        self.flush(FLUSH_TIMEOUT);
    }
}

/// The writer thread: waits for a first line, gives the batch [`BATCH`] to fill (less when
/// asked), writes it in one go, until stopped with nothing left.
fn write_lines(queue: &Queue, out: impl Write) {
    let mut out = out;
    let mut s = queue.lock();
    loop {
        while s.buf.is_empty() && !s.stop && !s.flush_now {
            s = queue.wake.wait(s).unwrap_or_else(|e| e.into_inner());
        }
        if s.buf.is_empty() && s.stop {
            s.written = s.queued;
            queue.progress.notify_all();
            return;
        }
        let deadline = Instant::now() + BATCH;
        while !s.stop && !s.flush_now && s.buf.len() < HIGH_BYTES {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            s = queue
                .wake
                .wait_timeout(s, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        let batch = std::mem::take(&mut s.buf);
        let upto = s.queued;
        s.flush_now = false;
        drop(s);
        queue.progress.notify_all();
        if !batch.is_empty() {
            let _ = out.write_all(&batch);
            let _ = out.flush();
        }
        s = queue.lock();
        s.written = s.written.max(upto);
        queue.progress.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::mpsc;

    /// An output that holds every write until it is released, and keeps what it got.
    #[derive(Clone)]
    struct Held {
        release: Arc<(Mutex<bool>, std::sync::Condvar)>,
        got: Arc<Mutex<Vec<u8>>>,
    }

    impl Held {
        fn new() -> Held {
            Held {
                release: Arc::new((Mutex::new(false), std::sync::Condvar::new())),
                got: Arc::new(Mutex::new(Vec::new())),
            }
        }

        fn release(&self) {
            let (m, c) = &*self.release;
            *m.lock().unwrap() = true;
            c.notify_all();
        }

        fn text(&self) -> String {
            String::from_utf8(self.got.lock().unwrap().clone()).unwrap()
        }
    }

    impl Write for Held {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let (m, c) = &*self.release;
            let mut released = m.lock().unwrap();
            while !*released {
                released = c.wait(released).unwrap();
            }
            self.got.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn line(text: &str) {
        let mut w = tracing_subscriber::fmt::MakeWriter::make_writer(&StderrWriter);
        w.write_all(text.as_bytes()).unwrap();
    }

    // One test owns the process-wide queue: tests run in parallel.
    #[test]
    fn lines_do_not_wait_for_a_blocked_output_and_all_arrive_in_order_at_the_drop() {
        let out = Held::new();
        let background = Background::start_with(out.clone()).unwrap();
        // The output blocks every write; logging must not wait for it.
        let logged = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel();
        {
            let logged = logged.clone();
            std::thread::spawn(move || {
                for i in 0..1000 {
                    line(&format!("line {i}\n"));
                }
                logged.store(true, Ordering::SeqCst);
                let _ = tx.send(());
            });
        }
        assert!(
            rx.recv_timeout(Duration::from_secs(20)).is_ok(),
            "logging 1000 lines waited for an output that blocks"
        );
        assert!(logged.load(Ordering::SeqCst));
        assert!(
            out.text().is_empty(),
            "the output was blocked: nothing written yet"
        );
        // A flush cannot finish while the output blocks.
        assert!(!background.flush(Duration::from_millis(50)));
        out.release();
        drop(background);
        let expected: String = (0..1000).map(|i| format!("line {i}\n")).collect();
        assert_eq!(out.text(), expected, "every line, whole and in order");
        // After the drop, lines are written directly again (to stderr), not queued.
        let state = QUEUE.get().unwrap().lock();
        assert!(!state.active && state.buf.is_empty());
        assert_eq!(state.written, state.queued);
    }
}
