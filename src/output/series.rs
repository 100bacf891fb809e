//! The synthetic series of one study: each selected series is read into
//! plain values, its sequence decided by the pipeline's `[sequences]`
//! (output/sequence.rs), its mask made (generated ellipsoids per series, a
//! generated lesion per study drawn on every series, or the study's SEG by
//! code), inpainted by the engine, checked (output/qc.rs), and written with
//! its SEG, preview and manifest rows.

use super::attrs::string_of;
use super::manifest::{InstanceKind, ManifestEntry};
use super::pixels::{self, PixelFormat};
use super::preview::{self, PreviewSlice};
use super::qc::{self, Qc, Reference};
use super::seg::{self, SegmentMeaning};
use super::seg_masks::{self, SegmentChoice};
use super::study::{write_object, StudyContext, StudyReport};
use super::synthetic::{self, Provenance};
use crate::config::pipeline::{MaskSource, QcAction, Synth};
use crate::deid::Deidentified;
use crate::quarantine::{ReasonCode, Rejection};
use crate::synth::condition::{CondChannel, Sequence, Task};
use crate::synth::lesion::{self, Lesions, SliceFrame};
use crate::synth::mask::MaskSlice;
use crate::synth::{Engine, SeriesRequest, SeriesResult, SliceGeometry, SliceInput};
use dicom_dictionary_std::tags;
use dicom_object::DefaultDicomObject;
use std::collections::BTreeMap;
use std::path::Path;

/// Why a series has no synthetic output.
pub enum Outcome {
    /// Not synthesized (reported in the summary and the manifest).
    Skip(String),
    /// Quarantined with a reason code (the de-identified series stands).
    Quarantine(Rejection),
}

/// One selected series, read into plain values.
struct Series<'a> {
    uid: &'a str,
    slices: Vec<&'a Deidentified>,
    formats: Vec<PixelFormat>,
    stored: Vec<Vec<i32>>,
    inputs: Vec<SliceInput>,
    sequence: Option<Sequence>,
    /// The SEG's label maps, for `mask.source = "seg"`.
    seg_mask: Option<(String, Vec<Vec<u8>>)>,
    /// Frame of Reference UID: series that share it share patient space.
    frame_of_reference: Option<String>,
}

impl Series<'_> {
    /// Each slice's size and place in patient space, in slice order.
    fn frames(&self) -> Vec<SliceFrame> {
        self.inputs.iter().map(|i| (i.rows, i.cols, i.geometry)).collect()
    }
}

/// What every variant of a series shares: mask provenance, segments, QC reference.
struct Plan {
    components: Vec<CondChannel>,
    segments: Vec<SegmentMeaning>,
    reference: Reference,
}

/// Every way a pipeline and its model's manifest disagree, found before
/// anything runs (`synthd validate`, and the start of `process` and the
/// daemon): sequences the model conditions on but the pipeline cannot
/// decide, lesion components that are no plane of the model, a SEG
/// segment label where segments map by code.
pub fn check_pipeline(pipeline: &crate::config::pipeline::Pipeline, manifest: &crate::synth::Manifest) -> Vec<String> {
    let mut problems = Vec::new();
    let Some(synth) = &pipeline.synth else {
        return problems;
    };
    if let Err(reason) = manifest.supports_task(synth.task) {
        problems.push(format!("`synth.task` = \"{}\": {reason}", synth.task.name()));
    }
    let slots: Vec<Sequence> = manifest
        .inputs
        .class_labels
        .iter()
        .filter_map(|s| match s {
            crate::synth::condition::ClassSlot::Sequence(q) => Some(*q),
            _ => None,
        })
        .collect();
    match &pipeline.sequences {
        None if !slots.is_empty() => problems.push(format!(
            "the model is conditioned on the MR sequence (slots {}) and the pipeline has no [sequences] table to decide \
             each series' sequence; add [sequences.<T1|T1c|T2|FLAIR>] rules",
            slots.iter().map(|s| format!("seq:{s}")).collect::<Vec<_>>().join(", ")
        )),
        Some(rules) => {
            for (sequence, _) in rules.in_order() {
                if !manifest.sequences.supported.contains(&sequence) || !(slots.is_empty() || slots.contains(&sequence)) {
                    problems.push(format!(
                        "`sequences.{sequence}`: the model does not support {sequence} (sequences.supported = [{}])",
                        manifest.sequences.supported.iter().map(|s| s.name()).collect::<Vec<_>>().join(", ")
                    ));
                }
            }
        }
        None => {}
    }
    let planes = manifest.label_planes();
    if let Some(lesion) = &synth.lesion {
        for c in &lesion.components {
            if !planes.iter().any(|p| p.plane == c.plane) {
                problems.push(format!(
                    "`synth.lesion.components` plane `{}` is not a label plane of the model ({})",
                    c.plane.name(),
                    planes.iter().map(|p| p.plane.name()).collect::<Vec<_>>().join(", ")
                ));
            }
        }
    }
    if synth.mask.source == MaskSource::Seg && !planes.is_empty() && !synth.mask.segment_label.is_empty() {
        problems.push(
            "`synth.mask.segment_label`: this model has label planes, so a SEG's segments map onto them by their \
             Segmented Property Type code ([[labels]] in the model's manifest); remove segment_label"
                .into(),
        );
    }
    problems
}

/// Synthesizes every selected series of a study into `study_dir`, adding
/// manifest rows to `entries` and counts, skips and quarantines to `report`.
pub fn synthesize_study(
    context: &StudyContext<'_>,
    engine: &Engine,
    synth: &Synth,
    instances: &[Deidentified],
    study_dir: &Path,
    entries: &mut Vec<ManifestEntry>,
    report: &mut StudyReport,
) {
    let segs: Vec<&Deidentified> = instances
        .iter()
        .filter(|i| i.sop_class_uid == seg::SEGMENTATION_STORAGE)
        .collect();
    let mut by_series: BTreeMap<&str, Vec<&Deidentified>> = BTreeMap::new();
    for instance in instances
        .iter()
        .filter(|i| i.sop_class_uid != seg::SEGMENTATION_STORAGE)
    {
        if instance.object().get(tags::PIXEL_DATA).is_some() {
            by_series
                .entry(instance.series_uid.as_str())
                .or_default()
                .push(instance);
        }
    }
    let plan = plan(engine, synth);
    let mut loaded_series = Vec::new();
    for (uid, slices) in by_series {
        match load(context, engine, synth, uid, slices, &segs) {
            Ok(loaded) => loaded_series.push(loaded),
            Err(outcome) => record(report, uid, outcome),
        }
    }
    let mut series = carry_seg_masks(synth, loaded_series, report);
    grow_seg_masks(synth, &mut series);
    for variant in 0..synth.variants {
        let lesions = generated_lesions(synth, &series, instances, variant);
        let mut failed = Vec::new();
        for (index, s) in series.iter().enumerate() {
            let masks = lesions.as_ref().map(|l| l.rasterise(&s.frames()));
            match synthesize_variant(
                context, engine, synth, &plan, s, masks, variant, study_dir, entries, report,
            ) {
                Ok(()) => {}
                Err(outcome) => {
                    record(report, s.uid, outcome);
                    failed.push(index);
                }
            }
        }
        for index in failed.into_iter().rev() {
            series.remove(index);
        }
    }
}

fn record(report: &mut StudyReport, uid: &str, outcome: Outcome) {
    match outcome {
        Outcome::Skip(reason) => report.skipped_series.push((uid.to_string(), reason)),
        Outcome::Quarantine(rejection) => report.quarantined_series.push((uid.to_string(), rejection)),
    }
}

/// Segments of the output SEG and what the fill is judged against.
fn plan(engine: &Engine, synth: &Synth) -> Plan {
    let manifest = engine.manifest();
    let labels = manifest.label_planes();
    let components: Vec<CondChannel> = match (&synth.lesion, synth.mask.source) {
        (Some(lesion), MaskSource::Generated) if synth.task == Task::Lesion => {
            lesion.components.iter().map(|c| c.plane.clone()).collect()
        }
        (_, MaskSource::Seg) => labels.iter().map(|l| l.plane.clone()).collect(),
        _ => Vec::new(),
    };
    let segments = match synth.task {
        Task::Lesion => components
            .iter()
            .map(|c| match labels.iter().find(|l| &l.plane == c) {
                Some(concept) => SegmentMeaning::component(concept),
                None => SegmentMeaning::lesion(),
            })
            .collect(),
        Task::Healthy if synth.mask.source == MaskSource::Seg => vec![SegmentMeaning::lesion()],
        Task::Healthy => vec![SegmentMeaning::inpainted_region()],
    };
    let reference = match (synth.task, synth.mask.source) {
        (Task::Lesion, _) => Reference::None,
        (Task::Healthy, MaskSource::Generated) => Reference::Original,
        (Task::Healthy, MaskSource::Seg) => Reference::Ring,
    };
    Plan {
        components,
        segments,
        reference,
    }
}

/// Reads one series: pixels, geometry, sequence and (source = "seg") its SEG mask.
fn load<'a>(
    context: &StudyContext<'_>,
    engine: &Engine,
    synth: &Synth,
    uid: &'a str,
    mut slices: Vec<&'a Deidentified>,
    segs: &[&Deidentified],
) -> Result<Series<'a>, Outcome> {
    slices.sort_by(|a, b| slice_order(a.object()).total_cmp(&slice_order(b.object())));
    let sequence = super::sequence::detect(context.pipeline.pipeline.sequences.as_ref(), slices[0].object())
        .map_err(Outcome::Skip)?;
    let supported = &engine.manifest().sequences.supported;
    if let Some(s) = sequence.filter(|s| !supported.contains(s)) {
        return Err(Outcome::Skip(format!(
            "its sequence is {s}, and the model supports {}",
            supported.iter().map(|s| s.name()).collect::<Vec<_>>().join(", ")
        )));
    }
    let mut formats = Vec::with_capacity(slices.len());
    let mut stored = Vec::with_capacity(slices.len());
    let mut inputs = Vec::with_capacity(slices.len());
    for instance in &slices {
        let format = PixelFormat::of(instance.object()).map_err(|e| Outcome::Skip(e.to_string()))?;
        let values = pixels::stored_values(instance.object(), &format).map_err(|e| Outcome::Skip(e.to_string()))?;
        let geometry = geometry_of(instance.object()).ok_or_else(|| {
            Outcome::Skip(
                "no Image Position/Orientation (Patient) or Pixel Spacing; masks live in patient space".into(),
            )
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
    let seg_mask = match synth.mask.source {
        MaskSource::Generated => None,
        MaskSource::Seg => {
            let labels = engine.manifest().label_planes();
            let choice = if labels.is_empty() {
                SegmentChoice::Label(&synth.mask.segment_label)
            } else {
                SegmentChoice::Codes(&labels)
            };
            // None: carried from another series' SEG after all are read (carry_seg_masks).
            seg_masks::from_segs(segs, &slices, &choice)
                .map_err(|reason| Outcome::Quarantine(Rejection::new(ReasonCode::SegCodesUnmatched, reason)))?
                .map(|found| (found.id, found.maps))
        }
    };
    let frame_of_reference = string_of(slices[0].object(), tags::FRAME_OF_REFERENCE_UID).filter(|f| !f.is_empty());
    Ok(Series {
        uid,
        slices,
        formats,
        stored,
        inputs,
        sequence,
        seg_mask,
        frame_of_reference,
    })
}

/// `[synth.mask] dilate_mm`: each series' SEG region grown once, in its own
/// slices' Pixel Spacing, before any variant paints it.
fn grow_seg_masks(synth: &Synth, series: &mut [Series<'_>]) {
    let radius_mm = f64::from(synth.mask.dilate_mm);
    if radius_mm <= 0.0 {
        return;
    }
    for s in series {
        let Some((_, maps)) = s.seg_mask.as_mut() else { continue };
        for (map, input) in maps.iter_mut().zip(&s.inputs) {
            *map = seg_masks::dilate(map, input.rows, input.cols, input.geometry.pixel_spacing_mm, radius_mm);
        }
    }
}

/// `mask.source = "seg"`: a series the study's SEG does not reference takes
/// the SEG of a series in the same Frame of Reference, carried through
/// patient space (a lesion segmented on T1 is removed from FLAIR too). A
/// series with neither is not synthesized, with the reason.
fn carry_seg_masks<'a>(synth: &Synth, series: Vec<Series<'a>>, report: &mut StudyReport) -> Vec<Series<'a>> {
    if synth.mask.source != MaskSource::Seg {
        return series;
    }
    let carried: Vec<Option<(String, Vec<Vec<u8>>)>> = series
        .iter()
        .map(|target| {
            if target.seg_mask.is_some() {
                return None;
            }
            let donor = series.iter().find(|d| {
                d.seg_mask.is_some()
                    && d.frame_of_reference.is_some()
                    && d.frame_of_reference == target.frame_of_reference
            })?;
            let (id, maps) = donor.seg_mask.as_ref()?;
            let labels = lesion::carry_labels(&donor.frames(), maps, &target.frames());
            labels
                .iter()
                .any(|m| m.iter().any(|&v| v != 0))
                .then(|| (format!("{id}:carried"), labels))
        })
        .collect();
    let mut kept = Vec::with_capacity(series.len());
    for (mut s, carried) in series.into_iter().zip(carried) {
        if s.seg_mask.is_none() {
            s.seg_mask = carried;
        }
        if s.seg_mask.is_some() {
            kept.push(s);
        } else {
            record(
                report,
                s.uid,
                Outcome::Skip(
                    "the pipeline takes its mask from a SEG, and the study has no SEG of this series \
                     or of a series in its Frame of Reference that reaches it"
                        .into(),
                ),
            );
        }
    }
    kept
}

/// The study's generated lesions for one variant (task = "lesion" with
/// generated masks): drawn once, placed in the brain of the first series.
fn generated_lesions(synth: &Synth, series: &[Series], instances: &[Deidentified], variant: u32) -> Option<Lesions> {
    let spec = synth.lesion.as_ref()?;
    if synth.task != Task::Lesion || synth.mask.source != MaskSource::Generated {
        return None;
    }
    let reference = series.first()?;
    let views: Vec<MaskSlice> = reference
        .inputs
        .iter()
        .map(|s| MaskSlice {
            rows: s.rows,
            cols: s.cols,
            values: &s.values,
            geometry: s.geometry,
        })
        .collect();
    let study_key = instances.first().map_or("", |i| i.study_uid.as_str());
    Some(Lesions::generate(spec, synth.seed, study_key, variant, &views))
}

/// One variant of one series: inpaint, check, write.
#[allow(clippy::too_many_arguments)]
fn synthesize_variant(
    context: &StudyContext<'_>,
    engine: &Engine,
    synth: &Synth,
    plan: &Plan,
    series: &Series,
    lesion_masks: Option<Vec<Vec<u8>>>,
    variant: u32,
    study_dir: &Path,
    entries: &mut Vec<ManifestEntry>,
    report: &mut StudyReport,
) -> Result<(), Outcome> {
    let mut inputs = series.inputs.clone();
    let given = lesion_masks.or_else(|| series.seg_mask.as_ref().map(|(_, maps)| maps.clone()));
    if let Some(maps) = given {
        for (input, map) in inputs.iter_mut().zip(maps) {
            input.mask = Some(map);
        }
    }
    let request = SeriesRequest {
        slices: inputs,
        variant,
        seed: synth.seed,
        sequence: series.sequence,
        components: plan.components.clone(),
    };
    let result = engine
        .inpaint_series(&request)
        .map_err(|e| Outcome::Skip(format!("model failure: {e}")))?;
    let mask_id = match (&series.seg_mask, synth.task, synth.mask.source) {
        (Some((id, _)), _, _) => id.clone(),
        (None, Task::Lesion, MaskSource::Generated) => "generated-lesions".to_string(),
        _ => "generated-ellipsoids".to_string(),
    };
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
        mask_id,
        keep_descriptors: true,
    };
    write_variant(
        context,
        engine,
        synth,
        plan,
        series,
        &result,
        &provenance,
        study_dir,
        entries,
        report,
    )
}

/// The composed instances of a variant, checked; written unless the check
/// fails under `on_fail = "quarantine"`.
#[allow(clippy::too_many_arguments)]
fn write_variant(
    context: &StudyContext<'_>,
    engine: &Engine,
    synth: &Synth,
    plan: &Plan,
    series: &Series,
    result: &SeriesResult,
    provenance: &Provenance,
    study_dir: &Path,
    entries: &mut Vec<ManifestEntry>,
    report: &mut StudyReport,
) -> Result<(), Outcome> {
    let tissue = qc::tissue_threshold(series.inputs.iter().map(|s| s.values.as_slice()));
    let mut composed = Vec::with_capacity(result.slices.len());
    let mut reals = Vec::with_capacity(result.slices.len());
    let mut checks: Vec<Option<Qc>> = Vec::with_capacity(result.slices.len());
    for (index, output) in result.slices.iter().enumerate() {
        let format = &series.formats[index];
        let stored = pixels::compose(format, &series.stored[index], &output.values, &output.mask);
        let real: Vec<f32> = stored.iter().map(|&v| format.to_real(v)).collect();
        checks.push(qc::measure(
            &series.inputs[index].values,
            &real,
            &output.mask,
            (format.rows, format.columns),
            plan.reference,
            tissue,
        ));
        composed.push(stored);
        reals.push(real);
    }
    let limit = synth.qc.max_fill_bias;
    let passed = checks.iter().flatten().all(|q| q.passes(limit));
    let summary = qc::combine(&checks.iter().flatten().collect::<Vec<_>>());
    let numbers = summary.as_ref().map_or("no masked pixels".to_string(), describe);
    if !passed {
        let message = format!(
            "variant {}: the fill's in-mask mean is outside [synth.qc] max_fill_bias = {limit} on at least one instance \
             (series: {numbers})",
            provenance.variant
        );
        if synth.qc.on_fail == QcAction::Quarantine {
            crate::metrics::synthetic_series(context.pipeline.name(), "quarantined");
            return Err(Outcome::Quarantine(Rejection::new(
                ReasonCode::SynthesisQcFailed,
                message,
            )));
        }
        report.qc_flagged.push((series.uid.to_string(), message));
    }
    crate::metrics::synthetic_series(context.pipeline.name(), if passed { "pass" } else { "flagged" });
    let mut written = Vec::with_capacity(result.slices.len());
    for (index, output) in result.slices.iter().enumerate() {
        let instance =
            synthetic::build_instance(context.key, series.slices[index].object(), &composed[index], provenance)
                .map_err(|e| Outcome::Skip(e.to_string()))?;
        let sop = string_of(&instance, tags::SOP_INSTANCE_UID).unwrap_or_default();
        let synthetic_series = string_of(&instance, tags::SERIES_INSTANCE_UID).unwrap_or_default();
        let relative = Path::new(&InstanceKind::Synthetic.series_folder(&synthetic_series)).join(format!("{sop}.dcm"));
        write_object(&study_dir.join(&relative), &instance).map_err(|e| Outcome::Skip(e.to_string()))?;
        let qc = checks[index].clone();
        entries.push(ManifestEntry {
            path: relative.display().to_string(),
            kind: InstanceKind::Synthetic,
            sop_instance_uid: sop,
            series_instance_uid: synthetic_series,
            source_uid: series.slices[index].sop_instance_uid.clone(),
            pipeline: context.pipeline.name().to_string(),
            model_sha256: Some(engine.model_sha256().to_string()),
            variant: Some(provenance.variant),
            seed: Some(synth.seed),
            mask_voxels: Some(output.mask.iter().filter(|&&m| m != 0).count() as u64),
            ort_seconds: Some(result.ort_seconds),
            total_seconds: Some(result.total_seconds),
            sequence: series.sequence.map(|s| s.name().to_string()),
            qc_pass: Some(qc.as_ref().is_none_or(|q| q.passes(limit))),
            qc,
            not_synthesized: None,
        });
        written.push((instance, output.mask.clone()));
        report.synthetic_instances += 1;
    }
    report.synthetic_series += 1;
    report.ort_seconds += result.ort_seconds;
    report.synth_seconds += result.total_seconds;
    let synthetic_series = string_of(&written[0].0, tags::SERIES_INSTANCE_UID).unwrap_or_default();
    let output = &context.pipeline.pipeline.output;
    if output.seg {
        write_seg(
            context,
            engine,
            synth,
            plan,
            series,
            provenance,
            &written,
            &synthetic_series,
            study_dir,
            entries,
            report,
        )?;
    }
    if output.preview {
        let sheet: Vec<PreviewSlice<'_>> = (0..written.len())
            .map(|i| PreviewSlice {
                rows: series.formats[i].rows,
                columns: series.formats[i].columns,
                source: &series.inputs[i].values,
                synthetic: &reals[i],
                mask: &written[i].1,
            })
            .collect();
        let window = pixels::window(&series.formats[0], &series.stored[series.stored.len() / 2]);
        let verdict = if passed { "PASS" } else { "FLAGGED" };
        let caption = vec![format!("QC {verdict}"), numbers.to_uppercase()];
        let path = study_dir
            .join(InstanceKind::Synthetic.series_folder(&synthetic_series))
            .join("preview.png");
        preview::write_contact_sheet(&path, &sheet, window, &caption)
            .map_err(|e| Outcome::Skip(format!("preview: {e}")))?;
        report.previews += 1;
    }
    Ok(())
}

/// The QC numbers of a series in one line (for logs, previews, reasons).
pub fn describe(q: &Qc) -> String {
    let pair = |m: Option<f64>, s: Option<f64>| match (m, s) {
        (Some(m), Some(s)) => format!("{m:.1} sd {s:.1}"),
        _ => "-".to_string(),
    };
    let mut text = format!(
        "fill {} ring {}",
        pair(Some(q.fill_mean), Some(q.fill_std)),
        pair(q.ring_mean, q.ring_std)
    );
    if q.original_mean.is_some() {
        text.push_str(&format!(" orig {}", pair(q.original_mean, q.original_std)));
    }
    match q.fill_bias {
        Some(b) => text.push_str(&format!(" bias {:+.1}%", b * 100.0)),
        None => text.push_str(" bias not judged"),
    }
    text
}

#[allow(clippy::too_many_arguments)]
fn write_seg(
    context: &StudyContext<'_>,
    engine: &Engine,
    synth: &Synth,
    plan: &Plan,
    series: &Series,
    provenance: &Provenance,
    written: &[(DefaultDicomObject, Vec<u8>)],
    synthetic_series: &str,
    study_dir: &Path,
    entries: &mut Vec<ManifestEntry>,
    report: &mut StudyReport,
) -> Result<(), Outcome> {
    let frames: Vec<(&DefaultDicomObject, &[u8])> = written.iter().map(|(o, m)| (o, m.as_slice())).collect();
    let Some(seg_object) = seg::build_seg(context.key, &frames, &plan.segments, provenance, series.uid)
        .map_err(|e| Outcome::Skip(e.to_string()))?
    else {
        return Ok(());
    };
    let sop = string_of(&seg_object, tags::SOP_INSTANCE_UID).unwrap_or_default();
    let seg_series = string_of(&seg_object, tags::SERIES_INSTANCE_UID).unwrap_or_default();
    let relative = Path::new(&InstanceKind::Seg.series_folder(&seg_series)).join(format!("{sop}.dcm"));
    write_object(&study_dir.join(&relative), &seg_object).map_err(|e| Outcome::Skip(e.to_string()))?;
    entries.push(ManifestEntry {
        path: relative.display().to_string(),
        kind: InstanceKind::Seg,
        sop_instance_uid: sop,
        series_instance_uid: seg_series,
        source_uid: synthetic_series.to_string(),
        pipeline: context.pipeline.name().to_string(),
        model_sha256: Some(engine.model_sha256().to_string()),
        variant: Some(provenance.variant),
        seed: Some(synth.seed),
        mask_voxels: Some(
            written
                .iter()
                .map(|(_, m)| m.iter().filter(|&&v| v != 0).count() as u64)
                .sum(),
        ),
        sequence: series.sequence.map(|s| s.name().to_string()),
        ..ManifestEntry::default()
    });
    report.seg_instances += 1;
    Ok(())
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
