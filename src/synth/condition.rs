//! The conditioning vocabulary a model manifest may use: the task, the MR
//! sequence, `cond` plane names and `class_labels` slot names
//! (docs/model-contract.md). A name synthd does not know is refused where
//! it is parsed, naming it, so a model is never fed a plane or slot synthd
//! cannot fill.

use serde::{Deserialize, Serialize};
use std::fmt;

/// What the model paints into the mask.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Task {
    /// Healthy tissue (removes whatever the mask covers); every label plane is 0.
    #[default]
    Healthy,
    /// A lesion whose components are given by the label planes.
    Lesion,
}

impl Task {
    pub fn name(self) -> &'static str {
        match self {
            Task::Healthy => "healthy",
            Task::Lesion => "lesion",
        }
    }
}

/// An MR sequence a model may be conditioned on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize, Serialize)]
pub enum Sequence {
    T1,
    /// T1-weighted after a contrast agent.
    T1c,
    T2,
    FLAIR,
}

impl Sequence {
    /// In the order `[sequences]` tables are tried when a pipeline does not say otherwise.
    pub const ALL: [Sequence; 4] = [Sequence::T1, Sequence::T1c, Sequence::T2, Sequence::FLAIR];

    pub fn name(self) -> &'static str {
        match self {
            Sequence::T1 => "T1",
            Sequence::T1c => "T1c",
            Sequence::T2 => "T2",
            Sequence::FLAIR => "FLAIR",
        }
    }

    pub fn from_name(name: &str) -> Option<Sequence> {
        Sequence::ALL.into_iter().find(|s| s.name() == name)
    }
}

impl fmt::Display for Sequence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One `cond` plane, by its manifest name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(try_from = "String", into = "String")]
pub enum CondChannel {
    /// `"masked_image"`: the known image in model units, 0 inside the mask.
    MaskedImage,
    /// `"mask"`: 1 where the model paints, 0 where the image is known.
    Mask,
    /// `"label:<name>"`: 1 inside that lesion component, 0 elsewhere.
    Label(String),
}

impl CondChannel {
    /// The manifest name, e.g. `label:necrosis`.
    pub fn name(&self) -> String {
        match self {
            CondChannel::MaskedImage => "masked_image".into(),
            CondChannel::Mask => "mask".into(),
            CondChannel::Label(name) => format!("label:{name}"),
        }
    }
}

impl TryFrom<String> for CondChannel {
    type Error = String;

    fn try_from(name: String) -> Result<CondChannel, String> {
        match name.as_str() {
            "masked_image" => Ok(CondChannel::MaskedImage),
            "mask" => Ok(CondChannel::Mask),
            _ => match name.strip_prefix("label:") {
                Some(label) if valid_label(label) => Ok(CondChannel::Label(label.to_string())),
                _ => Err(format!(
                    "unknown cond plane `{name}`: synthd fills \"masked_image\", \"mask\" and \"label:<name>\" \
                     (<name> lower-case letters, digits, '_' or '-'); see docs/model-contract.md"
                )),
            },
        }
    }
}

impl From<CondChannel> for String {
    fn from(channel: CondChannel) -> String {
        channel.name()
    }
}

fn valid_label(label: &str) -> bool {
    label.starts_with(|c: char| c.is_ascii_lowercase())
        && label
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
}

/// One `class_labels` slot, by its manifest name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(try_from = "String", into = "String")]
pub enum ClassSlot {
    /// `task:healthy` / `task:lesion`
    Task(Task),
    /// `seq:T1`, `seq:T1c`, `seq:T2`, `seq:FLAIR`
    Sequence(Sequence),
}

impl ClassSlot {
    pub fn name(&self) -> String {
        match self {
            ClassSlot::Task(task) => format!("task:{}", task.name()),
            ClassSlot::Sequence(sequence) => format!("seq:{}", sequence.name()),
        }
    }
}

impl TryFrom<String> for ClassSlot {
    type Error = String;

    fn try_from(name: String) -> Result<ClassSlot, String> {
        let slot = match name.split_once(':') {
            Some(("task", "healthy")) => Some(ClassSlot::Task(Task::Healthy)),
            Some(("task", "lesion")) => Some(ClassSlot::Task(Task::Lesion)),
            Some(("seq", sequence)) => Sequence::from_name(sequence).map(ClassSlot::Sequence),
            _ => None,
        };
        slot.ok_or_else(|| {
            format!(
                "unknown class_labels slot `{name}`: synthd fills \"task:healthy\", \"task:lesion\" and \
                 \"seq:T1\", \"seq:T1c\", \"seq:T2\", \"seq:FLAIR\"; see docs/model-contract.md"
            )
        })
    }
}

impl From<ClassSlot> for String {
    fn from(slot: ClassSlot) -> String {
        slot.name()
    }
}

/// The class-label vector for `slots`: one-hot within the task group and
/// within the sequence group. A model with sequence slots needs the series'
/// sequence, and must have a slot for it; likewise for the task.
pub fn class_vector(slots: &[ClassSlot], task: Task, sequence: Option<Sequence>) -> Result<Vec<f32>, String> {
    let has_task = slots.iter().any(|s| matches!(s, ClassSlot::Task(_)));
    let has_sequence = slots.iter().any(|s| matches!(s, ClassSlot::Sequence(_)));
    if has_task && !slots.contains(&ClassSlot::Task(task)) {
        return Err(format!("the model has no class_labels slot `task:{}`", task.name()));
    }
    if has_sequence {
        match sequence {
            None => return Err(
                "the model is conditioned on the MR sequence (seq:… slots) and this series' sequence is not known; \
                     add a [sequences] table to the pipeline"
                    .into(),
            ),
            Some(sequence) if !slots.contains(&ClassSlot::Sequence(sequence)) => {
                return Err(format!(
                    "the model has no class_labels slot `seq:{sequence}`; it supports {}",
                    slots
                        .iter()
                        .filter(|s| matches!(s, ClassSlot::Sequence(_)))
                        .map(ClassSlot::name)
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            }
            Some(_) => {}
        }
    }
    Ok(slots
        .iter()
        .map(|slot| {
            let on = match slot {
                ClassSlot::Task(t) => *t == task,
                ClassSlot::Sequence(s) => Some(*s) == sequence,
            };
            f32::from(u8::from(on))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plane_and_slot_names_round_trip_and_unknown_ones_are_named() {
        for name in ["masked_image", "mask", "label:necrosis", "label:edema"] {
            assert_eq!(CondChannel::try_from(name.to_string()).unwrap().name(), name);
        }
        let error = CondChannel::try_from("label:Necrosis".to_string()).unwrap_err();
        assert!(error.contains("`label:Necrosis`"), "{error}");
        assert!(CondChannel::try_from("edges".to_string())
            .unwrap_err()
            .contains("`edges`"));
        for name in [
            "task:healthy",
            "task:lesion",
            "seq:T1",
            "seq:T1c",
            "seq:T2",
            "seq:FLAIR",
        ] {
            assert_eq!(ClassSlot::try_from(name.to_string()).unwrap().name(), name);
        }
        let error = ClassSlot::try_from("seq:DWI".to_string()).unwrap_err();
        assert!(error.contains("`seq:DWI`"), "{error}");
    }

    #[test]
    fn class_vector_is_one_hot_per_group() {
        let slots: Vec<ClassSlot> = [
            "task:healthy",
            "task:lesion",
            "seq:T1",
            "seq:T1c",
            "seq:T2",
            "seq:FLAIR",
        ]
        .iter()
        .map(|s| ClassSlot::try_from(s.to_string()).unwrap())
        .collect();
        assert_eq!(
            class_vector(&slots, Task::Lesion, Some(Sequence::FLAIR)).unwrap(),
            [0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
        );
        assert_eq!(
            class_vector(&slots, Task::Healthy, Some(Sequence::T1)).unwrap(),
            [1.0, 0.0, 1.0, 0.0, 0.0, 0.0]
        );
        assert!(class_vector(&slots, Task::Healthy, None)
            .unwrap_err()
            .contains("[sequences]"));
        let t1_only = &slots[..3];
        assert!(class_vector(t1_only, Task::Healthy, Some(Sequence::T2))
            .unwrap_err()
            .contains("seq:T2"));
        assert_eq!(class_vector(&[], Task::Lesion, None).unwrap(), Vec::<f32>::new());
    }
}
