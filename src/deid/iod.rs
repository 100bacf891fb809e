//! Resolving the compound actions of Table E.1-1 against the attribute's type
//! in the IOD (PS3.15 E.3.1: "X unless Z or D is required to maintain IOD
//! conformance").

use super::table::Action;
use std::collections::HashMap;
use std::sync::OnceLock;

const IOD_TYPES_TSV: &str = include_str!("iod_types.tsv");

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttributeType {
    Required,
    RequiredMayBeEmpty,
    Optional,
}

fn types() -> &'static HashMap<&'static str, (AttributeType, AttributeType)> {
    static TYPES: OnceLock<HashMap<&'static str, (AttributeType, AttributeType)>> = OnceLock::new();
    TYPES.get_or_init(|| {
        IOD_TYPES_TSV
            .lines()
            .filter(|line| !line.starts_with('#') && !line.starts_with("keyword"))
            .filter_map(|line| {
                let mut cells = line.split('\t');
                let keyword = cells.next()?;
                let parse = |cell: Option<&str>| match cell? {
                    "1" => Some(AttributeType::Required),
                    "2" => Some(AttributeType::RequiredMayBeEmpty),
                    "3" => Some(AttributeType::Optional),
                    _ => None,
                };
                Some((keyword, (parse(cells.next())?, parse(cells.next())?)))
            })
            .collect()
    })
}

/// The attribute's type at the top level of a classic or enhanced IOD, when known.
pub fn attribute_type(keyword: &str, enhanced: bool) -> Option<AttributeType> {
    types()
        .get(keyword)
        .map(|&(classic, enhanced_type)| if enhanced { enhanced_type } else { classic })
}

/// The simple action a compound action becomes. `known` is the attribute's
/// type when known (top-level attributes of a recognised IOD); otherwise the
/// conservative choice keeps the attribute present: D where allowed, else Z.
pub fn resolve(action: Action, known: Option<AttributeType>, is_sequence: bool) -> Action {
    use Action::*;
    use AttributeType::*;
    match (action, known) {
        (ZeroOrDummy, Some(Required)) => Dummy,
        (ZeroOrDummy, Some(_)) => Zero,
        (ZeroOrDummy, None) => Dummy,
        (RemoveOrZero, Some(Optional)) => Remove,
        (RemoveOrZero, _) => Zero,
        (RemoveOrDummy, Some(Optional)) => Remove,
        (RemoveOrDummy, _) => Dummy,
        (RemoveOrZeroOrDummy, Some(Optional)) => Remove,
        (RemoveOrZeroOrDummy, Some(RequiredMayBeEmpty)) => Zero,
        (RemoveOrZeroOrDummy, _) => Dummy,
        (RemoveOrZeroOrUid, Some(Optional)) => Remove,
        // A required reference sequence keeps its items, whose UIDs are remapped.
        (RemoveOrZeroOrUid, Some(Required)) | (RemoveOrZeroOrUid, None) if is_sequence => Keep,
        (RemoveOrZeroOrUid, _) => Zero,
        (simple, _) => simple,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compound_actions_follow_the_type() {
        assert_eq!(
            resolve(
                Action::RemoveOrZeroOrDummy,
                attribute_type("InstitutionName", false),
                false
            ),
            Action::Remove
        );
        assert_eq!(
            resolve(
                Action::RemoveOrZeroOrDummy,
                attribute_type("DeviceSerialNumber", true),
                false
            ),
            Action::Dummy
        );
        assert_eq!(
            resolve(Action::ZeroOrDummy, attribute_type("ContentDate", false), false),
            Action::Zero
        );
        assert_eq!(
            resolve(Action::ZeroOrDummy, attribute_type("ContentDate", true), false),
            Action::Dummy
        );
        assert_eq!(
            resolve(Action::RemoveOrZeroOrDummy, None, false),
            Action::Dummy,
            "unknown type stays present"
        );
        assert_eq!(resolve(Action::RemoveOrZeroOrUid, None, true), Action::Keep);
    }
}
