//! Network namespaces on this machine: whether the harness can make them, and removing what
//! earlier runs of the harness left behind.

use std::path::Path;
use std::process::Command;

use crate::lab::NETNS_ETC;
use crate::process::{signal, text};

/// Prefix of every namespace and temporary directory a lab creates.
pub const PREFIX: &str = "se2e";

/// Checks that this process is root, has `ip`, `nft` and `tcpdump`, and can make a namespace
/// with an nftables table in it (after removing stale namespaces).
pub(crate) fn probe() -> Result<(), String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        return Err(format!("not root (euid {euid})"));
    }
    for tool in [["ip", "-V"], ["nft", "--version"], ["tcpdump", "--version"]] {
        match Command::new(tool[0]).arg(tool[1]).output() {
            Ok(o) if o.status.success() => {}
            Ok(o) => return Err(format!("`{} {}` failed: {}", tool[0], tool[1], text(&o))),
            Err(e) => return Err(format!("cannot run {}: {e}", tool[0])),
        }
    }
    remove_stale_namespaces();
    let ns = format!("{PREFIX}-{}-probe", std::process::id());
    let result = (|| {
        sh_ok(&["ip", "netns", "add", &ns])?;
        sh_ok(&[
            "ip", "netns", "exec", &ns, "nft", "add", "table", "inet", "probe",
        ])?;
        sh_ok(&["ip", "netns", "exec", &ns, "nft", "list", "tables"])?;
        Ok(())
    })();
    let _ = Command::new("ip").args(["netns", "del", &ns]).output();
    result
}

/// Deletes namespaces left by earlier runs of this harness whose process is gone.
fn remove_stale_namespaces() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let Some(rest) = name.strip_prefix(&format!("{PREFIX}-")) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            kill_namespace_pids(name);
            let _ = Command::new("ip").args(["netns", "del", name]).output();
        }
    }
    // Hosts files of namespaces of earlier runs ([`Lab::set_hosts`]).
    let Ok(dirs) = std::fs::read_dir(NETNS_ETC) else {
        return;
    };
    for d in dirs.flatten() {
        let name = d.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(&format!("{PREFIX}-")) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(d.path());
        }
    }
}

fn sh_ok(args: &[&str]) -> Result<String, String> {
    let o = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| format!("cannot run {}: {e}", args[0]))?;
    if o.status.success() {
        Ok(String::from_utf8_lossy(&o.stdout).into_owned())
    } else {
        Err(format!("`{}` failed: {}", args.join(" "), text(&o)))
    }
}

/// Kills every process running in namespace `ns`.
pub(crate) fn kill_namespace_pids(ns: &str) {
    if let Ok(o) = Command::new("ip").args(["netns", "pids", ns]).output() {
        for pid in String::from_utf8_lossy(&o.stdout).split_whitespace() {
            if let Ok(pid) = pid.parse::<u32>() {
                signal(pid, libc::SIGKILL);
            }
        }
    }
}
