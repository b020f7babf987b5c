//! The property families: what inputs a family generates and what it checks them against.
//!
//! A [`Family`] is a strategy (what inputs) and a check (what is compared); its name is the
//! same everywhere: in file names under the regressions folder ([`super::saved`]), in the
//! driver's results ([`super::driver`]) and in reports.

use std::fmt;
use std::str::FromStr;

use burn::tensor::backend::Backend;
use proptest::strategy::{BoxedStrategy, Strategy};

use super::cases::{
    Models, Oracle, against_oracle, check_determinism, check_isolation, check_order,
    check_over_length,
};
use super::strategies::{
    Stratum, mixed_batch, over_length_input, protein, protein_up_to, with_rare_residues,
};
use super::subject::{InProcess, Subject};
use super::verdict::{Tolerances, Verdict};
use crate::batch::Layout;
use crate::input::Protein;

/// Most proteins in one batch of a mixed family.
pub const MIXED_BATCH_MAX: usize = 4;
/// A protein this long or longer makes [`Family::PackedWithLong`]'s long batch-mate.
pub const PACKED_LONG_MIN_RESIDUES: usize = 401;

/// A property family: which inputs are generated and what they are checked against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    /// One protein of a stratum, padded, against FP32.
    Stratum(Stratum),
    /// One protein of any stratum up to this one, padded, against FP32.
    UpTo(Stratum),
    /// 2..=[`MIXED_BATCH_MAX`] proteins up to a stratum in one padded batch, against FP32.
    Mixed(Stratum),
    /// The same batches packed (varlen), against padded FP32.
    Packed(Stratum),
    /// A protein of over 400 residues among medium ones, packed, against padded FP32.
    PackedWithLong,
    /// Mixed batches up to a stratum: each protein alone vs among batch-mates (padded, and
    /// packed in reverse order), and a repeat bit-identical; the policy under test only.
    Isolation(Stratum),
    /// Mixed batches up to a stratum, and the same batch reversed: each protein's row does
    /// not depend on its position; the subject only.
    Order(Stratum),
    /// Mixed batches up to a stratum sent twice: bit-identical rows; the subject only.
    Determinism(Stratum),
    /// One protein up to a stratum holding rare residue codes (X, B, Z, U, O), against FP32.
    RareTokens(Stratum),
    /// One protein of 1,023 to 2,000 residues, sent whole: refused, or embedded as its first
    /// 1,022 residues (against FP32 on those), and nothing else.
    OverLengthInput,
}

/// What a family compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// Properties 1-6: the policy under test, laid out so, against padded FP32.
    AgainstReference(Layout),
    /// Property 8 on the policy under test.
    Isolation,
    /// Rows independent of their position in the batch.
    Order,
    /// The same batch twice, bit-identical.
    Determinism,
    /// Refused, or truncated to the first 1,022 residues.
    OverLength,
}

impl Family {
    /// Every family, for every stratum: what a saved file name can refer to.
    pub fn catalogue() -> Vec<Family> {
        let mut all = vec![Family::PackedWithLong, Family::OverLengthInput];
        for s in Stratum::ALL {
            all.extend([
                Family::Stratum(s),
                Family::UpTo(s),
                Family::Mixed(s),
                Family::Packed(s),
                Family::Isolation(s),
                Family::Order(s),
                Family::Determinism(s),
                Family::RareTokens(s),
            ]);
        }
        all
    }

    /// The families of a campaign against a deployment up to `max`: each stratum alone,
    /// mixed batches, batch-mate independence, order and determinism (batches up to `long`),
    /// and rare residues (up to `medium`). Packing is the deployment's own business: its
    /// batches are judged as sent.
    pub fn deployment_campaign(max: Stratum) -> Vec<Family> {
        let mut families: Vec<Family> = Stratum::ALL
            .into_iter()
            .filter(|s| *s <= max)
            .map(Family::Stratum)
            .collect();
        let mixed = max.min(Stratum::Long);
        families.extend([
            Family::Mixed(mixed),
            Family::Isolation(mixed),
            Family::Order(mixed),
            Family::Determinism(mixed),
            Family::RareTokens(max.min(Stratum::Medium)),
            Family::OverLengthInput,
        ]);
        families
    }

    /// The families of a campaign up to `max`: each stratum alone, then mixed, packed and
    /// isolation batches up to `max` (at most `long`, so a batch stays a few thousand tokens).
    pub fn campaign(max: Stratum) -> Vec<Family> {
        let mut families: Vec<Family> = Stratum::ALL
            .into_iter()
            .filter(|s| *s <= max)
            .map(Family::Stratum)
            .collect();
        let mixed = max.min(Stratum::Long);
        families.extend([
            Family::Mixed(mixed),
            Family::Packed(mixed),
            Family::Isolation(mixed),
        ]);
        families
    }

    /// The family's name in file names and reports.
    pub fn name(&self) -> String {
        match self {
            Family::Stratum(s) => format!("stratum-{s}"),
            Family::UpTo(s) => format!("up-to-{s}"),
            Family::Mixed(s) => format!("mixed-up-to-{s}"),
            Family::Packed(s) => format!("packed-up-to-{s}"),
            Family::PackedWithLong => "packed-with-long".to_string(),
            Family::Isolation(s) => format!("isolation-up-to-{s}"),
            Family::Order(s) => format!("order-up-to-{s}"),
            Family::Determinism(s) => format!("determinism-up-to-{s}"),
            Family::RareTokens(s) => format!("rare-tokens-up-to-{s}"),
            Family::OverLengthInput => "over-length-input".to_string(),
        }
    }

    /// What the family compares.
    pub fn check(&self) -> Check {
        match self {
            Family::Stratum(_) | Family::UpTo(_) | Family::Mixed(_) | Family::RareTokens(_) => {
                Check::AgainstReference(Layout::Padded)
            }
            Family::Packed(_) | Family::PackedWithLong => Check::AgainstReference(Layout::Packed),
            Family::Isolation(_) => Check::Isolation,
            Family::Order(_) => Check::Order,
            Family::Determinism(_) => Check::Determinism,
            Family::OverLengthInput => Check::OverLength,
        }
    }

    /// The inputs the family generates.
    pub fn strategy(&self) -> BoxedStrategy<Vec<Protein>> {
        match *self {
            Family::Stratum(s) => protein(s).prop_map(|p| vec![p]).boxed(),
            Family::UpTo(s) => protein_up_to(s).prop_map(|p| vec![p]).boxed(),
            Family::Mixed(s)
            | Family::Packed(s)
            | Family::Isolation(s)
            | Family::Order(s)
            | Family::Determinism(s) => mixed_batch(s, MIXED_BATCH_MAX).boxed(),
            Family::RareTokens(s) => with_rare_residues(s).prop_map(|p| vec![p]).boxed(),
            Family::OverLengthInput => over_length_input().prop_map(|p| vec![p]).boxed(),
            Family::PackedWithLong => {
                let long = protein(Stratum::Long).prop_filter("over 400 residues", |p| {
                    p.residues.len() >= PACKED_LONG_MIN_RESIDUES
                });
                (long, mixed_batch(Stratum::Medium, MIXED_BATCH_MAX - 1))
                    .prop_map(|(l, mut rest)| {
                        rest.insert(1, l);
                        rest
                    })
                    .boxed()
            }
        }
    }

    /// Runs one case through the models and judges it (every property of the family's
    /// check; callers keep their [`Selection`]).
    pub fn judge<B: Backend>(
        &self,
        models: Models<'_, B>,
        proteins: &[Protein],
        tol: &Tolerances,
    ) -> Vec<Verdict> {
        let test = InProcess(models.test);
        let twin = models.twin.map(InProcess);
        self.judge_subject(
            Oracle::of(models.reference),
            &test,
            twin.as_ref().map(|t| t as &dyn Subject),
            proteins,
            tol,
        )
    }

    /// Runs one case through `subject` (and the oracle, for checks against FP32) and judges
    /// it: the one check of a family, whatever the subject is.
    pub fn judge_subject<B: Backend>(
        &self,
        oracle: Oracle<'_, B>,
        subject: &dyn Subject,
        twin: Option<&dyn Subject>,
        proteins: &[Protein],
        tol: &Tolerances,
    ) -> Vec<Verdict> {
        match self.check() {
            Check::AgainstReference(layout) => {
                against_oracle(oracle, subject, twin, proteins, layout, tol)
            }
            Check::Isolation => check_isolation(subject, proteins, tol),
            Check::Order => check_order(subject, proteins, tol),
            Check::Determinism => check_determinism(subject, proteins),
            Check::OverLength => check_over_length(oracle, subject, proteins, tol),
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

impl FromStr for Family {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Family::catalogue()
            .into_iter()
            .find(|f| f.name() == s)
            .ok_or_else(|| format!("unknown property family '{s}'"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_family_name_parses_back_to_its_family() {
        let all = Family::catalogue();
        for f in &all {
            assert_eq!(f.name().parse::<Family>(), Ok(*f));
        }
        let mut names: Vec<String> = all.iter().map(Family::name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), all.len(), "family names are unique");
        assert!("equivalence_tiny".parse::<Family>().is_err());
    }
}
