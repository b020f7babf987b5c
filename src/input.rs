//! Reading proteins from FASTA and normalising them into residue token ids.
//!
//! Normalisation rules (each has a test): residues are upper-cased, whitespace is ignored,
//! one trailing `*` (a stop codon) is stripped, and more than [`MAX_RESIDUES`] residues are
//! truncated keeping the N-terminus (the [`Protein`] remembers the original length so the
//! truncation is reported). Any other character outside the alphabet is an error naming the
//! record and the 1-based position, unless [`NormaliseOptions::map_unknown_to_x`] maps it to `X`.

use std::fmt;
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use crate::alphabet::{self, MAX_RESIDUES};

/// Why an input sequence or file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error(
        "record '{record}': character '{found}' at residue position {position} is not in the ESM-2 alphabet (pass --map-unknown-to-x to read it as X)"
    )]
    UnknownResidue {
        record: String,
        position: usize,
        found: char,
    },
    #[error(
        "record '{record}': '{found}' at residue position {position} is a gap token of the ESM-2 vocabulary, not a residue (pass --allow-gap-tokens to embed it as a gap, or --map-unknown-to-x to read it as X)"
    )]
    GapToken {
        record: String,
        position: usize,
        found: char,
    },
    #[error(
        "record '{record}': stop codon '*' at residue position {position} inside the sequence (only a trailing '*' is stripped)"
    )]
    InternalStop { record: String, position: usize },
    #[error("record '{record}': the sequence is empty after normalisation")]
    Empty { record: String },
    #[error("{path}: cannot open FASTA file")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: malformed FASTA at record {record_number} (after '{previous}')")]
    Fasta {
        path: PathBuf,
        record_number: usize,
        previous: String,
        #[source]
        source: std::io::Error,
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

/// How strictly to read residues.
#[derive(Debug, Clone, Copy, Default)]
pub struct NormaliseOptions {
    /// Read characters outside the alphabet as `X` instead of failing.
    pub map_unknown_to_x: bool,
    /// Keep the gap tokens `-` and `.` (in the ESM-2 vocabulary, but not residues).
    pub allow_gap_tokens: bool,
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

/// Reads and normalises every record of a FASTA file, in file order.
pub fn read_fasta(path: &Path, options: NormaliseOptions) -> Result<Vec<Protein>, InputError> {
    if path.is_dir() {
        return Err(InputError::Folder {
            path: path.to_path_buf(),
        });
    }
    let open = |source| InputError::Open {
        path: path.to_path_buf(),
        source,
    };
    let mut file = File::open(path).map_err(open)?;
    let mut magic = [0u8; 2];
    let n = file.read(&mut magic).map_err(open)?;
    if n == 2 && magic == [0x1f, 0x8b] {
        return Err(InputError::Gzip {
            path: path.to_path_buf(),
        });
    }
    // A UTF-8 byte order mark (some Windows editors write one) is not part of the first
    // record's '>' line: skip it.
    let mut bom = [0u8; 3];
    file.seek(SeekFrom::Start(0)).map_err(open)?;
    let n = file.read(&mut bom).map_err(open)?;
    let start = if n == 3 && bom == UTF8_BOM { 3 } else { 0 };
    file.seek(SeekFrom::Start(start)).map_err(open)?;
    let mut reader = noodles_fasta::io::Reader::new(BufReader::new(file));
    let mut proteins: Vec<Protein> = Vec::new();
    for (index, result) in reader.records().enumerate() {
        let record = result.map_err(|source| InputError::Fasta {
            path: path.to_path_buf(),
            record_number: index + 1,
            previous: proteins
                .last()
                .map_or_else(|| "start of file".to_string(), |p| p.name.clone()),
            source,
        })?;
        let name = String::from_utf8_lossy(record.name()).into_owned();
        let protein = normalise(&name, record.sequence().as_ref(), options).map_err(|e| {
            InputError::InFile {
                path: path.to_path_buf(),
                error: Box::new(e),
            }
        })?;
        proteins.push(protein);
    }
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
