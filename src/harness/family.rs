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
    Models, Oracle, against_oracle, check_determinism, check_head, check_isolation, check_order,
    check_over_length,
};
use super::heads::Head;
use super::strategies::{
    Stratum, mixed_batch, over_length_input, protein, protein_up_to, with_rare_residues,
};
use super::subject::{InProcess, Subject};
use super::verdict::{Tolerances, Verdict};
use crate::batch::Layout;
use crate::input::Protein;
use crate::model::heads::HeadWeights;

/// Most proteins in one batch of a mixed family.
pub const MIXED_BATCH_MAX: usize = 4;
/// A protein this long or longer makes [`Family::PackedWithLong`]'s long batch-mate.
pub const PACKED_LONG_MIN_RESIDUES: usize = 401;
/// The shortest protein of a [`Family::Contacts`] case: a contact map of one residue has no
/// pair to rank, and the top-L/5 property fails on nothing ranked.
pub const CONTACT_MIN_RESIDUES: usize = 2;
/// The name that selects every head family (`fuzz --families heads`).
pub const HEADS_GROUP: &str = "heads";

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
    /// 2..=[`MIXED_BATCH_MAX`] proteins up to a stratum in one padded batch, through the
    /// checkpoint's classifier: class probabilities and decisions against FP32's. Runs where
    /// the checkpoint carries a classifier ([`HeadsOffered`]).
    Classifier(Stratum),
    /// One protein up to a stratum (at least [`CONTACT_MIN_RESIDUES`] residues), alone,
    /// through the checkpoint's contact head: the contact map and its top-L/5 contacts against
    /// FP32's. Runs where the checkpoint carries a contact head.
    Contacts(Stratum),
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
    /// A trained head's predictions under the policy under test against FP32's.
    Heads(Head),
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
                Family::Classifier(s),
                Family::Contacts(s),
            ]);
        }
        all
    }

    /// The head families of a campaign up to `max` (at most `long`, as mixed batches): the
    /// classifier on mixed batches and the contact map of one protein.
    pub fn heads_campaign(max: Stratum) -> Vec<Family> {
        let s = max.min(Stratum::Long);
        vec![Family::Classifier(s), Family::Contacts(s)]
    }

    /// The families of a campaign against a deployment up to `max`: each stratum alone,
    /// mixed batches, batch-mate independence, order and determinism (batches up to `long`),
    /// and rare residues (up to `medium`). Packing is the deployment's own business: its
    /// batches are judged as sent. The head families are listed too: a deployment returns
    /// pooled rows only, so [`HeadsOffered::PooledRowsOnly`] names them as skipped.
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
        families.extend(Family::heads_campaign(max));
        families
    }

    /// The families of a campaign up to `max`: each stratum alone, then mixed, packed and
    /// isolation batches up to `max` (at most `long`, so a batch stays a few thousand tokens),
    /// then the head families ([`Family::heads_campaign`]), which run where the checkpoint
    /// carries the head ([`HeadsOffered::partition`] names the others as skipped).
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
        families.extend(Family::heads_campaign(max));
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
            Family::Classifier(s) => format!("classifier-up-to-{s}"),
            Family::Contacts(s) => format!("contacts-up-to-{s}"),
        }
    }

    /// The trained head the family judges, for the head families.
    pub fn head(&self) -> Option<Head> {
        match self.check() {
            Check::Heads(head) => Some(head),
            _ => None,
        }
    }

    /// Whether `name` (a family's name, or the group [`HEADS_GROUP`]) selects this family.
    pub fn selected_by(&self, name: &str) -> bool {
        self.name() == name || (name == HEADS_GROUP && self.head().is_some())
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
            Family::Classifier(_) => Check::Heads(Head::Classifier),
            Family::Contacts(_) => Check::Heads(Head::Contact),
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
            Family::Classifier(s) => mixed_batch(s, MIXED_BATCH_MAX).boxed(),
            Family::Contacts(s) => protein_up_to(s)
                .prop_filter("a contact map needs two residues", |p| {
                    p.residues.len() >= CONTACT_MIN_RESIDUES
                })
                .prop_map(|p| vec![p])
                .boxed(),
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
    /// check; callers keep their [`Selection`]). A head family runs `models.heads`.
    pub fn judge<B: Backend>(
        &self,
        models: Models<'_, B>,
        proteins: &[Protein],
        tol: &Tolerances,
    ) -> Vec<Verdict> {
        if let Check::Heads(head) = self.check() {
            return check_head(models, head, proteins, &tol.heads);
        }
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
    /// it: the one check of a family, whatever the subject is. A head family needs our own
    /// model's token states and attention ([`Family::judge`]): through a subject it is a
    /// failed verdict saying so (campaigns skip it by name first, [`HeadsOffered`]).
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
            Check::Heads(head) => vec![head.not_judged(POOLED_ROWS_ONLY)],
        }
    }
}

/// Why a deployment does not run the head families.
const POOLED_ROWS_ONLY: &str = "a deployment returns pooled rows only: the head families run \
     the checkpoint's heads on our own model's last states and attention maps";

/// What the subject of a campaign offers the head families.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadsOffered {
    /// Our own model: the heads its checkpoint carries.
    Checkpoint { classifier: bool, contact: bool },
    /// Another team's deployment: pooled rows only, on which no head runs.
    PooledRowsOnly,
}

impl HeadsOffered {
    /// Our own model on a checkpoint carrying `heads` (`None`: no head given).
    pub fn of(heads: Option<&HeadWeights>) -> Self {
        let has = |head: Head| heads.is_some_and(|h| head.in_checkpoint(h));
        HeadsOffered::Checkpoint {
            classifier: has(Head::Classifier),
            contact: has(Head::Contact),
        }
    }

    /// Why `family` cannot run on this subject; `None` when it can (every family but a head
    /// family whose head is missing).
    pub fn why_not(self, family: Family) -> Option<String> {
        let head = family.head()?;
        match self {
            HeadsOffered::PooledRowsOnly => Some(POOLED_ROWS_ONLY.to_string()),
            HeadsOffered::Checkpoint {
                classifier,
                contact,
            } => {
                let present = match head {
                    Head::Classifier => classifier,
                    Head::Contact => contact,
                };
                (!present).then(|| format!("the checkpoint carries no {}", head.label()))
            }
        }
    }

    /// `families` split into those this subject runs and those it cannot, each named with
    /// its reason.
    pub fn partition(self, families: Vec<Family>) -> (Vec<Family>, Vec<Skipped>) {
        let mut run = Vec::with_capacity(families.len());
        let mut skipped = Vec::new();
        for family in families {
            match self.why_not(family) {
                None => run.push(family),
                Some(reason) => skipped.push(Skipped {
                    family: family.name(),
                    reason,
                }),
            }
        }
        (run, skipped)
    }
}

/// A family of a campaign's plan that did not run, and why: reports name it rather than
/// drop it silently.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Skipped {
    pub family: String,
    pub reason: String,
}

impl fmt::Display for Skipped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.family, self.reason)
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
        if s == HEADS_GROUP {
            return Err(format!(
                "'{s}' is a group of families (classifier-up-to-<stratum>, \
                 contacts-up-to-<stratum>), not one family: name them"
            ));
        }
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
        assert!("heads".parse::<Family>().is_err());
    }

    #[test]
    fn the_heads_group_selects_every_head_family_and_nothing_else() {
        for f in Family::catalogue() {
            assert_eq!(f.selected_by(HEADS_GROUP), f.head().is_some(), "{f}");
            assert!(f.selected_by(&f.name()));
        }
        let heads: Vec<Family> = Family::campaign(Stratum::VeryLong)
            .into_iter()
            .filter(|f| f.selected_by(HEADS_GROUP))
            .collect();
        assert_eq!(
            heads,
            [
                Family::Classifier(Stratum::Long),
                Family::Contacts(Stratum::Long)
            ]
        );
    }

    #[test]
    fn head_families_are_skipped_by_name_where_their_head_is_missing() {
        let plan = Family::campaign(Stratum::Tiny);
        let (run, skipped) = HeadsOffered::Checkpoint {
            classifier: true,
            contact: false,
        }
        .partition(plan.clone());
        assert!(run.contains(&Family::Classifier(Stratum::Tiny)));
        assert_eq!(skipped.len(), 1, "{skipped:?}");
        assert_eq!(skipped[0].family, "contacts-up-to-tiny");
        assert!(
            skipped[0].reason.contains("no contact head"),
            "{}",
            skipped[0]
        );
        let (run, skipped) = HeadsOffered::PooledRowsOnly.partition(plan.clone());
        assert_eq!(run.len() + 2, plan.len());
        assert!(
            skipped
                .iter()
                .all(|s| s.reason.contains("pooled rows only"))
        );
        assert_eq!(HeadsOffered::of(None).partition(plan).1.len(), 2);
    }
}
