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
//! this runner (its first line is reported), in a session and process group of its own (no
//! controlling terminal), as the action's account (gid, no supplementary groups, uid), with no
//! file descriptor but 0, 1 and 2 (the runner marks every one it inherited close-on-exec at
//! start). At `timeout_ms` its process group gets SIGTERM, one second later SIGKILL.
//!
//! Nothing a command starts outlives its run. When the command ends (by itself or killed), its
//! process group gets SIGKILL. The runner is a child subreaper (`PR_SET_CHILD_SUBREAPER`): a
//! process whose parent ended while it ran on (a background job, a double fork, one that left
//! the group with `setsid`) becomes the runner's child instead of init's, and since the runner
//! has no other children than the commands it starts, every child of the runner that is not a
//! running command nor in a running command's process group is left over from an ended run:
//! at the end of each run the runner SIGKILLs and reaps those ([`sweep`]), until none is left.
//! (Such an escaped process of a run still going is killed at the end of whichever run ends
//! first.) Every process a run started has a parent chain that leads back to the runner, so
//! this reaches all of them. It signals only the runner's own unreaped children, and the
//! group only while one of those is in it: such ids cannot be reused, so it never signals a
//! stranger.
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

use nix::sys::signal::{Signal, kill, killpg};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{Pid, Uid};
use sesame_cli::Exit;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;

use super::protocol::{Done, FromRunner, MAX_LINE, MAX_TEXT, Outcome, RunRequest, ToRunner};
use super::{ACTION_PATH, Resolved, can_switch_users, expand, fingerprint, resolve};
use crate::config::Config;

/// Between SIGTERM and SIGKILL at an action's timeout.
pub const KILL_GRACE: Duration = Duration::from_secs(1);

/// How long [`sweep`] keeps killing what a run left behind before it gives up (a process stuck
/// in the kernel cannot die at once; the next sweep tries again).
const SWEEP_WITHIN: Duration = Duration::from_secs(2);

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
    if let Some(own) = resolved.iter().find(|r| r.uid == me) {
        // A command of another account gets setgroups([]) in the child; one of the runner's own
        // account keeps the runner's groups, so it must have none to give.
        let gid = nix::unistd::getegid();
        let extra: Vec<String> = nix::unistd::getgroups()
            .map_err(|e| format!("action runner: getgroups: {e}"))?
            .into_iter()
            .filter(|g| *g != gid)
            .map(|g| g.to_string())
            .collect();
        if !extra.is_empty() {
            return Err(format!(
                "action '{}': it runs as sesamed's own account, and sesamed has supplementary groups ({}) it cannot drop without CAP_SETGID, which the command would get; start sesamed without them (remove the account from those groups, or SupplementaryGroups= in its unit), or as root",
                own.config.name,
                extra.join(", ")
            ));
        }
    }
    Ok((config, resolved))
}

/// Marks every file descriptor above 2 close-on-exec: what the runner inherited (from sesamed,
/// which inherited it from whatever started it) never reaches a command.
#[allow(unsafe_code)]
fn close_inherited_on_exec() {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return;
    };
    let fds: Vec<i32> = dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|fd| *fd > 2)
        .collect();
    for fd in fds {
        // SAFETY: F_SETFD only sets the descriptor flags of `fd` (FD_CLOEXEC is the only one);
        // it touches no memory, and on a descriptor that is not open (the directory read
        // above, closed by now) it fails with EBADF, which is ignored.
        unsafe {
            libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
        }
    }
}

/// The runner's `main`: 0 when its stdin closed and every command ended, 1 when it could not
/// start (after an `error` line to the daemon).
pub fn main(path: &Path) -> ExitCode {
    // Its own name in `ps` and `top` (started through /proc/self/exe, it would be "exe").
    let _ = nix::sys::prctl::set_name(c"sesamed-runner");
    close_inherited_on_exec();
    // What a command leaves behind becomes this runner's child (see the module's doc).
    if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
        say(&FromRunner::Error {
            message: format!("action runner: PR_SET_CHILD_SUBREAPER: {e}"),
        });
        return Exit::Failure.into();
    }
    let me = Uid::effective();
    let could_switch = can_switch_users();
    if could_switch {
        // Commands of its own account keep its groups: it has none (with CAP_SETGID).
        if let Err(e) = nix::unistd::setgroups(&[]) {
            say(&FromRunner::Error {
                message: format!("action runner: setgroups: {e}"),
            });
            return Exit::Failure.into();
        }
    }
    let (config, resolved) = match load(path, me, could_switch) {
        Ok(x) => x,
        Err(message) => {
            say(&FromRunner::Error { message });
            return Exit::Failure.into();
        }
    };
    let switch = resolved.iter().any(|r| r.uid != me);
    if let Err(e) = crate::privileges::drop_for_runner(switch) {
        say(&FromRunner::Error {
            message: format!("action runner: privileges: {e}"),
        });
        return Exit::Failure.into();
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
            return Exit::Failure.into();
        }
    };
    let local = tokio::task::LocalSet::new();
    match local.block_on(&runtime, serve(state, fp)) {
        Ok(()) => Exit::Success.into(),
        Err(e) => sesame_cli::fail("sesamed action-runner", e, Exit::Failure),
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
    sweep(&state, None).await;
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

/// This process's children: from `/proc/self/task/*/children`, which lists them whoever they
/// run as (under systemd's `ProtectProc=invisible` the `/proc/PID` of another account's
/// process is hidden), or, without that file, from the `/proc/PID/stat` files it can see.
fn children() -> Vec<Pid> {
    let mut out = Vec::new();
    let mut listed = false;
    if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
        for task in tasks.flatten() {
            if let Ok(text) = std::fs::read_to_string(task.path().join("children")) {
                listed = true;
                out.extend(
                    text.split_whitespace()
                        .filter_map(|p| p.parse::<i32>().ok()),
                );
            }
        }
    }
    if !listed {
        let me = std::process::id() as i32;
        if let Ok(dir) = std::fs::read_dir("/proc") {
            out.extend(dir.filter_map(|e| {
                let pid: i32 = e.ok()?.file_name().to_str()?.parse().ok()?;
                let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
                // After the name in parentheses: state, ppid, ...
                let ppid: i32 = stat.rsplit_once(") ")?.1.split(' ').nth(1)?.parse().ok()?;
                (ppid == me).then_some(pid)
            }));
        }
    }
    out.into_iter().map(Pid::from_raw).collect()
}

/// Kills and reaps what ended runs left behind: the process group of the run that just ended
/// (`group`), and every child of this runner (a subreaper) that is neither a running command
/// nor in a running command's process group; again until none is left (a killed process's
/// children become the runner's in turn), for at most [`SWEEP_WITHIN`].
async fn sweep(state: &Rc<RefCell<State>>, group: Option<Pid>) {
    let until = Instant::now() + SWEEP_WITHIN;
    loop {
        let mut left = false;
        {
            // No await from the listing to the kills: `groups` holds every command started.
            let s = state.borrow();
            let running: Vec<Pid> = s.groups.values().copied().collect();
            let children: Vec<(Pid, Option<Pid>)> = children()
                .into_iter()
                .filter(|pid| !running.contains(pid)) // a running command: its task waits for it
                .map(|pid| (pid, nix::unistd::getpgid(Some(pid)).ok()))
                .collect();
            // The group at once (what a command forks fast dies with it), but only while an
            // unreaped child of the runner is in it: then its id cannot belong to anyone else.
            if let Some(group) = group.filter(|g| children.iter().any(|c| c.1 == Some(*g))) {
                let _ = killpg(group, Signal::SIGKILL);
            }
            for (pid, pgrp) in children {
                // Reaped by its pid, never with -1: the commands' statuses stay theirs.
                match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
                    Ok(WaitStatus::StillAlive) => {
                        if !pgrp.is_some_and(|g| running.contains(&g)) {
                            let _ = kill(pid, Signal::SIGKILL);
                            left = true;
                        }
                    }
                    Ok(_) => left = true, // reaped: look again for what it left
                    Err(_) => {}
                }
            }
        }
        if !left {
            return;
        }
        if Instant::now() >= until {
            eprintln!(
                "sesamed action-runner: processes left by a command are still there after {} ms",
                SWEEP_WITHIN.as_millis()
            );
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
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

/// The command starts a session of its own (and so a process group, whose id is its pid): it
/// has no controlling terminal, so it cannot reach the terminal sesamed may run in.
#[allow(unsafe_code)]
fn new_session(cmd: &mut tokio::process::Command) {
    // SAFETY: the closure runs in the child between fork and exec, where only async-signal-safe
    // calls are allowed: it calls setsid(2) alone, and builds its error from the errno without
    // allocating.
    unsafe {
        cmd.pre_exec(|| {
            nix::unistd::setsid()
                .map(drop)
                .map_err(std::io::Error::from)
        });
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
        .kill_on_drop(false);
    new_session(&mut cmd);
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
    let (outcome, code) = match waited {
        // Killed at SIGTERM (see `terminate`).
        Ok(Ok(_)) if terminating.get() => (Outcome::Killed, None),
        Ok(Ok(status)) => (Outcome::Exited, Some(status_code(status))),
        Ok(Err(e)) => {
            state.borrow_mut().groups.remove(&req.id);
            sweep(state, Some(group)).await;
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
            (Outcome::Killed, None)
        }
    };
    let ms = started.elapsed().as_millis() as u64;
    // The command is reaped; what is left of its process group, and whatever left the group,
    // goes too (also after a normal exit: a background job is part of the run).
    state.borrow_mut().groups.remove(&req.id);
    sweep(state, Some(group)).await;
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
