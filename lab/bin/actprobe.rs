//! `sesame-actprobe`: the commands of the end-to-end tests of server actions
//! (lab/e2e/actions.rs). sesamed runs them as an `[[action]]`'s argv; each leaves a mark in a
//! file the test reads (one JSON object a line, appended).
//!
//! ```text
//! sesame-actprobe record FILE ARGS...   append what it ran as: its argv (every word as given,
//!                                       from `record` on), uid, gid (real and effective),
//!                                       supplementary groups, pid, process group, session,
//!                                       working directory and environment; exit 0
//! sesame-actprobe fail FILE CODE        record as above, then exit CODE
//! sesame-actprobe hang FILE             start a child (`sesame-actprobe sleep`, in the same
//!                                       process group), record both pids, then sleep an hour
//! sesame-actprobe sleep                 sleep an hour
//! ```
//!
//! Only std and serde_json, no unsafe: the ids come from /proc/self.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    match run(&args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("sesame-actprobe: {e}");
            ExitCode::from(2)
        }
    }
}

fn run(args: &[String]) -> Result<ExitCode, String> {
    let cmd = args.get(1).map(String::as_str).unwrap_or("");
    match cmd {
        "record" | "fail" | "hang" => {
            let file = args.get(2).ok_or("FILE missing")?;
            let mut mark = what_i_am(&args[1..])?;
            let code = if cmd == "fail" {
                let c: u8 = args
                    .get(3)
                    .and_then(|c| c.parse().ok())
                    .ok_or("fail needs FILE CODE")?;
                c
            } else {
                0
            };
            let child = if cmd == "hang" {
                let exe = std::env::current_exe().map_err(|e| e.to_string())?;
                let child = std::process::Command::new(exe)
                    .arg("sleep")
                    .spawn()
                    .map_err(|e| format!("cannot start the child: {e}"))?;
                Some(child)
            } else {
                None
            };
            if let Some(c) = &child {
                mark["child"] = serde_json::json!(c.id());
            }
            let mut line = mark.to_string();
            line.push('\n');
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(file)
                .and_then(|mut f| f.write_all(line.as_bytes()))
                .map_err(|e| format!("{file}: {e}"))?;
            if child.is_some() {
                std::thread::sleep(Duration::from_secs(3600));
            }
            Ok(ExitCode::from(code))
        }
        "sleep" => {
            std::thread::sleep(Duration::from_secs(3600));
            Ok(ExitCode::SUCCESS)
        }
        _ => Err(format!(
            "unknown command {cmd:?} (record, fail, hang, sleep)"
        )),
    }
}

/// A field of /proc/self/status (`Uid:`, `Gid:`, `Groups:`) as numbers.
fn status_numbers(status: &str, key: &str) -> Vec<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .map(|rest| {
            rest.split_whitespace()
                .filter_map(|n| n.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The process's identity and surroundings; `argv` is its arguments (without the program).
fn what_i_am(argv: &[String]) -> Result<serde_json::Value, String> {
    let status = std::fs::read_to_string("/proc/self/status").map_err(|e| e.to_string())?;
    let stat = std::fs::read_to_string("/proc/self/stat").map_err(|e| e.to_string())?;
    // After the command name in parentheses: state, ppid, pgrp, session, ...
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<u64> = after
        .split_whitespace()
        .skip(1)
        .take(3)
        .filter_map(|n| n.parse().ok())
        .collect();
    let uid = status_numbers(&status, "Uid:");
    let gid = status_numbers(&status, "Gid:");
    let env: serde_json::Map<String, serde_json::Value> = std::env::vars_os()
        .map(|(k, v)| {
            (
                k.to_string_lossy().into_owned(),
                serde_json::Value::String(v.to_string_lossy().into_owned()),
            )
        })
        .collect();
    Ok(serde_json::json!({
        "argv": argv,
        "uid": uid.first(),
        "euid": uid.get(1),
        "gid": gid.first(),
        "egid": gid.get(1),
        "groups": status_numbers(&status, "Groups:"),
        "pid": std::process::id(),
        "ppid": fields.first(),
        "pgid": fields.get(1),
        "sid": fields.get(2),
        "cwd": std::env::current_dir().map(|d| d.display().to_string()).unwrap_or_default(),
        "env": env,
    }))
}
