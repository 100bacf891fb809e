//! Writing one de-identified study into the outbox: the de-identified source
//! series, and for a pipeline with `[synth]`, every variant of every selected
//! series as a synthetic series, its mask as a SEG, a preview, and the
//! study's manifest. Used alike by `synthd process` and the daemon.

use super::attrs::{items_of, string_of};
use super::manifest::{self, InstanceKind, ManifestEntry};
use super::pixels::{self, PixelFormat};
use super::preview::{self, PreviewSlice};
use super::seg::{self, SegmentMeaning};
use super::synthetic::{self, Provenance};
use super::{encode, OutputError};
use crate::config::pipeline::{LoadedPipeline, MaskSource};
use crate::deid::Deidentified;
use crate::fsutil;
use crate::keyfile::SiteKey;
use crate::synth::{Engine, SeriesRequest, SliceGeometry, SliceInput};
use dicom_dictionary_std::tags;
use dicom_object::DefaultDicomObject;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

const SEG_STORAGE: &str = seg::SEGMENTATION_STORAGE;

/// What a study produced, for logs and summaries (counts only, no PHI).
#[derive(Debug, Default, Clone)]
pub struct StudyReport {
    pub study_dir: PathBuf,
    pub source_instances: usize,
    pub synthetic_series: usize,
    pub synthetic_instances: usize,
    pub seg_instances: usize,
    pub previews: usize,
    /// Series that could not be synthesized, with the reason (e.g. colour images).
    pub skipped_series: Vec<String>,
    pub ort_seconds: f64,
    pub synth_seconds: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum StudyError {
    #[error(transparent)]
    Output(#[from] OutputError),
    #[error("the model failed: {0}")]
    Model(String),
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
}

/// Whether `write_study` writes the de-identified sources, or they are
/// already in the outbox (the daemon writes each as soon as it is ready).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceWrites {
    Write,
    AlreadyWritten,
}

/// How a study's outputs are made.
pub struct StudyContext<'a> {
    pub key: &'a SiteKey,
    pub pipeline: &'a LoadedPipeline,
    /// sha256 of the pipeline file, recorded in provenance.
    pub pipeline_sha256: String,
    pub engine: Option<&'a Engine>,
}

/// Writes everything for one study (all instances share a de-identified
/// Study Instance UID). Files are written durably; the manifest is rewritten
/// whole, merged with what a previous job of the same study wrote.
pub fn write_study(
    context: &StudyContext<'_>,
    instances: &[Deidentified],
    outbox: &Path,
    sources: SourceWrites,
) -> Result<StudyReport, StudyError> {
    let Some(first) = instances.first() else {
        return Ok(StudyReport::default());
    };
    let study_dir = outbox.join(&first.study_uid);
    let mut report = StudyReport {
        study_dir: study_dir.clone(),
        ..StudyReport::default()
    };
    let pipeline = &context.pipeline.pipeline;
    let pipeline_name = context.pipeline.name().to_string();
    let mut entries = manifest::read_manifest(&study_dir).map_err(|source| StudyError::Write {
        path: study_dir.join("manifest.jsonl"),
        source,
    })?;

    let synthesize = pipeline.synth.is_some() && context.engine.is_some();
    if pipeline.output.deidentified_source || !synthesize {
        for instance in instances {
            let relative = Path::new(&instance.series_uid).join(format!("{}.dcm", instance.sop_instance_uid));
            if sources == SourceWrites::Write {
                write_object(&study_dir.join(&relative), instance.object())?;
            }
            report.source_instances += 1;
            entries.push(ManifestEntry {
                path: relative.display().to_string(),
                kind: InstanceKind::Source,
                sop_instance_uid: instance.sop_instance_uid.clone(),
                series_instance_uid: instance.series_uid.clone(),
                source_uid: instance.sop_instance_uid.clone(),
                pipeline: pipeline_name.clone(),
                model_sha256: None,
                variant: None,
                seed: None,
                mask_voxels: None,
                ort_seconds: None,
                total_seconds: None,
            });
        }
    }

    if let (Some(synth), Some(engine)) = (&pipeline.synth, context.engine) {
        let segs: Vec<&Deidentified> = instances.iter().filter(|i| i.sop_class_uid == SEG_STORAGE).collect();
        let mut series: BTreeMap<&str, Vec<&Deidentified>> = BTreeMap::new();
        for instance in instances.iter().filter(|i| i.sop_class_uid != SEG_STORAGE) {
            if instance.object().get(tags::PIXEL_DATA).is_some() {
                series.entry(instance.series_uid.as_str()).or_default().push(instance);
            }
        }
        for (series_uid, mut slices) in series {
            slices.sort_by(|a, b| slice_order(a.object()).total_cmp(&slice_order(b.object())));
            match synthesize_series(
                context,
                engine,
                synth,
                series_uid,
                &slices,
                &segs,
                &study_dir,
                &mut entries,
            ) {
                Ok(series_report) => {
                    report.synthetic_series += series_report.synthetic_series;
                    report.synthetic_instances += series_report.synthetic_instances;
                    report.seg_instances += series_report.seg_instances;
                    report.previews += series_report.previews;
                    report.ort_seconds += series_report.ort_seconds;
                    report.synth_seconds += series_report.synth_seconds;
                }
                Err(SeriesSkip(reason)) => report.skipped_series.push(reason),
            }
        }
    }
    manifest::write_manifest(&study_dir, &entries, pipeline.output.csv).map_err(|source| StudyError::Write {
        path: study_dir.join("manifest.jsonl"),
        source,
    })?;
    Ok(report)
}

/// A series that is not synthesized, and why (reported, never silent).
struct SeriesSkip(String);

#[allow(clippy::too_many_arguments)]
fn synthesize_series(
    context: &StudyContext<'_>,
    engine: &Engine,
    synth: &crate::config::pipeline::Synth,
    series_uid: &str,
    slices: &[&Deidentified],
    segs: &[&Deidentified],
    study_dir: &Path,
    entries: &mut Vec<ManifestEntry>,
) -> Result<StudyReport, SeriesSkip> {
    let skip = |why: String| SeriesSkip(format!("series {series_uid}: {why}"));
    let mut formats = Vec::with_capacity(slices.len());
    let mut stored = Vec::with_capacity(slices.len());
    let mut inputs = Vec::with_capacity(slices.len());
    for instance in slices {
        let format = PixelFormat::of(instance.object()).map_err(|e| skip(e.to_string()))?;
        let values = pixels::stored_values(instance.object(), &format).map_err(|e| skip(e.to_string()))?;
        let geometry = geometry_of(instance.object()).ok_or_else(|| {
            skip("no Image Position/Orientation (Patient) or Pixel Spacing; masks live in patient space".into())
        })?;
        inputs.push(SliceInput {
            id: instance.sop_instance_uid.clone(),
            rows: format.rows,
            cols: format.columns,
            values: values.iter().map(|&v| format.to_real(v)).collect(),
            geometry,
            mask: None,
        });
        formats.push(format);
        stored.push(values);
    }
    let (mask_id_base, meaning) = match synth.mask.source {
        MaskSource::Generated => ("generated-ellipsoids".to_string(), SegmentMeaning::inpainted_region()),
        MaskSource::Seg => {
            let (seg_uid, masks) = seg_masks(segs, slices, &synth.mask.segment_label).ok_or_else(|| {
                skip("the pipeline takes its mask from a SEG, and the study has no SEG of this series".into())
            })?;
            for (input, mask) in inputs.iter_mut().zip(masks) {
                input.mask = Some(mask);
            }
            (format!("seg:{seg_uid}"), SegmentMeaning::lesion())
        }
    };
    let mut report = StudyReport::default();
    for variant in 0..synth.variants {
        let request = SeriesRequest {
            slices: inputs.clone(),
            variant,
            seed: synth.seed,
            ..SeriesRequest::default()
        };
        let result = engine
            .inpaint_series(&request)
            .map_err(|e| skip(format!("model failure: {e}")))?;
        let provenance = Provenance {
            pipeline_name: context.pipeline.name().to_string(),
            pipeline_sha256: context.pipeline_sha256.clone(),
            model_name: engine.manifest().model.name.clone(),
            model_version: engine.manifest().model.version.clone(),
            model_sha256: engine.model_sha256().to_string(),
            sampler: synth.sampler_label(),
            steps: synth.steps,
            seed: synth.seed,
            variant,
            mask_id: mask_id_base.clone(),
            keep_descriptors: true,
        };
        let mut written = Vec::with_capacity(slices.len());
        let mut previews = Vec::new();
        for (index, output) in result.slices.iter().enumerate() {
            let composed = pixels::compose(&formats[index], &stored[index], &output.values, &output.mask);
            let instance = synthetic::build_instance(context.key, slices[index].object(), &composed, &provenance)
                .map_err(|e| skip(e.to_string()))?;
            let sop = string_of(&instance, tags::SOP_INSTANCE_UID).unwrap_or_default();
            let synthetic_series = string_of(&instance, tags::SERIES_INSTANCE_UID).unwrap_or_default();
            let relative = Path::new(&synthetic_series).join(format!("{sop}.dcm"));
            write_object(&study_dir.join(&relative), &instance).map_err(|e| skip(e.to_string()))?;
            let mask_voxels = output.mask.iter().filter(|&&m| m != 0).count() as u64;
            entries.push(ManifestEntry {
                path: relative.display().to_string(),
                kind: InstanceKind::Synthetic,
                sop_instance_uid: sop,
                series_instance_uid: synthetic_series,
                source_uid: slices[index].sop_instance_uid.clone(),
                pipeline: context.pipeline.name().to_string(),
                model_sha256: Some(engine.model_sha256().to_string()),
                variant: Some(variant),
                seed: Some(synth.seed),
                mask_voxels: Some(mask_voxels),
                ort_seconds: Some(result.ort_seconds),
                total_seconds: Some(result.total_seconds),
            });
            previews.push(
                composed
                    .iter()
                    .map(|&v| formats[index].to_real(v))
                    .collect::<Vec<f32>>(),
            );
            written.push((instance, output.mask.clone()));
            report.synthetic_instances += 1;
        }
        report.synthetic_series += 1;
        report.ort_seconds += result.ort_seconds;
        report.synth_seconds += result.total_seconds;
        let synthetic_series = string_of(&written[0].0, tags::SERIES_INSTANCE_UID).unwrap_or_default();
        let output = &context.pipeline.pipeline.output;
        if output.seg {
            let frames: Vec<(&DefaultDicomObject, &[u8])> = written.iter().map(|(o, m)| (o, m.as_slice())).collect();
            let seg_object = seg::build_seg(context.key, &frames, &meaning, &provenance, series_uid)
                .map_err(|e| skip(e.to_string()))?;
            if let Some(seg_object) = seg_object {
                let sop = string_of(&seg_object, tags::SOP_INSTANCE_UID).unwrap_or_default();
                let seg_series = string_of(&seg_object, tags::SERIES_INSTANCE_UID).unwrap_or_default();
                let relative = Path::new(&seg_series).join(format!("{sop}.dcm"));
                write_object(&study_dir.join(&relative), &seg_object).map_err(|e| skip(e.to_string()))?;
                entries.push(ManifestEntry {
                    path: relative.display().to_string(),
                    kind: InstanceKind::Seg,
                    sop_instance_uid: sop,
                    series_instance_uid: seg_series,
                    source_uid: synthetic_series.clone(),
                    pipeline: context.pipeline.name().to_string(),
                    model_sha256: Some(engine.model_sha256().to_string()),
                    variant: Some(variant),
                    seed: Some(synth.seed),
                    mask_voxels: Some(
                        written
                            .iter()
                            .map(|(_, m)| m.iter().filter(|&&v| v != 0).count() as u64)
                            .sum(),
                    ),
                    ort_seconds: None,
                    total_seconds: None,
                });
                report.seg_instances += 1;
            }
        }
        if output.preview {
            let sheet: Vec<PreviewSlice<'_>> = (0..written.len())
                .map(|i| PreviewSlice {
                    rows: formats[i].rows,
                    columns: formats[i].columns,
                    source: &inputs[i].values,
                    synthetic: &previews[i],
                    mask: &written[i].1,
                })
                .collect();
            let window = pixels::window(&formats[0], &stored[stored.len() / 2]);
            let path = study_dir.join(&synthetic_series).join("preview.png");
            preview::write_contact_sheet(&path, &sheet, window).map_err(|e| skip(format!("preview: {e}")))?;
            report.previews += 1;
        }
    }
    Ok(report)
}

fn write_object(path: &Path, object: &DefaultDicomObject) -> Result<(), StudyError> {
    let bytes = encode(object)?;
    if let Some(parent) = path.parent() {
        fsutil::create_private_dir(parent).map_err(|source| StudyError::Write {
            path: parent.to_path_buf(),
            source,
        })?;
    }
    fsutil::write_atomic(path, &bytes, 0o640)
        .map(drop)
        .map_err(|source| StudyError::Write {
            path: path.to_path_buf(),
            source,
        })
}

fn floats(object: &DefaultDicomObject, tag: dicom_core::Tag) -> Option<Vec<f64>> {
    object
        .get(tag)
        .and_then(|e| e.to_multi_float64().ok())
        .map(|v| v.to_vec())
}

fn geometry_of(object: &DefaultDicomObject) -> Option<SliceGeometry> {
    let position = floats(object, tags::IMAGE_POSITION_PATIENT)?;
    let orientation = floats(object, tags::IMAGE_ORIENTATION_PATIENT)?;
    let spacing = floats(object, tags::PIXEL_SPACING)?;
    if position.len() != 3 || orientation.len() != 6 || spacing.len() != 2 {
        return None;
    }
    Some(SliceGeometry {
        origin_mm: [position[0], position[1], position[2]],
        row_direction: [orientation[0], orientation[1], orientation[2]],
        column_direction: [orientation[3], orientation[4], orientation[5]],
        pixel_spacing_mm: [spacing[0], spacing[1]],
    })
}

/// Position along the slice normal, else Instance Number: slices in order.
fn slice_order(object: &DefaultDicomObject) -> f64 {
    if let Some(g) = geometry_of(object) {
        let [a, b, c] = g.row_direction;
        let [d, e, f] = g.column_direction;
        let normal = [b * f - c * e, c * d - a * f, a * e - b * d];
        return g.origin_mm.iter().zip(normal).map(|(p, n)| p * n).sum();
    }
    object
        .get(tags::INSTANCE_NUMBER)
        .and_then(|e| e.to_int::<i64>().ok())
        .unwrap_or(0) as f64
}

/// Per-slice masks from the first SEG that references this series: each
/// frame of the chosen segment goes to the slice its derivation references.
fn seg_masks(segs: &[&Deidentified], slices: &[&Deidentified], label: &str) -> Option<(String, Vec<Vec<u8>>)> {
    for seg in segs {
        let object = seg.object();
        let segment_number = items_of(object, tags::SEGMENT_SEQUENCE)
            .iter()
            .find(|item| {
                label.is_empty() || string_of(item, tags::SEGMENT_LABEL).is_some_and(|l| l.eq_ignore_ascii_case(label))
            })
            .and_then(|item| item.get(tags::SEGMENT_NUMBER).and_then(|e| e.to_int::<u16>().ok()))?;
        let rows = object.get(tags::ROWS)?.to_int::<usize>().ok()?;
        let cols = object.get(tags::COLUMNS)?.to_int::<usize>().ok()?;
        let bits = object.get(tags::PIXEL_DATA)?.to_bytes().ok()?;
        let frames = items_of(object, tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE);
        // With one segment, writers often put the segment identification in
        // the shared functional groups instead of every frame's.
        let shared_segment = items_of(object, tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE)
            .first()
            .and_then(|shared| items_of(shared, tags::SEGMENT_IDENTIFICATION_SEQUENCE).first().cloned())
            .and_then(|i| {
                i.get(tags::REFERENCED_SEGMENT_NUMBER)
                    .and_then(|e| e.to_int::<u16>().ok())
            });
        let mut masks: Vec<Vec<u8>> = slices.iter().map(|s| vec![0u8; pixel_count(s.object())]).collect();
        let mut matched = false;
        for (frame, group) in frames.iter().enumerate() {
            let segment = items_of(group, tags::SEGMENT_IDENTIFICATION_SEQUENCE)
                .first()
                .and_then(|i| {
                    i.get(tags::REFERENCED_SEGMENT_NUMBER)
                        .and_then(|e| e.to_int::<u16>().ok())
                })
                .or(shared_segment);
            if segment != Some(segment_number) {
                continue;
            }
            let referenced = items_of(group, tags::DERIVATION_IMAGE_SEQUENCE)
                .iter()
                .flat_map(|d| items_of(d, tags::SOURCE_IMAGE_SEQUENCE))
                .find_map(|s| string_of(&s, tags::REFERENCED_SOP_INSTANCE_UID));
            let Some(index) = referenced.and_then(|uid| slices.iter().position(|s| s.sop_instance_uid == uid)) else {
                continue;
            };
            if masks[index].len() != rows * cols {
                continue;
            }
            for (pixel, value) in masks[index].iter_mut().enumerate() {
                let bit = frame * rows * cols + pixel;
                if bits.get(bit / 8).is_some_and(|byte| byte >> (bit % 8) & 1 == 1) {
                    *value = 1;
                }
            }
            matched = true;
        }
        if matched {
            return Some((format!("{}:{segment_number}", seg.sop_instance_uid), masks));
        }
    }
    None
}

fn pixel_count(object: &DefaultDicomObject) -> usize {
    let get = |tag| object.get(tag).and_then(|e| e.to_int::<usize>().ok()).unwrap_or(0);
    get(tags::ROWS) * get(tags::COLUMNS)
}
