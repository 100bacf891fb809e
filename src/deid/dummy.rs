//! Dummy values (action D): non-zero length, valid for the VR, meaningless.

use dicom_core::value::PrimitiveValue;
use dicom_core::VR;

pub fn dummy_value(vr: VR) -> PrimitiveValue {
    match vr {
        VR::AE => PrimitiveValue::from("ANONYMIZED"),
        VR::AS => PrimitiveValue::from("000D"),
        VR::CS => PrimitiveValue::from("ANONYMIZED"),
        VR::DA => PrimitiveValue::from("19000101"),
        VR::DT => PrimitiveValue::from("19000101000000"),
        VR::TM => PrimitiveValue::from("000000"),
        VR::DS | VR::IS => PrimitiveValue::from("0"),
        VR::PN => PrimitiveValue::from("ANONYMIZED"),
        VR::UR => PrimitiveValue::from("urn:anonymized"),
        VR::FL => PrimitiveValue::F32(vec![0.0].into()),
        VR::FD => PrimitiveValue::F64(vec![0.0].into()),
        VR::SL => PrimitiveValue::I32(vec![0].into()),
        VR::SS => PrimitiveValue::I16(vec![0].into()),
        VR::SV => PrimitiveValue::I64(vec![0].into()),
        VR::UL => PrimitiveValue::U32(vec![0].into()),
        VR::US => PrimitiveValue::U16(vec![0].into()),
        VR::UV => PrimitiveValue::U64(vec![0].into()),
        VR::OB | VR::UN => PrimitiveValue::U8(vec![0, 0].into()),
        VR::OW => PrimitiveValue::U16(vec![0].into()),
        VR::OF => PrimitiveValue::F32(vec![0.0].into()),
        VR::OD => PrimitiveValue::F64(vec![0.0].into()),
        VR::OL => PrimitiveValue::U32(vec![0].into()),
        VR::OV => PrimitiveValue::U64(vec![0].into()),
        VR::AT => PrimitiveValue::Tags(vec![dicom_core::Tag(0, 0)].into()),
        // LO, SH, ST, LT, UT, UC and anything else textual.
        _ => PrimitiveValue::from("ANONYMIZED"),
    }
}
