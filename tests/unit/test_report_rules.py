"""Specimen report rules (analysis.report) and messages (analysis.report_messages), without services."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

from fhir.resources.R4B.diagnosticreport import DiagnosticReport

from analysis.config import load_config
from analysis.report import ImageReading, ReportConfig, aggregate, end_point
from analysis.report_messages import build_fhir, build_hl7, parse_hl7
from tests.conftest import REPO_ROOT


def reading(slide_id: int, dilution: str | None, pattern: str = "speckled", intensity: str = "positive",
            **extra: object) -> ImageReading:
    return ImageReading(slide_id=slide_id, dilution=dilution, status="done", analysed=True, pattern=pattern,
                        intensity=intensity, confidence=0.8, **extra)  # type: ignore[arg-type]


def test_end_point_titer() -> None:
    assert end_point({80: True, 160: True, 320: False})["text"] == "1:160"
    assert end_point({80: True, 160: True, 320: True})["text"] == "≥1:320"
    negative = end_point({80: False, 160: False})
    assert negative["text"] == "negative" and negative["below"] == "<1:80"
    assert end_point({})["text"] is None


def test_series_with_a_negative_dilution() -> None:
    agg = aggregate([reading(1, "1:80"), reading(2, "1:160"), reading(3, "1:320", "negative", "negative")])
    assert agg.result == "positive" and agg.titer["text"] == "1:160" and not agg.needs_review
    assert [p["pattern"] for p in agg.patterns] == ["speckled"] and agg.patterns[0]["icap"] == "AC-2,4,5"
    assert agg.patterns[0]["endpoint"] == "1:160" and agg.intensity == "positive"
    assert [s["positive"] for s in agg.titer["series"]] == [True, True, False]


def test_all_positive_is_at_least_the_highest_and_none_positive_is_negative() -> None:
    assert aggregate([reading(1, "1:80"), reading(2, "1:160")]).titer["text"] == "≥1:160"
    neg = aggregate([reading(1, "1:80", "negative", "negative"), reading(2, "1:160", "negative", "negative")])
    assert neg.result == "negative" and neg.titer["text"] == "negative" and neg.patterns == []
    assert neg.intensity == "negative"


def test_mixed_keeps_both_nuclear_and_cytoplasmic() -> None:
    agg = aggregate([reading(1, "1:80", "homogeneous", second_pattern="golgi"), reading(2, "1:160", "homogeneous")])
    assert [(p["pattern"], p["compartment"]) for p in agg.patterns] == [("homogeneous", "nuclear"),
                                                                         ("golgi", "cytoplasmic")]
    assert agg.patterns[1]["icap"] == "AC-22" and agg.patterns[1]["endpoint"] == "1:80"
    two_calls = aggregate([reading(1, "1:80", "centromere"), reading(2, "1:160", "nucleolar")])
    assert {p["pattern"] for p in two_calls.patterns} == {"centromere", "nucleolar"}


def test_review_reasons_are_propagated() -> None:
    agg = aggregate([
        reading(1, "1:80", needs_review=True, review_reason="low confidence"),
        reading(2, "1:160", "negative", "negative"),
        reading(3, "1:320"),  # positive above a negative dilution
        ImageReading(slide_id=4, dilution="1:640", status="running", analysed=False),
        reading(5, "1:80", "other", needs_review=True, review_reason="out of vocabulary", reviewed=True),
    ])
    reasons = " | ".join(r["reason"] for r in agg.review_reasons)
    assert agg.needs_review and not agg.complete and agg.pending_images == 1
    assert "image 1 (1:80): low confidence" in reasons and "still being analysed" in reasons
    assert "not monotonic" in reasons and "image 5" not in reasons  # image 5 was reviewed
    assert "pattern disagreement" not in reasons or "other" in reasons


def test_fields_of_one_dilution_that_disagree() -> None:
    agg = aggregate([reading(1, "1:160"), reading(2, "1:160", "negative", "negative")])
    assert agg.titer["text"] == "≥1:160" and any("disagree" in r["reason"] for r in agg.review_reasons)


def document(status: str = "final", config: ReportConfig | None = None, **extra: object) -> dict:
    agg = aggregate([reading(1, "1:80", "homogeneous", second_pattern="golgi"), reading(2, "1:160", "homogeneous"),
                     reading(3, "1:320", "negative", "negative")], config)
    return {**agg.as_dict(), "accession": "ACC-1", "patient": "PSEUDO-9", "report_id": 7, "version": 1,
            "status": status, "signed_out_by": "dr-lee", "signed_out_at": "2026-12-01T12:00:00+00:00",
            "collected_at": "2026-12-01T10:00:00+00:00", "updated_at": "2026-12-01T11:00:00+00:00",
            "amendment_reason": None, **extra}


def test_hl7_round_trip() -> None:
    config = ReportConfig(local_codes={"homogeneous": "ANA-HOM"})
    text = build_hl7(document(config=config), config, "HEP2R7", datetime(2026, 12, 1, 12, tzinfo=UTC))
    assert text.startswith("MSH|^~\\&|HEP2|") and "ORU^R01^ORU_R01" in text
    parsed = parse_hl7(text)
    assert parsed["control_id"] == "HEP2R7" and parsed["accession"] == "ACC-1" and parsed["status"] == "F"
    values = {(o["code"], o["sub_id"]): o["value"] for o in parsed["observations"]}
    assert values[("5048-4", None)] == "^1^:^160"
    assert values[("49311-4", "1")] == "AC-1^homogeneous^ICAP^ANA-HOM^homogeneous^L"
    assert values[("49311-4", "2")] == "AC-22^golgi^ICAP"
    assert values[("8061-4", None)].startswith("260373001^Detected")
    assert {o["status"] for o in parsed["observations"]} == {"F"} and parsed["patient"] == "PSEUDO-9"
    corrected = parse_hl7(build_hl7(document("corrected", version=2, amendment_reason="recount"), config,
                                    "HEP2R8", datetime(2026, 12, 1, 13, tzinfo=UTC)))
    assert corrected["status"] == "C" and {o["status"] for o in corrected["observations"]} == {"C"}


def test_fhir_validates() -> None:
    data = build_fhir(document(), ReportConfig())
    report = DiagnosticReport.model_validate(data)
    assert report.status == "final" and len(report.result) == len(report.contained) == 5
    by_id = {c.id: c for c in report.contained}
    assert by_id["titer"].valueString == "1:160"
    assert by_id["pattern-1"].valueCodeableConcept.coding[0].code == "AC-1"
    assert by_id["pattern-2"].valueCodeableConcept.coding[0].code == "AC-22"
    assert by_id["screen"].interpretation[0].coding[0].code == "POS"
    assert "titer 1:160" in data["conclusion"]


def test_the_documented_lab_config_loads(tmp_path: Path) -> None:
    toml = re.search(r"```toml\n(.*?)```", (REPO_ROOT / "docs" / "reports.md").read_text(), re.S)
    assert toml
    (tmp_path / "lab.toml").write_text(toml.group(1))
    config = load_config(tmp_path / "lab.toml").report
    assert config.sending_facility == "CITY-LAB" and config.intensity.code == "ANA-INT"
    assert config.local_codes["speckled"] == "ANASPE" and config.icap_codes["homogeneous"] == "AC-1"
