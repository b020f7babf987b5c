//! The trained heads a checkpoint may carry besides the backbone, one file per HF class:
//! [`classifier`] (HF `EsmClassificationHead`, of `EsmForSequenceClassification`) and
//! [`contact`] (HF `EsmContactPredictionHead`). Their weights are read by
//! [`crate::model::checkpoint::OpenCheckpoint::read_heads`]; the backbone never needs them.

pub mod classifier;
pub mod contact;

pub use classifier::{ClassifierHead, ClassifierWeights, class_probabilities};
pub use contact::{ContactWeights, predict_contacts};

/// The heads found in a checkpoint (`None` for a head it does not carry).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HeadWeights {
    pub classifier: Option<ClassifierWeights>,
    pub contact: Option<ContactWeights>,
}
