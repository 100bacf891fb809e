//! Which pipeline takes a series: the first (config order) whose `[match]`
//! accepts the original header, read before de-identification removes what
//! selection needs (Series Description). The matching rule itself is
//! `deid::selection`'s.

use super::Header;
use crate::config::LoadedPipeline;

pub fn pick_pipeline<'a>(pipelines: &'a [LoadedPipeline], header: &Header) -> Option<&'a LoadedPipeline> {
    pipelines
        .iter()
        .find(|pipeline| crate::deid::selection::pipeline_takes(&pipeline.pipeline, &header.dataset))
}
