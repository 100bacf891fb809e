//! The option columns of DICOM PS3.15 Table E.1-1, as named in the standard.

use serde::{Deserialize, Serialize};
use std::fmt;

/// An Annex E de-identification option that modifies the Basic Application
/// Level Confidentiality Profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeidOption {
    RetainSafePrivate,
    RetainUids,
    RetainDeviceIdentity,
    RetainInstitutionIdentity,
    RetainPatientCharacteristics,
    RetainLongitudinalFullDates,
    RetainLongitudinalModifiedDates,
    CleanDescriptors,
    CleanStructuredContent,
    CleanGraphics,
}

impl DeidOption {
    pub const ALL: [DeidOption; 10] = [
        DeidOption::RetainSafePrivate,
        DeidOption::RetainUids,
        DeidOption::RetainDeviceIdentity,
        DeidOption::RetainInstitutionIdentity,
        DeidOption::RetainPatientCharacteristics,
        DeidOption::RetainLongitudinalFullDates,
        DeidOption::RetainLongitudinalModifiedDates,
        DeidOption::CleanDescriptors,
        DeidOption::CleanStructuredContent,
        DeidOption::CleanGraphics,
    ];

    /// The kebab-case name used in pipelines and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            DeidOption::RetainSafePrivate => "retain-safe-private",
            DeidOption::RetainUids => "retain-uids",
            DeidOption::RetainDeviceIdentity => "retain-device-identity",
            DeidOption::RetainInstitutionIdentity => "retain-institution-identity",
            DeidOption::RetainPatientCharacteristics => "retain-patient-characteristics",
            DeidOption::RetainLongitudinalFullDates => "retain-longitudinal-full-dates",
            DeidOption::RetainLongitudinalModifiedDates => "retain-longitudinal-modified-dates",
            DeidOption::CleanDescriptors => "clean-descriptors",
            DeidOption::CleanStructuredContent => "clean-structured-content",
            DeidOption::CleanGraphics => "clean-graphics",
        }
    }

    /// The option's name in the standard's own words.
    pub fn standard_name(self) -> &'static str {
        match self {
            DeidOption::RetainSafePrivate => "Retain Safe Private Option",
            DeidOption::RetainUids => "Retain UIDs Option",
            DeidOption::RetainDeviceIdentity => "Retain Device Identity Option",
            DeidOption::RetainInstitutionIdentity => "Retain Institution Identity Option",
            DeidOption::RetainPatientCharacteristics => "Retain Patient Characteristics Option",
            DeidOption::RetainLongitudinalFullDates => {
                "Retain Longitudinal Temporal Information with Full Dates Option"
            }
            DeidOption::RetainLongitudinalModifiedDates => {
                "Retain Longitudinal Temporal Information with Modified Dates Option"
            }
            DeidOption::CleanDescriptors => "Clean Descriptors Option",
            DeidOption::CleanStructuredContent => "Clean Structured Content Option",
            DeidOption::CleanGraphics => "Clean Graphics Option",
        }
    }
}

impl fmt::Display for DeidOption {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for DeidOption {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        DeidOption::ALL
            .into_iter()
            .find(|option| option.name() == text)
            .ok_or_else(|| {
                let names: Vec<_> = DeidOption::ALL.iter().map(|o| o.name()).collect();
                format!(
                    "unknown de-identification option {text:?}; expected one of {}",
                    names.join(", ")
                )
            })
    }
}
