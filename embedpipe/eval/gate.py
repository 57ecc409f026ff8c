"""The recall gate for CI: `eval tradeoffs --min-recall R [--at same-dim|768]`.

Every trade-off row is a configuration (dim, quant, index, knobs); it passes when its recall@10
— against exact search at its own dim (``same-dim``, what the index loses) or at full width
(``768``, what the whole configuration loses, Matryoshka truncation included) — reaches the
threshold. The command then exits non-zero naming each configuration that falls short, and can
write the verdicts as JSON or as JUnit XML (one test case per configuration) for CI systems.
"""

from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from embedpipe.errors import ArgumentError

# --at value -> the row column it reads
AT_COLUMNS: dict[str, str] = {"same-dim": "recall@10_same_dim", "768": "recall@10", "full": "recall@10"}
KNOB_ORDER = ("n_trees", "search_k", "m", "ef_search")


@dataclass
class Verdict:
    config: str
    recall: float
    min_recall: float
    measured_at: str
    passed: bool


def config_name(row: dict[str, Any]) -> str:
    """`hnsw-int8-d256-m16-ef_search64`: the configuration a row measured."""
    knobs = [f"{k}{row[k]}" for k in KNOB_ORDER if row.get(k) is not None]
    return "-".join([str(row["index"]), str(row["quant"]), f"d{row['dim']}", *knobs])


def validate(min_recall: float, at: str) -> None:
    """Check the gate's options before any work is done."""
    if at not in AT_COLUMNS:
        raise ArgumentError("at", f"must be one of {', '.join(AT_COLUMNS)}, not {at!r}")
    if not 0.0 <= min_recall <= 1.0:
        raise ArgumentError("min_recall", f"must be between 0 and 1, got {min_recall}")


def judge(rows: Sequence[dict[str, Any]], min_recall: float, at: str = "same-dim") -> list[Verdict]:
    validate(min_recall, at)
    col = AT_COLUMNS[at]
    return [Verdict(config_name(r), float(r[col]), min_recall, col, float(r[col]) >= min_recall) for r in rows]


def failures(verdicts: Sequence[Verdict]) -> list[Verdict]:
    return [v for v in verdicts if not v.passed]


def summary(verdicts: Sequence[Verdict]) -> str:
    bad = failures(verdicts)
    if not bad:
        return (
            f"recall gate passed: {len(verdicts)} configuration(s) ≥ {verdicts[0].min_recall}"
            if verdicts
            else "recall gate: no configuration measured"
        )
    names = "; ".join(f"{v.config} {v.measured_at}={v.recall:.4f}" for v in bad)
    return f"recall gate failed: {len(bad)} of {len(verdicts)} configuration(s) below {bad[0].min_recall}: {names}"


def write_json(verdicts: Sequence[Verdict], path: str | os.PathLike) -> None:
    data = {
        "passed": not failures(verdicts),
        "failures": len(failures(verdicts)),
        "configurations": [asdict(v) for v in verdicts],
    }
    with open(path, "w") as fh:
        json.dump(data, fh, indent=1)


def write_junit(verdicts: Sequence[Verdict], path: str | os.PathLike) -> None:
    suite = ET.Element(
        "testsuite",
        name="embedpipe.recall_gate",
        tests=str(len(verdicts)),
        failures=str(len(failures(verdicts))),
        errors="0",
    )
    for v in verdicts:
        case = ET.SubElement(suite, "testcase", classname="recall_gate", name=v.config)
        ET.SubElement(case, "properties").extend([ET.Element("property", name=v.measured_at, value=f"{v.recall:.4f}")])
        if not v.passed:
            fail = ET.SubElement(
                case, "failure", type="RecallBelowThreshold", message=f"{v.measured_at} {v.recall:.4f} < {v.min_recall}"
            )
            fail.text = f"{v.config}: {v.measured_at} = {v.recall:.4f}, required ≥ {v.min_recall}"
    ET.ElementTree(suite).write(path, encoding="utf-8", xml_declaration=True)


def report(
    rows: Sequence[dict[str, Any]],
    min_recall: float,
    at: str,
    json_path: str | os.PathLike | None = None,
    junit_path: str | os.PathLike | None = None,
) -> list[Verdict]:
    """Judge `rows` and write the JSON / JUnit reports that were asked for."""
    verdicts = judge(rows, min_recall, at)
    if json_path:
        write_json(verdicts, json_path)
    if junit_path:
        write_junit(verdicts, junit_path)
    return verdicts
