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
//! start that fails). From then on each line goes, whole and in order, through a bounded
//! channel to the writer thread. The channel is not lossy: a line is never dropped; when the
//! writer is [`QUEUE_LINES`] lines behind, the thread that logs waits for it, as it did before.
//! Dropping the [`Background`] waits until every queued line is written (bounded by
//! [`FLUSH_TIMEOUT`]), and lines after that are written directly again.
//!
//! The writer thread is started by the daemon after the privileges are dropped: capabilities
//! belong to each thread, and a thread started before the drop would keep all of them.

use std::io::Write;
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

/// Lines the writer thread may be behind before a thread that logs waits for it.
pub const QUEUE_LINES: usize = 16_384;

/// How long dropping a [`Background`] waits for the queued lines to be written.
pub const FLUSH_TIMEOUT: Duration = Duration::from_secs(2);

/// What goes through the channel.
enum Message {
    /// One formatted line (or event: whatever the formatter wrote for it).
    Line(Vec<u8>),
    /// Answered once every message before it is written.
    Flush(mpsc::Sender<()>),
}

/// The process's log queue, once started: `None` while lines are written directly.
static QUEUE: OnceLock<Mutex<Option<SyncSender<Message>>>> = OnceLock::new();

fn queue() -> &'static Mutex<Option<SyncSender<Message>>> {
    QUEUE.get_or_init(|| Mutex::new(None))
}

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
        let line = std::mem::take(&mut self.0);
        let sender = queue().lock().ok().and_then(|q| q.clone());
        let line = match sender {
            Some(tx) => match tx.send(Message::Line(line)) {
                Ok(()) => return,
                // The writer thread is gone: write it here.
                Err(mpsc::SendError(Message::Line(line))) => line,
                Err(_) => return,
            },
            None => line,
        };
        let _ = std::io::stderr().lock().write_all(&line);
    }
}

/// The running writer thread of the process's log; see the module documentation.
pub struct Background {
    sender: SyncSender<Message>,
}

impl Background {
    /// Starts the writer thread (of stderr) and sends every later line through it.
    pub fn start() -> std::io::Result<Background> {
        Background::start_with(std::io::stderr())
    }

    /// [`Background::start`] with another output (tests).
    pub fn start_with(out: impl Write + Send + 'static) -> std::io::Result<Background> {
        let (sender, receiver) = mpsc::sync_channel(QUEUE_LINES);
        std::thread::Builder::new()
            .name("sesamed-log".into())
            .spawn(move || write_lines(receiver, out))?;
        if let Ok(mut q) = queue().lock() {
            *q = Some(sender.clone());
        }
        Ok(Background { sender })
    }

    /// Waits until every line queued before this call is written, or `timeout` passes.
    /// Returns whether they were.
    pub fn flush(&self, timeout: Duration) -> bool {
        let (done, wait) = mpsc::channel();
        match self.sender.try_send(Message::Flush(done.clone())) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                // Behind by a full queue: wait in line, but not past the timeout.
                let sender = self.sender.clone();
                std::thread::spawn(move || sender.send(Message::Flush(done)));
            }
            Err(TrySendError::Disconnected(_)) => return false,
        }
        wait.recv_timeout(timeout).is_ok()
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        // Lines from here on are written directly; then the queued ones are waited for.
        if let Ok(mut q) = queue().lock() {
            *q = None;
        }
        self.flush(FLUSH_TIMEOUT);
    }
}

/// The writer thread: writes each line as it comes, several at once when they queue up.
fn write_lines(receiver: Receiver<Message>, out: impl Write) {
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, out);
    let mut answered = Vec::new();
    while let Ok(first) = receiver.recv() {
        let mut next = Some(first);
        while let Some(message) = next {
            match message {
                Message::Line(line) => {
                    let _ = out.write_all(&line);
                }
                Message::Flush(done) => answered.push(done),
            }
            next = receiver.try_recv().ok();
        }
        let _ = out.flush();
        for done in answered.drain(..) {
            let _ = done.send(());
        }
    }
    let _ = out.flush();
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

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
        assert!(queue().lock().unwrap().is_none());
    }
}
