//! DICOM PS3.15 Table E.1-1 as data: one row per attribute, the Basic
//! Profile action and one action per option column. The table itself lives in
//! `table_e1_1.tsv` (built by fixtures/deid/build_table.py) and is compiled in.

use super::options::DeidOption;
use dicom_core::Tag;
use std::collections::HashMap;
use std::sync::OnceLock;

/// The edition the table was transcribed from; named in (0012,0063).
pub const EDITION: &str = "2026c";

const TABLE_TSV: &str = include_str!("table_e1_1.tsv");

/// An action code of Table E.1-1, as the standard names them (E.3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// D: replace with a non-zero length dummy value consistent with the VR.
    Dummy,
    /// Z: replace with a zero length value, or a dummy where required.
    Zero,
    /// X: remove.
    Remove,
    /// K: keep (sequences are still processed item by item).
    Keep,
    /// C: clean, i.e. replace with values of similar meaning known not to identify.
    Clean,
    /// U: replace with a non-zero length UID, consistent within the set (keyed here).
    Uid,
    /// Z/D: Z unless D is required to keep the instance valid.
    ZeroOrDummy,
    /// X/Z: X unless Z is required.
    RemoveOrZero,
    /// X/D: X unless D is required.
    RemoveOrDummy,
    /// X/Z/D: X unless Z or D is required.
    RemoveOrZeroOrDummy,
    /// X/Z/U*: X unless Z or a replacement of contained UIDs is required.
    RemoveOrZeroOrUid,
}

impl Action {
    pub fn parse(code: &str) -> Option<Action> {
        Some(match code {
            "D" => Action::Dummy,
            "Z" => Action::Zero,
            "X" => Action::Remove,
            "K" => Action::Keep,
            "C" => Action::Clean,
            "U" => Action::Uid,
            "Z/D" => Action::ZeroOrDummy,
            "X/Z" => Action::RemoveOrZero,
            "X/D" => Action::RemoveOrDummy,
            "X/Z/D" => Action::RemoveOrZeroOrDummy,
            "X/Z/U*" => Action::RemoveOrZeroOrUid,
            _ => return None,
        })
    }

    /// Whether the standard leaves the choice to IOD conformance (E.3.1).
    pub fn is_compound(self) -> bool {
        matches!(
            self,
            Action::ZeroOrDummy
                | Action::RemoveOrZero
                | Action::RemoveOrDummy
                | Action::RemoveOrZeroOrDummy
                | Action::RemoveOrZeroOrUid
        )
    }

    pub fn code(self) -> &'static str {
        match self {
            Action::Dummy => "D",
            Action::Zero => "Z",
            Action::Remove => "X",
            Action::Keep => "K",
            Action::Clean => "C",
            Action::Uid => "U",
            Action::ZeroOrDummy => "Z/D",
            Action::RemoveOrZero => "X/Z",
            Action::RemoveOrDummy => "X/D",
            Action::RemoveOrZeroOrDummy => "X/Z/D",
            Action::RemoveOrZeroOrUid => "X/Z/U*",
        }
    }
}

/// Which tags a row covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TagPattern {
    Exact(Tag),
    /// (50xx,xxxx): every element of the curve groups 5000-501E.
    CurveGroups,
    /// (60xx,eeee): one element of the overlay groups 6000-601E.
    OverlayElement(u16),
    /// (gggg,eeee) where gggg is odd.
    Private,
}

#[derive(Debug, Clone)]
pub struct Row {
    pub keyword: String,
    pub tag: TagPattern,
    pub name: String,
    pub vr: String,
    pub retired: bool,
    pub in_std_comp_iod: bool,
    pub basic: Action,
    /// Indexed like [`DeidOption::ALL`].
    pub options: [Option<Action>; 10],
}

impl Row {
    pub fn option(&self, option: DeidOption) -> Option<Action> {
        self.options[option_index(option)]
    }
}

fn option_index(option: DeidOption) -> usize {
    DeidOption::ALL
        .iter()
        .position(|o| *o == option)
        .expect("every option is in ALL")
}

#[derive(Debug)]
pub struct Table {
    pub rows: Vec<Row>,
    exact: HashMap<Tag, usize>,
    overlay: HashMap<u16, usize>,
    curve: Option<usize>,
    private: Option<usize>,
}

impl Table {
    /// The compiled-in table.
    pub fn standard() -> &'static Table {
        static TABLE: OnceLock<Table> = OnceLock::new();
        TABLE.get_or_init(|| Table::parse(TABLE_TSV).expect("table_e1_1.tsv is checked by the unit tests"))
    }

    pub fn parse(text: &str) -> Result<Table, String> {
        let mut lines = text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.starts_with('#') && !l.trim().is_empty());
        let (_, header) = lines.next().ok_or("table has no header")?;
        let columns: Vec<&str> = header.split('\t').collect();
        let expected = [
            "keyword",
            "tag",
            "name",
            "vr",
            "retired",
            "in_std_comp_iod",
            "basic",
            "retain_safe_private",
            "retain_uids",
            "retain_device_identity",
            "retain_institution_identity",
            "retain_patient_characteristics",
            "retain_longitudinal_full_dates",
            "retain_longitudinal_modified_dates",
            "clean_descriptors",
            "clean_structured_content",
            "clean_graphics",
        ];
        if columns != expected {
            return Err(format!("unexpected header {columns:?}"));
        }
        let mut table = Table {
            rows: Vec::new(),
            exact: HashMap::new(),
            overlay: HashMap::new(),
            curve: None,
            private: None,
        };
        for (number, line) in lines {
            let cells: Vec<&str> = line.split('\t').collect();
            if cells.len() != expected.len() {
                return Err(format!(
                    "line {}: {} cells, expected {}",
                    number + 1,
                    cells.len(),
                    expected.len()
                ));
            }
            let action = |cell: &str| -> Result<Option<Action>, String> {
                if cell.is_empty() {
                    Ok(None)
                } else {
                    Action::parse(cell)
                        .map(Some)
                        .ok_or_else(|| format!("line {}: unknown action {cell:?}", number + 1))
                }
            };
            let tag = parse_tag(cells[1]).ok_or_else(|| format!("line {}: bad tag {:?}", number + 1, cells[1]))?;
            let mut options = [None; 10];
            for (slot, cell) in options.iter_mut().zip(&cells[7..]) {
                *slot = action(cell)?;
            }
            let row = Row {
                keyword: cells[0].to_string(),
                tag,
                name: cells[2].to_string(),
                vr: cells[3].to_string(),
                retired: cells[4] == "Y",
                in_std_comp_iod: cells[5] == "Y",
                basic: action(cells[6])?.ok_or_else(|| format!("line {}: no basic action", number + 1))?,
                options,
            };
            let index = table.rows.len();
            match tag {
                TagPattern::Exact(tag) => {
                    table.exact.insert(tag, index);
                }
                TagPattern::OverlayElement(element) => {
                    table.overlay.insert(element, index);
                }
                TagPattern::CurveGroups => table.curve = Some(index),
                TagPattern::Private => table.private = Some(index),
            }
            table.rows.push(row);
        }
        Ok(table)
    }

    /// The row that governs `tag`, if the table names it.
    pub fn row(&self, tag: Tag) -> Option<&Row> {
        if let Some(&index) = self.exact.get(&tag) {
            return Some(&self.rows[index]);
        }
        let group = tag.group();
        if is_repeating_group(group, 0x5000) {
            return self.curve.map(|i| &self.rows[i]);
        }
        if is_repeating_group(group, 0x6000) {
            return self.overlay.get(&tag.element()).map(|&i| &self.rows[i]);
        }
        if group % 2 == 1 {
            return self.private.map(|i| &self.rows[i]);
        }
        None
    }

    pub fn by_keyword(&self, keyword: &str) -> Option<&Row> {
        self.rows.iter().find(|row| row.keyword == keyword)
    }
}

/// Groups 5000-501E / 6000-601E, even only (PS3.5 7.6).
pub fn is_repeating_group(group: u16, base: u16) -> bool {
    group >= base && group <= base + 0x1E && group % 2 == 0
}

fn parse_tag(text: &str) -> Option<TagPattern> {
    match text {
        "(gggg,eeee)" => return Some(TagPattern::Private),
        "(50xx,xxxx)" => return Some(TagPattern::CurveGroups),
        _ => {}
    }
    let inner = text.strip_prefix('(')?.strip_suffix(')')?;
    let (group, element) = inner.split_once(',')?;
    if group == "60xx" {
        return u16::from_str_radix(element, 16).ok().map(TagPattern::OverlayElement);
    }
    let group = u16::from_str_radix(group, 16).ok()?;
    let element = u16::from_str_radix(element, 16).ok()?;
    Some(TagPattern::Exact(Tag(group, element)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_has_every_row_of_the_edition() {
        let table = Table::standard();
        assert_eq!(table.rows.len(), 656, "PS3.15 2026c Table E.1-1 has 656 rows");
        let summary = TABLE_TSV.lines().last().unwrap();
        assert_eq!(summary, "# rows: 656");
        assert!(TABLE_TSV.starts_with("# DICOM PS3.15 2026c Table E.1-1"));
    }

    #[test]
    fn known_rows_read_as_the_standard_says() {
        let table = Table::standard();
        let row = |keyword: &str| table.by_keyword(keyword).unwrap_or_else(|| panic!("{keyword} missing"));
        assert_eq!(row("PatientName").basic, Action::Zero);
        assert_eq!(row("PatientID").basic, Action::ZeroOrDummy);
        assert_eq!(row("AccessionNumber").basic, Action::Zero);
        assert_eq!(row("StudyInstanceUID").basic, Action::Uid);
        assert_eq!(
            row("StudyInstanceUID").option(DeidOption::RetainUids),
            Some(Action::Keep)
        );
        let institution = row("InstitutionName");
        assert_eq!(institution.basic, Action::RemoveOrZeroOrDummy);
        assert_eq!(
            institution.option(DeidOption::RetainInstitutionIdentity),
            Some(Action::Keep)
        );
        let study_date = row("StudyDate");
        assert_eq!(study_date.basic, Action::Zero);
        assert_eq!(
            study_date.option(DeidOption::RetainLongitudinalFullDates),
            Some(Action::Keep)
        );
        assert_eq!(
            study_date.option(DeidOption::RetainLongitudinalModifiedDates),
            Some(Action::Clean)
        );
        assert_eq!(
            row("PatientSex").option(DeidOption::RetainPatientCharacteristics),
            Some(Action::Keep)
        );
        assert_eq!(
            row("DeviceSerialNumber").option(DeidOption::RetainDeviceIdentity),
            Some(Action::Keep)
        );
        assert_eq!(
            row("SeriesDescription").option(DeidOption::CleanDescriptors),
            Some(Action::Clean)
        );
        assert_eq!(
            row("ContentSequence").option(DeidOption::CleanStructuredContent),
            Some(Action::Clean)
        );
        // Rows 2026c added to 2024b: waveform text and labels, names to use.
        assert_eq!(row("WaveformAnnotationSequence").basic, Action::RemoveOrDummy);
        assert_eq!(row("UnformattedTextValue").basic, Action::Dummy);
        assert_eq!(row("MultiplexGroupLabel").basic, Action::Remove);
        assert_eq!(row("ChannelLabel").basic, Action::Remove);
        assert_eq!(row("NameToUse").basic, Action::Remove);
        assert_eq!(
            row("RequestingService").option(DeidOption::CleanDescriptors),
            Some(Action::Clean)
        );
    }

    #[test]
    fn repeating_groups_and_private_attributes_are_covered() {
        let table = Table::standard();
        let overlay = table.row(Tag(0x6002, 0x3000)).unwrap();
        assert_eq!(overlay.name, "Overlay Data");
        assert_eq!(overlay.option(DeidOption::CleanGraphics), Some(Action::Clean));
        assert_eq!(table.row(Tag(0x6000, 0x4000)).unwrap().name, "Overlay Comments");
        assert!(
            table.row(Tag(0x6000, 0x0010)).is_none(),
            "overlay rows are not in the table"
        );
        assert_eq!(table.row(Tag(0x5004, 0x3000)).unwrap().name, "Curve Data");
        let private = table.row(Tag(0x0009, 0x1010)).unwrap();
        assert_eq!(private.basic, Action::Remove);
        assert_eq!(private.option(DeidOption::RetainSafePrivate), Some(Action::Clean));
    }
}
