//! Reading proteins from FASTA and normalising them into residue token ids.
//!
//! Normalisation rules (each has a test): residues are upper-cased, whitespace is ignored,
//! one trailing `*` (a stop codon) is stripped, and more than [`MAX_RESIDUES`] residues are
//! truncated keeping the N-terminus (the [`Protein`] remembers the original length so the
//! truncation is reported). Any other character outside the alphabet is an error naming the
//! record and the 1-based position, unless [`NormaliseOptions::map_unknown_to_x`] maps it to `X`.

use std::fmt;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use crate::alphabet::{self, MAX_RESIDUES};

/// Why an input sequence or file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error(
        "record '{}': character '{}' at residue position {position} is not in the ESM-2 alphabet (pass --map-unknown-to-x to read it as X)",
        escaped(record), escaped(&found.to_string())
    )]
    UnknownResidue {
        record: String,
        position: usize,
        found: char,
    },
    #[error(
        "record '{}': '{found}' at residue position {position} is a gap token of the ESM-2 vocabulary, not a residue (pass --allow-gap-tokens to embed it as a gap, or --map-unknown-to-x to read it as X)",
        escaped(record)
    )]
    GapToken {
        record: String,
        position: usize,
        found: char,
    },
    #[error(
        "record '{}': stop codon '*' at residue position {position} inside the sequence (only a trailing '*' is stripped)",
        escaped(record)
    )]
    InternalStop { record: String, position: usize },
    #[error(
        "record '{}': the sequence is empty after normalisation",
        escaped(record)
    )]
    Empty { record: String },
    #[error("{path}: cannot open FASTA file")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: cannot read FASTA at line {line}")]
    Read {
        path: PathBuf,
        line: usize,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: line {line}: {detail}")]
    Malformed {
        path: PathBuf,
        line: usize,
        detail: String,
    },
    #[error("{path}: {error}")]
    InFile {
        path: PathBuf,
        error: Box<InputError>,
    },
    #[error("{path}: the file holds no FASTA records")]
    NoRecords { path: PathBuf },
    #[error("{path}: is a folder; name a FASTA file")]
    Folder { path: PathBuf },
    #[error("{path}: is gzip-compressed; decompress it first (gunzip -k {path})")]
    Gzip { path: PathBuf },
}

/// The longest line [`read_fasta`] reads: 16 MiB (a file without newlines, such as
/// `/dev/zero`, is refused after that many bytes instead of filling memory).
pub const MAX_LINE_BYTES: usize = 16 << 20;
/// The most residues one record may hold before normalisation (the model reads 1022; more is
/// truncated with a warning, far more is not a protein).
pub const MAX_RECORD_RESIDUES: usize = 100_000;
/// The longest header line ('>' and the description).
pub const MAX_HEADER_BYTES: usize = 64 << 10;

/// `text` with control characters, NUL bytes and quotes escaped, for messages.
pub fn escaped(text: &str) -> String {
    text.chars()
        .flat_map(|c| {
            if c.is_control() || c == '\'' || c == '\\' {
                c.escape_default().collect::<Vec<_>>()
            } else {
                vec![c]
            }
        })
        .collect()
}

/// How much [`read_fasta`] reads before it calls a file hostile or mistaken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FastaLimits {
    /// The longest line, in bytes ([`MAX_LINE_BYTES`] by default).
    pub max_line_bytes: usize,
    /// The most residues of one record before normalisation ([`MAX_RECORD_RESIDUES`]).
    pub max_record_residues: usize,
}

impl Default for FastaLimits {
    fn default() -> Self {
        Self {
            max_line_bytes: MAX_LINE_BYTES,
            max_record_residues: MAX_RECORD_RESIDUES,
        }
    }
}

/// How strictly to read residues.
#[derive(Debug, Clone, Copy, Default)]
pub struct NormaliseOptions {
    /// Read characters outside the alphabet as `X` instead of failing.
    pub map_unknown_to_x: bool,
    /// Keep the gap tokens `-` and `.` (in the ESM-2 vocabulary, but not residues).
    pub allow_gap_tokens: bool,
    /// The reader's caps (used by [`read_fasta`], not by [`normalise`]).
    pub limits: FastaLimits,
}

/// One normalised protein: its name and residue token ids (BOS/EOS not included).
#[derive(Clone, PartialEq, Eq)]
pub struct Protein {
    /// Record name (the FASTA identifier up to the first whitespace).
    pub name: String,
    /// Residue token ids, at most [`MAX_RESIDUES`].
    pub residues: Vec<u32>,
    /// Residues before truncation (equal to `residues.len()` unless truncated).
    pub original_len: usize,
    /// The residues truncation cut off (empty unless truncated): kept so that a deployment
    /// can be sent the whole protein and a counterexample saved whole.
    pub cut: Vec<u32>,
}

impl Protein {
    /// A protein from residue letters; panics on letters outside the alphabet, so meant for
    /// tests and generators, which produce only valid residues.
    pub fn from_letters(name: &str, letters: &str) -> Self {
        normalise(name, letters.as_bytes(), NormaliseOptions::default())
            .unwrap_or_else(|e| panic!("invalid built-in sequence: {e}"))
    }

    /// Whether normalisation cut residues off the C-terminus.
    pub fn truncated(&self) -> bool {
        self.original_len > self.residues.len()
    }

    /// Tokens the model sees for this protein: its residues plus BOS and EOS.
    pub fn token_len(&self) -> usize {
        self.residues.len() + 2
    }

    /// `[<cls>, residues.., <eos>]`.
    pub fn tokens(&self) -> Vec<u32> {
        alphabet::with_special_tokens(&self.residues)
    }

    /// Every residue as letters, those truncation cut off included (what a deployment is
    /// sent, and what a saved counterexample holds).
    pub fn full_letters(&self) -> String {
        self.residues
            .iter()
            .chain(&self.cut)
            .map(|&id| alphabet::residue_char(id).unwrap_or('?'))
            .collect()
    }

    /// The residues as letters.
    pub fn letters(&self) -> String {
        self.residues
            .iter()
            .map(|&id| alphabet::residue_char(id).unwrap_or('?'))
            .collect()
    }
}

/// Prints as a FASTA record, so a failing case can be pasted into a file and replayed.
impl fmt::Debug for Protein {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, ">{}\n{}", self.name, self.full_letters())
    }
}

/// Normalises one sequence; `record` names it in errors. Positions count characters (a
/// byte sequence that is not UTF-8 is read with U+FFFD for each bad byte).
pub fn normalise(
    record: &str,
    raw: &[u8],
    options: NormaliseOptions,
) -> Result<Protein, InputError> {
    let text = String::from_utf8_lossy(raw);
    let chars: Vec<char> = text.chars().filter(|c| !c.is_whitespace()).collect();
    let body = match chars.split_last() {
        Some(('*', rest)) => rest,
        _ => &chars[..],
    };
    let mut residues = Vec::with_capacity(body.len().min(MAX_RESIDUES));
    for (i, &c) in body.iter().enumerate() {
        let upper = c.to_ascii_uppercase();
        let position = i + 1;
        let known = u8::try_from(upper).ok().and_then(alphabet::residue_id);
        let id = match known {
            Some(_) if alphabet::is_gap(upper) && !options.allow_gap_tokens => {
                if options.map_unknown_to_x {
                    alphabet::X
                } else {
                    return Err(InputError::GapToken {
                        record: record.to_string(),
                        position,
                        found: c,
                    });
                }
            }
            Some(id) => id,
            None if upper == '*' => {
                return Err(InputError::InternalStop {
                    record: record.to_string(),
                    position,
                });
            }
            None if options.map_unknown_to_x => alphabet::X,
            None => {
                return Err(InputError::UnknownResidue {
                    record: record.to_string(),
                    position,
                    found: c,
                });
            }
        };
        residues.push(id);
    }
    if residues.is_empty() {
        return Err(InputError::Empty {
            record: record.to_string(),
        });
    }
    let original_len = residues.len();
    let cut = residues.split_off(original_len.min(MAX_RESIDUES));
    Ok(Protein {
        name: record.to_string(),
        residues,
        original_len,
        cut,
    })
}

/// Reads and normalises every record of a FASTA file, in file order. The file is streamed
/// (a pipe works; nothing is sought; `-` and `/dev/stdin` read standard input), and bounded: a line of more than
/// `options.limits.max_line_bytes` ([`MAX_LINE_BYTES`] by default), a header of more than
/// [`MAX_HEADER_BYTES`] or a record of more than `options.limits.max_record_residues`
/// ([`MAX_RECORD_RESIDUES`]) residues is an error naming its line.
pub fn read_fasta(path: &Path, options: NormaliseOptions) -> Result<Vec<Protein>, InputError> {
    if path.is_dir() {
        return Err(InputError::Folder {
            path: path.to_path_buf(),
        });
    }
    // Standard input is read as it is, not opened again through /proc (which would block
    // on a FIFO whose writer has finished).
    let source: Box<dyn Read> = if path == Path::new("-") || path == Path::new("/dev/stdin") {
        Box::new(std::io::stdin())
    } else {
        Box::new(File::open(path).map_err(|source| InputError::Open {
            path: path.to_path_buf(),
            source,
        })?)
    };
    let mut reader = BufReader::with_capacity(1 << 16, source);
    let FastaLimits {
        max_line_bytes: max_line,
        max_record_residues: max_residues,
    } = options.limits;
    let malformed = |line: usize, detail: String| InputError::Malformed {
        path: path.to_path_buf(),
        line,
        detail,
    };
    let mut proteins: Vec<Protein> = Vec::new();
    // The record being read: its name and residue bytes.
    let mut current: Option<(String, Vec<u8>)> = None;
    let finish = |record: Option<(String, Vec<u8>)>, proteins: &mut Vec<Protein>| {
        if let Some((name, body)) = record {
            let protein = normalise(&name, &body, options).map_err(|e| InputError::InFile {
                path: path.to_path_buf(),
                error: Box::new(e),
            })?;
            proteins.push(protein);
        }
        Ok::<(), InputError>(())
    };
    let mut line = Vec::new();
    let mut number = 0usize;
    loop {
        line.clear();
        let got = (&mut reader)
            .take(max_line as u64 + 1)
            .read_until(b'\n', &mut line)
            .map_err(|source| InputError::Read {
                path: path.to_path_buf(),
                line: number + 1,
                source,
            })?;
        if got == 0 {
            break;
        }
        number += 1;
        if number == 1 {
            if line.starts_with(&[0x1f, 0x8b]) {
                return Err(InputError::Gzip {
                    path: path.to_path_buf(),
                });
            }
            // A UTF-8 byte order mark (some Windows editors write one) is not part of the
            // first record's '>' line.
            if line.starts_with(&UTF8_BOM) {
                line.drain(..UTF8_BOM.len());
            }
        }
        if line.len() > max_line && !line.ends_with(b"\n") {
            return Err(malformed(
                number,
                format!(
                    "longer than {max_line} bytes without a newline; not a FASTA text file (a \
                     FASTA line holds a header or up to a few thousand residues; \
                     --max-line-bytes raises the cap)"
                ),
            ));
        }
        let text = line.trim_ascii();
        if let Some(header) = text.strip_prefix(b">") {
            if header.len() + 1 > MAX_HEADER_BYTES {
                return Err(malformed(
                    number,
                    format!(
                        "a header of {} bytes; at most {} KiB is read",
                        header.len() + 1,
                        MAX_HEADER_BYTES >> 10
                    ),
                ));
            }
            finish(current.take(), &mut proteins)?;
            let name = header
                .split(|b| b.is_ascii_whitespace())
                .next()
                .unwrap_or_default();
            if name.is_empty() {
                return Err(malformed(
                    number,
                    "a '>' header with no record name after it".into(),
                ));
            }
            current = Some((String::from_utf8_lossy(name).into_owned(), Vec::new()));
        } else if text.is_empty() {
            continue;
        } else {
            let Some((name, body)) = current.as_mut() else {
                let start: String = String::from_utf8_lossy(&text[..text.len().min(20)]).into();
                return Err(malformed(
                    number,
                    format!(
                        "'{}' before the first header; a FASTA record starts with a '>' line",
                        escaped(&start)
                    ),
                ));
            };
            let residues = text.iter().filter(|b| !b.is_ascii_whitespace()).count();
            if body.len() + residues > max_residues {
                return Err(malformed(
                    number,
                    format!(
                        "record '{}' holds more than {max_residues} residues; not a protein \
                         the model can read (it reads 1022; --max-record-residues raises the \
                         cap)",
                        escaped(name)
                    ),
                ));
            }
            body.extend(text.iter().filter(|b| !b.is_ascii_whitespace()));
        }
    }
    finish(current.take(), &mut proteins)?;
    if proteins.is_empty() {
        return Err(InputError::NoRecords {
            path: path.to_path_buf(),
        });
    }
    Ok(proteins)
}

/// The UTF-8 byte order mark, skipped at the start of a FASTA file.
const UTF8_BOM: [u8; 3] = [0xEF, 0xBB, 0xBF];

/// The first record whose name an earlier record already has, as 1-based record numbers
/// (earlier, later) and the name.
pub fn first_duplicate_name(proteins: &[Protein]) -> Option<(usize, usize, &str)> {
    let mut seen = std::collections::HashMap::new();
    for (i, p) in proteins.iter().enumerate() {
        if let Some(first) = seen.insert(p.name.as_str(), i) {
            return Some((first + 1, i + 1, p.name.as_str()));
        }
    }
    None
}

/// Proteins as FASTA text, one record per protein as [`Protein`]'s `Debug` prints it.
pub fn fasta_text(proteins: &[Protein]) -> String {
    proteins.iter().map(|p| format!("{p:?}\n")).collect()
}

/// Writes proteins as FASTA ([`fasta_text`]), creating the parent folder.
pub fn write_fasta(path: &Path, proteins: &[Protein]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, fasta_text(proteins))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(s: &str) -> Result<Protein, InputError> {
        normalise("rec1", s.as_bytes(), NormaliseOptions::default())
    }

    #[test]
    fn lower_case_is_upper_cased() {
        assert_eq!(norm("mkv").unwrap().letters(), "MKV");
    }

    #[test]
    fn whitespace_is_ignored() {
        assert_eq!(norm(" MK\tV\r\nL ").unwrap().letters(), "MKVL");
    }

    #[test]
    fn one_trailing_stop_is_stripped() {
        assert_eq!(norm("MKV*").unwrap().letters(), "MKV");
        assert_eq!(norm("MKV* \n").unwrap().letters(), "MKV");
    }

    #[test]
    fn internal_stop_is_an_error_with_position() {
        let err = norm("MK*V").unwrap_err();
        assert!(
            matches!(err, InputError::InternalStop { position: 3, .. }),
            "{err}"
        );
    }

    #[test]
    fn unknown_character_names_record_and_position() {
        let err = norm("MKJV").unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("rec1") && msg.contains("position 3") && msg.contains("'J'"),
            "{msg}"
        );
    }

    #[test]
    fn unknown_character_maps_to_x_on_request() {
        let p = normalise(
            "r",
            b"MKJV",
            NormaliseOptions {
                map_unknown_to_x: true,
                ..NormaliseOptions::default()
            },
        )
        .unwrap();
        assert_eq!(p.letters(), "MKXV");
    }

    #[test]
    fn rare_residues_are_in_the_alphabet_and_gaps_only_on_request() {
        assert_eq!(norm("XBUZO").unwrap().letters(), "XBUZO");
        let err = norm("MK-V").unwrap_err();
        assert!(
            matches!(
                err,
                InputError::GapToken {
                    position: 3,
                    found: '-',
                    ..
                }
            ),
            "{err}"
        );
        let gaps = NormaliseOptions {
            allow_gap_tokens: true,
            ..NormaliseOptions::default()
        };
        assert_eq!(normalise("r", b"M.K-", gaps).unwrap().letters(), "M.K-");
    }

    #[test]
    fn unknown_characters_count_as_characters_not_bytes() {
        let x = NormaliseOptions {
            map_unknown_to_x: true,
            ..NormaliseOptions::default()
        };
        let p = normalise("r", "MKÅV".as_bytes(), x).unwrap();
        assert_eq!(p.letters(), "MKXV");
        let err = norm("MKÅV").unwrap_err().to_string();
        assert!(err.contains("'Å'") && err.contains("position 3"), "{err}");
    }

    #[test]
    fn folders_and_gzip_files_get_their_own_errors() {
        let dir = tempfile::tempdir().unwrap();
        let err = read_fasta(dir.path(), NormaliseOptions::default()).unwrap_err();
        assert!(matches!(err, InputError::Folder { .. }), "{err}");
        let gz = dir.path().join("x.fasta.gz");
        std::fs::write(&gz, [0x1f, 0x8b, 8, 0, 0, 0]).unwrap();
        let err = read_fasta(&gz, NormaliseOptions::default()).unwrap_err();
        assert!(err.to_string().contains("gunzip"), "{err}");
    }

    #[test]
    fn a_byte_order_mark_is_skipped_and_duplicate_names_are_found() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bom.fasta");
        let mut bytes = UTF8_BOM.to_vec();
        bytes.extend_from_slice(b">a\nMKV\n>b\nLL\n>a\nW\n");
        std::fs::write(&path, &bytes).unwrap();
        let proteins = read_fasta(&path, NormaliseOptions::default()).unwrap();
        assert_eq!(proteins[0].name, "a");
        assert_eq!(proteins.len(), 3);
        assert_eq!(first_duplicate_name(&proteins), Some((1, 3, "a")));
        assert_eq!(first_duplicate_name(&proteins[..2]), None);
    }

    #[test]
    fn a_file_without_newlines_is_refused_after_the_line_cap_not_read_to_the_end() {
        // /dev/zero never ends: refused after MAX_LINE_BYTES, in bounded memory.
        let err = read_fasta(Path::new("/dev/zero"), NormaliseOptions::default()).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("line 1") && msg.contains("16777216 bytes"),
            "{msg}"
        );
    }

    #[test]
    fn a_record_over_the_residue_cap_and_a_header_over_the_header_cap_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.fasta");
        let line = "A".repeat(60);
        let mut text = ">big\n".to_string();
        for _ in 0..(MAX_RECORD_RESIDUES / 60 + 1) {
            text.push_str(&line);
            text.push('\n');
        }
        std::fs::write(&path, &text).unwrap();
        let msg = read_fasta(&path, NormaliseOptions::default())
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("more than 100000 residues") && msg.contains("'big'"),
            "{msg}"
        );
        std::fs::write(&path, format!(">{}\nMK\n", "h".repeat(MAX_HEADER_BYTES))).unwrap();
        let msg = read_fasta(&path, NormaliseOptions::default())
            .unwrap_err()
            .to_string();
        assert!(msg.contains("line 1: a header of"), "{msg}");
        // At the caps exactly: read.
        let mut text = ">ok\n".to_string();
        text.push_str(&"A".repeat(MAX_RECORD_RESIDUES));
        std::fs::write(&path, &text).unwrap();
        let proteins = read_fasta(&path, NormaliseOptions::default()).unwrap();
        assert_eq!(proteins[0].original_len, MAX_RECORD_RESIDUES);
        // The caps are the caller's: lowered, the same file is refused.
        let low = NormaliseOptions {
            limits: FastaLimits {
                max_record_residues: 1000,
                max_line_bytes: MAX_LINE_BYTES,
            },
            ..NormaliseOptions::default()
        };
        let msg = read_fasta(&path, low).unwrap_err().to_string();
        assert!(msg.contains("more than 1000 residues"), "{msg}");
        let short_lines = NormaliseOptions {
            limits: FastaLimits {
                max_line_bytes: 100,
                ..FastaLimits::default()
            },
            ..NormaliseOptions::default()
        };
        let msg = read_fasta(&path, short_lines).unwrap_err().to_string();
        assert!(msg.contains("line 2: longer than 100 bytes"), "{msg}");
    }

    #[test]
    fn fasta_from_a_pipe_is_streamed() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("in.fasta");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path; mkfifo only creates a node.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let writer_path = fifo.clone();
        let writer = std::thread::spawn(move || {
            std::fs::write(&writer_path, b">a\nMKV\n>b\nLL\n").unwrap();
        });
        let proteins = read_fasta(&fifo, NormaliseOptions::default()).unwrap();
        writer.join().unwrap();
        assert_eq!(proteins.len(), 2);
        assert_eq!(proteins[1].letters(), "LL");
    }

    #[test]
    fn messages_name_the_line_and_escape_nul_and_control_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.fasta");
        std::fs::write(&path, b"MKV\n>a\nMK\n").unwrap();
        let msg = read_fasta(&path, NormaliseOptions::default())
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("line 1") && msg.contains("before the first header"),
            "{msg}"
        );
        std::fs::write(&path, b">a\x00b\x1b\nMK\x00V\n").unwrap();
        let msg = read_fasta(&path, NormaliseOptions::default())
            .unwrap_err()
            .to_string();
        assert!(!msg.contains('\0') && !msg.contains('\x1b'), "{msg:?}");
        assert!(
            msg.contains("a\\u{0}b\\u{1b}") && msg.contains("'\\u{0}'"),
            "{msg}"
        );
    }

    #[test]
    fn over_length_is_truncated_keeping_the_n_terminus() {
        let long = format!("M{}", "A".repeat(1100));
        let p = norm(&long).unwrap();
        assert_eq!(p.residues.len(), MAX_RESIDUES);
        assert_eq!(p.original_len, 1101);
        assert!(p.truncated());
        assert_eq!(p.letters().chars().next(), Some('M'));
        assert!(!norm(&"A".repeat(MAX_RESIDUES)).unwrap().truncated());
    }

    #[test]
    fn empty_sequence_is_an_error() {
        assert!(matches!(norm(" * ").unwrap_err(), InputError::Empty { .. }));
    }

    #[test]
    fn tokens_add_bos_and_eos() {
        assert_eq!(norm("LA").unwrap().tokens(), vec![0, 4, 5, 2]);
    }

    #[test]
    fn debug_prints_a_fasta_record() {
        assert_eq!(format!("{:?}", norm("la").unwrap()), ">rec1\nLA");
    }
}
