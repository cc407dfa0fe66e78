//! The action runner: `sesamed action-runner --config FILE`, started by the daemon (its own
//! binary, through `/proc/self/exe`) before the daemon drops its privileges, with its stdin and
//! stdout on a pipe pair to the daemon.
//!
//! At start it reads the configuration itself, looks up each action's account, and keeps only
//! what running them needs: its uid as started, and CAP_SETUID, CAP_SETGID and CAP_KILL only
//! when some action runs as another account ([`crate::privileges::drop_for_runner`]; nothing
//! else: no CAP_NET_*, no ambient set, `no_new_privs`). Started without CAP_SETUID (the
//! systemd unit), an action of another account stops it with one line. Then it answers
//! `ready` and serves requests ([`super::protocol`]) until its stdin closes, when it waits for
//! the commands still running (each is bounded by its timeout) and exits.
//!
//! Every request is checked again here against this process's own reading of the
//! configuration: the action exists, the client exists and may run it, the argument fits the
//! action's rule, and the action has fewer than `max_concurrent` runs going. A command runs
//! with the action's argv (placeholders replaced), an environment of `PATH` and the
//! `SESAME_*` variables only, `/` as its directory, stdin and stdout on `/dev/null`, stderr to
//! this runner (its first line is reported), in a process group of its own, as the action's
//! account (gid, no supplementary groups, uid). At `timeout_ms` its process group gets
//! SIGTERM, one second later SIGKILL.
//!
//! Signals: SIGINT is ignored (Ctrl-C reaches the runner with the daemon in a terminal; the
//! daemon stops and closes the runner's stdin, and the commands still running end or time
//! out). SIGTERM (`systemctl stop` signals the whole unit; or someone ends the runner alone)
//! kills every running command's process group with SIGKILL, reports them `killed`, and exits:
//! the daemon then logs that the runner is gone and runs no action until it restarts.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io::Write;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::rc::Rc;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::{Pid, Uid};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;

use super::protocol::{Done, FromRunner, MAX_LINE, MAX_TEXT, Outcome, RunRequest, ToRunner};
use super::{ACTION_PATH, Resolved, can_switch_users, expand, fingerprint, resolve};
use crate::config::Config;

/// Between SIGTERM and SIGKILL at an action's timeout.
pub const KILL_GRACE: Duration = Duration::from_secs(1);

/// How much of a command's stderr is kept (the rest is read and dropped, so it never blocks).
const STDERR_KEPT: usize = 4096;

/// What the runner knows.
struct State {
    path: PathBuf,
    config: Config,
    actions: HashMap<String, Resolved>,
    running: HashMap<String, usize>,
    /// Runs going, all actions together (the runner exits when its stdin closes and this is 0).
    total: usize,
    me: Uid,
    /// Whether it kept CAP_SETUID and CAP_SETGID.
    can_switch: bool,
    /// Whether it had CAP_SETUID and CAP_SETGID when it started (and gave them up because no
    /// action needed them): a reload cannot get them back.
    gave_up_switch: bool,
    /// What the last `reload` read, until `commit` or `abort`.
    staged: Option<(Config, Vec<Resolved>)>,
    /// The process group of each command running, by request.
    groups: HashMap<u64, Pid>,
    /// Set at SIGTERM: the commands are being killed.
    terminating: Rc<Cell<bool>>,
}

/// Writes one line to the daemon at start, before the runtime exists.
fn say(line: &FromRunner) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{}", line.to_line()).and_then(|()| out.flush());
}

/// Loads and resolves the configuration (at start and at `reload`).
fn load(path: &Path, me: Uid, can_switch: bool) -> Result<(Config, Vec<Resolved>), String> {
    let config = Config::load(path).map_err(|e| e.to_string())?;
    let resolved = resolve(&config, me, can_switch).map_err(|e| e.to_string())?;
    Ok((config, resolved))
}

/// The runner's `main`: 0 when its stdin closed and every command ended, 1 when it could not
/// start (after an `error` line to the daemon).
pub fn main(path: &Path) -> ExitCode {
    // Its own name in `ps` and `top` (started through /proc/self/exe, it would be "exe").
    let _ = nix::sys::prctl::set_name(c"sesamed-runner");
    let me = Uid::effective();
    let could_switch = can_switch_users();
    let (config, resolved) = match load(path, me, could_switch) {
        Ok(x) => x,
        Err(message) => {
            say(&FromRunner::Error { message });
            return ExitCode::from(1);
        }
    };
    let switch = resolved.iter().any(|r| r.uid != me);
    if let Err(e) = crate::privileges::drop_for_runner(switch) {
        say(&FromRunner::Error {
            message: format!("action runner: privileges: {e}"),
        });
        return ExitCode::from(1);
    }
    let fp = fingerprint(&config);
    let state = State {
        path: path.to_path_buf(),
        config,
        actions: resolved
            .into_iter()
            .map(|r| (r.config.name.clone(), r))
            .collect(),
        running: HashMap::new(),
        total: 0,
        me,
        can_switch: can_switch_users(),
        gave_up_switch: could_switch && !switch,
        staged: None,
        groups: HashMap::new(),
        terminating: Rc::new(Cell::new(false)),
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            say(&FromRunner::Error {
                message: format!("action runner: runtime: {e}"),
            });
            return ExitCode::from(1);
        }
    };
    let local = tokio::task::LocalSet::new();
    match local.block_on(&runtime, serve(state, fp)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sesamed action-runner: {e}");
            ExitCode::from(1)
        }
    }
}

async fn serve(state: State, fp: String) -> std::io::Result<()> {
    let input = std::io::stdin().as_fd().try_clone_to_owned()?;
    let output = std::io::stdout().as_fd().try_clone_to_owned()?;
    let input = tokio::net::unix::pipe::Receiver::from_owned_fd(input)?;
    let mut output = tokio::net::unix::pipe::Sender::from_owned_fd(output)?;
    let (tx, mut rx) = mpsc::unbounded_channel::<FromRunner>();
    // One writer: lines never interleave. When the daemon is gone, there is nobody to tell.
    let writer = tokio::task::spawn_local(async move {
        while let Some(line) = rx.recv().await {
            let mut bytes = line.to_line().into_bytes();
            bytes.push(b'\n');
            if output.write_all(&bytes).await.is_err() {
                break;
            }
        }
    });
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    // Installed and never read: SIGINT no longer ends the runner (see the module's doc).
    let _interrupt = signal(SignalKind::interrupt())?;
    let _ = tx.send(FromRunner::Ready { fingerprint: fp });
    let state = Rc::new(RefCell::new(state));
    let idle = Rc::new(tokio::sync::Notify::new());
    let mut reader = BufReader::new(input);
    let mut line = Vec::new();
    loop {
        line.clear();
        // At most MAX_LINE + 1 bytes per line: a longer one is refused, not buffered.
        let mut limited = (&mut reader).take(MAX_LINE as u64 + 1);
        let n = tokio::select! {
            n = limited.read_until(b'\n', &mut line) => n?,
            _ = term.recv() => {
                terminate(&state);
                break;
            }
        };
        if n == 0 {
            break;
        }
        if line.last() != Some(&b'\n') {
            if line.len() <= MAX_LINE || !skip_line(&mut reader).await? {
                break; // end of input inside a line
            }
            eprintln!("sesamed action-runner: a request longer than {MAX_LINE} bytes");
            continue;
        }
        line.pop();
        let text = String::from_utf8_lossy(&line);
        match ToRunner::parse(&text) {
            Ok(ToRunner::Reload) => {
                let answer = reload(&state);
                let _ = tx.send(answer);
            }
            Ok(ToRunner::Commit) => {
                let mut s = state.borrow_mut();
                if let Some((config, resolved)) = s.staged.take() {
                    s.config = config;
                    s.actions = resolved
                        .into_iter()
                        .map(|r| (r.config.name.clone(), r))
                        .collect();
                }
            }
            Ok(ToRunner::Abort) => state.borrow_mut().staged = None,
            Ok(ToRunner::Run(req)) => start(&state, &idle, req, &tx),
            Err(e) => eprintln!("sesamed action-runner: request not understood: {e}"),
        }
    }
    // The daemon is gone (or stopping): let the commands still running end (or time out), or
    // after SIGTERM, be reaped.
    loop {
        if state.borrow().total == 0 {
            break;
        }
        idle.notified().await;
    }
    drop(tx);
    let _ = writer.await;
    Ok(())
}

/// Reads up to the end of the current line without keeping it; false at the end of input.
async fn skip_line<R: tokio::io::AsyncBufRead + Unpin>(reader: &mut R) -> std::io::Result<bool> {
    loop {
        let buf = reader.fill_buf().await?;
        if buf.is_empty() {
            return Ok(false);
        }
        match buf.iter().position(|b| *b == b'\n') {
            Some(i) => {
                reader.consume(i + 1);
                return Ok(true);
            }
            None => {
                let n = buf.len();
                reader.consume(n);
            }
        }
    }
}

/// SIGTERM: every running command's process group is killed (their tasks report `killed`).
fn terminate(state: &Rc<RefCell<State>>) {
    let s = state.borrow();
    s.terminating.set(true);
    eprintln!(
        "sesamed action-runner: SIGTERM: killing {} running command(s) and exiting",
        s.groups.len()
    );
    for group in s.groups.values() {
        let _ = killpg(*group, Signal::SIGKILL);
    }
}

/// `reload`: the configuration read again, if its accounts can be run as, kept aside for
/// `commit`.
fn reload(state: &Rc<RefCell<State>>) -> FromRunner {
    let (path, me, can_switch, gave_up) = {
        let s = state.borrow();
        (s.path.clone(), s.me, s.can_switch, s.gave_up_switch)
    };
    match load(&path, me, can_switch) {
        Ok((config, resolved)) => {
            let fp = fingerprint(&config);
            state.borrow_mut().staged = Some((config, resolved));
            FromRunner::Reloaded { fingerprint: fp }
        }
        Err(message) => {
            state.borrow_mut().staged = None;
            let message = if gave_up && message.contains("is not the account sesamed runs as") {
                format!(
                    "{message} (this sesamed started with no action of another account, so its action runner gave up switching accounts: restart sesamed to run this one)"
                )
            } else {
                message
            };
            FromRunner::Refused { message }
        }
    }
}

/// Why this runner will not run a request, by its own reading of the configuration.
fn refusal(s: &State, req: &RunRequest) -> Option<String> {
    let Some(action) = s.actions.get(&req.action) else {
        return Some(format!("refused: no action '{}'", req.action));
    };
    let allowed = s
        .config
        .clients
        .iter()
        .any(|c| c.name == req.client && c.actions.contains(&req.action));
    if !allowed {
        return Some(format!(
            "refused: client '{}' may not run '{}'",
            req.client, req.action
        ));
    }
    if !action.config.argument.allows(&req.argument) {
        return Some(format!(
            "refused: the argument does not fit '{}'",
            action.config.argument
        ));
    }
    let running = s.running.get(&req.action).copied().unwrap_or(0);
    if running >= action.config.max_concurrent {
        return Some(format!(
            "refused: {running} runs going (max_concurrent = {})",
            action.config.max_concurrent
        ));
    }
    None
}

fn start(
    state: &Rc<RefCell<State>>,
    idle: &Rc<tokio::sync::Notify>,
    req: RunRequest,
    tx: &mpsc::UnboundedSender<FromRunner>,
) {
    let (action, me) = {
        let s = state.borrow();
        if let Some(why) = refusal(&s, &req) {
            let _ = tx.send(FromRunner::Done(Done {
                id: req.id,
                outcome: Outcome::Failed,
                code: None,
                ms: 0,
                text: why,
            }));
            return;
        }
        (s.actions[&req.action].clone(), s.me)
    };
    {
        let mut s = state.borrow_mut();
        *s.running.entry(req.action.clone()).or_insert(0) += 1;
        s.total += 1;
    }
    let state = Rc::clone(state);
    let idle = Rc::clone(idle);
    let tx = tx.clone();
    tokio::task::spawn_local(async move {
        let done = execute(&state, &action, &req, me, &tx).await;
        let _ = tx.send(FromRunner::Done(done));
        let mut s = state.borrow_mut();
        if let Some(n) = s.running.get_mut(&req.action) {
            *n = n.saturating_sub(1);
        }
        s.total = s.total.saturating_sub(1);
        idle.notify_one();
    });
}

/// The exit status as a shell shows it: the code, or 128 + the signal that ended it.
fn status_code(status: std::process::ExitStatus) -> u8 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => c.clamp(0, 255) as u8,
        (None, Some(sig)) => (128 + sig).clamp(0, 255) as u8,
        _ => 255,
    }
}

/// Runs one request's command to its end (or its timeout).
async fn execute(
    state: &Rc<RefCell<State>>,
    action: &Resolved,
    req: &RunRequest,
    me: Uid,
    tx: &mpsc::UnboundedSender<FromRunner>,
) -> Done {
    let argv = expand(
        &action.config.command,
        &req.client,
        req.source,
        &req.argument,
    );
    let mut cmd = tokio::process::Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .env_clear()
        .env("PATH", ACTION_PATH)
        .env("SESAME_ACTION", &req.action)
        .env("SESAME_CLIENT", &req.client)
        .env("SESAME_SOURCE", req.source.to_string())
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(false);
    if !req.argument.is_empty() {
        cmd.env("SESAME_ARGUMENT", &req.argument);
    }
    if action.uid != me {
        // setgid, then setgroups([]) (this runner has none left), then setuid, in the child.
        cmd.gid(action.gid.as_raw()).uid(action.uid.as_raw());
    }
    let started = Instant::now();
    let failed = |text: String| Done {
        id: req.id,
        outcome: Outcome::Failed,
        code: None,
        ms: started.elapsed().as_millis() as u64,
        text,
    };
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return failed(format!("{}: {e}", argv[0])),
    };
    let Some(pid) = child.id() else {
        return failed("the command ended before it could be watched".to_owned());
    };
    let group = Pid::from_raw(pid as i32);
    let terminating = {
        let mut s = state.borrow_mut();
        s.groups.insert(req.id, group);
        Rc::clone(&s.terminating)
    };
    let _ = tx.send(FromRunner::Started { id: req.id, pid });
    let kept = Rc::new(RefCell::new(Vec::new()));
    let reader = child.stderr.take().map(|mut stderr| {
        let kept = Rc::clone(&kept);
        tokio::task::spawn_local(async move {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stderr.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                let mut k = kept.borrow_mut();
                let room = STDERR_KEPT.saturating_sub(k.len());
                k.extend_from_slice(&buf[..n.min(room)]);
            }
        })
    });
    let timeout = Duration::from_millis(action.config.timeout_ms);
    let waited = tokio::time::timeout(timeout, child.wait()).await;
    state.borrow_mut().groups.remove(&req.id);
    let (outcome, code) = match waited {
        // Killed at SIGTERM (see `terminate`).
        Ok(Ok(_)) if terminating.get() => (Outcome::Killed, None),
        Ok(Ok(status)) => (Outcome::Exited, Some(status_code(status))),
        Ok(Err(e)) => {
            let _ = killpg(group, Signal::SIGKILL);
            return failed(format!("waiting for {}: {e}", argv[0]));
        }
        Err(_) => {
            let _ = killpg(group, Signal::SIGTERM);
            if tokio::time::timeout(KILL_GRACE, child.wait())
                .await
                .is_err()
            {
                let _ = killpg(group, Signal::SIGKILL);
                let _ = child.wait().await;
            }
            // What is left of its process group goes too.
            let _ = killpg(group, Signal::SIGKILL);
            (Outcome::Killed, None)
        }
    };
    let ms = started.elapsed().as_millis() as u64;
    if let Some(mut reader) = reader {
        // What it wrote before it ended; a process it left behind may hold stderr open.
        if tokio::time::timeout(Duration::from_millis(100), &mut reader)
            .await
            .is_err()
        {
            reader.abort();
        }
    }
    let text = super::protocol::sanitize(&String::from_utf8_lossy(&kept.borrow()), MAX_TEXT);
    Done {
        id: req.id,
        outcome,
        code,
        ms,
        text,
    }
}
