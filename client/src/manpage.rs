//! Manual pages: `sesame(1)` (clap_mangen's page with FILES, EXIT STATUS, EXAMPLES and SEE
//! ALSO added) and one page per subcommand.

use std::io::Write;
use std::path::Path;

use anyhow::Context;
use clap_mangen::roff::{Inline, Roff, bold, italic, roman};

/// `sesame man`: the page on standard output, or with `dir` every page (`sesame.1`, one per
/// subcommand) written there.
pub fn man(cmd: clap::Command, dir: Option<&Path>) -> anyhow::Result<()> {
    match dir {
        None => {
            let mut out = std::io::stdout().lock();
            out.write_all(main_page(cmd).as_bytes())
                .and_then(|()| out.flush())
                .context("cannot write the manual page")
        }
        Some(dir) => {
            let name = cmd.get_name().to_owned();
            clap_mangen::generate_to(cmd.clone(), dir)
                .and_then(|()| std::fs::write(dir.join(format!("{name}.1")), main_page(cmd)))
                .with_context(|| format!("cannot write manual pages to {}", dir.display()))
        }
    }
}

/// `sesame(1)`: clap_mangen's page with FILES, EXIT STATUS, EXAMPLES and SEE ALSO before its
/// VERSION section.
pub fn main_page(cmd: clap::Command) -> String {
    let mut buf = Vec::new();
    // Writing to a Vec cannot fail.
    let _ = clap_mangen::Man::new(cmd).render(&mut buf);
    let page = String::from_utf8_lossy(&buf).into_owned();
    let mut extra = Roff::new();
    extra.control("SH", ["FILES"]);
    for (path, what) in [
        (
            "~/.config/sesame/profiles/NAME.toml",
            "The installed profiles (sesame import, sesame list, sesame open NAME). The directory is $XDG_CONFIG_HOME/sesame when XDG_CONFIG_HOME is set.",
        ),
        (
            "~/.config/sesame/NAME.key",
            "This device's private key for a profile (sesame genkey; sesame import writes the one a URI carries). Mode 0600: a key the group or others can read is refused.",
        ),
        (
            "~/.config/sesame/NAME.psk",
            "A pre-shared key the server gave, if any (mode 0600).",
        ),
        (
            "~/.config/sesame/groups.toml",
            "Groups of profiles, one line each (prod = [\"web1\", \"web2\"]): sesame open @prod knocks them all. sesame import --group adds to it (a file of several profiles makes a group); it may be edited by hand.",
        ),
    ] {
        extra.control("TP", []);
        extra.text([italic(path)]);
        extra.text([roman(what)]);
    }
    extra.control("SH", ["EXIT STATUS"]);
    for (code, what) in [
        (
            "0",
            "Success (open --wait and proxy: the service answered; open --wait with lease = \"connection\" in the profile: the knock was sent, and nothing connected to check it). When the server's host has IPv4 and IPv6 addresses, open knocks both, and one family that cannot be knocked (no route from this host; or no address to bind its knock to, when it is not the first address: open sends no unbound knock there) is only reported: open succeeds if the other was knocked (with --wait: if the service answered at the address it checks, the first in the resolver's order that this host has a route to). run: the knock was sent; the server never answers, so this does not say that the action ran (sesamed status on the server does).",
        ),
        (
            "1",
            "Failure: the knock could not be sent (over any family), or with --wait the service never answered (sesame says what is likely wrong). With several profiles: one of them failed.",
        ),
        (
            "2",
            "Usage or configuration error: a bad option, or a profile or key file that is not valid. With several profiles, one such error stops the command before anything is sent.",
        ),
        (
            "3",
            "open --wait: the knock was sent, but the service answered already before it (a lease for this address, or the port is not protected), so it cannot confirm that the knock worked. With several profiles: one was unconfirmed, none failed.",
        ),
    ] {
        extra.control("TP", []);
        extra.text([bold(code)]);
        extra.text([roman(what)]);
    }
    extra.control("SH", ["EXAMPLES"]);
    for (what, lines) in [
        (
            "Make this device's key and print the public key for the server's sesamed client add:",
            &[
                "umask 077; mkdir -p ~/.config/sesame",
                "sesame genkey | tee ~/.config/sesame/laptop.key | sesame pubkey",
            ][..],
        ),
        (
            "Install the profile the server made (sesamed export-client), or paste a sesame:// URI:",
            &[
                "sesame import laptop.toml --name myserver",
                "sesame import -",
            ][..],
        ),
        (
            "Knock, wait until ssh answers, then connect:",
            &["sesame open myserver --wait && ssh ssh.example.org"][..],
        ),
        (
            "Knock over IPv4 only (by default a host with both families is knocked over both, each knock bound to this device's address in its family):",
            &["sesame open myserver -4"][..],
        ),
        (
            "Install the profiles of several servers (sesamed export-client on each, the outputs put in one file) as the group prod, then knock them all in parallel, one line each:",
            &[
                "sesame import fleet.toml --group prod",
                "sesame open @prod",
                "sesame open web1 web2 --wait",
            ][..],
        ),
        (
            "Let OpenSSH knock (in ~/.ssh/config; with lease = \"connection\" in the profile, the connection sesame proxy relays is the only one it makes):",
            &[
                "Host myserver",
                "    HostName ssh.example.org",
                "    ProxyCommand sesame proxy myserver %h %p",
            ][..],
        ),
        (
            "Ask the server to run its action wake with the argument nas (a command its admin configured; the server does not answer, so exit status 0 means sent: sesamed status on the server shows the run):",
            &["sesame run myserver wake nas"][..],
        ),
    ] {
        extra.control("PP", []);
        extra.text([roman(what)]);
        extra.control("PP", []);
        extra.control("RS", ["4"]);
        extra.control("nf", []);
        for line in lines {
            extra.text([roman(*line)]);
        }
        extra.control("fi", []);
        extra.control("RE", []);
    }
    extra.control("SH", ["SEE ALSO"]);
    let mut parts: Vec<Inline> = Vec::new();
    for (i, (name, section)) in [("sesamed", "1"), ("sesamed.toml", "5"), ("ssh_config", "5")]
        .into_iter()
        .enumerate()
    {
        if i > 0 {
            parts.push(roman(", "));
        }
        parts.push(bold(name));
        parts.push(roman(format!("({section})")));
    }
    extra.text(parts);
    // The roff crate starts every rendering with the two lines that define `Aq`: once is enough.
    let rendered = extra.render();
    let extra: String = rendered
        .split_inclusive('\n')
        .skip_while(|l| l.starts_with(".ie ") || l.starts_with(".el "))
        .collect();
    match page.find("\n.SH VERSION") {
        Some(at) => format!("{}\n{}{}", &page[..at], extra, &page[at + 1..]),
        None => format!("{page}{extra}"),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use clap::CommandFactory;

    use super::*;

    #[test]
    fn the_page_has_files_exit_status_examples_and_see_also() {
        let page = main_page(crate::Cli::command());
        let at = |s: &str| page.find(s).unwrap_or_else(|| panic!("no {s}:\n{page}"));
        assert!(at(".TH sesame 1") < at(".SH OPTIONS").min(at(".SH SUBCOMMANDS")));
        assert!(at(".SH FILES") < at(".SH \"EXIT STATUS\""));
        assert!(at(".SH \"EXIT STATUS\"") < at(".SH EXAMPLES"));
        assert!(at(".SH EXAMPLES") < at(".SH \"SEE ALSO\""));
        assert!(at(".SH \"SEE ALSO\"") < at(".SH VERSION"));
        assert!(page.contains("profiles/NAME.toml"), "{page}");
        let exit = &page[at(".SH \"EXIT STATUS\"")..at(".SH EXAMPLES")];
        for code in ["0", "1", "2", "3"] {
            assert!(
                exit.contains(&format!("\\fB{code}\\fR")),
                "exit status {code}: {exit}"
            );
        }
        assert!(page.contains("sesame proxy myserver %h %p"), "{page}");
        assert!(page.contains("sesame open @prod"), "{page}");
        assert!(page.contains("groups.toml"), "{page}");
        assert_eq!(page.matches(".ie ").count(), 1, "one preamble:\n{page}");
    }

    #[test]
    fn the_page_shows_run() {
        let page = main_page(crate::Cli::command());
        assert!(page.contains("sesame run myserver wake nas"), "{page}");
        assert!(page.contains("sesame\\-run(1)"), "{page}");
        let exit =
            &page[page.find(".SH \"EXIT STATUS\"").unwrap()..page.find(".SH EXAMPLES").unwrap()];
        assert!(exit.contains("run: the knock was sent"), "{exit}");
    }

    /// groff renders it without a warning (where groff is installed).
    #[test]
    fn the_page_renders_without_warnings() {
        let page = main_page(crate::Cli::command());
        let dir = std::env::temp_dir().join(format!("sesame-man-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("sesame.1");
        std::fs::write(&file, &page).unwrap();
        let r = std::process::Command::new("groff")
            .args(["-man", "-Tutf8", "-ww", "-P-cbou"])
            .arg(&file)
            .output();
        let _ = std::fs::remove_dir_all(&dir);
        let Ok(r) = r else {
            eprintln!("groff not available: rendering not checked");
            return;
        };
        let stderr = String::from_utf8_lossy(&r.stderr);
        assert!(r.status.success() && stderr.is_empty(), "groff: {stderr}");
        let text = String::from_utf8_lossy(&r.stdout);
        for heading in ["FILES", "EXIT STATUS", "EXAMPLES", "SEE ALSO"] {
            assert!(text.contains(heading), "{text}");
        }
    }
}
