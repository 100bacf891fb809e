//! `synthd process` on the demo study with the tiny test model: synthetic
//! series, SEG, manifest and previews as other tools read them; byte-identical
//! reruns; pixels outside the mask untouched; the SEG-mask path; resuming.

mod common;

use common::{files_under, key, python, repo};
use std::path::{Path, PathBuf};
use std::process::Command;

/// fixtures/dicom/make_demo.py: 48 axial T1 slices (the FLAIR series is not
/// selected here) and a SEG whose first segment (necrosis), the one a model
/// without label planes takes, covers 181 voxels.
const DEMO_SLICES: usize = 48;
const LESION_VOXELS: u64 = 181;

fn pipeline(dir: &Path, mask_source: &str, variants: u32) -> PathBuf {
    let path = dir.join(format!("tiny-{mask_source}.toml"));
    let text = format!(
        r#"name = "tiny-{mask_source}"
[match]
modality = ["MR"]
series_description = ["*T1*"]
[deid]
options = ["retain-longitudinal-modified-dates", "clean-descriptors"]
[synth]
model = "{model}"
sampler = "ddim"
steps = 4
seed = 11
variants = {variants}
batch = 8
providers = ["cpu"]
[synth.mask]
source = "{mask_source}"
diameter_mm = [10.0, 20.0]
[output]
preview = true
csv = true
"#,
        model = repo("fixtures/models/tiny/tiny-cond.onnx").display()
    );
    std::fs::write(&path, text).unwrap();
    path
}

fn process(pipeline: &Path, output: &Path, key: &Path) -> String {
    common::process_demo(pipeline, output, key)
}

fn manifest(output: &Path) -> Vec<serde_json::Value> {
    let path = files_under(output)
        .into_iter()
        .find(|p| p.ends_with("manifest.jsonl"))
        .expect("manifest.jsonl");
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

fn of_kind<'a>(entries: &'a [serde_json::Value], kind: &str) -> Vec<&'a serde_json::Value> {
    entries.iter().filter(|e| e["kind"] == kind).collect()
}

#[test]
fn generated_masks_give_valid_synthetic_series_with_provenance() {
    let dir = tempfile::tempdir().unwrap();
    let key = key(dir.path(), "site.key");
    let pipeline = pipeline(dir.path(), "generated", 1);
    let output = dir.path().join("out");
    let summary = process(&pipeline, &output, &key);
    assert!(
        summary.contains(&format!(
            "{DEMO_SLICES} synthetic, {DEMO_SLICES} de-identified source, 1 SEG, 1 preview(s)"
        )),
        "{summary}"
    );
    assert!(summary.contains("provider    cpu"), "{summary}");

    let entries = manifest(&output);
    assert_eq!(of_kind(&entries, "synthetic").len(), DEMO_SLICES);
    assert_eq!(of_kind(&entries, "seg").len(), 1);
    let study_dir = files_under(&output)
        .into_iter()
        .find(|p| p.ends_with("manifest.jsonl"))
        .unwrap();
    let study_dir = study_dir.parent().unwrap();
    assert!(study_dir.join("manifest.csv").is_file());
    assert!(files_under(study_dir).iter().any(|p| p.ends_with("preview.png")));
    let inpainted: u64 = of_kind(&entries, "synthetic")
        .iter()
        .map(|e| e["mask_voxels"].as_u64().unwrap())
        .sum();
    assert!(inpainted > 0, "generated masks cover some pixels");
    // Series folders say what they hold: `<kind>-<Series Instance UID>`.
    for entry in &entries {
        let prefix = match entry["kind"].as_str().unwrap() {
            "source" => "deid",
            kind => kind,
        };
        let series = entry["series_instance_uid"].as_str().unwrap();
        let path = Path::new(entry["path"].as_str().unwrap());
        let folder = path.parent().unwrap().to_str().unwrap();
        assert_eq!(folder, format!("{prefix}-{series}"), "{entry}");
        assert!(study_dir.join(path).is_file(), "{}", path.display());
    }
    assert!(
        study_dir
            .join(
                Path::new(of_kind(&entries, "synthetic")[0]["path"].as_str().unwrap())
                    .parent()
                    .unwrap()
                    .join("preview.png")
            )
            .is_file(),
        "the preview lies in its synthetic series' folder"
    );
    let text = std::fs::read_to_string(study_dir.join("manifest.jsonl")).unwrap();
    assert!(
        !text.contains("FAKE") && !text.contains("Fake"),
        "no PHI in the manifest"
    );

    // dciodvfy: no error the de-identified source does not already have.
    let dciodvfy_errors = |path: &Path| -> Vec<String> {
        let out = Command::new("dciodvfy").arg(path).output().unwrap();
        String::from_utf8_lossy(&out.stderr)
            .lines()
            .filter(|l| l.starts_with("Error") && !l.contains("(0x0008,0x001c)"))
            .map(str::to_string)
            .collect()
    };
    let source = study_dir.join(of_kind(&entries, "source")[0]["path"].as_str().unwrap());
    let baseline = dciodvfy_errors(&source);
    for entry in of_kind(&entries, "synthetic")
        .iter()
        .chain(of_kind(&entries, "seg").iter())
    {
        let path = study_dir.join(entry["path"].as_str().unwrap());
        let new: Vec<String> = dciodvfy_errors(&path)
            .into_iter()
            .filter(|e| !baseline.contains(e))
            .collect();
        assert!(new.is_empty(), "{}: {new:#?}", path.display());
        assert!(Command::new("dcmdump").arg("-q").arg(&path).status().unwrap().success());
        assert!(Command::new("gdcmdump").arg(&path).output().unwrap().status.success());
    }

    // pydicom: provenance, and every pixel outside the SEG mask equals the source.
    let script = r#"
import sys, json, os, pydicom, numpy as np
study = sys.argv[1]
entries = [json.loads(l) for l in open(os.path.join(study, "manifest.jsonl"))]
sources = {e["sop_instance_uid"]: pydicom.dcmread(os.path.join(study, e["path"])) for e in entries if e["kind"] == "source"}
seg = pydicom.dcmread(os.path.join(study, [e for e in entries if e["kind"] == "seg"][0]["path"]))
frames = seg.pixel_array.reshape(-1, seg.Rows, seg.Columns)
frame_of = {}
for i, group in enumerate(seg.PerFrameFunctionalGroupsSequence):
    frame_of[group.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID] = frames[i]
checked = 0
for e in entries:
    if e["kind"] != "synthetic":
        continue
    syn = pydicom.dcmread(os.path.join(study, e["path"]))
    src = sources[e["source_uid"]]
    assert syn.SyntheticData == "YES"
    assert syn.SourceImageSequence[0].ReferencedSOPInstanceUID == src.SOPInstanceUID
    assert syn.ContributingEquipmentSequence[0].PurposeOfReferenceCodeSequence[0].CodeValue == "109104"
    assert syn.ContributingEquipmentSequence[-1].PurposeOfReferenceCodeSequence[0].CodeValue == "109100"
    assert syn.SeriesDescription.startswith("SYNTHETIC"), syn.SeriesDescription
    assert syn.StudyInstanceUID == src.StudyInstanceUID
    block = syn.private_block(0x0029, "SYNTHD 1")
    assert block[0x04].value == "11" and block[0x05].value == "ddim" and block[0x06].value == "4"
    mask = frame_of.get(syn.SOPInstanceUID, np.zeros((syn.Rows, syn.Columns), np.uint8))
    a, b = src.pixel_array, syn.pixel_array
    assert (a[mask == 0] == b[mask == 0]).all(), "pixels outside the mask changed"
    assert syn.BitsStored == src.BitsStored and syn.PixelRepresentation == src.PixelRepresentation
    checked += 1
assert checked == int(sys.argv[2]), checked
print("ok")
"#;
    let run = Command::new(python())
        .arg("-c")
        .arg(script)
        .arg(study_dir)
        .arg(DEMO_SLICES.to_string())
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}{}",
        String::from_utf8_lossy(&run.stdout),
        common::stderr(&run)
    );
}

#[test]
fn reruns_are_byte_identical_and_resume() {
    let dir = tempfile::tempdir().unwrap();
    let key = key(dir.path(), "site.key");
    let pipeline = pipeline(dir.path(), "generated", 2);
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    process(&pipeline, &a, &key);
    process(&pipeline, &b, &key);
    let dicom = |root: &Path| -> Vec<PathBuf> {
        files_under(root)
            .into_iter()
            .filter(|p| p.extension().is_some_and(|e| e == "dcm" || e == "png"))
            .map(|p| p.strip_prefix(root).unwrap().to_path_buf())
            .collect()
    };
    let files = dicom(&a);
    assert_eq!(files, dicom(&b));
    assert_eq!(
        files.iter().filter(|p| p.extension().unwrap() == "dcm").count(),
        DEMO_SLICES + 2 * DEMO_SLICES + 2
    );
    for file in &files {
        assert_eq!(
            std::fs::read(a.join(file)).unwrap(),
            std::fs::read(b.join(file)).unwrap(),
            "{}",
            file.display()
        );
    }
    let again = process(&pipeline, &a, &key);
    assert!(again.contains("(1 already done by an earlier run)"), "{again}");
}

#[test]
fn seg_masks_come_from_the_study_segmentation() {
    let dir = tempfile::tempdir().unwrap();
    let key = key(dir.path(), "site.key");
    let pipeline = pipeline(dir.path(), "seg", 1);
    let output = dir.path().join("out");
    let summary = process(&pipeline, &output, &key);
    assert!(
        summary.contains("24 not selected"),
        "only the 24 FLAIR slices are left out; the SEG is taken for its mask: {summary}"
    );
    let entries = manifest(&output);
    let inpainted: u64 = of_kind(&entries, "synthetic")
        .iter()
        .map(|e| e["mask_voxels"].as_u64().unwrap())
        .sum();
    assert_eq!(inpainted, LESION_VOXELS, "the mask is exactly the SEG's first segment");
    assert_eq!(
        of_kind(&entries, "source").len(),
        DEMO_SLICES + 1,
        "the de-identified SEG goes out too"
    );
}
