//! The subcommands, one file each. Each returns an exit code; errors carry
//! context naming the file and stage, never a patient value.

pub mod bench;
pub mod deid;
pub mod doctor;
pub mod init;
pub mod init_system;
pub mod merge;
pub mod package;
pub mod process;
pub mod progress;
pub mod quarantine;
pub mod requeue;
pub mod run;
pub mod status;
pub mod unit_paths;
pub mod validate;

/// Exit code of a `deid` or `process` run that finished with some inputs
/// quarantined: 3, not 1, since the run did its work (its output can be
/// used and merged) and 1 means it failed.
pub const EXIT_QUARANTINED: i32 = 3;

/// The example pipelines shipped in `pipelines/`, written by `synthd init`.
pub const EXAMPLE_PIPELINES: &[(&str, &str)] = &[
    ("deid-only.toml", include_str!("../../pipelines/deid-only.toml")),
    (
        "brain-mri-inpaint.toml",
        include_str!("../../pipelines/brain-mri-inpaint.toml"),
    ),
    (
        "brain-lesion-from-seg.toml",
        include_str!("../../pipelines/brain-lesion-from-seg.toml"),
    ),
    (
        "overnight-dataset.toml",
        include_str!("../../pipelines/overnight-dataset.toml"),
    ),
];

/// Pipelines shipped for reference only (`/usr/share/synthd/pipelines/`),
/// never enabled by `init`: the first pipeline whose `[match]` accepts a
/// series takes it, so adding these to a site would change which pipeline
/// takes MR studies. Copy one into the pipelines folder to use it.
pub const REFERENCE_PIPELINES: &[(&str, &str)] = &[
    (
        "brain-lesion-add.toml",
        include_str!("../../pipelines/brain-lesion-add.toml"),
    ),
    (
        "brain-lesion-remove.toml",
        include_str!("../../pipelines/brain-lesion-remove.toml"),
    ),
];
