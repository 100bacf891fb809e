//! Resolving the compound actions of Table E.1-1 against the attribute's type
//! in the instance's IOD (PS3.15 E.3.1: "X unless Z or D is required to
//! maintain IOD conformance").
//!
//! The types are PS3.3's (2026b, from the tables highdicom 0.28.2 ships; see
//! fixtures/deid/README.md), as data built by fixtures/deid/build_iod_types.py:
//! `iod_sop_classes.tsv` (SOP Class UID → IOD), `iod_modules.tsv` (IOD → its
//! modules, functional group macros inside the Multi-frame Functional Groups
//! module) and `iod_module_types.tsv` (module → the type of each Table E.1-1
//! attribute it defines). Keeping the standard's
//! own factoring keeps the data small; the strongest type over an IOD's
//! modules is taken at look-up.

use super::table::Action;
use std::collections::HashMap;
use std::sync::OnceLock;

const SOP_CLASSES_TSV: &str = include_str!("iod_sop_classes.tsv");
const MODULES_TSV: &str = include_str!("iod_modules.tsv");
const MODULE_TYPES_TSV: &str = include_str!("iod_module_types.tsv");

/// An attribute's type in PS3.3, strongest first (the derived order is the
/// order of strength).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum AttributeType {
    /// 1: required, with a value.
    Type1,
    /// 1C: required with a value under a condition.
    Type1C,
    /// 2: required, may be empty.
    Type2,
    /// 2C: required, may be empty, under a condition.
    Type2C,
    /// 3: optional.
    Type3,
}

impl AttributeType {
    pub fn parse(code: &str) -> Option<AttributeType> {
        Some(match code {
            "1" => AttributeType::Type1,
            "1C" => AttributeType::Type1C,
            "2" => AttributeType::Type2,
            "2C" => AttributeType::Type2C,
            "3" => AttributeType::Type3,
            _ => return None,
        })
    }

    /// What the type demands of a de-identified instance. Conditions are not
    /// evaluated: a 1C or 2C attribute that is present may be so because its
    /// condition holds, so it is read as 1 or 2 (the conservative reading).
    fn requirement(self) -> Requirement {
        match self {
            AttributeType::Type1 | AttributeType::Type1C => Requirement::Present,
            AttributeType::Type2 | AttributeType::Type2C => Requirement::PresentMayBeEmpty,
            AttributeType::Type3 => Requirement::Optional,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Requirement {
    Present,
    PresentMayBeEmpty,
    Optional,
}

/// A line of the compiled-in IOD data that does not parse.
#[derive(Debug, thiserror::Error)]
#[error("{file} line {line}: {problem}")]
pub struct IodDataError {
    file: &'static str,
    line: usize,
    problem: String,
}

struct IodTables {
    iod_of_sop_class: HashMap<&'static str, &'static str>,
    modules_of_iod: HashMap<&'static str, Vec<&'static str>>,
    types_in_module: HashMap<&'static str, HashMap<&'static str, AttributeType>>,
}

/// The data rows of one compiled-in TSV, each split into `header.len()`
/// cells, after checking the column header.
fn rows(
    file: &'static str,
    text: &'static str,
    header: &[&str],
) -> Result<Vec<(usize, Vec<&'static str>)>, IodDataError> {
    let error = |line: usize, problem: String| IodDataError { file, line, problem };
    let mut lines = text
        .lines()
        .enumerate()
        .map(|(index, line)| (index + 1, line))
        .filter(|(_, line)| !line.starts_with('#') && !line.trim().is_empty());
    let (line, found) = lines.next().ok_or_else(|| error(0, "no header".into()))?;
    if found.split('\t').collect::<Vec<_>>() != header {
        return Err(error(line, format!("header is not {}", header.join(" "))));
    }
    lines
        .map(|(line, text)| {
            let cells: Vec<&'static str> = text.split('\t').collect();
            if cells.len() == header.len() && cells.iter().all(|cell| !cell.is_empty()) {
                Ok((line, cells))
            } else {
                Err(error(line, format!("expected {} non-empty cells", header.len())))
            }
        })
        .collect()
}

impl IodTables {
    fn parse() -> Result<IodTables, IodDataError> {
        let mut iod_of_sop_class = HashMap::new();
        for (_, cells) in rows(
            "iod_sop_classes.tsv",
            SOP_CLASSES_TSV,
            &["sop_class_uid", "iod", "name"],
        )? {
            iod_of_sop_class.insert(cells[0], cells[1]);
        }
        let mut modules_of_iod: HashMap<&str, Vec<&str>> = HashMap::new();
        for (_, cells) in rows("iod_modules.tsv", MODULES_TSV, &["iod", "module", "usage"])? {
            modules_of_iod.entry(cells[0]).or_default().push(cells[1]);
        }
        let mut types_in_module: HashMap<&str, HashMap<&str, AttributeType>> = HashMap::new();
        for (line, cells) in rows(
            "iod_module_types.tsv",
            MODULE_TYPES_TSV,
            &["module", "attribute", "type"],
        )? {
            let kind = AttributeType::parse(cells[2]).ok_or_else(|| IodDataError {
                file: "iod_module_types.tsv",
                line,
                problem: format!("unknown type {:?}", cells[2]),
            })?;
            types_in_module.entry(cells[0]).or_default().insert(cells[1], kind);
        }
        Ok(IodTables {
            iod_of_sop_class,
            modules_of_iod,
            types_in_module,
        })
    }

    fn get() -> &'static IodTables {
        static TABLES: OnceLock<IodTables> = OnceLock::new();
        TABLES.get_or_init(|| IodTables::parse().expect("the IOD data is checked by the unit tests"))
    }
}

/// An IOD of PS3.3 whose attribute types synthd knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Iod {
    /// The IOD's id in the data (the source's, e.g. `ct-image`).
    id: &'static str,
}

impl Iod {
    /// The IOD of a Storage SOP Class; `None` for SOP classes the data does
    /// not name (private ones, and those newer than the data).
    pub fn of_sop_class(sop_class_uid: &str) -> Option<Iod> {
        let uid = sop_class_uid.trim_end_matches(['\0', ' ']);
        IodTables::get().iod_of_sop_class.get(uid).map(|&id| Iod { id })
    }

    /// The attribute's type in this IOD, the strongest over the modules that
    /// define it. `path` is the attribute's keyword, prefixed inside sequence
    /// items by the sequences' keywords: `ReferencedStudySequence>ReferencedSOPInstanceUID`.
    /// `None` when no module of the IOD defines the path (then the caller
    /// keeps to the conservative choice).
    pub fn attribute_type(self, path: &str) -> Option<AttributeType> {
        let tables = IodTables::get();
        tables
            .modules_of_iod
            .get(self.id)?
            .iter()
            .filter_map(|module| tables.types_in_module.get(module)?.get(path).copied())
            .min()
    }
}

/// The simple action a compound action becomes. `known` is the attribute's
/// type in the instance's IOD when known; otherwise the conservative choice
/// keeps the attribute present: D where allowed, else Z.
pub fn resolve(action: Action, known: Option<AttributeType>, is_sequence: bool) -> Action {
    use Action::*;
    use Requirement::*;
    match (action, known.map(AttributeType::requirement)) {
        (ZeroOrDummy, Some(Present)) => Dummy,
        (ZeroOrDummy, Some(_)) => Zero,
        (ZeroOrDummy, None) => Dummy,
        (RemoveOrZero, Some(Optional)) => Remove,
        (RemoveOrZero, _) => Zero,
        (RemoveOrDummy, Some(Optional)) => Remove,
        (RemoveOrDummy, _) => Dummy,
        (RemoveOrZeroOrDummy, Some(Optional)) => Remove,
        (RemoveOrZeroOrDummy, Some(PresentMayBeEmpty)) => Zero,
        (RemoveOrZeroOrDummy, _) => Dummy,
        (RemoveOrZeroOrUid, Some(Optional)) => Remove,
        // A reference sequence the IOD requires (or may) keeps its items, whose
        // UIDs are remapped. Emptying a Type 2 one (Z) would also be valid for
        // the attribute, but leaves references the instance declares elsewhere
        // (Common Instance Reference of a SEG) pointing at nothing; the keyed
        // UIDs reveal no original one.
        (RemoveOrZeroOrUid, _) if is_sequence => Keep,
        (RemoveOrZeroOrUid, _) => Zero,
        (simple, _) => simple,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use AttributeType::*;

    const CT_IMAGE: &str = "1.2.840.10008.5.1.4.1.1.2";
    const ENHANCED_MR_IMAGE: &str = "1.2.840.10008.5.1.4.1.1.4.1";

    fn type_in(sop_class_uid: &str, path: &str) -> Option<AttributeType> {
        Iod::of_sop_class(sop_class_uid)
            .expect("a known SOP class")
            .attribute_type(path)
    }

    /// The `# rows: N` trailer the generator writes under each table.
    fn trailer_count(text: &str) -> usize {
        text.lines()
            .rev()
            .find_map(|line| line.strip_prefix("# rows: "))
            .expect("a rows trailer")
            .parse()
            .unwrap()
    }

    #[test]
    fn every_row_parses_and_the_counts_match_the_generator() {
        let tables = IodTables::parse().unwrap();
        assert_eq!(tables.iod_of_sop_class.len(), trailer_count(SOP_CLASSES_TSV));
        let links: usize = tables.modules_of_iod.values().map(Vec::len).sum();
        assert_eq!(links, trailer_count(MODULES_TSV));
        let types: usize = tables.types_in_module.values().map(HashMap::len).sum();
        assert_eq!(types, trailer_count(MODULE_TYPES_TSV));
        // PS3.3 2026b (highdicom 0.28.2's tables): 179 Storage SOP classes of 170 IODs.
        assert_eq!(tables.iod_of_sop_class.len(), 179);
        assert_eq!(tables.modules_of_iod.len(), 170);
        let mut iods: Vec<&str> = tables.iod_of_sop_class.values().copied().collect();
        iods.sort_unstable();
        iods.dedup();
        assert_eq!(iods.len(), 170, "every IOD a SOP class names has modules");
        for modules in tables.modules_of_iod.values() {
            for module in modules {
                assert!(tables.types_in_module.contains_key(module), "{module} has types");
            }
        }
    }

    #[test]
    fn ct_image_types_are_those_of_ps3_3() {
        // General Study, Patient, General Equipment, General Image (A.3 CT Image IOD).
        assert_eq!(Iod::of_sop_class(CT_IMAGE).unwrap().id, "ct-image");
        assert_eq!(type_in(CT_IMAGE, "StudyDate"), Some(Type2));
        assert_eq!(type_in(CT_IMAGE, "AccessionNumber"), Some(Type2));
        assert_eq!(type_in(CT_IMAGE, "ReferringPhysicianName"), Some(Type2));
        assert_eq!(type_in(CT_IMAGE, "StudyID"), Some(Type2));
        assert_eq!(type_in(CT_IMAGE, "PatientName"), Some(Type2));
        assert_eq!(type_in(CT_IMAGE, "InstitutionName"), Some(Type3));
        // General Image: "Required if image is part of a Series in which the
        // images are temporally related".
        assert_eq!(type_in(CT_IMAGE, "ContentDate"), Some(Type2C));
        assert_eq!(type_in(CT_IMAGE, "DeviceSerialNumber"), Some(Type3));
        assert_eq!(type_in(CT_IMAGE, "SourceImageSequence"), Some(Type3));
        // Not in any module of the CT Image IOD.
        assert_eq!(type_in(CT_IMAGE, "RTPlanDate"), None);
    }

    #[test]
    fn enhanced_mr_types_take_the_strongest_module() {
        // Multi-frame Functional Groups: Content Date/Time are Type 1.
        assert_eq!(type_in(ENHANCED_MR_IMAGE, "ContentDate"), Some(Type1));
        assert_eq!(type_in(ENHANCED_MR_IMAGE, "ContentTime"), Some(Type1));
        // Enhanced MR Image module: 1C.
        assert_eq!(type_in(ENHANCED_MR_IMAGE, "AcquisitionDateTime"), Some(Type1C));
        // 3 in General Equipment, 1 in Enhanced General Equipment: 1 wins.
        assert_eq!(type_in(ENHANCED_MR_IMAGE, "DeviceSerialNumber"), Some(Type1));
        // Referenced Image functional group macro, in either functional group sequence.
        for group in ["SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"] {
            assert_eq!(
                type_in(ENHANCED_MR_IMAGE, &format!("{group}>ReferencedImageSequence")),
                Some(Type2)
            );
        }
    }

    #[test]
    fn other_iods_and_nested_paths() {
        let basic_text_sr = "1.2.840.10008.5.1.4.1.1.88.11";
        assert_eq!(type_in(basic_text_sr, "ContentDate"), Some(Type1));
        assert_eq!(
            type_in(basic_text_sr, "ReferencedPerformedProcedureStepSequence"),
            Some(Type2)
        );
        let twelve_lead_ecg = "1.2.840.10008.5.1.4.1.1.9.1.1";
        assert_eq!(type_in(twelve_lead_ecg, "AcquisitionDateTime"), Some(Type1));
        assert_eq!(type_in(twelve_lead_ecg, "AcquisitionContextSequence"), Some(Type2));
        let rt_plan = "1.2.840.10008.5.1.4.1.1.481.5";
        assert_eq!(type_in(rt_plan, "OperatorsName"), Some(Type2));
        assert_eq!(type_in(rt_plan, "ReviewerName"), Some(Type2C));
        // Inside items: Institution Name in the Referring Physician Identification Sequence.
        assert_eq!(
            type_in(CT_IMAGE, "ReferringPhysicianIdentificationSequence>InstitutionName"),
            Some(Type1C)
        );
        assert_eq!(Iod::of_sop_class("1.2.3.4.5"), None, "private SOP class");
        assert_eq!(
            Iod::of_sop_class("1.2.840.10008.5.1.4.1.1.2\0").map(|iod| iod.id),
            Some("ct-image"),
            "UI padding"
        );
    }

    #[test]
    fn iods_newer_than_2020a_are_known() {
        // Electromyogram Waveform Storage (PS3.3 after 2020a): General
        // Equipment's Institution Name is Type 3, Waveform Identification's
        // Acquisition DateTime Type 1, Enhanced General Equipment's Device
        // Serial Number Type 1.
        let electromyogram = "1.2.840.10008.5.1.4.1.1.9.7.2";
        assert_eq!(Iod::of_sop_class(electromyogram).unwrap().id, "electromyogram");
        assert_eq!(type_in(electromyogram, "InstitutionName"), Some(Type3));
        assert_eq!(type_in(electromyogram, "AcquisitionDateTime"), Some(Type1));
        assert_eq!(type_in(electromyogram, "DeviceSerialNumber"), Some(Type1));
        // Label Map Segmentation shares the Segmentation IOD; Photoacoustic Image is its own.
        assert_eq!(
            Iod::of_sop_class("1.2.840.10008.5.1.4.1.1.66.7").map(|iod| iod.id),
            Some("segmentation")
        );
        assert_eq!(
            Iod::of_sop_class("1.2.840.10008.5.1.4.1.1.6.3").map(|iod| iod.id),
            Some("photoacoustic-image")
        );
        // Content Creator's Name: Type 3 in this extraction, 2 in 2020a's
        // (fixtures/deid/README.md); Z/D makes it zero-length either way.
        assert_eq!(
            type_in("1.2.840.10008.5.1.4.1.1.66.4", "ContentCreatorName"),
            Some(Type3)
        );
    }

    #[test]
    fn compound_actions_follow_the_type() {
        let resolve_in = |action, sop_class, path| resolve(action, type_in(sop_class, path), false);
        assert_eq!(
            resolve_in(Action::RemoveOrZeroOrDummy, CT_IMAGE, "InstitutionName"),
            Action::Remove
        );
        assert_eq!(
            resolve_in(Action::RemoveOrZeroOrDummy, ENHANCED_MR_IMAGE, "DeviceSerialNumber"),
            Action::Dummy
        );
        assert_eq!(resolve_in(Action::ZeroOrDummy, CT_IMAGE, "ContentDate"), Action::Zero);
        assert_eq!(
            resolve_in(Action::ZeroOrDummy, ENHANCED_MR_IMAGE, "ContentDate"),
            Action::Dummy
        );
        assert_eq!(
            resolve_in(
                Action::RemoveOrZeroOrDummy,
                "1.2.840.10008.5.1.4.1.1.481.5",
                "OperatorsName"
            ),
            Action::Zero
        );
        assert_eq!(resolve(Action::RemoveOrZero, Some(Type2C), false), Action::Zero);
        assert_eq!(resolve(Action::RemoveOrDummy, Some(Type1C), false), Action::Dummy);
        assert_eq!(
            resolve(Action::RemoveOrZeroOrDummy, None, false),
            Action::Dummy,
            "unknown type stays present"
        );
        assert_eq!(resolve(Action::RemoveOrZeroOrUid, None, true), Action::Keep);
        assert_eq!(resolve(Action::RemoveOrZeroOrUid, Some(Type3), true), Action::Remove);
        assert_eq!(resolve(Action::RemoveOrZeroOrUid, Some(Type2), true), Action::Keep);
        assert_eq!(resolve(Action::RemoveOrZeroOrUid, Some(Type2), false), Action::Zero);
        assert_eq!(
            resolve(Action::Clean, Some(Type3), false),
            Action::Clean,
            "simple actions stay"
        );
    }
}
