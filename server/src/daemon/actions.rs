//! Actions in the daemon: the link to the action runner ([`crate::action::runner`]), the
//! cooldown per client and action, the cap on runs at once per action, the log lines, and what
//! `sesamed status` and the metrics show.
//!
//! A grant that carries an action comes here once its replay state is saved (so a replay of
//! the knock, refused by the tracker, never gets here). The daemon sends the runner a request
//! unless the knock came from another address than the one its payload names (possible with
//! `allow_other_ip`), the client ran the action less than `cooldown_ms` ago, or
//! `max_concurrent` runs are going, and logs one line when the command starts and one when it
//! ends. Nothing here waits: requests go through a channel to a writer task, answers come from
//! a reader task, so a slow runner or command never holds up the packet path.
//!
//! If the runner exits (or stops answering), actions fail closed: the daemon logs it once,
//! every pending run is counted `failed`, and every later knock for an action is logged as
//! `action not run ... reason=runner_unavailable` until a reload starts a new runner (with the
//! privileges sesamed has then) or sesamed restarts. It is never restarted behind the
//! administrator's back.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::Path;
use std::process::Stdio;
use std::rc::{Rc, Weak};
use std::time::{Duration, Instant};

use sesame_proto::UnixMillis;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdout};
use tokio::sync::{mpsc, oneshot};

use super::core::LogLimiter;
use super::{rfc3339, system_now};
use crate::action::protocol::{Done, FromRunner, MAX_LINE, Outcome, RunRequest, ToRunner};
use crate::config::{ActionConfig, Config};
use crate::control::ActionStatus;

/// How long the runner may take to answer `ready` or `reload`.
const ANSWER_WITHIN: Duration = Duration::from_secs(15);

/// How long after an action's `timeout_ms` (and the runner's grace before SIGKILL) the daemon
/// still waits for the runner's `done` before it counts the run `failed` and frees its slot.
const DONE_MARGIN: Duration = Duration::from_secs(5);

/// A started runner, not yet attached to the daemon's state.
pub(super) struct Spawned {
    child: Child,
    stdout: BufReader<ChildStdout>,
}

/// The link to a running runner.
struct Link {
    /// Lines to its stdin (a writer task sends them in order).
    requests: mpsc::UnboundedSender<ToRunner>,
    /// Kept so the process is reaped; dropping the link closes its stdin, and it exits.
    _child: Child,
}

/// A request sent and not answered yet.
struct Pending {
    action: String,
    client: String,
    source: IpAddr,
    argument: String,
    /// Whether the runner said it started (`start ID PID`).
    started: bool,
}

/// The runner, as `sesamed status` shows it.
#[derive(Clone, Debug)]
enum RunnerState {
    /// None was started (the configuration has no action).
    None,
    /// It runs, as this process.
    Running(u32),
    /// It exited at this moment; actions do not run.
    Gone(UnixMillis),
}

/// The last run of an action.
#[derive(Clone, Debug)]
struct LastRun {
    id: u64,
    at: UnixMillis,
    client: String,
    source: IpAddr,
    /// `None` while it runs.
    done: Option<(Outcome, Option<u8>, u64)>,
}

/// The daemon's side of actions.
pub(super) struct Actions {
    /// Itself, for the tasks it starts.
    this: Weak<RefCell<Actions>>,
    link: Option<Link>,
    runner: RunnerState,
    /// One reload at a time: the runner's `reload`/`commit` must pair with the daemon's.
    reload_lock: Rc<tokio::sync::Mutex<()>>,
    /// sesamed is stopping (SIGTERM or SIGINT): the runner's exit is expected.
    stopping: bool,
    config: Vec<ActionConfig>,
    running: HashMap<String, u64>,
    /// When each (client, action) last started a run (for its cooldown).
    last_start: HashMap<(String, String), Instant>,
    pending: HashMap<u64, Pending>,
    next_id: u64,
    last: HashMap<String, LastRun>,
    outcomes: HashMap<String, BTreeMap<String, u64>>,
    /// The answer to a `reload` sent to the runner.
    reload_answer: Option<oneshot::Sender<FromRunner>>,
}

/// Reads one line from the runner (without its newline), at most [`MAX_LINE`] bytes.
async fn read_line(stdout: &mut BufReader<ChildStdout>) -> std::io::Result<Option<String>> {
    let mut line = Vec::new();
    let n = (&mut *stdout)
        .take(MAX_LINE as u64 + 1)
        .read_until(b'\n', &mut line)
        .await?;
    if n == 0 {
        return Ok(None);
    }
    if line.pop() != Some(b'\n') {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "a line from the action runner is too long or unfinished",
        ));
    }
    Ok(Some(String::from_utf8_lossy(&line).into_owned()))
}

/// Starts the action runner (this binary, `action-runner --config FILE`) with this process's
/// privileges and waits for its `ready`, which must name the actions of `config`.
pub(super) async fn spawn_runner(config: &Config) -> Result<Spawned, String> {
    let path = std::path::absolute(&config.path).unwrap_or_else(|_| config.path.clone());
    let exe = if Path::new("/proc/self/exe").exists() {
        std::path::PathBuf::from("/proc/self/exe")
    } else {
        std::env::current_exe().map_err(|e| format!("action runner: cannot find sesamed: {e}"))?
    };
    let mut cmd = tokio::process::Command::new(exe);
    cmd.arg0("sesamed")
        .arg("action-runner")
        .arg("--config")
        .arg(&path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(false);
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("action runner: cannot start it: {e}"))?;
    let Some(stdout) = child.stdout.take() else {
        return Err("action runner: no pipe".to_owned());
    };
    let mut stdout = BufReader::new(stdout);
    let first = tokio::time::timeout(ANSWER_WITHIN, read_line(&mut stdout)).await;
    let line = match first {
        Err(_) => return Err("action runner: no answer within 15 s".to_owned()),
        Ok(Err(e)) => return Err(format!("action runner: {e}")),
        Ok(Ok(None)) => {
            let status = child
                .wait()
                .await
                .map(|s| s.to_string())
                .unwrap_or_default();
            return Err(format!("action runner: exited at start ({status})"));
        }
        Ok(Ok(Some(line))) => line,
    };
    match FromRunner::parse(&line) {
        Ok(FromRunner::Ready { fingerprint }) => {
            if fingerprint != crate::action::fingerprint(config) {
                return Err(
                    "action runner: it read other actions than sesamed (the configuration changed meanwhile?); start again"
                        .to_owned(),
                );
            }
            Ok(Spawned { child, stdout })
        }
        Ok(FromRunner::Error { message }) => Err(message),
        _ => Err(format!("action runner: unexpected answer '{line}'")),
    }
}

impl Actions {
    /// No runner yet, the actions of `config`.
    pub(super) fn new(config: &Config) -> Rc<RefCell<Self>> {
        Rc::new_cyclic(|this| {
            RefCell::new(Actions {
                this: this.clone(),
                link: None,
                runner: RunnerState::None,
                reload_lock: Rc::new(tokio::sync::Mutex::new(())),
                stopping: false,
                config: config.actions.clone(),
                running: HashMap::new(),
                last_start: HashMap::new(),
                pending: HashMap::new(),
                next_id: 1,
                last: HashMap::new(),
                outcomes: HashMap::new(),
                reload_answer: None,
            })
        })
    }

    /// sesamed stops: the runner's exit (it gets the same SIGTERM from systemd, or its pipe
    /// closes) is no longer an error.
    pub(super) fn stopping(&mut self) {
        self.stopping = true;
    }

    /// Held by a reload from start to end (see [`Actions::reload_lock`]'s field).
    pub(super) fn reload_lock(&self) -> Rc<tokio::sync::Mutex<()>> {
        Rc::clone(&self.reload_lock)
    }

    /// Whether a runner is attached.
    pub(super) fn has_runner(&self) -> bool {
        self.link.is_some()
    }

    /// Takes a started runner into use: its stdin gets requests, its stdout is read by a task.
    pub(super) fn attach(this: &Rc<RefCell<Actions>>, spawned: Spawned) {
        let Spawned { mut child, stdout } = spawned;
        let Some(mut stdin) = child.stdin.take() else {
            tracing::error!("action runner: no pipe; actions cannot run");
            return;
        };
        let pid = child.id().unwrap_or(0);
        // Not "ready": operators' scripts and the tests wait for the daemon's `ready` line,
        // which comes later (after the firewall and the capture sockets).
        tracing::info!(pid, "action runner started");
        let (tx, mut rx) = mpsc::unbounded_channel::<ToRunner>();
        tokio::task::spawn_local(async move {
            while let Some(req) = rx.recv().await {
                let mut line = req.to_line().into_bytes();
                line.push(b'\n');
                if stdin.write_all(&line).await.is_err() {
                    break;
                }
            }
            // Dropping stdin here closes it: the runner lets its commands end and exits.
        });
        {
            let mut me = this.borrow_mut();
            me.link = Some(Link {
                requests: tx,
                _child: child,
            });
            me.runner = RunnerState::Running(pid);
        }
        let me = Rc::clone(this);
        tokio::task::spawn_local(async move {
            let mut stdout = stdout;
            loop {
                match read_line(&mut stdout).await {
                    Ok(Some(line)) => match FromRunner::parse(&line) {
                        Ok(msg) => me.borrow_mut().answer(msg),
                        Err(e) => {
                            tracing::error!(line = %line, error = %e, "action runner: answer not understood")
                        }
                    },
                    Ok(None) => break,
                    Err(e) => {
                        tracing::error!(error = %e, "action runner: cannot read its answers");
                        break;
                    }
                }
            }
            me.borrow_mut().runner_gone();
        });
    }

    /// Uses the actions of a new configuration (after a reload). Runs going on go on, under
    /// the settings they started with (the runner keeps them); they count against the new
    /// `max_concurrent` of an action of the same name until they end.
    pub(super) fn set_config(&mut self, config: &Config) {
        self.config = config.actions.clone();
        let names: Vec<&str> = self.config.iter().map(|a| a.name.as_str()).collect();
        self.last.retain(|k, _| names.contains(&k.as_str()));
        self.outcomes.retain(|k, _| names.contains(&k.as_str()));
        // Cooldowns of the clients that may still run the action.
        self.last_start.retain(|(client, action), _| {
            config
                .clients
                .iter()
                .any(|c| c.name == *client && c.actions.contains(action))
        });
    }

    /// Sends `reload` to the runner and waits for its answer: the fingerprint of what it read.
    pub(super) async fn reload_runner(this: &Rc<RefCell<Actions>>) -> Result<String, String> {
        let (tx, rx) = oneshot::channel();
        {
            let mut me = this.borrow_mut();
            let Some(link) = &me.link else {
                return Err("the action runner is not running".to_owned());
            };
            if link.requests.send(ToRunner::Reload).is_err() {
                return Err("the action runner is gone".to_owned());
            }
            me.reload_answer = Some(tx);
        }
        match tokio::time::timeout(ANSWER_WITHIN, rx).await {
            Ok(Ok(FromRunner::Reloaded { fingerprint })) => Ok(fingerprint),
            Ok(Ok(FromRunner::Refused { message })) => Err(message),
            Ok(Ok(other)) => Err(format!("unexpected answer {other:?}")),
            Ok(Err(_)) => Err("the action runner is gone".to_owned()),
            Err(_) => Err("the action runner did not answer within 15 s".to_owned()),
        }
    }

    /// Tells the runner to use (`true`) or forget what its last `reload` read.
    pub(super) fn finish_reload(&self, commit: bool) {
        if let Some(link) = &self.link {
            let _ = link.requests.send(if commit {
                ToRunner::Commit
            } else {
                ToRunner::Abort
            });
        }
    }

    fn count(&mut self, action: &str, outcome: &str) {
        *self
            .outcomes
            .entry(action.to_owned())
            .or_default()
            .entry(outcome.to_owned())
            .or_insert(0) += 1;
    }

    /// A grant's action: run it, unless the knock came from another address than the one its
    /// payload names (`bound`), or the cooldown or the cap says no. The `action not run` lines
    /// go through `log`, the limiter of the `rejected` lines (a client with a valid key could
    /// otherwise write one per knock); the counters count every refusal.
    pub(super) fn request(
        &mut self,
        client: &str,
        source: IpAddr,
        bound: Option<IpAddr>,
        action: &sesame_proto::wire::Action,
        log: &mut LogLimiter,
    ) {
        let name = action.name.as_str();
        let Some(config) = self.config.iter().find(|a| a.name == name).cloned() else {
            // The tracker only grants configured actions; a reload may have removed it since.
            if log.allow() {
                tracing::warn!(client = %client, source = %source, action = %name, reason = %"unknown", "action not run");
            }
            return;
        };
        if let Some(address) = bound.filter(|a| *a != source) {
            // `allow_other_ip` lets a knock open another address; it never lets one run an
            // action from elsewhere than the address its payload names.
            self.count(name, "other_ip");
            if log.allow() {
                tracing::warn!(
                    client = %client,
                    source = %source,
                    action = %name,
                    reason = %"other_ip",
                    detail = %format!("the payload names {address}; an action runs only for a knock from the address it names"),
                    "action not run"
                );
            }
            return;
        }
        let key = (client.to_owned(), name.to_owned());
        let now = Instant::now();
        if let Some(at) = self.last_start.get(&key) {
            let since = now.duration_since(*at);
            if since < Duration::from_millis(config.cooldown_ms) {
                self.count(name, "cooldown");
                if log.allow() {
                    tracing::warn!(
                        client = %client,
                        source = %source,
                        action = %name,
                        reason = %"cooldown",
                        detail = %format!(
                            "this client ran it {} ms ago (cooldown_ms = {})",
                            since.as_millis(),
                            config.cooldown_ms
                        ),
                        "action not run"
                    );
                }
                return;
            }
        }
        let running = self.running.get(name).copied().unwrap_or(0);
        if running >= config.max_concurrent as u64 {
            self.count(name, "busy");
            if log.allow() {
                tracing::warn!(
                    client = %client,
                    source = %source,
                    action = %name,
                    reason = %"busy",
                    detail = %format!("{running} runs going (max_concurrent = {})", config.max_concurrent),
                    "action not run"
                );
            }
            return;
        }
        let id = self.next_id;
        let req = ToRunner::Run(RunRequest {
            id,
            action: name.to_owned(),
            client: client.to_owned(),
            source,
            argument: action.argument.clone(),
        });
        let sent = self
            .link
            .as_ref()
            .is_some_and(|l| l.requests.send(req).is_ok());
        if !sent {
            self.count(name, "failed");
            if log.allow() {
                tracing::error!(
                    client = %client,
                    source = %source,
                    action = %name,
                    reason = %"runner_unavailable",
                    detail = %"the action runner is not running (its exit is logged above): a reload starts a new one, with the privileges sesamed has now, or restart sesamed",
                    "action not run"
                );
            }
            return;
        }
        self.next_id += 1;
        self.last_start.insert(key, now);
        *self.running.entry(name.to_owned()).or_insert(0) += 1;
        self.pending.insert(
            id,
            Pending {
                action: name.to_owned(),
                client: client.to_owned(),
                source,
                argument: action.argument.clone(),
                started: false,
            },
        );
        // The runner ends every run by its timeout; a `done` that never comes (a runner that
        // hangs) must not hold the slot for ever.
        let wait = Duration::from_millis(config.timeout_ms)
            + crate::action::runner::KILL_GRACE
            + DONE_MARGIN;
        let this = self.this.clone();
        tokio::task::spawn_local(async move {
            tokio::time::sleep(wait).await;
            if let Some(me) = this.upgrade() {
                let mut me = me.borrow_mut();
                if me.pending.contains_key(&id) {
                    me.done(Done {
                        id,
                        outcome: Outcome::Failed,
                        code: None,
                        ms: wait.as_millis() as u64,
                        text: "no answer from the action runner past the action's timeout"
                            .to_owned(),
                    });
                }
            }
        });
        self.last.insert(
            name.to_owned(),
            LastRun {
                id,
                at: system_now(),
                client: client.to_owned(),
                source,
                done: None,
            },
        );
    }

    /// A line from the runner.
    fn answer(&mut self, msg: FromRunner) {
        match msg {
            FromRunner::Started { id, pid } => {
                if let Some(p) = self.pending.get_mut(&id) {
                    p.started = true;
                    let user = self
                        .config
                        .iter()
                        .find(|a| a.name == p.action)
                        .map_or("?", |a| a.user.as_str());
                    if p.argument.is_empty() {
                        tracing::info!(
                            client = %p.client,
                            source = %p.source,
                            action = %p.action,
                            user = %user,
                            pid,
                            "action started"
                        );
                    } else {
                        tracing::info!(
                            client = %p.client,
                            source = %p.source,
                            action = %p.action,
                            argument = %p.argument,
                            user = %user,
                            pid,
                            "action started"
                        );
                    }
                }
            }
            FromRunner::Done(done) => self.done(done),
            FromRunner::Reloaded { .. } | FromRunner::Refused { .. } => {
                if let Some(tx) = self.reload_answer.take() {
                    let _ = tx.send(msg);
                }
            }
            FromRunner::Ready { .. } | FromRunner::Error { .. } => {
                tracing::warn!(answer = ?msg, "action runner: unexpected answer");
            }
        }
    }

    fn done(&mut self, d: Done) {
        let Some(p) = self.pending.remove(&d.id) else {
            tracing::warn!(id = d.id, "action runner: an answer for no request");
            return;
        };
        if let Some(n) = self.running.get_mut(&p.action) {
            *n = n.saturating_sub(1);
        }
        let label = match (d.outcome, d.code) {
            (Outcome::Exited, Some(0)) => "exited_zero",
            (Outcome::Exited, _) => "exited_nonzero",
            (Outcome::Killed, _) => "killed",
            (Outcome::Failed, _) => "failed",
        };
        self.count(&p.action, label);
        if let Some(last) = self.last.get_mut(&p.action).filter(|l| l.id == d.id) {
            last.done = Some((d.outcome, d.code, d.ms));
        }
        if d.outcome == Outcome::Failed {
            // It never ran (or the runner lost it): one line, with why.
            tracing::warn!(
                client = %p.client,
                source = %p.source,
                action = %p.action,
                started = p.started,
                ms = d.ms,
                detail = %d.text,
                "action failed"
            );
            return;
        }
        let code = d.code.map_or_else(|| "-".to_owned(), |c| c.to_string());
        macro_rules! finished {
            ($level:ident) => {
                if d.text.is_empty() {
                    tracing::$level!(
                        client = %p.client,
                        source = %p.source,
                        action = %p.action,
                        outcome = %d.outcome,
                        code = %code,
                        ms = d.ms,
                        "action finished"
                    )
                } else {
                    tracing::$level!(
                        client = %p.client,
                        source = %p.source,
                        action = %p.action,
                        outcome = %d.outcome,
                        code = %code,
                        ms = d.ms,
                        stderr = ?d.text,
                        "action finished"
                    )
                }
            };
        }
        if label == "exited_zero" {
            finished!(info);
        } else {
            finished!(warn);
        }
    }

    /// The runner's stdout closed: it is gone.
    fn runner_gone(&mut self) {
        if self.link.take().is_none() {
            return;
        }
        self.runner = RunnerState::Gone(system_now());
        // `systemctl stop` signals sesamed and its runner together: the runner may be gone
        // before sesamed has seen its own SIGTERM. Said half a second later, when it is clear
        // whether sesamed is stopping (if it has exited by then, nothing needs saying).
        let pending_runs = self.pending.len();
        let this = self.this.clone();
        tokio::task::spawn_local(async move {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let Some(me) = this.upgrade() else { return };
            if me.borrow().stopping {
                tracing::info!("the action runner exited (sesamed is stopping)");
            } else {
                tracing::error!(
                    pending = pending_runs,
                    "the action runner exited: no action runs (each is logged as not run) until sesamed restarts or a reload starts a new runner, with the privileges sesamed has then"
                );
            }
        });
        let pending: Vec<(u64, Pending)> = self.pending.drain().collect();
        for (id, p) in pending {
            self.pending.insert(id, p);
            self.done(Done {
                id,
                outcome: Outcome::Failed,
                code: None,
                ms: 0,
                text: "the action runner exited".to_owned(),
            });
        }
        if let Some(tx) = self.reload_answer.take() {
            drop(tx);
        }
    }

    /// The runner, as `sesamed status` shows it: `running` (pid), `exited` (when), or nothing
    /// when the configuration has no action.
    pub(super) fn runner_status(&self) -> Option<crate::control::RunnerStatus> {
        use crate::control::RunnerStatus;
        match self.runner {
            RunnerState::None => None,
            RunnerState::Running(pid) => Some(RunnerStatus {
                state: "running".to_owned(),
                pid: Some(pid),
                since: None,
            }),
            RunnerState::Gone(at) => Some(RunnerStatus {
                state: "exited".to_owned(),
                pid: None,
                since: Some(rfc3339(at)),
            }),
        }
    }

    /// What `sesamed status` shows.
    pub(super) fn statuses(&self) -> Vec<ActionStatus> {
        self.config
            .iter()
            .map(|a| {
                let last = self.last.get(&a.name);
                ActionStatus {
                    name: a.name.clone(),
                    user: a.user.clone(),
                    running: self.running.get(&a.name).copied().unwrap_or(0),
                    last_run: last.map(|l| rfc3339(l.at)),
                    last_client: last.map(|l| l.client.clone()),
                    last_source: last.map(|l| l.source.to_string()),
                    last_outcome: last
                        .map(|l| l.done.map_or("running", |(o, _, _)| o.as_str()).to_owned()),
                    last_code: last.and_then(|l| l.done.and_then(|(_, c, _)| c)),
                    last_ms: last.and_then(|l| l.done.map(|(_, _, ms)| ms)),
                    outcomes: self.outcomes.get(&a.name).cloned().unwrap_or_default(),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    //! The daemon's side against a stand-in runner (a shell loop speaking the line protocol):
    //! cooldown, `max_concurrent`, a knock from another address than its payload names, the
    //! counters and last run, a `done` that never comes, and a runner that exits.
    #![allow(clippy::unwrap_used)]
    use super::*;
    use sesame_keys::PrivateKey;

    fn config() -> Config {
        let text = format!(
            r#"private_key_file = "server.key"
[firewall]
protect = ["tcp/22"]
[[client]]
name = "laptop"
public_key = "{}"
actions = ["quick", "slow"]
[[client]]
name = "phone"
public_key = "{}"
actions = ["quick"]
[[action]]
name = "quick"
command = ["/bin/true"]
cooldown_ms = 60000
max_concurrent = 2
[[action]]
name = "slow"
command = ["/bin/true"]
cooldown_ms = 0
timeout_ms = 100
"#,
            PrivateKey::from_bytes([1; 32]).public_key(),
            PrivateKey::from_bytes([2; 32]).public_key(),
        );
        Config::parse(&text, Path::new("/etc/sesame/sesamed.toml")).unwrap()
    }

    /// A runner that answers `start` and `done ... exited 0` to every `run` of `quick`, and
    /// nothing to the others; after `exit_after` lines (0: never), it exits.
    async fn fake_runner(exit_after: u32) -> Spawned {
        let script = format!(
            r#"echo ready 0123456789abcdef
n=0
while read -r word id action rest; do
  n=$((n+1))
  if [ "$word" = run ] && [ "$action" = quick ]; then
    echo "start $id 4242"; echo "done $id exited 0 5 it said: hi"
  fi
  if [ {exit_after} -gt 0 ] && [ $n -ge {exit_after} ]; then exit 0; fi
done"#
        );
        let mut child = tokio::process::Command::new("/bin/sh")
            .args(["-c", &script])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        // `spawn_runner` reads this line in the daemon.
        let ready = read_line(&mut stdout).await.unwrap().unwrap();
        assert_eq!(ready, "ready 0123456789abcdef");
        Spawned { child, stdout }
    }

    fn action(name: &str) -> sesame_proto::wire::Action {
        sesame_proto::wire::Action {
            name: name.to_owned(),
            argument: String::new(),
        }
    }

    async fn settle() {
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    fn count(a: &Rc<RefCell<Actions>>, action: &str, outcome: &str) -> u64 {
        a.borrow()
            .outcomes
            .get(action)
            .and_then(|o| o.get(outcome))
            .copied()
            .unwrap_or(0)
    }

    fn local<F: std::future::Future<Output = ()>>(f: F) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        tokio::task::LocalSet::new().block_on(&rt, f);
    }

    const LAPTOP: &str = "198.18.0.2";

    #[test]
    fn cooldown_cap_and_address_decide_before_the_runner_is_asked() {
        local(async {
            let a = Actions::new(&config());
            let mut log = LogLimiter::new();
            Actions::attach(&a, fake_runner(0).await);
            let src: IpAddr = LAPTOP.parse().unwrap();
            // Runs, and its answer is counted and shown.
            a.borrow_mut()
                .request("laptop", src, Some(src), &action("quick"), &mut log);
            settle().await;
            assert_eq!(count(&a, "quick", "exited_zero"), 1);
            let st = a.borrow().statuses();
            let quick = st.iter().find(|s| s.name == "quick").unwrap();
            assert_eq!(quick.last_client.as_deref(), Some("laptop"));
            assert_eq!(quick.last_source.as_deref(), Some(LAPTOP));
            assert_eq!(quick.last_outcome.as_deref(), Some("exited"));
            assert_eq!((quick.last_code, quick.last_ms), (Some(0), Some(5)));
            assert_eq!(quick.running, 0);
            // The same client again within cooldown_ms: not run; another client: runs.
            a.borrow_mut()
                .request("laptop", src, None, &action("quick"), &mut log);
            a.borrow_mut()
                .request("phone", src, None, &action("quick"), &mut log);
            settle().await;
            assert_eq!(count(&a, "quick", "cooldown"), 1);
            assert_eq!(count(&a, "quick", "exited_zero"), 2);
            // A payload naming another address than the knock's source: not run.
            let other: IpAddr = "198.18.0.9".parse().unwrap();
            a.borrow_mut()
                .request("laptop", src, Some(other), &action("slow"), &mut log);
            assert_eq!(count(&a, "slow", "other_ip"), 1);
            // `slow` gets no answer: one runs, the next is over max_concurrent (1).
            a.borrow_mut()
                .request("laptop", src, None, &action("slow"), &mut log);
            a.borrow_mut()
                .request("laptop", src, None, &action("slow"), &mut log);
            assert_eq!(count(&a, "slow", "busy"), 1);
            assert_eq!(a.borrow().running.get("slow"), Some(&1));
            let st = a.borrow().statuses();
            let slow = st.iter().find(|s| s.name == "slow").unwrap();
            assert_eq!(slow.last_outcome.as_deref(), Some("running"));
            assert!(a.borrow().pending.values().all(|p| !p.started));
            assert_eq!(
                a.borrow().runner_status().map(|r| r.state),
                Some("running".to_owned())
            );
        });
    }

    /// A `done` that never comes frees its slot after the timeout, the grace and a margin,
    /// counted `failed`.
    #[test]
    fn a_run_the_runner_never_ends_is_failed_after_its_timeout() {
        local(async {
            let a = Actions::new(&config());
            let mut log = LogLimiter::new();
            Actions::attach(&a, fake_runner(0).await);
            let src: IpAddr = LAPTOP.parse().unwrap();
            a.borrow_mut()
                .request("laptop", src, None, &action("slow"), &mut log);
            tokio::time::sleep(Duration::from_millis(100) + DONE_MARGIN).await;
            assert_eq!(count(&a, "slow", "failed"), 0, "not before");
            tokio::time::sleep(crate::action::runner::KILL_GRACE + Duration::from_millis(300))
                .await;
            assert_eq!(count(&a, "slow", "failed"), 1);
            assert_eq!(a.borrow().running.get("slow"), Some(&0));
            a.borrow_mut()
                .request("laptop", src, None, &action("slow"), &mut log);
            assert_eq!(a.borrow().running.get("slow"), Some(&1));
        });
    }

    /// A runner that exits fails what was pending, and every later knock for an action is
    /// not run (counted `failed`): fail closed.
    #[test]
    fn a_runner_that_exits_fails_closed() {
        local(async {
            let a = Actions::new(&config());
            let mut log = LogLimiter::new();
            Actions::attach(&a, fake_runner(1).await);
            let src: IpAddr = LAPTOP.parse().unwrap();
            // `slow` gets no answer, and the runner exits after reading it.
            a.borrow_mut()
                .request("laptop", src, None, &action("slow"), &mut log);
            settle().await;
            assert!(!a.borrow().has_runner());
            assert_eq!(count(&a, "slow", "failed"), 1);
            assert_eq!(a.borrow().running.get("slow"), Some(&0));
            let runner = a.borrow().runner_status().unwrap();
            assert_eq!(runner.state, "exited");
            assert!(runner.since.is_some());
            a.borrow_mut()
                .request("phone", src, None, &action("quick"), &mut log);
            assert_eq!(count(&a, "quick", "failed"), 1);
            assert!(a.borrow().pending.is_empty());
        });
    }

    /// A buffer the log lines of a test go to.
    #[derive(Clone, Default)]
    struct Lines(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Lines {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// `action not run` lines share the limiter of the `rejected` lines (50 a second, then one
    /// line saying how many were suppressed); the counters count every refusal.
    #[test]
    fn action_not_run_lines_are_rate_limited() {
        let lines = Lines::default();
        let writer = lines.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            local(async {
                let a = Actions::new(&config());
                let mut log = LogLimiter::new();
                Actions::attach(&a, fake_runner(0).await);
                let src: IpAddr = LAPTOP.parse().unwrap();
                a.borrow_mut()
                    .request("laptop", src, None, &action("quick"), &mut log);
                for _ in 0..200 {
                    a.borrow_mut()
                        .request("laptop", src, None, &action("quick"), &mut log);
                }
                assert_eq!(count(&a, "quick", "cooldown"), 200);
                tokio::time::sleep(Duration::from_millis(1050)).await;
                log.flush_if_due();
            });
        });
        let text = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
        let refused = text
            .lines()
            .filter(|l| l.contains("action not run") && l.contains("reason=cooldown"))
            .count();
        assert_eq!(refused, 50, "{text}");
        assert!(
            text.contains("suppressed=150"),
            "one line says how many were left out: {text}"
        );
    }
}
