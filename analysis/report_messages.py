"""A specimen report as an HL7 v2.5.1 ORU^R01 message (hl7apy) and as a FHIR R4 DiagnosticReport
(fhir.resources, R4B models: DiagnosticReport and Observation are the same in R4 and R4B).

Both take the report *document* (``workers.reports.report_document``: the aggregated content plus version,
status, sign-out) and the lab's :class:`~analysis.report.ReportConfig` (codes). The mapping is in
docs/reports.md.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from hl7apy.core import Message
from hl7apy.parser import parse_message

from analysis.report import Code, ReportConfig

HL7_VERSION = "2.5.1"
RESULT_STATUS = {"draft": "P", "final": "F", "corrected": "C"}
"""Report status -> HL7 OBR-25 / OBX-11 (P preliminary, F final, C corrected)."""
FHIR_STATUS = {"draft": "preliminary", "final": "final", "corrected": "corrected"}
INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"


def hl7_time(value: str | datetime | None) -> str:
    if value is None:
        return ""
    moment = datetime.fromisoformat(value) if isinstance(value, str) else value
    return moment.strftime("%Y%m%d%H%M%S%z")


def _ce(code: Code) -> str:
    return f"{code.code}^{code.display}^{code.hl7_system}"


def _escape(text: str) -> str:
    """HL7 v2 escaping of the delimiters inside a text value."""
    out = text.replace("\\", "\\E\\").replace("|", "\\F\\").replace("^", "\\S\\").replace("&", "\\T\\")
    return out.replace("~", "\\R\\")


def titer_sn(titer: dict[str, Any]) -> str | None:
    """The titer as HL7 SN (comparator^num1^separator^num2): ``^1^:^160``, ``>=^1^:^320``, ``<^1^:^80``."""
    if titer.get("text") == "negative" and titer.get("below"):
        return f"<^1^:^{titer['below'].removeprefix('<1:')}"
    if titer.get("endpoint") is None:
        return None
    return f"{'>=' if titer.get('at_least') else ''}^1^:^{titer['endpoint']}"


def build_hl7(doc: dict[str, Any], config: ReportConfig, control_id: str, message_time: datetime) -> str:
    """ORU^R01 v2.5.1 in ER7 (segments separated by ``\\r``)."""
    status = RESULT_STATUS[doc["status"]]
    msg = Message("ORU_R01", version=HL7_VERSION)
    msh = msg.msh
    msh.msh_3, msh.msh_4 = config.sending_application, config.sending_facility
    msh.msh_5, msh.msh_6 = config.receiving_application, config.receiving_facility
    msh.msh_7 = hl7_time(message_time)
    msh.msh_9 = "ORU^R01^ORU_R01"
    msh.msh_10 = control_id
    msh.msh_11 = config.processing_id
    result = msg.oru_r01_patient_result
    if doc.get("patient"):
        result.oru_r01_patient.pid.pid_3 = f"{_escape(doc['patient'])}^^^{config.sending_facility}^PI"
    order = result.oru_r01_order_observation
    order.orc.orc_1 = "RE"
    order.orc.orc_3 = _escape(doc["accession"])
    obr = order.obr
    obr.obr_1 = "1"
    obr.obr_3 = _escape(doc["accession"])
    obr.obr_4 = _ce(config.order)
    if doc.get("collected_at"):
        obr.obr_7 = hl7_time(doc["collected_at"])
    obr.obr_22 = hl7_time(doc.get("signed_out_at") or message_time)
    obr.obr_25 = status
    if doc.get("signed_out_by"):
        obr.obr_32 = _escape(doc["signed_out_by"])
    if doc.get("amendment_reason"):
        note = order.add_segment("NTE")
        note.nte_1, note.nte_3 = "1", _escape(f"Corrected report (version {doc['version']}): "
                                              f"{doc['amendment_reason']}")

    rows: list[tuple[str, Code, str, str, str | None]] = []  # (type, code, sub-id, value, abnormal flag)
    positive = doc["result"] == "positive"
    screen = config.positive if positive else config.negative
    rows.append(("CWE", config.screen, "", _ce(screen), "A" if positive else "N"))
    sn = titer_sn(doc["titer"])
    if sn is not None:
        rows.append(("SN", config.titer, "", sn, None))
    for i, pattern in enumerate(doc["patterns"], 1):
        value = f"{pattern['icap'] or ''}^{pattern['pattern']}^{config.icap_hl7_system}"
        if pattern.get("local_code"):
            value += f"^{pattern['local_code']}^{pattern['pattern']}^{config.local_hl7_system}"
        rows.append(("CWE", config.pattern, str(i), value, None))
    if doc.get("intensity"):
        rows.append(("ST", config.intensity, "", doc["intensity"], None))
    for set_id, (value_type, code, sub_id, value, flag) in enumerate(rows, 1):
        obx = order.add_group("ORU_R01_OBSERVATION").obx
        obx.obx_1, obx.obx_2, obx.obx_3 = str(set_id), value_type, _ce(code)
        if sub_id:
            obx.obx_4 = sub_id
        obx.obx_5 = value
        if flag:
            obx.obx_8 = flag
        obx.obx_11 = status
        obx.obx_14 = hl7_time(doc.get("signed_out_at") or message_time)
    return msg.to_er7()


def parse_hl7(text: str) -> dict[str, Any]:
    """The values of an ORU^R01 built by :func:`build_hl7` (a round-trip check and the tests' LIS)."""
    msg = parse_message(text.replace("\n", "\r"), find_groups=True)
    order = msg.oru_r01_patient_result.oru_r01_order_observation
    observations = []
    for group in order.oru_r01_observation:
        obx = group.obx
        observations.append({"type": obx.obx_2.value, "code": obx.obx_3.to_er7().split("^")[0],
                             "sub_id": obx.obx_4.value if obx.obx_4.value else None,
                             "value": obx.obx_5.to_er7(), "status": obx.obx_11.value})
    return {"control_id": msg.msh.msh_10.value, "accession": order.obr.obr_3.value,
            "status": order.obr.obr_25.value, "observations": observations,
            "patient": msg.oru_r01_patient_result.oru_r01_patient.pid.pid_3.to_er7().split("^")[0] or None}


def _coding(code: Code) -> dict[str, str]:
    return {"system": code.system, "code": code.code, "display": code.display}


def build_fhir(doc: dict[str, Any], config: ReportConfig) -> dict[str, Any]:
    """A FHIR R4 DiagnosticReport with contained Observations (screen, titer, pattern(s), intensity),
    validated by fhir.resources; returned as JSON-ready data."""
    status = FHIR_STATUS[doc["status"]]
    effective = doc.get("collected_at") or doc.get("updated_at")
    subject = ({"identifier": {"system": config.patient_id_system, "value": doc["patient"]}}
               if doc.get("patient") else None)

    def observation(ident: str, code: Code, **value: Any) -> dict[str, Any]:
        obs: dict[str, Any] = {"resourceType": "Observation", "id": ident, "status": status,
                               "code": {"coding": [_coding(code)], "text": code.display}, **value}
        if subject:
            obs["subject"] = subject
        if effective:
            obs["effectiveDateTime"] = effective
        return obs

    positive = doc["result"] == "positive"
    screen = config.positive if positive else config.negative
    contained = [observation(
        "screen", config.screen, valueCodeableConcept={"coding": [_coding(screen)], "text": doc["result"]},
        interpretation=[{"coding": [{"system": INTERPRETATION, "code": "POS" if positive else "NEG"}]}])]
    titer = doc["titer"]
    titer_text = titer.get("below") if titer.get("text") == "negative" else titer.get("text")
    if titer_text:
        contained.append(observation("titer", config.titer, valueString=titer_text))
    for i, pattern in enumerate(doc["patterns"], 1):
        codings = [{"system": config.icap_system, "code": pattern["icap"], "display": pattern["pattern"]}
                   ] if pattern.get("icap") else []
        if pattern.get("local_code"):
            codings.append({"system": config.local_system, "code": pattern["local_code"],
                            "display": pattern["pattern"]})
        value = {"text": f"{pattern['pattern']} ({pattern['compartment']})"}
        if codings:
            value["coding"] = codings
        obs = observation(f"pattern-{i}", config.pattern, valueCodeableConcept=value)
        if pattern.get("endpoint"):
            obs["note"] = [{"text": f"end-point titer of this pattern: {pattern['endpoint']}"}]
        contained.append(obs)
    if doc.get("intensity"):
        contained.append(observation("intensity", config.intensity, valueString=doc["intensity"]))
    report: dict[str, Any] = {
        "resourceType": "DiagnosticReport", "id": f"hep2-report-{doc['report_id']}", "status": status,
        "identifier": [{"system": config.accession_system, "value": f"{doc['accession']}-v{doc['version']}"}],
        "code": {"coding": [_coding(config.order)], "text": config.order.display},
        "contained": contained, "result": [{"reference": f"#{o['id']}"} for o in contained],
        "conclusion": conclusion(doc),
    }
    if subject:
        report["subject"] = subject
    if effective:
        report["effectiveDateTime"] = effective
    if doc.get("signed_out_at"):
        report["issued"] = doc["signed_out_at"]
        report["resultsInterpreter"] = [{"display": doc["signed_out_by"]}]
    codes = [{"coding": [{"system": config.icap_system, "code": p["icap"], "display": p["pattern"]}]}
             for p in doc["patterns"] if p.get("icap")]
    if codes:
        report["conclusionCode"] = codes
    return DiagnosticReport.model_validate(report).model_dump(mode="json", exclude_none=True)


def conclusion(doc: dict[str, Any]) -> str:
    """One line a clinician reads: result, titer, patterns with ICAP codes, intensity."""
    if doc["result"] != "positive":
        return f"ANA (HEp-2 IIF) {doc['result']}" + (f" ({doc['titer']['below']})" if doc["titer"].get("below")
                                                      else "")
    patterns = ", ".join(f"{p['pattern']} ({p['icap']})" if p.get("icap") else p["pattern"]
                         for p in doc["patterns"])
    titer = doc["titer"].get("text")
    return f"ANA (HEp-2 IIF) positive{', titer ' + titer if titer else ''}; pattern: {patterns}; " \
           f"intensity {doc.get('intensity')}"
