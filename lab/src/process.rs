//! Processes: where the workspace's binaries are, signals, and [`Proc`], a background process
//! whose output is collected line by line (printed if a test panics while it runs).

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Stdout and stderr of a finished command, for messages.
pub fn text(o: &Output) -> String {
    let mut s = format!("[{}]", o.status);
    let out = String::from_utf8_lossy(&o.stdout);
    let err = String::from_utf8_lossy(&o.stderr);
    if !out.trim().is_empty() {
        let _ = write!(s, " stdout: {}", out.trim_end());
    }
    if !err.trim().is_empty() {
        let _ = write!(s, " stderr: {}", err.trim_end());
    }
    s
}

/// The directory holding the workspace's binaries: next to the test executable
/// (`target/debug/deps/e2e-…` → `target/debug/`).
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("SESAME_E2E_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().expect("current_exe");
    let mut dir = exe
        .parent()
        .expect("executable has a directory")
        .to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir
}

/// The path of a workspace binary (`sesame`, `sesamed`, `sesame-netprobe`). Panics with a
/// clear message when it has not been built.
pub fn bin(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.is_file(),
        "{name} not found at {}: build the binaries first with `cargo build --workspace --bins` \
         (`cargo test --workspace` does it too; `cargo test -p sesame-tests` alone does not build \
         sesame and sesamed)",
        path.display()
    );
    path
}

/// Sends a signal to a process.
pub fn signal(pid: u32, sig: i32) {
    if let Ok(pid) = i32::try_from(pid) {
        // SAFETY: kill has no memory-safety preconditions; a stale pid only yields ESRCH.
        unsafe {
            libc::kill(pid, sig);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Background processes

#[derive(Default)]
struct LogState {
    lines: Vec<String>,
    open_streams: usize,
}

type SharedLog = Arc<(Mutex<LogState>, Condvar)>;

/// A background process whose stdout and stderr are collected line by line (stderr lines are
/// kept as they are, stdout lines too; both go to one list in arrival order).
pub struct Proc {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    log: SharedLog,
    status: Option<ExitStatus>,
}

impl std::fmt::Debug for Proc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proc")
            .field("name", &self.name)
            .field("pid", &self.child.id())
            .finish()
    }
}

impl Proc {
    /// Spawns `cmd` with piped stdin, stdout and stderr.
    pub fn spawn(name: &str, mut cmd: Command) -> Proc {
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({cmd:?}): {e}"));
        let log: SharedLog = Arc::new((
            Mutex::new(LogState {
                lines: Vec::new(),
                open_streams: 2,
            }),
            Condvar::new(),
        ));
        let out = child.stdout.take().expect("piped stdout");
        let err = child.stderr.take().expect("piped stderr");
        spawn_reader(out, Arc::clone(&log));
        spawn_reader(err, Arc::clone(&log));
        Proc {
            name: name.to_owned(),
            stdin: child.stdin.take(),
            child,
            log,
            status: None,
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The name given at spawn.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Every line so far.
    pub fn lines(&self) -> Vec<String> {
        self.log.0.lock().unwrap().lines.clone()
    }

    /// The number of lines so far (a mark for [`Proc::wait_for_after`]).
    pub fn mark(&self) -> usize {
        self.log.0.lock().unwrap().lines.len()
    }

    /// All output so far as one string.
    pub fn output(&self) -> String {
        let mut s = String::new();
        for l in self.lines() {
            s.push_str(&l);
            s.push('\n');
        }
        s
    }

    /// Lines (from index `from`) containing every one of `pats`.
    pub fn matching(&self, from: usize, pats: &[&str]) -> Vec<String> {
        self.lines()
            .into_iter()
            .skip(from)
            .filter(|l| pats.iter().all(|p| l.contains(p)))
            .collect()
    }

    /// Waits up to `timeout` for a line (from index `from`) containing every one of `pats`.
    /// Returns `None` on timeout, or early when the process has closed its output.
    pub fn wait_for_after(&self, from: usize, pats: &[&str], timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        let (lock, cv) = &*self.log;
        let mut st = lock.lock().unwrap();
        loop {
            if let Some(l) = st
                .lines
                .iter()
                .skip(from)
                .find(|l| pats.iter().all(|p| l.contains(p)))
            {
                return Some(l.clone());
            }
            let now = Instant::now();
            if now >= deadline || st.open_streams == 0 {
                return None;
            }
            st = cv.wait_timeout(st, deadline - now).unwrap().0;
        }
    }

    /// [`Proc::wait_for_after`] from the first line.
    pub fn wait_for(&self, pats: &[&str], timeout: Duration) -> Option<String> {
        self.wait_for_after(0, pats, timeout)
    }

    /// Like [`Proc::wait_for_after`], but panics with the whole output on timeout.
    pub fn expect_after(&self, from: usize, pats: &[&str], timeout: Duration) -> String {
        match self.wait_for_after(from, pats, timeout) {
            Some(l) => l,
            None => {
                // Read the flag in its own statement: the lock must be released before
                // `output()` takes it again.
                let closed = self.log.0.lock().unwrap().open_streams == 0;
                panic!(
                    "{}: no line containing {pats:?} within {timeout:?} (output closed: {closed}); output:\n{}",
                    self.name,
                    self.output()
                )
            }
        }
    }

    /// Like [`Proc::wait_for`], but panics with the whole output on timeout.
    pub fn expect(&self, pats: &[&str], timeout: Duration) -> String {
        self.expect_after(0, pats, timeout)
    }

    /// The exit status if the process has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status
    }

    /// Writes one line to the process's stdin.
    pub fn write_line(&mut self, line: &str) -> std::io::Result<()> {
        let stdin = self
            .stdin
            .as_mut()
            .ok_or_else(|| std::io::Error::other("stdin closed"))?;
        stdin.write_all(format!("{line}\n").as_bytes())?;
        stdin.flush()
    }

    /// Closes stdin.
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// Sends a signal.
    pub fn signal(&self, sig: i32) {
        if self.status.is_none() {
            signal(self.pid(), sig);
        }
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.exited() {
                // Let the readers drain what is left in the pipes.
                let (lock, cv) = &*self.log;
                let mut st = lock.lock().unwrap();
                let until = Instant::now() + Duration::from_secs(1);
                while st.open_streams > 0 && Instant::now() < until {
                    st = cv.wait_timeout(st, Duration::from_millis(50)).unwrap().0;
                }
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then SIGKILL if it has not exited after `grace`. Returns the exit status.
    pub fn stop(&mut self, grace: Duration) -> Option<ExitStatus> {
        if let Some(s) = self.exited() {
            return Some(s);
        }
        self.signal(libc::SIGTERM);
        if let Some(s) = self.wait_exit(grace) {
            return Some(s);
        }
        self.kill9()
    }

    /// SIGKILL and reap.
    pub fn kill9(&mut self) -> Option<ExitStatus> {
        if let Some(s) = self.exited() {
            return Some(s);
        }
        let _ = self.child.kill();
        self.status = self.child.wait().ok();
        self.status
    }
}

fn spawn_reader(stream: impl Read + Send + 'static, log: SharedLog) {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stream);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let line = String::from_utf8_lossy(&buf)
                        .trim_end_matches(['\n', '\r'])
                        .to_owned();
                    let (lock, cv) = &*log;
                    lock.lock().unwrap().lines.push(line);
                    cv.notify_all();
                }
            }
        }
        let (lock, cv) = &*log;
        lock.lock().unwrap().open_streams -= 1;
        cv.notify_all();
    });
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.stop(Duration::from_secs(2));
        if std::thread::panicking() {
            let lines = self.lines();
            let tail: VecDeque<&String> = lines.iter().rev().take(400).rev().collect();
            eprintln!(
                "----- output of {} (pid {}, {:?}; last {} of {} lines) -----",
                self.name,
                self.pid(),
                self.status,
                tail.len(),
                lines.len()
            );
            for l in tail {
                eprintln!("{l}");
            }
            eprintln!("----- end of {} -----", self.name);
        }
    }
}
