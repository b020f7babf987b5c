//! Reading proteins from FASTA and normalising them into residue token ids.
//!
//! Normalisation rules (each has a test): residues are upper-cased, whitespace is ignored,
//! one trailing `*` (a stop codon) is stripped, and more than [`MAX_RESIDUES`] residues are
//! truncated keeping the N-terminus (the [`Protein`] remembers the original length so the
//! truncation is reported). Any other character outside the alphabet is an error naming the
//! record and the 1-based position, unless [`NormaliseOptions::map_unknown_to_x`] maps it to `X`.

use std::fmt;
use std::fs::File;
use std::io::BufReader;
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
}

/// How strictly to read residues.
#[derive(Debug, Clone, Copy, Default)]
pub struct NormaliseOptions {
    /// Read characters outside the alphabet as `X` instead of failing.
    pub map_unknown_to_x: bool,
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

    /// `[<cls>, residues.., <eos>]`.
    pub fn tokens(&self) -> Vec<u32> {
        alphabet::with_special_tokens(&self.residues)
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
        write!(f, ">{}\n{}", self.name, self.letters())
    }
}

/// Normalises one sequence; `record` names it in errors.
pub fn normalise(
    record: &str,
    raw: &[u8],
    options: NormaliseOptions,
) -> Result<Protein, InputError> {
    let chars: Vec<u8> = raw
        .iter()
        .copied()
        .filter(|c| !c.is_ascii_whitespace())
        .collect();
    let body = match chars.split_last() {
        Some((b'*', rest)) => rest,
        _ => &chars[..],
    };
    let mut residues = Vec::with_capacity(body.len().min(MAX_RESIDUES));
    for (i, &c) in body.iter().enumerate() {
        let upper = c.to_ascii_uppercase();
        let id = match alphabet::residue_id(upper) {
            Some(id) => id,
            None if upper == b'*' => {
                return Err(InputError::InternalStop {
                    record: record.to_string(),
                    position: i + 1,
                });
            }
            None if options.map_unknown_to_x => alphabet::X,
            None => {
                return Err(InputError::UnknownResidue {
                    record: record.to_string(),
                    position: i + 1,
                    found: char_for_message(c),
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
    residues.truncate(MAX_RESIDUES);
    Ok(Protein {
        name: record.to_string(),
        residues,
        original_len,
    })
}

/// A printable form of an offending byte (non-ASCII bytes show as U+FFFD).
fn char_for_message(c: u8) -> char {
    if c.is_ascii() {
        c as char
    } else {
        char::REPLACEMENT_CHARACTER
    }
}

/// Reads and normalises every record of a FASTA file, in file order.
pub fn read_fasta(path: &Path, options: NormaliseOptions) -> Result<Vec<Protein>, InputError> {
    let file = File::open(path).map_err(|source| InputError::Open {
        path: path.to_path_buf(),
        source,
    })?;
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
            },
        )
        .unwrap();
        assert_eq!(p.letters(), "MKXV");
    }

    #[test]
    fn rare_residues_and_gaps_are_in_the_alphabet() {
        assert_eq!(norm("XBUZO.-").unwrap().letters(), "XBUZO.-");
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
