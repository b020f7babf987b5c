//! The campaign folder a run writes (`fuzz --out`, `fuzz --resume`, `merge --out`): another
//! campaign in it is refused unless resumed or overwritten, it is locked while a run owns it,
//! and it is touched only after every input was checked ([`check`] touches nothing,
//! [`claim`] is the first write). On resume, `cases.jsonl` is repaired to match the report.

use std::collections::HashSet;
use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// The lock file inside a campaign folder; it holds the pid of the run that last owned the
/// folder, and stays there (removing it would race with a run opening it).
pub const LOCK_FILE: &str = ".esmfuzz.lock";

/// The per-case log of a campaign.
pub const CASES_FILE: &str = "cases.jsonl";

/// Files a campaign writes under fixed names (plots included); `--overwrite` removes them,
/// and the shrunk counterexamples named by [`COUNTEREXAMPLE_PREFIXES`].
const CAMPAIGN_FILES: [&str; 7] = [
    "report.json",
    "report.md",
    CASES_FILE,
    "pooled_cosine.svg",
    "relative_l2.svg",
    "length_vs_cosine.svg",
    "layers.svg",
];

/// The family-name prefixes of `<family>.fasta` counterexamples a campaign leaves.
const COUNTEREXAMPLE_PREFIXES: [&str; 6] = [
    "stratum-",
    "up-to-",
    "mixed-up-to-",
    "packed-",
    "isolation-up-to-",
    "fasta-",
];

/// How a run means to use a campaign folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// `fuzz --out`: the folder must hold no campaign (no report.json, no cases.jsonl).
    NewCampaign,
    /// `merge --out`: the folder must hold no campaign run there (no cases.jsonl); an earlier
    /// merged report is replaced.
    Merge,
    /// `fuzz --resume`: the folder's campaign is continued.
    Resume,
    /// `--overwrite`: the campaign in the folder is removed once the run owns it.
    Overwrite,
}

/// Checks, touching nothing, that a run may claim `dir` as `how`: a folder (or nothing yet),
/// not locked by a running esmfuzz, and holding no campaign unless resumed or overwritten.
pub fn check(dir: &Path, how: Claim) -> Result<()> {
    if dir.exists() && !dir.is_dir() {
        bail!("{}: not a folder; name a campaign folder", dir.display());
    }
    if let Some(holder) = holder(dir)? {
        bail!(
            "{}: another esmfuzz run ({holder}) is writing this campaign; wait for it to end \
             or choose another folder",
            dir.display()
        );
    }
    refuse_existing(dir, how)
}

/// The claim's own refusal of a campaign already in `dir`.
fn refuse_existing(dir: &Path, how: Claim) -> Result<()> {
    let marks: &[&str] = match how {
        Claim::NewCampaign => &["report.json", CASES_FILE],
        Claim::Merge => &[CASES_FILE],
        Claim::Resume | Claim::Overwrite => &[],
    };
    if let Some(mark) = marks.iter().find(|m| dir.join(m).exists()) {
        let hint = match how {
            Claim::Merge => "pass --overwrite to replace it, or choose another --out",
            _ => "pass --resume to continue it, --overwrite to replace it, or choose another --out",
        };
        bail!(
            "{}: holds a campaign already ({mark}); {hint}",
            dir.display()
        );
    }
    Ok(())
}

/// Who holds the lock of `dir`, when a running process does ("pid N"); touches nothing.
fn holder(dir: &Path) -> Result<Option<String>> {
    let path = dir.join(LOCK_FILE);
    let mut file = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("opening {}", path.display())),
    };
    match file.try_lock() {
        Ok(()) => Ok(None),
        Err(TryLockError::WouldBlock) => Ok(Some(read_holder(&mut file))),
        Err(TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("locking {}", path.display()))
        }
    }
}

/// The lock file's content as a holder's name.
fn read_holder(file: &mut File) -> String {
    let mut text = String::new();
    let _ = file.read_to_string(&mut text);
    match text.trim() {
        "" => "pid unknown".to_string(),
        t => t.to_string(),
    }
}

/// A campaign folder this process owns until it is dropped (the lock goes with the file).
#[derive(Debug)]
pub struct OwnedDir {
    _lock: File,
}

/// Takes `dir` for this run: creates it, locks it (refusing when another run holds it,
/// naming that run's pid), checks again under the lock that it may be claimed as `how`,
/// and for [`Claim::Overwrite`] removes the campaign there. Call it after every input has
/// been checked: it is the first write to `dir`.
pub fn claim(dir: &Path, how: Claim) -> Result<OwnedDir> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(LOCK_FILE);
    let mut lock = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    match lock.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => bail!(
            "{}: another esmfuzz run ({}) is writing this campaign; wait for it to end or \
             choose another folder",
            dir.display(),
            read_holder(&mut lock)
        ),
        Err(TryLockError::Error(e)) => {
            return Err(e).with_context(|| format!("locking {}", path.display()));
        }
    }
    lock.set_len(0)
        .and_then(|()| write!(lock, "pid {}", std::process::id()))
        .and_then(|()| lock.flush())
        .with_context(|| format!("writing {}", path.display()))?;
    // Another run may have written a campaign between `check` and the lock.
    refuse_existing(dir, how)?;
    if how == Claim::Overwrite {
        remove_campaign(dir)?;
    }
    Ok(OwnedDir { _lock: lock })
}

/// Removes the files a campaign wrote in `dir` (see [`CAMPAIGN_FILES`]); other files stay.
fn remove_campaign(dir: &Path) -> Result<()> {
    let mut doomed: Vec<PathBuf> = CAMPAIGN_FILES.iter().map(|f| dir.join(f)).collect();
    let entries = std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with(".fasta") && COUNTEREXAMPLE_PREFIXES.iter().any(|p| name.starts_with(p)) {
            doomed.push(entry.path());
        }
    }
    for path in doomed {
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing {}", path.display())),
        }
    }
    Ok(())
}

/// What [`repair_cases`] did to a stopped campaign's `cases.jsonl`.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Repair {
    /// Bytes of a last line cut off part way (a run killed while writing it).
    pub torn_bytes: usize,
    /// Lines of families the report does not hold as finished: they run again.
    pub dropped_lines: usize,
}

/// Makes `path` (a stopped campaign's `cases.jsonl`) agree with its report before a resumed
/// run appends to it: a torn last line is cut off, and the lines of every family not in
/// `finished` (the one the stop interrupted, replays) are removed, since those run again.
/// The file is rewritten by rename only when something changed. A line that is not a case
/// record, other than a torn last one, is an error naming its line number.
pub fn repair_cases(path: &Path, finished: &HashSet<String>) -> Result<Repair> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Repair::default()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let whole = bytes
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |last| last + 1);
    let mut repair = Repair {
        torn_bytes: bytes.len() - whole,
        dropped_lines: 0,
    };
    let mut kept = Vec::with_capacity(whole);
    for (i, line) in bytes[..whole].split_inclusive(|&b| b == b'\n').enumerate() {
        let family = serde_json::from_slice::<serde_json::Value>(line)
            .ok()
            .and_then(|v| v.get("family")?.as_str().map(str::to_string))
            .with_context(|| {
                format!(
                    "{}: line {} is not a case record; move the file away to resume without it",
                    path.display(),
                    i + 1
                )
            })?;
        if finished.contains(&family) {
            kept.extend_from_slice(line);
        } else {
            repair.dropped_lines += 1;
        }
    }
    if repair != Repair::default() {
        super::write_atomically(path, &kept)?;
    }
    Ok(repair)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_torn_line_and_unfinished_families_are_cut_from_cases_jsonl() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(CASES_FILE);
        let a = "{\"family\":\"a\",\"run\":1}\n";
        let b = "{\"family\":\"b\",\"run\":1}\n";
        std::fs::write(&path, format!("{a}{b}{a}{{\"family\":\"b\",\"ru")).unwrap();
        let finished: HashSet<String> = ["a".to_string()].into();
        let repair = repair_cases(&path, &finished).unwrap();
        assert_eq!(
            repair,
            Repair {
                torn_bytes: 17,
                dropped_lines: 1
            }
        );
        assert_eq!(std::fs::read_to_string(&path).unwrap(), format!("{a}{a}"));
        // Nothing to repair leaves the file as it is; a broken middle line names its number.
        assert_eq!(repair_cases(&path, &finished).unwrap(), Repair::default());
        std::fs::write(&path, format!("{a}garbage\n{a}")).unwrap();
        let e = format!("{:#}", repair_cases(&path, &finished).unwrap_err());
        assert!(e.contains("line 2 is not a case record"), "{e}");
    }

    #[test]
    fn a_locked_folder_is_refused_naming_the_holder_and_free_once_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let owned = claim(dir.path(), Claim::NewCampaign).unwrap();
        let pid = format!("pid {}", std::process::id());
        for e in [
            check(dir.path(), Claim::Resume).unwrap_err(),
            claim(dir.path(), Claim::Overwrite).unwrap_err(),
        ] {
            assert!(e.to_string().contains(&pid), "{e}");
        }
        drop(owned);
        check(dir.path(), Claim::NewCampaign).unwrap();
        std::fs::write(dir.path().join(CASES_FILE), "").unwrap();
        let e = check(dir.path(), Claim::NewCampaign).unwrap_err();
        assert!(e.to_string().contains("--resume"), "{e}");
        let e = check(dir.path(), Claim::Merge).unwrap_err();
        assert!(e.to_string().contains("--overwrite"), "{e}");
        std::fs::write(dir.path().join("stratum-tiny.fasta"), ">a\nM\n").unwrap();
        std::fs::write(dir.path().join("mine.txt"), "keep").unwrap();
        drop(claim(dir.path(), Claim::Overwrite).unwrap());
        assert!(!dir.path().join(CASES_FILE).exists());
        assert!(!dir.path().join("stratum-tiny.fasta").exists());
        assert!(dir.path().join("mine.txt").exists());
    }
}
