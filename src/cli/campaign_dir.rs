//! The campaign folder a run writes (`fuzz --out`, `fuzz --resume`, `merge --out`): another
//! campaign in it is refused unless resumed or overwritten, it is locked while a run owns it,
//! and it is touched only after every input was checked ([`check`] touches nothing,
//! [`claim`] is the first write). On resume, `cases.jsonl` is repaired to match the report.
//!
//! A campaign lists every file name it may write in [`MANIFEST_FILE`] before it writes any;
//! `--overwrite` removes only those. A folder holding files of no campaign is refused, and
//! so is `--overwrite` of a campaign written before manifests (nothing is guessed at).

use std::collections::HashSet;
use std::fs::{File, TryLockError};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// The lock file inside a campaign folder; it holds the pid of the run that last owned the
/// folder, and stays there (removing it would race with a run opening it).
pub const LOCK_FILE: &str = ".esmfuzz.lock";

/// The per-case log of a campaign.
pub const CASES_FILE: &str = "cases.jsonl";

/// The list of file names a campaign may write in its folder (one per line), written before
/// any of them; `--overwrite` removes what it lists and nothing else.
pub const MANIFEST_FILE: &str = ".esmfuzz-manifest";

/// Files a campaign (or a merge) writes under fixed names, plots included; its shrunk
/// counterexamples (`<family>.fasta`) are listed per campaign in its manifest.
pub const CAMPAIGN_FILES: [&str; 7] = [
    "report.json",
    "report.md",
    CASES_FILE,
    "pooled_cosine.svg",
    "relative_l2.svg",
    "length_vs_cosine.svg",
    "layers.svg",
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

/// The claim's own refusal of a campaign already in `dir`, of files that belong to no
/// campaign, and of `--overwrite` of a campaign that kept no manifest.
fn refuse_existing(dir: &Path, how: Claim) -> Result<()> {
    refuse_foreign(dir, how)?;
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

/// Whether `dir` holds a campaign (or a merged report): its report, its cases or its
/// manifest.
fn holds_campaign(dir: &Path) -> bool {
    ["report.json", CASES_FILE, MANIFEST_FILE]
        .iter()
        .any(|m| std::fs::symlink_metadata(dir.join(m)).is_ok())
}

/// Refuses a folder whose files the run would overwrite or remove without their being a
/// campaign's: a new campaign needs an empty folder (or one holding a campaign, refused by
/// [`refuse_existing`] with its own message); a merge, none of the files it writes there;
/// `--overwrite`, a manifest saying what the campaign there wrote.
fn refuse_foreign(dir: &Path, how: Claim) -> Result<()> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    let names: Vec<String> = entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != LOCK_FILE)
        .collect();
    let campaign = holds_campaign(dir);
    let has_manifest = std::fs::symlink_metadata(dir.join(MANIFEST_FILE)).is_ok();
    match how {
        Claim::Overwrite if campaign && !has_manifest => bail!(
            "{}: holds a campaign written without a manifest ({MANIFEST_FILE}, by an esmfuzz \
             before 0.1.1), so which files it wrote is not known; --overwrite removes only \
             what a manifest lists: move the folder away or remove its files yourself",
            dir.display()
        ),
        Claim::NewCampaign | Claim::Overwrite if !campaign && !names.is_empty() => {
            let mut shown = names.clone();
            shown.sort();
            shown.truncate(5);
            bail!(
                "{}: is not empty and holds no campaign ({}{}); a campaign writes report.md, \
                 report.json, plots and FASTA files there: choose a new or empty folder",
                dir.display(),
                shown.join(", "),
                if names.len() > 5 { ", ..." } else { "" }
            )
        }
        Claim::Merge if !campaign => {
            if let Some(name) = names.iter().find(|n| CAMPAIGN_FILES.contains(&n.as_str())) {
                bail!(
                    "{}: holds {name}, which is no campaign's and which the merge would \
                     overwrite; choose another --out",
                    dir.display()
                );
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Whether writing `file` would replace a file of the campaign in its folder (a campaign
/// there, and `file` named in [`CAMPAIGN_FILES`] or its manifest): another command's output
/// must not, or the campaign could no longer be resumed.
pub fn campaign_file(file: &Path) -> bool {
    let (Some(dir), Some(name)) = (file.parent(), file.file_name()) else {
        return false;
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let name = name.to_string_lossy();
    let marked = holds_campaign(dir) || std::fs::symlink_metadata(dir.join(LOCK_FILE)).is_ok();
    marked
        && (CAMPAIGN_FILES.contains(&name.as_ref())
            || name == MANIFEST_FILE
            || name == LOCK_FILE
            || manifest(dir).is_ok_and(|m| m.iter().any(|n| *n == name)))
}

/// The names `dir`'s manifest lists (none when it has no manifest).
pub fn manifest(dir: &Path) -> Result<Vec<String>> {
    let path = dir.join(MANIFEST_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok(text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Whether `name` is a plain file name (no folder, no `..`): what a manifest may list.
fn plain_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains('/') && !name.contains('\0')
}

/// Who holds the lock of `dir`, when a running process does ("pid N"); touches nothing.
fn holder(dir: &Path) -> Result<Option<String>> {
    let path = dir.join(LOCK_FILE);
    if std::fs::symlink_metadata(&path).is_ok_and(|m| !m.is_file()) {
        bail!(
            "{}: is a symlink or not a regular file; esmfuzz does not lock through it (remove it)",
            path.display()
        );
    }
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
/// for [`Claim::Overwrite`] removes the files the campaign there listed in its manifest,
/// and writes the manifest of this run: [`CAMPAIGN_FILES`] and `extra` (its counterexample
/// names), with what a resumed campaign listed. Call it after every input has been checked:
/// it is the first write to `dir`.
pub fn claim(dir: &Path, how: Claim, extra: &[String]) -> Result<OwnedDir> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(LOCK_FILE);
    let mut lock = esmfuzz::safe_file::open_no_follow(&path)
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
    let mut listed: Vec<String> = CAMPAIGN_FILES.iter().map(|f| f.to_string()).collect();
    if how == Claim::Overwrite {
        remove_campaign(dir)?;
    } else {
        listed.extend(manifest(dir)?);
    }
    listed.extend(extra.iter().cloned());
    listed.retain(|n| plain_name(n));
    let mut seen = HashSet::new();
    listed.retain(|n| seen.insert(n.clone()));
    let mut text = listed.join("\n");
    text.push('\n');
    super::write_atomically(&dir.join(MANIFEST_FILE), text.as_bytes())?;
    Ok(OwnedDir { _lock: lock })
}

/// Removes the files `dir`'s manifest lists (what its campaign wrote); other files stay.
fn remove_campaign(dir: &Path) -> Result<()> {
    let doomed: Vec<PathBuf> = manifest(dir)?
        .iter()
        .filter(|n| plain_name(n))
        .map(|n| dir.join(n))
        .collect();
    for path in doomed {
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing {}", path.display())),
        }
    }
    Ok(())
}

/// How many whole lines of `path` (a campaign's `cases.jsonl`) each family has; a torn
/// last line and lines that are not case records are not counted ([`repair_cases`] deals
/// with them). A missing file has none.
pub fn lines_per_family(path: &Path) -> Result<std::collections::HashMap<String, usize>> {
    let mut counts = std::collections::HashMap::new();
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(counts),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let whole = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |l| l + 1);
    for line in bytes[..whole].split(|&b| b == b'\n') {
        let family = serde_json::from_slice::<serde_json::Value>(line)
            .ok()
            .and_then(|v| v.get("family")?.as_str().map(str::to_string));
        if let Some(family) = family {
            *counts.entry(family).or_insert(0) += 1;
        }
    }
    Ok(counts)
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
        let _forks = crate::cli::fork_guard();
        let dir = tempfile::tempdir().unwrap();
        let owned = claim(dir.path(), Claim::NewCampaign, &[]).unwrap();
        let pid = format!("pid {}", std::process::id());
        for e in [
            check(dir.path(), Claim::Resume).unwrap_err(),
            claim(dir.path(), Claim::Overwrite, &[]).unwrap_err(),
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
        drop(claim(dir.path(), Claim::Overwrite, &[]).unwrap());
        assert!(!dir.path().join(CASES_FILE).exists());
        assert!(dir.path().join("mine.txt").exists());
    }

    #[test]
    fn overwrite_removes_only_what_the_manifest_lists() {
        let _forks = crate::cli::fork_guard();
        let dir = tempfile::tempdir().unwrap();
        let extra = ["stratum-tiny.fasta".to_string()];
        drop(claim(dir.path(), Claim::NewCampaign, &extra).unwrap());
        for name in ["report.json", CASES_FILE, "stratum-tiny.fasta"] {
            std::fs::write(dir.path().join(name), "x").unwrap();
        }
        // The user's input, named like a counterexample, kept beside the campaign.
        std::fs::write(dir.path().join("stratum-short.fasta"), ">mine\nM\n").unwrap();
        std::fs::write(dir.path().join("fasta-proteome.fasta"), ">mine\nM\n").unwrap();
        drop(claim(dir.path(), Claim::Overwrite, &[]).unwrap());
        assert!(!dir.path().join("stratum-tiny.fasta").exists());
        assert!(!dir.path().join("report.json").exists());
        assert!(dir.path().join("stratum-short.fasta").exists());
        assert!(dir.path().join("fasta-proteome.fasta").exists());
    }

    #[test]
    fn overwrite_of_a_campaign_without_a_manifest_is_refused_and_removes_nothing() {
        let _forks = crate::cli::fork_guard();
        let dir = tempfile::tempdir().unwrap();
        for name in ["report.json", CASES_FILE, "stratum-tiny.fasta"] {
            std::fs::write(dir.path().join(name), "x").unwrap();
        }
        let e = check(dir.path(), Claim::Overwrite).unwrap_err().to_string();
        assert!(e.contains("without a manifest"), "{e}");
        assert!(claim(dir.path(), Claim::Overwrite, &[]).is_err());
        for name in ["report.json", CASES_FILE, "stratum-tiny.fasta"] {
            assert!(dir.path().join(name).exists(), "{name}");
        }
    }

    #[test]
    fn a_new_campaign_in_a_folder_of_someone_else_s_files_is_refused() {
        let _forks = crate::cli::fork_guard();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("report.md"), "my notes").unwrap();
        for how in [Claim::NewCampaign, Claim::Overwrite, Claim::Merge] {
            let e = check(dir.path(), how).unwrap_err().to_string();
            assert!(e.contains("report.md"), "{how:?}: {e}");
        }
        assert_eq!(
            std::fs::read_to_string(dir.path().join("report.md")).unwrap(),
            "my notes"
        );
        // An empty folder, or one holding only shard folders for a merge, is fine.
        std::fs::remove_file(dir.path().join("report.md")).unwrap();
        check(dir.path(), Claim::NewCampaign).unwrap();
        std::fs::create_dir(dir.path().join("shard-0")).unwrap();
        check(dir.path(), Claim::Merge).unwrap();
    }

    #[test]
    fn a_symlinked_lock_file_is_refused_and_its_target_kept() {
        let dir = tempfile::tempdir().unwrap();
        let precious = dir.path().join("precious.txt");
        std::fs::write(&precious, "keep").unwrap();
        let out = dir.path().join("campaign");
        std::fs::create_dir(&out).unwrap();
        std::os::unix::fs::symlink(&precious, out.join(LOCK_FILE)).unwrap();
        assert!(check(&out, Claim::NewCampaign).is_err());
        let e = format!("{:#}", claim(&out, Claim::NewCampaign, &[]).unwrap_err());
        assert!(e.contains("symlink"), "{e}");
        assert_eq!(std::fs::read_to_string(&precious).unwrap(), "keep");
    }
}
