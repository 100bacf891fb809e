//! Which MR sequence a series is, decided from its own de-identified
//! attributes by the pipeline's `[sequences]` rules (the engine only ever
//! gets the result). Read after de-identification so that `synthd process`
//! and the daemon, which reads the written series back, decide alike.

use super::attrs::string_of;
use crate::config::pipeline::{SequenceRule, SequenceRules};
use crate::deid::selection::glob_match;
use crate::synth::condition::Sequence;
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;

/// The series' sequence: None when the pipeline has no `[sequences]`; an
/// error saying why when no rule matches (the series is then skipped). The
/// reason names the attributes checked, never their values.
pub fn detect(rules: Option<&SequenceRules>, object: &InMemDicomObject) -> Result<Option<Sequence>, String> {
    let Some(rules) = rules else {
        return Ok(None);
    };
    let ordered = rules.in_order();
    if let Some((sequence, _)) = ordered.iter().find(|(_, rule)| matches(rule, object)) {
        return Ok(Some(*sequence));
    }
    let names: Vec<&str> = ordered.iter().map(|(s, _)| s.name()).collect();
    Err(format!(
        "its sequence matches none of the pipeline's [sequences] rules ({}) on Series Description, Scanning Sequence, \
         Sequence Name and Contrast/Bolus Agent; not synthesized (a sequence is never guessed)",
        names.join(", ")
    ))
}

fn matches(rule: &SequenceRule, object: &InMemDicomObject) -> bool {
    let globs = |patterns: &[String], tag| {
        patterns.is_empty() || {
            let text = string_of(object, tag).unwrap_or_default();
            patterns.iter().any(|p| glob_match(p, &text))
        }
    };
    let scanning = rule.scanning_sequence.is_empty() || {
        let codes: Vec<String> = object
            .get(tags::SCANNING_SEQUENCE)
            .and_then(|e| e.to_multi_str().ok())
            .map(|v| v.iter().map(|s| s.trim().to_ascii_uppercase()).collect())
            .unwrap_or_default();
        rule.scanning_sequence
            .iter()
            .any(|wanted| codes.contains(&wanted.trim().to_ascii_uppercase()))
    };
    let contrast = match rule.contrast {
        None => true,
        Some(wanted) => string_of(object, tags::CONTRAST_BOLUS_AGENT).is_some() == wanted,
    };
    globs(&rule.series_description, tags::SERIES_DESCRIPTION)
        && globs(&rule.sequence_name, tags::SEQUENCE_NAME)
        && scanning
        && contrast
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::attrs::put_str;
    use dicom_core::VR;

    fn rules(text: &str) -> SequenceRules {
        #[derive(serde::Deserialize)]
        struct Doc {
            sequences: SequenceRules,
        }
        toml::from_str::<Doc>(text).unwrap().sequences
    }

    fn series(description: &str, scanning: &str, contrast: Option<&str>) -> InMemDicomObject {
        let mut object = InMemDicomObject::new_empty();
        put_str(&mut object, tags::SERIES_DESCRIPTION, VR::LO, description);
        put_str(&mut object, tags::SCANNING_SEQUENCE, VR::CS, scanning);
        if let Some(agent) = contrast {
            put_str(&mut object, tags::CONTRAST_BOLUS_AGENT, VR::LO, agent);
        }
        object
    }

    #[test]
    fn first_matching_rule_in_file_order_wins_and_no_match_is_an_error() {
        let r = rules(
            "[sequences.FLAIR]\nseries_description = [\"*FLAIR*\"]\n\
             [sequences.T1c]\nseries_description = [\"*T1*\"]\ncontrast = true\n\
             [sequences.T1]\nseries_description = [\"*T1*\"]\ncontrast = false\n\
             [sequences.T2]\nscanning_sequence = [\"SE\"]\n",
        );
        let detect = |o: &InMemDicomObject| detect(Some(&r), o);
        assert_eq!(detect(&series("AX T1 MPRAGE", "GR", None)), Ok(Some(Sequence::T1)));
        assert_eq!(
            detect(&series("AX T1 POST", "GR", Some("GADOLINIUM"))),
            Ok(Some(Sequence::T1c))
        );
        assert_eq!(detect(&series("T2 FLAIR", "SE\\IR", None)), Ok(Some(Sequence::FLAIR)));
        assert_eq!(detect(&series("AX T2", "SE", None)), Ok(Some(Sequence::T2)));
        let error = detect(&series("DWI b1000", "EP", None)).unwrap_err();
        assert!(
            error.contains("FLAIR, T1c, T1, T2") && !error.contains("DWI"),
            "{error}"
        );
        assert_eq!(super::detect(None, &series("DWI", "EP", None)), Ok(None));
    }
}
