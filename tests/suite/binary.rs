//! The built `esmfuzz` binary, run as a user runs it, for the CLI tests: from the repository
//! root, with no standard input, every run bounded in time (a run past [`HANG`] is killed and
//! fails the test as a hang).

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::common;

/// How long any one command may take before a test calls it a hang.
pub const HANG: Duration = Duration::from_secs(300);

/// What one run left: its exit code (-1 when a signal ended it), stdout and stderr.
#[derive(Debug)]
pub struct Ran {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// The binary with `args` and `env`, from the repository root, through `sh -c` with an
/// address-space limit of `limit_kb` when given (`ulimit -v`); stdout and stderr piped.
pub fn command(args: &[&str], env: &[(&str, &Path)], limit_kb: Option<u64>) -> Command {
    let bin = common::esmfuzz_bin();
    let mut command = match limit_kb {
        Some(kb) => {
            let mut c = Command::new("sh");
            c.arg("-c")
                .arg(format!("ulimit -v {kb} && exec \"$0\" \"$@\""))
                .arg(&bin);
            c
        }
        None => Command::new(&bin),
    };
    command
        .args(args)
        .envs(env.iter().map(|(k, v)| (*k, *v)))
        .current_dir(common::repo())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

/// Starts the binary ([`command`] without environment or limit) and returns at once.
pub fn spawn(args: &[&str]) -> Child {
    command(args, &[], None)
        .spawn()
        .expect("the esmfuzz binary starts")
}

/// Waits for `child` (started with `args`, for the message) for at most [`HANG`].
pub fn wait(child: Child, args: &[&str]) -> Ran {
    let start = Instant::now();
    let pid = child.id();
    let waiter = std::thread::spawn(move || child.wait_with_output());
    while !waiter.is_finished() {
        if start.elapsed() > HANG {
            let _ = Command::new("kill").arg(pid.to_string()).status();
            panic!("esmfuzz {args:?} ran past {HANG:?}: a hang");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let Output {
        status,
        stdout,
        stderr,
    } = waiter.join().expect("the waiter").expect("wait");
    Ran {
        code: status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    }
}

/// Runs the binary to its end ([`command`], [`wait`]).
pub fn run(args: &[&str], env: &[(&str, &Path)], limit_kb: Option<u64>) -> Ran {
    let child = command(args, env, limit_kb)
        .spawn()
        .expect("the esmfuzz binary starts");
    wait(child, args)
}

/// A path as the `&str` an argument list takes.
pub fn s(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 temp path")
}
