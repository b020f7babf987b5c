//! proptest strategies for biologically plausible proteins, shared by the tests and the CLI.
//!
//! Residues follow the Swiss-Prot background composition; lengths come in strata; features
//! seen in real proteins are mixed in (homopolymer runs, short tandem repeats, low-complexity
//! segments, a hydrophobic signal-peptide-like N-terminus, a leading Met, rare residues).
//! Shrinking moves toward short sequences of the most common residue (L) without features.
//!
//! Saved seeds replay only while these strategies stay the same: [`GENERATOR_VERSION`] names
//! the current ones, and every shrunk counterexample is also written as FASTA (see
//! [`super::family`]), which replays whatever the strategies become.

use std::ops::RangeInclusive;

use proptest::prelude::*;

use crate::input::Protein;

/// Version of the strategies below; bump it when they change (old seeds then replay other
/// inputs, the FASTA counterexamples do not).
pub const GENERATOR_VERSION: u32 = 2;

/// Swiss-Prot background frequencies (%), most common first, so shrinking (toward index 0)
/// moves toward `L`.
pub const BACKGROUND: [(char, f64); 20] = [
    ('L', 9.65),
    ('A', 8.25),
    ('G', 7.07),
    ('V', 6.87),
    ('E', 6.72),
    ('S', 6.65),
    ('I', 5.91),
    ('K', 5.80),
    ('R', 5.53),
    ('D', 5.46),
    ('T', 5.36),
    ('P', 4.74),
    ('N', 4.06),
    ('Q', 3.93),
    ('F', 3.86),
    ('Y', 2.92),
    ('M', 2.41),
    ('H', 2.27),
    ('C', 1.38),
    ('W', 1.10),
];

/// Rare residue codes, mixed in at low rates.
pub const RARE: [char; 5] = ['X', 'B', 'U', 'Z', 'O'];
/// Residues of hydrophobic signal-peptide-like N-termini.
const HYDROPHOBIC: [char; 6] = ['L', 'A', 'V', 'I', 'F', 'M'];

/// Length strata, simplest first.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum Stratum {
    Tiny,
    Short,
    Medium,
    Long,
    VeryLong,
    OverLength,
}

impl Stratum {
    pub const ALL: [Stratum; 6] = [
        Stratum::Tiny,
        Stratum::Short,
        Stratum::Medium,
        Stratum::Long,
        Stratum::VeryLong,
        Stratum::OverLength,
    ];

    /// Residue counts of the stratum.
    pub fn lengths(self) -> RangeInclusive<usize> {
        match self {
            Stratum::Tiny => 1..=9,
            Stratum::Short => 10..=49,
            Stratum::Medium => 50..=200,
            Stratum::Long => 201..=500,
            Stratum::VeryLong => 501..=1022,
            Stratum::OverLength => 1023..=1500,
        }
    }

    /// The stratum whose lengths hold `residues` (over-length beyond the longest).
    pub fn of_length(residues: usize) -> Stratum {
        Stratum::ALL
            .into_iter()
            .find(|s| s.lengths().contains(&residues))
            .unwrap_or(Stratum::OverLength)
    }

    pub fn name(self) -> &'static str {
        match self {
            Stratum::Tiny => "tiny",
            Stratum::Short => "short",
            Stratum::Medium => "medium",
            Stratum::Long => "long",
            Stratum::VeryLong => "very-long",
            Stratum::OverLength => "over-length",
        }
    }
}

impl crate::named::Named for Stratum {
    const VALUES: &'static [Self] = &Stratum::ALL;
    const WHAT: &'static str = "stratum";

    fn name(self) -> &'static str {
        Stratum::name(self)
    }
}

crate::impl_named!(Stratum);

/// One residue from the background composition (0.1% resolution, so a residue shrinks to
/// `L` in about ten steps).
pub fn residue() -> impl Strategy<Value = char> {
    (0u32..1000).prop_map(|u| {
        let x = u as f64 / 10.0 * BACKGROUND.iter().map(|(_, p)| p).sum::<f64>() / 100.0;
        let mut acc = 0.0;
        for (c, p) in BACKGROUND {
            acc += p;
            if x < acc {
                return c;
            }
        }
        'W'
    })
}

/// A realistic feature written over part of a sequence. Positions are per-mille of the
/// length (shrinking toward the N-terminus).
#[derive(Debug, Clone, PartialEq)]
pub enum Feature {
    /// A run of one residue (poly-Q, poly-P, ...).
    Homopolymer { at: u16, residue: char, len: usize },
    /// A short unit repeated in tandem.
    TandemRepeat {
        at: u16,
        unit: Vec<char>,
        copies: usize,
    },
    /// A segment drawn from two or three residues only.
    LowComplexity {
        at: u16,
        residues: Vec<char>,
        pattern: Vec<u8>,
    },
    /// A hydrophobic N-terminal stretch after a positive residue, like a signal peptide.
    SignalPeptide { core: Vec<char> },
    /// A rare residue code (X B U Z O) at one position.
    Rare { at: u16, residue: char },
}

fn feature() -> impl Strategy<Value = Feature> {
    prop_oneof![
        (0u16..1000, prop::sample::select(RARE.to_vec()))
            .prop_map(|(at, residue)| Feature::Rare { at, residue }),
        (
            0u16..1000,
            prop::sample::select(vec!['Q', 'P', 'E', 'S', 'G', 'A', 'N', 'K']),
            4usize..30
        )
            .prop_map(|(at, residue, len)| Feature::Homopolymer { at, residue, len }),
        (
            0u16..1000,
            prop::collection::vec(residue(), 2..=6),
            2usize..=8
        )
            .prop_map(|(at, unit, copies)| Feature::TandemRepeat { at, unit, copies }),
        (
            0u16..1000,
            prop::collection::vec(residue(), 2..=3),
            prop::collection::vec(0u8..3, 8..40)
        )
            .prop_map(|(at, residues, pattern)| Feature::LowComplexity {
                at,
                residues,
                pattern
            }),
        prop::collection::vec(prop::sample::select(HYDROPHOBIC.to_vec()), 7..=15)
            .prop_map(|core| Feature::SignalPeptide { core }),
    ]
}

impl Feature {
    /// Overwrites part of `seq` (its length never changes, so strata hold).
    fn apply(&self, seq: &mut [char]) {
        let n = seq.len();
        let start = |at: u16| (at as usize * n) / 1000;
        let mut write = |from: usize, chars: &mut dyn Iterator<Item = char>| {
            for (slot, c) in seq.iter_mut().skip(from).zip(chars) {
                *slot = c;
            }
        };
        match self {
            Feature::Rare { at, residue } => write(start(*at), &mut std::iter::once(*residue)),
            Feature::Homopolymer { at, residue, len } => {
                write(start(*at), &mut std::iter::repeat_n(*residue, *len))
            }
            Feature::TandemRepeat { at, unit, copies } => write(
                start(*at),
                &mut unit.iter().copied().cycle().take(unit.len() * copies),
            ),
            Feature::LowComplexity {
                at,
                residues,
                pattern,
            } => write(
                start(*at),
                &mut pattern
                    .iter()
                    .map(|&i| residues[i as usize % residues.len()]),
            ),
            Feature::SignalPeptide { core } => {
                write(0, &mut ['M', 'K'].into_iter().chain(core.iter().copied()))
            }
        }
    }
}

/// A protein of `stratum`: background residues, up to two features, maybe a leading Met.
pub fn protein(stratum: Stratum) -> impl Strategy<Value = Protein> {
    (
        prop::collection::vec(residue(), stratum.lengths()),
        prop::collection::vec(feature(), 0..=2),
        any::<bool>(),
    )
        .prop_map(move |(mut seq, features, leading_met)| {
            for f in &features {
                f.apply(&mut seq);
            }
            if leading_met {
                seq[0] = 'M';
            }
            let letters: String = seq.into_iter().collect();
            Protein::from_letters(
                &format!("gen-v{GENERATOR_VERSION}-{stratum}-{}", letters.len()),
                &letters,
            )
        })
}

/// A protein of any stratum up to `max`, each stratum equally likely. The stratum is drawn
/// first (`prop_flat_map`), so shrinking also moves to simpler strata, not only to the short
/// end of the one first drawn.
pub fn protein_up_to(max: Stratum) -> BoxedStrategy<Protein> {
    (0..=max as usize)
        .prop_flat_map(|i| protein(Stratum::ALL[i]))
        .boxed()
}

/// A protein up to `max` with 1 to 3 of its residues replaced by rare codes (X, B, Z, U,
/// O): what a tokenizer or an embedding table must handle. Shrinks toward one rare residue
/// in a short protein.
pub fn with_rare_residues(max: Stratum) -> impl Strategy<Value = Protein> {
    (
        protein_up_to(max),
        prop::collection::vec(
            (
                prop::sample::select(RARE.to_vec()),
                any::<prop::sample::Index>(),
            ),
            1..=3,
        ),
    )
        .prop_map(|(protein, rare)| {
            let mut letters: Vec<char> = protein.letters().chars().collect();
            for (code, at) in rare {
                let i = at.index(letters.len());
                letters[i] = code;
            }
            let letters: String = letters.into_iter().collect();
            Protein::from_letters(&format!("{}-rare", protein.name), &letters)
        })
}

/// Residues of an over-length input a deployment must refuse or truncate.
pub const OVER_LENGTH_INPUT: std::ops::RangeInclusive<usize> = 1023..=2000;

/// A protein of [`OVER_LENGTH_INPUT`] residues (background residues only; the [`Protein`]
/// keeps its first 1,022 and the rest in [`Protein::cut`]). Shrinks toward 1,023 residues.
pub fn over_length_input() -> impl Strategy<Value = Protein> {
    prop::collection::vec(residue(), OVER_LENGTH_INPUT).prop_map(|letters| {
        let letters: String = letters.into_iter().collect();
        Protein::from_letters(&format!("over-length-{}", letters.len()), &letters)
    })
}

/// A batch of 2..=`max_len` proteins mixing strata up to `max` (for packing and batch-mates).
pub fn mixed_batch(max: Stratum, max_len: usize) -> impl Strategy<Value = Vec<Protein>> {
    prop::collection::vec(protein_up_to(max), 2..=max_len.max(2)).prop_map(|mut ps| {
        for (i, p) in ps.iter_mut().enumerate() {
            p.name = format!("{}-{i}", p.name);
        }
        ps
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;

    #[test]
    fn background_frequencies_sum_to_100_percent() {
        let total: f64 = BACKGROUND.iter().map(|(_, p)| p).sum();
        assert!((total - 100.0).abs() < 0.1, "{total}");
    }

    #[test]
    fn generated_proteins_stay_in_their_stratum() {
        let mut runner = TestRunner::deterministic();
        for stratum in Stratum::ALL {
            for _ in 0..5 {
                let p = protein(stratum).new_tree(&mut runner).unwrap().current();
                assert!(
                    stratum.lengths().contains(&p.original_len),
                    "{stratum}: {}",
                    p.original_len
                );
                assert!(p.residues.len() <= crate::alphabet::MAX_RESIDUES);
            }
        }
    }

    #[test]
    fn composition_follows_the_background() {
        let mut runner = TestRunner::deterministic();
        let mut counts = std::collections::HashMap::new();
        let mut total = 0usize;
        for _ in 0..20 {
            let p = protein(Stratum::VeryLong)
                .new_tree(&mut runner)
                .unwrap()
                .current();
            for c in p.letters().chars() {
                *counts.entry(c).or_insert(0usize) += 1;
                total += 1;
            }
        }
        let share = |c: char| 100.0 * *counts.get(&c).unwrap_or(&0) as f64 / total as f64;
        assert!((share('L') - 9.65).abs() < 1.5, "L {:.2}%", share('L'));
        assert!((share('W') - 1.10).abs() < 0.8, "W {:.2}%", share('W'));
    }

    #[test]
    fn shrinking_crosses_strata_down_to_one_residue() {
        let mut runner = TestRunner::deterministic();
        let mut tree = protein_up_to(Stratum::Long).new_tree(&mut runner).unwrap();
        while tree.simplify() {}
        assert_eq!(tree.current().letters(), "L");
    }

    #[test]
    fn shrinking_moves_toward_short_runs_of_leucine() {
        let mut runner = TestRunner::deterministic();
        let mut tree = protein(Stratum::Short).new_tree(&mut runner).unwrap();
        while tree.simplify() {}
        let p = tree.current();
        assert_eq!(p.residues.len(), 10, "{p:?}");
        assert!(p.letters().chars().all(|c| c == 'L'), "{p:?}");
    }
}
