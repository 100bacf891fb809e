//! Which pipeline takes a series: the first whose `[match]` accepts the
//! original header (before de-identification removes Series Description).

use super::Header;
use crate::config::pipeline::Selection;
use crate::config::LoadedPipeline;

/// The name of the first pipeline (config order) whose selection accepts `header`.
pub fn pick_pipeline<'a>(pipelines: &'a [LoadedPipeline], header: &Header) -> Option<&'a LoadedPipeline> {
    pipelines
        .iter()
        .find(|pipeline| matches(&pipeline.pipeline.selection, header))
}

pub fn matches(selection: &Selection, header: &Header) -> bool {
    let modality_ok = selection.modality.is_empty()
        || selection
            .modality
            .iter()
            .any(|m| m.eq_ignore_ascii_case(header.modality.trim()));
    let class_ok = selection.sop_classes.is_empty()
        || selection
            .sop_classes
            .iter()
            .any(|c| c.trim() == header.sop_class_uid.trim());
    let description = header.series_description.expose().to_lowercase();
    let description_ok = selection.series_description.is_empty()
        || selection
            .series_description
            .iter()
            .any(|pattern| glob(&pattern.to_lowercase(), &description));
    modality_ok && class_ok && description_ok
}

/// `*` and `?` glob over characters.
fn glob(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti, mut star, mut mark) = (0, 0, None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_matches_like_a_shell() {
        assert!(glob("t1*", "t1 mprage"));
        assert!(glob("*flair*", "ax flair fs"));
        assert!(glob("t?", "t2"));
        assert!(!glob("t1*", "t2 tse"));
        assert!(glob("*", ""));
    }
}
