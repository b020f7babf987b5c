//! Records the git commit the binary was built from (for campaign reports), when git and a
//! checkout are there; "unknown" otherwise.

fn main() {
    let commit = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=ESMFUZZ_GIT_COMMIT={commit}");
    // Outside a checkout there is nothing to watch (a missing path would rerun this always).
    // Only HEAD and the branch it names: watching all of `.git/refs/heads` rebuilt this crate
    // whenever any other branch (a worktree's) moved.
    if let Ok(head) = std::fs::read_to_string(".git/HEAD") {
        println!("cargo:rerun-if-changed=.git/HEAD");
        if let Some(branch) = head.trim().strip_prefix("ref: ") {
            // A missing path would rerun this always: watch only what is there.
            let loose = std::path::Path::new(".git").join(branch);
            for path in [loose.as_path(), std::path::Path::new(".git/packed-refs")] {
                if path.exists() {
                    println!("cargo:rerun-if-changed={}", path.display());
                }
            }
        }
    } else {
        println!("cargo:rerun-if-changed=build.rs");
    }
}
